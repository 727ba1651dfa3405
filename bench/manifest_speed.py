"""Parse and check a generated manifest of a million rows, image-existence check included.

    python bench/manifest_speed.py [--rows 1000000] [--folders 1000] [--rounds 3]

Writes ``--folders`` folders of hard links to one small file each (few inodes, fast to create) and a manifest
listing them (half train, half test with query/gallery columns), then times ``dataset.manifest``'s parse and
checks (one directory listing per folder) against the same checks with one ``os.path.isfile`` per image, the
baseline, in alternating rounds. Prints the seconds, rows per second and the ratio; run it with the load
(``cat /proc/loadavg``) noted.
"""
import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataset import manifest  # noqa: E402


def make_tree(root: Path, rows: int, folders: int) -> Path:
    """``root/images/fNNNN/NNNNNNN.jpg`` (hard links) and ``root/manifest.csv`` listing them; the manifest."""
    per_folder = -(-rows // folders)
    lines = ["path,label,split,is_query,is_gallery"]
    for f in range(folders):
        folder = root / "images" / f"f{f:04d}"
        folder.mkdir(parents=True)
        source = folder / "source.jpg"
        source.write_bytes(b"\xff\xd8 not decoded by this bench")
        for i in range(min(per_folder, rows - f * per_folder)):
            n = f * per_folder + i
            name = f"{n:07d}.jpg"
            os.link(source, folder / name)
            label = f"class_{n // 5}"
            train = (n // 5) % 2 == 0
            split, query, gallery = ("train", 0, 0) if train else ("test", int(n % 5 == 0), int(n % 5 != 0))
            lines.append(f"images/f{f:04d}/{name},{label},{split},{query},{gallery}")
    path = root / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def stat_each(table: manifest.Table, add) -> None:
    """The baseline existence check: one stat per image."""
    for index, path in enumerate(table.paths):
        if not os.path.isfile(path):
            add(index, f"image {path} not found")


def timed(path: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of one parse and check of ``path``, the cache of parsed manifests bypassed."""
    stat = path.stat()
    wall, cpu = time.perf_counter(), time.process_time()
    table = manifest._load.__wrapped__(str(path), stat.st_size, stat.st_mtime_ns)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert len(table.paths) > 0
    return wall, cpu


def summary(name: str, rounds: list[tuple[float, float]], rows: int) -> tuple[float, float]:
    """Print the best wall and CPU seconds of ``rounds``; return them."""
    wall, cpu = min(w for w, _ in rounds), min(c for _, c in rounds)
    print(f"{name}: {wall:.2f} s wall, {cpu:.2f} s CPU ({rows / wall / 1e6:.2f} M rows/s; rounds "
          f"{', '.join(f'{w:.2f}' for w, _ in rounds)} s)")
    return wall, cpu


def peak_gib() -> float:
    """The process's peak resident memory so far, GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--folders", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.rows < 10 or args.folders < 1 or args.rounds < 1:
        parser.error("--rows must be at least 10, --folders and --rounds at least 1")
    root = Path(tempfile.mkdtemp(prefix="manifest_speed_"))
    try:
        start = time.perf_counter()
        path = make_tree(root, args.rows, args.folders)
        print(f"generated {args.rows:,} rows in {args.folders:,} folders ({path.stat().st_size / 2**20:.0f} MiB "
              f"CSV) in {time.perf_counter() - start:.1f} s", flush=True)
        listing, baseline = [], []
        before = peak_gib()
        listed_check = manifest._check_images
        for _ in range(args.rounds):
            manifest._check_images = listed_check
            listing.append(timed(path))
            manifest._check_images = stat_each
            baseline.append(timed(path))
        manifest._check_images = listed_check
        best = summary("parse + checks, one listing per folder", listing, args.rows)
        base = summary("parse + checks, one stat per image (baseline)", baseline, args.rows)
        print(f"baseline / listing: {base[0] / best[0]:.2f}x wall, {base[1] / best[1]:.2f}x CPU; peak resident "
              f"memory {peak_gib():.2f} GiB ({before:.2f} GiB before parsing); load "
              f"{' '.join(open('/proc/loadavg').read().split()[:3])} on {os.cpu_count()} CPUs")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
