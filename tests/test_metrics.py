"""Retrieval metrics: the reference vectors, and brute force on random data with ties."""
import pytest
import torch

from metric.map_at_r import map_at_r, map_at_r_query_gallery
from metric.nmi import kmeans, nmi, normalized_mutual_info
from metric.recall import recall_at_k, recall_at_k_query_gallery
from reference import load


def _ordering(query, gallery, self_mask=None):
    """Brute force: every row's gallery indices sorted by (squared distance, index)."""
    dist = torch.cdist(query.double(), gallery.double()).pow(2)
    if self_mask is not None:
        dist[self_mask] = float("inf")
    return torch.sort(dist, dim=1, stable=True).indices, dist


def brute_recall(query, ql, gallery, gl, ks, exclude_self):
    ql, gl = ql.tolist(), gl.tolist()
    order, dist = _ordering(query, gallery, torch.eye(len(query), dtype=torch.bool) if exclude_self else None)
    out = []
    for k in ks:
        hits = 0
        for i in range(len(query)):
            top = [j for j in order[i].tolist() if not (exclude_self and j == i)][:k]
            hits += any(gl[j] == ql[i] for j in top)
        out.append(100.0 * hits / len(query))
    return out


def brute_map_r(query, ql, gallery, gl, exclude_self):
    ql, gl = ql.tolist(), gl.tolist()
    order, _ = _ordering(query, gallery, torch.eye(len(query), dtype=torch.bool) if exclude_self else None)
    aps, rps = [], []
    for i in range(len(query)):
        ranked = [j for j in order[i].tolist() if not (exclude_self and j == i)]
        r = sum(1 for j in ranked if gl[j] == ql[i])
        if r == 0:
            continue
        rel = [gl[j] == ql[i] for j in ranked[:r]]
        precision = [sum(rel[:n + 1]) / (n + 1) for n in range(r)]
        aps.append(sum(p for p, x in zip(precision, rel) if x) / r)
        rps.append(sum(rel) / r)
    return {"MAP@R": 100 * sum(aps) / len(aps), "R-Precision": 100 * sum(rps) / len(rps)}


def _integer_data(n, d, classes, seed):
    """Small-integer embeddings: every distance is exact, and ties and duplicates abound."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randint(-2, 3, (n, d), generator=g).float()
    e[1::7] = e[0::7][: len(e[1::7])]  # exact duplicates
    labels = torch.randint(0, classes, (n,), generator=g)
    labels[-1] = classes + 5  # a class with a single member
    return e, labels


def test_recall_matches_reference_vectors():
    ref = load("recall")["self"]
    torch.testing.assert_close(torch.tensor(recall_at_k(ref["embeddings"], ref["labels"], ref["K"])),
                               ref["recall"], rtol=1e-5, atol=1e-4, check_dtype=False)


def test_query_gallery_recall_matches_reference_vectors():
    ref = load("recall")["query_gallery"]
    ids = {item: i for i, item in enumerate(sorted(set(ref["query_items"]) | set(ref["gallery_items"])))}
    ql = torch.tensor([ids[x] for x in ref["query_items"]])
    gl = torch.tensor([ids[x] for x in ref["gallery_items"]])
    got = recall_at_k_query_gallery(ref["query_embeddings"], ql, ref["gallery_embeddings"], gl, ref["K"])
    torch.testing.assert_close(torch.tensor(got), ref["recall"], rtol=1e-5, atol=1e-4, check_dtype=False)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("budget", [1, 4096, 2**28])
def test_self_recall_and_map_r_equal_brute_force(seed, budget):
    e, labels = _integer_data(90, 3, 12, seed)
    ks = [1, 2, 5, 30, 89]  # K larger than any class, and N - 1
    assert recall_at_k(e, labels, ks, memory_budget=budget) == pytest.approx(
        brute_recall(e, labels, e, labels, ks, True), abs=1e-9)
    got = map_at_r(e, labels, memory_budget=budget)
    expected = brute_map_r(e, labels, e, labels, True)
    assert got == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_query_gallery_metrics_equal_brute_force_with_missing_labels(seed):
    q, ql = _integer_data(40, 3, 10, seed)
    g, gl = _integer_data(70, 3, 8, seed + 10)  # query labels 8, 9 and 15 never appear in the gallery
    g[:5] = q[:5]  # queries with exact copies in the gallery
    ks = [1, 3, 10, 70]
    assert recall_at_k_query_gallery(q, ql, g, gl, ks, memory_budget=3000) == pytest.approx(
        brute_recall(q, ql, g, gl, ks, False), abs=1e-9)
    assert map_at_r_query_gallery(q, ql, g, gl, memory_budget=3000) == pytest.approx(
        brute_map_r(q, ql, g, gl, False), abs=1e-9)


def test_float_data_recall_equals_brute_force():
    g = torch.Generator().manual_seed(3)
    e = torch.randn(300, 16, generator=g)
    labels = torch.randint(0, 40, (300,), generator=g)
    ks = [1, 4, 16, 100]
    assert recall_at_k(e, labels, ks, memory_budget=50_000) == pytest.approx(
        brute_recall(e, labels, e, labels, ks, True), abs=1e-9)
    assert map_at_r(e, labels) == pytest.approx(brute_map_r(e, labels, e, labels, True), abs=1e-9)


def test_ties_rank_the_smaller_index_first():
    e = torch.zeros(4, 2)  # everything is equally distant
    labels = torch.tensor([0, 1, 1, 0])
    # every query ranks the others by index: the positive of query 0 (item 3) is third,
    # of queries 1 and 2 second, of query 3 (item 0) first
    assert recall_at_k(e, labels, [1, 2, 3]) == pytest.approx([25.0, 75.0, 100.0])


def test_nmi_is_one_for_identical_partitions_and_zero_for_independent():
    a = torch.tensor([0, 0, 1, 1, 2, 2])
    assert normalized_mutual_info(a, torch.tensor([5, 5, 3, 3, 9, 9])) == pytest.approx(1.0)
    assert normalized_mutual_info(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])) == pytest.approx(0.0)


def test_nmi_of_well_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 8, generator=g) * 50
    labels = torch.arange(5).repeat_interleave(20)
    e = centres[labels] + torch.randn(100, 8, generator=g)
    assert nmi(e, labels) > 90.0
    assert len(torch.unique(kmeans(e, 5))) == 5
