"""Exact k nearest neighbours by Euclidean distance, blocked over galleries that may be memory-mapped.

The neighbours and their order are those of a float64 brute force over the
float32 embeddings (``sum((q - g)^2)``), ties going to the smaller gallery
index, as the evaluation ranks them (``metric.ranking``), with the same
machinery: float32 squared distances from one matrix product of augmented,
centred embeddings per tile (``metric.tile_scan``), whose rounding error has
the rigorous bound B of ``metric.ranking``. For each query, an item whose
float32 distance is more than B above the k-th smallest "float32 distance + B"
seen so far surely has k items before it and is dropped; the few others are
candidates, given exact float64 distances at the end and ordered by
(distance, index). Nothing larger than a tile is ever in memory: the gallery
is read tile by tile (a ``numpy.memmap`` of ``embeddings.npy`` works), and
only the candidates are kept.
"""
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch

from errors import UserError
from metric.ranking import (
    DEFAULT_MEMORY_BUDGET,
    _dist_error_bound,
    _exact_sq_dist,
    _rounded,
    tile_shape,
)
from metric.tile_scan import augment, mean64, products, squared_norms

_CENTRE_SAMPLE = 4096  # gallery rows (evenly spaced) whose mean centres the products: any centre is exact
_SEED_COLUMNS = 64  # x k: columns of the first tile whose k-th smallest distance seeds the cut-off
_F32_MAX = float(torch.finfo(torch.float32).max)

Embeddings = torch.Tensor | np.ndarray


class _Candidates(NamedTuple):
    """Per candidate (query row, gallery item): bounds on its exact squared distance."""

    rows: np.ndarray  # (P,) int64 query row within the block
    cols: np.ndarray  # (P,) int64 gallery index
    lower: np.ndarray  # (P,) float64 float32 distance - B
    upper: np.ndarray  # (P,) float64 float32 distance + B


def _as_float32(x: Embeddings, name: str) -> np.ndarray:
    """A (N, D) float32 numpy view (or copy) of a tensor or array; a memmap stays a memmap."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    if x.ndim != 2:
        raise UserError(f"{name} embeddings must be (N, D), got shape {tuple(x.shape)}")
    return x if x.dtype == np.float32 else np.asarray(x, dtype=np.float32)


def _self_index(exclude_self: bool | Embeddings, num_query: int, num_gallery: int) -> np.ndarray | None:
    """(Q,) int64 gallery index each query must not retrieve (-1: none), or None."""
    if exclude_self is False or exclude_self is None:
        return None
    if exclude_self is True:
        if num_query != num_gallery:
            raise UserError(f"exclude_self=True needs the query set to be the gallery, but there are {num_query} "
                            f"queries and {num_gallery} gallery items; pass each query's gallery index instead")
        return np.arange(num_query, dtype=np.int64)
    index = np.asarray(exclude_self.cpu() if isinstance(exclude_self, torch.Tensor) else exclude_self, np.int64)
    if index.shape != (num_query,) or ((index < -1) | (index >= num_gallery)).any():
        raise UserError(f"exclude_self must be True, False or one gallery index (or -1) per query: {num_query} "
                        f"values in -1..{num_gallery - 1}, got shape {index.shape}")
    return index


def _centre(gallery: np.ndarray) -> np.ndarray | None:
    """(D,) float32 mean of evenly spaced finite gallery rows, or None where centring would barely help.

    Distances do not change under a shift, but the products' rounding error
    grows with the norms; centring keeps it at the scale of the embeddings'
    spread however far from the origin they sit. Any centre is exact; when the
    mean is within a tenth of the spread of the origin, centring would shrink
    the error bound by less than a fifth and costs a pass over every tile.
    """
    sample = np.asarray(gallery[::max(1, len(gallery) // _CENTRE_SAMPLE)])
    sample = sample[np.isfinite(sample).all(axis=1)]
    if not len(sample):
        return None
    centre = mean64(torch.from_numpy(np.ascontiguousarray(sample))).float()
    spread = squared_norms(torch.from_numpy(sample - centre.numpy())).mean()
    return centre.numpy() if float(centre.double().pow(2).sum()) > 0.01 * float(spread) else None


def _check_finite(norms: np.ndarray, first: int, name: str) -> None:
    """Refuse NaN or infinite embeddings, and ones whose squared distances overflow float32."""
    bad = ~np.isfinite(norms) | (norms >= _F32_MAX / 4)
    if bad.any():
        raise UserError(f"{int(bad.sum())} {name} embeddings (the first at index {first + int(np.argmax(bad))}) are "
                        "NaN, infinite or so large that their squared distances overflow float32; the network's "
                        "weights or inputs are broken (try without --amp, or another checkpoint)")


def _kth_upper(cand: _Candidates, rows: int, k: int) -> np.ndarray:
    """(rows,) float64 k-th smallest upper bound of each query row's candidates (+inf with fewer than k)."""
    order = np.lexsort((cand.upper, cand.rows))
    counts = np.bincount(cand.rows, minlength=rows)
    starts = np.cumsum(counts) - counts
    out = np.full(rows, np.inf)
    has = counts >= k
    out[has] = cand.upper[order[starts[has] + k - 1]]
    return out


def _keep(cand: _Candidates, mask: np.ndarray) -> _Candidates:
    return _Candidates(*(x[mask] for x in cand))


class _Tile(NamedTuple):
    """One tile of gallery items: augmented (centred) rows and the largest (centred) norm."""

    start: int
    aug: torch.Tensor  # (w, D + 2) float32 [g, 1, |g|^2]
    norm: torch.Tensor  # () float64 largest |g|


def augment_gallery(rows: np.ndarray, centre: np.ndarray | None, out: np.ndarray) -> np.ndarray:
    """(w, D) gallery rows, centred, into the (w, D + 2) float32 ``out`` as [g, 1, |g|^2]; returns (w,) float64
    squared norms.

    This is ``tile_scan.augment``'s query side, and the queries take its
    gallery side [-2q, |q|^2, 1]: scaling by -2 is exact, so the products are
    the evaluation's, and each gallery tile costs one copy (the centring
    included, straight from a memory map) and one pass for its norms.
    """
    dim = rows.shape[1]
    if centre is None:
        out[:, :dim] = rows
    else:
        np.subtract(rows, centre, out=out[:, :dim])
    sq = np.einsum("ij,ij->i", out[:, :dim], out[:, :dim], dtype=np.float64)
    out[:, dim] = 1.0
    out[:, dim + 1] = sq
    return sq


def _gallery_tile(gallery: np.ndarray, centre: np.ndarray | None, c0: int, c1: int, buffer: np.ndarray) -> _Tile:
    aug = buffer[:c1 - c0]
    sq = augment_gallery(gallery[c0:c1], centre, aug)
    _check_finite(sq, c0, "gallery")
    return _Tile(c0, torch.from_numpy(aug), torch.tensor(sq.max()).sqrt())


def _block_candidates(q_aug: torch.Tensor, q_norm: torch.Tensor, tiles, k: int, self_index: np.ndarray | None,
                      buffer: torch.Tensor, mask: np.ndarray, dim: int) -> _Candidates:
    """The candidates of one block of (b,) query rows over every gallery tile (see the module docstring)."""
    b = len(q_aug)
    cand = _Candidates(*(np.zeros(0, dtype) for dtype in (np.int64, np.int64, np.float64, np.float64)))
    kth = np.full(b, np.inf)
    for tile in tiles:
        w = len(tile.aug)
        dist = buffer[:b * w].view(b, w)
        products(q_aug, tile.aug, dist)
        d = dist.numpy()
        if self_index is not None:
            hit = (self_index >= tile.start) & (self_index < tile.start + w)
            d[hit.nonzero()[0], self_index[hit] - tile.start] = np.inf
        bound = _dist_error_bound(q_norm, tile.norm, dim).numpy()
        if not len(cand.rows) and w >= k:  # seed the cut-off from some columns of the first tile
            seed = np.partition(d[:, :max(k, min(w, _SEED_COLUMNS * k))], k - 1, axis=1)[:, k - 1]
            kth = np.minimum(kth, seed + bound)
        threshold = _rounded(torch.from_numpy(kth + bound), float("inf")).numpy()
        m = mask[:b * w].reshape(b, w)
        np.less_equal(d, threshold[:, None], out=m)
        flat = np.flatnonzero(m)
        rows, cols, values = flat // w, flat % w, d.reshape(-1)[flat].astype(np.float64)
        finite = np.isfinite(values)
        rows, cols, values = rows[finite], cols[finite] + tile.start, values[finite]
        cand = _Candidates(*(np.concatenate(pair) for pair in zip(
            cand, (rows, cols, values - bound[rows], values + bound[rows]))))
        kth = np.minimum(kth, _kth_upper(cand, b, k))
        cand = _keep(cand, cand.lower <= kth[cand.rows])
    return cand


def _exact_top(query: np.ndarray, gallery: np.ndarray, cand: _Candidates, k: int,
               pool: ThreadPoolExecutor) -> tuple[np.ndarray, np.ndarray]:
    """((b, k) int64 indices, (b, k) float64 exact squared distances) of the k nearest candidates of each row."""
    items, local = np.unique(cand.cols, return_inverse=True)
    rows_of_items = torch.from_numpy(np.asarray(gallery[items], dtype=np.float32))
    exact = _exact_sq_dist(torch.from_numpy(query), rows_of_items, torch.from_numpy(cand.rows),
                           torch.from_numpy(local.reshape(-1)), pool).numpy()
    order = np.lexsort((cand.cols, exact, cand.rows))
    counts = np.bincount(cand.rows, minlength=len(query))
    starts = np.cumsum(counts) - counts
    pick = order[starts[:, None] + np.arange(k)]
    return cand.cols[pick], exact[pick]


def nearest_neighbors(query: Embeddings, gallery: Embeddings, k: int, exclude_self: bool | Embeddings = False,
                      memory_budget: int = DEFAULT_MEMORY_BUDGET) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest gallery items of each query, exactly as a float64 brute force ranks them.

    Args:
        query: (Q, D) float32 embeddings (tensor or array; float64 ones are rounded to float32 first).
        gallery: (N, D) float32 embeddings; a ``numpy.memmap`` is read tile by tile, never whole.
        k: neighbours per query (at least 1); fewer when the gallery has fewer items.
        exclude_self: True when the query set is the gallery (query i never retrieves item i), or a (Q,)
            int array of the gallery index each query must not retrieve (-1: none).
        memory_budget: bytes of one distance tile (``metric.ranking.tile_shape``).

    Returns:
        ((Q, k') int64 gallery indices, (Q, k') float32 Euclidean distances), nearest first, ties to the
        smaller index; k' = min(k, items a query may retrieve). Computed on the CPU.
    """
    if k < 1:
        raise UserError(f"k must be at least 1, got {k}")
    q = np.ascontiguousarray(_as_float32(query, "query"))
    g = _as_float32(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise UserError(f"query embeddings have {q.shape[1]} dimensions but gallery ones {g.shape[1]}; embed both "
                        "with the same model")
    self_index = _self_index(exclude_self, len(q), len(g))
    excluded = self_index is not None and bool((self_index >= 0).any())
    kk = max(0, min(k, len(g) - excluded))
    indices = np.zeros((len(q), kk), dtype=np.int64)
    squared = np.zeros((len(q), kk), dtype=np.float64)
    if kk and len(q):
        _search(q, g, kk, self_index, memory_budget, indices, squared)
    return torch.from_numpy(indices), torch.from_numpy(np.sqrt(squared).astype(np.float32))


def _search(q: np.ndarray, g: np.ndarray, k: int, self_index: np.ndarray | None, memory_budget: int,
            indices: np.ndarray, squared: np.ndarray) -> None:
    """Fill (Q, k) ``indices`` and ``squared`` distances, block of query rows by block."""
    centre = _centre(g)
    centred_q = torch.from_numpy(q if centre is None else q - centre)
    q_sq = squared_norms(centred_q)
    _check_finite(q_sq.numpy(), 0, "query")
    q_aug, q_norm = augment(centred_q, q_sq, "gallery"), q_sq.sqrt()
    rows, cols = tile_shape(len(q), len(g), memory_budget)
    buffer, mask = torch.empty(rows * cols), np.empty(rows * cols, dtype=bool)
    tile_rows = np.empty((cols, q.shape[1] + 2), dtype=np.float32)
    threads = torch.get_num_threads()
    with ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        for lo in range(0, len(q), rows):
            hi = min(lo + rows, len(q))
            tiles = (_gallery_tile(g, centre, c0, min(c0 + cols, len(g)), tile_rows) for c0 in range(0, len(g), cols))
            block_self = None if self_index is None else self_index[lo:hi]
            cand = _block_candidates(q_aug[lo:hi], q_norm[lo:hi], tiles, k, block_self, buffer, mask, q.shape[1])
            indices[lo:hi], squared[lo:hi] = _exact_top(q[lo:hi], g, cand, k, pool)
