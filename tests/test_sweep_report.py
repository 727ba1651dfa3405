"""Issue 12: seed sweeps of the authors' configurations and the results table built from them."""
import csv
import io
import json
import shlex
import shutil
import statistics
from pathlib import Path

import pytest

import run
from minidata import make_cub
from tools import plot, report, sweep
from small_run import SMALL

TINY = SMALL + ["--iter-per-epoch", "1", "--recall", "1", "2", "--epochs", "1"]


def in_process(cmd: list[str]) -> int:
    """Run a sweep's ``python run.py ...`` command in this process (saves starting Python and torch each time)."""
    assert Path(cmd[1]).name == "run.py"
    return run.cli(cmd[2:])


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A finished sweep over 2 seeds x 3 methods of one epoch, and the flags it was given."""
    patch = pytest.MonkeyPatch()
    patch.setattr(sweep, "execute", in_process)
    tmp = tmp_path_factory.mktemp("sweep")
    data, root = make_cub(tmp / "data"), tmp / "result"
    argv = ["--dataset", "cub200", "--seeds", "1", "2", "--root", str(root), "--", *TINY, "--data", str(data)]
    assert sweep.main(argv) == 0
    yield root, argv
    patch.undo()


def test_dry_run_prints_the_authors_commands_one_per_line(tmp_path, capsys):
    assert sweep.main(["--dataset", "cub200", "--seeds", "1", "2", "--root", str(tmp_path), "--dry-run",
                       "--", "--data", "/data"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and not any(tmp_path.iterdir())
    mdr = shlex.split(lines[5])
    assert mdr[1].endswith("run.py") and mdr[2:] == [
        "--dataset", "cub200", "--lr", "5e-5", "--recall", "1", "2", "4", "8", "--lambda-mdr", "0.6", "--nu-mdr",
        "0.01", "--seed", "2", "--data", "/data", "--save-dir", str(tmp_path / "cub200" / "mdr" / "seed2")]
    assert "--l2norm" in shlex.split(lines[2]) and "--seed" in shlex.split(lines[0])


def test_inshop_sweeps_run_inshop(tmp_path, capsys):
    sweep.main(["--dataset", "inshop", "--seeds", "1", "--methods", "l2norm", "--root", str(tmp_path),
                "--dry-run"])
    cmd = shlex.split(capsys.readouterr().out.strip())
    assert cmd[1].endswith("run_inshop.py") and "--dataset" not in cmd and "--l2norm" in cmd


def test_sweep_completes_skips_and_resumes_only_the_damaged_run(swept, capfd):
    root, argv = swept
    runs = sorted(root.glob("cub200/*/seed*"))
    assert [f"{p.parent.name}/{p.name}" for p in runs] == [f"{m}/seed{s}" for m in ("l2norm", "mdr", "triplet")
                                                           for s in (1, 2)]
    assert all((p / "config.json").is_file() and (p / "result.txt").is_file() for p in runs)
    capfd.readouterr()
    assert sweep.main(argv) == 0
    assert "[Sweep] 0 run(s) done, 6 already complete" in capfd.readouterr().out
    (root / "cub200" / "mdr" / "seed2" / "last.pth").unlink()
    assert sweep.main(argv) == 0
    out = capfd.readouterr().out
    started = [line for line in out.splitlines() if line.startswith("[Sweep] /")]
    assert len(started) == 1 and started[0].endswith(f"--resume {root / 'cub200' / 'mdr' / 'seed2'}")
    assert (root / "cub200" / "mdr" / "seed2" / "last.pth").is_file()


def _by_hand(run_dirs: list[Path], pick: str, key: str) -> tuple[float, float]:
    """Mean and sample std over ``run_dirs`` of ``key`` at the best-by-Recall@1 or the final epoch."""
    values = []
    for folder in run_dirs:
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        chosen = records[-1] if pick == "final" else max(records, key=lambda r: (r["Recall@1"], -r["epoch"]))
        values.append(chosen[key])
    return statistics.mean(values), statistics.stdev(values)


def test_report_means_match_metrics_and_a_run_with_another_batch_is_flagged(swept, tmp_path, capsys):
    root, argv = swept
    data = argv[argv.index("--data") + 1]
    odd = root / "cub200" / "mdr" / "seed3"
    tiny = list(TINY)
    tiny[tiny.index("--batch") + 1] = "12"
    run.main(run.parse_args(sweep.run_flags("cub200", "mdr", 3, tiny + ["--data", data])
                            + ["--save-dir", str(odd)]))
    unfinished = root / "cub200" / "triplet" / "seed9"
    shutil.copytree(root / "cub200" / "triplet" / "seed1", unfinished)
    config = json.loads((unfinished / "config.json").read_text())
    config["flags"]["epochs"] = 3
    (unfinished / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert report.main([str(root), "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    table = list(csv.DictReader(io.StringIO(out)))
    assert [(r["method"], r["selection"]) for r in table] == [
        (m, s) for m in ("Triplet", "Triplet+L2Norm", "Triplet+MDR")
        for s in ("best epoch (authors' protocol)", "final epoch")]
    for row in table:
        method = {"Triplet": "triplet", "Triplet+L2Norm": "l2norm", "Triplet+MDR": "mdr"}[row["method"]]
        pick = "final" if row["selection"] == "final epoch" else "best"
        assert row["seeds"] == "2"
        for key in ("Recall@1", "Recall@2"):
            mean, std = _by_hand([root / "cub200" / method / f"seed{s}" for s in (1, 2)], pick, key)
            assert float(row[f"{key} mean"]) == pytest.approx(mean, abs=1e-4)
            assert float(row[f"{key} std"]) == pytest.approx(std, abs=1e-4)
    assert f"flagged, not averaged: {odd}: batch: 12 (group: 8)" in err
    assert f"unfinished: {unfinished} (1 of 3 epochs)" in err
    for fmt, mark in (("markdown", "| Triplet+MDR | best epoch (authors' protocol) | 2 |"), ("latex", r"$\pm$")):
        assert report.main([str(root), "--format", fmt]) == 0
        assert mark in capsys.readouterr().out


def test_report_adds_the_epoch_selected_on_validation(tmp_path, capsys):
    records = [{"epoch": 1, "Recall@1": 30.0, "val Recall@1": 5.0}, {"epoch": 2, "Recall@1": 40.0, "val Recall@1": 9.0},
               {"epoch": 3, "Recall@1": 45.0, "val Recall@1": 7.0}]
    flags = {"dataset": "cub200", "lambda_mdr": 0.6, "l2norm": False, "epochs": 3, "seed": 1, "batch": 8}
    config = {"flags": flags, "data": {"counts": {}}, "weights": None}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert report.main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:] == ["| cub200 | Triplet+MDR | best epoch (authors' protocol) | 1 | 45.00 ± n/a |",
                         "| cub200 | Triplet+MDR | final epoch | 1 | 45.00 ± n/a |",
                         "| cub200 | Triplet+MDR | selected on validation | 1 | 40.00 ± n/a |"]


def test_plot_compares_methods_with_the_mean_and_band_over_seeds(swept, tmp_path):
    root, _ = swept
    out = plot.plot_comparison([str(root / "cub200" / "triplet"), str(root / "cub200" / "l2norm")],
                               tmp_path / "comparison.png")
    assert out.read_bytes().startswith(b"\x89PNG")
    runs = [[json.loads(line) for line in (root / "cub200" / "triplet" / f"seed{s}" / "metrics.jsonl").read_text()
             .splitlines()] for s in (1, 2)]
    epochs, mean, std = plot.seed_curve(runs, "Recall@1")
    values = [runs[0][-1]["Recall@1"], runs[1][-1]["Recall@1"]]
    assert epochs == [0, 1] and mean[-1].item() == pytest.approx(statistics.mean(values))
    assert std[-1].item() == pytest.approx(statistics.stdev(values))
