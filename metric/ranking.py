"""Exact blocked nearest-neighbour ranking, shared by every retrieval metric, in one pass.

Distances are squared Euclidean, and ranks are those of the exact float64
distances ``sum((q - g)^2)``. Ties are broken by the gallery index: of two
equally distant items, the one with the smaller index ranks first, as a stable
sort by distance would place it.

Nothing is sorted. A positive's rank is the number of items that precede it,
so each query needs only its positives' exact distances (few) and one count
per positive over its row. The count runs on the fast float32 key
``|g|^2 - 2 q.g`` from a matrix product (the squared distance minus the row's
constant ``|q|^2``). Its rounding error has a rigorous bound B (per query row);
an item whose key is more than B below a positive's key surely precedes it,
more than B above surely does not, and the few items within B are settled with
the exact difference form in float64.

The product runs in tiles of (rows, cols) whose size follows a memory budget:
on the CPU about the cache, so the counting passes after the product read the
tile from cache; on CUDA a share of the free device memory.
"""
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator, NamedTuple

import numpy as np
import torch

DEFAULT_MEMORY_BUDGET = 48 * 2**20  # CPU: bytes of one tile's working set (1,024 x 8,192: the product stays efficient)
_BYTES_PER_ENTRY = 6  # one float32 key plus two byte-sized comparison temporaries
_ROWS = 1024  # query rows per tile: fewer starve the matrix product
_MIN_COLS = 512  # gallery columns per tile below which rows are traded for columns
_MAX_ROWS = 8192  # query rows per tile when the whole gallery row fits (device memory)
_FREE_MEMORY_SHARE = 4  # on CUDA a tile may use 1/4 of the free device memory
_SETTLE_CHUNK = {"cpu": 256, "cuda": 1 << 16}  # (query, item) pairs settled in float64 at once (CPU: in cache)
_UNIT_ROUNDOFF = {"highest": 2.0**-24, "high": 2.0**-11, "medium": 2.0**-8}  # float32, TF32, bfloat16 products
_NONE = torch.iinfo(torch.int64).max // 2  # rank of a positive that does not exist


@contextmanager
def _cpu_threads(device: torch.device, threads: int) -> Iterator[None]:
    """Run the enclosed CPU ops on ``threads`` threads, then restore the count.

    The passes over an in-cache tile are a few milliseconds each; split over
    OpenMP threads, the barrier between them costs 5-50x that on a loaded
    machine. So only the matrix product uses every thread; the passes run on
    independent one-thread workers (``_block_ranks``), the rest on one thread.
    """
    saved = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def memory_budget_for(device: torch.device, free_bytes: int | None = None) -> int:
    """Bytes one tile may use on ``device``: the cache-sized default on the CPU,
    a quarter of the free memory on CUDA (``free_bytes`` overrides the query of the device, for tests)."""
    if device.type != "cuda":
        return DEFAULT_MEMORY_BUDGET
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    return max(DEFAULT_MEMORY_BUDGET, free_bytes // _FREE_MEMORY_SHARE)


def tile_shape(num_query: int, num_gallery: int, memory_budget: int) -> tuple[int, int]:
    """(rows, cols) of a tile of the (num_query, num_gallery) key matrix that fits ``memory_budget`` bytes.

    When whole gallery rows fit at least 1,024 at a time (device memory), a tile
    is up to 8,192 whole rows; otherwise 1,024 rows (fewer under a tiny budget)
    by as many columns as fit. Every dimension is at least 1.
    """
    entries = max(1, memory_budget // _BYTES_PER_ENTRY)
    gallery = max(1, num_gallery)
    if entries // gallery >= _ROWS:
        return max(1, min(num_query, _MAX_ROWS, entries // gallery)), gallery
    rows = max(1, min(num_query, _ROWS, entries // min(gallery, _MIN_COLS)))
    return rows, max(1, min(gallery, entries // rows))


def _positive_table(query_labels: torch.Tensor, gallery_labels: torch.Tensor):
    """Gallery indices grouped by label: (order, start, count) with ``order`` sorted by (label, index)."""
    order = torch.sort(gallery_labels, stable=True).indices
    uniq, counts = torch.unique_consecutive(gallery_labels[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.searchsorted(uniq, query_labels).clamp(max=len(uniq) - 1)
    found = uniq[slot] == query_labels
    return order, torch.where(found, starts[slot], 0), torch.where(found, counts[slot], 0)


def _exact_sq_dist(query: torch.Tensor, gallery: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(P,) float64 ``sum((query[rows] - gallery[cols])^2)`` for (P,) index pairs, in cache-sized chunks."""
    out = torch.empty(len(rows), dtype=torch.float64, device=query.device)
    chunk = _SETTLE_CHUNK.get(query.device.type, _SETTLE_CHUNK["cuda"])
    for lo in range(0, len(rows), chunk):
        hi = lo + chunk
        diff = query[rows[lo:hi]].double().sub_(gallery[cols[lo:hi]])
        out[lo:hi] = diff.mul_(diff).sum(dim=1)
    return out


def _key_error_bound(query: torch.Tensor, g_norm: torch.Tensor) -> torch.Tensor:
    """(Q,) float64 bound on |float32 key - exact key| of every item in each query's row.

    ``g_norm`` is the float64 scalar largest gallery norm.

    The key is fl(fl(|g|^2) - 2 fl(q.g)). With u the product's unit roundoff and
    gamma = D u / (1 - D u), |fl(q.g) - q.g| <= gamma |q||g| and
    |fl(|g|^2) - |g|^2| <= gamma |g|^2 in any summation order, and the final
    subtraction adds u (|g|^2 + 2|q||g|). A 1% margin and a float64 term cover the
    exact reference's own rounding.
    """
    dim = query.shape[1]
    u = _UNIT_ROUNDOFF[torch.get_float32_matmul_precision()]
    gamma = dim * u / (1 - dim * u)
    q_norm = query.double().norm(dim=1)
    scale = g_norm.pow(2) + 2 * q_norm * g_norm
    float64_term = 4 * (dim + 2) * 2.0**-53 * (q_norm + g_norm).pow(2)
    return 1.01 * (gamma + 2 * u) * scale + float64_term


def _rounded(x: torch.Tensor, toward: float) -> torch.Tensor:
    """float64 -> float32 rounded toward ``toward`` (-inf or +inf), so a bound stays a bound."""
    f = x.float()
    inward = f < x if toward < 0 else f > x
    return torch.where(inward & torch.isfinite(f), f, torch.nextafter(f, torch.full_like(f, toward)))


class Block(NamedTuple):
    """The ranks of the positives of one block of query rows, exact wherever a metric can tell them apart.

    The nearest positive's rank is exact below ``max(rank_limit, R)`` and the
    j-th one's below R (``iterate_blocks``); a rank at or past that limit is
    some value at or past it (the query's metrics are the same for all of them).
    """

    rows: slice
    ranks: torch.Tensor  # (b, J) int64 0-based rank of each query's j-th nearest positive; _NONE past its count
    pos_count: torch.Tensor  # (b,) int64 number of positives of each query (R)


class _Thresholds(NamedTuple):
    """Per (query, j): the j-th nearest positive and the key window within which items are settled exactly."""

    dist: torch.Tensor  # (b, J) float64 exact squared distance of the positive; +inf when absent
    index: torch.Tensor  # (b, J) int64 gallery index of the positive
    below: torch.Tensor  # (b, J) float32: a key below it surely precedes the positive
    above: torch.Tensor  # (b, J) float32: a key above it surely does not


def _thresholds(query: torch.Tensor, gallery: torch.Tensor, g_norm: torch.Tensor, pos_idx: torch.Tensor,
                width: int) -> _Thresholds:
    """The first ``width`` positives of (b, D) queries by (exact distance, index), from (b, P) indices padded with -1.

    ``g_norm`` is the float64 scalar largest gallery norm (for the key's error bound).
    """
    b = len(query)
    valid = pos_idx >= 0
    rows = torch.arange(b, device=query.device)[:, None].expand_as(pos_idx)
    dist = torch.full(pos_idx.shape, float("inf"), dtype=torch.float64, device=query.device)
    dist[valid] = _exact_sq_dist(query, gallery, rows[valid], pos_idx[valid])
    dist, order = torch.sort(dist, dim=1, stable=True)  # pos_idx ascends, so ties keep the smaller index first
    dist, index = dist[:, :width], pos_idx.gather(1, order)[:, :width]
    key = dist - query.double().pow(2).sum(dim=1, keepdim=True)
    bound = _key_error_bound(query, g_norm)[:, None]
    present = torch.isfinite(key)
    below = torch.where(present, _rounded(key - bound, float("-inf")), float("-inf"))
    above = torch.where(present, _rounded(key + bound, float("inf")), float("-inf"))
    return _Thresholds(dist, index, below, above)


def _count(mask: torch.Tensor) -> torch.Tensor:
    """(b, C) bool -> (b,) int64 number of True per row (summing bytes in int32 is several times faster)."""
    return mask.view(torch.uint8).sum(dim=1, dtype=torch.int32).long()


def _scan(key: torch.Tensor, below: torch.Tensor, window: torch.Tensor, above: torch.Tensor, th: _Thresholds,
          part: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass over rows ``part`` of a (b, C) key tile on the device, with (b, C) bool scratch buffers.

    Returns ((n, J) int64 count of keys surely before each threshold, and the
    window's pairs: (P,) row in the block, (P,) column in the tile, (P,) threshold j).
    """
    key, below, window, above = key[part], below[part], window[part], above[part]
    counts, rows, cols, js = [], [], [], []
    for j in range(th.dist.shape[1]):
        torch.lt(key, th.below[part, j:j + 1], out=below)
        counts.append(_count(below))
        torch.le(key, th.above[part, j:j + 1], out=above)
        r, c = torch.logical_xor(above, below, out=window).nonzero(as_tuple=True)  # below implies above
        rows.append(r + part.start)
        cols.append(c)
        js.append(torch.full_like(r, j))
    return torch.stack(counts, dim=1), torch.cat(rows), torch.cat(cols), torch.cat(js)


def _scan_host(key: torch.Tensor, below: torch.Tensor, window: torch.Tensor, above: torch.Tensor, th: _Thresholds,
               part: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_scan`` on the CPU in numpy, whose compare, byte-sum and nonzero loops run 2-5x torch's on one thread.

    ``above`` is unused: numpy writes the window mask in place.
    """
    key, below, window = key[part].numpy(), below[part].numpy(), window[part].numpy()
    th_below, th_above = th.below[part].numpy(), th.above[part].numpy()
    counts = np.empty((len(key), th_below.shape[1]), dtype=np.int64)
    rows, cols, js = [], [], []
    for j in range(th_below.shape[1]):
        np.less(key, th_below[:, j:j + 1], out=below)
        counts[:, j] = below.view(np.uint8).sum(axis=1, dtype=np.int32)
        np.less_equal(key, th_above[:, j:j + 1], out=window)
        flat = np.flatnonzero(np.not_equal(window, below, out=window))  # below implies above
        rows.append(flat // key.shape[1] + part.start)
        cols.append(flat % key.shape[1])
        js.append(np.full(len(flat), j))
    return tuple(torch.from_numpy(x) for x in (counts, np.concatenate(rows), np.concatenate(cols), np.concatenate(js)))


def _tile_keys(query: torch.Tensor, gallery_m2: torch.Tensor, gallery_sq: torch.Tensor, out: torch.Tensor) -> None:
    """(b, c) float32 keys ``|g|^2 - 2 q.g`` of (b, D) queries into ``out``; ``gallery_m2`` is (c, D) ``-2 g``
    (scaling by -2 is exact, so the product equals ``-2 fl(q.g)`` bit for bit).

    On the CPU the product runs in numpy's BLAS (OpenBLAS in numpy's wheels):
    on this project's AMD machine 1.6x the speed of torch's MKL (``bench/eval_speed.py``).
    """
    if out.device.type != "cpu":
        torch.addmm(gallery_sq, query, gallery_m2.t(), out=out)
        return
    np.add(np.matmul(query.numpy(), gallery_m2.numpy().T, out=out.numpy()), gallery_sq.numpy(), out=out.numpy())


def _block_ranks(query: torch.Tensor, gallery: torch.Tensor, gallery_m2: torch.Tensor, gallery_sq: torch.Tensor,
                 th: _Thresholds, limit: torch.Tensor, self_offset: int | None, cols: int, threads: int,
                 pool: ThreadPoolExecutor) -> torch.Tensor:
    """(b, J) int64 0-based ranks of the thresholds' positives among all gallery items, exact below (b, J) ``limit``.

    A rank that the surely-closer items alone take to ``limit`` is past it
    whatever the window's items are, so only the other windows are settled.
    ``self_offset`` is the gallery index of query row 0 when queries are the
    gallery (a query never ranks itself), else None. The product of each
    (b, cols) tile uses every thread; the passes over it are split by rows
    over the ``pool``'s threads, each op on one thread (no barrier).
    """
    b, width = th.dist.shape
    device = query.device
    closer = torch.zeros(b, width, dtype=torch.int64, device=device)
    pair_rows, pair_cols, pair_j = [], [], []
    local = torch.arange(b, device=device)
    key_buf = torch.empty(b * cols, device=device)
    below_buf, window_buf, above_buf = (torch.empty(b * cols, dtype=torch.bool, device=device) for _ in range(3))
    step = -(-b // (threads if device.type == "cpu" else 1))
    parts = [slice(lo, min(lo + step, b)) for lo in range(0, b, step)]
    scan = _scan_host if device.type == "cpu" else _scan
    for c0 in range(0, len(gallery), cols):
        c1 = min(c0 + cols, len(gallery))
        key, below, window, above = (buf[:b * (c1 - c0)].view(b, c1 - c0)
                                     for buf in (key_buf, below_buf, window_buf, above_buf))
        _tile_keys(query, gallery_m2[c0:c1], gallery_sq[c0:c1], key)
        if self_offset is not None:
            own = local + self_offset - c0
            inside = (own >= 0) & (own < c1 - c0)
            key[local[inside], own[inside]] = float("inf")
        for part, (counts, r, c, j) in zip(parts, pool.map(lambda p: scan(key, below, window, above, th, p), parts)):
            closer[part] += counts.to(device)
            pair_rows.append(r.to(device))
            pair_cols.append(c.to(device) + c0)
            pair_j.append(j.to(device))
    rows, cols_, js = torch.cat(pair_rows), torch.cat(pair_cols), torch.cat(pair_j)
    open_ = closer[rows, js] < limit[rows, js]
    rows, cols_, js = rows[open_], cols_[open_], js[open_]
    exact = _exact_sq_dist(query, gallery, rows, cols_)
    t_dist, t_index = th.dist[rows, js], th.index[rows, js]
    precedes = (exact < t_dist) | ((exact == t_dist) & (cols_ < t_index))
    closer.view(-1).index_add_(0, (rows * width + js)[precedes], torch.ones_like(rows)[precedes])
    return torch.where(torch.isfinite(th.dist), closer, _NONE)


def iterate_blocks(query: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor,
                   gallery_labels: torch.Tensor, exclude_self: bool, all_positives: bool, rank_limit: int = 0,
                   memory_budget: int | None = None) -> Iterator[Block]:
    """Yield the positive ranks of (Q, D) queries against (M, D) gallery items, block by block.

    With ``exclude_self`` the query set is the gallery: query i never retrieves
    item i and is not its own positive. Only the nearest positive is ranked
    (enough for Recall@K) unless ``all_positives`` (MAP@R, R-Precision).
    A query's nearest positive is ranked exactly below ``max(rank_limit, R)``
    (Recall@K needs K up to ``rank_limit``), its j-th below R, its number of
    positives (MAP@R); a rank past its limit is reported as some rank past it.
    ``memory_budget`` defaults to ``memory_budget_for`` the embeddings' device.
    """
    query, gallery = query.detach().float().contiguous(), gallery.detach().float().contiguous()
    if memory_budget is None:
        memory_budget = memory_budget_for(gallery.device)
    gallery_sq = gallery.pow(2).sum(dim=1)
    g_norm = gallery.double().norm(dim=1).max() if len(gallery) else torch.zeros((), dtype=torch.float64)
    gallery_m2 = gallery * -2.0
    order, starts, counts = _positive_table(query_labels.to(gallery.device), gallery_labels.to(gallery.device))
    rows_per_block, cols = tile_shape(len(query), len(gallery), memory_budget)
    threads = torch.get_num_threads()
    with ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        yield from _ranked_blocks(query, gallery, gallery_m2, gallery_sq, g_norm, (order, starts, counts),
                                  exclude_self, all_positives, rank_limit, (rows_per_block, cols), threads, pool)


def _ranked_blocks(query: torch.Tensor, gallery: torch.Tensor, gallery_m2: torch.Tensor, gallery_sq: torch.Tensor,
                   g_norm: torch.Tensor, positives: tuple, exclude_self: bool, all_positives: bool, rank_limit: int,
                   tile: tuple[int, int], threads: int, pool: ThreadPoolExecutor) -> Iterator[Block]:
    """The loop of ``iterate_blocks`` over blocks of ``tile[0]`` query rows; ``positives`` is ``_positive_table``'s."""
    order, starts, counts = positives
    rows_per_block, cols = tile
    for lo in range(0, len(query), rows_per_block):
        with _cpu_threads(gallery.device, 1):
            hi = min(lo + rows_per_block, len(query))
            pos_count = counts[lo:hi]
            offsets = torch.arange(max(1, int(pos_count.max())), device=gallery.device)
            valid = offsets < pos_count[:, None]
            pos_idx = torch.where(valid, order[(starts[lo:hi, None] + offsets).clamp(max=len(order) - 1)], -1)
            if exclude_self:
                pos_idx = torch.where(pos_idx == torch.arange(lo, hi, device=gallery.device)[:, None], -1, pos_idx)
                pos_count = pos_count - 1
            width = max(1, int(pos_count.max())) if all_positives else 1
            th = _thresholds(query[lo:hi], gallery, g_norm, pos_idx, width)
            limit = pos_count[:, None].expand(-1, width).clone()
            limit[:, 0].clamp_(min=rank_limit)
            ranks = _block_ranks(query[lo:hi], gallery, gallery_m2, gallery_sq, th, limit,
                                 lo if exclude_self else None, cols, threads, pool)
        yield Block(slice(lo, hi), ranks, pos_count)
