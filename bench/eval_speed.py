"""Exact Recall@K at full benchmark scale: time and peak memory against the bare matrix products.

    python bench/eval_speed.py            # SOP (60,502 x 512, K = 1 10 100 1000) and In-Shop (14,218 x 12,612)

Each measurement runs in its own process so that its peak RSS is its own.
Printed per benchmark: the project's Recall@K time and peak RSS, the bare distance
products over the same data (the floor), a naive per-query loop on a subsample
extrapolated to all queries, and the ratios between them.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metric.ranking import DEFAULT_MEMORY_BUDGET, block_rows  # noqa: E402
from metric.recall import recall_at_k, recall_at_k_query_gallery  # noqa: E402

SIZES = {
    "sop": {"query": 60502, "gallery": None, "ks": [1, 10, 100, 1000], "per_class": 5},
    "inshop": {"query": 14218, "gallery": 12612, "ks": [1, 10, 20, 30, 40], "per_class": 4},
}
DIM = 512


def make_data(size: str):
    """Random unit embeddings with SOP-like (about 5 per class) or In-Shop-like labels."""
    spec = SIZES[size]
    g = torch.Generator().manual_seed(0)
    n = spec["query"] + (spec["gallery"] or 0)
    emb = torch.nn.functional.normalize(torch.randn(n, DIM, generator=g), dim=1)
    labels = torch.randperm(n, generator=g) // spec["per_class"]
    if spec["gallery"] is None:
        return emb, labels, None, None
    q = spec["query"]
    return emb[:q], labels[:q], emb[q:], labels[q:]


def floor(query, gallery):
    """The bare distance products in the same blocks: the least any exact method must do."""
    gallery = query if gallery is None else gallery
    g_sq, g_t = gallery.pow(2).sum(1), gallery.t().contiguous()
    rows = block_rows(len(gallery), DEFAULT_MEMORY_BUDGET)
    for lo in range(0, len(query), rows):
        torch.addmm(g_sq, query[lo:lo + rows], g_t, alpha=-2.0)


def project(query, q_labels, gallery, g_labels, ks):
    if gallery is None:
        return recall_at_k(query, q_labels, ks)
    return recall_at_k_query_gallery(query, q_labels, gallery, g_labels, ks)


def naive(query, q_labels, gallery, g_labels, ks, sample: int = 300):
    """The authors' style: one query at a time, topk over the whole gallery; returns the extrapolated seconds."""
    self_mode = gallery is None
    gallery = query if self_mode else gallery
    g_labels = q_labels if self_mode else g_labels
    start = time.perf_counter()
    for i in range(sample):
        dist = (gallery - query[i]).pow(2).sum(dim=1)
        if self_mode:
            dist[i] = float("inf")
        idx = dist.topk(max(ks), largest=False).indices
        [bool((g_labels[idx[:k]] == q_labels[i]).any()) for k in ks]
    return (time.perf_counter() - start) * len(query) / sample


def child(size: str, what: str) -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    query, q_labels, gallery, g_labels = make_data(size)
    ks = SIZES[size]["ks"]
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    out = {}
    if what == "floor":
        floor(query, gallery)
    elif what == "project":
        out["recall"] = project(query, q_labels, gallery, g_labels, ks)
    else:
        out["seconds"] = naive(query, q_labels, gallery, g_labels, ks)
    out.setdefault("seconds", time.perf_counter() - start)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["data_rss_mb"] = base_rss
    print(json.dumps(out))


def measure(size: str, what: str) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", size, what], capture_output=True, text=True,
                            check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "WHAT"), help=argparse.SUPPRESS)
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU threads, memory budget "
          f"{DEFAULT_MEMORY_BUDGET // 2**20} MiB per block")
    for size in args.sizes:
        spec = SIZES[size]
        shape = f"{spec['query']} x {spec['gallery'] or spec['query']}"
        fl, pr, nv = measure(size, "floor"), measure(size, "project"), measure(size, "naive")
        print(f"\n{size}: {shape}, dim {DIM}, K = {spec['ks']}")
        print(f"  bare distance products (floor): {fl['seconds']:8.2f} s")
        print(f"  project Recall@K:               {pr['seconds']:8.2f} s  ({pr['seconds'] / fl['seconds']:.2f}x floor)"
              f"  peak RSS {pr['peak_rss_mb']:.0f} MB (data alone {pr['data_rss_mb']:.0f} MB)")
        print(f"  naive per-query (extrapolated): {nv['seconds']:8.2f} s  "
              f"({nv['seconds'] / pr['seconds']:.1f}x the project)")
        print(f"  Recall@K: {', '.join(f'{v:.3f}' for v in pr['recall'])}")


if __name__ == "__main__":
    main()
