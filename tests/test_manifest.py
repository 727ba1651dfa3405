"""Issue 21: a manifest's format, its checks (every problem one line with its line number and fix), its warnings."""
from pathlib import Path

import pytest

import run
from dataset import DATASETS, Manifest
from dataset.manifest import MAX_LISTED, read_manifest
from errors import UserError
from minidata import jpeg_bytes, write, write_manifest
from small_run import SMALL


def images(root: Path, classes: dict[str, int]) -> list[str]:
    """Write ``classes`` = {name: count} images under ``root/img/<name>/``; their paths relative to ``root``."""
    out = []
    for c, (name, count) in enumerate(classes.items()):
        for i in range(count):
            write(root / "img" / name / f"{i}.jpg", jpeg_bytes(c * 100 + i))
            out.append(f"img/{name}/{i}.jpg")
    return out


def test_rows_labels_splits_and_flag_spellings(tmp_path):
    paths = images(tmp_path, {"b": 3, "a": 2, "c": 3})
    flags = ["", "0", "no", "1", "TRUE", " yes ", "False", "Yes"]
    rows = [(paths[0], "b", "train", "", ""), (paths[1], "b", "Train", flags[1], flags[2]),
            (paths[2], "b", " test ", flags[3], flags[6]), (paths[3], "a", "val", "", ""),
            (paths[4], "a", "val", "", ""), (paths[5], "c", "test", flags[4], flags[5]),
            (str(tmp_path / paths[6]), "c", "test", "no", flags[7]), ("./img//c/../c/2.jpg", "c", "test", "0", "1")]
    manifest = write_manifest(tmp_path / "lists" / ".." / "m.csv", rows)
    got = read_manifest(manifest)
    assert [(r.path, r.label, r.split, r.is_query, r.is_gallery) for r in got] == [
        (str(tmp_path / p), label, split.strip().lower(), q, g) for p, (_, label, split, _, _), q, g in zip(
            paths, rows, [False, False, True, False, False, True, False, False],
            [False, False, False, False, False, True, True, True])]
    assert Manifest.evaluation_splits(manifest) == ("query", "gallery", "val")
    query, gallery = Manifest(manifest, "query"), Manifest(manifest, "gallery")
    assert query.samples == [(str(tmp_path / paths[2]), 1), (str(tmp_path / paths[5]), 2)]  # a=0, b=1, c=2
    assert [label for _, label in gallery.samples] == [2, 2, 2] and Manifest(manifest, "val").labels == [0, 0]
    assert Manifest(manifest, "test").labels == [1, 2, 2, 2] and Manifest(manifest, "train").class_order == [1]
    assert DATASETS["csv"] is Manifest


def test_without_flag_columns_the_test_rows_are_self_retrieval(tmp_path):
    paths = images(tmp_path, {"x": 2, "y": 2})
    manifest = write_manifest(tmp_path / "m.csv", [(paths[0], "x", "train"), (paths[1], "x", "train"),
                                                   (paths[2], "y", "test"), (paths[3], "y", "test")])
    assert Manifest.evaluation_splits(manifest) == ("test",)
    assert [r.is_query and r.is_gallery for r in read_manifest(manifest)] == [False, False, True, True]
    both = write_manifest(tmp_path / "both.csv", [(paths[0], "x", "train", 0, 0), (paths[1], "x", "train", 0, 0),
                                                  (paths[2], "y", "test", 1, 1), (paths[3], "y", "test", 1, 1)])
    assert Manifest.evaluation_splits(both) == ("test",)  # every test row both: the same numbers, one pass


def _problem_manifest(tmp_path: Path) -> Path:
    paths = images(tmp_path, {"a": 3, "b": 4})
    text = "\n".join([
        "path,label,split,is_query,is_gallery,note",                         # 1: an extra column is ignored
        f"{paths[0]},a,train,0,0,ok",                                        # 2
        f"{paths[1]},a,tset,0,0,",                                           # 3: unknown split
        f"{paths[2]},,train,0,0,",                                           # 4: empty label
        ",a,train,0,0,",                                                     # 5: empty path
        "img/a/9.jpg,a,train,0,0,",                                          # 6: missing image
        f"{paths[0]},a,train,0,0,",                                          # 7: duplicated in train
        f"{paths[3]},b,train,1,0,",                                          # 8: query flag outside test
        f"{paths[4]},b,test,maybe,1,",                                       # 9: bad flag value
        f"{paths[5]},b,test,1",                                              # 10: missing fields
        "",                                                                  # 11: blank lines are skipped
        f"{paths[6]},b,test,1,1,",                                           # 12
        f"{paths[6]},b,test,0,1,",                                           # 13: duplicated in test
        "img,b,test,1,0,",                                                   # 14: a folder, not an image
    ])
    (tmp_path / "m.csv").write_text(text + "\n")
    return tmp_path / "m.csv"


EXPECTED = [
    "line 3: unknown split 'tset'; use train, val or test",
    "line 4: empty label for img/a/2.jpg; give every image a label, or remove the row",
    "line 5: empty path; give the image's path (relative to the manifest's folder) or remove the row",
    "line 6: image {root}/img/a/9.jpg not found (no such file); fix the path",
    "line 7: {root}/img/a/0.jpg is listed again in the train split (first at line 2); remove one of the rows",
    "line 8: is_query is 1 but the split is train; only test rows are queries or gallery images: set is_query to 0,"
    " or the split to test",
    "line 9: is_query is 'maybe'; use 1/0, true/false or yes/no (empty means no)",
    "line 10: expected 6 fields like the header, found 4; quote a path or label that contains a comma",
    "line 13: {root}/img/b/3.jpg is listed again in the test split (first at line 12); remove one of the rows",
    "line 14: image {root}/img not found (not a file)",
]


def test_every_problem_is_one_line_with_its_line_number_and_fix(tmp_path):
    with pytest.raises(UserError) as exc:
        read_manifest(_problem_manifest(tmp_path))
    lines = str(exc.value).splitlines()
    assert lines[0] == f"{tmp_path / 'm.csv'}: {len(EXPECTED)} problem(s), so nothing was run; fix them and run again:"
    assert len(lines) == len(EXPECTED) + 1
    for line, expected in zip(lines[1:], EXPECTED):
        assert line.startswith("  " + expected.format(root=tmp_path)), (line, expected)


def test_a_run_on_a_manifest_with_problems_runs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(run, "evaluate", lambda *a, **k: pytest.fail("evaluated a manifest with problems"))
    save = tmp_path / "run"
    code = run.cli(SMALL + ["--dataset", "csv", "--data", str(_problem_manifest(tmp_path)), "--save-dir", str(save),
                            "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.startswith(f"error: {tmp_path / 'm.csv'}: {len(EXPECTED)} problem(s), so nothing was run")
    assert all(expected.format(root=tmp_path).split(";")[0] in err for expected in EXPECTED)
    assert not (save / "config.json").exists() and not (save / "checkpoint.pth").exists()


@pytest.mark.parametrize("header, expected", [
    ("path,label", "line 1: the header has no 'split' column; the first line must name the columns path,label,split"),
    ("file,label,split", "line 1: the header has no 'path' column"),
    ("path,label,split,is_query", "line 1: the header has is_query but no is_gallery; give both columns or neither"),
    ("path,Label,split,label", "line 1: the column 'label' appears 2 times in the header; keep one"),
])
def test_header_problems(tmp_path, header, expected):
    (tmp_path / "m.csv").write_text(f"{header}\nimg/a/0.jpg,a,train,1\n")
    with pytest.raises(UserError, match="problem") as exc:
        read_manifest(tmp_path / "m.csv")
    assert "  " + expected in str(exc.value)


def test_twenty_problems_are_listed_with_the_count_of_the_rest(tmp_path):
    paths = images(tmp_path, {"a": 2})
    rows = [(paths[0], "a", "test"), (paths[1], "a", "test")] + [(f"gone/{i}.jpg", "a", "train") for i in range(35)]
    with pytest.raises(UserError) as exc:
        read_manifest(write_manifest(tmp_path / "m.csv", rows))
    lines = str(exc.value).splitlines()
    assert lines[0].startswith(f"{tmp_path / 'm.csv'}: 35 problem(s)") and len(lines) == MAX_LISTED + 2
    assert [line.split(":")[0] for line in lines[1:-1]] == [f"  line {n}" for n in range(4, 4 + MAX_LISTED)]
    assert "its folder does not exist" in lines[1] and lines[-1] == f"  ... and {35 - MAX_LISTED} more problem(s)"


def test_a_test_split_without_a_query_that_has_a_positive(tmp_path):
    paths = images(tmp_path, {"a": 2, "b": 2, "c": 1})
    train = [(paths[0], "a", "train", 0, 0), (paths[1], "a", "train", 0, 0)]
    own_only = train + [(paths[2], "b", "test", 1, 1), (paths[3], "b", "test", 0, 0), (paths[4], "c", "test", 0, 1)]
    message = "the test split has no query with a positive in the gallery (another test image of the query's label)"
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_manifest(write_manifest(tmp_path / "own.csv", own_only))  # b's gallery image is the query itself
    single = [(p, label, "train" if label == "a" else "test") for p, label in zip(paths, "aabbc")]
    single[3] = (paths[3], "b", "train")
    with pytest.raises(UserError, match="has no query with a positive"):
        read_manifest(write_manifest(tmp_path / "single.csv", single))  # self-retrieval: b and c have one image each
    with pytest.raises(UserError, match="there are no test rows, so nothing can be evaluated: give some rows"):
        read_manifest(write_manifest(tmp_path / "none.csv", [r[:3] for r in train]))
    read_manifest(write_manifest(tmp_path / "ok.csv", own_only[:3] + [(paths[3], "b", "test", 0, 1)]))


def test_shared_labels_and_single_image_classes_are_warned_about(tmp_path, capsys):
    paths = images(tmp_path, {"a": 3, "b": 3, "c": 1, "d": 2})
    rows = [(paths[0], "a", "train"), (paths[1], "a", "train"), (paths[2], "a", "test"),
            (paths[3], "b", "train"), (paths[4], "b", "val"), (paths[5], "b", "test"),
            (paths[6], "c", "train"), (paths[7], "d", "test"), (paths[8], "d", "test")]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    read_manifest(manifest)
    out = capsys.readouterr().out
    assert (f"[Warning] {manifest}: 2 label(s) appear in both train and test; metric-learning benchmarks are "
            "class-disjoint, and classes seen in training inflate Recall@K") in out
    assert f"[Warning] {manifest}: 1 label(s) appear in both train and val" in out
    assert f"[Warning] {manifest}: 2 training class(es) have a single image; they can never form a positive pair" in out
    read_manifest(manifest)
    assert capsys.readouterr().out == ""  # read once per version of the file
    disjoint = write_manifest(tmp_path / "disjoint.csv", [rows[0], rows[1], rows[7], rows[8]])
    read_manifest(disjoint)
    assert "[Warning]" not in capsys.readouterr().out


def test_file_problems_are_one_line(tmp_path):
    with pytest.raises(UserError, match=r"manifest .*nowhere.csv not found; --dataset csv needs --data FILE.csv"):
        read_manifest(tmp_path / "nowhere.csv")
    with pytest.raises(UserError, match=r"is a folder; --dataset csv needs --data FILE.csv"):
        Manifest(tmp_path, "train")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UserError, match="empty.csv is empty; the first line must name the columns"):
        read_manifest(tmp_path / "empty.csv")
    (tmp_path / "latin.csv").write_bytes("path,label,split\nimg/é.jpg,a,train\n".encode("latin-1"))
    with pytest.raises(UserError, match="latin.csv is not UTF-8 text .*; save it as UTF-8 CSV"):
        read_manifest(tmp_path / "latin.csv")


def test_a_split_without_rows_and_train_classes_are_refused(tmp_path):
    paths = images(tmp_path, {"a": 2, "b": 2})
    manifest = write_manifest(tmp_path / "m.csv", [(p, label, "test") for p, label in zip(paths, "aabb")])
    with pytest.raises(UserError, match=r"m.csv has no train rows; give some rows the split train"):
        Manifest(manifest, "train")
    with pytest.raises(UserError, match="--train-classes 1 splits a --dataset folder tree by class; the split "
                                        "column of .*m.csv is the split"):
        Manifest(manifest, "test", train_classes=1)
