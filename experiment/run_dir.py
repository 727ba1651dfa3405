"""The run folder: which one a run writes to, its lock, and the files rebuilt from its checkpoint."""
import fcntl
import itertools
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from errors import UserError
from model.checkpoint import atomic_file, read_weights_file, save_atomic

DEFAULT_SAVE_DIR = "./result"
LOCK_NAME = ".lock"
RUN_FILES = ("checkpoint.pth", "best.pth", "last.pth", "metrics.jsonl", "result.txt")
OUTPUT_FILES = RUN_FILES + ("best_val.pth", "config.json", "curves.png", "mdr_histogram.png", "mdr_distances.pt",
                            "retrievals.png", "embeddings.pt")


def resume_dir(resume: str | Path) -> Path:
    """The run folder of ``--resume``, which names the folder or its checkpoint.pth."""
    path = Path(resume)
    return path if path.is_dir() else path.parent


def resume_checkpoint(resume: str | Path) -> Path:
    """The checkpoint file of ``--resume``."""
    path = Path(resume)
    return path / "checkpoint.pth" if path.is_dir() else path


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds the outputs of a run (training, or an evaluation's exports)."""
    return any((folder / name).exists() for name in OUTPUT_FILES)


def _lock(folder: Path) -> int | None:
    """An exclusive ``flock`` on ``folder/.lock``, or None if another process holds it."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--save-dir {folder} is a file; name a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise UserError(f"cannot write to the run folder {folder} ({exc.strerror}); choose a writable "
                        "--save-dir") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files a killed save left in ``folder``; returns them."""
    stale = sorted(folder.glob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _claim_default() -> tuple[Path, int]:
    """``./result``, or the first of ``./result_1``, ``./result_2``, ... that holds no run and is not locked."""
    for n in itertools.count():
        folder = Path(DEFAULT_SAVE_DIR if n == 0 else f"{DEFAULT_SAVE_DIR}_{n}")
        fd = _lock(folder)
        if fd is not None and not holds_run(folder):
            if n:
                print(f"{DEFAULT_SAVE_DIR} holds another run; this run writes to {folder}")
            return folder, fd
        if fd is not None:
            os.close(fd)
    raise AssertionError("unreachable")


def _claim(save_dir: str | None, resume: str | None, overwrite: bool) -> tuple[Path, int]:
    if save_dir is None and resume is None:
        return _claim_default()
    folder = resume_dir(resume) if resume is not None else Path(save_dir)
    fd = _lock(folder)
    if fd is None:
        raise UserError(f"another run is writing to {folder} (its pid is in {folder / LOCK_NAME}); wait for it "
                        "to finish or choose another --save-dir")
    if resume is None and holds_run(folder):
        if not overwrite:
            os.close(fd)
            raise UserError(f"{folder} already holds a run; continue it with --resume {folder}, choose another "
                            "--save-dir, or pass --overwrite to replace it")
        print(f"--overwrite: deleting the outputs of the run in {folder}")
        for name in OUTPUT_FILES:
            (folder / name).unlink(missing_ok=True)
    return folder, fd


@contextmanager
def claim_run_dir(save_dir: str | None, resume: str | None = None, overwrite: bool = False) -> Iterator[Path]:
    """The folder this run writes to, locked against other runs for the duration of the ``with``.

    ``--resume`` writes into its own folder. An explicit ``--save-dir`` that
    holds a run is refused unless ``overwrite``, which deletes its outputs. With
    neither, the default ``./result`` is used, or the next free ``./result_N``.
    Temporary files left by a killed save are removed.
    """
    folder, fd = _claim(save_dir, resume, overwrite)
    try:
        for path in remove_temporaries(folder):
            print(f"Removed {path}, left by an interrupted save")
        yield folder
    finally:
        os.close(fd)


def upgraded_checkpoint(state: dict, folder: Path, key: str) -> dict:
    """``state`` with the fields that checkpoints written before this version lack.

    Their epoch records come from ``folder/metrics.jsonl`` up to the checkpoint's
    epoch; their best epoch is unknown (-1), so best.pth is left as it is.
    """
    if "history" in state:
        return state
    history = [r for r in read_history(folder) if r["epoch"] <= state["epoch"]]
    return {**state, "history": history, "best_epoch": -1, "key": key}


def read_history(folder: Path) -> list[dict]:
    """The epoch records of ``folder/metrics.jsonl``, oldest first; [] when there is none.

    A line that is not a record of run.py (a truncated write, another tool's file) is a UserError naming it.
    """
    path = folder / "metrics.jsonl"
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            record = exc.msg
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            why = record if isinstance(record, str) else "not an epoch record"
            raise UserError(f"{path} line {number} is not a record of run.py ({why}; a truncated write?); "
                            f"--resume {folder} rebuilds metrics.jsonl from the run's checkpoint.pth")
        records.append(record)
    return records


def selection_key(ks: list[int]) -> str:
    """The metric that picks ``best.pth``: Recall@1 when 1 is among the K, else the smallest K."""
    return f"Recall@{1 if 1 in ks else min(ks)}"


# result.txt's first line: "Best Recall@1: 77.5000 (epoch 12)"; runs from before the epoch was written lack it.
BEST_LINE = re.compile(r"Best (\S+): (\S+)(?: \(epoch (\d+)\))?")


def read_best(folder: Path) -> tuple[str, float, int | None] | None:
    """(metric, best value, its epoch or None when not recorded) of ``folder/result.txt``; None without one."""
    path = folder / "result.txt"
    found = BEST_LINE.match(path.read_text(errors="replace")) if path.is_file() else None
    if found is None:
        return None
    try:
        value = float(found.group(2))
    except ValueError:
        return None
    return found.group(1), value, int(found.group(3)) if found.group(3) else None


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text.encode())


def write_outputs(folder: Path, checkpoint: dict) -> None:
    """Rebuild last.pth, best.pth and best_val.pth (when the checkpoint's epoch is the best, on test or on
    validation), metrics.jsonl and result.txt.

    The checkpoint is the one source of truth: it is written first at the end
    of an epoch, and everything here can be derived from it again on resume.
    """
    history, key = checkpoint["history"], checkpoint["key"]
    if checkpoint["best_epoch"] == checkpoint["epoch"]:
        save_atomic(checkpoint["model"], folder / "best.pth")
    if checkpoint.get("best_val_epoch") == checkpoint["epoch"]:
        save_atomic(checkpoint["model"], folder / "best_val.pth")
    if not history:
        return
    save_atomic(checkpoint["model"], folder / "last.pth")
    write_text_atomic(folder / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    epoch = f" (epoch {checkpoint['best_epoch']})" if checkpoint["best_epoch"] >= 0 else ""  # -1: unknown
    write_text_atomic(folder / "result.txt", "Best %s: %.4f%s\nFinal %s: %.4f\n"
                      % (key, checkpoint["best"], epoch, key, history[-1].get(key, checkpoint["results"][key])))


def read_checkpoint(path: Path) -> dict:
    """The full training checkpoint at ``path``; a plain weights file is refused."""
    state = read_weights_file(path)
    if not isinstance(state, dict) or "optimizer" not in state or "epoch" not in state:
        raise UserError(f"{path} holds only model weights, not a training checkpoint; --resume needs the "
                        "checkpoint.pth of a run (or its folder); use --load to start a new run from weights")
    return state

