"""Exact k-NN search of tools.search (metric.knn) against faiss IndexFlatL2, in the same run.

    pip install -r bench/requirements.txt   # faiss-cpu: bench only
    python bench/search_speed.py            # 1,000 queries x 1,000,000 x 512 gallery, k = 10

The gallery is written once as a float32 .npy file (2 GB at the default size)
and read as tools.search reads an index: memory-mapped, tile by tile. faiss
gets it in RAM (IndexFlatL2.add, not timed) and times its search alone. Each
measurement runs in its own process, faiss and the project alternately for
``--repeats`` rounds (this machine is shared, so its speed drifts); medians and
the median of the rounds' ratios are printed, with the load average around
each measurement and the peak resident memory: the whole (VmHWM, which for the
project includes the page cache of the mapped gallery, shared and
reclaimable) and the process's own memory (the largest RssAnon sampled every
20 ms). The neighbours are compared with faiss's (its float32 distances may
order near-ties differently) and, for a few queries, with a float64 brute force.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiment.flags import bounded_int  # noqa: E402
from metric.knn import nearest_neighbors  # noqa: E402

CHUNK = 65536  # gallery rows generated at once
BRUTE_CHUNK = 4096  # gallery rows of the float64 brute force at once
CHECKED = 5  # queries checked against a float64 brute force


def make_data(folder: Path, queries: int, gallery: int, dim: int) -> tuple[Path, Path]:
    """Unit Gaussian embeddings (seed 0): ``query.npy`` in RAM-sized, ``gallery.npy`` written in chunks."""
    rng = np.random.default_rng(0)
    paths = folder / "query.npy", folder / "gallery.npy"
    for path, n in zip(paths, (queries, gallery)):
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
        for lo in range(0, n, CHUNK):
            x = rng.standard_normal((min(CHUNK, n - lo), dim), dtype=np.float32)
            out[lo:lo + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
        out.flush()
        del out
    return paths


class MemorySampler(threading.Thread):
    """The largest RssAnon (KiB) of this process, read from /proc every 20 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.done = 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.peak = max(self.peak, read_status("RssAnon"))


def read_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def brute_force(query: np.ndarray, gallery: np.ndarray, k: int) -> np.ndarray:
    """(q, k) indices of a float64 brute force with ties to the smaller index, gallery read in chunks."""
    q = query.astype(np.float64)
    best_d, best_i = np.full((len(q), 0), np.inf), np.zeros((len(q), 0), dtype=np.int64)
    for lo in range(0, len(gallery), BRUTE_CHUNK):
        g = np.asarray(gallery[lo:lo + BRUTE_CHUNK], dtype=np.float64)
        d = ((q[:, None, :] - g[None, :, :]) ** 2).sum(axis=2)
        d = np.concatenate([best_d, d], axis=1)
        i = np.concatenate([best_i, np.arange(lo, lo + len(g))[None].repeat(len(q), 0)], axis=1)
        order = np.argsort(d, axis=1, kind="stable")[:, :k]  # the kept ones (smaller indices) first among ties
        best_d, best_i = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
    return best_i


def child(what: str, query_path: str, gallery_path: str, k: int, out_path: str) -> None:
    query = np.load(query_path)
    sampler = MemorySampler()
    sampler.start()
    load = os.getloadavg()[0]
    if what == "faiss":
        import faiss
        index = faiss.IndexFlatL2(query.shape[1])
        index.add(np.load(gallery_path))
        start = time.perf_counter()
        _, indices = index.search(query, k)
        seconds = time.perf_counter() - start
    else:
        gallery = np.load(gallery_path, mmap_mode="r")
        start = time.perf_counter()
        indices = nearest_neighbors(query, gallery, k)[0].numpy()
        seconds = time.perf_counter() - start
    sampler.done.set()
    sampler.join()
    np.save(out_path, indices)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": read_status("VmHWM") / 1024,
                      "peak_anon_mb": max(sampler.peak, read_status("RssAnon")) / 1024,
                      "load_before": load, "load_after": os.getloadavg()[0]}))


def measure(what: str, query: Path, gallery: Path, k: int, out: Path) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", what, str(query), str(gallery), str(k), str(out)],
                            capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"the {what} measurement failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--queries", type=bounded_int(1), default=1000)
    parser.add_argument("--gallery", type=bounded_int(1), default=1_000_000)
    parser.add_argument("--dim", type=bounded_int(1), default=512)
    parser.add_argument("--k", type=bounded_int(1), default=10)
    parser.add_argument("--repeats", type=bounded_int(1), default=3, help="rounds of faiss and the project in turn")
    parser.add_argument("--dir", default=None, help="where the gallery file goes (default: a temporary folder)")
    args = parser.parse_args()
    if args.child:
        what, query, gallery, k, out = args.child
        child(what, query, gallery, int(k), out)
        return
    try:
        import faiss
    except ImportError:
        sys.exit("faiss-cpu is not installed: pip install -r bench/requirements.txt")
    print(f"torch {torch.__version__}, numpy {np.__version__}, faiss {faiss.__version__}, {os.cpu_count()} CPU "
          f"threads; {args.queries:,} queries x {args.gallery:,} x {args.dim} gallery, k = {args.k}; "
          f"load average {os.getloadavg()[0]:.2f} at start", flush=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        query, gallery = make_data(folder, args.queries, args.gallery, args.dim)
        print(f"gallery written to {gallery} ({gallery.stat().st_size / 2**30:.2f} GiB) in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        runs = {"faiss": [], "project": []}
        for r in range(args.repeats):
            for what in ("faiss", "project"):
                runs[what].append(measure(what, query, gallery, args.k, folder / f"{what}.npy"))
                m = runs[what][-1]
                print(f"  round {r + 1} {what:8s} {m['seconds']:7.2f} s  peak RSS {m['peak_rss_mb']:7.0f} MB "
                      f"(own {m['peak_anon_mb']:6.0f} MB)  load {m['load_before']:.1f} -> {m['load_after']:.1f}",
                      flush=True)
        report(runs, folder, query, gallery, args.k)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


def report(runs: dict, folder: Path, query: Path, gallery: Path, k: int) -> None:
    secs = {w: [m["seconds"] for m in ms] for w, ms in runs.items()}
    ratio = statistics.median(f / p for f, p in zip(secs["faiss"], secs["project"]))
    for what in ("faiss", "project"):
        ms = runs[what]
        print(f"{what:8s} median {statistics.median(secs[what]):7.2f} s  peak RSS "
              f"{max(m['peak_rss_mb'] for m in ms):7.0f} MB (own {max(m['peak_anon_mb'] for m in ms):6.0f} MB)")
    print(f"faiss / project = {ratio:.2f} (median of the rounds' ratios; above 1: the project is faster)")
    ours, theirs = np.load(folder / "project.npy"), np.load(folder / "faiss.npy")
    same = float((ours == theirs).all(axis=1).mean())
    print(f"neighbour lists equal to faiss's: {100 * same:.1f}% of the queries")
    q = np.load(query)[:CHECKED]
    exact = brute_force(q, np.load(gallery, mmap_mode="r"), k)
    print(f"first {CHECKED} queries equal to a float64 brute force: {bool((exact == ours[:CHECKED]).all())}")


if __name__ == "__main__":
    main()
