"""Recall@K, MAP@R and R-Precision from one pass over the distance tiles."""
from typing import Iterable, Sequence

import torch

from errors import UserError
from metric.ranking import Block, iterate_blocks


def _recall_hits(block: Block, ks: torch.Tensor) -> torch.Tensor:
    """(len(ks),) float64 number of the block's queries whose nearest positive ranks below each K."""
    first = block.ranks[:, 0].cpu()
    return (first[None, :] < ks[:, None]).sum(dim=1).double()


def _map_sums(block: Block) -> tuple[float, float, int]:
    """(sum of AP@R, sum of R-Precision, number of queries with R > 0) over one block.

    The j-th nearest positive (ordinal j + 1) counts when its rank is below R;
    AP@R = (1/R) sum over those of ordinal / (rank + 1).
    """
    ranks, count = block.ranks, block.pos_count
    ordinal = torch.arange(1, ranks.shape[1] + 1, device=ranks.device, dtype=torch.float64)
    inside = ranks < count[:, None]
    precision = torch.where(inside, ordinal / (ranks.double() + 1), 0.0).sum(dim=1)
    has = count > 0
    r = count[has].double()
    return float((precision[has] / r).sum()), float((inside[has].sum(dim=1) / r).sum()), int(has.sum())


def _check_labels(sets: list) -> None:
    """Raise a one-line UserError unless each (name, (N, D) embeddings, labels) has N labels (NaN embeddings
    are refused by ``metric.ranking``)."""
    for name, emb, labels in sets:
        if labels is None or len(labels) != len(emb):
            raise UserError(f"{len(emb)} {name} embeddings but {'no' if labels is None else len(labels)} labels; "
                            "pass one label per embedding")


def retrieval_metrics(query: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor | None,
                      gallery_labels: torch.Tensor | None, ks: Sequence[int] = (),
                      metrics: Iterable[str] = ("recall",), memory_budget: int | None = None,
                      own: torch.Tensor | None = None) -> dict[str, float]:
    """Recall@K and, with "map_r" in ``metrics``, MAP@R and R-Precision, all in percent, from one pass.

    Args:
        query: (Q, D) embeddings, taken as float32 (float64 ones are rounded first); with ``gallery`` None
            each queries all the others (itself excluded).
        query_labels: (Q,) int labels.
        gallery: (M, D) embeddings of the query->gallery protocol, or None.
        gallery_labels: (M,) int labels, or None.
        ks: the K of Recall@K ("Recall@K" keys); a hit is a positive among the K nearest.
        metrics: "recall" and/or "map_r"; other names are ignored here.
        memory_budget: bytes of one distance tile; default by device (see metric.ranking).
        own: with ``gallery``, (Q,) int64 index in the gallery of each query's own item (the same image, when
            an image is both a query and a gallery item; -1 for none): never retrieved, not its positive.

    Returns:
        {"Recall@K": ..., "MAP@R": ..., "R-Precision": ...} as requested. MAP@R and
        R-Precision leave out queries without positives (R = 0); Recall@K counts them as misses.
    """
    metrics = {metrics} if isinstance(metrics, str) else set(metrics)
    ks = list(ks)
    self_mode = gallery is None
    _check_labels([("query", query, query_labels)] + ([] if self_mode else [("gallery", gallery, gallery_labels)]))
    if own is not None and len(own) != len(query):
        raise UserError(f"{len(query)} queries but {len(own)} own-item indices; pass one per query")
    gallery = query if self_mode else gallery
    gallery_labels = query_labels if self_mode else gallery_labels
    ks_t = torch.tensor(ks, dtype=torch.int64)
    hits = torch.zeros(len(ks_t), dtype=torch.float64)
    ap_sum = rp_sum = 0.0
    queries = 0
    blocks = iterate_blocks(query, query_labels.to(query.device), gallery, gallery_labels.to(gallery.device),
                            exclude_self=self_mode, all_positives="map_r" in metrics,
                            rank_limit=max(ks, default=0), memory_budget=memory_budget, own=own)
    for block in blocks:
        hits += _recall_hits(block, ks_t)
        if "map_r" in metrics:
            ap, rp, n = _map_sums(block)
            ap_sum, rp_sum, queries = ap_sum + ap, rp_sum + rp, queries + n
    out = {}
    if "recall" in metrics:
        out.update({f"Recall@{k}": v for k, v in zip(ks, (100.0 * hits / max(1, len(query))).tolist())})
    if "map_r" in metrics:
        out.update({"MAP@R": 100.0 * ap_sum / max(1, queries), "R-Precision": 100.0 * rp_sum / max(1, queries)})
    return out
