"""The results table of finished runs: Recall@K as mean ± std over seeds, per dataset and method.

    python -m tools.report result/ [more run folders or roots] [--format markdown|csv|latex]

Every folder holding a config.json under the given paths is a run. Runs are
grouped by dataset and method; a run whose configuration (flags other than the
seed and where things live, data fingerprint, ImageNet weights) differs from
its group's most common one is flagged and kept out of the mean. Unfinished
runs are listed apart. Each method has a row per model selection: the best
epoch by test Recall@1 (the authors' protocol), the final epoch, and the epoch
chosen on held-out validation classes when the runs used --val-classes.
"""
import argparse
import csv
import io
import json
import statistics
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from errors import UserError
from experiment.config import CONFIG_NAME, METHOD_NAMES, method, read_config
from experiment.resume import CHANGEABLE
from experiment.run_dir import read_history, selection_key
from experiment.validation import VAL_PREFIX

# Flags that vary between the seeds of one configuration, or only say where files are.
NOT_CONFIGURATION = CHANGEABLE | {"seed", "pretrained", "load"}
SELECTIONS = (("best", "best epoch (authors' protocol)"), ("final", "final epoch"),
              ("val", "selected on validation"))


@dataclass
class Run:
    """One run folder: its config.json and metrics.jsonl records."""

    path: Path
    config: dict
    records: list[dict]

    @property
    def flags(self) -> dict:
        return self.config["flags"]

    @property
    def finished(self) -> bool:
        return bool(self.records) and self.records[-1]["epoch"] >= self.flags["epochs"]

    @property
    def group(self) -> tuple[str, str]:
        return self.flags["dataset"], METHOD_NAMES[method(self.flags)]

    def signature(self) -> dict:
        """What must agree between the seeds of one configuration."""
        weights = self.config.get("weights") or {}
        return {**{k: v for k, v in self.flags.items() if k not in NOT_CONFIGURATION},
                "data counts": self.config["data"]["counts"], "weights sha256": weights.get("sha256")}

    def selected(self, selection: str) -> dict | None:
        """The metrics.jsonl record a selection picks (ties: the earliest epoch); None when it does not apply."""
        key = selection_key([int(k.split("@")[1]) for k in self.records[0] if k.startswith("Recall@")])
        if selection == "final":
            return self.records[-1]
        if selection == "val":
            key = VAL_PREFIX + key
            if key not in self.records[0]:
                return None
        return max(self.records, key=lambda r: (r[key], -r["epoch"]))


@dataclass
class Group:
    """The runs of one (dataset, method): those averaged, and those flagged with their differences."""

    dataset: str
    method: str
    runs: list[Run] = field(default_factory=list)
    flagged: list[tuple[Run, list[str]]] = field(default_factory=list)


def read_run(path: Path) -> Run:
    return Run(path, read_config(path), read_history(path))


def find_runs(paths: list[str]) -> list[Run]:
    """Every run folder (one holding config.json) at or under ``paths``."""
    found = []
    for name in paths:
        path = Path(name)
        if not path.exists():
            raise UserError(f"{path} not found; pass run folders or a folder holding them (e.g. result/)")
        found += sorted(p.parent for p in path.rglob(CONFIG_NAME)) if path.is_dir() else []
    if not found:
        raise UserError(f"no run with a {CONFIG_NAME} under {', '.join(paths)}; runs of this version write one "
                        "to their --save-dir")
    return [read_run(p) for p in dict.fromkeys(found)]


def differences(signature: dict, reference: dict) -> list[str]:
    """'batch: 16 (group: 8)' for each entry of ``signature`` that differs from ``reference``."""
    return [f"{k}: {signature.get(k)!r} (group: {reference.get(k)!r})"
            for k in sorted(set(signature) | set(reference)) if signature.get(k) != reference.get(k)]


def group_runs(runs: list[Run]) -> list[Group]:
    """Finished runs by (dataset, method); each group's most common signature is its configuration."""
    groups: dict[tuple[str, str], Group] = {}
    for run in runs:
        groups.setdefault(run.group, Group(*run.group)).runs.append(run)
    for group in groups.values():
        counts = Counter(json.dumps(r.signature(), sort_keys=True) for r in group.runs)
        reference = json.loads(counts.most_common(1)[0][0])
        group.flagged = [(r, differences(r.signature(), reference)) for r in group.runs
                         if r.signature() != reference]
        group.runs = [r for r in group.runs if r.signature() == reference]
    order = list(METHOD_NAMES.values())
    return sorted(groups.values(), key=lambda g: (g.dataset, order.index(g.method)))


def recall_keys(groups: list[Group]) -> list[str]:
    keys = {k for g in groups for r in g.runs for k in r.records[0] if k.startswith("Recall@")}
    return sorted(keys, key=lambda k: int(k.split("@")[1]))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single seed)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def rows(groups: list[Group], keys: list[str]) -> list[tuple[str, str, str, int, list[tuple[float, float] | None]]]:
    """(dataset, method, selection label, seeds, [(mean, std) per Recall@K]) for each row of the table."""
    out = []
    for group in groups:
        for selection, label in SELECTIONS:
            picked = [r.selected(selection) for r in group.runs]
            picked = [record for record in picked if record is not None]
            if picked:
                cells = [mean_std([r[k] for r in picked]) if all(k in r for r in picked) else None for k in keys]
                out.append((group.dataset, group.method, label, len(picked), cells))
    return out


def render(groups: list[Group], fmt: str) -> str:
    keys = recall_keys(groups)
    table = rows(groups, keys)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["dataset", "method", "selection", "seeds"] + [f"{k} {s}" for k in keys
                                                                       for s in ("mean", "std")])
        for dataset, method_name, label, n, cells in table:
            writer.writerow([dataset, method_name, label, n] + [f"{v:.4f}" if cell else "" for cell in cells
                                                           for v in (cell or (0, 0))])
        return buf.getvalue()
    pm = r" $\pm$ " if fmt == "latex" else " ± "
    header = ["Dataset", "Method", "Selection", "n"] + keys
    body = [[d, m, label, str(n)] + [f"{c[0]:.2f}{pm}{c[1]:.2f}" if c else "" for c in cells]
            for d, m, label, n, cells in table]
    if fmt == "latex":
        lines = [r"\begin{tabular}{" + "lll" + "r" * (len(keys) + 1) + "}", r"\hline",
                 " & ".join(header) + r" \\", r"\hline"] + [" & ".join(row) + r" \\" for row in body]
        return "\n".join(lines + [r"\hline", r"\end{tabular}"]) + "\n"
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body]) + "\n"


def notes(groups: list[Group], unfinished: list[Run]) -> str:
    """The flagged and unfinished runs, which the table leaves out."""
    lines = [f"flagged, not averaged: {run.path}: {'; '.join(diff)}" for g in groups for run, diff in g.flagged]
    lines += [f"unfinished: {run.path} ({run.records[-1]['epoch'] if run.records else 0} of "
              f"{run.flags['epochs']} epochs)" for run in unfinished]
    return "\n".join(lines)


def report(paths: list[str], fmt: str = "markdown") -> tuple[str, str]:
    """(table, notes on flagged and unfinished runs) of the runs under ``paths``."""
    runs = find_runs(paths)
    groups = group_runs([r for r in runs if r.finished])
    return render(groups, fmt), notes(groups, [r for r in runs if not r.finished])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR_OR_ROOT")
    parser.add_argument("--format", choices=["markdown", "csv", "latex"], default="markdown")
    args = parser.parse_args(argv)
    try:
        table, remarks = report(args.paths, args.format)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(table, end="")
    if remarks:
        print(remarks, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
