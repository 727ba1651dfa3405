"""Exact blocked nearest-neighbour ranking, shared by every retrieval metric, in one pass.

Distances are squared Euclidean, and ranks are those of the exact float64
distances ``sum((q - g)^2)`` of the float32 embeddings (float64 inputs are
rounded to float32 first, as every embedding of this project is float32). Ties are broken by the gallery index: of two
equally distant items, the one with the smaller index ranks first, as a stable
sort by distance would place it.

Nothing is sorted. A positive's rank is the number of items that precede it,
so each query needs only its positives' exact distances (few) and one count
per positive over its row. The count runs on float32 distances
``|q|^2 + |g|^2 - 2 q.g`` from one matrix product, whose rounding error has a
rigorous bound B (per query row): an item more than B below a positive surely
precedes it, more than B above surely does not, and the few items within B
are settled with the exact difference form in float64 (``metric.tile_scan``).
A metric only needs a rank while it is small (Recall@K below the largest K,
MAP@R below R), so a window is settled only while the rank can still count,
and with a separate gallery a query leaves the product once its ranks are
past that limit.

In self-retrieval the distance matrix is symmetric: each off-diagonal tile is
computed once and counted for its rows' queries and its columns' queries, so
the product is half of the whole matrix's.

The product runs in tiles of (rows, cols) whose size follows a memory budget:
on the CPU 48 MiB (1,024 x 8,192 entries); on CUDA a share of the free device memory.
"""
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator, NamedTuple

import torch

from errors import UserError
from metric.device import float64_device
from metric.tile_scan import Found, Thresholds, augment, concat_pairs, mean64, products, scan, squared_norms

DEFAULT_MEMORY_BUDGET = 48 * 2**20  # CPU: bytes of one tile's working set (1,024 x 8,192: the product stays efficient)
_BYTES_PER_ENTRY = 6  # one float32 distance plus two byte-sized comparison masks
_ROWS = 1024  # query rows per tile: fewer starve the matrix product
_MIN_COLS = 512  # gallery columns per tile below which rows are traded for columns
_MAX_ROWS = 8192  # query rows per tile when the whole gallery row fits (device memory)
_FREE_MEMORY_SHARE = 4  # on CUDA a tile may use 1/4 of the free device memory
_MAX_ENTRIES = 2**31 - 1  # entries of one tile: CUDA's nonzero takes fewer than 2^31 elements (older torch)
_SETTLE_ELEMENTS = {"cpu": 1 << 17, "cuda": 1 << 24}  # float64 differences settled at once (CPU: in cache)
_U = 2.0**-24  # unit roundoff of the float32 products (IEEE float32: numpy on the CPU, no TF32 on CUDA)
_NONE = torch.iinfo(torch.int64).max // 2  # rank of a positive that does not exist


@contextmanager
def cpu_threads(device: torch.device, threads: int) -> Iterator[None]:
    """Run the enclosed CPU ops on ``threads`` threads, then restore the count.

    The passes over a tile's rows are a few milliseconds each; split over
    OpenMP threads, the barrier between them costs 5-50x that on a loaded
    machine. So the passes run on independent one-thread workers, the rest of
    the bookkeeping on one thread.
    """
    saved = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def memory_budget_for(device: torch.device, free_bytes: int | None = None) -> int:
    """Bytes one tile may use on ``device``: the fixed default on the CPU,
    a quarter of the free memory on CUDA (``free_bytes`` overrides the query of the device, for tests)."""
    if device.type != "cuda":
        return DEFAULT_MEMORY_BUDGET
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    return max(DEFAULT_MEMORY_BUDGET, free_bytes // _FREE_MEMORY_SHARE)


def tile_shape(num_query: int, num_gallery: int, memory_budget: int) -> tuple[int, int]:
    """(rows, cols) of a tile of the (num_query, num_gallery) distance matrix that fits ``memory_budget`` bytes.

    When whole gallery rows fit at least 1,024 at a time (device memory), a tile
    is up to 8,192 whole rows; otherwise 1,024 rows (fewer under a tiny budget)
    by as many columns as fit. Every dimension is at least 1, and a tile has
    fewer than 2^31 entries whatever the budget.
    """
    entries = max(1, min(memory_budget // _BYTES_PER_ENTRY, _MAX_ENTRIES))
    gallery = max(1, num_gallery)
    if entries // gallery >= _ROWS:
        return max(1, min(num_query, _MAX_ROWS, entries // gallery)), gallery
    rows = max(1, min(num_query, _ROWS, entries // min(gallery, _MIN_COLS)))
    return rows, max(1, min(gallery, entries // rows))


def _positive_table(query_labels: torch.Tensor, gallery_labels: torch.Tensor):
    """Gallery indices grouped by label: (order, start, count) with ``order`` sorted by (label, index)."""
    order = torch.sort(gallery_labels, stable=True).indices
    if not len(order):
        none = torch.zeros_like(query_labels)
        return order, none, none
    uniq, counts = torch.unique_consecutive(gallery_labels[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.searchsorted(uniq, query_labels).clamp(max=len(uniq) - 1)
    found = uniq[slot] == query_labels
    return order, torch.where(found, starts[slot], 0), torch.where(found, counts[slot], 0)


def _exact_sq_dist(query: torch.Tensor, gallery: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                   pool: ThreadPoolExecutor) -> torch.Tensor:
    """(P,) float64 ``sum((query[rows] - gallery[cols])^2)`` for (P,) index pairs, in cache-sized chunks
    spread over the ``pool``'s threads."""
    out = torch.empty(len(rows), dtype=torch.float64, device=query.device)
    elements = _SETTLE_ELEMENTS.get(query.device.type, _SETTLE_ELEMENTS["cuda"])
    chunk = max(1, elements // max(1, query.shape[1]))

    def fill(lo: int) -> None:
        diff = query[rows[lo:lo + chunk]].double().sub_(gallery[cols[lo:lo + chunk]])
        out[lo:lo + chunk] = diff.mul_(diff).sum(dim=1)

    list(pool.map(fill, range(0, len(rows), chunk)))
    return out


def _dist_error_bound(q_norm: torch.Tensor, g_norm: torch.Tensor, dim: int) -> torch.Tensor:
    """(Q,) float64 bound on |float32 distance - exact distance| of every item in each query's row.

    ``q_norm`` is (Q,) float64 |q|, ``g_norm`` the float64 scalar largest gallery norm, both of the
    centred float32 embeddings (``iterate_blocks``), and ``dim`` is D.

    Centring rounds each coordinate once (relative error u), which moves a
    squared distance by at most 2u (|q| + |g|)^2 (to first order). The float32
    distance is then the dot product of the D + 2 terms of ``tile_scan.augment``:
    -2 q_k g_k, fl(|g|^2) and fl(|q|^2). With gamma = (D + 2) u / (1 - (D + 2) u),
    in any summation order its error is at most gamma times the sum of the
    terms' magnitudes, at most (|q| + |g|)^2, and the two rounded norms add
    u (|q|^2 + |g|^2). A 1% margin covers the higher orders, and a float64 term
    the norms' float64 sums and the exact reference's own rounding.
    """
    gamma = (dim + 2) * _U / (1 - (dim + 2) * _U)
    scale = (q_norm + g_norm).pow(2)
    return 1.01 * (gamma + 3 * _U) * scale + 8 * (dim + 2) * 2.0**-53 * scale


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


def _thresholds(query: torch.Tensor, gallery: torch.Tensor, norms: tuple[torch.Tensor, torch.Tensor],
                pos_idx: torch.Tensor, width: int, pool: ThreadPoolExecutor) -> Thresholds:
    """The first ``width`` positives of (b, D) queries by (exact distance, index), from (b, P) indices padded with -1.

    ``norms`` are the queries' (b,) float64 norms and the float64 scalar largest
    gallery norm (for the distances' error bound).
    """
    b = len(query)
    valid = pos_idx >= 0
    rows = torch.arange(b, device=query.device)[:, None].expand_as(pos_idx)
    dist = torch.full(pos_idx.shape, float("inf"), dtype=torch.float64, device=query.device)
    dist[valid] = _exact_sq_dist(query, gallery, rows[valid], pos_idx[valid], pool)
    dist, order = torch.sort(dist, dim=1, stable=True)  # pos_idx ascends, so ties keep the smaller index first
    dist, index = dist[:, :width], pos_idx.gather(1, order)[:, :width]
    bound = _dist_error_bound(*norms, query.shape[1])[:, None]
    present = torch.isfinite(dist)
    below = torch.where(present, _rounded(dist - bound, float("-inf")), float("-inf"))
    above = torch.where(present, _rounded(dist + bound, float("inf")), float("-inf"))
    return Thresholds(dist, index, below, above)


def _subset(th: Thresholds, rows) -> Thresholds:
    """The thresholds of some query rows (a slice or an index tensor)."""
    return Thresholds(*(x[rows] for x in th))


def _settle(query: torch.Tensor, gallery: torch.Tensor, th: Thresholds, closer: torch.Tensor, limit: torch.Tensor,
            pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], pool: ThreadPoolExecutor) -> torch.Tensor:
    """(b, J) int64 ranks: ``closer`` plus the window pairs (row, gallery index, j) that exactly precede the positive.

    A pair is only settled while its rank is below ``limit``; past it the rank
    stays at the surely-closer count. Absent positives get ``_NONE``.
    """
    rows, cols, js = pairs
    open_ = closer[rows, js] < limit[rows, js]
    rows, cols, js = rows[open_], cols[open_], js[open_]
    exact = _exact_sq_dist(query, gallery, rows, cols, pool)
    t_dist, t_index = th.dist[rows, js], th.index[rows, js]
    precedes = (exact < t_dist) | ((exact == t_dist) & (cols < t_index))
    closer = closer.clone()
    closer.view(-1).index_add_(0, (rows * closer.shape[1] + js)[precedes], torch.ones_like(rows)[precedes])
    return torch.where(torch.isfinite(th.dist), closer, _NONE)


class _Problem(NamedTuple):
    """Everything the tile loops share: the embeddings, their norms, the positives and the tiling."""

    query: torch.Tensor  # (Q, D) float32
    gallery: torch.Tensor  # (M, D) float32; the same tensor as ``query`` in self-retrieval
    query_aug: torch.Tensor  # (Q, D + 2) float32 ``tile_scan.augment``-ed queries
    gallery_aug: torch.Tensor  # (M, D + 2) float32 augmented gallery items
    q_norm: torch.Tensor  # (Q,) float64 |q|
    g_norm: torch.Tensor  # () float64 largest |g|
    positives: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # _positive_table's (order, start, count)
    own: torch.Tensor | None  # (Q,) int64 gallery index of each query's own item, -1 for none (separate gallery)
    width: int  # positives ranked per query (J)
    rank_limit: int
    tile: tuple[int, int]  # (rows, cols)
    threads: int
    pool: ThreadPoolExecutor


def _block_positives(p: _Problem, lo: int, hi: int, own: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """((b, P) gallery indices of the positives of queries lo..hi padded with -1, (b,) their number R).

    ``own`` (b,) is the gallery index of each query's own item (-1: none), which is not its positive.
    """
    order, starts, counts = p.positives
    pos_count = counts[lo:hi]
    if not len(order):  # an empty gallery: nobody has a positive
        return torch.full((hi - lo, 1), -1, dtype=torch.int64, device=p.gallery.device), pos_count
    offsets = torch.arange(max(1, int(counts.max())), device=p.gallery.device)
    valid = offsets < pos_count[:, None]
    pos_idx = torch.where(valid, order[(starts[lo:hi, None] + offsets).clamp(max=len(order) - 1)], -1)
    if own is not None:
        mine = (pos_idx == own[:, None]) & (own[:, None] >= 0)
        pos_idx = torch.where(mine, -1, pos_idx)
        pos_count = pos_count - mine.sum(dim=1)
    return pos_idx, pos_count


def _hide_own(tile: torch.Tensor, own: torch.Tensor, c0: int) -> None:
    """Set each row's entry of its own item (``own``: (rows,) gallery indices, -1 for none) to +inf in a
    (rows, cols) tile of gallery columns c0.., so that no query retrieves itself."""
    col = own - c0
    inside = ((col >= 0) & (col < tile.shape[1])).nonzero().squeeze(1)
    tile[inside, col[inside]] = float("inf")


def _limit(pos_count: torch.Tensor, width: int, rank_limit: int) -> torch.Tensor:
    """(b, J) int64: the j-th positive's rank matters below R, the nearest one's also below ``rank_limit``."""
    limit = pos_count[:, None].expand(-1, width).clone()
    limit[:, 0].clamp_(min=rank_limit)
    return limit


def _scan_tile(p: _Problem, tile: torch.Tensor, row_th: Thresholds, col_th: Thresholds | None,
               masks: torch.Tensor) -> Found:
    """``tile_scan.scan`` of a whole tile, its rows split over the pool's threads on the CPU (one part on CUDA)."""
    b = len(tile)
    step = -(-b // (p.threads if tile.device.type == "cpu" else 1))
    parts = [slice(lo, min(lo + step, b)) for lo in range(0, b, step)]
    found = list(p.pool.map(lambda part: scan(tile, row_th, col_th, masks, part), parts))
    pairs = concat_pairs([f.pairs for f in found], tile.device)
    counts = torch.cat([f.counts for f in found])
    if col_th is None:
        return Found(counts, pairs, None, None)
    col_pairs = concat_pairs([f.col_pairs for f in found], tile.device)
    return Found(counts, pairs, torch.stack([f.col_counts for f in found]).sum(0), col_pairs)


def _buffers(p: _Problem, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A flat float32 tile buffer and (2, entries) bool masks for tiles of ``p.tile`` entries, or of the
    square of its rows (self-retrieval's diagonal tiles), whichever is larger."""
    entries = p.tile[0] * max(p.tile)
    return torch.empty(entries, device=device), torch.empty(2, entries, dtype=torch.bool, device=device)


def _gallery_blocks(p: _Problem) -> Iterator[Block]:
    """Blocks of queries against a separate gallery; a query leaves the product once its ranks are past their limits."""
    device = p.gallery.device
    buf, masks = _buffers(p, device)
    rows_per_block, cols = p.tile
    for lo in range(0, len(p.query), rows_per_block):
        hi = min(lo + rows_per_block, len(p.query))
        own = None if p.own is None else p.own[lo:hi]
        pos_idx, pos_count = _block_positives(p, lo, hi, own)
        th = _thresholds(p.query[lo:hi], p.gallery, (p.q_norm[lo:hi], p.g_norm), pos_idx, p.width, p.pool)
        limit = _limit(pos_count, p.width, p.rank_limit)
        closer = torch.zeros(hi - lo, p.width, dtype=torch.int64, device=device)
        pairs = []
        for c0 in range(0, len(p.gallery), cols):
            c1 = min(c0 + cols, len(p.gallery))
            active = ((closer < limit) & torch.isfinite(th.dist)).any(dim=1).nonzero().squeeze(1)
            if not len(active):
                break
            everyone = len(active) == hi - lo
            query = p.query_aug[lo:hi] if everyone else p.query_aug[lo:hi][active]
            tile = buf[:len(active) * (c1 - c0)].view(len(active), c1 - c0)
            products(query, p.gallery_aug[c0:c1], tile)
            if own is not None:
                _hide_own(tile, own if everyone else own[active], c0)
            found = _scan_tile(p, tile, _subset(th, active), None, masks)
            closer[active] += found.counts
            pairs.append((active[found.pairs[0]], found.pairs[1] + c0, found.pairs[2]))
        ranks = _settle(p.query[lo:hi], p.gallery, th, closer, limit, concat_pairs(pairs, device), p.pool)
        yield Block(slice(lo, hi), ranks, pos_count)


def _self_blocks(p: _Problem) -> Iterator[Block]:
    """Blocks of self-retrieval: each off-diagonal tile counts for its rows' and its columns' queries.

    Block I's ranks are complete once its own tiles (its diagonal square and the
    columns after it) are scanned, since the columns before it were counted
    with the earlier blocks' tiles.
    """
    device = p.gallery.device
    buf, masks = _buffers(p, device)
    rows_per_block, cols = p.tile
    n = len(p.query)
    starts = range(0, n, rows_per_block)
    if not n:
        return
    pos_counts, parts = [], []
    for lo in starts:  # every query's thresholds first: later blocks' columns meet earlier rows
        hi = min(lo + rows_per_block, n)
        pos_idx, pos_count = _block_positives(p, lo, hi, torch.arange(lo, hi, device=device))
        pos_counts.append(pos_count)
        parts.append(_thresholds(p.query[lo:hi], p.gallery, (p.q_norm[lo:hi], p.g_norm), pos_idx, p.width, p.pool))
    th = Thresholds(*(torch.cat(x) for x in zip(*parts)))
    del parts
    closer = torch.zeros(n, p.width, dtype=torch.int64, device=device)
    pending = [[] for _ in starts]  # per block: window pairs (query, item, j) found with earlier blocks' tiles
    for block, lo in enumerate(starts):
        hi = min(lo + rows_per_block, n)
        own = []
        for c0, c1 in [(lo, hi)] + [(c, min(c + cols, n)) for c in range(hi, n, cols)]:
            tile = buf[:(hi - lo) * (c1 - c0)].view(hi - lo, c1 - c0)
            products(p.query_aug[lo:hi], p.gallery_aug[c0:c1], tile)
            diagonal = c0 == lo
            if diagonal:
                tile.fill_diagonal_(float("inf"))
            found = _scan_tile(p, tile, _subset(th, slice(lo, hi)), None if diagonal else _subset(th, slice(c0, c1)),
                               masks)
            closer[lo:hi] += found.counts
            own.append((found.pairs[0] + lo, found.pairs[1] + c0, found.pairs[2]))
            if not diagonal:
                closer[c0:c1] += found.col_counts
                q, item, j = found.col_pairs[0] + c0, found.col_pairs[1] + lo, found.col_pairs[2]
                for later in torch.unique(q // rows_per_block).tolist():
                    mine = q // rows_per_block == later
                    pending[later].append((q[mine], item[mine], j[mine]))
        pieces = own + pending[block]
        pending[block] = []
        rows, items, js = concat_pairs(pieces, device)
        pos_count = pos_counts[block]
        ranks = _settle(p.query[lo:hi], p.gallery, _subset(th, slice(lo, hi)), closer[lo:hi],
                        _limit(pos_count, p.width, p.rank_limit), (rows - lo, items, js), p.pool)
        yield Block(slice(lo, hi), ranks, pos_count)


def iterate_blocks(query: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor,
                   gallery_labels: torch.Tensor, exclude_self: bool, all_positives: bool, rank_limit: int = 0,
                   memory_budget: int | None = None, own: torch.Tensor | None = None) -> Iterator[Block]:
    """Yield the positive ranks of (Q, D) queries against (M, D) gallery items, block by block.

    With ``exclude_self`` the query set is the gallery (the same embeddings):
    query i never retrieves item i and is not its own positive. With a
    separate gallery, ``own`` (Q,) int64 names each query's own item in it
    (the same image, when a row is both query and gallery; -1 for none), which
    likewise it never retrieves and is not its positive. Only the
    nearest positive is ranked (enough for Recall@K) unless ``all_positives``
    (MAP@R, R-Precision). A query's nearest positive is ranked exactly below
    ``max(rank_limit, R)`` (Recall@K needs K up to ``rank_limit``), its j-th
    below R, its number of positives (MAP@R); a rank past its limit is
    reported as some rank past it. ``memory_budget`` defaults to
    ``memory_budget_for`` the embeddings' device. Embeddings on MPS are ranked on the CPU (``float64_device``).
    """
    device = float64_device(gallery.device)
    query = query.detach().float().to(device).contiguous()
    gallery = query if exclude_self else gallery.detach().float().to(device).contiguous()
    if memory_budget is None:
        memory_budget = memory_budget_for(device)
    positives = _positive_table(query_labels.to(device).long(), gallery_labels.to(device).long())
    most = int(positives[2].max()) - int(exclude_self) if len(query) else 0
    threads = torch.get_num_threads()
    query_aug, gallery_aug, q_norm, g_norm = _centred_rows(query, gallery, exclude_self)
    with ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        own = None if exclude_self or own is None else own.to(device).long()
        problem = _Problem(query, gallery, query_aug, gallery_aug, q_norm, g_norm, positives, own,
                           max(1, most) if all_positives else 1, rank_limit,
                           tile_shape(len(query), len(gallery), memory_budget), threads, pool)
        blocks = (_self_blocks if exclude_self else _gallery_blocks)(problem)
        while True:
            with cpu_threads(device, 1), _ieee_products(device):  # the work between yields, not the caller's
                block = next(blocks, None)
            if block is None:
                return
            yield block


def _centred_rows(query: torch.Tensor, gallery: torch.Tensor, exclude_self: bool):
    """(augmented queries, augmented gallery, (Q,) float64 query norms, float64 largest gallery norm), all of
    the embeddings centred on the gallery's mean.

    Distances do not change under a shift, but the products' rounding error
    grows with the norms: centring keeps it at the scale of the embeddings'
    spread, however far from the origin they sit.
    """
    sets = [("query", query)] + ([] if exclude_self else [("gallery", gallery)])
    means = {name: mean64(x) if len(x) else torch.zeros(x.shape[1], dtype=torch.float64) for name, x in sets}
    for name, x in sets:  # a NaN or infinite value makes its column's mean one too
        if not torch.isfinite(means[name]).all():
            bad = int((~torch.isfinite(x)).any(dim=1).sum())
            raise UserError(f"{bad} of {len(x)} {name} embeddings are NaN or infinite, so no metric can rank them; "
                            "the network's weights or inputs are broken (try without --amp, or another checkpoint)")
    centre = means[sets[-1][0]].float().to(gallery.device)
    g_centred = gallery - centre
    q_centred = g_centred if exclude_self else query - centre
    g_sq = squared_norms(g_centred)
    q_sq = g_sq if exclude_self else squared_norms(q_centred)
    g_norm = g_sq.max().sqrt() if len(g_sq) else torch.zeros((), dtype=torch.float64, device=gallery.device)
    largest = max([float(g_norm)] + ([float(q_sq.max().sqrt())] if len(q_sq) else []))
    if (2 * largest) ** 2 >= torch.finfo(torch.float32).max:
        raise UserError(f"embeddings spread over {largest:.3g} from their mean: their squared distances overflow "
                        "float32; scale them down (distances scale alike, ranks do not change)")
    return augment(q_centred, q_sq, "query"), augment(g_centred, g_sq, "gallery"), q_sq.sqrt(), g_norm


@contextmanager
def _ieee_products(device: torch.device) -> Iterator[None]:
    """On CUDA, the enclosed float32 products in IEEE float32, not TF32 (the error bound assumes it); every
    precision setting reads as before afterwards. numpy's products on the CPU are IEEE anyway.

    torch refuses a product once its legacy setting (``set_float32_matmul_precision``)
    and the newer ``fp32_precision`` ones disagree, so TF32 goes off through the
    API the settings are consistent with: the legacy one while it can be read,
    the newer one after that was used. The legacy call also sets the newer
    values of cuBLAS and oneDNN, which are put back after it.
    """
    if device.type != "cuda":
        yield
        return
    newer = (torch.backends.cuda.matmul, torch.backends.mkldnn.matmul)
    saved = [backend.fp32_precision for backend in newer]
    try:
        legacy = torch.get_float32_matmul_precision()  # raises once the newer API is in use
    except RuntimeError:
        legacy = None
    if legacy is None:
        newer[0].fp32_precision = "ieee"
    else:
        torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        if legacy is not None:
            torch.set_float32_matmul_precision(legacy)
        for backend, value in zip(newer, saved):
            _restore_precision(backend, value)


def _restore_precision(backend, value: str) -> None:
    """Set ``backend.fp32_precision`` back to ``value`` as read before: "none" (inherit the parent setting,
    torch's default) when that reads as ``value``, else ``value`` itself."""
    backend.fp32_precision = "none"
    if backend.fp32_precision != value:
        backend.fp32_precision = value
