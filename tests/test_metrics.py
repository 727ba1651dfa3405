"""Retrieval metrics: the reference vectors, and brute force on random data with ties."""
from pathlib import Path

import pytest
import torch

from metric.map_at_r import map_at_r, map_at_r_query_gallery
import metric.kmeans as kmeans_module
from metric.kmeans import kmeans
from metric.nmi import nmi, normalized_mutual_info
from metric.ranking import memory_budget_for, tile_shape
from metric.recall import recall_at_k, recall_at_k_query_gallery
from metric.retrieval import retrieval_metrics
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


def _exact_brute(query, ql, gallery, gl, ks, exclude_self):
    """Recall@K and MAP@R by a stable sort of exact float64 difference-form distances."""
    dist = (query.double()[:, None, :] - gallery.double()[None, :, :]).pow(2).sum(dim=2)
    if exclude_self:
        dist.fill_diagonal_(float("inf"))
    order = torch.sort(dist, dim=1, stable=True).indices
    if exclude_self:
        order = order[:, :-1]  # the query itself, at +inf, sorts last
    hit = gl[order] == ql[:, None]
    first = torch.where(hit.any(1), hit.double().argmax(1), len(gallery))
    recall = [100.0 * float((first < k).double().mean()) for k in ks]
    r = hit.sum(1)
    aps, rps = [], []
    for i in range(len(query)):
        if r[i] == 0:
            continue
        rel = hit[i, :r[i]].double()
        precision = rel.cumsum(0) / torch.arange(1, int(r[i]) + 1)
        aps.append(float((precision * rel).sum() / r[i]))
        rps.append(float(rel.sum() / r[i]))
    return recall, {"MAP@R": 100 * sum(aps) / len(aps), "R-Precision": 100 * sum(rps) / len(rps)}


@pytest.mark.parametrize("offset", [30.0, 300.0, 3000.0])
def test_ranks_are_exact_far_from_the_origin(offset):
    """Embeddings far from the origin relative to their spread: the float32 key |g|^2 - 2 q.g alone
    misranks many pairs; the settled ranks equal those of exact float64 distances."""
    g = torch.Generator().manual_seed(7)
    e = offset + torch.randn(400, 24, generator=g)
    labels = torch.randint(0, 60, (400,), generator=g)
    ks = [1, 2, 4, 8, 50]
    got = retrieval_metrics(e, labels, None, None, ks, ("recall", "map_r"), memory_budget=60_000)
    recall, mapr = _exact_brute(e, labels, e, labels, ks, True)
    assert [got[f"Recall@{k}"] for k in ks] == pytest.approx(recall, abs=1e-9)
    assert {k: got[k] for k in mapr} == pytest.approx(mapr, abs=1e-9)
    q, ql = e[:150] + torch.randn(150, 24, generator=g) * 0.5, labels[:150]
    got = retrieval_metrics(q, ql, e[150:], labels[150:], ks, ("recall", "map_r"), memory_budget=60_000)
    recall, mapr = _exact_brute(q, ql, e[150:], labels[150:], ks, False)
    assert [got[f"Recall@{k}"] for k in ks] == pytest.approx(recall, abs=1e-9)
    assert {k: got[k] for k in mapr} == pytest.approx(mapr, abs=1e-9)


def test_float32_key_alone_would_misrank_far_from_the_origin():
    """The data of the test above really needs the settling: the plain float32 key changes rankings."""
    g = torch.Generator().manual_seed(7)
    e = 3000.0 + torch.randn(400, 24, generator=g)
    key = e.pow(2).sum(1)[None, :] - 2 * e @ e.t()
    exact = (e.double()[:, None] - e.double()[None]).pow(2).sum(2)
    assert not torch.equal(key.argsort(dim=1, stable=True), exact.argsort(dim=1, stable=True))


def test_one_pass_serves_recall_and_map_r(monkeypatch):
    """With both metrics requested every distance tile is computed once, and both equal their separate values."""
    import metric.ranking as ranking
    e, labels = _integer_data(200, 4, 20, 5)
    products = []
    real_products = ranking.products

    def counting_products(query, gallery, out):
        products.append((len(query), len(gallery)))
        return real_products(query, gallery, out)

    monkeypatch.setattr(ranking, "products", counting_products)
    both = retrieval_metrics(e, labels, None, None, [1, 5], ("recall", "map_r"), memory_budget=20_000)
    rows, _ = tile_shape(200, 200, 20_000)
    # symmetric: each block of rows meets only the columns from its own on, so about half of the 200 x 200 keys
    expected = sum(min(rows, 200 - lo) * (200 - lo) for lo in range(0, 200, rows))
    assert sum(r * c for r, c in products) == expected < 0.6 * 200 * 200
    monkeypatch.undo()
    assert [both["Recall@1"], both["Recall@5"]] == recall_at_k(e, labels, [1, 5], memory_budget=20_000)
    assert {k: both[k] for k in ("MAP@R", "R-Precision")} == map_at_r(e, labels, memory_budget=20_000)


def test_queries_leave_the_product_once_past_the_largest_k(monkeypatch):
    """Query->gallery over many column tiles: a query whose nearest positive is already past the largest K
    (or that has no positive) leaves the product, and every metric still equals brute force."""
    import metric.ranking as ranking
    g = torch.Generator().manual_seed(3)
    q, g_emb = torch.randn(300, 16, generator=g), torch.randn(1500, 16, generator=g)
    ql, gl = torch.randint(0, 300, (300,), generator=g), torch.randint(0, 300, (1500,), generator=g)
    ql[:10] = 99  # no positive in the gallery at all
    entries = []
    real_products = ranking.products
    monkeypatch.setattr(ranking, "products",
                        lambda a, b, out: (entries.append(len(a) * len(b)), real_products(a, b, out)))
    ks = [1, 2, 3]
    assert tile_shape(300, 1500, 6 * 512 * 8) == (8, 512)  # three column tiles per block of rows
    got = retrieval_metrics(q, ql, g_emb, gl, ks, ("recall", "map_r"), memory_budget=6 * 512 * 8)
    recall, mapr = _exact_brute(q, ql, g_emb, gl, ks, False)
    assert [got[f"Recall@{k}"] for k in ks] == pytest.approx(recall, abs=1e-9)
    assert {k: got[k] for k in mapr} == pytest.approx(mapr, abs=1e-9)
    assert sum(entries) < 0.6 * 300 * 1500  # most queries stopped early


def test_symmetric_tiles_with_many_blocks_and_positives():
    """Self-retrieval in many row blocks and column tiles (each off-diagonal tile counted for rows and
    columns), with about 12 positives per query and exact ties: equal to brute force."""
    e, labels = _integer_data(700, 6, 60, 11)
    ks = [1, 3, 10, 100]
    assert tile_shape(700, 700, 6 * 512 * 8) == (8, 512)
    got = retrieval_metrics(e, labels, None, None, ks, ("recall", "map_r"), memory_budget=6 * 512 * 8)
    recall, mapr = _exact_brute(e, labels, e, labels, ks, True)
    assert [got[f"Recall@{k}"] for k in ks] == pytest.approx(recall, abs=1e-9)
    assert {k: got[k] for k in mapr} == pytest.approx(mapr, abs=1e-9)


@pytest.mark.parametrize("axis", [0, 1])
def test_host_and_device_passes_agree(axis):
    """The numpy passes (CPU) and the torch passes (accelerators) count and list the same entries."""
    from metric import tile_scan
    g = torch.Generator().manual_seed(5)
    dist = torch.randint(0, 20, (37, 53), generator=g).float()
    shape = (37, 1) if axis == 1 else (1, 53)
    below = torch.randint(0, 20, shape, generator=g).float()
    above = below + torch.randint(0, 3, shape, generator=g).float()
    masks = [torch.empty(37, 53, dtype=torch.bool) for _ in range(4)]
    host = tile_scan._compare_host(dist.numpy(), below.numpy(), above.numpy(), masks[0].numpy(), masks[1].numpy(), axis)
    device = tile_scan._compare_device(dist, below, above, masks[2], masks[3], axis)
    assert torch.equal(host[0].long(), device[0].long()) and torch.equal(host[1], device[1])
    assert torch.equal(host[0].long(), (dist < below).sum(dim=axis))
    window = ((dist >= below) & (dist <= above)).view(-1).nonzero().squeeze(1)
    assert torch.equal(host[1], window) and len(window) > 0


def test_tiles_follow_the_budget_and_cuda_free_memory():
    """Block sizing: on the CPU a cache-sized tile; on CUDA a quarter of the (here faked) free device memory."""
    cpu = memory_budget_for(torch.device("cpu"))
    rows, cols = tile_shape(60502, 60502, cpu)
    assert rows == 1024 and rows * cols * 6 <= cpu
    cuda = memory_budget_for(torch.device("cuda"), free_bytes=40 * 2**30)
    assert cuda == 10 * 2**30
    rows, cols = tile_shape(60502, 60502, cuda)
    assert cols == 60502 and rows == 8192 and rows * cols * 6 <= cuda  # whole rows, many at a time
    rows, cols = tile_shape(60502, 60502, memory_budget_for(torch.device("cuda"), free_bytes=2 * 2**30))
    assert cols == 60502 and 1024 <= rows < 8192
    assert tile_shape(10, 7, 1) == (1, 1) and tile_shape(3, 5, 2**30) == (3, 5)
    assert memory_budget_for(torch.device("cuda"), free_bytes=0) == cpu  # never below the CPU tile


def _brute_nmi(a: list, b: list) -> float:
    """NMI with the arithmetic-mean normaliser from the contingency table, in plain Python."""
    import math
    n = len(a)
    joint, pa, pb = {}, {}, {}
    for x, y in zip(a, b):
        joint[x, y] = joint.get((x, y), 0) + 1
        pa[x] = pa.get(x, 0) + 1
        pb[y] = pb.get(y, 0) + 1
    mi = sum(c / n * math.log(c * n / (pa[x] * pb[y])) for (x, y), c in joint.items())
    ha = -sum(c / n * math.log(c / n) for c in pa.values())
    hb = -sum(c / n * math.log(c / n) for c in pb.values())
    return mi / ((ha + hb) / 2)


@pytest.mark.parametrize("seed", [0, 1])
def test_nmi_equals_brute_force_on_small_labelings(seed):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randint(0, 7, (200,), generator=g), torch.randint(0, 5, (200,), generator=g)
    b[:100] = a[:100]  # partly dependent
    assert normalized_mutual_info(a, b) == pytest.approx(_brute_nmi(a.tolist(), b.tolist()), abs=1e-12)


def test_kmeans_is_deterministic_and_a_lloyd_fixed_point():
    """Same seed, same clusters; at convergence each point sits with its nearest centroid (brute force)."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(150, 6, generator=g) + 4 * torch.randn(30, 6, generator=g).repeat_interleave(5, 0)
    first = kmeans(x, 30, iterations=500, seed=3)
    assert torch.equal(first, kmeans(x, 30, iterations=500, seed=3))
    assert len(torch.unique(first)) == 30
    centroids = torch.stack([x[first == c].double().mean(0) for c in range(30)])
    brute = (x.double()[:, None] - centroids[None]).pow(2).sum(2).argmin(1)
    assert (brute == first).double().mean() > 0.99  # Lloyd stops at < 0.1% changes
    labels = torch.arange(30).repeat_interleave(5)
    assert nmi(x, labels, seed=3) == nmi(x, labels, seed=3)


def test_seeding_draws_many_per_round_and_covers_duplicates():
    """k above the round count draws several centroids per round; fewer distinct points than k still gives k."""
    x = torch.zeros(300, 3)
    x[:100] = torch.randn(100, 3, generator=torch.Generator().manual_seed(0))
    assign = kmeans(x, 150, iterations=3, seed=0)  # 101 distinct points for 150 clusters
    assert assign.shape == (300,) and len(torch.unique(assign[:100])) == 100


def test_seeding_rounds_choose_as_sequential_greedy_kmeans_plus_plus(monkeypatch):
    """A round's sparse pairs (in several blocks) give the choices of dense sequential greedy k-means++:
    each group keeps the candidate lowering the total squared distance most given the choices before it."""
    from metric.tile_scan import augment, squared_norms
    monkeypatch.setattr(kmeans_module, "_TRIAL_BLOCK_BYTES", 4 * 12 * 13)  # 13 points per block
    g = torch.Generator().manual_seed(5)
    x = torch.randn(100, 4, generator=g)
    x[7] = x[3]  # a duplicate point
    candidates = torch.randperm(100, generator=g)[:12]  # 4 groups of 3 trials
    min_sq = 2 * torch.rand(100, generator=g)
    claims = kmeans_module._claims(augment(x, squared_norms(x), "gallery"), x[candidates],
                                   squared_norms(x[candidates]), min_sq)
    ours_sq = min_sq.clone()
    chosen = kmeans_module._greedy(claims, candidates, 3, ours_sq)
    brute_sq, expected = min_sq.double(), []
    dist = (x.double()[:, None] - x[candidates].double()[None]).pow(2).sum(2)  # (100, 12)
    for group in range(4):
        cols = dist[:, 3 * group:3 * group + 3]
        best = int((brute_sq[:, None] - cols).clamp(min=0).sum(0).argmax())
        expected.append(int(candidates[3 * group + best]))
        brute_sq = torch.minimum(brute_sq, cols[:, best])
        brute_sq[expected[-1]] = 0
    assert chosen == expected
    assert torch.allclose(ours_sq.double(), brute_sq, atol=1e-5)


def test_kmeans_in_high_dimension_is_deterministic_and_finds_the_clusters():
    """Seeding and Lloyd on all 300 dimensions: the same clusters for a seed, close to the true ones."""
    g = torch.Generator().manual_seed(6)
    labels = torch.arange(20).repeat_interleave(6)
    x = 3 * torch.randn(20, 300, generator=g)[labels] + torch.randn(120, 300, generator=g)
    first = kmeans(x, 20, seed=1)
    assert torch.equal(first, kmeans(x, 20, seed=1))
    assert normalized_mutual_info(first, labels) > 0.9


def test_empty_sets_and_non_finite_embeddings():
    """No queries, an empty gallery or a single item give defined metrics; NaN embeddings are refused in one line."""
    from errors import UserError
    none = torch.zeros(0, dtype=torch.long)
    e, labels = torch.randn(3, 4), torch.zeros(3, dtype=torch.long)
    assert retrieval_metrics(torch.randn(0, 4), none, None, None, [1], ("recall", "map_r")) == {
        "Recall@1": 0.0, "MAP@R": 0.0, "R-Precision": 0.0}
    assert retrieval_metrics(e, labels, torch.randn(0, 4), none, [1], ("recall", "map_r"))["Recall@1"] == 0.0
    assert retrieval_metrics(e[:1], labels[:1], None, None, [1], ("recall",))["Recall@1"] == 0.0
    e[1, 2] = float("nan")
    with pytest.raises(UserError, match="1 of 3 query embeddings are NaN or infinite"):
        retrieval_metrics(e, labels, None, None, [1])


def test_far_from_the_origin_settles_few_pairs(monkeypatch):
    """Centring on the gallery's mean keeps the float32 error at the scale of the spread: embeddings at
    1e4 from the origin settle about as few pairs in float64 as the same ones at the origin."""
    import metric.ranking as ranking
    g = torch.Generator().manual_seed(11)
    e, labels = torch.randn(500, 16, generator=g), torch.randint(0, 50, (500,), generator=g)
    settled = []
    real = ranking._exact_sq_dist
    monkeypatch.setattr(ranking, "_exact_sq_dist",
                        lambda q, g_, r, c, pool: (settled.append(len(r)), real(q, g_, r, c, pool))[1])
    for offset in (0.0, 1e4):
        got = retrieval_metrics(e + offset, labels, None, None, [1, 4], ("recall", "map_r"))
        recall, mapr = _exact_brute(e + offset, labels, e + offset, labels, [1, 4], True)
        assert [got["Recall@1"], got["Recall@4"]] == pytest.approx(recall, abs=1e-9)
        assert got["MAP@R"] == pytest.approx(mapr["MAP@R"], abs=1e-9)
    at_origin, far = sum(settled[:len(settled) // 2]), sum(settled[len(settled) // 2:])
    assert far < 3 * at_origin + 5_000  # without centring nearly all 250,000 pairs fall in the windows


def test_bad_inputs_are_one_line_errors_and_odd_ones_work():
    """Label counts that do not match, and squared distances past float32, are UserErrors; bool labels,
    a metric name given as a string and K given as a generator work."""
    from errors import UserError
    e, labels = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(UserError, match="6 gallery embeddings but 3 labels"):
        retrieval_metrics(e, labels, e, labels[:3], [1])
    with pytest.raises(UserError, match="overflow float32"):
        retrieval_metrics(e * 1e20, labels, None, None, [1])
    expected = retrieval_metrics(e, labels, None, None, [1, 2])
    assert retrieval_metrics(e, labels, None, None, (k for k in [1, 2]), "recall") == expected
    as_int = retrieval_metrics(e, (labels == 0).long(), None, None, [1])
    assert retrieval_metrics(e, labels == 0, None, None, [1]) == as_int


def test_self_retrieval_when_the_tile_is_wider_in_rows_than_columns():
    """A budget that gives tiles of fewer columns than rows: the diagonal (rows x rows) tile still fits."""
    assert tile_shape(1500, 1500, 6_000_000)[1] < tile_shape(1500, 1500, 6_000_000)[0]
    e, labels = _integer_data(1500, 3, 100, 4)
    got = retrieval_metrics(e, labels, None, None, [1, 4], memory_budget=6_000_000)
    assert [got["Recall@1"], got["Recall@4"]] == pytest.approx(_exact_brute(e, labels, e, labels, [1, 4], True)[0])


def test_cuda_products_are_ieee_float32_whichever_api_set_tf32():
    """The metric turns TF32 off for its products and restores the user's setting, through the legacy
    ``set_float32_matmul_precision`` or the newer ``fp32_precision`` API (a fresh process for the latter,
    since torch refuses to mix the two)."""
    import subprocess
    import sys
    from metric.ranking import _ieee_products
    cuda = torch.device("cuda")
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        with _ieee_products(cuda):
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(saved)
    code = ("import torch; from metric.ranking import _ieee_products; m = torch.backends.cuda.matmul\n"
            "m.fp32_precision = 'tf32'\nwith _ieee_products(torch.device('cuda')):\n"
            "    assert m.fp32_precision == 'ieee'\nassert m.fp32_precision == 'tf32'\nprint('ok')")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(root))
    assert out.stdout.strip() == "ok", out.stderr
