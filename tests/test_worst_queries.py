"""--save-retrievals N --worst: the N queries of lowest AP@R, ties to the lower index."""
import pytest
import torch
from PIL import Image

import run
from minidata import make_cub
from tools.retrievals import GREEN, RED, TILE, save_retrieval_grid, worst_queries


def _brute_ap_at_r(query, q_labels, gallery, g_labels, exclude_self):
    """(Q,) AP@R from a stable sort of float64 distances (ties: lower gallery index), NaN where R = 0."""
    dist = torch.cdist(query.double(), gallery.double())
    if exclude_self:
        dist.fill_diagonal_(float("inf"))
    out = []
    for i in range(len(query)):
        order = torch.sort(dist[i], stable=True).indices
        if exclude_self:
            order = order[order != i]
        relevant = (g_labels[order] == q_labels[i]).double()
        r = int(relevant.sum())
        if r == 0:
            out.append(float("nan"))
            continue
        top = relevant[:r]
        precision = top.cumsum(0) / torch.arange(1, r + 1)
        out.append(float((precision * top).sum() / r))
    return torch.tensor(out)


def _brute_worst(ap, n):
    keyed = sorted((a, i) for i, a in enumerate(ap.tolist()) if a == a)  # NaN (no positive) left out
    return [i for _, i in keyed[:n]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_worst_are_the_lowest_ap_queries_with_ties_to_the_lower_index(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 6, (40,), generator=g)
    emb = torch.randint(0, 3, (40, 2), generator=g).float()  # a coarse grid: many equal distances and APs
    emb[:3] = emb[3]  # duplicates
    labels[-1] = 99  # a query without positives: no AP, never shown
    ap = _brute_ap_at_r(emb, labels, emb, labels, exclude_self=True)
    assert len(set(ap[ap == ap].tolist())) < 30  # ties do occur
    assert worst_queries((emb, labels), None, 12).tolist() == _brute_worst(ap, 12)
    assert 39 not in worst_queries((emb, labels), None, 40).tolist()


def test_worst_query_to_gallery():
    g = torch.Generator().manual_seed(3)
    q_labels, g_labels = torch.randint(0, 5, (30,), generator=g), torch.randint(0, 5, (50,), generator=g)
    query, gallery = torch.randn(30, 4, generator=g), torch.randn(50, 4, generator=g)
    ap = _brute_ap_at_r(query, q_labels, gallery, g_labels, exclude_self=False)
    assert worst_queries((query, q_labels), (gallery, g_labels), 7).tolist() == _brute_worst(ap, 7)


def test_grid_with_worst_shows_the_failures_first(tmp_path):
    make_cub(tmp_path, classes=2, per_class=3)
    samples = [(str(p), i // 3) for i, p in enumerate(sorted((tmp_path / "CUB_200_2011" / "images").rglob("*.jpg")))]
    emb = torch.tensor([[0.0], [0.1], [5.05], [5.0], [5.1], [0.2]])  # queries 2 and 5 sit in the other class
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    out = save_retrieval_grid((emb, labels), samples, (emb, labels), samples, 2, tmp_path / "g.png", k=1,
                              exclude_self=True, worst=True)
    with Image.open(out) as grid:
        assert grid.size[1] == 2 * TILE
        assert [grid.getpixel((TILE + 6 + 2, row * TILE + 2)) for row in (0, 1)] == [RED, RED]
    even = save_retrieval_grid((emb, labels), samples, (emb, labels), samples, 2, tmp_path / "e.png", k=1,
                               exclude_self=True)
    with Image.open(even) as grid:  # rows 0 and 5: query 0's nearest is a class mate
        assert grid.getpixel((TILE + 6 + 2, 2)) == GREEN


def test_worst_needs_save_retrievals(capsys):
    with pytest.raises(SystemExit):
        run.parse_args(["--worst"])
    assert "add --save-retrievals N" in capsys.readouterr().err
