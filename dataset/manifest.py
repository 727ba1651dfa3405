"""A manifest: your own images listed in a CSV file with labels and explicit splits (``--dataset csv``).

The first line is the header: ``path,label,split`` and optionally ``is_query,is_gallery``, in any order
(other columns are ignored; names and values are stripped of surrounding spaces, names in any case).

- ``path``: an image file, relative to the CSV's folder or absolute.
- ``label``: any string; the classes are the distinct labels, numbered in sorted order (the sampler's class
  order).
- ``split``: ``train``, ``val`` (the validation split that selects ``best_val.pth``) or ``test``.
- ``is_query``, ``is_gallery``: ``1``/``0``, ``true``/``false`` or ``yes``/``no`` in any case, empty = no; only
  test rows may say yes. Without these columns every test row is both, which is self-retrieval.

The whole file is checked before anything runs; every problem is one line naming its line number in the file
(the header is line 1) and the fix, up to ``MAX_LISTED`` of them at once. Shared labels between train and
test or val, and classes with a single training image, are warned about, not refused.
"""
import csv
import gc
import heapq
import os
from array import array
from collections import Counter
from contextlib import contextmanager
from functools import lru_cache
from itertools import repeat
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

from dataset.benchmark import split_cache_name
from dataset.decode import REPLACE_OR_REMOVE
from dataset.image_list import ImageList
from errors import UserError

SPLITS = ("train", "val", "test")
EVALUATION_SPLITS = ("test", "query", "gallery")  # test: the rows used in evaluation, query and gallery: marked
COLUMNS = ("path", "label", "split")
FLAG_COLUMNS = ("is_query", "is_gallery")
FLAG_VALUES = {"1": True, "0": False, "true": True, "false": False, "yes": True, "no": False, "": False}
MAX_LISTED = 20
HEADER_HELP = "the first line must name the columns path,label,split (optionally also is_query,is_gallery)"


class Row(NamedTuple):
    """One image of a manifest; ``path`` is absolute. Without query/gallery columns a test row is both."""

    path: str
    label: str
    split: str
    is_query: bool
    is_gallery: bool


class Table(NamedTuple):
    """A checked manifest as columns (row i across them), in file order."""

    paths: list[str]
    labels: list[str]
    splits: list[str]
    is_query: list[bool]
    is_gallery: list[bool]
    classes: list[str]  # the distinct labels, sorted: label i is classes[i]


class _Problems:
    """The problems of one manifest: the ``MAX_LISTED`` earliest by line, and how many there are."""

    def __init__(self, path: Path):
        self.path = path
        self.count = 0
        self._earliest: list[tuple[int, int, str]] = []  # max-heap by line: (-line, -order, message)

    def add(self, line: int, message: str) -> None:
        self.count += 1
        entry = (-line, -self.count, message)
        if len(self._earliest) < MAX_LISTED:
            heapq.heappush(self._earliest, entry)
        elif entry > self._earliest[0]:
            heapq.heapreplace(self._earliest, entry)

    def raise_any(self) -> None:
        """Raise one UserError listing the problems found so far, if any: nothing may run on this manifest."""
        if not self.count:
            return
        listed = sorted(self._earliest, reverse=True)
        lines = [f"{self.path}: {self.count} problem(s), so nothing was run; fix them and run again:"]
        lines += [f"  {'line ' + str(-line) + ': ' if line else ''}{message}" for line, _, message in listed]
        if self.count > len(listed):
            lines.append(f"  ... and {self.count - len(listed)} more problem(s)")
        raise UserError("\n".join(lines))


def read_manifest(path: str | Path) -> list[Row]:
    """The checked rows of the manifest at ``path``, in file order (see the module's docstring).

    Raises a UserError listing every problem (up to ``MAX_LISTED``, with the
    count of the rest) and prints the warnings, once per version of the file.
    """
    table = load(path)
    return list(map(Row, table.paths, table.labels, table.splits, table.is_query, table.is_gallery))


def load(path: str | Path) -> Table:
    """The checked columns of the manifest at ``path``; parsed once per version (size, mtime) of the file."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise UserError(f"manifest {path} {what}; --dataset csv needs --data FILE.csv, a CSV file whose header is "
                        "path,label,split (see docs/own-data.md; python -m tools.manifest DIR writes one)")
    stat = path.stat()
    return _load(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector: a million row lists trigger collections that free nothing and
    cost a third of the parse (``bench/manifest_speed.py``)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@lru_cache(maxsize=4)
def _load(path: str, size: int, mtime_ns: int) -> Table:
    with _collector_paused():
        return _checked(Path(path))


def _checked(path: Path) -> Table:
    """Parse and check the manifest at ``path``: raise listing its problems, or print its warnings."""
    problems = _Problems(path)
    header, rows, lines = _read_rows(path)
    column = _header(header, problems)
    table, origin = _columns(path.parent, rows, len(header), column, lambda i, text: problems.add(lines[i], text))
    del rows
    at = (lambda i: lines[i]) if origin is None else (lambda i: lines[origin[i]])
    _check_images(table, lambda i, text: problems.add(at(i), text))
    _check_duplicates(table, at, problems)
    _check_queries(table, problems)
    problems.raise_any()
    _warn(path, table)
    return table


def _read_rows(path: Path) -> tuple[list[str], list[list[str]], array]:
    """(header, non-empty rows after it, (N,) line each row ends on) of the CSV file at ``path``."""
    rows, lines = [], array("L")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise UserError(f"manifest {path} is empty; {HEADER_HELP}")
            for row in reader:
                if row:
                    rows.append(row)
                    lines.append(reader.line_num)
    except UnicodeDecodeError as exc:
        raise UserError(f"manifest {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as "
                        "UTF-8 CSV") from None
    except csv.Error as exc:
        raise UserError(f"manifest {path}, line {reader.line_num}: {exc}; fix the quoting of that line") from None
    return header, rows, lines


def _header(names: list[str], problems: _Problems) -> dict[str, int]:
    """Column name -> field index of the header's known columns; raises on a header that cannot be read."""
    names = [name.strip().lower() for name in names]
    for name in {n for n in names if names.count(n) > 1 and n in COLUMNS + FLAG_COLUMNS}:
        problems.add(1, f"the column {name!r} appears {names.count(name)} times in the header; keep one")
    for name in COLUMNS:
        if name not in names:
            problems.add(1, f"the header has no {name!r} column; {HEADER_HELP}")
    present = [name for name in FLAG_COLUMNS if name in names]
    if len(present) == 1:
        other = next(name for name in FLAG_COLUMNS if name != present[0])
        problems.add(1, f"the header has {present[0]} but no {other}; give both columns or neither")
    problems.raise_any()
    return {name: names.index(name) for name in COLUMNS + FLAG_COLUMNS if name in names}


def _values(rows: list[list[str]], index: int, meaning: dict[str, object]) -> tuple[list, set[str]]:
    """(the meaning of field ``index`` of every row, None where it has none; the texts without one), looked up
    once per distinct text, in any case and with surrounding spaces ignored."""
    lookup = {text: meaning.get(text.strip().lower()) for text in {row[index] for row in rows}}
    return [lookup[row[index]] for row in rows], {text for text, value in lookup.items() if value is None}


def _columns(base: Path, rows: list[list[str]], width: int, column: dict[str, int],
             add: Callable[[int, str], None]) -> tuple[Table, list[int] | None]:
    """(the checked rows as columns with absolute paths, the row index of each kept row or None when every
    row is kept); a row with a problem is reported with ``add(row index, message)`` and left out.

    Each check runs over whole columns and looks at single rows only when some row fails it.
    """
    bad: set[int] = set()

    def report(failing, message: Callable[[int], str]) -> None:
        for i in failing:
            add(i, message(i))
            bad.add(i)

    misshapen = {i for i, row in enumerate(rows) if len(row) != width} if any(
        len(row) != width for row in rows) else set()
    report(sorted(misshapen), lambda i: f"expected {width} fields like the header, found {len(rows[i])}; quote a "
                                        "path or label that contains a comma, and give every row all the columns")
    if misshapen:
        rows = [row if len(row) == width else [""] * width for row in rows]
    paths = [row[column["path"]].strip() for row in rows]
    labels = [row[column["label"]].strip() for row in rows]
    splits, unknown = _values(rows, column["split"], _SPLIT_NAMES)
    if not all(paths):
        report([i for i, path in enumerate(paths) if not path and i not in misshapen],
               lambda i: "empty path; give the image's path (relative to the manifest's folder) or remove the row")
    if not all(labels):
        report([i for i, label in enumerate(labels) if not label and i not in misshapen],
               lambda i: f"empty label for {paths[i] or 'this row'}; give every image a label, or remove the row")
    if unknown:
        report([i for i, row in enumerate(rows) if row[column["split"]] in unknown and i not in misshapen],
               lambda i: f"unknown split {rows[i][column['split']].strip()!r}; use train, val or test")
    if "is_query" in column:
        flags = {}
        for name in FLAG_COLUMNS:
            flags[name], invalid = _values(rows, column[name], FLAG_VALUES)
            if invalid:
                report([i for i, row in enumerate(rows) if row[column[name]] in invalid and i not in misshapen],
                       lambda i, name=name: f"{name} is {rows[i][column[name]].strip()!r}; use 1/0, true/false "
                                            "or yes/no (empty means no)")
            outside = [i for i, (value, split) in enumerate(zip(flags[name], splits))
                       if value and split != "test" and split is not None]
            report(outside, lambda i, name=name: f"{name} is {rows[i][column[name]].strip()} but the split is "
                                                 f"{splits[i]}; only test rows are queries or gallery images: "
                                                 f"set {name} to 0, or the split to test")
        is_query, is_gallery = flags["is_query"], flags["is_gallery"]
    else:
        is_query = is_gallery = [split == "test" for split in splits]
    origin = None
    if bad:
        origin = [i for i in range(len(rows)) if i not in bad]
        paths, labels, splits, is_query, is_gallery = ([values[i] for i in origin] for values in
                                                       (paths, labels, splits, is_query, is_gallery))
    prefix = f"{os.path.normpath(base)}/"
    paths = [path if path[0] == "/" else prefix + path for path in paths]
    paths = [os.path.normpath(path) if "/." in path or "//" in path else path for path in paths]
    return Table(paths, labels, splits, is_query, is_gallery, sorted(set(labels))), origin


_SPLIT_NAMES = {name: name for name in SPLITS}


def _listing(folder: str) -> tuple[set[str], str | None]:
    """(names of the files in ``folder``, None) from one directory listing, or (empty set, why not)."""
    try:
        with os.scandir(folder) as entries:
            return {entry.name for entry in entries if entry.is_file()}, None
    except FileNotFoundError:
        return set(), "its folder does not exist"
    except NotADirectoryError:
        return set(), "its folder is a file"
    except PermissionError:
        return set(), "its folder cannot be read"


def _check_images(table: Table, add: Callable[[int, str], None]) -> None:
    """A problem for each row whose image is not a file: one directory listing per folder, not one stat per
    image; a name a listing lacks is stat-ed (case-insensitive file systems, odd entries) before it counts."""
    def parts():
        return map(str.rpartition, table.paths, repeat("/"))

    listings = {folder: _listing(folder or "/") for folder in {folder for folder, _, _ in parts()}}
    for index in [i for i, (folder, _, name) in enumerate(parts()) if name not in listings[folder][0]]:
        path = table.paths[index]
        why = listings[path.rpartition("/")[0]][1]
        if why is None and os.path.isfile(path):
            continue
        why = "not a file" if os.path.isdir(path) else why or "no such file"
        add(index, f"image {path} not found ({why}); fix the path (relative to the manifest's folder, or "
                   "absolute) or remove the row")


def _check_duplicates(table: Table, line: Callable[[int], int], problems: _Problems) -> None:
    """A problem for each path listed again in the same split."""
    if len(set(table.paths)) == len(table.paths):
        return
    first: dict[tuple[str, str], int] = {}
    for index, key in enumerate(zip(table.splits, table.paths)):
        seen = first.setdefault(key, index)
        if seen != index:
            problems.add(line(index), f"{key[1]} is listed again in the {key[0]} split (first at line "
                                      f"{line(seen)}); remove one of the rows")


def _check_queries(table: Table, problems: _Problems) -> None:
    """A problem when no query of the test split has a positive in the gallery (itself excluded)."""
    gallery = Counter(label for label, is_gallery in zip(table.labels, table.is_gallery) if is_gallery)
    if any(is_query and gallery[label] > is_gallery
           for label, is_query, is_gallery in zip(table.labels, table.is_query, table.is_gallery)):
        return
    if not problems.count:  # a row left out by another problem may be the missing positive
        if "test" not in table.splits:
            problems.add(0, "there are no test rows, so nothing can be evaluated: give some rows the split test "
                            "(classes not in train, as the benchmarks do)")
        else:
            problems.add(0, "the test split has no query with a positive in the gallery (another test image of "
                            "the query's label), so Recall@K would be 0: add test images of the query labels "
                            "(marked is_gallery when the columns exist)")


def _warn(path: Path, table: Table) -> None:
    """Print what is allowed but likely a mistake: labels shared across splits, single-image training classes,
    test rows that take no part in the evaluation."""
    per_split = Counter(zip(table.splits, table.labels))  # (split, label) -> images
    labels = {split: {label for s, label in per_split if s == split} for split in SPLITS}
    for other in ("test", "val"):
        shared = len(labels["train"] & labels[other])
        if shared:
            print(f"[Warning] {path}: {shared} label(s) appear in both train and {other}; metric-learning "
                  f"benchmarks are class-disjoint, and classes seen in training inflate Recall@K: make the "
                  f"splits class-disjoint for numbers comparable to published ones")
    single = sum(count == 1 for (split, _), count in per_split.items() if split == "train")
    if single:
        print(f"[Warning] {path}: {single} training class(es) have a single image; they can never form a "
              "positive pair: add images of them or move them out of train")
    unused = Counter(zip(table.splits, table.is_query, table.is_gallery))["test", False, False]
    if unused:
        print(f"[Warning] {path}: {unused} test row(s) are neither query nor gallery and are not evaluated")


def split_samples(table: Table, split: str) -> list[tuple[str, int]]:
    """(path, label index) of ``split``: train, val, test (the test rows that are query or gallery), query or
    gallery; labels are positions in the sorted distinct labels of the whole manifest."""
    index = {label: i for i, label in enumerate(table.classes)}
    if split in SPLITS and split != "test":
        chosen = (i for i, s in enumerate(table.splits) if s == split)
    else:
        marks = {"test": None, "query": table.is_query, "gallery": table.is_gallery}[split]
        chosen = (i for i, (q, g) in enumerate(zip(table.is_query, table.is_gallery))
                  if (q or g if marks is None else marks[i]))
    return [(table.paths[i], index[table.labels[i]]) for i in chosen]


def evaluation_splits(table: Table) -> tuple[str, ...]:
    """("test",) when every evaluated test row is both query and gallery (self-retrieval), else ("query",
    "gallery"); then "val" when the manifest has val rows."""
    self_retrieval = all(q == g for q, g in zip(table.is_query, table.is_gallery))
    return (("test",) if self_retrieval else ("query", "gallery")) + (("val",) if "val" in table.splits else ())


class Manifest(ImageList):
    """``--dataset csv --data FILE.csv``: one split of a manifest (see the module's docstring)."""

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None,
                 download: bool = False, train_classes: int | None = None, cache_dir: str | Path | None = None,
                 cache_workers: int | None = None):
        self.root = Path(root)
        if train_classes is not None:
            raise UserError(f"--train-classes {train_classes} splits a --dataset folder tree by class; the split "
                            f"column of {self.root} is the split: drop --train-classes, or edit the column")
        if split not in SPLITS + EVALUATION_SPLITS:
            raise UserError(f"a manifest has no split {split!r}; choose one of train, val, test, query, gallery")
        samples = split_samples(load(self.root), split)
        if not samples:
            raise UserError(f"manifest {self.root} has no {split} rows; give some rows the split "
                            f"{'test' if split in EVALUATION_SPLITS else split}"
                            + (f" and mark them is_{split}" if split in ("query", "gallery") else ""))
        super().__init__(samples, transform, cache_dir, split_cache_name(f"Manifest-{self.root.stem}", self.root,
                                                                         split), cache_workers)

    @classmethod
    def evaluation_splits(cls, root: str | Path) -> tuple[str, ...]:
        return evaluation_splits(load(root))

    def unreadable_advice(self) -> str:
        return f"{REPLACE_OR_REMOVE}, or delete its row from {self.root}"
