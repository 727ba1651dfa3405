"""Exact Recall@K at full benchmark scale, side by side with faiss and with one large-block matrix product.

    pip install -r bench/requirements.txt   # faiss-cpu: bench only
    python bench/eval_speed.py              # 30k, SOP (60,502 x 512) and In-Shop (14,218 x 12,612)

Each measurement runs in its own process so that its peak RSS is its own, once
per round, in turn; medians over ``--repeats`` rounds (default 3) are printed.
Printed per size: one matrix product of the whole set in 2,048-row blocks, with
torch (MKL on x86) and with numpy (OpenBLAS), the faster of which is the floor
a brute-force exact method pays; faiss ``IndexFlatL2`` search with k = max K (+1
for self-retrieval) and its hits; the project's Recall@K; the project's
Recall@K with MAP@R in the same pass; a naive per-query loop on a sample
(extrapolated); and ratios. Without faiss the bench says so and skips that column.

``--data random`` (the default) draws unit vectors with random labels, so a
positive sits at a random rank; ``--data clustered`` puts each class around its
own centre, like trained embeddings (Recall@1 54-82% at the three sizes). The project's early
exit (a query leaves the product once its ranks are past the largest K) helps
the first and barely the second; the symmetric product in self-retrieval helps both.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiment.flags import bounded_int  # noqa: E402
from metric.retrieval import retrieval_metrics  # noqa: E402

SIZES = {
    "30k": {"query": 30000, "gallery": None, "ks": [1, 10, 100, 1000], "per_class": 5},
    "sop": {"query": 60502, "gallery": None, "ks": [1, 10, 100, 1000], "per_class": 5},
    "inshop": {"query": 14218, "gallery": 12612, "ks": [1, 10, 20, 30, 40], "per_class": 4},
}
DIM = 512
PRODUCT_ROWS = 2048


CLUSTER_NOISE = 2.2  # --data clustered: noise over the centres' spread (Recall@1 54-82%, like trained embeddings)


def make_data(size: str, data: str = "random"):
    """Unit embeddings with SOP-like (5 per class) or In-Shop-like labels, random or clustered by class."""
    spec = SIZES[size]
    g = torch.Generator().manual_seed(0)
    n = spec["query"] + (spec["gallery"] or 0)
    labels = torch.randperm(n, generator=g) // spec["per_class"]
    emb = torch.randn(n, DIM, generator=g)
    if data == "clustered":
        emb = torch.randn(int(labels.max()) + 1, DIM, generator=g)[labels] + CLUSTER_NOISE * emb
    emb = torch.nn.functional.normalize(emb, dim=1)
    if spec["gallery"] is None:
        return emb, labels, None, None
    q = spec["query"]
    return emb[:q], labels[:q], emb[q:], labels[q:]


def product(query, gallery, blas: str) -> None:
    """One matrix product of the whole set, 2,048 query rows at a time into one buffer, with torch's or numpy's BLAS."""
    import numpy as np
    gallery = query if gallery is None else gallery
    g_sq, g_t = gallery.pow(2).sum(1), gallery.t().contiguous()
    out = torch.empty(PRODUCT_ROWS, len(gallery))
    for lo in range(0, len(query), PRODUCT_ROWS):
        block = out[:len(query[lo:lo + PRODUCT_ROWS])]
        if blas == "torch":
            torch.addmm(g_sq, query[lo:lo + PRODUCT_ROWS], g_t, alpha=-2.0, out=block)
        else:
            np.add(np.matmul(query[lo:lo + PRODUCT_ROWS].numpy(), g_t.numpy(), out=block.numpy()), g_sq.numpy(),
                   out=block.numpy())


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def faiss_recall(query, q_labels, gallery, g_labels, ks) -> list[float]:
    """Recall@K from faiss ``IndexFlatL2``: search k = max K (+1 and drop the query itself when self-retrieving)."""
    import faiss
    import numpy as np
    self_mode = gallery is None
    gallery, g_labels = (query, q_labels) if self_mode else (gallery, g_labels)
    index = faiss.IndexFlatL2(query.shape[1])
    index.add(gallery.numpy())
    _, idx = index.search(query.numpy(), max(ks) + int(self_mode))
    if self_mode:
        keep = idx != np.arange(len(query))[:, None]  # drop the query itself, or the last if it is absent
        keep[keep.all(1), -1] = False
        idx = idx[keep].reshape(len(query), max(ks))
    hit = g_labels.numpy()[idx] == q_labels.numpy()[:, None]
    first = np.where(hit.any(1), hit.argmax(1), len(idx[0]))
    return [100.0 * float((first < k).mean()) for k in ks]


def project(query, q_labels, gallery, g_labels, ks, metrics) -> dict[str, float]:
    return retrieval_metrics(query, q_labels, gallery, g_labels, ks, metrics)


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




def child(size: str, what: str, data: str) -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    query, q_labels, gallery, g_labels = make_data(size, data)
    ks = SIZES[size]["ks"]
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    out = {}
    if what in ("product_torch", "product_numpy"):
        product(query, gallery, what.split("_")[1])
    elif what == "faiss":
        out["result"] = faiss_recall(query, q_labels, gallery, g_labels, ks)
    elif what == "project":
        out["result"] = project(query, q_labels, gallery, g_labels, ks, ("recall",))
    elif what == "project_map":
        out["result"] = project(query, q_labels, gallery, g_labels, ks, ("recall", "map_r"))
    else:
        out["seconds"] = naive(query, q_labels, gallery, g_labels, ks)
    out.setdefault("seconds", time.perf_counter() - start)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["data_rss_mb"] = base_rss
    print(json.dumps(out))


def measure(size: str, what: str, data: str) -> dict:
    """One measurement in its own process; its error output is shown if it fails."""
    result = subprocess.run([sys.executable, __file__, "--child", size, what, data], capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"the {what} measurement at {size} size failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def rounds(size: str, data: str, names: list[str], repeats: int) -> dict[str, list[dict]]:
    """Each measurement of ``names`` once per round, in turn, ``repeats`` rounds: a drift of this shared
    machine's speed then hits all of them alike."""
    runs = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            runs[name].append(measure(size, name, data))
    return runs


def median(values) -> float:
    return statistics.median(values)


def report(size: str, data: str, have_faiss: bool, skip: list[str], repeats: int) -> None:
    """Measure and print one size: the products, the project, faiss, the single pass with MAP@R, naive."""
    spec = SIZES[size]
    print(f"\n{size}: {spec['query']} x {spec['gallery'] or spec['query']}, dim {DIM}, K = {spec['ks']}, "
          f"{data} data; medians of {repeats} rounds", flush=True)
    names = ["product_torch", "product_numpy", "project"] + ["faiss"] * have_faiss
    names += [name for name in ("project_map", "naive") if name not in skip]
    runs = rounds(size, data, names, repeats)
    seconds = {name: [r["seconds"] for r in rs] for name, rs in runs.items()}
    floor = [min(t, n) for t, n in zip(seconds["product_torch"], seconds["product_numpy"])]
    for blas in ("torch", "numpy"):
        print(f"  one product, {PRODUCT_ROWS}-row blocks, {blas:5s}: {median(seconds['product_' + blas]):8.2f} s")
    proj = runs["project"][0]
    print(f"  project Recall@K:                 {median(seconds['project']):8.2f} s  "
          f"({median([p / f for p, f in zip(seconds['project'], floor)]):.2f}x the faster product)  peak RSS "
          f"{max(r['peak_rss_mb'] for r in runs['project']):.0f} MB (data alone {proj['data_rss_mb']:.0f} MB)")
    print(f"  project Recall@K: {', '.join(f'{v:.3f}' for v in proj['result'].values())}")
    if have_faiss:
        print(f"  faiss IndexFlatL2 + hits:         {median(seconds['faiss']):8.2f} s  (faiss / project = "
              f"{median([f / p for f, p in zip(seconds['faiss'], seconds['project'])]):.2f})  peak RSS "
              f"{max(r['peak_rss_mb'] for r in runs['faiss']):.0f} MB")
        print(f"  faiss Recall@K:   {', '.join(f'{v:.3f}' for v in runs['faiss'][0]['result'])}")
    if "project_map" in runs:
        print(f"  project Recall@K + MAP@R, 1 pass: {median(seconds['project_map']):8.2f} s  "
              f"({median([p / f for p, f in zip(seconds['project_map'], floor)]):.2f}x the faster product)  "
              f"MAP@R {runs['project_map'][0]['result']['MAP@R']:.3f}")
    if "naive" in runs:
        print(f"  naive per-query (extrapolated):   {median(seconds['naive']):8.2f} s  "
              f"({median(seconds['naive']) / median(seconds['project']):.1f}x the project)")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=3, metavar=("SIZE", "WHAT", "DATA"), help=argparse.SUPPRESS)
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES),
                        help="30k: 30,000 x 30,000; sop: 60,502 x 60,502 (minutes); inshop: 14,218 x 12,612")
    parser.add_argument("--data", nargs="+", choices=["random", "clustered"], default=["random"],
                        help="embeddings: random unit vectors, and/or clustered by class like trained ones")
    parser.add_argument("--skip", nargs="*", default=[], choices=["naive", "project_map"],
                        help="measurements to leave out")
    parser.add_argument("--repeats", type=bounded_int(1), default=3,
                        help="rounds of measurements; medians are printed (all sizes, 3 rounds: about 15 minutes)")
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    have_faiss = faiss_available()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU threads, load average {os.getloadavg()[0]:.2f} at start")
    if not have_faiss:
        print("faiss-cpu is not installed: the faiss column is skipped (pip install -r bench/requirements.txt)")
    for data in args.data:
        for size in args.sizes:
            report(size, data, have_faiss, args.skip, args.repeats)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
