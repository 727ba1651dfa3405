"""The counting passes over one tile of float32 squared distances, on the host (numpy) or the device (torch).

A tile holds the float32 squared distances of some query rows and gallery
columns, straight from one matrix product of augmented embeddings (``augment``).
For each threshold pair (below, above) of a row, the scan counts the entries
surely closer than the row's positive (below ``below``) and lists the window's
entries (from ``below`` to ``above``), which only the exact float64 distance
can place. In self-retrieval the same tile also serves the queries of its columns.

On the host the passes run in numpy, whose compare, byte-sum and nonzero loops
are 2-5x torch's on one thread, over chunks of rows that stay in the core's
cache; each of the pool's threads takes its own rows.
"""
from typing import NamedTuple

import numpy as np
import torch

_CHUNK_ENTRIES = 1 << 20  # host: entries per chunk of rows (fewer, longer numpy calls beat a cache-sized chunk)


class Thresholds(NamedTuple):
    """Per (query, j): the j-th nearest positive and the float32 window within which items are settled exactly."""

    dist: torch.Tensor  # (n, J) float64 exact squared distance of the positive; +inf when absent
    index: torch.Tensor  # (n, J) int64 gallery index of the positive
    below: torch.Tensor  # (n, J) float32: a distance below it is surely closer than the positive
    above: torch.Tensor  # (n, J) float32: a distance above it surely is not


class Found(NamedTuple):
    """What a scan of some tile rows found, with row and column indices local to the tile."""

    counts: torch.Tensor  # (n, J) int64 entries surely closer than each row threshold
    pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # window entries: (P,) row, (P,) column, (P,) j
    col_counts: torch.Tensor | None  # (w, J') int64 the same per column threshold (self-retrieval), else None
    col_pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # (P,) column, (P,) row, (P,) j


def _compare_host(dist: np.ndarray, below: np.ndarray, above: np.ndarray, a: np.ndarray, b: np.ndarray,
                  axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Count of ``dist < below`` along ``axis`` (int32) and flat indices of ``below <= dist <= above``.

    ``a`` and ``b`` are bool scratch arrays of ``dist``'s shape.
    """
    np.less(dist, below, out=a)
    counts = a.view(np.uint8).sum(axis=axis, dtype=np.int32)
    np.less_equal(dist, above, out=b)
    return torch.from_numpy(counts), torch.from_numpy(np.flatnonzero(np.not_equal(b, a, out=b)))


def _compare_device(dist: torch.Tensor, below: torch.Tensor, above: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                    axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``_compare_host`` in torch, for tiles on an accelerator."""
    torch.lt(dist, below, out=a)
    counts = a.view(torch.uint8).sum(dim=axis, dtype=torch.int32)
    torch.le(dist, above, out=b)
    return counts, torch.ne(b, a, out=b).view(-1).nonzero().squeeze(1)


def scan(tile: torch.Tensor, row_th: Thresholds, col_th: Thresholds | None, masks: torch.Tensor,
         part: slice) -> Found:
    """Scan rows ``part`` of a (b, w) tile of float32 squared distances (``products``).

    Args:
        tile: (b, w) float32.
        row_th: thresholds of the b rows; col_th: of the w columns (self-retrieval) or None.
        masks: (2, b * w) bool scratch.
        part: the rows to scan; scans of disjoint parts may run at once.
    """
    host = tile.device.type == "cpu"
    b, w = tile.shape
    compare = _compare_host if host else _compare_device
    convert = (lambda x: x.numpy()) if host else (lambda x: x)
    dist_all, a_all, b_all = convert(tile), convert(masks[0, :b * w].view(b, w)), convert(masks[1, :b * w].view(b, w))
    row_below, row_above = convert(row_th.below), convert(row_th.above)
    col_below, col_above = (None, None) if col_th is None else (convert(col_th.below), convert(col_th.above))
    step = max(1, _CHUNK_ENTRIES // max(1, w)) if host else max(1, part.stop - part.start)
    counts = torch.zeros(part.stop - part.start, row_th.below.shape[1], dtype=torch.int64, device=tile.device)
    col_counts = None if col_th is None else torch.zeros(w, col_th.below.shape[1], dtype=torch.int64,
                                                         device=tile.device)
    pairs, col_pairs = [], []
    for r0 in range(part.start, part.stop, step):
        r1 = min(r0 + step, part.stop)
        dist, a, b_ = dist_all[r0:r1], a_all[r0:r1], b_all[r0:r1]
        for j in range(row_th.below.shape[1]):
            n, flat = compare(dist, row_below[r0:r1, j:j + 1], row_above[r0:r1, j:j + 1], a, b_, 1)
            counts[r0 - part.start:r1 - part.start, j] = n
            pairs.append((flat // w + r0, flat % w, torch.full_like(flat, j)))
        if col_th is not None:
            for j in range(col_th.below.shape[1]):
                n, flat = compare(dist, col_below[None, :, j], col_above[None, :, j], a, b_, 0)
                col_counts[:, j] += n
                col_pairs.append((flat % w, flat // w + r0, torch.full_like(flat, j)))
    return Found(counts, concat_pairs(pairs, tile.device), col_counts,
                 None if col_th is None else concat_pairs(col_pairs, tile.device))


def concat_pairs(pieces: list, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[(first, second, j), ...] of (P_i,) int64 tensors -> three (P,) int64 tensors on ``device``."""
    if not pieces:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty, empty
    return tuple(torch.cat([p[i].to(device) for p in pieces]) for i in range(3))


def mean64(x: torch.Tensor) -> torch.Tensor:
    """(N, D) float32 -> (D,) float64 column means, summed in float64 (numpy on the CPU: 5x torch's)."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.mean(x.numpy(), axis=0, dtype=np.float64))
    return x.mean(dim=0, dtype=torch.float64)


def squared_norms(x: torch.Tensor) -> torch.Tensor:
    """(N, D) float32 -> (N,) float64 squared norms, summed in float64 (numpy's einsum on the CPU: 6x torch's)."""
    if x.device.type == "cpu":
        x_np = x.numpy()
        return torch.from_numpy(np.einsum("ij,ij->i", x_np, x_np, dtype=np.float64))
    return torch.linalg.vector_norm(x, dim=1, dtype=torch.float64).pow(2)


def augment(x: torch.Tensor, sq: torch.Tensor, side: str) -> torch.Tensor:
    """(N, D) float32 embeddings and their (N,) float64 ``squared_norms`` -> (N, D + 2) rows whose products
    are squared distances.

    A query q becomes [q, 1, |q|^2] and a gallery item g becomes [-2g, |g|^2, 1],
    so their dot product is |q|^2 + |g|^2 - 2 q.g. The squared norms are
    rounded to float32 once; scaling by -2 is exact.
    """
    sq = sq.float()[:, None]
    one = torch.ones_like(sq)
    return torch.cat([x, one, sq] if side == "query" else [x * -2.0, sq, one], dim=1)


def products(query: torch.Tensor, gallery: torch.Tensor, out: torch.Tensor) -> None:
    """(b, c) float32 squared distances of (b, D + 2) ``augment``-ed queries and (c, D + 2) items into ``out``.

    On the CPU the product runs in numpy's BLAS (OpenBLAS in numpy's wheels):
    on this project's AMD machine 1.4-1.6x the speed of torch's MKL (``bench/eval_speed.py``).
    """
    if out.device.type == "cpu":
        np.matmul(query.numpy(), gallery.numpy().T, out=out.numpy())
    else:
        torch.mm(query, gallery.t(), out=out)
