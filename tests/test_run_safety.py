"""A run folder is never clobbered or mixed, numbers keep their names, and bad input is one clear line."""
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

import run
from errors import UserError
from experiment import run_dir
from minidata import make_cub
from small_run import BACKBONE, SMALL, run_main as _main
from model import build_model
from model.checkpoint import read_weights_file, save_atomic

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory):
    return make_cub(tmp_path_factory.mktemp("data"))


def _epochs(folder: Path) -> list[int]:
    """The trained epochs of metrics.jsonl, after its first line: epoch 0, the evaluation before training."""
    epochs = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert epochs[0] == 0
    return epochs[1:]


def test_explicit_save_dir_holding_a_run_is_refused_unless_overwrite(cub_root, tmp_path):
    save = tmp_path / "run"
    _main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "1"])
    weights = (save / "last.pth").read_bytes()
    with pytest.raises(UserError, match="already holds a run.*--resume.*--overwrite"):
        _main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "1", "--seed", "2"])
    assert (save / "last.pth").read_bytes() == weights and _epochs(save) == [1]
    _main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "1", "--seed", "2", "--overwrite"])
    assert _epochs(save) == [1] and (save / "last.pth").read_bytes() != weights


def test_default_save_dir_moves_to_the_next_free_result_n(cub_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        _main(SMALL + ["--data", str(cub_root), "--epochs", "1"])
    assert (tmp_path / "result" / "last.pth").is_file() and (tmp_path / "result_1" / "last.pth").is_file()
    assert "this run writes to result_1" in capsys.readouterr().out
    assert _epochs(tmp_path / "result") == _epochs(tmp_path / "result_1") == [1]


def test_a_locked_folder_is_refused_at_once(cub_root, tmp_path, monkeypatch):
    save = tmp_path / "run"
    _main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "1"])
    with open(save / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        monkeypatch.setattr(run, "evaluate", lambda *a, **k: pytest.fail("evaluated before checking the folder"))
        for extra in (["--save-dir", str(save), "--overwrite"], ["--resume", str(save), "--epochs", "2"]):
            with pytest.raises(UserError, match="another run is writing to"):
                _main(SMALL + ["--data", str(cub_root)] + extra)
    assert _epochs(save) == [1]


def test_default_run_skips_a_locked_result(cub_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "result").mkdir()
    with open(tmp_path / "result" / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        _main(SMALL + ["--data", str(cub_root), "--epochs", "1"])
    assert (tmp_path / "result_1" / "last.pth").is_file() and not (tmp_path / "result" / "last.pth").exists()


def test_resume_writes_into_its_own_folder(cub_root, tmp_path, monkeypatch):
    save = tmp_path / "run"
    _main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "1"])
    monkeypatch.chdir(tmp_path)
    _main(SMALL + ["--data", str(cub_root), "--resume", str(save), "--epochs", "2"])
    assert _epochs(save) == [1, 2] and not (tmp_path / "result").exists()
    with pytest.raises(SystemExit):
        run.parse_args(SMALL + ["--resume", str(save), "--save-dir", str(tmp_path / "other")])
    assert run.parse_args(["--resume", str(save), "--save-dir", str(save)]).save_dir == str(save)


def test_recall_ks_are_sorted_and_best_is_recall_at_1(cub_root, tmp_path):
    save = tmp_path / "run"
    _main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "2", "--recall", "4", "1", "4"])
    records = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    state = read_weights_file(save / "checkpoint.pth")
    assert state["args"]["recall"] == [1, 4] and state["key"] == "Recall@1"
    best = max(records, key=lambda r: (r["Recall@1"], -r["epoch"]))
    assert (save / "result.txt").read_text() == "Best Recall@1: %.4f (epoch %d)\nFinal Recall@1: %.4f\n" % (
        best["Recall@1"], best["epoch"], records[-1]["Recall@1"])


def test_without_k_1_the_label_names_the_k_used(cub_root, tmp_path):
    save = tmp_path / "run"
    _main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "1", "--recall", "4", "2"])
    text = (save / "result.txt").read_text()
    assert text.startswith("Best Recall@2: ") and "Final Recall@2: " in text and "Recall@1" not in text


BAD_FLAGS = [["--recall", "0", "1"], ["--recall", "-1"], ["--batch", "1"], ["--batch", "2", "--num-image-per-class", "4"],
             ["--eval-batch", "0"], ["--workers", "-1"], ["--embedding-size", "0"], ["--image-size", "0"],
             ["--epochs", "0"], ["--iter-per-epoch", "0"], ["--lr", "nan"], ["--lr", "-1"], ["--lr", "0"],
             ["--lr", "inf"], ["--lambda-mdr", "nan"], ["--nu-mdr", "-1"], ["--num-image-per-class", "1"],
             ["--save-dir", ""], ["--mode", "eval", "--resume", "x"], ["--batch", "many"],
             ["--seed", "99999999999999999999999"], ["--seed", "-1"], ["--save-retrievals", "-1"],
             ["--resume", "no/such/run"]]


@pytest.mark.parametrize("flags", BAD_FLAGS, ids=[" ".join(f) for f in BAD_FLAGS])
def test_bad_flags_are_one_argparse_line(flags, capsys):
    with pytest.raises(SystemExit) as exc:
        run.parse_args(flags)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("run.py: error: ") or ": error: " in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_abbreviations_of_the_authors_flags_keep_their_meaning(tmp_path):
    args = run.parse_args(["--save", str(tmp_path), "--num", "3", "--m", "eval", "--load", "x.pth"])
    assert args.save_dir == str(tmp_path) and args.num_image_per_class == 3 and args.mode == "eval"


@pytest.mark.parametrize("flag,value", [("--dataset", "cars196"), ("--lr", "5e-4"), ("--lr-decay-epochs", "3"),
                                        ("--seed", "9"), ("--sampler", "hard"), ("--batch", "12")])
def test_resume_refuses_flags_that_change_the_run(cub_root, tmp_path, flag, value):
    save = tmp_path / "run"
    _main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "1"])
    with pytest.raises(UserError, match=f"{flag}: .* -> "):
        _main(SMALL + ["--data", str(cub_root), "--resume", str(save), "--epochs", "2", flag, value])
    assert _epochs(save) == [1]


def test_resume_epochs_may_grow_and_a_finished_run_says_so(cub_root, tmp_path, capsys):
    save = tmp_path / "run"
    _main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "2"])
    with pytest.raises(UserError, match="already trained 2 epochs; --epochs 1 is below"):
        _main(SMALL + ["--data", str(cub_root), "--resume", str(save), "--epochs", "1"])
    capsys.readouterr()
    _main(SMALL + ["--data", str(cub_root), "--resume", str(save), "--epochs", "2"])
    assert "already finished its 2 epochs" in capsys.readouterr().out and _epochs(save) == [1, 2]


def test_exploding_lr_stops_with_the_non_finite_message_not_a_traceback(cub_root, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(run.NonFiniteLoss, match="embeddings became non-finite .* lower --lr"):
            _main(SMALL + ["--data", str(cub_root), "--save-dir", str(tmp_path / "r"), "--epochs", "2",
                           "--lr", "1e30"])


def test_a_diverged_mdr_term_blames_mdr(cub_root, tmp_path, monkeypatch, recwarn):
    original = run.MDRLoss.regularizer
    monkeypatch.setattr(run.MDRLoss, "regularizer",
                        lambda self, e, lam, nu: original(self, e, lam, nu) * float("inf"))
    with pytest.raises(run.NonFiniteLoss, match="MDR term became non-finite .* --lambda-mdr"):
        _main(SMALL + ["--data", str(cub_root), "--save-dir", str(tmp_path / "r"), "--epochs", "1",
                       "--lambda-mdr", "0.5"])
    assert not [w for w in recwarn if "requires_grad" in str(w.message)]


def test_eval_without_load_says_what_it_evaluates(cub_root, capsys):
    _main(SMALL + ["--mode", "eval", "--data", str(cub_root)])
    assert "No --load given: evaluating the initial model (random backbone" in capsys.readouterr().out


def test_kill_after_the_checkpoint_loses_no_epoch(cub_root, tmp_path, monkeypatch):
    save = tmp_path / "run"
    original = run.write_outputs

    def killed_after_checkpoint(folder, state):
        if state["epoch"] == 2:
            raise KeyboardInterrupt
        original(folder, state)

    monkeypatch.setattr(run, "write_outputs", killed_after_checkpoint)
    with pytest.raises(run.Interrupted):
        _main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "3"])
    assert _epochs(save) == [1] and read_weights_file(save / "checkpoint.pth")["epoch"] == 2
    (save / ".last.pth.x1y2.tmp").write_bytes(b"torn")
    monkeypatch.setattr(run, "write_outputs", original)
    _main(SMALL + ["--data", str(cub_root), "--resume", str(save), "--epochs", "3"])
    assert _epochs(save) == [1, 2, 3] and not list(save.glob(".*.tmp"))
    history = read_weights_file(save / "checkpoint.pth")["history"]
    assert [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()] == history


def test_resume_rebuilds_best_pth_when_its_epoch_was_the_best(cub_root, tmp_path):
    save = tmp_path / "run"
    _main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "1"])
    state = read_weights_file(save / "checkpoint.pth")
    (save / "best.pth").unlink()
    (save / "last.pth").unlink()
    (save / "result.txt").unlink()
    _main(SMALL + ["--data", str(cub_root), "--resume", str(save), "--epochs", "1"])
    assert (save / "result.txt").is_file() and (save / "last.pth").is_file()
    assert (save / "best.pth").is_file() == (state["best_epoch"] == 1)


@pytest.mark.parametrize("content,match", [(b"a,b\n1,2\n", "not a PyTorch file"),
                                           (b"just some notes\n", "not a PyTorch file")])
def test_load_of_a_text_file_is_not_called_a_security_risk(tmp_path, content, match):
    path = tmp_path / "weights.csv"
    path.write_bytes(content)
    with pytest.raises(UserError, match=match) as exc:
        read_weights_file(path)
    assert "code" not in str(exc.value)


def test_load_of_a_folder_names_the_file_to_pass(tmp_path):
    with pytest.raises(UserError, match="is a folder; pass a weights file such as .*best.pth"):
        read_weights_file(tmp_path)


def test_resume_of_plain_weights_says_to_use_load(cub_root, tmp_path):
    save = tmp_path / "run"
    _main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "1"])
    with pytest.raises(UserError, match="only model weights, not a training checkpoint.*--load"):
        _main(SMALL + ["--data", str(cub_root), "--resume", str(save / "best.pth"), "--epochs", "2"])


def test_pretrained_file_of_another_architecture_is_one_line(tmp_path):
    path = tmp_path / "resnet18.pth"  # no hash in the name: a name's hash is checked first (test_trust.py)
    save_atomic(build_model("resnet18", pretrained=False).base.state_dict(), path)
    with pytest.raises(UserError, match="do not fit --backbone resnet50") as exc:
        build_model("resnet50", pretrained=str(path))
    assert len(str(exc.value)) < 1000 and "\n" not in str(exc.value)


def test_save_dir_that_is_a_file_or_unwritable_fails_before_evaluation(cub_root, tmp_path, monkeypatch):
    monkeypatch.setattr(run, "evaluate", lambda *a, **k: pytest.fail("evaluated before checking the folder"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file; name a folder"):
        _main(SMALL + ["--data", str(cub_root), "--save-dir", str(tmp_path / "file")])
    with pytest.raises(UserError, match="cannot write to the run folder"):
        _main(SMALL + ["--data", str(cub_root), "--save-dir", str(tmp_path / "file" / "sub")])

    def read_only(path, flags, mode=0o777):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(run_dir.os, "open", read_only)
    with pytest.raises(UserError, match="cannot write to the run folder .*Permission denied.*writable"):
        _main(SMALL + ["--data", str(cub_root), "--save-dir", str(tmp_path / "ro")])


def test_outputs_follow_the_umask(cub_root, tmp_path):
    old = os.umask(0o027)
    try:
        _main(SMALL + ["--data", str(cub_root), "--save-dir", str(tmp_path / "run"), "--epochs", "1"])
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").iterdir()}
    assert set(modes.values()) == {0o640}, modes


def test_sigterm_stops_like_ctrl_c_with_exit_143(cub_root, tmp_path):
    save = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py")] + SMALL + [
        "--data", str(cub_root), "--save-dir", str(save), "--epochs", "1000"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    trained = save / "metrics.jsonl"  # its second line is epoch 1's: training is under way
    while (not trained.exists() or trained.read_text().count("\n") < 2) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "SIGTERM during epoch" in err and f"--resume {save}" in err and "Traceback" not in err


def test_a_checkpoint_from_before_recorded_history_still_resumes(cub_root, tmp_path, capsys):
    save = tmp_path / "run"
    _main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "1"])
    state = read_weights_file(save / "checkpoint.pth")
    save_atomic({k: v for k, v in state.items() if k not in ("history", "best_epoch", "key", "args")},
                save / "checkpoint.pth")
    _main(SMALL + ["--data", str(cub_root), "--resume", str(save), "--epochs", "2"])
    assert "predates recorded flags" in capsys.readouterr().out and _epochs(save) == [1, 2]


def test_resume_alone_continues_with_the_runs_own_flags(cub_root, tmp_path, monkeypatch):
    save = tmp_path / "run"
    _main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "1"])
    monkeypatch.chdir(tmp_path)
    _main(["--resume", str(save), "--epochs", "2"])
    state = read_weights_file(save / "checkpoint.pth")
    assert _epochs(save) == [1, 2] and state["args"]["backbone"] == BACKBONE and state["args"]["batch"] == 8
    assert not (tmp_path / ".lock").exists() and not (tmp_path / "result").exists()


def test_resume_of_a_missing_run_claims_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        run.parse_args(["--resume", "no/such/run"])
    assert "no checkpoint there" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_a_batch_larger_than_the_classes_allow_is_announced(cub_root, tmp_path, capsys):
    _main(SMALL + ["--data", str(cub_root), "--save-dir", str(tmp_path / "r"), "--epochs", "1", "--batch", "100"])
    assert "give batches of 6 images with --num-image-per-class 2, fewer than --batch 100" in capsys.readouterr().out


def test_pretrained_text_file_is_not_a_pytorch_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not weights\n")
    with pytest.raises(UserError, match="notes.txt is not a PyTorch file"):
        build_model("resnet18", pretrained=str(path))


def test_runs_and_evaluation_exports_never_share_a_folder(cub_root, tmp_path):
    exports, trained = tmp_path / "exports", tmp_path / "trained"
    _main(SMALL + ["--mode", "eval", "--data", str(cub_root), "--save-dir", str(exports), "--save-embeddings"])
    with pytest.raises(UserError, match="already holds a run"):
        _main(SMALL + ["--data", str(cub_root), "--save-dir", str(exports), "--epochs", "1"])
    _main(SMALL + ["--data", str(cub_root), "--save-dir", str(trained), "--epochs", "1"])
    with pytest.raises(UserError, match="already holds a run"):
        _main(SMALL + ["--mode", "eval", "--data", str(cub_root), "--save-dir", str(trained), "--save-embeddings",
                       "--load", str(trained / "best.pth")])
    assert not (trained / "embeddings.pt").exists()


def test_folder_data_that_is_a_file_says_so(tmp_path):
    from dataset import Folder
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="notes.txt is a file, not a folder"):
        Folder(tmp_path / "notes.txt")


def test_curves_plot_a_run_evaluated_every_other_epoch(cub_root, tmp_path):
    save = tmp_path / "run"
    _main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "3", "--eval-every", "2", "--plot"])
    assert (save / "curves.png").stat().st_size > 10_000 and "Recall@1" not in _epochs_records(save)[1]


def _epochs_records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
