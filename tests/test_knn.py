"""metric.knn.nearest_neighbors: the items and order of a float64 brute force, in any tiling, from memory maps too."""
import numpy as np
import pytest
import torch

from errors import UserError
from metric.knn import nearest_neighbors


def brute(query, gallery, k, self_index=None):
    """(indices, float64 squared distances) of a stable sort of exact float64 difference-form distances."""
    q, g = np.asarray(query, np.float32).astype(np.float64), np.asarray(gallery, np.float32).astype(np.float64)
    dist = ((q[:, None, :] - g[None, :, :]) ** 2).sum(axis=2)
    if self_index is not None:
        rows = np.flatnonzero(self_index >= 0)
        dist[rows, self_index[rows]] = np.inf
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(dist, order, axis=1)


def check(query, gallery, k, exclude_self=False, **kw):
    idx, dist = nearest_neighbors(query, gallery, k, exclude_self, **kw)
    self_index = None
    if exclude_self is True:
        self_index = np.arange(len(query))
    elif exclude_self is not False:
        self_index = np.asarray(exclude_self)
    k_eff = min(k, len(gallery) - (self_index is not None and bool((self_index >= 0).any())))
    order, squared = brute(query, gallery, k_eff, self_index)
    assert idx.dtype == torch.int64 and dist.dtype == torch.float32 and idx.shape == (len(query), k_eff)
    assert np.array_equal(idx.numpy(), order)
    np.testing.assert_allclose(dist.numpy(), np.sqrt(squared), rtol=1e-6, atol=1e-30)
    return idx, dist


@pytest.mark.parametrize("budget", [6 * 30 * 7, 6 * 1000, 48 * 2**20])  # many tiny tiles, a few, one
def test_float_data_equals_brute_force_in_any_tiling(budget):
    g = torch.Generator().manual_seed(0)
    gallery, query = torch.randn(230, 12, generator=g), torch.randn(45, 12, generator=g)
    for k in (1, 5, 229, 230, 500):
        check(query, gallery, k, memory_budget=budget)


def test_ties_go_to_the_smaller_gallery_index():
    """Integer embeddings: many exactly equal distances between distinct items, and duplicated items."""
    g = torch.Generator().manual_seed(1)
    gallery = torch.randint(-2, 3, (300, 3), generator=g).float()
    query = torch.randint(-2, 3, (40, 3), generator=g).float()
    for k in (1, 7, 60):
        check(query, gallery, k, memory_budget=6 * 40 * 16)
    idx, _ = nearest_neighbors(torch.zeros(1, 2), torch.zeros(5, 2), 3)
    assert idx.tolist() == [[0, 1, 2]]


@pytest.mark.parametrize("offset", [300.0, 3000.0])
def test_exact_far_from_the_origin(offset):
    """Where plain float32 distances misorder neighbours (test_metrics shows it for these data), the result is exact."""
    g = torch.Generator().manual_seed(7)
    gallery = offset + torch.randn(400, 24, generator=g)
    query = gallery[:50] + 0.3 * torch.randn(50, 24, generator=g)
    check(query, gallery, 10, memory_budget=6 * 50 * 64)
    check(gallery, gallery, 10, True, memory_budget=6 * 64 * 64)


def test_exclude_self_for_the_gallery_itself_and_per_query_indices():
    g = torch.Generator().manual_seed(2)
    e = torch.randn(120, 8, generator=g)
    e[10] = e[11]  # a duplicate: item 11 is query 10's nearest at distance 0, and the other way round
    idx, dist = check(e, e, 4, True, memory_budget=6 * 16 * 32)
    assert idx[10, 0] == 11 and idx[11, 0] == 10 and dist[10, 0] == 0
    assert not (idx == torch.arange(120)[:, None]).any()
    query = torch.cat([e[:3], torch.randn(2, 8, generator=g)])
    check(query, e, 6, np.array([0, 1, 2, -1, -1]))


def test_memory_mapped_gallery_is_read_in_tiles(tmp_path, monkeypatch):
    from metric import knn
    g = torch.Generator().manual_seed(3)
    gallery = torch.randn(1000, 16, generator=g)
    np.save(tmp_path / "e.npy", gallery.numpy())
    mapped = np.load(tmp_path / "e.npy", mmap_mode="r")
    widths = []
    real = knn._gallery_tile

    def tile(gallery_, centre, c0, c1, buffer):
        assert isinstance(gallery_, np.memmap)
        widths.append(c1 - c0)
        return real(gallery_, centre, c0, c1, buffer)

    monkeypatch.setattr(knn, "_gallery_tile", tile)
    query = torch.randn(30, 16, generator=g)
    check(query, mapped, 10, memory_budget=6 * 30 * 100)
    assert len(widths) > 5 and max(widths) < len(gallery)  # never the whole gallery at once


def test_gallery_rows_are_laid_out_as_the_evaluation_augments_them():
    from metric.knn import augment_gallery
    from metric.tile_scan import augment, squared_norms
    rows = torch.randn(7, 5)
    centre = torch.randn(5)
    out = np.empty((7, 7), dtype=np.float32)
    sq = augment_gallery(rows.numpy(), centre.numpy(), out)
    centred = rows - centre
    assert torch.equal(torch.from_numpy(out), augment(centred, squared_norms(centred), "query"))
    assert np.array_equal(sq, squared_norms(centred).numpy())


def test_float64_inputs_are_taken_as_float32_and_numpy_works():
    g = np.random.default_rng(4)
    gallery, query = g.standard_normal((80, 6)), g.standard_normal((9, 6))
    idx, _ = nearest_neighbors(query, gallery, 5)
    assert np.array_equal(idx.numpy(), brute(query.astype(np.float32), gallery.astype(np.float32), 5)[0])


def test_empty_sets_and_bad_inputs():
    assert nearest_neighbors(torch.zeros(0, 4), torch.randn(5, 4), 3)[0].shape == (0, 3)
    assert nearest_neighbors(torch.randn(2, 4), torch.zeros(0, 4), 3)[0].shape == (2, 0)
    assert nearest_neighbors(torch.randn(1, 4), torch.randn(1, 4), 3, True)[0].shape == (1, 0)
    bad = torch.randn(6, 4)
    bad[4, 1] = float("nan")
    with pytest.raises(UserError, match="1 gallery embeddings .*index 4.* NaN"):
        nearest_neighbors(torch.randn(2, 4), bad, 2)
    with pytest.raises(UserError, match="1 query embeddings .*index 4"):
        nearest_neighbors(bad, torch.randn(6, 4), 2)
    with pytest.raises(UserError, match="overflow float32"):
        nearest_neighbors(torch.randn(2, 4), torch.full((3, 4), 3e19), 2)
    with pytest.raises(UserError, match="3 dimensions but gallery ones 4"):
        nearest_neighbors(torch.randn(2, 3), torch.randn(6, 4), 2)
    with pytest.raises(UserError, match="k must be at least 1"):
        nearest_neighbors(torch.randn(2, 4), torch.randn(6, 4), 0)
    with pytest.raises(UserError, match="query set to be the gallery"):
        nearest_neighbors(torch.randn(2, 4), torch.randn(6, 4), 2, True)
    with pytest.raises(UserError, match="one gallery index"):
        nearest_neighbors(torch.randn(2, 4), torch.randn(6, 4), 2, np.array([0, 6]))


def test_only_a_few_candidates_get_exact_distances(monkeypatch):
    """The bound prunes: about k candidates per query reach the float64 step, not the whole gallery."""
    import metric.knn as knn
    sizes = []
    real = knn._exact_top

    def counting(query, gallery, cand, k, pool):
        sizes.append(len(cand.rows))
        return real(query, gallery, cand, k, pool)

    monkeypatch.setattr(knn, "_exact_top", counting)
    g = torch.Generator().manual_seed(5)
    gallery, query = torch.randn(5000, 32, generator=g), torch.randn(64, 32, generator=g)
    check(query, gallery, 10, memory_budget=6 * 64 * 512)
    assert sum(sizes) <= 64 * 12
