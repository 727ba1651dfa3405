"""Resumable runs, atomic checkpoints, safe loading, logs and pictures."""
import errno
import io
import json
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import run
from errors import UserError
from loss.triplet import TripletLoss
from minidata import make_cub
from model import build_model
from model import checkpoint
from model.checkpoint import load_model_weights, read_weights_file, save_atomic
from small_run import SMALL as SMALL_RUN
from tools import plot, retrievals

SMALL = SMALL_RUN + ["--embedding-size", "32", "--lambda-mdr", "0.6", "--nu-mdr", "0.01", "--lr-decay-epochs", "2"]


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory):
    return make_cub(tmp_path_factory.mktemp("data"))


def _main(argv):
    return run.main(run.parse_args(argv))


def test_resumed_run_ends_with_the_same_weights(cub_root, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    _main(SMALL + ["--data", str(cub_root), "--save-dir", str(full), "--epochs", "3"])
    _main(SMALL + ["--data", str(cub_root), "--save-dir", str(part), "--epochs", "1"])
    _main(SMALL + ["--data", str(cub_root), "--save-dir", str(part), "--epochs", "3", "--resume", str(part)])
    a = torch.load(full / "last.pth", weights_only=True)
    b = torch.load(part / "last.pth", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ca, cb = (read_weights_file(d / "checkpoint.pth") for d in (full, part))
    assert torch.equal(ca["mdr"]["levels"], cb["mdr"]["levels"]) and ca["epoch"] == cb["epoch"] == 3
    assert bool(cb["mdr"]["initialized"]) and ca["best"] == cb["best"]
    assert ca["scheduler"]["last_epoch"] == cb["scheduler"]["last_epoch"] == 3
    assert (full / "result.txt").read_text() == (part / "result.txt").read_text()
    records = [json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert {"loss", "mdr_loss", "levels", "lr", "Recall@1"} <= set(records[1])
    assert records[3]["lr"] == pytest.approx(1e-3 * 0.2)


def test_atomic_write_survives_a_failure(tmp_path, monkeypatch):
    target = tmp_path / "best.pth"
    save_atomic({"w": torch.ones(3)}, target)

    def failing_save(obj, f):
        f.write(b"partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        save_atomic({"w": torch.zeros(3)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["best.pth"]


def test_non_finite_loss_stops_with_epoch_and_iteration(cub_root, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = TripletLoss.forward

    def poisoned(self, embeddings, labels):
        calls["n"] += 1
        loss = original(self, embeddings, labels)
        return loss * float("nan") if calls["n"] == 4 else loss  # epoch 2, iteration 1

    monkeypatch.setattr(TripletLoss, "forward", poisoned)
    save = tmp_path / "run"
    with pytest.raises(run.NonFiniteLoss, match="epoch 2, iteration 1"):
        _main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "3"])
    assert read_weights_file(save / "checkpoint.pth")["epoch"] == 1
    for value in torch.load(save / "last.pth", weights_only=True).values():
        assert torch.isfinite(value.float()).all()


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/mdr_pwned_by_pickle",))


def test_malicious_pickle_is_refused_not_executed(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"linear.weight": Exploit()}, f)
    Path("/tmp/mdr_pwned_by_pickle").unlink(missing_ok=True)
    with pytest.raises(UserError, match="refused to load"):
        read_weights_file(path)
    assert not Path("/tmp/mdr_pwned_by_pickle").exists()


@pytest.mark.parametrize("wrap", ["plain", "dataparallel", "full"])
def test_every_checkpoint_format_loads(tmp_path, wrap):
    source = build_model("resnet18", embedding_size=16, pretrained=False)
    state = source.state_dict()
    if wrap == "dataparallel":
        state = {"module." + k: v for k, v in state.items()}
    elif wrap == "full":
        state = {"model": state, "epoch": 3, "best": 50.0}
    save_atomic(state, tmp_path / "ckpt.pth")
    target = build_model("resnet18", embedding_size=16, pretrained=False)
    load_model_weights(target, tmp_path / "ckpt.pth")
    assert torch.equal(target.linear.weight, source.linear.weight)


def test_ctrl_c_leaves_a_resumable_checkpoint(cub_root, tmp_path, monkeypatch, capsys):
    original = run.train_one_epoch

    def interrupt_in_epoch_two(*args, **kwargs):
        if args[7] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(run, "train_one_epoch", interrupt_in_epoch_two)
    save = tmp_path / "run"
    code = run.cli(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "3"])
    assert code == 130
    assert f"--resume {save}" in capsys.readouterr().err
    assert read_weights_file(save / "checkpoint.pth")["epoch"] == 1
    monkeypatch.setattr(run, "train_one_epoch", original)
    _main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "3", "--resume", str(save)])
    assert read_weights_file(save / "checkpoint.pth")["epoch"] == 3


def test_plots_retrieval_grid_and_embeddings(cub_root, tmp_path, capsys, monkeypatch):
    save, titles, draw = tmp_path / "run", [], retrievals.draw_grid

    def titled(rows, out, title=None):
        titles.append(title)
        return draw(rows, out, title)

    monkeypatch.setattr(retrievals, "draw_grid", titled)
    _main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "2", "--plot",
                   "--save-retrievals", "4", "--save-embeddings"])
    for name, min_size in (("curves.png", (1000, 300)), ("mdr_histogram.png", (500, 300)),
                           ("retrievals.png", (6 * 128, 4 * 128))):
        with Image.open(save / name) as image:
            assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1], name
            assert len(image.convert("RGB").getcolors(1 << 24)) > 20, f"{name} looks blank"
    embedded = torch.load(save / "embeddings.pt", weights_only=True)
    assert embedded["test"]["embeddings"].shape == (12, 32) and embedded["test"]["labels"].shape == (12,)
    assert plot.main([str(save)]) == 0
    assert titles == ["cub200 test split, last.pth (epoch 2): 4 evenly spaced queries and their top 5 retrievals"]
    assert read_weights_file(save / "mdr_distances.pt")["epoch"] == 2  # the histogram's title names it


def test_retrieval_borders_are_green_for_matches(tmp_path):
    from tools.retrievals import GREEN, RED, TILE, save_retrieval_grid
    make_cub(tmp_path, classes=2, per_class=2)
    samples = [(str(p), i // 2) for i, p in enumerate(sorted((tmp_path / "CUB_200_2011" / "images").rglob("*.jpg")))]
    emb = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
    labels = torch.tensor([0, 0, 1, 1])
    out = save_retrieval_grid((emb, labels), samples, (emb, labels), samples, 4, tmp_path / "g.png", k=2,
                              exclude_self=True)
    with Image.open(out) as grid:
        first = grid.getpixel((TILE + 6 + 2, 2))  # border of the first retrieval of query 0 (its class mate)
        second = grid.getpixel((2 * TILE + 6 + 2, 2))  # second retrieval: the other class
    assert first == GREEN and second == RED


def test_eval_prints_a_table_of_every_metric(cub_root, capsys):
    results = _main(SMALL + ["--mode", "eval", "--data", str(cub_root), "--recall", "1", "2",
                             "--metrics", "recall", "map_r", "nmi"])
    out = capsys.readouterr().out
    for name in ("Recall@1", "Recall@2", "MAP@R", "R-Precision", "NMI"):
        assert name in results and f"\n{name}" in out


def test_plot_tool_needs_a_run_dir(tmp_path, capsys):
    assert plot.main([str(tmp_path)]) == 1
    assert "metrics.jsonl not found" in capsys.readouterr().err


class FullDisk(io.FileIO):
    """A file on a disk that fills up after ``room`` bytes: writes beyond fail with ENOSPC, as the kernel's do."""

    room = 4096

    def write(self, data) -> int:
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_keeps_the_previous(cub_root, tmp_path, monkeypatch,
                                                                                   capsys):
    save = tmp_path / "run"
    opened: list[tuple[int, str]] = []  # (descriptor, prefix) of each temporary file atomic_file creates
    real_mkstemp, real_fdopen = checkpoint.tempfile.mkstemp, checkpoint.os.fdopen

    def mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        opened.append((fd, kwargs.get("prefix", "")))
        return fd, name

    def fdopen(fd, *args, **kwargs):
        saves = [d for d, prefix in opened if prefix == ".checkpoint.pth."]
        if len(saves) == 3 and fd == saves[-1]:  # epoch 2's checkpoint: epochs 0 and 1 were saved
            return FullDisk(fd, "wb")
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(checkpoint.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(checkpoint.os, "fdopen", fdopen)
    code = run.cli(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "3"])
    err = capsys.readouterr().err  # the progress bars, then the error
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 1 and len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith(f"error: the disk is full: writing {save / 'checkpoint.pth'} needs about ")
    assert " MiB are free there; the previous checkpoint.pth is kept" in errors[0]
    assert errors[0].endswith(f"--resume {save}")
    assert read_weights_file(save / "checkpoint.pth")["epoch"] == 1 and not list(save.glob(".*.tmp"))
    monkeypatch.undo()
    _main(SMALL + ["--data", str(cub_root), "--resume", str(save), "--epochs", "3"])
    assert read_weights_file(save / "checkpoint.pth")["epoch"] == 3


def test_missing_matplotlib_stops_a_plot_run_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(run, "train", lambda *a, **k: pytest.fail("trained although --plot cannot draw"))
    code = run.cli(SMALL + ["--data", str(make_cub(tmp_path / "data")), "--save-dir", str(tmp_path / "run"),
                            "--epochs", "1", "--plot"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "--plot, tools.plot) needs the optional package matplotlib" in err and "pip install matplotlib" in err
    with pytest.raises(UserError, match="pip install matplotlib"):  # tools.plot's figures too
        plot.check_plotting()


def test_a_missing_weights_file_names_what_to_pass_without_flags_the_command_lacks(tmp_path):
    with pytest.raises(UserError, match=r"nope.pth not found; check the path given \(a run folder's best.pth") as exc:
        read_weights_file(tmp_path / "nope.pth")  # tools.index and tools.export have no --resume
    assert "--resume" not in str(exc.value)
