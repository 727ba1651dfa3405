"""The run folder: which one a run writes to, its lock, and the files rebuilt from its checkpoint."""
import errno
import fcntl
import itertools
import json
import os
import shutil
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from errors import UserError
from model.checkpoint import atomic_file, read_weights_file, save_atomic

DEFAULT_SAVE_DIR = "./result"
LOCK_NAME = ".lock"
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
RUN_FILES = ("checkpoint.pth", "best.pth", "last.pth", "metrics.jsonl", "result.txt")
OUTPUT_FILES = RUN_FILES + ("best_val.pth", "config.json", "curves.png", "mdr_histogram.png", "mdr_distances.pt",
                            "retrievals.png", "embeddings.pt")
OUTPUT_DIRS = ("tb",)
# What a run writes before its first checkpoint: a folder holding only these has no run that could be lost.
BEFORE_CHECKPOINT = ("config.json", "tb")


def resume_dir(resume: str | Path) -> Path:
    """The run folder of ``--resume``, which names the folder or its checkpoint.pth."""
    path = Path(resume)
    return path if path.is_dir() else path.parent


def resume_checkpoint(resume: str | Path) -> Path:
    """The checkpoint file of ``--resume``."""
    path = Path(resume)
    return path / "checkpoint.pth" if path.is_dir() else path


def outputs_in(folder: Path) -> list[str]:
    """The names of the run outputs (files, and folders such as tb/) that ``folder`` holds."""
    return [name for name in OUTPUT_FILES + OUTPUT_DIRS if (folder / name).exists() or (folder / name).is_symlink()]


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds outputs a new run would destroy: a checkpoint, weights, records, an evaluation's
    exports. What a run stopped before its first checkpoint leaves (config.json, tb/) holds nothing to continue."""
    return any(name not in BEFORE_CHECKPOINT for name in outputs_in(folder))


def remove_outputs(folder: Path) -> None:
    """Delete every output of the run in ``folder`` (files and the tb/ folder); other files are left alone."""
    for name in OUTPUT_FILES + OUTPUT_DIRS:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def refusal(folder: Path) -> str:
    """Why a new run may not take ``folder``, which ``holds_run``, and what to do instead."""
    if (folder / "checkpoint.pth").is_file():
        return (f"{folder} already holds a run; continue it with --resume {folder}, choose another --save-dir, "
                "or pass --overwrite to replace it")
    return (f"{folder} already holds a run's outputs ({', '.join(outputs_in(folder))}) but no checkpoint.pth to "
            "continue; choose another --save-dir, or pass --overwrite to replace them")


def take_over(folder: Path) -> None:
    """Clear what a run stopped before its first checkpoint left in ``folder``, saying so."""
    left = outputs_in(folder)
    if left:
        print(f"{folder} holds only {' and '.join(left)} of a run stopped before its first checkpoint, nothing "
              "to continue; this run takes the folder")
        remove_outputs(folder)


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
    """``./result``, or the first of ``./result_1``, ``./result_2``, ... that is a folder (or nothing yet),
    holds no run and is not locked."""
    taken = None
    for n in itertools.count():
        folder = Path(DEFAULT_SAVE_DIR if n == 0 else f"{DEFAULT_SAVE_DIR}_{n}")
        if folder.exists() and not folder.is_dir():
            taken = taken or "is a file"
            continue
        fd = _lock(folder)
        if fd is None or holds_run(folder):
            taken = taken or ("is in use by another run" if fd is None else "holds another run")
            if fd is not None:
                os.close(fd)
            continue
        if taken:
            print(f"{DEFAULT_SAVE_DIR} {taken}; this run writes to {folder}")
        take_over(folder)
        return folder, fd
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
            raise UserError(refusal(folder))
        print(f"--overwrite: deleting the outputs of the run in {folder}")
        remove_outputs(folder)
    elif resume is None:
        take_over(folder)
    return folder, fd


@contextmanager
def claim_run_dir(save_dir: str | None, resume: str | None = None, overwrite: bool = False) -> Iterator[Path]:
    """The folder this run writes to, locked against other runs for the duration of the ``with``.

    ``--resume`` writes into its own folder. An explicit ``--save-dir`` that
    holds a run is refused unless ``overwrite``, which deletes its outputs. With
    neither, the default ``./result`` is used, or the next free ``./result_N``.
    A folder holding only what a run stopped before its first checkpoint left
    is taken and cleared. Temporary files left by a killed save are removed.
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


def saved_bytes(obj: object) -> int:
    """About how many bytes ``torch.save(obj)`` writes: the bytes of its tensors (the rest is small)."""
    if isinstance(obj, torch.Tensor):
        return obj.element_size() * obj.numel()
    if isinstance(obj, dict):
        return sum(saved_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(saved_bytes(v) for v in obj)
    return len(obj) if isinstance(obj, bytes) else 0


def _out_of_space(exc: BaseException | None) -> bool:
    """Whether ``exc`` or an exception it arose from is a full disk (torch.save wraps it in a RuntimeError)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextmanager
def disk_full_reported(path: Path, size: int) -> Iterator[None]:
    """Turn a full disk while the ``with`` writes ``path`` (``size`` bytes) into one line; the atomic write
    has kept the previous ``path``."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if not _out_of_space(exc):
            raise
        free = shutil.disk_usage(path.parent).free
        raise UserError(f"the disk is full: writing {path} needs about {size / 2**20:.1f} MiB and "
                        f"{free / 2**20:.1f} MiB are free there; the previous {path.name} is kept: free some "
                        f"space, then continue with --resume {path.parent}") from None


def save_run_file(obj: object, path: Path) -> None:
    """``save_atomic`` of a run's file, a full disk reported as one line."""
    with disk_full_reported(path, saved_bytes(obj)):
        save_atomic(obj, path)


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
    data = text.encode()
    with disk_full_reported(path, len(data)), atomic_file(path) as f:
        f.write(data)


def write_outputs(folder: Path, checkpoint: dict) -> None:
    """Rebuild last.pth, best.pth and best_val.pth (when the checkpoint's epoch is the best, on test or on
    validation), metrics.jsonl and result.txt.

    The checkpoint is the one source of truth: it is written first at the end
    of an epoch, and everything here can be derived from it again on resume.
    """
    history, key = checkpoint["history"], checkpoint["key"]
    if checkpoint["best_epoch"] == checkpoint["epoch"]:
        save_run_file(checkpoint["model"], folder / "best.pth")
    if checkpoint.get("best_val_epoch") == checkpoint["epoch"]:
        save_run_file(checkpoint["model"], folder / "best_val.pth")
    if not history:
        return
    save_run_file(checkpoint["model"], folder / "last.pth")
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

