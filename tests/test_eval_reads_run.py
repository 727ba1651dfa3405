"""--mode eval --load RUN/FILE reads the model and data flags of the run it comes from (issue 22.2)."""
import re
import shutil

import pytest

import run
from minidata import make_cub
from model import build_model
from model.checkpoint import save_atomic
from small_run import BACKBONE, SMALL, run_main

EVAL = ["--mode", "eval", "--device", "cpu", "--workers", "0", "--no-download"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small-backbone run at 64 px with 16-d embeddings, none of them the defaults."""
    data = make_cub(tmp_path_factory.mktemp("data"))
    save = tmp_path_factory.mktemp("runs") / "run"
    run_main(SMALL + ["--data", str(data), "--save-dir", str(save), "--epochs", "1", "--recall", "1", "2"])
    best = float(re.search(r"Best Recall@1: ([\d.]+)", (save / "result.txt").read_text()).group(1))
    return save, data, best


def test_eval_of_best_pth_alone_evaluates_the_run_as_it_trained(trained, tmp_path, monkeypatch, capsys):
    save, data, best = trained
    monkeypatch.chdir(tmp_path)  # the data root comes from config.json, not from the working folder
    results = run_main(EVAL + ["--load", str(save / "best.pth")])
    assert results["Recall@1"] == pytest.approx(best, abs=1e-4)
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("[Flags]"))
    assert str(save / "config.json") in line
    for flag in (f"--backbone {BACKBONE}", "--embedding-size 16", "--image-size 64", "--dataset cub200",
                 f"--data {data.resolve()}"):
        assert flag in line
    assert "the run trained" not in out


def test_a_given_flag_that_differs_is_used_and_announced(trained, monkeypatch, capsys):
    save, data, _ = trained
    sizes = []
    real = run.build_transforms
    monkeypatch.setattr(run, "build_transforms", lambda backbone, size, **kw: sizes.append(size) or
                        real(backbone, size, **kw))
    run_main(EVAL + ["--load", str(save / "best.pth"), "--image-size", "96", "--data", str(data)])
    out = capsys.readouterr().out
    assert "evaluating at --image-size 96; the run trained at 64" in out.splitlines()
    assert sizes == [96]


def test_a_checkpoint_away_from_its_folder_carries_its_flags(trained, tmp_path, capsys):
    save, data, best = trained
    shutil.copy(save / "checkpoint.pth", tmp_path / "checkpoint.pth")
    results = run_main(EVAL + ["--load", str(tmp_path / "checkpoint.pth"), "--data", str(data)])
    assert set(results) == {"Recall@1"} and 0 <= results["Recall@1"] <= 100
    assert f"[Flags] read from {tmp_path / 'checkpoint.pth'}: --backbone {BACKBONE}" in capsys.readouterr().out


def test_a_given_model_flag_that_does_not_fit_is_announced_then_the_load_error(trained, capsys):
    save, data, _ = trained
    code = run.cli(EVAL + ["--load", str(save / "last.pth"), "--embedding-size", "32"])
    captured = capsys.readouterr()
    assert code == 1
    assert "evaluating with --embedding-size 32; the run trained with 16" in captured.out
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "linear.weight: checkpoint (16, 96) vs model (32, 96)" in err  # 96 features: test_resnet's


def test_weights_from_elsewhere_keep_the_defaults_and_the_flags_given(trained, tmp_path, capsys):
    save, data, _ = trained
    save_atomic(build_model("resnet18", embedding_size=8, pretrained=False).state_dict(), tmp_path / "own.pth")
    results = run_main(EVAL + ["--load", str(tmp_path / "own.pth"), "--backbone", "resnet18", "--embedding-size",
                               "8", "--image-size", "64", "--data", str(data)])
    assert set(results) == {"Recall@1"}
    assert "[Flags]" not in capsys.readouterr().out
