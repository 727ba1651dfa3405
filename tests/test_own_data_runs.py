"""Issue 21, end to end: runs on a manifest equal runs on split folders and on In-Shop; val rows select
best_val.pth; query/gallery rows that are both never retrieve themselves; sweeps and torchrun take manifests."""
import hashlib
import json
from pathlib import Path

import pytest
import torch

import run
from dataset import Manifest
from experiment.validation import VAL_PREFIX
from metric.retrieval import retrieval_metrics
from minidata import make_inshop, make_split_folders, write_manifest
from small_run import SMALL, run_main
from bench.weights_diff import relative
from test_distributed import _torchrun
from tools import sweep

ONE_EPOCH = SMALL + ["--epochs", "1", "--recall", "1", "2", "4", "--metrics", "recall", "map_r"]
SELF = {"train": {"ant": 4, "bee": 4, "cat": 4, "dog": 4}, "test": {"eel": 4, "fox": 3, "gnu": 4}}
QUERY_GALLERY = {"train": {"ant": 4, "bee": 4, "cat": 4, "dog": 4},
                 "query": {"eel": 2, "fox": 1, "gnu": 2}, "gallery": {"eel": 3, "fox": 2, "gnu": 2, "hen": 2}}


def manifest_of(root: Path, layout: dict[str, dict[str, int]], out: Path) -> Path:
    """The manifest listing the split folders of ``layout`` under ``root`` row for row, in the folders' order."""
    flags = "query" in layout
    rows = []
    for split, classes in layout.items():
        for name in sorted(classes):
            for i in range(classes[name]):
                row = (str(root / split / name / f"{split}_{i}.jpg"), name, "test" if flags and split != "train"
                       else split)
                rows.append(row + ((split == "query", split == "gallery") if flags else ()))
    return write_manifest(out, rows, flags)


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def scores(folder: Path) -> list[dict]:
    """Every epoch's evaluation numbers of a run."""
    return [{k: v for k, v in r.items() if k.startswith(("Recall@", "MAP@R", "R-Precision"))} for r in records(folder)]


@pytest.mark.parametrize("layout", [SELF, QUERY_GALLERY], ids=["self", "query-gallery"])
def test_a_manifest_and_the_same_split_folders_give_the_same_run(tmp_path, layout):
    root = make_split_folders(tmp_path / "tree", layout)
    manifest = manifest_of(root, layout, tmp_path / "m.csv")
    folder_argv = ONE_EPOCH + ["--dataset", "folder", "--data", str(root)]
    csv_argv = ONE_EPOCH + ["--dataset", "csv", "--data", str(manifest), "--cache-dir", str(tmp_path / "cache")]
    (f_train, f_evals), (m_train, m_evals) = (run.build_datasets(run.parse_args(a)) for a in (folder_argv, csv_argv))
    assert list(f_evals) == list(m_evals) == (["query", "gallery"] if "query" in layout else ["test"])
    for a, b in [(f_train, m_train)] + [(f_evals[s], m_evals[s]) for s in f_evals]:
        assert a.samples == b.samples and a.class_order == b.class_order
    run_main(folder_argv + ["--save-dir", str(tmp_path / "folder")])
    run_main(csv_argv + ["--save-dir", str(tmp_path / "csv")])
    assert scores(tmp_path / "csv") == scores(tmp_path / "folder") and "MAP@R" in scores(tmp_path / "csv")[0]
    a, b = (torch.load(tmp_path / d / "last.pth", weights_only=True) for d in ("folder", "csv"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any((tmp_path / "cache").iterdir())


def test_query_gallery_from_a_manifest_equals_the_inshop_code_path(tmp_path):
    root = make_inshop(tmp_path / "data", items=8, per_item=4)
    listing = (root / "Inshop" / "list_eval_partition.txt").read_text().splitlines()[2:]
    rows = [(f"Inshop/{path}", item, "train" if status == "train" else "test", status == "query",
             status == "gallery") for path, item, status in (line.split() for line in listing)]
    manifest = write_manifest(root / "inshop.csv", rows)
    run_main(ONE_EPOCH + ["--dataset", "inshop", "--data", str(root), "--save-dir", str(tmp_path / "inshop")])
    run_main(ONE_EPOCH + ["--dataset", "csv", "--data", str(manifest), "--save-dir", str(tmp_path / "csv")])
    assert scores(tmp_path / "csv") == scores(tmp_path / "inshop")
    a, b = (torch.load(tmp_path / d / "last.pth", weights_only=True) for d in ("inshop", "csv"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((tmp_path / "csv" / "config.json").read_text())["data"]
    assert config["counts"] == {"train images": 16, "train classes": 4, "query images": 8, "gallery images": 8,
                                "query+gallery classes": 4}
    assert config["sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()


def _overlapping(tmp_path: Path) -> Path:
    """A manifest whose test rows are query only, gallery only, or both."""
    root = make_split_folders(tmp_path / "tree", SELF)
    rows = []
    for split, classes in SELF.items():
        for name in sorted(classes):
            for i in range(classes[name]):
                path = str(root / split / name / f"{split}_{i}.jpg")
                rows.append((path, name, split, split == "test" and i != 1, split == "test" and i != 0))
    return write_manifest(tmp_path / "m.csv", rows)


def test_a_row_that_is_query_and_gallery_never_retrieves_itself(tmp_path):
    manifest = _overlapping(tmp_path)
    save = tmp_path / "eval"
    results = run_main(SMALL + ["--mode", "eval", "--dataset", "csv", "--data", str(manifest), "--recall", "1", "2",
                                "--metrics", "recall", "map_r", "--save-embeddings", "--save-retrievals", "3",
                                "--save-dir", str(save)])
    saved = torch.load(save / "embeddings.pt", weights_only=True)
    (q, ql), (g, gl) = ((saved[s]["embeddings"], saved[s]["labels"]) for s in ("query", "gallery"))
    query, gallery = Manifest(manifest, "query").samples, Manifest(manifest, "gallery").samples
    own = torch.tensor([[p for p, _ in gallery].index(p) if (p, y) in gallery else -1 for p, y in query])
    assert (own >= 0).sum() == 5 and (own < 0).sum() == 3  # images 2.. of a class are both, image 0 query only
    assert results == pytest.approx(retrieval_metrics(q, ql, g, gl, [1, 2], ("recall", "map_r"), own=own), abs=1e-9)
    assert results != pytest.approx(retrieval_metrics(q, ql, g, gl, [1, 2], ("recall", "map_r")), abs=1e-9)
    assert (save / "retrievals.png").is_file()


def test_val_rows_select_best_val_and_replace_val_classes(tmp_path, monkeypatch, capsys):
    layout = {"train": {"ant": 4, "bee": 4, "cat": 4, "dog": 4}, "val": {"elk": 3, "emu": 3},
              "test": {"fox": 3, "gnu": 3}}
    root = make_split_folders(tmp_path / "tree", layout)
    manifest = manifest_of(root, layout, tmp_path / "m.csv")
    scripted, weights, seen = {1: 10.0, 2: 50.0, 3: 20.0}, {}, {}
    real = run.evaluate

    def spy(model, loaders, ks, epoch=0, *args, **kwargs):
        split = loaders["test"].dataset
        if {p for p, _ in split.samples} <= {str(root / "val" / n / f"val_{i}.jpg") for n in ("elk", "emu")
                                             for i in range(3)}:
            seen["val"] = split
            weights[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
            return {f"Recall@{k}": scripted[epoch] for k in ks}
        return real(model, loaders, ks, epoch, *args, **kwargs)

    monkeypatch.setattr(run, "evaluate", spy)
    save = tmp_path / "run"
    run_main(SMALL + ["--dataset", "csv", "--data", str(manifest), "--epochs", "3", "--iter-per-epoch", "1",
                      "--save-dir", str(save)])
    assert "[Validation] the val split of" in capsys.readouterr().out
    assert len(seen["val"]) == 6 and isinstance(seen["val"], Manifest)
    history = records(save)
    assert [r["epoch"] for r in history] == [0, 1, 2, 3] and VAL_PREFIX + "Recall@1" not in history[0]
    assert [r[VAL_PREFIX + "Recall@1"] for r in history[1:]] == [10.0, 50.0, 20.0]
    best_val = torch.load(save / "best_val.pth", weights_only=True)
    assert all(torch.equal(best_val[k], v) for k, v in weights[2].items())
    counts = json.loads((save / "config.json").read_text())["data"]["counts"]
    assert counts == {"train images": 16, "train classes": 4, "test images": 6, "test classes": 2, "val images": 6,
                      "val classes": 2}
    code = run.cli(SMALL + ["--dataset", "csv", "--data", str(manifest), "--val-classes", "2",
                            "--save-dir", str(tmp_path / "refused")])
    err = capsys.readouterr().err
    assert code == 1 and "--val-classes holds out training classes, but" in err and "drop --val-classes" in err


def test_a_sweep_runs_on_a_manifest(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "execute", lambda cmd: run.cli(cmd[2:]))
    root = make_split_folders(tmp_path / "tree", SELF)
    manifest = manifest_of(root, SELF, tmp_path / "m.csv")
    own = ["--dataset", "csv", "--seeds", "1", "--methods", "mdr", "--root", str(tmp_path / "result")]
    argv = own + ["--", *SMALL, "--epochs", "1", "--iter-per-epoch", "1", "--data", str(manifest)]
    assert sweep.main(own + ["--dry-run"] + argv[len(own):]) == 0
    command = capsys.readouterr().out.split()
    assert command[1].endswith("run.py") and command[2:4] == ["--dataset", "csv"] and "--lambda-mdr" in command
    assert sweep.main(argv) == 0
    folder = tmp_path / "result" / "csv" / "mdr" / "seed1"
    config = json.loads((folder / "config.json").read_text())
    assert config["data"]["dataset"] == "csv" and config["flags"]["lambda_mdr"] == 0.6
    assert (folder / "last.pth").is_file()
    assert sweep.main(argv) == 0 and "[Sweep] 0 run(s) done, 1 already complete" in capsys.readouterr().out


def test_torchrun_on_a_manifest_trains_the_single_process_model(tmp_path):
    manifest = _overlapping(tmp_path)  # 8 queries and 8 gallery images, 5 of them both
    common = SMALL + ["--dataset", "csv", "--data", str(manifest), "--lr", "5e-5", "--epochs", "1", "--recall", "1",
                      "2", "--eval-batch", "3"]
    run_main(common + ["--save-dir", str(tmp_path / "single")])
    done = _torchrun(common + ["--save-dir", str(tmp_path / "ddp")])
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = (torch.load(tmp_path / d / "last.pth", weights_only=True) for d in ("single", "ddp"))
    assert relative(b, a) < 1e-5
    assert scores(tmp_path / "ddp") == scores(tmp_path / "single")
