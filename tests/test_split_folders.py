"""Issue 21: explicit split folders for --dataset folder, and tools.manifest, which writes a manifest of a tree."""
import csv
from pathlib import Path

import pytest

from dataset import Folder, Manifest
from dataset.manifest import read_manifest
from errors import UserError
from minidata import make_folder, make_split_folders, write
from tools import manifest as tool

LAYOUT = {"train": {"dog": 3, "ant": 2}, "val": {"cow": 2, "eel": 2}, "test": {"fox": 3, "bee": 2, "dog": 2}}


def test_split_folders_are_the_split_and_labels_are_shared_across_splits(tmp_path):
    root = make_split_folders(tmp_path, LAYOUT)
    write(root / "notes" / "readme.txt", b"not images")
    names = sorted({"dog", "ant", "cow", "eel", "fox", "bee"})  # ant bee cow dog eel fox
    for split, classes in LAYOUT.items():
        samples = Folder(root, split).samples
        expected = [(str(root / split / name / f"{split}_{i}.jpg"), names.index(name))
                    for name in sorted(classes) for i in range(classes[name])]
        assert samples == expected, split
    assert Folder(root, "test").class_order == [1, 3, 5]
    assert Folder.evaluation_splits(root) == ("test", "val")
    assert Folder.evaluation_splits(tmp_path / "nowhere") == ("test",)


def test_query_and_gallery_folders_are_evaluated_query_to_gallery(tmp_path):
    root = make_split_folders(tmp_path, {"train": {"a": 2, "b": 2}, "query": {"c": 1, "d": 2},
                                         "gallery": {"c": 3, "d": 1, "e": 2}})
    assert Folder.evaluation_splits(root) == ("query", "gallery")
    assert Folder(root, "query").labels == [2, 3, 3] and Folder(root, "gallery").labels == [2, 2, 2, 3, 4, 4]


def test_a_tree_of_class_folders_keeps_todays_split(tmp_path, capsys):
    root = make_folder(tmp_path / "plain", classes=4)
    write(root / "train" / "0.jpg", b"a class named train holds images, not class folders")
    classes = sorted(p.name for p in root.iterdir())
    assert classes == ["class_0", "class_1", "class_2", "class_3", "train"]
    assert Folder.evaluation_splits(root) == ("test",)
    assert sorted(set(Folder(root, "train").labels)) == [0, 1] and sorted(set(Folder(root, "test").labels)) == [2, 3, 4]
    assert Folder(root, "train", train_classes=3).labels[-1] == 2


def test_a_folder_without_two_class_folders_says_what_it_needs(tmp_path):
    (tmp_path / "empty").mkdir()
    one = make_folder(tmp_path / "one", classes=1)
    for root, count in ((tmp_path / "empty", 0), (one, 1)):
        with pytest.raises(UserError, match=f"{root} has {count} class folder\\(s\\) with images; --dataset folder "
                                            "needs one sub-folder of images per class, at least two") as exc:
            Folder(root, "train")
        assert "--train-classes" not in str(exc.value)


def test_train_classes_is_refused_with_split_folders(tmp_path):
    root = make_split_folders(tmp_path, {"train": {"a": 2, "b": 2}, "test": {"c": 2}})
    with pytest.raises(UserError, match=r"has split folders \(train/, test/\), which are the split; --train-classes 1 "
                                        "only splits a tree of class folders by name: drop it"):
        Folder(root, "train", train_classes=1)


@pytest.mark.parametrize("layout, message", [
    ({"train": {"a": 2}, "test": {"b": 2}, "query": {"b": 1}, "gallery": {"b": 1}},
     r"has both test/ and query/ or gallery/ split folders .*keep one of them"),
    ({"train": {"a": 2}, "query": {"b": 1}},
     r"has a query/ split folder but no gallery/ with class sub-folders; .*add gallery/<class>/ or rename query/"),
    ({"test": {"b": 2}}, r"has no train/ split folder with class sub-folders \(it has test/\)"),
])
def test_inconsistent_split_folders_are_one_line_errors(tmp_path, layout, message):
    with pytest.raises(UserError, match=message):
        Folder(make_split_folders(tmp_path, layout), "train")


def _args(root: Path, out: Path, *flags: str):
    return tool.get_args_parser().parse_args([str(root), "--out", str(out), *flags])


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tools_manifest_draws_a_class_disjoint_split_with_the_seed(tmp_path, capsys):
    root = make_folder(tmp_path / "imgs", classes=10, per_class=5)
    out = tool.main(_args(root, tmp_path / "m.csv", "--test-classes", "4", "--seed", "3"))
    printed = capsys.readouterr().out
    rows = _rows(out)
    test = sorted({r["label"] for r in rows if r["split"] == "test"})
    assert len(test) == 4 and not set(test) & {r["label"] for r in rows if r["split"] == "train"}
    assert f"6 train and 4 test classes drawn with --seed 3; test: {', '.join(test)}" in printed
    assert len(rows) == 50 and rows[0]["path"] == "imgs/class_0/0.jpg" and set(rows[0]) == {"path", "label", "split"}
    assert [(Path(r.path).relative_to(tmp_path).as_posix(), r.label, r.split) for r in read_manifest(out)] == \
           [(r["path"], r["label"], r["split"]) for r in rows]
    again = tool.main(_args(root, tmp_path / "again.csv", "--test-fraction", "0.4", "--seed", "3"))
    assert _rows(again) == rows  # 0.4 of 10 classes is 4: the same draw
    other = tool.main(_args(root, tmp_path / "other.csv", "--test-classes", "4", "--seed", "4"))
    assert {r["label"] for r in _rows(other) if r["split"] == "test"} != set(test)


def test_tools_manifest_query_fraction_splits_each_test_class(tmp_path):
    root = make_folder(tmp_path / "imgs", classes=4, per_class=5)
    write(root / "class_3" / "extra.jpg", (root / "class_3" / "0.jpg").read_bytes())
    out = tool.main(_args(root, tmp_path / "m.csv", "--test-classes", "2", "--query-fraction", "0.3", "--seed", "0"))
    rows = _rows(out)
    for label in {r["label"] for r in rows if r["split"] == "test"}:
        mine = [r for r in rows if r["label"] == label]
        queries = sum(r["is_query"] == "1" for r in mine)
        assert queries == round(0.3 * len(mine)) and all(r["is_query"] != r["is_gallery"] for r in mine)
    assert all(r["is_query"] == r["is_gallery"] == "0" for r in rows if r["split"] == "train")
    assert Manifest.evaluation_splits(out) == ("query", "gallery")
    rng = tool.random.Random(0)
    assert [len(tool.draw_queries([str(i) for i in range(n)], f, rng)) for n, f in ((1, 0.5), (2, 0.1), (5, 0.9))] \
        == [0, 1, 4]  # a single image is gallery only; every class keeps a query and a gallery image


def test_tools_manifest_writes_split_folders_as_they_are(tmp_path):
    root = make_split_folders(tmp_path / "tree", {"train": {"a": 2, "b": 2}, "query": {"c": 1, "d": 2},
                                                  "gallery": {"c": 2, "d": 1}})
    (tmp_path / "lists").mkdir()
    out = tool.main(_args(root, tmp_path / "lists" / "m.csv"))
    assert _rows(out)[0]["path"] == "../tree/train/a/train_0.jpg"
    for split in ("train", "query", "gallery"):
        assert Manifest(out, split).samples == Folder(root, split).samples, split
    with pytest.raises(UserError, match=r"has split folders \(train/, query/, gallery/\), which are written as they "
                                        "are split; drop --test-classes"):
        tool.main(_args(root, tmp_path / "x.csv", "--test-classes", "1"))


def test_tools_manifest_never_replaces_a_manifest_and_checks_its_flags(tmp_path, capsys):
    root = make_folder(tmp_path / "imgs", classes=4)
    (tmp_path / "m.csv").write_text("edited by hand\n")
    assert tool.cli([str(root), "--out", str(tmp_path / "m.csv")]) == 1
    assert "m.csv exists (a manifest edited by hand would be lost); pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "m.csv").read_text() == "edited by hand\n"
    assert tool.cli([str(root), "--out", str(tmp_path / "m.csv"), "--overwrite"]) == 0
    for flags, message in ((["--test-classes", "4"], "--test-classes 4 gives 4 test classes of 4"),
                           (["--query-fraction", "1"], "--query-fraction 1.0 leaves no gallery"),
                           (["--out", str(tmp_path / "no" / "m.csv")], "does not exist; create it first")):
        assert tool.cli([str(root), "--out", str(tmp_path / "n.csv"), *flags]) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    for flag in ("--test-fraction", "--query-fraction"):  # a fraction above 1 is a typo, refused by argparse
        with pytest.raises(SystemExit) as exc:
            tool.cli([str(root), "--out", str(tmp_path / "n.csv"), flag, "1.5"])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and f"argument {flag}: must be a finite number > 0 and <= 1, got 1.5" in err
