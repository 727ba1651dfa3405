"""config.json: what a run was (flags, versions, commit, device, data, weights), written after the guards pass."""
import argparse
import json
import platform
import subprocess
from pathlib import Path

import PIL
import torch
import torchvision

from experiment.guards import CANONICAL, PAPER_NEEDS_IMAGENET, check_data, split_counts, weights_record
from experiment.resume import run_flags
from experiment.run_dir import write_text_atomic
from model import imagenet_weights_file

CONFIG_NAME = "config.json"
METHOD_NAMES = {"triplet": "Triplet", "l2norm": "Triplet+L2Norm", "mdr": "Triplet+MDR"}
REPO = Path(__file__).resolve().parent.parent


def git_commit(repo: Path = REPO) -> dict | None:
    """{"commit", "dirty"} of the checkout the code runs from; None outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "-uno"))}
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "Pillow": PIL.__version__}


def device_record(device: torch.device) -> dict:
    record = {"type": device.type}
    if device.type == "cuda":
        record["name"] = torch.cuda.get_device_name(device)
    return record


def run_config(args: argparse.Namespace, device: torch.device, counts: dict[str, int],
               data_warnings: list[str]) -> dict:
    """The config.json record of a run."""
    return {"flags": run_flags(args), "seed": args.seed, "versions": versions(), "git": git_commit(),
            "device": device_record(device),
            "data": {"dataset": args.dataset, "root": str(Path(args.data).resolve()), "counts": counts,
                     "canonical": CANONICAL.get(args.dataset), "warnings": data_warnings},
            "weights": weights_record(imagenet_weights_file(args.backbone, args.pretrained))}


def record_run(args: argparse.Namespace, device: torch.device, save_dir: Path, splits: dict) -> dict:
    """Run the data guards on ``splits`` ({name: dataset}) and write ``save_dir/config.json``; returns the record.

    A tree that differs from the canonical benchmark warns, or with
    --strict-data raises before training; --no-pretrained on a benchmark says
    that the paper's numbers need ImageNet weights.
    """
    counts = split_counts(splits)
    warnings = check_data(args.dataset, args.data, counts, args.strict_data)
    if not args.pretrained and args.dataset in CANONICAL:
        print(f"[Warning] {PAPER_NEEDS_IMAGENET}")
    config = run_config(args, device, counts, warnings)
    write_text_atomic(save_dir / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return config


def method(flags: dict) -> str:
    """The method a run's flags train: "mdr" with a non-zero --lambda-mdr, else "l2norm" or "triplet"."""
    return "mdr" if flags["lambda_mdr"] > 0 else "l2norm" if flags["l2norm"] else "triplet"


def read_config(run_dir: Path) -> dict | None:
    """The config.json of ``run_dir``; None when the run has none."""
    path = run_dir / CONFIG_NAME
    return json.loads(path.read_text()) if path.is_file() else None
