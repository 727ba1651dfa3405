"""Issue 25, section 4: the paper's ablations as grid sweeps, and MDR's levels and momentum as flags."""
import csv
import io
import json
import shlex

import pytest
import torch

import run
from errors import UserError
from minidata import make_cub
from model.checkpoint import read_weights_file, save_atomic
from small_run import SMALL, run_main
from test_sweep_report import TINY, in_process
from tools import plot, report, sweep

MDR = ["--lambda-mdr", "0.6", "--nu-mdr", "0.01"]


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory):
    return make_cub(tmp_path_factory.mktemp("data"))


def test_a_grid_sweep_gives_folders_report_rows_and_plots(cub_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sweep, "execute", in_process)
    root = tmp_path / "result"
    argv = ["--dataset", "cub200", "--seeds", "1", "2", "--methods", "mdr", "--root", str(root),
            "--grid", "lambda-mdr=0.2,0.6", "mdr-levels=-3 0 3", "--", *TINY, "--data", str(cub_root)]
    assert sweep.main(argv) == 0
    points = ["lambda-mdr=0.2,mdr-levels=-3_0_3", "lambda-mdr=0.6,mdr-levels=-3_0_3"]
    found = sorted(p.relative_to(root / "cub200" / "mdr").as_posix() for p in root.glob("cub200/mdr/*/seed*"))
    assert found == [f"{point}/seed{s}" for point in points for s in (1, 2)]
    flags = json.loads((root / "cub200" / "mdr" / points[0] / "seed2" / "config.json").read_text())["flags"]
    assert (flags["lambda_mdr"], flags["nu_mdr"], flags["mdr_levels"], flags["seed"]) == (0.2, 0.01, [-3, 0, 3], 2)
    capsys.readouterr()
    assert report.main([str(root), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["method"], r["grid"], r["selection"], r["seeds"]) for r in rows] == [
        ("Triplet+MDR", f"lambda-mdr={lam},mdr-levels=-3 0 3", selection, "2") for lam in ("0.2", "0.6")
        for selection in ("best epoch (authors' protocol)", "final epoch")]
    assert report.main([str(root)]) == 0
    assert "| Dataset | Method | Grid | Selection | n |" in capsys.readouterr().out
    for extra in (["--against", "lambda-mdr"], []):
        out = tmp_path / f"plot{len(extra)}.png"
        assert plot.main(["--compare", str(root), "--out", str(out), *extra]) == 0
        assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 10_000
    assert "no run folder of a grid over --lr" in one_line(plot.main, ["--compare", str(root), "--out",
                                                                        str(tmp_path / "x.png"), "--against", "lr"],
                                                           capsys)


def one_line(main, argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_a_grid_dry_run_lists_the_cross_product_and_refuses_bad_grids(tmp_path, capsys):
    assert sweep.main(["--dataset", "cars196", "--seeds", "3", "--methods", "triplet", "mdr", "--root", str(tmp_path),
                       "--grid", "nu_mdr=0,0.01", "mdr-momentum=0.5,0.9,0.9", "--dry-run", "--", "--data", "/d"]) == 0
    out, err = capsys.readouterr()
    commands = [shlex.split(line) for line in out.splitlines()]
    assert len(commands) == 8 and "--grid mdr-momentum: 0.9 given twice, run once" in err
    last = commands[-1]
    assert last[2:] == ["--dataset", "cars196", "--lr", "5e-5", "--recall", "1", "2", "4", "8", "--lambda-mdr", "0.2",
                        "--nu-mdr", "0.01", "--seed", "3", "--nu-mdr", "0.01", "--mdr-momentum", "0.9", "--data", "/d",
                        "--save-dir", str(tmp_path / "cars196" / "mdr" / "nu-mdr=0.01,mdr-momentum=0.9" / "seed3")]
    for grid, message in ((["seed=1,2"], "use --seeds"), (["l2norm=1"], "takes no value"), (["banana=1"], "FLAG=V1"),
                          (["lr=1e-4,"], "non-empty"), (["lr=1e-4", "lr=1e-3"], "given twice"),
                          (["data=/a,/b"], "no '/'")):
        assert message in one_line(sweep.main, ["--dataset", "cub200", "--seeds", "1", "--root", str(tmp_path),
                                                "--dry-run", "--grid", *grid], capsys)
    assert "also given after --" in one_line(sweep.main, ["--dataset", "cub200", "--seeds", "1", "--dry-run",
                                                          "--grid", "lr=1,2", "--", "--lr", "3"], capsys)


def test_datasets_without_the_authors_configuration_take_cub_s_and_say_so(tmp_path, capsys):
    assert sweep.main(["--dataset", "folder", "--seeds", "1", "--methods", "mdr", "--root", str(tmp_path),
                       "--dry-run", "--", "--data", "/my/images"]) == 0
    out, err = capsys.readouterr()
    cmd = shlex.split(out)
    assert cmd[2:4] == ["--dataset", "folder"] and cmd[4:15] == [
        "--lr", "5e-5", "--recall", "1", "2", "4", "8", "--lambda-mdr", "0.6", "--nu-mdr", "0.01"]
    assert "the authors gave no configuration for folder; each method takes CUB-200's" in err
    with pytest.raises(SystemExit):
        sweep.parse(["--dataset", "no-such-set", "--seeds", "1"])


def test_the_authors_mdr_levels_and_momentum_spelled_out_train_the_same_weights(cub_root, tmp_path):
    default, spelled, other = tmp_path / "default", tmp_path / "spelled", tmp_path / "other"
    base = SMALL + MDR + ["--data", str(cub_root), "--epochs", "1"]
    run_main(base + ["--save-dir", str(default)])
    run_main(base + ["--save-dir", str(spelled), "--mdr-levels", "-3", "0", "3", "--mdr-momentum", "0.9"])
    run_main(base + ["--save-dir", str(other), "--mdr-levels", "-2", "1", "--mdr-momentum", "0.5"])
    a, b, c = (read_weights_file(d / "checkpoint.pth") for d in (default, spelled, other))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["mdr"]:
        assert torch.equal(a["mdr"][key], b["mdr"][key]), key
    # the default head scales every batch to a mean distance of 1, so the momentum shows in the std
    assert c["mdr"]["levels"].shape == (2,) and not torch.equal(a["mdr"]["momented_std"], c["mdr"]["momented_std"])
    config = json.loads((other / "config.json").read_text())["flags"]
    assert (config["mdr_levels"], config["mdr_momentum"]) == ([-2.0, 1.0], 0.5)
    with pytest.raises(UserError, match=r"--mdr-momentum: 0\.5 -> 0\.9"):
        run_main(["--resume", str(other), "--mdr-momentum", "0.9", "--epochs", "2"])
    state = dict(a, args={k: v for k, v in a["args"].items() if not k.startswith("mdr_")})
    save_atomic(state, default / "checkpoint.pth")  # a run from before the flags existed: it used -3 0 3 and 0.9
    with pytest.raises(UserError, match=r"--mdr-levels: \[-3\.0, 0\.0, 3\.0\] -> \[-2\.0, 0\.0, 2\.0\]"):
        run_main(["--resume", str(default), "--mdr-levels", "-2", "0", "2", "--epochs", "2"])
    run_main(["--resume", str(default), "--mdr-levels", "-3", "0", "3", "--epochs", "1"])


def test_bad_mdr_flags_are_argparse_errors(capsys):
    for flags in (["--mdr-momentum", "1.5"], ["--mdr-momentum", "-0.1"], ["--mdr-levels", "nan"], ["--mdr-levels"]):
        with pytest.raises(SystemExit):
            run.parse_args(flags)
        assert "--mdr-" in capsys.readouterr().err
