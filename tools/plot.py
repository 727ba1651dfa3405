"""Training curves and the MDR distance histogram of a run directory, or several runs compared.

    python -m tools.plot RUN_DIR ...
    python -m tools.plot --compare RUN_DIR_OR_ROOT ... [--out comparison.png] [--against FLAG]

Reads RUN_DIR/metrics.jsonl (and RUN_DIR/mdr_distances.pt when present) and
writes RUN_DIR/curves.png and RUN_DIR/mdr_histogram.png. With --compare, the
finished runs under the given paths are grouped as tools.report groups them
and Recall@1 over epochs (epoch 0 included) is drawn per method and grid
point: the mean over seeds and its 95% confidence interval (Student t), one
panel per dataset. With --against FLAG, Recall@1 of the selected epoch is
drawn against the values of a grid flag of tools.sweep --grid, with the same
interval as a band; methods without that flag are drawn as horizontal lines.
"""
import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from errors import UserError
from optional import require
from experiment.cli import ArgumentParser, exit_status
from experiment.run_dir import read_history, selection_key
from loss.mdr import MDRLoss, level_names, mdr_distance_sample
from model.checkpoint import read_weights_file, save_atomic
from tools.report import SELECTIONS, Grid, Group, find_runs, grid_label, group_runs, recall_ks
from tools.grid import value_order
from tools.seed_stats import Summary, ci_halfwidth, summarize


def save_embedding_sample(embeddings: torch.Tensor, mdr: MDRLoss, mean_scaled: bool, save_dir: Path,
                          epoch: int) -> Path:
    """Write the normalised distance sample of the model after ``epoch`` (last.pth) and its MDR levels for the
    histogram."""
    path = save_dir / "mdr_distances.pt"
    sample = mdr_distance_sample(embeddings, float(mdr.momented_mean), float(mdr.momented_std), mean_scaled)
    save_atomic({"distances": sample, "levels": mdr.levels.detach().cpu(), "epoch": epoch}, path)
    return path


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{path} not found; plot a --save-dir of a run that finished at least one epoch")
    return read_history(run_dir)


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend, imported only when a plot is drawn; a one-line install
    hint when matplotlib is missing (run.py checks it before training with --plot)."""
    require("matplotlib", "matplotlib", "drawing plots (--plot, tools.plot)").use("Agg")
    return require("matplotlib.pyplot", "matplotlib", "drawing plots (--plot, tools.plot)")


def check_plotting() -> None:
    """Raise the install hint now, not after a training run, when --plot cannot draw."""
    _pyplot()


def check_out(out: Path) -> Path:
    """``out`` when a figure can be written there: its folder exists and its extension names a format."""
    formats = sorted(_pyplot().figure().canvas.get_supported_filetypes())
    _pyplot().close("all")
    if out.suffix.lower().lstrip(".") not in formats:
        raise UserError(f"--out {out}: unknown image format {out.suffix or '(no extension)'!r}; end the name with "
                        f"one of {', '.join('.' + f for f in formats)}")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist; create it or choose another --out")
    return out


def save_figure(fig, out: Path) -> Path:
    """Write ``fig`` to ``out`` and close it; a file that cannot be written is one UserError."""
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=100)
    except OSError as exc:
        raise UserError(f"cannot write {out} ({exc.strerror or exc}); make {out.parent} writable, or plot a copy "
                        "of the run") from None
    finally:
        _pyplot().close(fig)
    return out


def _epoch_series(ax, records: list[dict], values: list[float], label: str) -> None:
    """One curve over ``records``' epochs; its epoch 0 value (the model before training) as a separate point."""
    epochs = [r["epoch"] for r in records]
    line, = ax.plot(epochs, values, marker=".", label=label)
    if epochs and epochs[0] == 0:
        ax.plot(epochs[:1], values[:1], "o", markersize=8, color=line.get_color(), markerfacecolor="white")


def plot_curves(records: list[dict], out: Path) -> Path:
    """Losses per trained epoch; Recall@K and the MDR levels per evaluated epoch, from epoch 0, the model
    before training (an open circle), on."""
    plt = _pyplot()
    trained = [r for r in records if "loss" in r]
    recall_keys = sorted({k for r in records for k in r if k.startswith("Recall@")}, key=lambda k: int(k[7:]))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot([r["epoch"] for r in trained], [r["loss"] for r in trained], marker=".", label="base loss")
    axes[0].plot([r["epoch"] for r in trained], [r["mdr_loss"] for r in trained], marker=".", label="MDR term")
    axes[0].set_title("Training loss")
    axes[0].set_ylabel("loss, mean over the epoch's batches")
    for key in recall_keys:  # epochs skipped by --eval-every have no recall
        evaluated = [r for r in records if key in r]
        _epoch_series(axes[1], evaluated, [r[key] for r in evaluated], key)
    axes[1].set_title("Test recall (epoch 0: before training)")
    axes[1].set_ylabel("Recall@K (%)")
    with_levels = [r for r in records if "levels" in r]
    for name, series in zip(level_names(len(with_levels[0]["levels"]) if with_levels else 0),
                            zip(*[r["levels"] for r in with_levels])):
        _epoch_series(axes[2], with_levels, list(series), name)
    axes[2].set_title("MDR levels")
    axes[2].set_ylabel("level (running std of distances)")
    return save_epoch_figure(fig, axes, out)


def save_epoch_figure(fig, axes, out: Path) -> Path:
    """Label every x axis "epoch" with integer ticks, add legends and grids, and write ``fig`` to ``out``."""
    MaxNLocator = require("matplotlib.ticker", "matplotlib", "drawing plots (--plot, tools.plot)").MaxNLocator
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
        ax.grid(alpha=0.3)
    return save_figure(fig, out)


def histogram_title(epoch: int | None) -> str:
    """What mdr_histogram.png shows: the model after ``epoch`` (None: a sample of a run from before the epoch
    was recorded), which is the run's last.pth."""
    when = f"after epoch {epoch} (last.pth)" if epoch is not None else "at the end of the run (last.pth)"
    return f"Test distances and MDR levels {when}"


def plot_histogram(sample: dict, out: Path) -> Path:
    """The sample's normalised distances and a dashed line, named, at each MDR level."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(sample["distances"].numpy(), bins=100, color="steelblue", alpha=0.8)
    for i, (name, level) in enumerate(zip(level_names(len(sample["levels"])), sample["levels"].tolist())):
        ax.axvline(level, color="crimson", linestyle="--", label="MDR levels" if i == 0 else None)
        ax.annotate(f"{name}\n{level:.2f}", (level, 1), xycoords=("data", "axes fraction"), xytext=(3, -3),
                    textcoords="offset points", va="top", fontsize=8, color="crimson")
    ax.set_xlabel("pairwise distance, normalised by MDR's running mean and std")
    ax.set_ylabel("pairs of test images")
    ax.set_title(histogram_title(sample.get("epoch")))
    ax.legend(loc="upper left")
    return save_figure(fig, out)


def read_distance_sample(path: Path) -> dict:
    """The {"distances", "levels"} sample a run wrote to ``path``; a damaged or foreign file is a UserError."""
    try:
        sample = read_weights_file(path)
    except UserError:
        sample = None
    if not (isinstance(sample, dict) and all(isinstance(sample.get(k), torch.Tensor) for k in ("distances", "levels"))):
        raise UserError(f"{path} is damaged or not a distance sample of run.py; its histogram is skipped (a run "
                        "writes the sample again when it finishes)")
    return sample


def curves_of(run_dir: Path) -> list[Path]:
    return [plot_curves(read_metrics(run_dir), run_dir / "curves.png")]


def histogram_of(run_dir: Path) -> list[Path]:
    sample = run_dir / "mdr_distances.pt"
    return [plot_histogram(read_distance_sample(sample), run_dir / "mdr_histogram.png")] if sample.is_file() else []


RUN_PLOTS = (curves_of, histogram_of)


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write curves.png (and mdr_histogram.png when the sample exists) into ``run_dir``."""
    return [path for draw in RUN_PLOTS for path in draw(Path(run_dir))]


def seed_curve(records: list[list[dict]], key: str) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """(epochs every run evaluated, mean, std over runs) of ``key``; std is 0 for a single run."""
    epochs = sorted(set.intersection(*({r["epoch"] for r in run if key in r} for run in records)))
    values = torch.tensor([[next(r[key] for r in run if r["epoch"] == e) for e in epochs] for run in records],
                          dtype=torch.float64)
    std = values.std(dim=0) if len(records) > 1 else torch.zeros(len(epochs), dtype=torch.float64)
    return epochs, values.mean(dim=0), std


def finished_groups(paths: list[str]) -> list[Group]:
    """tools.report's groups of the finished runs under ``paths``; skipped folders are listed on stderr."""
    runs, skipped = find_runs(paths)
    for path, why in skipped:
        print(f"skipped: {path}: {why}", file=sys.stderr)
    groups = [g for g in group_runs([r for r in runs if r.finished]) if g.runs]
    if not groups:
        raise UserError(f"no finished run under {', '.join(paths)} ({len(runs)} unfinished); compare runs once "
                        "they finish, or plot one with python -m tools.plot RUN_DIR")
    return groups


def series_label(method: str, grid: Grid, n: int) -> str:
    """'Triplet+MDR lambda-mdr=0.6 (n=3)'."""
    return f"{method}{' ' + grid_label(grid) if grid else ''} (n={n})"


def plot_comparison(paths: list[str], out: Path) -> Path:
    """Recall@1 (or the selection metric) over epochs per method and grid point, mean and 95% interval over
    seeds, one panel per dataset."""
    groups = finished_groups(paths)
    datasets = sorted({g.dataset for g in groups})
    fig, axes = _pyplot().subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for group in (g for g in groups if g.dataset == dataset):
            key = selection_key(recall_ks(group.runs))
            epochs, mean, std = seed_curve([r.records for r in group.runs], key)
            half = ci_halfwidth(std, len(group.runs))
            ax.plot(epochs, mean, marker=".", label=series_label(group.method, group.grid, len(group.runs)))
            ax.fill_between(epochs, mean - half, mean + half, alpha=0.25)
            ax.set_ylabel(f"{key} (%), mean and 95% CI")
        ax.set_title(dataset)
    return save_epoch_figure(fig, axes[0], out)


def selected_summary(group: Group, selection: str) -> Summary | None:
    """The Summary over ``group``'s seeds of its selection metric at the ``selection`` epoch; None if none applies."""
    key = selection_key(recall_ks(group.runs))
    scores = [r[key] for r in (run.selected(selection) for run in group.runs) if r is not None and key in r]
    return summarize(scores) if scores else None


def draw_against(ax, groups: list[Group], flag: str, position: dict[str, float], selection: str) -> None:
    """On ``ax``, one line with its interval band per method (and other grid flags) over the values of ``flag``;
    a dashed line and band for each group without ``flag``."""
    series: dict[tuple, list[tuple[float, Summary]]] = {}
    for group in groups:
        summary, point = selected_summary(group, selection), dict(group.grid)
        if summary is None:
            continue
        if flag in point:
            rest = tuple((f, v) for f, v in group.grid if f != flag)
            series.setdefault((group.method, rest), []).append((position[point[flag]], summary))
            continue
        line = ax.axhline(summary.mean, linestyle="--", label=series_label(group.method, group.grid, summary.n))
        if summary.ci:
            ax.axhspan(*summary.ci, color=line.get_color(), alpha=0.15)
    for (method, rest), points in series.items():
        points.sort(key=lambda p: p[0])
        xs, summaries = [x for x, _ in points], [s for _, s in points]
        line, = ax.plot(xs, [s.mean for s in summaries], marker="o",
                        label=series_label(method, rest, max(s.n for s in summaries)))
        ax.fill_between(xs, [s.ci[0] if s.ci else s.mean for s in summaries],
                        [s.ci[1] if s.ci else s.mean for s in summaries], color=line.get_color(), alpha=0.25)


def plot_against(paths: list[str], out: Path, flag: str, selection: str = "best") -> Path:
    """Recall@1 at the ``selection`` epoch against the values of grid flag ``flag``, mean over seeds and 95%
    interval, one panel per dataset; numeric values are placed by value, others side by side."""
    groups = finished_groups(paths)
    flag = flag.replace("_", "-")
    values = sorted({dict(g.grid)[flag] for g in groups if flag in dict(g.grid)}, key=value_order)
    if not values:
        grid_flags = sorted({f for g in groups for f, _ in g.grid})
        raise UserError(f"--against {flag}: no run folder of a grid over --{flag} among the finished runs; "
                        f"grid flags found: {', '.join(grid_flags) or 'none (run tools.sweep --grid first)'}")
    numeric = all(len(value_order(v)[1]) == 1 for v in values)
    position = {v: value_order(v)[1][0] if numeric else i for i, v in enumerate(values)}
    datasets = sorted({g.dataset for g in groups})
    fig, axes = _pyplot().subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        draw_against(ax, [g for g in groups if g.dataset == dataset], flag, position, selection)
        if not numeric:
            ax.set_xticks(range(len(values)), values)
        ax.set_xlabel(f"--{flag}")
        ax.set_ylabel(f"Recall (%), {dict(SELECTIONS)[selection]}: mean and 95% CI")
        ax.set_title(dataset)
        ax.legend()
        ax.grid(alpha=0.3)
    return save_figure(fig, out)


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser("tools.plot", __doc__)
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR", help="a --save-dir of run.py (with --compare: "
                                                                    "run folders or folders holding them)")
    parser.add_argument("--compare", action="store_true", help="one figure comparing the methods over seeds")
    parser.add_argument("--out", default="comparison.png", help="the --compare figure")
    parser.add_argument("--against", metavar="FLAG", default=None,
                        help="with --compare: Recall@1 against the values of this grid flag of tools.sweep --grid "
                             "(e.g. lambda-mdr) instead of over epochs")
    parser.add_argument("--selection", choices=[s for s, _ in SELECTIONS], default="best",
                        help="with --against: the epoch of each run (best: the authors' protocol)")
    return parser


def compare(args: argparse.Namespace) -> None:
    """--compare: draw the comparison figure and print its path."""
    if not args.compare:
        raise UserError("--against draws a comparison; add --compare")
    out = check_out(Path(args.out))
    print(plot_against(args.paths, out, args.against, args.selection) if args.against
          else plot_comparison(args.paths, out))


def print_plots(draw: Callable[[Path], list[Path]], run_dir: Path) -> None:
    """Draw one of RUN_PLOTS of ``run_dir`` and print the path of each figure written."""
    for path in draw(run_dir):
        print(path)


def main(argv: list[str] | None = None) -> int:
    """Each figure printed as it is written; one that cannot be drawn is one error line, the others still are."""
    args = get_args_parser().parse_args(argv)
    if args.compare or args.against:
        return exit_status(lambda: compare(args))
    return max(exit_status(partial(print_plots, draw, Path(run_dir))) for run_dir in args.paths for draw in RUN_PLOTS)


if __name__ == "__main__":
    sys.exit(main())
