"""Run the authors' configuration of each method over several seeds, one run folder per (method, seed).

    python -m tools.sweep --dataset cub200 --seeds 1 2 3 [--methods triplet l2norm mdr] [--root result/] \\
        [--dry-run] [-- extra run.py flags]

Runs go to ROOT/DATASET/METHOD/seedN. A complete run is skipped, an interrupted
one continues with --resume. --dry-run prints the commands, one per line, for a
cluster scheduler or GNU parallel. Flags after ``--`` are appended to every
command (they override the authors' values, e.g. ``-- --data /data --workers 16``).
"""
import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import run
from dataset import DATASETS
from experiment.config import METHOD_NAMES
from experiment.run_dir import RUN_FILES, read_history

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


def method_flags(dataset: str, method: str) -> list[str]:
    """The authors' run.py flags of ``method`` on ``dataset`` (README, "The authors' commands"); a dataset
    they did not run (your own folder or manifest) takes their CUB-200 flags."""
    common, lambda_mdr = AUTHORS.get(dataset, AUTHORS["cub200"])
    extra = {"triplet": [], "l2norm": ["--l2norm"], "mdr": ["--lambda-mdr", lambda_mdr, "--nu-mdr", "0.01"]}
    return common + extra[method]


def run_flags(dataset: str, method: str, seed: int, extra: list[str]) -> list[str]:
    """Every flag of one run but its folder: the authors' flags, the seed, then ``extra``."""
    dataset_flag = [] if dataset == "inshop" else ["--dataset", dataset]
    return dataset_flag + method_flags(dataset, method) + ["--seed", str(seed)] + extra


def finished_epochs(run_dir: Path) -> int:
    """The last epoch ``run_dir`` has every output of (checkpoint, best/last.pth, metrics, result); -1 if none."""
    if not all((run_dir / name).is_file() for name in RUN_FILES):
        return -1
    history = read_history(run_dir)
    return history[-1]["epoch"] if history else -1


def planned_epochs(dataset: str, flags: list[str]) -> int:
    """--epochs of a run with ``flags``, as run.py parses them (which also checks them)."""
    return run.parse_args(flags, "inshop" if dataset == "inshop" else "cub200").epochs


def command(dataset: str, flags: list[str], run_dir: Path) -> list[str] | None:
    """The command that completes the run in ``run_dir``: fresh, --resume, or None when it is complete."""
    script = str(REPO / ("run_inshop.py" if dataset == "inshop" else "run.py"))
    if finished_epochs(run_dir) >= planned_epochs(dataset, flags):
        return None
    where = ["--resume", str(run_dir)] if (run_dir / "checkpoint.pth").is_file() else ["--save-dir", str(run_dir)]
    return [sys.executable, script] + flags + where


def plan(dataset: str, seeds: list[int], methods: list[str], root: Path,
         extra: list[str]) -> list[tuple[Path, list[str] | None]]:
    """(run folder, command or None when complete) for each (method, seed)."""
    out = []
    for method in methods:
        for seed in seeds:
            run_dir = root / dataset / method / f"seed{seed}"
            out.append((run_dir, command(dataset, run_flags(dataset, method, seed, extra), run_dir)))
    return out


def execute(cmd: list[str]) -> int:
    """Run one command in a process of its own; its exit status."""
    return subprocess.run(cmd).returncode


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The sweep's own flags, and the run.py flags after ``--``."""
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS),
                        help="a dataset of run.py; folder and csv take the authors' CUB-200 flags")
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--root", default="result", help="runs go to ROOT/DATASET/METHOD/seedN")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, one per line, and run nothing")
    return parser.parse_args(own), extra


def main(argv: list[str] | None = None) -> int:
    args, extra = parse(sys.argv[1:] if argv is None else argv)
    runs = plan(args.dataset, args.seeds, args.methods, Path(args.root), extra)
    pending = [(run_dir, cmd) for run_dir, cmd in runs if cmd is not None]
    for run_dir, cmd in runs:
        if cmd is None:
            print(f"complete, skipped: {run_dir}", file=sys.stderr)
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
        return 1
    print(f"[Sweep] {len(pending)} run(s) done, {len(runs) - len(pending)} already complete")
    return 0


if __name__ == "__main__":
    sys.exit(main())
