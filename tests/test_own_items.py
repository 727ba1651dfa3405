"""A row that is both a query and a gallery item never retrieves itself and is not its own positive."""
import pytest
import torch

from errors import UserError
from metric.retrieval import retrieval_metrics


def brute(query, ql, gallery, gl, ks, own):
    """Recall@K, MAP@R and R-Precision (percent) by sorting every row, each query's own item removed."""
    dist = torch.cdist(query.double(), gallery.double()).pow(2)
    order = torch.sort(dist, dim=1, stable=True).indices.tolist()
    hits, aps, rps = [0] * len(ks), [], []
    for i, row in enumerate(order):
        ranked = [j for j in row if j != int(own[i])]
        rel = [int(gl[j]) == int(ql[i]) for j in ranked]
        for n, k in enumerate(ks):
            hits[n] += any(rel[:k])
        r = sum(rel)
        if r:
            precision = [sum(rel[:m + 1]) / (m + 1) for m in range(r)]
            aps.append(sum(p for p, x in zip(precision, rel[:r]) if x) / r)
            rps.append(sum(rel[:r]) / r)
    out = {f"Recall@{k}": 100.0 * h / len(query) for k, h in zip(ks, hits)}
    return {**out, "MAP@R": 100 * sum(aps) / len(aps), "R-Precision": 100 * sum(rps) / len(rps)}


def _rows(n, seed):
    """Small-integer embeddings (exact distances, many ties) and labels of ``n`` test rows."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 3, (n, 3), generator=g).float(), torch.randint(0, 9, (n,), generator=g)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("budget", [200, 3000, 2**28])
def test_rows_in_both_sets_skip_themselves(seed, budget):
    emb, labels = _rows(80, seed)
    g = torch.Generator().manual_seed(seed + 50)
    is_query, is_gallery = torch.rand(80, generator=g) < 0.6, torch.rand(80, generator=g) < 0.7
    q_rows, g_rows = is_query.nonzero().squeeze(1), is_gallery.nonzero().squeeze(1)
    position = torch.full((80,), -1)
    position[g_rows] = torch.arange(len(g_rows))
    own = position[q_rows]
    assert (own >= 0).sum() > 10 and (own < 0).sum() > 5  # both kinds of query
    ks = [1, 2, 8, 60]
    got = retrieval_metrics(emb[q_rows], labels[q_rows], emb[g_rows], labels[g_rows], ks, ("recall", "map_r"),
                            memory_budget=budget, own=own)
    expected = brute(emb[q_rows], labels[q_rows], emb[g_rows], labels[g_rows], ks, own)
    assert got == pytest.approx(expected, abs=1e-9)
    plain = retrieval_metrics(emb[q_rows], labels[q_rows], emb[g_rows], labels[g_rows], ks, ("recall",))
    assert plain["Recall@1"] > got["Recall@1"]  # without it, each such query finds itself first


def test_every_row_in_both_sets_is_self_retrieval():
    emb, labels = _rows(70, 3)
    ks = [1, 4, 16]
    both = retrieval_metrics(emb, labels, emb.clone(), labels, ks, ("recall", "map_r"), own=torch.arange(70))
    assert both == pytest.approx(retrieval_metrics(emb, labels, None, None, ks, ("recall", "map_r")), abs=1e-9)


def test_own_indices_must_match_the_queries():
    emb, labels = _rows(5, 0)
    with pytest.raises(UserError, match="5 queries but 4 own-item indices"):
        retrieval_metrics(emb, labels, emb, labels, [1], own=torch.arange(4))


def test_the_retrieval_grid_never_shows_a_query_its_own_image():
    from tools.retrievals import nearest
    gallery = torch.tensor([[0.0], [1.0], [5.0]])
    query = gallery[[0, 2]].clone()  # the first is gallery item 0 itself, the second only looks like item 2
    assert nearest(query, gallery, 1, torch.tensor([0, -1])).tolist() == [[1], [2]]
