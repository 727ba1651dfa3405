"""Index a gallery of images with a trained model, for tools.search.

    python -m tools.index --load RUN/best.pth --images SOURCE --out INDEX_DIR [model flags]

WEIGHTS is any file --load accepts; the model flags (--backbone,
--embedding-size, --l2norm, --image-size) are read from its run when it is one
of ours, and the flags given override them. SOURCE is a folder of images
(searched recursively, hidden files and folders skipped), a folder of class
sub-folders (each sub-folder's name is the label of the images under it), or a
text file of image paths. Every image gets the authors' test transform and is
embedded as evaluation embeds it (--device, --workers, --eval-batch, --amp).

Run again on the same INDEX_DIR, it adds new images and drops removed ones,
re-embedding only what is new or changed (by path, size and modification
time). Other weights, model flags or source are refused unless --rebuild. The
index is replaced as a whole only once the build is complete: a killed build
leaves the previous one intact. See tools/index_dir.py for the files.
"""
import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataset.image_source import Source, read_source
from errors import UserError
from experiment.config import git_commit
from experiment.cli import ArgumentParser, exit_status, parse_noting_given
from experiment.trained_model import (
    Embedder,
    ModelSpec,
    add_extraction_flags,
    add_model_flags,
    spec_from_args,
)
from tools import index_dir
from tools.index_dir import Record

COPY_ROWS = 65536  # kept embeddings copied at once
FORMAT = 1


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser("tools.index", __doc__)
    add_model_flags(p)
    p.add_argument("--images", required=True, metavar="SOURCE",
                   help="a folder of images, a folder of class sub-folders, or a text file of image paths")
    p.add_argument("--out", required=True, metavar="INDEX_DIR", help="the index folder (created, or updated)")
    add_extraction_flags(p)
    p.add_argument("--rebuild", action="store_true",
                   help="replace an index built with other weights, model flags or source")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags (``sys.argv[1:]`` when None), with ``_given``: those typed, which the run's own do not override."""
    return parse_noting_given(get_args_parser(), argv)


def index_meta(spec: ModelSpec, amp: bool, source_root: Path) -> dict:
    """index.json but the item count: what the embeddings depend on (``SETTINGS``), D and the project version."""
    return {"format": FORMAT, "dim": spec.embedding_size,
            "weights": {"file": str(spec.weights), "sha256": spec.sha256}, "model": spec.flags(),
            "transform": spec.transform(), "amp": amp, "source": str(source_root.resolve()), "version": git_commit()}


SETTINGS = ("model", "transform", "amp", "source")  # with the weights' sha256: what an update must not change


def check_settings(old: dict, new: dict, folder: Path) -> None:
    """Refuse to update an index built with other weights, model flags, transform, precision or source."""
    changed = [f"{key}: {old.get(key)} there, {new[key]} now" for key in SETTINGS if old.get(key) != new[key]]
    old_sha = (old.get("weights") or {}).get("sha256")
    if old_sha != new["weights"]["sha256"]:
        changed.insert(0, f"weights {new['weights']['file']}")
    if changed:
        raise UserError(f"{folder} indexes other embeddings (weights sha256 {old_sha} there, "
                        f"{new['weights']['sha256']} now; {'; '.join(changed)}); pass --rebuild to replace it, or "
                        "choose another --out")


@dataclass
class Plan:
    """The items of the new index and where each one's embedding comes from."""

    records: list[Record]  # in source order
    old_rows: np.ndarray  # (N,) int64 row of the previous index holding the item's embedding, -1: embed it
    missing: list[str]  # listed paths that are not there


def plan_update(source: Source, previous: index_dir.Stored | None) -> Plan:
    """Keep the embedding of every item whose (path, size, mtime) is unchanged; embed the rest."""
    old = {(r.path, r.size, r.mtime_ns): row for row, r in enumerate(previous.records)} if previous else {}
    records, rows, missing = [], [], []
    for item in source.items:
        try:
            stat = os.stat(source.root / item.path)
        except OSError as exc:
            missing.append(f"image {source.root / item.path} cannot be read ({exc.strerror})")
            continue
        record = Record(item.path, item.label, stat.st_size, stat.st_mtime_ns)
        records.append(record)
        rows.append(old.get((record.path, record.size, record.mtime_ns), -1))
    return Plan(records, np.array(rows, dtype=np.int64), missing)


def build(args: argparse.Namespace) -> dict:
    """Create or update the index; returns the counts {"items", "added", "kept", "dropped", "unreadable"}."""
    spec, checkpoint = spec_from_args(args, "indexing")
    source = read_source(args.images)
    folder = Path(args.out)
    with index_dir.locked(folder):
        previous = index_dir.read_index(folder)
        meta = index_meta(spec, args.amp, source.root)
        if previous is not None and not args.rebuild:
            check_settings(previous.meta, meta, folder)
        plan = plan_update(source, None if args.rebuild else previous)
        for line in plan.missing:
            print(f"[Skipped] {line}")
        kept = int((plan.old_rows >= 0).sum())
        if previous is not None and not args.rebuild and kept == len(plan.records) == len(previous.records):
            counts = {"items": kept, "added": 0, "kept": kept, "dropped": 0, "unreadable": len(plan.missing)}
            print(f"Index {folder} is up to date: {kept} items")
            return counts
        staging = index_dir.Staging(folder)
        try:
            rows, embedded = fill(staging, plan, previous, spec, args, checkpoint, source.root)
            records = [r for r, ok in zip(plan.records, embedded) if ok]
            if not records:
                raise UserError(f"none of the {len(plan.records)} images of {args.images} could be read")
            if len(records) < len(plan.records):
                rows = staging.compact(rows, embedded)
            staging.commit(rows, records, {**meta, "count": len(records)})
        finally:
            staging.discard()
    counts = {"items": len(records), "added": len(records) - kept, "kept": kept,
              "dropped": 0 if previous is None else len(previous.records) - kept,
              "unreadable": len(plan.missing) + len(plan.records) - len(records)}
    print(f"Index {folder}: {counts['items']} items ({counts['added']} added, {counts['kept']} kept, "
          f"{counts['dropped']} dropped, {counts['unreadable']} unreadable skipped)")
    return counts


def fill(staging: index_dir.Staging, plan: Plan, previous: index_dir.Stored | None, spec: ModelSpec,
         args: argparse.Namespace, checkpoint: object, root: Path) -> tuple[np.memmap, np.ndarray]:
    """(the staged (N, D) embeddings in plan order, (N,) bool: the item's embedding is there), kept rows copied
    from the previous index and new ones embedded batch by batch."""
    rows = staging.embeddings((len(plan.records), spec.embedding_size))
    embedded = plan.old_rows >= 0
    kept = np.flatnonzero(embedded)
    for lo in range(0, len(kept), COPY_ROWS):
        part = kept[lo:lo + COPY_ROWS]
        rows[part] = previous.embeddings[plan.old_rows[part]]
    new = np.flatnonzero(~embedded)
    if len(new):
        embedder = Embedder(spec, args.device, args.workers, args.eval_batch, args.amp, checkpoint)
        paths = [root / plan.records[i].path for i in new]
        for batch in embedder.embed(paths, "[Index]"):
            where = new[batch.positions.numpy()]
            rows[where] = batch.embeddings.numpy()
            embedded[where] = True
    return rows, embedded


def cli(argv: list[str] | None = None) -> int:
    return exit_status(lambda: build(parse_args(argv)),
                       interrupted="interrupted; the previous index (if any) is unchanged")


if __name__ == "__main__":
    sys.exit(cli())
