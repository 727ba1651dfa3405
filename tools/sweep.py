"""Run the authors' configuration of each method over several seeds, one run folder per (method, seed), or over
the cross product of a grid of flags.

    python -m tools.sweep --dataset cub200 --seeds 1 2 3 [--methods triplet l2norm mdr] [--root result/] \\
        [--grid FLAG=V1,V2,... ...] [--dry-run] [-- extra run.py flags]

Runs go to ROOT/DATASET/METHOD/seedN, with --grid to ROOT/DATASET/METHOD/FLAG=V,.../seedN. A complete run is
skipped, an interrupted one continues with --resume; a folder that holds something else than a run of
run.py is left alone and listed. --dry-run prints the commands, one per line, for a cluster scheduler or GNU
parallel. Flags after ``--`` are appended to every command (they override the authors' values, e.g.
``-- --data /data --workers 16``). Datasets without a configuration of the authors' (folder and the other
datasets of your own) take CUB-200-2011's for each method.
"""
import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from dataset import DATASETS
from errors import UserError
from experiment.cli import ArgumentParser
from experiment.config import CONFIG_NAME, METHOD_NAMES, read_run_config
from experiment.flags import get_args_parser as run_args_parser, parse_args as parse_run_args
from experiment.run_dir import RUN_FILES, read_history
from tools.grid import Point, folder_name, parse_grid, point_flags, points

REPO = Path(__file__).resolve().parent.parent
METHODS = tuple(METHOD_NAMES)

# The authors' README commands: flags shared by a dataset's methods, and the weight of MDR on it.
_SMALL_CLASSES = ["--lr", "5e-5", "--recall", "1", "2", "4", "8"]
_LARGE = ["--num-image-per-class", "3", "--batch", "256", "--lr", "1e-4"]
AUTHORS = {
    "cub200": (_SMALL_CLASSES, "0.6"),
    "cars196": (_SMALL_CLASSES, "0.2"),
    "stanford": (_LARGE + ["--recall", "1", "10", "100", "1000"], "0.1"),
    "inshop": (_LARGE + ["--recall", "1", "10", "20", "30", "40"], "0.1"),
}
AUTHORS["sop"] = AUTHORS["stanford"]
FALLBACK = "cub200"  # whose configuration a dataset without one of the authors' takes


def method_flags(dataset: str, method: str) -> list[str]:
    """The authors' run.py flags of ``method`` on ``dataset`` (README, "The authors' commands"); CUB-200's for a
    dataset the authors did not configure."""
    common, lambda_mdr = AUTHORS.get(dataset, AUTHORS[FALLBACK])
    extra = {"triplet": [], "l2norm": ["--l2norm"], "mdr": ["--lambda-mdr", lambda_mdr, "--nu-mdr", "0.01"]}
    return common + extra[method]


def run_flags(dataset: str, method: str, seed: int, extra: list[str], point: Point = ()) -> list[str]:
    """Every flag of one run but its folder: the authors' flags, the seed, the grid point, then ``extra``."""
    dataset_flag = [] if dataset == "inshop" else ["--dataset", dataset]
    return dataset_flag + method_flags(dataset, method) + ["--seed", str(seed)] + point_flags(point) + extra


def finished_epochs(run_dir: Path) -> int:
    """The last epoch ``run_dir`` has every output of (checkpoint, best/last.pth, metrics, result); -1 if none
    (a damaged metrics.jsonl too: a resume rebuilds it)."""
    if not all((run_dir / name).is_file() for name in RUN_FILES):
        return -1
    try:
        history = read_history(run_dir)
    except UserError:
        return -1
    return history[-1]["epoch"] if history else -1


def unusable(run_dir: Path) -> str | None:
    """Why the sweep must leave ``run_dir`` alone (a config.json that is not run.py's, a damaged metrics.jsonl
    without the checkpoint that would rebuild it); None when it is free or holds a run of run.py."""
    try:
        if (run_dir / CONFIG_NAME).is_file():
            read_run_config(run_dir)
        if not (run_dir / "checkpoint.pth").is_file():
            read_history(run_dir)
    except UserError as exc:
        return str(exc)
    return None


def planned_epochs(dataset: str, flags: list[str]) -> int:
    """--epochs of a run with ``flags``, as run.py parses them (which also checks them)."""
    return parse_run_args(flags, "inshop" if dataset == "inshop" else "cub200").epochs


def command(dataset: str, flags: list[str], run_dir: Path) -> list[str] | None:
    """The command that completes the run in ``run_dir``: fresh, --resume, or None when it is complete."""
    script = str(REPO / ("run_inshop.py" if dataset == "inshop" else "run.py"))
    if finished_epochs(run_dir) >= planned_epochs(dataset, flags):
        return None
    where = ["--resume", str(run_dir)] if (run_dir / "checkpoint.pth").is_file() else ["--save-dir", str(run_dir)]
    return [sys.executable, script] + flags + where


def plan(dataset: str, seeds: list[int], methods: list[str], root: Path, extra: list[str],
         grid: list[Point] | None = None) -> tuple[list[tuple[Path, list[str] | None]], list[tuple[Path, str]]]:
    """((run folder, command or None when complete) for each (method, grid point, seed), (folder, reason) of
    the folders left alone); without ``grid`` one point, the authors' flags alone."""
    out, skipped = [], []
    for method in methods:
        for point in grid or [()]:
            for seed in seeds:
                run_dir = root / dataset / method / folder_name(point) / f"seed{seed}"
                reason = unusable(run_dir)
                if reason is not None:
                    skipped.append((run_dir, reason))
                    continue
                flags = run_flags(dataset, method, seed, extra, point)
                out.append((run_dir, command(dataset, flags, run_dir)))
    return out, skipped


def unique(values: list, what: str) -> list:
    """``values`` without repeats, in their order; a note on stderr for each value given more than once."""
    for value in dict.fromkeys(values):
        count = values.count(value)
        if count > 1:
            print(f"{what}: {value} given {'twice' if count == 2 else f'{count} times'}, run once", file=sys.stderr)
    return list(dict.fromkeys(values))


def execute(cmd: list[str]) -> int:
    """Run one command in a process of its own; its exit status."""
    return subprocess.run(cmd).returncode


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser("tools.sweep", __doc__)
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS),
                        help="a dataset of run.py; those the authors did not configure take CUB-200's flags")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="one run per seed (repeats run once)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="Triplet, Triplet+L2Norm and Triplet+MDR, each with the authors' flags")
    parser.add_argument("--root", default="result", help="runs go to ROOT/DATASET/METHOD/seedN")
    parser.add_argument("--grid", nargs="+", default=[], metavar="FLAG=V1,V2,...",
                        help="run every point of the cross product of these run.py flags' values for each method "
                             "and seed, into ROOT/DATASET/METHOD/FLAG=V,.../seedN; a flag taking several numbers "
                             "separates them by spaces, e.g. \"mdr-levels=-3 0 3,-2 0 2\"")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, one per line, and run nothing")
    return parser


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The sweep's own flags, and the run.py flags after ``--``."""
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    return get_args_parser().parse_args(own), extra


def planned(args: argparse.Namespace, extra: list[str]) -> tuple[list, list]:
    """plan() of the sweep ``args`` ask for, repeated seeds, methods and grid values dropped with a note."""
    if args.dataset not in AUTHORS:
        common, lambda_mdr = AUTHORS[FALLBACK]
        print(f"[Sweep] the authors gave no configuration for {args.dataset}; each method takes CUB-200's "
              f"({' '.join(common)}; MDR: --lambda-mdr {lambda_mdr} --nu-mdr 0.01)", file=sys.stderr)
    grid = [(flag, unique(values, f"--grid {flag}"))
            for flag, values in parse_grid(args.grid, run_args_parser(), extra)]
    return plan(args.dataset, unique(args.seeds, "--seeds"), unique(args.methods, "--methods"), Path(args.root),
                extra, points(grid))


def main(argv: list[str] | None = None) -> int:
    args, extra = parse(sys.argv[1:] if argv is None else argv)
    try:
        runs, skipped = planned(args, extra)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    pending = [(run_dir, cmd) for run_dir, cmd in runs if cmd is not None]
    for run_dir, cmd in runs:
        if cmd is None:
            print(f"complete, skipped: {run_dir}", file=sys.stderr)
    for run_dir, why in skipped:
        print(f"skipped: {run_dir}: {why}", file=sys.stderr)
    if args.dry_run:
        print("\n".join(shlex.join(cmd) for _, cmd in pending))
        return 0
    failed = []
    for run_dir, cmd in pending:
        print(f"[Sweep] {shlex.join(cmd)}", flush=True)
        if execute(cmd) != 0:
            failed.append(str(run_dir))
    if failed:
        print(f"error: {len(failed)} run(s) failed: {', '.join(failed)}; see their output above and run the "
              "sweep again to continue them", file=sys.stderr)
    if skipped:
        print(f"error: {len(skipped)} folder(s) left alone (listed above): move them out of {args.root} or "
              "repair them, then run the sweep again", file=sys.stderr)
    if failed or skipped:
        return 1
    print(f"[Sweep] {len(pending)} run(s) done, {len(runs) - len(pending)} already complete")
    return 0


if __name__ == "__main__":
    sys.exit(main())
