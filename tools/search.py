"""Search an index of tools.index with new images: their exact nearest gallery images.

    python -m tools.search --index INDEX_DIR --query QUERY --k 10 [--out results.csv] [--grid grid.png]

QUERY is an image, a folder (as tools.index reads one) or a text file of image
paths, embedded exactly as the gallery was: the weights, model flags,
transform and precision come from INDEX_DIR/index.json. The neighbours are
exact: the items and order of a float64 brute force over the stored
embeddings, ties to the smaller gallery index (metric.knn). results.csv has
the columns query,rank,path,distance,label (rank from 1, Euclidean distance,
label empty when unknown); without --out the results are printed. --grid
draws each query and its neighbours in one row, bordered green when the label
matches the query's, red when not, not at all when either is unknown.

From Python:

    index = Index.open("INDEX_DIR")
    indices, distances = index.search(index.embed(["a.jpg", "b.jpg"]), k=5)
    [index.paths[i] for i in indices[0]]
"""
import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dataset.image_source import read_source
from errors import UserError
from experiment.cli import ArgumentParser, exit_status
from experiment.flags import bounded_int, finite_float
from experiment.trained_model import Embedder, add_extraction_flags, spec_from_flags
from metric.knn import nearest_neighbors
from model.checkpoint import atomic_file
from tools import index_dir
from tools.retrievals import GridRow, draw_grid

COLUMNS = ("query", "rank", "path", "distance", "label")


class Index:
    """An index folder of tools.index, searched exactly and extended with new images' embeddings.

    ``embeddings`` is the memory-mapped (N, D) float32 array, ``paths`` the N
    images (the source root joined with each record's path), ``labels`` their
    labels (None: unknown), ``meta`` index.json.
    """

    def __init__(self, folder: Path, stored: index_dir.Stored, weights: Path | None, device: str, workers: int,
                 batch: int):
        self.folder = folder
        self.meta = stored.meta
        self.records = stored.records
        self.embeddings = stored.embeddings
        root = Path(self.meta["source"])
        self.paths = [root / r.path for r in self.records]
        self.labels = [r.label for r in self.records]
        self._weights = weights
        self._extraction = (device, workers, batch)
        self._embedder: Embedder | None = None

    @classmethod
    def open(cls, folder: str | Path, weights: str | Path | None = None, device: str = "auto", workers: int = 0,
             batch: int = 128) -> "Index":
        """The index in ``folder``. ``weights`` replaces the weights file index.json names (moved, say); its
        sha256 must be the recorded one. ``device``, ``workers`` and ``batch`` are those of ``embed``."""
        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"index {folder} not found; build it with python -m tools.index")
        stored = index_dir.read_index(folder)
        if stored is None:
            raise UserError(f"{folder} holds no index; build it with python -m tools.index --out {folder}")
        return cls(folder, stored, None if weights is None else Path(weights), device, workers, batch)

    def __len__(self) -> int:
        return len(self.records)

    def embedder(self) -> Embedder:
        """The model that embedded the gallery, loaded on first use; its weights must have the recorded sha256."""
        if self._embedder is None:
            recorded = self.meta["weights"]
            weights = self._weights or Path(recorded["file"])
            if not weights.is_file():
                raise UserError(f"the weights {weights} that built {self.folder} are gone; pass the file with "
                                "--load (Index.open(..., weights=...))")
            spec = spec_from_flags(weights, self.meta["model"])
            if spec.sha256 != recorded["sha256"]:
                raise UserError(f"{weights} has sha256 {spec.sha256}, but {self.folder} was built with weights of "
                                f"sha256 {recorded['sha256']}; pass the file the index was built with")
            self._embedder = Embedder(spec, *self._extraction, amp=self.meta["amp"])
        return self._embedder

    def embed(self, paths: Sequence[str | Path]) -> torch.Tensor:
        """(M, D) float32 embeddings of image files, exactly as the gallery's; an unreadable image is an error."""
        embedder = self.embedder()
        failed = len(embedder.unreadable)
        parts = [batch.embeddings for batch in embedder.embed([Path(p) for p in paths], "[Query]")]
        if len(embedder.unreadable) > failed:
            raise UserError(embedder.unreadable[failed])
        return torch.cat(parts) if parts else torch.zeros(0, self.meta["dim"])

    def search(self, embeddings: torch.Tensor | np.ndarray, k: int,
               exclude_self: bool | Sequence[int] = False) -> tuple[torch.Tensor, torch.Tensor]:
        """((Q, k) int64 gallery indices, (Q, k) float32 Euclidean distances) of (Q, D) query embeddings,
        nearest first (``metric.knn.nearest_neighbors``; ``exclude_self`` as there)."""
        if not isinstance(exclude_self, bool):
            exclude_self = np.asarray(exclude_self, dtype=np.int64)
        return nearest_neighbors(embeddings, self.embeddings, k, exclude_self)


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser("tools.search", __doc__)
    p.add_argument("--index", required=True, metavar="INDEX_DIR", help="a folder built by tools.index")
    p.add_argument("--query", required=True, metavar="QUERY", help="an image, a folder or a text file of paths")
    p.add_argument("--k", type=bounded_int(1), default=10, help="neighbours per query")
    p.add_argument("--out", metavar="CSV", help="write the results here (columns query,rank,path,distance,label)")
    p.add_argument("--grid", metavar="PNG", help="draw each query and its neighbours in one row")
    p.add_argument("--max-distance", type=finite_float(False), metavar="D",
                   help="leave out neighbours farther than D (Euclidean)")
    p.add_argument("--exclude-self", action="store_true", help="a query that is in the gallery (same file) does not "
                                                               "retrieve itself")
    p.add_argument("--load", metavar="WEIGHTS", help="the weights file, when it moved since the index was built")
    add_extraction_flags(p, amp=False)
    return p


def gallery_positions(index: Index, queries: Sequence[Path]) -> np.ndarray:
    """(Q,) int64 gallery index of each query file (the same file under the index's source root), -1 when it is
    not in the gallery."""
    root = Path(index.meta["source"])
    where = {r.path: i for i, r in enumerate(index.records)}

    def position(query: Path) -> int:
        try:
            return where.get(query.resolve().relative_to(root).as_posix(), -1)
        except ValueError:  # outside the source root
            return -1
    return np.array([position(q) for q in queries], dtype=np.int64)


def within(indices: torch.Tensor, distances: torch.Tensor, max_distance: float | None) -> list[list[tuple]]:
    """Per query, its (gallery index, distance) neighbours, nearest first, those beyond ``max_distance`` left out."""
    return [[(i, d) for i, d in zip(idx, dist) if max_distance is None or d <= max_distance]
            for idx, dist in zip(indices.tolist(), distances.tolist())]


def result_rows(queries: Sequence[Path], hits: list[list[tuple]], index: Index) -> list[dict]:
    """One row per (query, neighbour): the columns of results.csv."""
    return [{"query": str(query), "rank": rank, "path": str(index.paths[i]), "distance": f"{d:.9g}",
             "label": index.labels[i] or ""}
            for query, hit in zip(queries, hits) for rank, (i, d) in enumerate(hit, start=1)]


def write_csv(rows: list[dict], out: Path) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_file(out) as f:
        f.write(text.getvalue().encode())


def print_table(rows: list[dict]) -> None:
    current = None
    for row in rows:
        if row["query"] != current:
            current = row["query"]
            print(f"\n{current}\n  {'rank':>4}  {'distance':>10}  {'label':<16}  path")
        print(f"  {row['rank']:>4}  {float(row['distance']):10.6f}  {row['label']:<16}  {row['path']}")


def main(args: argparse.Namespace) -> list[dict]:
    """Embed the queries, search, and write or print the results; returns the result rows."""
    index = Index.open(args.index, args.load, args.device, args.workers, args.eval_batch)
    source = read_source(args.query)
    queries = [source.root / item.path for item in source.items]
    embedder = index.embedder()
    parts, kept = [], []
    for batch in embedder.embed(queries, "[Query]"):
        parts.append(batch.embeddings)
        kept.extend(batch.positions.tolist())
    if not kept:
        raise UserError(f"none of the {len(queries)} query images could be read")
    queries = [queries[i] for i in kept]
    labels = [source.items[i].label for i in kept]
    exclude = gallery_positions(index, queries) if args.exclude_self else False
    hits = within(*index.search(torch.cat(parts), args.k, exclude), args.max_distance)
    rows = result_rows(queries, hits, index)
    if args.out:
        write_csv(rows, Path(args.out))
        print(f"Results of {len(queries)} queries written to {args.out}")
    else:
        print_table(rows)
    if args.grid:
        grid = [GridRow(str(q), label, [(str(index.paths[i]), index.labels[i]) for i, _ in hit])
                for q, label, hit in zip(queries, labels, hits)]
        print(f"Grid written to {draw_grid(grid, Path(args.grid))}")
    if embedder.unreadable:
        print(f"{len(embedder.unreadable)} unreadable query image(s) skipped")
    return rows


def cli(argv: list[str] | None = None) -> int:
    return exit_status(lambda: main(get_args_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(cli())
