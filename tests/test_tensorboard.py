"""--tensorboard: the event files hold the per-iteration and per-epoch scalars, the histogram and the projector."""
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import run
from errors import UserError
from minidata import make_cub
from small_run import SMALL as SMALL_RUN

SMALL = SMALL_RUN + ["--lambda-mdr", "0.6", "--nu-mdr", "0.01", "--recall", "1", "2", "--metrics", "recall",
                     "map_r", "nmi"]


def _events(folder):
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return events


def test_event_files_hold_the_named_scalars_histogram_and_embeddings(tmp_path, capsys):
    root, save = make_cub(tmp_path / "data"), tmp_path / "run"
    run.main(run.parse_args(SMALL + ["--data", str(root), "--save-dir", str(save), "--epochs", "1"]))
    run.main(run.parse_args(SMALL + ["--data", str(root), "--resume", str(save), "--epochs", "2", "--tensorboard"]))
    events = _events(save / "tb")
    per_iteration = {"iteration/loss", "iteration/mdr_term", "iteration/lr"}
    per_epoch = {"metrics/Recall@1", "metrics/Recall@2", "metrics/MAP@R", "metrics/R-Precision", "metrics/NMI",
                 "epoch/loss", "epoch/mdr_term", "epoch/lr", "mdr/level_1", "mdr/level_2", "mdr/level_3",
                 "mdr/running_mean", "mdr/running_std"}
    assert per_iteration | per_epoch <= set(events.Tags()["scalars"]) and "mdr/level_0" not in events.Tags()["scalars"]
    out = capsys.readouterr().out  # where the logs are, and the command that shows them
    assert f"TensorBoard logs go to {save / 'tb'}; view them with: tensorboard --logdir {save / 'tb'}\n" in out
    assert "level_1: " in out and "level_3: " in out and "levels: " not in out  # the printed names are the tags'
    assert [e.step for e in events.Scalars("iteration/loss")] == [2, 3]  # epoch 2 of the resumed run
    assert events.Scalars("iteration/lr")[0].value == pytest.approx(1e-3)
    history = run.read_checkpoint(save / "checkpoint.pth")["history"]
    for tag, key in (("metrics/Recall@1", "Recall@1"), ("mdr/running_std", "momented_std")):
        assert [(e.step, e.value) for e in events.Scalars(tag)] == [(2, pytest.approx(history[-1][key]))]
    assert [e.value for e in events.Scalars("mdr/level_3")] == [pytest.approx(history[-1]["levels"][2])]
    assert events.Tags()["histograms"] == ["mdr/normalized_test_distances"]
    assert (save / "tb" / "projector_config.pbtxt").is_file()
    metadata = next((save / "tb").glob("*/test_embeddings/metadata.tsv")).read_text().split()
    assert len(metadata) == 12 and set(metadata) == {"3", "4", "5"}


def test_missing_tensorboard_gives_the_install_hint(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    from experiment.tensorboard import TensorBoardLog
    with pytest.raises(UserError, match="--tensorboard needs the optional package tensorboard.*"
                                        "pip install tensorboard"):
        TensorBoardLog(tmp_path / "tb", 2)
    code = run.cli(SMALL + ["--data", str(make_cub(tmp_path / "data")), "--save-dir", str(tmp_path / "run"),
                            "--tensorboard"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "pip install tensorboard" in err


@pytest.mark.parametrize("from_start", [True, False], ids=["on from the start", "switched on at the resume"])
def test_a_resume_with_eval_every_logs_the_histogram_of_evaluated_epochs_only(tmp_path, from_start):
    root, save = make_cub(tmp_path / "data"), tmp_path / "run"
    first = ["--tensorboard", "--eval-every", "3"] if from_start else []
    run.main(run.parse_args(SMALL + ["--data", str(root), "--save-dir", str(save), "--epochs", "1"] + first))
    run.main(run.parse_args(SMALL + ["--data", str(root), "--resume", str(save), "--epochs", "3", "--tensorboard",
                                     "--eval-every", "3"]))
    events = _events(save / "tb")
    evaluated = [1, 3] if from_start else [3]  # the last epoch is always evaluated, epoch 2 is not
    assert [e.step for e in events.Histograms("mdr/normalized_test_distances")] == evaluated
    assert [e.step for e in events.Scalars("metrics/Recall@1")] == evaluated
    assert [e.step for e in events.Scalars("epoch/loss")] == ([1, 2, 3] if from_start else [2, 3])
