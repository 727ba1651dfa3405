"""Recall@K (percent) for self-retrieval and for query->gallery retrieval."""
from typing import Sequence

import torch

from metric.retrieval import retrieval_metrics


def recall_at_k(embeddings: torch.Tensor, labels: torch.Tensor, ks: Sequence[int],
                memory_budget: int | None = None) -> list[float]:
    """Recall@K in percent: each of the (N, D) embeddings queries all the others (itself excluded).

    A query is a hit at K when an item of its label is among its K nearest
    neighbours (squared Euclidean distance; ties broken by the smaller index).
    """
    out = retrieval_metrics(embeddings, labels, None, None, ks, ("recall",), memory_budget)
    return [out[f"Recall@{k}"] for k in ks]


def recall_at_k_query_gallery(query: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor,
                              gallery_labels: torch.Tensor, ks: Sequence[int],
                              memory_budget: int | None = None) -> list[float]:
    """Recall@K in percent of (Q, D) queries against (M, D) gallery items (the In-Shop protocol).

    A hit is a gallery item with the query's label among its K nearest; a query
    whose label is absent from the gallery never hits.
    """
    out = retrieval_metrics(query, query_labels, gallery, gallery_labels, ks, ("recall",), memory_budget)
    return [out[f"Recall@{k}"] for k in ks]
