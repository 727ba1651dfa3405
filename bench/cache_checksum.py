"""Cost of verifying a cache file's checksum when it is opened, extrapolated to SOP size.

    python bench/cache_checksum.py [--gb 1]

Writes a ``--gb`` GB cache-like .npy file of random uint8 pixels, then times
each candidate checksum over it in the chunks ``dataset.cache`` reads, with the
file in the page cache (the common case right after a build or a previous
run; a cold read is bounded by the disk instead). The SOP train+test caches at
the default 256 px hold 60,502 x 256 x 256 x 3 bytes = 11.9 GB; the seconds for
that size are extrapolated linearly from the measured throughput.
"""
import argparse
import hashlib
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset import cache  # noqa: E402

SOP_BYTES = 60_502 * 256 * 256 * 3


def _fold(update: Callable[[bytes, int], int]) -> Callable[[Path], int]:
    """A whole-file checksum from a zlib-style running ``update(chunk, value)``."""
    def run(path: Path) -> int:
        value = update(b"", 1) if update is zlib.adler32 else 0
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(cache.CHUNK), b""):
                value = update(chunk, value)
        return value
    return run


def _hashlib(name: str) -> Callable[[Path], str]:
    def run(path: Path) -> str:
        digest = hashlib.new(name)
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(cache.CHUNK), b""):
                digest.update(chunk)
        return digest.hexdigest()
    return run


CANDIDATES = {
    "cache.file_checksum (used)": cache.file_checksum,
    "zlib.crc32": _fold(zlib.crc32),
    "zlib.adler32": _fold(zlib.adler32),
    "blake2b": _hashlib("blake2b"),
    "md5": _hashlib("md5"),
    "sha1": _hashlib("sha1"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0, help="size of the generated file in GB (1e9 bytes)")
    args = parser.parse_args()
    images = max(1, int(args.gb * 1e9) // (256 * 256 * 3))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.npy"
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(images, 256, 256, 3))
        rng = np.random.default_rng(0)
        for start in range(0, images, 256):
            array[start:start + 256] = rng.integers(0, 256, array[start:start + 256].shape, dtype=np.uint8)
        array.flush()
        del array
        size = path.stat().st_size
        _fold(zlib.adler32)(path)  # warm the page cache
        print(f"file: {size / 1e9:.2f} GB ({images} images of 256x256x3); SOP caches: {SOP_BYTES / 1e9:.1f} GB")
        for name, checksum in CANDIDATES.items():
            start = time.perf_counter()
            checksum(path)
            seconds = time.perf_counter() - start
            rate = size / seconds
            print(f"{name:28s} {rate / 1e9:5.2f} GB/s  {seconds:6.2f} s here  ~{SOP_BYTES / rate:5.1f} s at SOP size")


if __name__ == "__main__":
    main()
