"""MAP@R and R-Precision (Musgrave et al., "A Metric Learning Reality Check", 2020)."""
import torch

from metric.retrieval import retrieval_metrics


def map_at_r(embeddings: torch.Tensor, labels: torch.Tensor, memory_budget: int | None = None) -> dict[str, float]:
    """MAP@R and R-Precision in percent over (N, D) embeddings, each querying all the others.

    R is the number of other items with the query's label; queries with R = 0
    are left out of both means. With the ranking and ties of ``metric.ranking``:
    R-Precision = (positives in the top R) / R, and
    MAP@R = (1/R) * sum over the top R of precision@i at each positive.
    """
    return retrieval_metrics(embeddings, labels, None, None, (), ("map_r",), memory_budget)


def map_at_r_query_gallery(query: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor,
                           gallery_labels: torch.Tensor, memory_budget: int | None = None) -> dict[str, float]:
    """MAP@R and R-Precision in percent of (Q, D) queries against (M, D) gallery items."""
    return retrieval_metrics(query, query_labels, gallery, gallery_labels, (), ("map_r",), memory_budget)
