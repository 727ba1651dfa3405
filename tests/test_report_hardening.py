"""Issue 22, items 3, 5, 6, 7, 10, 18, 19, 26: the report, the sweep and the plot on the runs users really have."""
import csv
import io
import json
import os
import re
import shlex
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

from fake_runs import TRAINED, curve, fake_run
from minidata import make_cub
from model.checkpoint import read_weights_file, save_atomic
from small_run import SMALL, run_main
from tools import plot, report, sweep


def csv_report(paths: list[Path], capsys, *extra: str) -> tuple[list[dict], str]:
    """The rows of ``tools.report --format csv`` and its stderr."""
    capsys.readouterr()
    assert report.main([str(p) for p in paths] + ["--format", "csv", *extra]) == 0
    out, err = capsys.readouterr()
    return list(csv.DictReader(io.StringIO(out))), err


def row(table: list[dict], method: str, selection: str = "best epoch (authors' protocol)") -> dict:
    matches = [r for r in table if r["method"] == method and r["selection"] == selection]
    assert len(matches) == 1, table
    return matches[0]


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory):
    return make_cub(tmp_path_factory.mktemp("data"))


# Item 3: epoch 0 is a line of metrics.jsonl, result.txt names the best epoch, the report agrees with it.

def test_epoch_0_is_recorded_and_the_best_epoch_is_the_one_result_txt_names(cub_root, tmp_path, capsys):
    save = tmp_path / "run"
    run_main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "1", "--recall", "1", "2"])
    records = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1] and "Recall@2" in records[0]
    found = re.fullmatch(r"Best Recall@1: ([\d.]+) \(epoch (\d)\)\nFinal Recall@1: ([\d.]+)\n",
                         (save / "result.txt").read_text())
    best, epoch = float(found.group(1)), int(found.group(2))
    assert epoch == read_weights_file(save / "checkpoint.pth")["best_epoch"]
    assert best == pytest.approx(records[epoch]["Recall@1"], abs=1e-4)
    table, _ = csv_report([save], capsys)
    assert float(row(table, "Triplet")["Recall@1 mean"]) == pytest.approx(best, abs=1e-4)
    assert float(row(table, "Triplet")["Recall@2 mean"]) == pytest.approx(records[epoch]["Recall@2"], abs=1e-4)
    assert plot.seed_curve([records], "Recall@1")[0] == [0, 1]
    assert plot.main([str(save)]) == 0 and (save / "curves.png").stat().st_size > 10_000


def test_an_old_run_without_the_epoch_0_line_resumes_and_reports(cub_root, tmp_path, capsys):
    save = tmp_path / "run"
    run_main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "1"])
    state = read_weights_file(save / "checkpoint.pth")
    state["history"] = [r for r in state["history"] if r["epoch"] > 0]
    save_atomic(state, save / "checkpoint.pth")
    (save / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in state["history"]))
    (save / "result.txt").write_text("Best Recall@1: %.4f\nFinal Recall@1: %.4f\n"
                                     % (state["best"], state["history"][-1]["Recall@1"]))
    run_main(SMALL + ["--data", str(cub_root), "--resume", str(save), "--epochs", "2"])
    records = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert re.match(r"Best Recall@1: [\d.]+ \(epoch \d\)\n", (save / "result.txt").read_text())
    table, _ = csv_report([save], capsys)
    assert row(table, "Triplet")["seeds"] == "1"


def test_an_old_run_whose_best_was_epoch_0_reports_result_txt_s_best(tmp_path, capsys):
    old = fake_run(tmp_path / "old", curve(40.0, 45.0, start=1), "Best Recall@1: 50.0000\nFinal Recall@1: 45.0000\n")
    table, err = csv_report([old], capsys)
    best = row(table, "Triplet")
    assert float(best["Recall@1 mean"]) == 50.0 and best["Recall@2 mean"] == ""
    assert float(row(table, "Triplet", "final epoch")["Recall@2 mean"]) == 55.0
    assert f"{old}: best epoch" in err


# Item 5: every flag that changes the result is part of the signature.

def test_runs_that_differ_in_epochs_or_load_are_flagged(tmp_path, capsys):
    fake_run(tmp_path / "a", curve(10.0, 20.0, 30.0))
    fake_run(tmp_path / "b", curve(10.0, 20.0, 30.0), seed=2)
    fake_run(tmp_path / "c", curve(10.0, 20.0, 30.0, 40.0), seed=3)
    fake_run(tmp_path / "d", curve(10.0, 20.0, 30.0), seed=4, load="other/best.pth")
    fake_run(tmp_path / "e", curve(10.0, 20.0, 30.0), seed=5, workers=8, data="/elsewhere")
    table, err = csv_report([tmp_path], capsys)
    assert row(table, "Triplet")["seeds"] == "3"
    assert f"flagged, not averaged: {tmp_path / 'c'}: epochs: 3 (group: 2)" in err
    assert f"flagged, not averaged: {tmp_path / 'd'}: load: 'other/best.pth' (group: None)" in err
    assert str(tmp_path / "e") not in err


# Item 6: the method is named from the base loss, its MDR and its L2Norm.

def test_the_method_name_comes_from_the_base_loss(tmp_path, capsys):
    fake_run(tmp_path / "ms", curve(10.0, 20.0), loss="multi-similarity", lambda_mdr=0.6)
    fake_run(tmp_path / "co", curve(11.0, 21.0), loss="contrastive")
    fake_run(tmp_path / "tr", curve(12.0, 22.0), lambda_mdr=0.6, l2norm=True)
    fake_run(tmp_path / "tm", curve(13.0, 23.0), lambda_mdr=0.6)
    table, _ = csv_report([tmp_path], capsys)
    means = {r["method"]: float(r["Recall@1 mean"]) for r in table if r["selection"] == "final epoch"}
    assert means == {"MultiSimilarity+MDR": 20.0, "Contrastive": 21.0, "Triplet+L2Norm+MDR": 22.0,
                     "Triplet+MDR": 23.0}


# Item 7: each run folder counts once.

def test_overlapping_paths_count_each_run_once(tmp_path, capsys, monkeypatch):
    root = tmp_path / "result"
    fake_run(root / "cub200" / "triplet" / "seed1", curve(10.0, 20.0))
    fake_run(root / "cub200" / "triplet" / "seed2", curve(10.0, 30.0), seed=2)
    (tmp_path / "link").symlink_to(root)
    monkeypatch.chdir(tmp_path)
    paths = [root, root / "cub200" / "triplet" / "seed1", tmp_path / "link", Path("result")]
    table, _ = csv_report(paths, capsys)
    assert row(table, "Triplet", "final epoch")["seeds"] == "2"
    assert float(row(table, "Triplet", "final epoch")["Recall@1 mean"]) == 25.0


# Item 10: runs evaluated every N epochs.

def test_runs_evaluated_every_other_epoch_are_reported_and_compared(tmp_path, capsys):
    old = [{"epoch": 1, **TRAINED}, {"epoch": 2, **TRAINED, "Recall@1": 30.0, "Recall@2": 40.0},
           {"epoch": 3, **TRAINED}, {"epoch": 4, **TRAINED, "Recall@1": 35.0, "Recall@2": 45.0}]
    fake_run(tmp_path / "seed1", old, eval_every=2)
    fake_run(tmp_path / "seed2", [{"epoch": 0, "Recall@1": 5.0, "Recall@2": 9.0}] + old, seed=2, eval_every=2)
    table, _ = csv_report([tmp_path], capsys)
    assert float(row(table, "Triplet")["Recall@1 mean"]) == 35.0 and row(table, "Triplet")["seeds"] == "2"
    out = tmp_path / "compare.png"
    assert plot.main(["--compare", str(tmp_path), "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")
    runs = [report.read_run(tmp_path / f"seed{s}").records for s in (1, 2)]
    assert plot.seed_curve(runs, "Recall@1")[0] == [2, 4]


# Item 18: foreign and broken folders are skipped with the reason; the rest is reported.

def broken_folders(root: Path) -> dict[str, str]:
    """Folders under ``root`` that are not readable runs, and what the report must say about each."""
    (root / "foreign").mkdir(parents=True)
    (root / "foreign" / "config.json").write_text(json.dumps({"model": "resnet", "lr": 0.1}))
    (root / "invalid").mkdir()
    (root / "invalid" / "config.json").write_text('{"flags": {"dataset": ')
    (root / "a list").mkdir()
    (root / "a list" / "config.json").write_text("[1, 2]")
    truncated = fake_run(root / "truncated", curve(10.0, 20.0))
    with open(truncated / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "Reca')
    return {"foreign": "not written by run.py", "invalid": "not valid JSON", "a list": "not written by run.py",
            "truncated": "line 3"}


def test_report_and_compare_skip_foreign_and_broken_folders(tmp_path, capsys):
    reasons = broken_folders(tmp_path)
    fake_run(tmp_path / "good", curve(10.0, 20.0))
    table, err = csv_report([tmp_path], capsys)
    assert row(table, "Triplet", "final epoch")["seeds"] == "1"
    for name, reason in reasons.items():
        line = next(line for line in err.splitlines() if line.startswith(f"skipped: {tmp_path / name}: "))
        assert reason in line
    assert "Traceback" not in err
    assert plot.main(["--compare", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 0
    assert "skipped: " in capsys.readouterr().err


def test_plot_of_a_run_with_a_damaged_distance_sample_still_draws_the_curves(tmp_path, capsys):
    folder = fake_run(tmp_path / "run", curve(10.0, 20.0, start=1))
    (folder / "mdr_distances.pt").write_bytes(b"PK\x03\x04 truncated")
    assert plot.main([str(folder)]) == 1
    err = capsys.readouterr().err
    assert (folder / "curves.png").is_file() and not (folder / "mdr_histogram.png").exists()
    assert err.count("\n") == 1 and "mdr_distances.pt" in err and "Traceback" not in err


def test_sweep_skips_foreign_and_broken_run_folders_and_plans_the_rest(tmp_path, capsys):
    base = tmp_path / "cub200" / "triplet"
    (base / "seed1").mkdir(parents=True)
    (base / "seed1" / "config.json").write_text('{"model": "x"}')
    fake_run(base / "seed2", curve(10.0, 20.0))
    for name in ("checkpoint.pth", "best.pth", "last.pth"):
        (base / "seed2" / name).write_bytes(b"")
    (base / "seed2" / "metrics.jsonl").write_text('{"epoch": 0, "Recall@1": 1.0}\n{"epo')
    (base / "seed3").mkdir()
    (base / "seed3" / "config.json").write_text("{")
    assert sweep.main(["--dataset", "cub200", "--seeds", "1", "2", "3", "4", "--methods", "triplet", "--root",
                       str(tmp_path), "--dry-run"]) == 0
    out, err = capsys.readouterr()
    planned = [shlex.split(line)[-1] for line in out.splitlines()]
    assert planned == [str(base / "seed2"), str(base / "seed4")]
    assert f"skipped: {base / 'seed1'}: " in err and f"skipped: {base / 'seed3'}: " in err
    assert "--resume" in out.splitlines()[0]


# Item 19: tools.plot's own failures are one line each.

@contextmanager
def unwritable(folder: Path):
    """``folder`` cannot be written in the ``with``: read-only, and as root also seen as another user."""
    folder.chmod(0o555)
    root = os.geteuid() == 0
    try:
        if root:
            os.seteuid(65534)
        yield
    finally:
        if root:
            os.seteuid(0)
        folder.chmod(0o755)


def one_line_error(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert plot.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_plot_failures_are_one_line(tmp_path, capsys):
    plot._pyplot()
    with tempfile.TemporaryDirectory() as shared:
        Path(shared).chmod(0o755)
        folder = fake_run(Path(shared) / "run", curve(10.0, 20.0, start=1))
        with unwritable(folder):
            assert "cannot write" in one_line_error([str(folder)], capsys)
    done = fake_run(tmp_path / "done", curve(10.0, 20.0, start=1))
    assert "no/such" in one_line_error(["--compare", str(done), "--out", str(tmp_path / "no/such/c.png")], capsys)
    assert "'.xyz'" in one_line_error(["--compare", str(done), "--out", str(tmp_path / "c.xyz")], capsys)
    unfinished = fake_run(tmp_path / "unfinished", curve(10.0, 20.0), epochs=5)
    assert "no finished run" in one_line_error(["--compare", str(unfinished), "--out", str(tmp_path / "c.png")],
                                               capsys)


# Item 26: a seed given twice runs once.

def test_sweep_drops_repeated_seeds_with_a_note(tmp_path, capsys):
    assert sweep.main(["--dataset", "cub200", "--seeds", "1", "1", "2", "--methods", "mdr", "mdr", "--root",
                       str(tmp_path), "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert [shlex.split(line)[-1] for line in out.splitlines()] == [str(tmp_path / "cub200" / "mdr" / s)
                                                                    for s in ("seed1", "seed2")]
    assert "--seeds: 1 given twice, run once" in err and "--methods: mdr given twice, run once" in err
