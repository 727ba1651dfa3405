"""Training curves and the MDR distance histogram of a run directory, or several runs compared.

    python -m tools.plot RUN_DIR
    python -m tools.plot --compare RUN_DIR_OR_ROOT ... [--out comparison.png]

Reads RUN_DIR/metrics.jsonl (and RUN_DIR/mdr_distances.pt when present) and
writes RUN_DIR/curves.png and RUN_DIR/mdr_histogram.png. With --compare, the
finished runs under the given paths are grouped as tools.report groups them
and Recall@1 over epochs is drawn per method: the mean over seeds and a band
of one standard deviation, one panel per dataset.
"""
import argparse
import sys
from pathlib import Path

import torch

from errors import UserError
from experiment.run_dir import read_history, selection_key
from metric.distance import off_diagonal, pdist
from model.checkpoint import save_atomic
from tools.report import find_runs, group_runs

SAMPLE = 1000


def mdr_distance_sample(embeddings: torch.Tensor, momented_mean: float, momented_std: float,
                        mean_scaled: bool, seed: int = 0) -> torch.Tensor:
    """Normalised off-diagonal distances, as MDR sees them, of up to 1000 of the (N, D) eval embeddings.

    ``mean_scaled``: the head divides training outputs by their mean pairwise
    distance (the default head, not --l2norm), so the sample is scaled the same
    way before the running mean and std are applied.
    """
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(embeddings), generator=g)[:SAMPLE]
    dist = off_diagonal(pdist(embeddings.float().cpu()[pick]))
    if mean_scaled:
        dist = dist / dist.mean()
    return (dist - momented_mean) / momented_std


def save_embedding_sample(embeddings: torch.Tensor, mdr, mean_scaled: bool, save_dir: Path) -> Path:
    """Write the normalised distance sample and the MDR levels for the histogram."""
    path = save_dir / "mdr_distances.pt"
    sample = mdr_distance_sample(embeddings, float(mdr.momented_mean), float(mdr.momented_std), mean_scaled)
    save_atomic({"distances": sample, "levels": mdr.levels.detach().cpu()}, path)
    return path


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{path} not found; plot a --save-dir of a run that finished at least one epoch")
    return read_history(run_dir)


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend, imported only when a plot is drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(records: list[dict], out: Path) -> Path:
    plt = _pyplot()
    epochs = [r["epoch"] for r in records]
    recall_keys = sorted({k for r in records for k in r if k.startswith("Recall@")}, key=lambda k: int(k[7:]))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(epochs, [r["loss"] for r in records], label="base loss")
    axes[0].plot(epochs, [r["mdr_loss"] for r in records], label="MDR term")
    axes[0].set_title("loss")
    for key in recall_keys:  # epochs skipped by --eval-every have no recall
        evaluated = [r for r in records if key in r]
        axes[1].plot([r["epoch"] for r in evaluated], [r[key] for r in evaluated], marker=".", label=key)
    axes[1].set_title("recall (%)")
    levels = list(zip(*[r["levels"] for r in records]))
    for i, series in enumerate(levels):
        axes[2].plot(epochs, series, label=f"level {i + 1}")
    axes[2].set_title("MDR levels")
    return save_epoch_figure(fig, axes, out)


def save_epoch_figure(fig, axes, out: Path) -> Path:
    """Label every x axis "epoch", add legends and grids, and write ``fig`` to ``out``."""
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    _pyplot().close(fig)
    return out


def plot_histogram(sample: dict, out: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(sample["distances"].numpy(), bins=100, color="steelblue", alpha=0.8)
    for i, level in enumerate(sample["levels"].tolist()):
        ax.axvline(level, color="crimson", linestyle="--", label="levels" if i == 0 else None)
    ax.set_xlabel("normalised pairwise distance")
    ax.set_ylabel("pairs")
    ax.set_title("Pairwise distances of test embeddings and the MDR levels")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write curves.png (and mdr_histogram.png when the sample exists) into ``run_dir``."""
    run_dir = Path(run_dir)
    written = [plot_curves(read_metrics(run_dir), run_dir / "curves.png")]
    sample_path = run_dir / "mdr_distances.pt"
    if sample_path.is_file():
        written.append(plot_histogram(torch.load(sample_path, weights_only=True), run_dir / "mdr_histogram.png"))
    return written


def seed_curve(records: list[list[dict]], key: str) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """(epochs every run reached, mean, std over runs) of ``key``; std is 0 for a single run."""
    epochs = sorted(set.intersection(*({r["epoch"] for r in run} for run in records)))
    values = torch.tensor([[next(r[key] for r in run if r["epoch"] == e) for e in epochs] for run in records])
    std = values.std(dim=0) if len(records) > 1 else torch.zeros(len(epochs))
    return epochs, values.mean(dim=0), std


def plot_comparison(paths: list[str], out: Path) -> Path:
    """Recall@1 (or the selection metric) over epochs per method, mean and band over seeds, one panel per dataset."""
    groups = group_runs([r for r in find_runs(paths) if r.finished])
    datasets = sorted({g.dataset for g in groups})
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for group in (g for g in groups if g.dataset == dataset and g.runs):
            key = selection_key([int(k.split("@")[1]) for k in group.runs[0].records[0] if k.startswith("Recall@")])
            epochs, mean, std = seed_curve([r.records for r in group.runs], key)
            ax.plot(epochs, mean, label=f"{group.method} (n={len(group.runs)})")
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.25)
            ax.set_ylabel(f"{key} (%)")
        ax.set_title(dataset)
    return save_epoch_figure(fig, axes[0], out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR", help="a --save-dir of run.py (with --compare: "
                                                                    "run folders or folders holding them)")
    parser.add_argument("--compare", action="store_true", help="one figure comparing the methods over seeds")
    parser.add_argument("--out", default="comparison.png", help="the --compare figure (default comparison.png)")
    args = parser.parse_args(argv)
    try:
        written = [plot_comparison(args.paths, Path(args.out))] if args.compare else \
            [path for run_dir in args.paths for path in plot_run(run_dir)]
        for path in written:
            print(path)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
