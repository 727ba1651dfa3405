"""Recall@K, MAP@R and R-Precision from one pass over the distance tiles."""
from typing import Iterable, NamedTuple, Sequence

import torch

from errors import UserError
from metric.ranking import Block, iterate_blocks


class PerQuery(NamedTuple):
    """Each query's retrieval outcome, from one pass of ``metric.ranking``."""

    hits: torch.Tensor  # (Q, len(ks)) bool: a positive among the K nearest, for each K
    ap: torch.Tensor  # (Q,) float64 AP@R in [0, 1] (0 where R = 0); zeros unless MAP@R was asked for
    r_precision: torch.Tensor  # (Q,) float64 R-Precision in [0, 1] (0 where R = 0); zeros likewise
    positives: torch.Tensor  # (Q,) int64 R, the query's number of positives in the gallery


def _recall_hits(block: Block, ks: torch.Tensor) -> torch.Tensor:
    """(b, len(ks)) bool: each of the block's queries has its nearest positive ranked below each K."""
    return block.ranks[:, :1].cpu() < ks[None, :]


def _map_terms(block: Block) -> tuple[torch.Tensor, torch.Tensor]:
    """((b,) float64 AP@R, (b,) float64 R-Precision) of one block's queries, 0 where R = 0.

    The j-th nearest positive (ordinal j + 1) counts when its rank is below R;
    AP@R = (1/R) sum over those of ordinal / (rank + 1).
    """
    ranks, count = block.ranks, block.pos_count
    ordinal = torch.arange(1, ranks.shape[1] + 1, device=ranks.device, dtype=torch.float64)
    inside = ranks < count[:, None]
    precision = torch.where(inside, ordinal / (ranks.double() + 1), 0.0).sum(dim=1)
    r = count.double().clamp(min=1)
    return (precision / r).cpu(), (inside.sum(dim=1) / r).cpu()


def class_means(values: torch.Tensor, labels: torch.Tensor,
                counted: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """((C,) labels, (C,) float64 mean of (Q,) ``values`` over each class's queries, (C,) int64 number of them).

    Only the queries where (Q,) bool ``counted`` holds take part; a class
    without any has a NaN mean.
    """
    counted = torch.ones(len(values), dtype=torch.bool) if counted is None else counted.cpu()
    classes, index = torch.unique(labels.cpu(), return_inverse=True)
    n = torch.bincount(index[counted], minlength=len(classes))
    sums = torch.zeros(len(classes), dtype=torch.float64).index_add_(0, index[counted], values.double()[counted])
    return classes, sums / n, n


def _class_averaged(outcome: PerQuery, labels: torch.Tensor, ks: list[int], map_r: bool) -> dict[str, float]:
    """{"class-avg Recall@K": ..., "class-avg MAP@R": ...} in percent: the mean over the classes of the
    queries of each class's mean (MAP@R: over its queries with R > 0, classes without any left out)."""
    out = {f"class-avg Recall@{k}": 100.0 * float(class_means(outcome.hits[:, i].double(), labels)[1].mean())
           for i, k in enumerate(ks)}
    if map_r:
        means = class_means(outcome.ap, labels, outcome.positives > 0)[1]
        out["class-avg MAP@R"] = 100.0 * float(means[~means.isnan()].mean()) if (~means.isnan()).any() else 0.0
    return out


def _check_labels(sets: list) -> None:
    """Raise a one-line UserError unless each (name, (N, D) embeddings, labels) has N labels (NaN embeddings
    are refused by ``metric.ranking``)."""
    for name, emb, labels in sets:
        if labels is None or len(labels) != len(emb):
            raise UserError(f"{len(emb)} {name} embeddings but {'no' if labels is None else len(labels)} labels; "
                            "pass one label per embedding")


def per_query_metrics(query: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor | None,
                      gallery_labels: torch.Tensor | None, ks: Sequence[int] = (), map_r: bool = False,
                      memory_budget: int | None = None, own: torch.Tensor | None = None) -> PerQuery:
    """Each query's hits at every K and, with ``map_r``, its AP@R and R-Precision, from one pass.

    The arguments are those of ``retrieval_metrics``.
    """
    ks = list(ks)
    self_mode = gallery is None
    _check_labels([("query", query, query_labels)] + ([] if self_mode else [("gallery", gallery, gallery_labels)]))
    if own is not None and len(own) != len(query):
        raise UserError(f"{len(query)} queries but {len(own)} own-item indices; pass one per query")
    gallery = query if self_mode else gallery
    gallery_labels = query_labels if self_mode else gallery_labels
    ks_t = torch.tensor(ks, dtype=torch.int64)
    hits = torch.zeros(len(query), len(ks), dtype=torch.bool)
    ap = torch.zeros(len(query), dtype=torch.float64)
    rp = torch.zeros(len(query), dtype=torch.float64)
    positives = torch.zeros(len(query), dtype=torch.int64)
    blocks = iterate_blocks(query, query_labels.to(query.device), gallery, gallery_labels.to(gallery.device),
                            exclude_self=self_mode, all_positives=map_r,
                            rank_limit=max(ks, default=0), memory_budget=memory_budget, own=own)
    for block in blocks:
        hits[block.rows] = _recall_hits(block, ks_t)
        positives[block.rows] = block.pos_count.cpu()
        if map_r:
            ap[block.rows], rp[block.rows] = _map_terms(block)
    return PerQuery(hits, ap, rp, positives)


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
        metrics: "recall" and/or "map_r", and "per_class" for the class-averaged values of those
            ("class-avg Recall@K", "class-avg MAP@R"); other names are ignored here.
        memory_budget: bytes of one distance tile; default by device (see metric.ranking).
        own: with ``gallery``, (Q,) int64 index in the gallery of each query's own item (the same image, when
            an image is both a query and a gallery item; -1 for none): never retrieved, not its positive.

    Returns:
        {"Recall@K": ..., "MAP@R": ..., "R-Precision": ...} as requested. MAP@R and
        R-Precision leave out queries without positives (R = 0); Recall@K counts them as misses.
        The class-averaged values are the mean over the classes of the queries of each class's
        mean (pytorch-metric-learning's ``avg_of_avgs``).
    """
    metrics = {metrics} if isinstance(metrics, str) else set(metrics)
    ks = list(ks)
    outcome = per_query_metrics(query, query_labels, gallery, gallery_labels, ks, "map_r" in metrics, memory_budget,
                                own)
    out = {}
    if "recall" in metrics:
        out.update({f"Recall@{k}": v for k, v in zip(ks, (100.0 * outcome.hits.sum(dim=0).double()
                                                         / max(1, len(query))).tolist())})
    if "map_r" in metrics:
        has = outcome.positives > 0
        queries = max(1, int(has.sum()))
        out.update({"MAP@R": 100.0 * float(outcome.ap[has].sum()) / queries,
                    "R-Precision": 100.0 * float(outcome.r_precision[has].sum()) / queries})
    if "per_class" in metrics:
        out.update(_class_averaged(outcome, query_labels, ks if "recall" in metrics else [], "map_r" in metrics))
    return out
