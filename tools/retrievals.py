"""A PNG grid of queries and their nearest retrievals, bordered green (same label) or red."""
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageOps

from dataset.decode import load_rgb

TILE = 128
BORDER = 6
GREEN, RED, GREY = (30, 170, 60), (210, 40, 40), (120, 120, 120)


def nearest(query: torch.Tensor, gallery: torch.Tensor, k: int, self_index: torch.Tensor | None) -> torch.Tensor:
    """(Q, D), (M, D) -> (Q, k) indices of the nearest gallery items (Euclidean).

    ``self_index`` (Q,) marks the gallery item each query must not retrieve (itself), -1 for none.
    """
    dist = torch.cdist(query.float(), gallery.float())
    if self_index is not None:
        rows = (self_index >= 0).nonzero().squeeze(1)
        dist[rows, self_index[rows]] = float("inf")
    return dist.topk(min(k, dist.shape[1]), dim=1, largest=False).indices


def _tile(path: str, colour: tuple) -> Image.Image:
    image = ImageOps.fit(load_rgb(path), (TILE - 2 * BORDER, TILE - 2 * BORDER))
    return ImageOps.expand(image, border=BORDER, fill=colour)


def save_retrieval_grid(query: tuple, query_samples: list, gallery: tuple, gallery_samples: list, n: int,
                        out: Path, k: int = 5, exclude_self: bool = False, own: torch.Tensor | None = None) -> Path:
    """Rows of [query | top-k retrievals] for the first ``n`` queries (evenly spaced over the set).

    ``exclude_self``: the query set is the gallery; else ``own`` (Q,), if given, names each query's own
    gallery item (-1 for none). A query never retrieves itself.
    """
    q_emb, q_labels = query
    g_emb, g_labels = gallery
    rows = torch.linspace(0, len(q_emb) - 1, steps=min(n, len(q_emb))).long()
    idx = nearest(q_emb[rows], g_emb, k, rows if exclude_self else None if own is None else own[rows])
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
