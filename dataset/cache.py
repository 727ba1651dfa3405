"""Decode-once cache: every image decoded and resized once, kept as a memory-mapped uint8 array.

The authors' transforms start with a deterministic ``Resize((s, s), LANCZOS)``.
The cache stores that step's output for every sample of a split as an
(N, s, s, 3) uint8 ``.npy`` file; later only the random crop and flip (train)
or the center crop (test) run per sample, on the very same pixels, so the
outputs are bit-identical with and without the cache.

The file name holds a key over the sample list (paths, labels, file sizes and
modification times) and the resize size: any change gives a new key, so a
stale cache is rebuilt, never used. Builds write a temporary file, fsync it and
rename it, so an interrupted build leaves nothing a later run would trust.
"""
import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from tqdm import tqdm

from dataset.decode import load_rgb
from errors import UserError

Samples = Sequence[tuple[str, int]]


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


class _Resized(Dataset):
    """(index, (side, side, 3) uint8 array) of each sample, for building the cache in parallel."""

    def __init__(self, samples: Samples, side: int):
        self.samples = samples
        self.resize = T.Resize((side, side), interpolation=InterpolationMode.LANCZOS)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        return index, torch.from_numpy(np.array(self.resize(load_rgb(self.samples[index][0]))))


def build(samples: Samples, side: int, path: Path, workers: int) -> None:
    """Write the (N, side, side, 3) uint8 cache of ``samples`` to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(samples), side, side, 3))
        # its own generator: building a cache must not move the global torch RNG that training uses
        loader = DataLoader(_Resized(samples, side), batch_size=None, num_workers=workers,
                            generator=torch.Generator())
        for index, pixels in tqdm(loader, total=len(samples), ncols=80, desc=f"[Cache] {path.name}"):
            array[index] = pixels.numpy()
        array.flush()
        del array
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def prepare(samples: Samples, side: int, cache_dir: str | Path, name: str, workers: int | None = None) -> Path:
    """The path of the valid cache for ``samples``, built on first use."""
    path = Path(cache_dir) / f"{name}-{side}px-{cache_key(samples, side)}.npy"
    if not path.is_file():
        build(samples, side, path, (os.cpu_count() or 1) if workers is None else workers)
    return path


def open_cache(path: Path, expected: int) -> np.ndarray:
    """The read-only memory map of a cache file, checked to hold ``expected`` images."""
    array = np.load(path, mmap_mode="r")
    if array.shape[0] != expected or array.dtype != np.uint8:
        raise UserError(f"cache {path} holds {array.shape[0]} images of {array.dtype}, expected {expected} of "
                        "uint8; delete it and run again")
    return array


def image_at(array: np.ndarray, index: int) -> Image.Image:
    """The cached resized image of sample ``index`` as a PIL RGB image."""
    return Image.fromarray(np.ascontiguousarray(array[index]), mode="RGB")
