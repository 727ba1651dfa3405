"""Blocked exact nearest-neighbour ranking, shared by every retrieval metric.

Distances are squared Euclidean. Within one query row, the ordering key is
``|g|^2 - 2 q.g``: the squared distance minus the row's constant ``|q|^2``,
which orders a row exactly as the distance does and saves a pass. Ties are
broken by the gallery index: of two equally distant items, the one with the
smaller index ranks first, as a stable sort by distance would place it.

Queries are processed in blocks of rows, so extra memory is a few
(block, M) matrices and never grows with N^2.
"""
from typing import Iterator, NamedTuple

import torch

DEFAULT_MEMORY_BUDGET = 16 * 2**20  # bytes of one block's distances: small enough to stay in cache
_BYTES_PER_ENTRY = 6  # one float32 distance plus two byte-sized comparison temporaries
_MIN_ROWS = 32  # fewer rows per block starve the matrix product


class Block(NamedTuple):
    """One block of query rows against the whole gallery."""

    rows: slice
    dist: torch.Tensor  # (b, M) float32 ordering key, +inf where a query meets itself
    pos_idx: torch.Tensor  # (b, P) int64 gallery indices of the positives, padded with -1
    pos_count: torch.Tensor  # (b,) int64 number of positives of each query (R)


def block_rows(num_gallery: int, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """Rows per block so that a (rows, num_gallery) working set fits ``memory_budget`` bytes.

    The budget bounds extra memory whatever N is; its default keeps a block in
    the CPU's cache, where the comparison passes after the product are cheap.
    At least 32 rows (1 with a tiny budget, for tests) are taken.
    """
    rows = memory_budget // max(1, num_gallery * _BYTES_PER_ENTRY)
    return max(1, min(4096, rows if rows < _MIN_ROWS // 2 else max(_MIN_ROWS, rows)))


def _positive_table(query_labels: torch.Tensor, gallery_labels: torch.Tensor):
    """Gallery indices grouped by label: (order, start, count) with ``order`` sorted by (label, index)."""
    order = torch.sort(gallery_labels, stable=True).indices
    uniq, counts = torch.unique_consecutive(gallery_labels[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.searchsorted(uniq, query_labels).clamp(max=len(uniq) - 1)
    found = uniq[slot] == query_labels
    return order, torch.where(found, starts[slot], 0), torch.where(found, counts[slot], 0)


def iterate_blocks(query: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor,
                   gallery_labels: torch.Tensor, exclude_self: bool,
                   memory_budget: int = DEFAULT_MEMORY_BUDGET) -> Iterator[Block]:
    """Yield distance blocks of (Q, D) queries against (M, D) gallery items.

    With ``exclude_self`` the query set is the gallery: query i never retrieves
    item i and is not its own positive.
    """
    query, gallery = query.float(), gallery.float()
    gallery_sq = gallery.pow(2).sum(dim=1)
    gallery_t = gallery.t().contiguous()
    order, starts, counts = _positive_table(query_labels.to(gallery.device), gallery_labels.to(gallery.device))
    rows_per_block = block_rows(len(gallery), memory_budget)
    for lo in range(0, len(query), rows_per_block):
        hi = min(lo + rows_per_block, len(query))
        dist = torch.addmm(gallery_sq, query[lo:hi], gallery_t, alpha=-2.0)
        pos_count = counts[lo:hi]
        width = int(pos_count.max()) if hi > lo else 0
        offsets = torch.arange(width, device=dist.device)
        valid = offsets < pos_count[:, None]
        pos_idx = torch.where(valid, order[(starts[lo:hi, None] + offsets).clamp(max=len(order) - 1)], -1)
        if exclude_self:
            own = torch.arange(lo, hi, device=dist.device)
            dist[torch.arange(hi - lo, device=dist.device), own] = float("inf")
            pos_idx = torch.where(pos_idx == own[:, None], -1, pos_idx)
            pos_count = pos_count - 1
        yield Block(slice(lo, hi), dist, pos_idx, pos_count)


def _count(mask: torch.Tensor) -> torch.Tensor:
    """(b, M) bool -> (b,) int64 number of True per row (summing bytes in int32 is several times faster)."""
    return mask.view(torch.uint8).sum(dim=1, dtype=torch.int32).long()


def first_positive_rank(block: Block) -> torch.Tensor:
    """(b,) int64 0-based rank of each query's nearest positive; a huge number when it has none."""
    dist, pos_idx = block.dist, block.pos_idx
    none = torch.full((dist.shape[0],), torch.iinfo(torch.int64).max // 2, dtype=torch.int64, device=dist.device)
    if pos_idx.shape[1] == 0:
        return none
    pos_dist = torch.where(pos_idx >= 0, dist.gather(1, pos_idx.clamp(min=0)), float("inf"))
    best = pos_dist.min(dim=1).values
    # the first of several equally near positives is the one with the smallest index
    best_idx = torch.where(pos_dist == best[:, None], pos_idx, torch.iinfo(torch.int64).max).min(dim=1).values
    closer = _count(dist < best[:, None])
    at_best = _count(dist <= best[:, None]) - closer
    tied = (at_best > 1).nonzero().flatten()
    if len(tied):
        cols = torch.arange(dist.shape[1], device=dist.device)
        before = (dist[tied] == best[tied, None]) & (cols < best_idx[tied, None])
        closer[tied] += before.sum(dim=1)
    return torch.where(torch.isfinite(best), closer, none)


def positive_ranks_within_r(block: Block) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ranks of the positives that fall inside each query's top R (R = its positive count).

    Returns (rows, ranks, ordinals): for every such positive, its row in the
    block, its 0-based rank and its 1-based position among the row's positives.
    """
    dist, count = block.dist, block.pos_count
    device = dist.device
    r_max = int(count.max()) if len(count) else 0
    if r_max <= 0:
        empty = torch.empty(0, dtype=torch.int64, device=device)
        return empty, empty, empty
    kth = dist.topk(r_max, dim=1, largest=False, sorted=True).values
    threshold = kth.gather(1, (count - 1).clamp(min=0)[:, None])
    threshold = torch.where(count[:, None] > 0, threshold, float("-inf"))
    rows, cols = (dist <= threshold).nonzero(as_tuple=True)  # row-major, cols ascending
    values = dist[rows, cols]
    order = torch.sort(values, stable=True).indices
    order = order[torch.sort(rows[order], stable=True).indices]
    rows, cols = rows[order], cols[order]
    row_start = torch.searchsorted(rows, rows, right=False)
    rank = torch.arange(len(rows), device=device) - row_start
    is_pos = (block.pos_idx[rows] == cols[:, None]).any(dim=1)
    running = torch.cumsum(is_pos.long(), 0)
    ordinal = running - torch.where(row_start > 0, running[(row_start - 1).clamp(min=0)], 0)
    keep = is_pos & (rank < count[rows])
    return rows[keep], rank[keep], ordinal[keep]
