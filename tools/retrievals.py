"""A PNG grid of queries and their nearest retrievals, bordered green (same label), red (another label) or white
(a label unknown); with a title, also a legend of the borders."""
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

from dataset.decode import load_rgb
from errors import UserError
from metric.knn import nearest_neighbors
from metric.retrieval import per_query_metrics
from model.checkpoint import atomic_file

TILE = 128
BORDER = 6
GREEN, RED, GREY, WHITE = (30, 170, 60), (210, 40, 40), (120, 120, 120), (255, 255, 255)
FONT_SIZE = 14  # pixels
LINE = FONT_SIZE + 6  # pixels per line of text
LEGEND = ((GREY, "query (left column)"), (GREEN, "same label as the query"), (RED, "another label"),
          (WHITE, "label unknown"))


class GridRow(NamedTuple):
    """One row of the grid: the query image and its label, then the retrieved (image, label) pairs."""

    query: str
    label: object
    retrieved: list[tuple[str, object]]


def nearest(query: torch.Tensor, gallery: torch.Tensor, k: int, self_index: torch.Tensor | None) -> torch.Tensor:
    """(Q, D), (M, D) -> (Q, k) indices of the nearest gallery items (exact Euclidean, ``metric.knn``).

    ``self_index`` (Q,) marks the gallery item each query must not retrieve (itself), -1 for none.
    """
    return nearest_neighbors(query, gallery, k, False if self_index is None else self_index)[0]


def _border(query_label: object, label: object) -> tuple:
    if query_label is None or label is None:
        return WHITE
    return GREEN if label == query_label else RED


def _tile(path: str, colour: tuple) -> Image.Image:
    image = ImageOps.fit(load_rgb(path), (TILE - 2 * BORDER, TILE - 2 * BORDER))
    return ImageOps.expand(image, border=BORDER, fill=colour)


def worst_queries(query: tuple, gallery: tuple | None, n: int, own: torch.Tensor | None = None) -> torch.Tensor:
    """(min(n, Q'),) int64 indices of the queries with the lowest AP@R, lowest first (ties: lower index).

    ``query`` and ``gallery`` are ((N, D) embeddings, (N,) labels); ``gallery``
    None is self-retrieval; ``own`` as in ``save_retrieval_grid``. Queries
    without positives (R = 0) have no AP and are left out, so Q' counts the others.
    """
    outcome = per_query_metrics(*query, *(gallery if gallery is not None else (None, None)), map_r=True, own=own)
    ranked = torch.sort(outcome.ap, stable=True).indices
    return ranked[outcome.positives[ranked] > 0][:n]


def grid_title(shows: str, queries: int, k: int, worst: bool = False) -> str:
    """The title of a retrieval grid: ``shows`` (dataset, split and checkpoint), which queries, and K."""
    which = f"the {queries} worst queries by AP@R, worst first," if worst else f"{queries} evenly spaced queries"
    return f"{shows}: {which} and their top {k} retrievals"


def _font() -> ImageFont.ImageFont:
    """Pillow's own font at FONT_SIZE (Pillow 10.1 and newer), else its fixed bitmap font."""
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except (TypeError, ImportError):  # Pillow 10.0, or no FreeType
        return ImageFont.load_default()


def _wrapped(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels (a longer word has a line of its own)."""
    lines = [""]
    for word in text.split():
        candidate = f"{lines[-1]} {word}".strip()
        if lines[-1] and draw.textlength(candidate, font=font) > width:
            lines.append(word)
        else:
            lines[-1] = candidate
    return lines


def _legend_lines(draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, width: int) -> list[list[tuple]]:
    """The LEGEND's (colour, text) entries in lines no wider than ``width`` pixels."""
    lines: list[list[tuple]] = [[]]
    used = 0
    for colour, text in LEGEND:
        entry = LINE + int(draw.textlength(text, font=font)) + 2 * BORDER
        if lines[-1] and used + entry > width:
            lines.append([])
            used = 0
        lines[-1].append((colour, text))
        used += entry
    return lines


def _caption(canvas: Image.Image, title: str) -> Image.Image:
    """``canvas`` (the tiles) below ``title`` and above the legend of the borders."""
    font = _font()
    measure = ImageDraw.Draw(canvas)
    title_lines = _wrapped(measure, title, font, canvas.width - 2 * BORDER)
    legend = _legend_lines(measure, font, canvas.width - 2 * BORDER)
    head, foot = LINE * len(title_lines) + 2 * BORDER, LINE * len(legend) + 2 * BORDER
    page = Image.new("RGB", (canvas.width, head + canvas.height + foot), "white")
    page.paste(canvas, (0, head))
    draw = ImageDraw.Draw(page)
    for i, line in enumerate(title_lines):
        draw.text((BORDER, BORDER + i * LINE), line, fill="black", font=font)
    for i, entries in enumerate(legend):
        x, y = BORDER, head + canvas.height + BORDER + i * LINE
        for colour, text in entries:
            draw.rectangle([x, y, x + FONT_SIZE, y + FONT_SIZE], fill=colour, outline="black")
            draw.text((x + LINE, y), text, fill="black", font=font)
            x += LINE + int(draw.textlength(text, font=font)) + 2 * BORDER
    return page


def draw_grid(rows: list[GridRow], out: Path, title: str | None = None) -> Path:
    """A PNG of one row per query: the query (grey border), a separator, then its retrievals; with ``title``,
    the title above the rows and the legend of the borders below them."""
    width = max([len(row.retrieved) for row in rows], default=0)
    canvas = Image.new("RGB", (TILE * (width + 1) + BORDER, TILE * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        canvas.paste(_tile(row.query, GREY), (0, r * TILE))
        for c, (path, label) in enumerate(row.retrieved):
            canvas.paste(_tile(path, _border(row.label, label)), (TILE * (c + 1) + BORDER, r * TILE))
        draw.line([(TILE + BORDER // 2, r * TILE), (TILE + BORDER // 2, (r + 1) * TILE)], fill="black", width=2)
    if title is not None:
        canvas = _caption(canvas, title)
    with atomic_file(out) as f:
        canvas.save(f, format=Image.registered_extensions().get(out.suffix.lower(), "PNG"))
    return out


def save_retrieval_grid(query: tuple, query_samples: list, gallery: tuple, gallery_samples: list, n: int,
                        out: Path, k: int = 5, exclude_self: bool = False, own: torch.Tensor | None = None,
                        worst: bool = False, shows: str | None = None) -> Path:
    """Rows of [query | top-k retrievals] for ``n`` queries: evenly spaced over the set, or with ``worst``
    those of the lowest AP@R, worst first (``worst_queries``). ``shows`` (dataset, split and checkpoint, e.g.
    "cub200 test split, last.pth (epoch 100)") makes the ``grid_title`` and adds the legend.

    ``exclude_self``: the query set is the gallery; else ``own`` (Q,), if given, names each query's own
    gallery item (-1 for none). A query never retrieves itself.
    """
    q_emb, q_labels = query
    g_emb, g_labels = gallery
    if worst:
        rows = worst_queries(query, None if exclude_self else gallery, n, own)
        if not len(rows):
            raise UserError("--worst: no test query has a positive in the gallery, so none has an average "
                            "precision to rank; drop --worst to see evenly spaced queries")
    else:
        rows = torch.linspace(0, len(q_emb) - 1, steps=min(n, len(q_emb))).long()
    idx = nearest(q_emb[rows], g_emb, k, rows if exclude_self else None if own is None else own[rows])
    return draw_grid([GridRow(query_samples[q][0], int(q_labels[q]),
                              [(gallery_samples[g][0], int(g_labels[g])) for g in idx[r].tolist()])
                      for r, q in enumerate(rows.tolist())], out,
                     None if shows is None else grid_title(shows, len(rows), idx.shape[1], worst))
