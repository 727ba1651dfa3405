"""Decode-once cache: every image decoded and resized once, kept as a memory-mapped uint8 array.

The authors' transforms start with a deterministic ``Resize((s, s), LANCZOS)``.
The cache stores that step's output for every sample of a split as an
(N, s, s, 3) uint8 ``.npy`` file; later only the random crop and flip (train)
or the center crop (test) run per sample, on the very same pixels, so the
outputs are bit-identical with and without the cache.

The file name ``<name>-<s>px-<key>-crc<crc32>.npy`` holds a key over the sample
list (paths, labels, file sizes and modification times) and the resize size,
so a stale cache is never used, and the CRC-32 of the whole file, verified
every time the cache is opened: a damaged or truncated file is rebuilt, with a
one-line notice. Building a new cache of a split removes the superseded ones
(same name and size, other key). Builds write a temporary file, locked while
it is written, fsync it and rename it; temporary files of killed builds are
removed by the next ``prepare`` in the same folder.
"""
import fcntl
import hashlib
import os
import re
import sys
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from tqdm import tqdm

from dataset.decode import REPLACE_OR_REMOVE, load_rgb
from errors import UserError

Samples = Sequence[tuple[str, int]]
CHUNK = 16 << 20  # bytes read at a time when checksumming
_TEMPORARY = re.compile(r"\..+-\d+px-[0-9a-f]{20}\.npy\.(\d+)\.tmp")  # group 1: the building process


def cached_resize_side(transform) -> int:
    """The square side of ``transform``'s first step, which must be Resize((s, s), LANCZOS)."""
    first = transform.transforms[0] if isinstance(transform, T.Compose) else None
    size = getattr(first, "size", None)
    if not isinstance(first, T.Resize) or first.interpolation != InterpolationMode.LANCZOS \
            or not isinstance(size, (tuple, list)) or len(size) != 2 or size[0] != size[1]:
        raise UserError("--cache-dir needs transforms that start with a square LANCZOS Resize, "
                        f"as the authors' do; got {first!r}")
    return int(size[0])


def cache_key(samples: Samples, side: int) -> str:
    """Hex key over (path, label, size, mtime) of every sample and the resize side."""
    digest = hashlib.sha256(f"resize={side}\n".encode())
    for path, label in samples:
        st = os.stat(path)
        digest.update(f"{path}\t{label}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def file_checksum(path: Path) -> int:
    """CRC-32 of the whole file (header and pixels); see bench/cache_checksum.py for its speed."""
    value = 0
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while read := f.readinto(buffer):
            value = zlib.crc32(view[:read], value)
    return value


class _Resized(Dataset):
    """(index, (side, side, 3) uint8 array) of each sample, for building the cache in parallel."""

    def __init__(self, samples: Samples, side: int, advice: str):
        self.samples = samples
        self.advice = advice
        self.resize = T.Resize((side, side), interpolation=InterpolationMode.LANCZOS)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        return index, torch.from_numpy(np.array(self.resize(load_rgb(self.samples[index][0], self.advice))))


def _locked_temporary(cache_dir: Path, stem: str):
    """A new temporary file in ``cache_dir``, opened and exclusively locked for as long as it is open."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        handle = open(cache_dir / f".{stem}.npy.{os.getpid()}.tmp", "wb")
    except OSError as exc:
        raise UserError(f"cannot write the cache in {cache_dir} ({exc.strerror}); make it writable or "
                        "pass another --cache-dir") from exc
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def build(samples: Samples, side: int, cache_dir: Path, stem: str, workers: int,
          advice: str = REPLACE_OR_REMOVE) -> Path:
    """Write the (N, side, side, 3) uint8 cache of ``samples`` atomically; its path, named ``stem`` + checksum."""
    with _locked_temporary(cache_dir, stem) as handle:
        tmp = Path(handle.name)
        try:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(samples), side, side, 3))
            # its own generator: building a cache must not move the global torch RNG that training uses
            loader = DataLoader(_Resized(samples, side, advice), batch_size=None, num_workers=workers,
                                generator=torch.Generator())
            for index, pixels in tqdm(loader, total=len(samples), ncols=80, desc=f"[Cache] {stem}"):
                array[index] = pixels.numpy()
            array.flush()
            del array
            os.fsync(handle.fileno())
            path = cache_dir / f"{stem}-crc{file_checksum(tmp):08x}.npy"
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path


def _process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        pass
    return True


def remove_orphans(cache_dir: Path) -> list[Path]:
    """Remove the temporary files that killed builds left in ``cache_dir``; the paths removed.

    A temporary file is left alone while the process named in it runs here
    (a build between creating and locking it) or while a build holds it
    locked (a build on another machine sharing the folder), and so is one
    that cannot be removed (a read-only folder that still holds a valid cache).
    """
    removed = []
    for path in cache_dir.glob(".*.tmp") if cache_dir.is_dir() else ():
        match = _TEMPORARY.fullmatch(path.name)
        if match is None or _process_alive(int(match.group(1))):
            continue
        try:
            with open(path, "rb") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                path.unlink()
            removed.append(path)
        except OSError:  # locked by a live build, already gone, or not removable
            continue
    return removed


def damage(path: Path, expected: int, side: int) -> str | None:
    """Why the cache file at ``path`` cannot be trusted to hold ``expected`` images of ``side`` px; None if sound."""
    size = path.stat().st_size
    pixels = expected * side * side * 3
    if size < pixels:
        return f"truncated: {size} bytes, at least {pixels} needed"
    actual = f"{file_checksum(path):08x}"
    stored = path.stem.rsplit("-crc", 1)[-1]
    return None if actual == stored else f"checksum {actual}, expected {stored}"


def _same_split(cache_dir: Path, name: str, side: int) -> list[Path]:
    """Every cache file (any key, with or without a checksum) of split ``name`` at ``side`` px."""
    pattern = re.compile(rf"{re.escape(name)}-{side}px-[0-9a-f]{{20}}(-crc[0-9a-f]{{8}})?\.npy")
    return sorted(p for p in cache_dir.glob("*.npy") if pattern.fullmatch(p.name)) if cache_dir.is_dir() else []


def prepare(samples: Samples, side: int, cache_dir: str | Path, name: str, workers: int | None = None,
            advice: str = REPLACE_OR_REMOVE) -> Path:
    """The path of the verified cache for ``samples``, built on first use or when damaged.

    ``workers`` processes decode during a build (None: one per CPU); ``advice``
    ends the error about an image that cannot be decoded.
    """
    cache_dir = Path(cache_dir)
    remove_orphans(cache_dir)
    stem = f"{name}-{side}px-{cache_key(samples, side)}"
    for path in (p for p in _same_split(cache_dir, name, side) if p.name.startswith(f"{stem}-crc")):
        problem = damage(path, len(samples), side)
        if problem is None:
            return path
        print(f"[Cache] {path} is damaged ({problem}); rebuilding it", file=sys.stderr)
    path = build(samples, side, cache_dir, stem, (os.cpu_count() or 1) if workers is None else workers, advice)
    for old in _same_split(cache_dir, name, side):  # damaged and superseded files; the rebuilt one replaced its own

        if old != path:
            old.unlink(missing_ok=True)
    return path


def open_cache(path: Path, expected: int) -> np.ndarray:
    """The read-only memory map of a cache file, checked to hold ``expected`` images."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"cannot read the cache {path} ({exc}); delete it and run again") from exc
    if array.shape[0] != expected or array.dtype != np.uint8:
        raise UserError(f"cache {path} holds {array.shape[0]} images of {array.dtype}, expected {expected} of "
                        "uint8; delete it and run again")
    return array
