"""A PNG grid of queries and their nearest retrievals, bordered green (same label) or red."""
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageOps

from dataset.decode import load_rgb
from errors import UserError
from metric.retrieval import per_query_metrics

TILE = 128
BORDER = 6
GREEN, RED, GREY = (30, 170, 60), (210, 40, 40), (120, 120, 120)


def nearest(query: torch.Tensor, gallery: torch.Tensor, k: int, self_index: torch.Tensor | None) -> torch.Tensor:
    """(Q, D), (M, D) -> (Q, k) indices of the nearest gallery items (Euclidean).

    ``self_index`` (Q,) marks, for self-retrieval, the gallery item each query must not retrieve.
    """
    dist = torch.cdist(query.float(), gallery.float())
    if self_index is not None:
        dist[torch.arange(len(query)), self_index] = float("inf")
    return dist.topk(min(k, dist.shape[1]), dim=1, largest=False).indices


def _tile(path: str, colour: tuple) -> Image.Image:
    image = ImageOps.fit(load_rgb(path), (TILE - 2 * BORDER, TILE - 2 * BORDER))
    return ImageOps.expand(image, border=BORDER, fill=colour)


def worst_queries(query: tuple, gallery: tuple | None, n: int) -> torch.Tensor:
    """(min(n, Q'),) int64 indices of the queries with the lowest AP@R, lowest first (ties: lower index).

    ``query`` and ``gallery`` are ((N, D) embeddings, (N,) labels); ``gallery``
    None is self-retrieval. Queries without positives (R = 0) have no AP and
    are left out, so Q' counts the others.
    """
    outcome = per_query_metrics(*query, *(gallery if gallery is not None else (None, None)), map_r=True)
    ranked = torch.sort(outcome.ap, stable=True).indices
    return ranked[outcome.positives[ranked] > 0][:n]


def save_retrieval_grid(query: tuple, query_samples: list, gallery: tuple, gallery_samples: list, n: int,
                        out: Path, k: int = 5, exclude_self: bool = False, worst: bool = False) -> Path:
    """Rows of [query | top-k retrievals] for ``n`` queries: evenly spaced over the set, or with ``worst``
    those of the lowest AP@R, worst first (``worst_queries``)."""
    q_emb, q_labels = query
    g_emb, g_labels = gallery
    if worst:
        rows = worst_queries(query, None if exclude_self else gallery, n)
        if not len(rows):
            raise UserError("--worst: no test query has a positive in the gallery, so none has an average "
                            "precision to rank; drop --worst to see evenly spaced queries")
    else:
        rows = torch.linspace(0, len(q_emb) - 1, steps=min(n, len(q_emb))).long()
    idx = nearest(q_emb[rows], g_emb, k, rows if exclude_self else None)
    canvas = Image.new("RGB", (TILE * (idx.shape[1] + 1) + BORDER, TILE * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, q in enumerate(rows.tolist()):
        canvas.paste(_tile(query_samples[q][0], GREY), (0, r * TILE))
        for c, g in enumerate(idx[r].tolist()):
            colour = GREEN if int(g_labels[g]) == int(q_labels[q]) else RED
            canvas.paste(_tile(gallery_samples[g][0], colour), (TILE * (c + 1) + BORDER, r * TILE))
        draw.line([(TILE + BORDER // 2, r * TILE), (TILE + BORDER // 2, (r + 1) * TILE)], fill="black", width=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
