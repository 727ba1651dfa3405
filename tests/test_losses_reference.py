"""pdist, MDR, the heads and the samplers against the authors' reference vectors."""
import pytest
import torch
import torch.nn.functional as F

from loss.mdr import MDRLoss
from loss.sampler import AllPairs, DistanceWeighted, HardNegative, RandomNegative, SemiHardNegative
from loss.triplet import TripletLoss
from metric.distance import pdist
from model.embedding import Embedding, L2NormEmbedding
from reference import assert_close, load

LOSSES = load("losses")


def test_pdist_matches_reference():
    ref = LOSSES["pdist"]
    assert_close(pdist(ref["e"]), ref["dist"])
    assert_close(pdist(ref["e"], squared=True), ref["dist_squared"])
    assert torch.all(pdist(ref["e"]).diagonal() == 0)


def test_mdr_steps_match_reference():
    ref = LOSSES["mdr"]
    mdr = MDRLoss(levels=ref["levels"].tolist(), momentum=ref["momentum"])
    for step in ref["steps"]:
        e = step["embeddings"].clone().requires_grad_(True)
        mdr.zero_grad()
        loss = mdr(e)
        loss.backward()
        assert_close(loss.detach(), step["loss"])
        assert_close(e.grad, step["grad_embeddings"], rtol=1e-4, atol=1e-6)
        assert_close(mdr.levels.grad, step["grad_levels"], rtol=1e-4, atol=1e-6)
        assert_close(mdr.momented_mean, step["momented_mean"])
        assert_close(mdr.momented_std, step["momented_std"])
    assert bool(mdr.initialized)


def test_mdr_state_is_in_state_dict():
    mdr = MDRLoss()
    mdr(torch.randn(8, 4))
    state = mdr.state_dict()
    assert {"levels", "momented_mean", "momented_std", "initialized"} <= set(state)
    fresh = MDRLoss()
    fresh.load_state_dict(state)
    assert bool(fresh.initialized) and fresh.momented_mean == mdr.momented_mean


def test_mdr_regularizer_total_matches_reference():
    ref = LOSSES["mdr_regularizer"]
    mdr = MDRLoss(levels=ref["levels"].tolist())
    e = ref["embeddings"].clone().requires_grad_(True)
    total = mdr.regularizer(e, ref["lambda"], ref["nu"])
    total.backward()
    assert_close(total.detach(), ref["total"])
    assert_close(e.grad, ref["grad_embeddings"], rtol=1e-4, atol=1e-6)
    assert_close(mdr.levels.grad, ref["grad_levels"], rtol=1e-4, atol=1e-6)


def _head(cls):
    ref = LOSSES["embedding_head"]
    head = cls(torch.nn.Identity(), feature_size=ref["weight"].shape[1], embedding_size=ref["weight"].shape[0])
    with torch.no_grad():
        head.linear.weight.copy_(ref["weight"])
        head.linear.bias.copy_(ref["bias"])
    return head, ref


def test_embedding_head_train_eval_and_gradient():
    head, ref = _head(Embedding)
    out = head.train()(ref["features"])
    out.backward(ref["upstream_grad"])
    assert_close(out.detach(), ref["train_out"])
    assert_close(head.linear.weight.grad, ref["train_grad_weight"], rtol=1e-4, atol=1e-5)
    assert_close(head.eval()(ref["features"]), ref["eval_out"])


def test_l2norm_head_normalises_in_both_modes():
    head, ref = _head(L2NormEmbedding)
    assert_close(head.train()(ref["features"]), ref["l2norm_out"])
    assert_close(head.eval()(ref["features"]), ref["l2norm_out"])


@pytest.mark.parametrize("case", range(4))
def test_distance_weighted_rows_and_triplet_loss(case):
    ref = LOSSES["distance_weighted"]["cases"][case]
    sampler = DistanceWeighted(cut_off=0.5, nonzero_loss_cutoff=1.4)
    w = sampler.weights(ref["embeddings"], ref["labels"])
    assert_close(w, ref["weights"])
    anchor_idx, pos_idx, neg_idx = sampler(ref["embeddings"], ref["labels"])
    assert torch.equal(anchor_idx, ref["anchor_idx"]) and torch.equal(pos_idx, ref["pos_idx"])
    assert torch.all(w.gather(1, neg_idx[:, None]) > 0), "a negative was drawn outside its row's support"

    fixed = lambda e, l: (ref["anchor_idx"], ref["pos_idx"], ref["argmax_neg_idx"])  # noqa: E731
    assert torch.equal(w.argmax(dim=1), ref["argmax_neg_idx"])
    e = ref["embeddings"].clone().requires_grad_(True)
    loss = TripletLoss(margin=0.2, sampler=fixed)(e, ref["labels"])
    loss.backward()
    assert_close(loss.detach(), ref["triplet_loss_with_argmax_negatives"])
    assert_close(e.grad, ref["triplet_grad_with_argmax_negatives"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name,cls", [("hard_negative", HardNegative), ("semihard_negative", SemiHardNegative)])
def test_deterministic_samplers_match_reference(name, cls):
    ref = LOSSES[name]
    anchor_idx, pos_idx, neg_idx = cls()(ref["embeddings"], ref["labels"])
    assert torch.equal(anchor_idx, ref["anchor_idx"])
    assert torch.equal(pos_idx, ref["pos_idx"])
    assert torch.equal(neg_idx, ref["neg_idx"])


@pytest.mark.parametrize("sampler", [DistanceWeighted(), HardNegative(), SemiHardNegative(),
                                     RandomNegative(), AllPairs()])
def test_every_sampler_works_inside_triplet_loss(sampler):
    torch.manual_seed(0)
    e = torch.randn(12, 6, requires_grad=True)
    labels = torch.arange(4).repeat_interleave(3)
    loss = TripletLoss(sampler=sampler)(e, labels)
    loss.backward()
    anchor_idx, pos_idx, neg_idx = sampler(e, labels)
    assert torch.all(labels[anchor_idx] == labels[pos_idx]) and torch.all(anchor_idx != pos_idx)
    assert torch.all(labels[anchor_idx] != labels[neg_idx])
    assert torch.isfinite(loss) and e.grad.abs().sum() > 0


def test_all_pairs_enumerates_every_triplet():
    labels = torch.tensor([0, 0, 1, 1, 2])
    a, p, n = AllPairs()(torch.randn(5, 3), labels)
    assert len(a) == 4 * 3  # 4 ordered positive pairs, 3 negatives each
    assert len({(int(x), int(y), int(z)) for x, y, z in zip(a, p, n)}) == 12


def test_triplet_loss_is_mean_of_margin_loss():
    e = torch.randn(6, 4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    a, p, n = HardNegative()(e, labels)
    expected = F.relu((e[a] - e[p]).norm(dim=1) - (e[a] - e[n]).norm(dim=1) + 0.2).mean()
    assert_close(TripletLoss(sampler=HardNegative())(e, labels), expected, rtol=1e-4, atol=1e-5)
