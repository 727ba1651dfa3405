"""config.json: what a run was (flags, versions, commit, device, data, weights), written after the guards pass,
and checked by a resume against the data and weights it finds."""
import argparse
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path

import PIL
import torch
import torchvision

from errors import UserError
from experiment.guards import (CANONICAL, PAPER_NEEDS_IMAGENET, check_data, sha256_file, split_counts,
                               weights_record)
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


def sample_digests(splits: dict, root: str | Path) -> dict[str, str]:
    """{split: sha256 of its samples' "path relative to ``root``<TAB>label" lines, in order}: which images a
    run reads, under which labels, wherever the tree lies (the pixels are not read)."""
    def digest(samples: list[tuple[str, int]]) -> str:
        lines = "".join(f"{os.path.relpath(path, root)}\t{label}\n" for path, label in samples)
        return hashlib.sha256(lines.encode()).hexdigest()
    return {name: digest(dataset.samples) for name, dataset in splits.items()}


def run_config(args: argparse.Namespace, device: torch.device, counts: dict[str, int],
               data_warnings: list[str], samples: dict[str, str]) -> dict:
    """The config.json record of a run; ``samples`` are the splits' ``sample_digests``."""
    data = {"dataset": args.dataset, "root": str(Path(args.data).resolve()), "counts": counts,
            "samples": samples, "canonical": CANONICAL.get(args.dataset), "warnings": data_warnings}
    if Path(args.data).is_file():  # a manifest: what it lists is the data
        data["sha256"] = sha256_file(Path(args.data))
    return {"flags": run_flags(args), "seed": args.seed, "versions": versions(), "git": git_commit(),
            "device": device_record(device), "data": data,
            "weights": weights_record(imagenet_weights_file(args.backbone, args.pretrained))}


def record_run(args: argparse.Namespace, device: torch.device, save_dir: Path, splits: dict,
               resuming: bool = False) -> dict:
    """Run the data guards on ``splits`` ({name: dataset}) and write ``save_dir/config.json``; returns the record.

    A tree that differs from the canonical benchmark warns, or with
    --strict-data raises before training; --no-pretrained on a benchmark says
    that the paper's numbers need ImageNet weights. A resume (``resuming``)
    first checks the data and weights against the run's config.json
    (``resumed_record``) and writes nothing when they differ.
    """
    counts = split_counts(splits, val_held_out=args.val_classes is not None or args.val_fraction is not None)
    warnings = check_data(args.dataset, args.data, counts, args.strict_data)
    if not args.pretrained and args.dataset in CANONICAL:
        print(f"[Warning] {PAPER_NEEDS_IMAGENET}")
    config = run_config(args, device, counts, warnings, sample_digests(splits, args.data))
    if resuming:
        config = resumed_record(saved_record(save_dir), config, save_dir)
    write_text_atomic(save_dir / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return config


def saved_record(run_dir: Path) -> dict | None:
    """The config.json a resume checks against; None, saying so, when it is missing, unreadable or foreign."""
    path = run_dir / CONFIG_NAME
    try:
        saved = read_config(run_dir)
    except (OSError, ValueError) as exc:  # ValueError: invalid JSON or UTF-8
        saved, why = None, f"cannot be read ({exc})"
    else:
        why = "is missing" if saved is None else "is not a record of this project"
    if isinstance(saved, dict) and isinstance(saved.get("data"), dict) and "counts" in saved["data"]:
        return saved
    print(f"[Warning] {path} {why}; the data and weights of this resume cannot be checked against the run's")
    return None


def data_differences(saved: dict, found: dict) -> list[str]:
    """'train classes: 3 -> 4' for each count, and 'other images or labels in the test split' for each sample
    list, that differ between the data records ``saved`` and ``found`` (records without lists: counts only)."""
    old, new = saved["counts"], found["counts"]
    counts = [f"{name}: {old.get(name)} -> {new.get(name)}" for name in sorted(old.keys() | new.keys())
              if old.get(name) != new.get(name)]
    lists = [f"other images or labels in the {split} split"
             for split, digest in sorted(saved.get("samples", {}).items()) if found["samples"].get(split) != digest]
    return counts + lists


def resumed_record(saved: dict | None, found: dict, run_dir: Path) -> dict:
    """The config.json of a resumed run: ``found`` (this invocation's record) once its data fingerprint (counts
    and sample lists) and ImageNet weights' sha256 match the ``saved`` record; a weights file no longer on
    disk keeps its saved record. Raises naming the differences otherwise."""
    if saved is None:
        return found
    old_root, new_root = saved["data"].get("root"), found["data"]["root"]
    differences = data_differences(saved["data"], found["data"])
    if differences:
        raise UserError(f"--resume {run_dir}: the data under {new_root} is not the tree the run trained on "
                        f"({run_dir / CONFIG_NAME} records {old_root}): {'; '.join(differences)}; point --data at "
                        "that tree (a moved copy is fine), or start a new run with another --save-dir")
    if old_root != new_root:
        print(f"[Resume] the data moved from {old_root} to {new_root}; the same images and labels, so the run "
              "continues on them")
    old, new = saved.get("weights"), found["weights"]
    if old and new and old.get("sha256") != new["sha256"]:
        raise UserError(f"--resume {run_dir}: the ImageNet weights {new['file']} have sha256 {new['sha256']}, but "
                        f"the run started from a file with sha256 {old.get('sha256')} ({run_dir / CONFIG_NAME}); "
                        "put the original file back, or start a new run with another --save-dir")
    return {**found, "weights": new or old}


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
