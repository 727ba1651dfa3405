"""config.json: what a run was (flags, versions, commit, device, data, weights), written after the guards pass."""
import argparse
import json
import platform
import subprocess
from pathlib import Path

import PIL
import torch
import torchvision

from errors import UserError
from experiment.guards import CANONICAL, PAPER_NEEDS_IMAGENET, check_data, split_counts, weights_record
from experiment.resume import run_flags
from experiment.run_dir import write_text_atomic
from loss.pml import PML_LOSSES
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


def method_name(flags: dict) -> str:
    """The method a run's flags train: the base loss, "+L2Norm" with --l2norm, "+MDR" with a non-zero
    --lambda-mdr ("Triplet+MDR", "MultiSimilarity+L2Norm")."""
    loss = flags.get("loss", "triplet")
    base = "Triplet" if loss == "triplet" else PML_LOSSES.get(loss, (loss,))[0].removesuffix("Loss")
    return base + "+L2Norm" * bool(flags["l2norm"]) + "+MDR" * (flags["lambda_mdr"] > 0)


def read_config(run_dir: Path) -> dict | None:
    """The config.json of ``run_dir``; None when the run has none. Invalid JSON is a UserError naming the file."""
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(errors="replace"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); it was not written whole "
                        "by run.py") from None


# What config.json must hold for the report: flags that name the run's group, and the data counts.
RUN_FIELDS = {"dataset": str, "epochs": int, "lambda_mdr": (int, float), "l2norm": bool, "seed": int}


def read_run_config(run_dir: Path) -> dict:
    """The config.json of a run of this project in ``run_dir``; a UserError for a missing, invalid or foreign one."""
    config = read_config(run_dir)
    if config is None:
        raise UserError(f"{run_dir / CONFIG_NAME} not found")
    flags = config.get("flags") if isinstance(config, dict) else None
    data = config.get("data") if isinstance(config, dict) else None
    missing = [k for k, kind in RUN_FIELDS.items() if not isinstance(flags, dict) or not isinstance(flags.get(k), kind)]
    if missing or not isinstance(data, dict) or not isinstance(data.get("counts"), dict):
        lacks = ", ".join(f"flags.{k}" for k in missing) or "data.counts"
        raise UserError(f"{run_dir / CONFIG_NAME} is not written by run.py (it lacks {lacks})")
    return config
