"""Checks before training: is the dataset tree the canonical one; the ImageNet weights' record.

Whether a weights file is the published one is checked where it is loaded (model/pretrained.py).
"""
from pathlib import Path

from errors import UserError
from model.pretrained import sha256_file

# Canonical split sizes of the four benchmarks, as counted by the dataset readers of this project.
CANONICAL: dict[str, dict[str, int]] = {
    "cub200": {"train images": 5864, "train classes": 100, "test images": 5924, "test classes": 100},
    "cars196": {"train images": 8054, "train classes": 98, "test images": 8131, "test classes": 98},
    "stanford": {"train images": 59551, "train classes": 11318, "test images": 60502, "test classes": 11316},
    "inshop": {"train images": 25882, "train classes": 3997, "query images": 14218, "gallery images": 12612,
               "query+gallery classes": 3985},
}
CANONICAL["sop"] = CANONICAL["stanford"]

PAPER_NEEDS_IMAGENET = ("--no-pretrained: the backbone starts from random weights; the paper's numbers need "
                        "ImageNet weights, so this run is not comparable to them")


def split_counts(splits: dict, val_held_out: bool = True) -> dict[str, int]:
    """Images and classes of each split ({name: dataset with .labels}); query and gallery classes together.

    The train counts are of the whole train split: validation classes held out of it ("val" with
    ``val_held_out``; a manifest's own val split is not) are added back.
    """
    counts: dict[str, int] = {}
    for name, dataset in splits.items():
        counts[f"{name} images"] = len(dataset.labels)
        if name not in ("query", "gallery"):
            counts[f"{name} classes"] = len(set(dataset.labels))
    if val_held_out and "val" in splits and "train" in splits:
        counts["train images"] += counts["val images"]
        counts["train classes"] += counts["val classes"]
    if "query" in splits and "gallery" in splits:
        counts["query+gallery classes"] = len(set(splits["query"].labels) | set(splits["gallery"].labels))
    return counts


def fingerprint_mismatches(dataset: str, counts: dict[str, int]) -> list[str]:
    """'train images: expected 5864, found 5863' for each count that differs from ``dataset``'s canonical size.

    Datasets without canonical sizes (``folder``) and counts not measured (no
    train split in --mode eval) are not compared.
    """
    expected = CANONICAL.get(dataset, {})
    return [f"{name}: expected {expected[name]}, found {counts[name]}"
            for name in expected if name in counts and counts[name] != expected[name]]


def check_data(dataset: str, data_root: str, counts: dict[str, int], strict: bool) -> list[str]:
    """Warn (or, with ``strict``, refuse) when the tree under ``data_root`` is not the canonical one.

    Returns the mismatches, which go into config.json.
    """
    problems = fingerprint_mismatches(dataset, counts)
    if not problems:
        return problems
    message = (f"the {dataset} tree under {data_root} differs from the canonical benchmark "
               f"({'; '.join(problems)})")
    if strict:
        raise UserError(f"{message}; --strict-data refuses it: restore the missing or extra images, or drop "
                        "--strict-data to train anyway")
    print(f"[Warning] {message}; results will not be comparable to the paper's (--strict-data makes this an error)")
    return problems


def weights_record(path: Path | None) -> dict | None:
    """{"file", "sha256"} of the ImageNet weights file for config.json; None without one."""
    if path is None or not path.is_file():
        return None
    return {"file": str(path.resolve()), "sha256": sha256_file(path)}
