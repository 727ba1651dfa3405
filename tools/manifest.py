"""Write a manifest (``--dataset csv``) of an image folder, to start from folders and edit the split by hand.

    python -m tools.manifest DIR --out FILE.csv [--test-fraction F | --test-classes N] [--query-fraction F]
        [--seed S] [--overwrite]

DIR holds one sub-folder per class: the test classes are drawn with --seed (class-disjoint, as metric-learning
benchmarks are) and printed; with --query-fraction, that fraction of each test class's images (at least one,
when it has two) are queries and the rest its gallery. A DIR with split folders (train/, val/, test/ or
query/ + gallery/, each of class sub-folders) is written as it is split. Paths are relative to FILE's folder.
"""
import argparse
import csv
import io
import os
import random
import sys
from pathlib import Path

from dataset.benchmark import class_folders, folder_samples
from dataset.folder import split_folders
from errors import UserError
from experiment.cli import ArgumentParser, exit_status
from experiment.flags import bounded_int, finite_float
from experiment.run_dir import write_text_atomic

HEADER = ("path", "label", "split")
FLAG_HEADER = ("is_query", "is_gallery")
NAMES_SHOWN = 20


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser("tools.manifest", __doc__)
    p.add_argument("dir", metavar="DIR", help="image folder: one sub-folder per class, or split folders")
    p.add_argument("--out", required=True, metavar="FILE.csv", help="the manifest to write")
    test = p.add_mutually_exclusive_group()
    test.add_argument("--test-fraction", type=finite_float(True, 1.0), default=None, metavar="F",
                      help="fraction of the classes that test (default: 0.5)")
    test.add_argument("--test-classes", type=bounded_int(1), default=None, metavar="N", help="number of test classes")
    p.add_argument("--query-fraction", type=finite_float(True, 1.0), default=None, metavar="F",
                   help="fraction of each test class's images that are queries, the rest its gallery "
                        "(default: none, self-retrieval on the test images)")
    p.add_argument("--seed", type=bounded_int(0), default=0, help="seed of the drawn split")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return p


def test_count(classes: int, test_classes: int | None, test_fraction: float | None) -> int:
    """How many of ``classes`` classes test; both splits keep at least one."""
    count = test_classes if test_classes is not None else round(classes * (test_fraction or 0.5))
    flag = f"--test-classes {test_classes}" if test_classes is not None else f"--test-fraction {test_fraction or 0.5}"
    if not 1 <= count <= classes - 1:
        raise UserError(f"{flag} gives {count} test classes of {classes}; train and test each need one at least: "
                        f"choose between 1 and {classes - 1} test classes")
    return count


def draw_test_classes(names: list[str], count: int, seed: int) -> set[str]:
    """``count`` of the sorted class ``names``, drawn with ``seed``."""
    return set(random.Random(seed).sample(sorted(names), count))


def draw_queries(paths: list[str], fraction: float, rng: random.Random) -> set[str]:
    """round(fraction x n) of a test class's n image ``paths`` (at least 1, at most n - 1; none of a single image)."""
    if len(paths) < 2:
        return set()
    return set(rng.sample(paths, min(len(paths) - 1, max(1, round(len(paths) * fraction)))))


def drawn_rows(root: Path, args: argparse.Namespace) -> list[tuple[str, str, str, bool, bool]]:
    """(path, label, split, is query, is gallery) of a class-folder tree, with the split drawn as ``args`` say."""
    classes = class_folders(root)
    if len(classes) < 2:
        raise UserError(f"{root} has {len(classes)} class folder(s) with images; a manifest needs two at least, "
                        "one to train and one to test")
    test = draw_test_classes([c.name for c in classes], test_count(len(classes), args.test_classes,
                                                                      args.test_fraction), args.seed)
    rng = random.Random(args.seed)
    rows = []
    for class_dir in classes:
        paths = [path for path, _ in folder_samples([class_dir], 0)]
        if class_dir.name not in test:
            rows += [(path, class_dir.name, "train", False, False) for path in paths]
            continue
        queries = draw_queries(paths, args.query_fraction, rng) if args.query_fraction is not None else set()
        rows += [(path, class_dir.name, "test", path in queries, path not in queries) for path in paths]
    names = sorted(test)
    shown = ", ".join(names[:NAMES_SHOWN]) + (f", ... ({len(names) - NAMES_SHOWN} more)" if len(names) > NAMES_SHOWN
                                              else "")
    print(f"[Manifest] {len(classes) - len(names)} train and {len(names)} test classes drawn with --seed "
          f"{args.seed}; test: {shown}")
    return rows


def split_rows(root: Path, folders: dict[str, Path]) -> list[tuple[str, str, str, bool, bool]]:
    """(path, label, split, is query, is gallery) of a tree of split folders, as it is split."""
    rows = []
    for name, folder in folders.items():
        split = "test" if name in ("query", "gallery") else name
        rows += [(path, class_dir.name, split, name == "query", name == "gallery")
                 for class_dir in class_folders(folder) for path, _ in folder_samples([class_dir], 0)]
    return rows


def manifest_text(rows: list[tuple[str, str, str, bool, bool]], out_dir: Path, flags: bool) -> str:
    """The CSV text of ``rows``, paths relative to ``out_dir``; with ``flags`` the query/gallery columns."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER + (FLAG_HEADER if flags else ()))
    for path, label, split, is_query, is_gallery in rows:
        fields = [os.path.relpath(path, out_dir), label, split]
        writer.writerow(fields + ([int(is_query), int(is_gallery)] if flags else []))
    return buffer.getvalue()


def main(args: argparse.Namespace) -> Path:
    """Write the manifest ``args.out`` of ``args.dir``; returns its path."""
    root, out = Path(args.dir), Path(args.out)
    if not root.is_dir():
        raise UserError(f"{root} is {'a file' if root.exists() else 'not found'}; pass a folder with one "
                        "sub-folder per class")
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists (a manifest edited by hand would be lost); pass --overwrite to replace it, "
                        "or another --out")
    if not out.parent.is_dir():
        raise UserError(f"the folder of --out {out} does not exist; create it first")
    folders = split_folders(root)
    if folders:
        given = [flag for flag, value in (("--test-fraction", args.test_fraction),
                                          ("--test-classes", args.test_classes),
                                          ("--query-fraction", args.query_fraction)) if value is not None]
        if given:
            raise UserError(f"{root} has split folders ({', '.join(f'{n}/' for n in folders)}), which are written "
                            f"as they are split; drop {' and '.join(given)}, or point at a tree of class folders")
        rows, flags = split_rows(root, folders), "query" in folders
    else:
        if args.query_fraction is not None and not args.query_fraction < 1:
            raise UserError(f"--query-fraction {args.query_fraction} leaves no gallery; choose a fraction below 1")
        rows, flags = drawn_rows(root, args), args.query_fraction is not None
    write_text_atomic(out, manifest_text(rows, out.resolve().parent, flags))
    counts = {split: sum(row[2] == split for row in rows) for split in ("train", "val", "test")}
    print(f"[Manifest] wrote {out}: {len(rows)} images ({', '.join(f'{n} {s}' for s, n in counts.items() if n)}"
          + (f"; {sum(row[3] for row in rows)} queries, {sum(row[4] for row in rows)} gallery" if flags else "")
          + "); edit it by hand, then run.py --dataset csv --data " + str(out))
    return out


def cli(argv: list[str] | None = None) -> int:
    return exit_status(lambda: main(get_args_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(cli())
