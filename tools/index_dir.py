"""The index folder of ``tools.index``: its files, their replacement as one, and reading them back.

    INDEX_DIR/index.json      what built it: the weights' sha256, the model flags, the transform, D, N,
                              the source root and the project version (git commit)
    INDEX_DIR/embeddings.npy  (N, D) float32, row i the embedding of item i, memory-mappable
    INDEX_DIR/items.jsonl     one record per item: path (relative to the source root), label, size, mtime_ns

A build writes all three into ``INDEX_DIR/.staged/``, renames that folder to
``.commit`` (the commit point, one atomic rename) and then moves its files into
place. A build killed before the commit leaves the previous index as it was
(the next build removes the staged folder); one killed while moving the files
is completed by the next build or search, so the three files always belong together.
"""
import fcntl
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from errors import UserError

INDEX_JSON, EMBEDDINGS, ITEMS = "index.json", "embeddings.npy", "items.jsonl"
FILES = (EMBEDDINGS, ITEMS, INDEX_JSON)  # moved in this order at a commit
STAGED, COMMIT, LOCK = ".staged", ".commit", ".lock"


class Record(NamedTuple):
    """One indexed image: its path relative to the source root, its label (None: unknown), size and mtime."""

    path: str
    label: str | None
    size: int  # bytes
    mtime_ns: int  # modification time, nanoseconds since the epoch


@dataclass
class Stored:
    """An index as stored: index.json, the records and the memory-mapped (N, D) float32 embeddings."""

    meta: dict
    records: list[Record]
    embeddings: np.ndarray


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _finish_commit(folder: Path) -> None:
    """Move the files of a committed build into place (again: each move is idempotent) and remove ``.commit``."""
    commit = folder / COMMIT
    if not commit.is_dir():
        return
    for name in FILES:
        if (commit / name).exists():
            os.replace(commit / name, folder / name)
    _fsync_dir(folder)
    shutil.rmtree(commit)
    _fsync_dir(folder)


def _lock(folder: Path, wait: bool) -> int | None:
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextmanager
def locked(folder: Path) -> Iterator[Path]:
    """``folder`` (created when missing) locked against other builds, an interrupted build's remains cleared.

    A folder that holds other files but no index is refused: an index never writes among a user's files.
    """
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder} is a file; name a folder for the index")
    if folder.is_dir() and not (folder / INDEX_JSON).exists() and not (folder / COMMIT).exists() and any(
            p.name not in (STAGED, LOCK) for p in folder.iterdir()):
        raise UserError(f"--out {folder} holds other files but no index; name a new or empty folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = _lock(folder, wait=False)
    except OSError as exc:
        raise UserError(f"cannot write the index folder {folder} ({exc.strerror}); choose a writable --out") from None
    if fd is None:
        raise UserError(f"another tools.index is writing {folder}; wait for it to finish")
    try:
        _finish_commit(folder)
        shutil.rmtree(folder / STAGED, ignore_errors=True)
        yield folder
    finally:
        os.close(fd)


def _recover_for_reading(folder: Path) -> None:
    """Complete a build that was killed after its commit, so that the files read belong together."""
    if not (folder / COMMIT).exists():
        return
    try:
        fd = _lock(folder, wait=True)
    except OSError as exc:
        raise UserError(f"{folder} holds an unfinished update ({exc.strerror} to finish it); run tools.index on it "
                        "again") from None
    try:
        _finish_commit(folder)
    finally:
        os.close(fd)


def _read_records(path: Path) -> list[Record]:
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            r = json.loads(line)
            records.append(Record(r["path"], r["label"], int(r["size"]), int(r["mtime_ns"])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise UserError(f"{path}, line {number} is not an item record; rebuild the index with tools.index "
                            "--rebuild") from None
    return records


def _identity(folder: Path) -> tuple:
    """(inode, mtime) of each index file: a build that replaced any of them while it was read changes it."""
    return tuple((st.st_ino, st.st_mtime_ns) for st in
                 (os.stat(folder / name) if (folder / name).exists() else None for name in FILES) if st is not None)


def read_index(folder: Path) -> Stored | None:
    """The index in ``folder``; None when it holds none yet. Files that do not belong together are one error.

    A build that commits while the files are read is noticed, and they are read again.
    """
    for _ in range(5):
        _recover_for_reading(folder)
        before = _identity(folder)
        stored = _read_files(folder)
        if before == _identity(folder) and not (folder / COMMIT).exists():
            return stored
    raise UserError(f"the index in {folder} kept changing while it was read; try again when tools.index is done")


def _read_files(folder: Path) -> Stored | None:
    if not (folder / INDEX_JSON).is_file():
        return None
    try:
        meta = json.loads((folder / INDEX_JSON).read_text())
        records = _read_records(folder / ITEMS)
        embeddings = np.load(folder / EMBEDDINGS, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise UserError(f"the index in {folder} is incomplete or damaged ({exc}); rebuild it with tools.index "
                        "--rebuild") from None
    expected = (meta.get("count"), meta.get("dim"))
    if embeddings.shape != expected or len(records) != expected[0] or embeddings.dtype != np.float32:
        raise UserError(f"the index in {folder} is inconsistent: index.json says {expected[0]} x {expected[1]}, "
                        f"{EMBEDDINGS} holds {embeddings.shape} {embeddings.dtype}, {ITEMS} {len(records)} records; "
                        "rebuild it with tools.index --rebuild")
    return Stored(meta, records, embeddings)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


class Staging:
    """A new version of the index, written beside the current one and committed as a whole (module docstring)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / STAGED
        self.path.mkdir()

    def embeddings(self, shape: tuple[int, int], name: str = EMBEDDINGS) -> np.memmap:
        """A new (N, D) float32 ``.npy`` file in the staging folder, mapped for writing."""
        return np.lib.format.open_memmap(self.path / name, mode="w+", dtype=np.float32, shape=shape)

    def compact(self, rows: np.memmap, keep: np.ndarray, chunk: int = 65536) -> np.memmap:
        """The staged embeddings without the rows not in ``keep`` ((N,) bool)."""
        kept = np.flatnonzero(keep)
        out = self.embeddings((len(kept), rows.shape[1]), "compact.npy")
        for lo in range(0, len(kept), chunk):
            out[lo:lo + chunk] = rows[kept[lo:lo + chunk]]
        out.flush()
        os.replace(self.path / "compact.npy", self.path / EMBEDDINGS)
        return out

    def commit(self, rows: np.memmap, records: list[Record], meta: dict) -> None:
        """Write the records and index.json next to the flushed embeddings, then make them the index."""
        rows.flush()
        with open(self.path / EMBEDDINGS, "rb+") as f:
            os.fsync(f.fileno())
        _write_synced(self.path / ITEMS, "".join(json.dumps(r._asdict()) + "\n" for r in records))
        _write_synced(self.path / INDEX_JSON, json.dumps(meta, indent=2) + "\n")
        _fsync_dir(self.path)
        os.rename(self.path, self.folder / COMMIT)
        _fsync_dir(self.folder)
        _finish_commit(self.folder)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
