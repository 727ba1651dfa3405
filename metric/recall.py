"""Recall@K (percent) for self-retrieval and for query->gallery retrieval."""
from typing import Sequence

import torch

from metric.ranking import DEFAULT_MEMORY_BUDGET, first_positive_rank, iterate_blocks


def _recall_from_blocks(blocks, ks: Sequence[int], num_queries: int) -> list[float]:
    ks_t = torch.tensor(list(ks), dtype=torch.int64)
    hits = torch.zeros(len(ks_t), dtype=torch.float64)
    for block in blocks:
        rank = first_positive_rank(block).cpu()
        hits += (rank[None, :] < ks_t[:, None]).sum(dim=1).double()
    return (100.0 * hits / max(1, num_queries)).tolist()


def recall_at_k(embeddings: torch.Tensor, labels: torch.Tensor, ks: Sequence[int],
                memory_budget: int = DEFAULT_MEMORY_BUDGET) -> list[float]:
    """Recall@K in percent: each of the (N, D) embeddings queries all the others (itself excluded).

    A query is a hit at K when an item of its label is among its K nearest
    neighbours (squared Euclidean distance; ties broken by the smaller index).
    """
    labels = labels.to(embeddings.device)
    blocks = iterate_blocks(embeddings, labels, embeddings, labels, exclude_self=True, memory_budget=memory_budget)
    return _recall_from_blocks(blocks, ks, len(embeddings))


def recall_at_k_query_gallery(query: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor,
                              gallery_labels: torch.Tensor, ks: Sequence[int],
                              memory_budget: int = DEFAULT_MEMORY_BUDGET) -> list[float]:
    """Recall@K in percent of (Q, D) queries against (M, D) gallery items (the In-Shop protocol).

    A hit is a gallery item with the query's label among its K nearest; a query
    whose label is absent from the gallery never hits.
    """
    blocks = iterate_blocks(query, query_labels.to(query.device), gallery, gallery_labels.to(gallery.device),
                            exclude_self=False, memory_budget=memory_budget)
    return _recall_from_blocks(blocks, ks, len(query))
