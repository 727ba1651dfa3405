"""MAP@R and R-Precision (Musgrave et al., "A Metric Learning Reality Check", 2020)."""
import torch

from metric.ranking import DEFAULT_MEMORY_BUDGET, iterate_blocks, positive_ranks_within_r


def map_at_r(embeddings: torch.Tensor, labels: torch.Tensor,
             memory_budget: int = DEFAULT_MEMORY_BUDGET) -> dict[str, float]:
    """MAP@R and R-Precision in percent over (N, D) embeddings, each querying all the others.

    R is the number of other items with the query's label; queries with R = 0
    are left out of both means. With the ranking and ties of ``metric.ranking``:
    R-Precision = (positives in the top R) / R, and
    MAP@R = (1/R) * sum over the top R of precision@i at each positive.
    """
    labels = labels.to(embeddings.device)
    blocks = iterate_blocks(embeddings, labels, embeddings, labels, exclude_self=True, memory_budget=memory_budget)
    return _map_from_blocks(blocks)


def map_at_r_query_gallery(query: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor,
                           gallery_labels: torch.Tensor, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> dict[str, float]:
    """MAP@R and R-Precision in percent of (Q, D) queries against (M, D) gallery items."""
    blocks = iterate_blocks(query, query_labels.to(query.device), gallery, gallery_labels.to(gallery.device),
                            exclude_self=False, memory_budget=memory_budget)
    return _map_from_blocks(blocks)


def _map_from_blocks(blocks) -> dict[str, float]:
    ap_sum = rp_sum = 0.0
    queries = 0
    for block in blocks:
        rows, rank, ordinal = positive_ranks_within_r(block)
        count = block.pos_count.double()
        b = len(count)
        precision = torch.zeros(b, dtype=torch.float64, device=count.device)
        precision.index_add_(0, rows, ordinal.double() / (rank.double() + 1))
        in_top = torch.zeros(b, dtype=torch.float64, device=count.device)
        in_top.index_add_(0, rows, torch.ones_like(rank, dtype=torch.float64))
        has = count > 0
        ap_sum += float((precision[has] / count[has]).sum())
        rp_sum += float((in_top[has] / count[has]).sum())
        queries += int(has.sum())
    return {"MAP@R": 100.0 * ap_sum / max(1, queries), "R-Precision": 100.0 * rp_sum / max(1, queries)}
