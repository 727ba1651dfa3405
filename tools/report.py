"""The results table of finished runs: Recall@K as mean ± std and 95% confidence interval over seeds, per
dataset, method and grid point.

    python -m tools.report result/ [more run folders or roots] [--format markdown|csv|latex] [--baseline METHOD]

Every folder holding a config.json under the given paths is a run, counted
once however many paths lead to it. Runs are grouped by dataset, method (the
base loss, +L2Norm, +MDR) and grid point (a folder named FLAG=V,... by
tools.sweep --grid); a run whose configuration (every flag that changes its
numbers but the seed, the data counts, the ImageNet weights) differs from its
group's most common one is flagged and kept out of the mean. Unfinished runs
and folders that are not readable runs are listed apart, on stderr. Each
method has a row per model selection: the best epoch by test Recall@1 (the
authors' protocol, the epoch result.txt names), the final epoch, and the epoch
chosen on held-out validation classes when the runs used --val-classes.
--baseline adds to every other row the mean difference to the baseline over
the seeds both have and the two-sided paired t-test's p-value (n/a below 3
common seeds, or when every paired difference is the same: the t statistic is
then undefined). The interval is Student's t, unclipped: with few seeds it can
reach past 0 or 100, which says how little those seeds pin the mean down.
"""
import argparse
import csv
import io
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from errors import UserError
from experiment.cli import ArgumentParser, exit_status
from experiment.config import CONFIG_NAME, METHOD_NAMES, method_name, read_run_config
from experiment.resume import NO_EFFECT, recorded_flags
from experiment.run_dir import read_best, read_history, selection_key
from experiment.validation import VAL_PREFIX
from tools.grid import folder_flags, value_order
from tools.seed_stats import MIN_PAIRED_SEEDS, Comparison, Summary, paired, summarize

# Flags that do not change a run's numbers, or whose effect is compared otherwise: the seed (varies within a
# group), the ImageNet weights file (by its sha256) and the data folder (by its counts).
NOT_CONFIGURATION = NO_EFFECT | {"seed", "pretrained"}
SELECTIONS = (("best", "best epoch (authors' protocol)"), ("final", "final epoch"),
              ("val", "selected on validation"))
Grid = tuple[tuple[str, str], ...]  # ((flag, value as config.json records it), ...)


def value_text(value) -> str:
    """A flag's value as a grid label shows it: numbers in %g, lists joined by spaces."""
    if isinstance(value, (list, tuple)):
        return " ".join(value_text(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass
class Run:
    """One run folder: its config.json, metrics.jsonl records and result.txt best."""

    path: Path
    config: dict
    records: list[dict]
    best: tuple[str, float, int | None] | None = None

    @cached_property
    def flags(self) -> dict:
        return recorded_flags(self.config["flags"])

    @property
    def seed(self) -> int:
        return self.flags["seed"]

    @property
    def finished(self) -> bool:
        return bool(self.records) and self.records[-1]["epoch"] >= self.flags["epochs"]

    @property
    def grid(self) -> Grid:
        """The grid point of a run in a folder named FLAG=V,... by tools.sweep, with the values it recorded."""
        names = folder_flags(self.path.parent.name) or []
        if not all(n.replace("-", "_") in self.flags for n in names):
            return ()
        return tuple((n, value_text(self.flags[n.replace("-", "_")])) for n in names)

    @property
    def group(self) -> tuple[str, str, Grid]:
        return self.flags["dataset"], method_name(self.flags), self.grid

    @cached_property
    def key(self) -> str:
        """The metric that picks the best epoch, as run.py picks it."""
        return selection_key(recall_ks([self]))

    def signature(self) -> dict:
        """What must agree between the seeds of one configuration."""
        weights = self.config.get("weights") or {}
        return {**{k: v for k, v in self.flags.items() if k not in NOT_CONFIGURATION},
                "data counts": self.config["data"]["counts"], "weights sha256": weights.get("sha256")}

    def best_record(self) -> tuple[dict, str | None]:
        """(the record of the epoch result.txt names as best, a remark when only its best value is known).

        Runs from before epoch 0 had a line in metrics.jsonl, or before result.txt named the epoch, give
        the record with that value; when the best epoch has no line (epoch 0), only the value is known.
        """
        key = self.key
        scored = [r for r in self.records if key in r]
        if self.best is None or self.best[0] != key:
            return max(scored, key=lambda r: (r[key], -r["epoch"])), None
        _, value, epoch = self.best
        for record in scored:
            if (record["epoch"] == epoch) if epoch is not None else abs(record[key] - value) < 5e-5:
                return record, None
        return {"epoch": epoch, key: value}, (
            f"{self.path}: best epoch {'0' if epoch is None else epoch} ({key} {value:.4f} in result.txt) has no "
            "line in metrics.jsonl (a run from before epoch 0 was recorded); its other metrics are left out")

    def selected(self, selection: str) -> dict | None:
        """The metrics.jsonl record a selection picks (ties: the earliest epoch); None when it does not apply."""
        if selection == "best":
            return self.best_record()[0]
        if selection == "final":
            return self.records[-1]
        key = VAL_PREFIX + self.key
        scored = [r for r in self.records if key in r]
        return max(scored, key=lambda r: (r[key], -r["epoch"])) if scored else None


@dataclass
class Group:
    """The runs of one (dataset, method, grid point): those averaged, and those flagged with their differences."""

    dataset: str
    method: str
    grid: Grid
    runs: list[Run] = field(default_factory=list)
    flagged: list[tuple[Run, list[str]]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return grid_label(self.grid)


def grid_label(grid: Grid) -> str:
    """``FLAG=VALUE`` pairs joined by ``,``; "" without a grid."""
    return ",".join(f"{flag}={value}" for flag, value in grid)


def recall_ks(runs: list[Run]) -> list[int]:
    """The K of every Recall@K the runs evaluated, sorted."""
    return sorted({int(k.split("@")[1]) for run in runs for r in run.records for k in r if k.startswith("Recall@")})


def read_run(path: Path) -> Run:
    """The run in ``path``; a UserError saying why when it is not a readable run of this project."""
    run = Run(path, read_run_config(path), read_history(path), read_best(path))
    if run.finished and not recall_ks([run]):
        raise UserError(f"{path / 'metrics.jsonl'} holds no Recall@K")
    return run


def find_runs(paths: list[str]) -> tuple[list[Run], list[tuple[Path, str]]]:
    """(every readable run folder at or under ``paths``, each once; (folder, reason) of those skipped)."""
    folders: dict[Path, Path] = {}
    for name in paths:
        path = Path(name)
        if not path.exists():
            raise UserError(f"{path} not found; pass run folders or a folder holding them (e.g. result/)")
        for found in sorted(p.parent for p in path.rglob(CONFIG_NAME)) if path.is_dir() else []:
            folders.setdefault(found.resolve(), found)
    if not folders:
        raise UserError(f"no run with a {CONFIG_NAME} under {', '.join(paths)}; runs of this version write one "
                        "to their --save-dir")
    runs, skipped = [], []
    for folder in folders.values():
        try:
            runs.append(read_run(folder))
        except UserError as exc:
            skipped.append((folder, str(exc)))
    if not runs:
        raise UserError(f"no readable run under {', '.join(paths)}: " + "; ".join(f"{p}: {why}" for p, why in skipped))
    return runs, skipped


def differences(signature: dict, reference: dict) -> list[str]:
    """'batch: 16 (group: 8)' for each entry of ``signature`` that differs from ``reference``."""
    return [f"{k}: {signature.get(k)!r} (group: {reference.get(k)!r})"
            for k in sorted(set(signature) | set(reference)) if signature.get(k) != reference.get(k)]


def _order(group: Group) -> tuple:
    """Datasets by name; the paper's methods first, then the others by name; grid points by their values."""
    paper = list(METHOD_NAMES.values())
    method = (paper.index(group.method), "") if group.method in paper else (len(paper), group.method)
    return group.dataset, method, [(flag, value_order(value)) for flag, value in group.grid]


def group_runs(runs: list[Run]) -> list[Group]:
    """Finished runs by (dataset, method, grid point); each group's most common signature is its configuration.

    A seed counted in a group already (the same run copied elsewhere) is flagged too.
    """
    groups: dict[tuple, Group] = {}
    for run in runs:
        groups.setdefault(run.group, Group(*run.group)).runs.append(run)
    for group in groups.values():
        counts = Counter(json.dumps(r.signature(), sort_keys=True) for r in group.runs)
        reference = json.loads(counts.most_common(1)[0][0])
        kept: dict[int, Run] = {}
        for run in group.runs:
            diff = differences(run.signature(), reference)
            if not diff and run.seed in kept:
                diff = [f"seed {run.seed} is counted already, from {kept[run.seed].path}"]
            if diff:
                group.flagged.append((run, diff))
            else:
                kept[run.seed] = run
        group.runs = list(kept.values())
    return sorted(groups.values(), key=_order)


@dataclass
class Row:
    """One line of the table: a group's runs at one selection, with a Summary (or None) per metric."""

    group: Group
    selection: str
    n: int
    cells: list[Summary | None]
    by_seed: list[dict[int, float] | None]
    versus: list[Comparison | None] | None = None  # against the --baseline row; None: no baseline for this row
    is_baseline: bool = False


def rows(groups: list[Group], keys: list[str]) -> list[Row]:
    """The rows of the table, each group at each selection that applies to its runs."""
    out = []
    for group in groups:
        for selection, label in SELECTIONS:
            picked = [(run.seed, run.selected(selection)) for run in group.runs]
            picked = [(seed, record) for seed, record in picked if record is not None]
            if not picked:
                continue
            by_seed = [{seed: r[k] for seed, r in picked} if all(k in r for _, r in picked) else None for k in keys]
            out.append(Row(group, label, len(picked), [summarize(list(v.values())) if v else None for v in by_seed],
                           by_seed))
    return out


def baseline_method(groups: list[Group], name: str) -> str:
    """The reported method ``name`` means: a method name as the table shows it, or a sweep method (mdr, ...)."""
    methods = sorted({g.method for g in groups})
    wanted = METHOD_NAMES.get(name.lower(), name).lower()
    for method in methods:
        if method.lower() == wanted:
            return method
    raise UserError(f"--baseline {name}: no such method among the runs reported; choose one of {', '.join(methods)}")


def compare_to_baseline(table: list[Row], method: str) -> None:
    """Compare every row with a row of the baseline ``method`` of its dataset and selection: the one at the
    same grid point, or, when that is the row itself or absent, the one without grid."""
    base = {(r.group.dataset, r.selection, r.group.grid): r for r in table if r.group.method == method}
    for row in table:
        candidates = (base.get((row.group.dataset, row.selection, grid)) for grid in (row.group.grid, ()))
        against = next((c for c in candidates if c is not None and c is not row), None)
        row.is_baseline = row.group.method == method
        if against is not None:
            row.versus = [paired(mine, theirs) if mine and theirs else None
                          for mine, theirs in zip(row.by_seed, against.by_seed)]


def _p(comparison: Comparison) -> str:
    return "n/a" if comparison.p is None else f"{comparison.p:.3g}"


def render_csv(table: list[Row], keys: list[str], baseline: bool) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    stats = ("mean", "std", "ci_low", "ci_high") + (("delta", "p") if baseline else ())
    writer.writerow(["dataset", "method", "grid", "selection", "seeds"] + [f"{k} {s}" for k in keys for s in stats])
    for row in table:
        cells = []
        for i, cell in enumerate(row.cells):
            ci = cell.ci if cell else None
            cells += [f"{cell.mean:.4f}", f"{cell.std:.4f}"] if cell else ["", ""]
            cells += [f"{ci[0]:.4f}", f"{ci[1]:.4f}"] if ci else ["", ""]
            if baseline:
                versus = row.versus[i] if row.versus else None
                cells += ([f"{versus.delta:.4f}", _p(versus)] if versus
                          else ["", ""] if row.is_baseline and row.versus is None else ["n/a", "n/a"])
        writer.writerow([row.group.dataset, row.group.method, row.group.label, row.selection, row.n] + cells)
    return buf.getvalue()


def cell_text(row: Row, i: int, latex: bool) -> str:
    """'mean ± std [ci_low, ci_high]' of metric ``i``, and with a baseline ', Δ +d (p 0.01)' or ', baseline'."""
    cell = row.cells[i]
    if cell is None:
        return ""
    pm, delta = (r" $\pm$ ", r"$\Delta$") if latex else (" ± ", "Δ")
    spread = f"{cell.std:.2f}" if cell.n > 1 else "n/a"  # one seed has no spread, not a spread of 0
    text = f"{cell.mean:.2f}{pm}{spread}" + (f" [{cell.ci[0]:.2f}, {cell.ci[1]:.2f}]" if cell.ci else "")
    versus = row.versus[i] if row.versus else None
    if versus is not None:
        text += f", {delta} {versus.delta:+.2f} (p {_p(versus)}, {versus.n} seeds)"
    elif row.is_baseline:
        text += ", baseline"
    return text


def render(groups: list[Group], fmt: str, baseline: str | None = None) -> str:
    keys = [f"Recall@{k}" for k in recall_ks([r for g in groups for r in g.runs])]
    table = rows(groups, keys)
    if baseline is not None:
        compare_to_baseline(table, baseline_method(groups, baseline))
    if fmt == "csv":
        return render_csv(table, keys, baseline is not None)
    with_grid = any(g.grid for g in groups)
    header = ["Dataset", "Method"] + ["Grid"] * with_grid + ["Selection", "n"] + keys
    body = [[r.group.dataset, r.group.method] + [r.group.label] * with_grid + [r.selection, str(r.n)]
            + [cell_text(r, i, fmt == "latex") for i in range(len(keys))] for r in table]
    if fmt == "latex":
        lines = [r"\begin{tabular}{" + "l" * (3 + with_grid) + "r" * (len(keys) + 1) + "}", r"\hline",
                 " & ".join(header) + r" \\", r"\hline"] + [" & ".join(line) + r" \\" for line in body]
        return "\n".join(lines + [r"\hline", r"\end{tabular}"]) + "\n"
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(line) + " |" for line in body]) + "\n"


def notes(groups: list[Group], unfinished: list[Run], skipped: list[tuple[Path, str]]) -> str:
    """What the table leaves out or cannot fully show: flagged, unfinished and skipped runs, partial bests."""
    lines = [f"flagged, not averaged: {run.path}: {'; '.join(diff)}" for g in groups for run, diff in g.flagged]
    lines += [remark for g in groups for run in g.runs if (remark := run.best_record()[1])]
    lines += [f"unfinished: {run.path} ({run.records[-1]['epoch'] if run.records else 0} of "
              f"{run.flags['epochs']} epochs)" for run in unfinished]
    lines += [f"skipped: {path}: {why}" for path, why in skipped]
    return "\n".join(lines)


def report(paths: list[str], fmt: str = "markdown", baseline: str | None = None) -> tuple[str, str]:
    """(table, notes on flagged, unfinished and skipped runs) of the runs under ``paths``."""
    runs, skipped = find_runs(paths)
    groups = group_runs([r for r in runs if r.finished])
    return render(groups, fmt, baseline), notes(groups, [r for r in runs if not r.finished], skipped)


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser("tools.report", __doc__)
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR_OR_ROOT",
                        help="run folders, or folders holding them (e.g. result/)")
    parser.add_argument("--format", choices=["markdown", "csv", "latex"], default="markdown",
                        help="the table's format")
    parser.add_argument("--baseline", metavar="METHOD", default=None,
                        help="compare every other row with this method (as the table names it, e.g. Triplet, or "
                             f"a sweep method: triplet, l2norm, mdr): mean difference and paired t-test p-value "
                             f"over the common seeds (n/a below {MIN_PAIRED_SEEDS}, or when every difference is the same)")
    return parser


def show(table: str, remarks: str) -> None:
    """The table on stdout, the notes on flagged, unfinished and skipped runs on stderr."""
    print(table, end="")
    if remarks:
        print(remarks, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    return exit_status(lambda: show(*report(args.paths, args.format, args.baseline)))


if __name__ == "__main__":
    sys.exit(main())
