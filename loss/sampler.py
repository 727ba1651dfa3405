"""Triplet samplers: (embeddings, labels) -> (anchor_idx, pos_idx, neg_idx).

Every sampler takes one row per (anchor, positive) pair of the batch, in
row-major order of the positive mask, and picks negatives for it. The
deterministic ones (hard, semi-hard) use Euclidean distances unless another
``dist_func`` is given.
"""
from typing import Callable, Tuple

import torch
import torch.nn.functional as F

from metric.distance import pdist

Triplets = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]
DistFunc = Callable[[torch.Tensor], torch.Tensor]
_BIG = 1e9


def pos_neg_masks(labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(N,) labels -> (N, N) bool masks of positive pairs (same label, not self) and negative pairs."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    not_self = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & not_self, ~same


def positive_pairs(labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(N,) labels -> (P,) anchor and (P,) positive indices of every ordered positive pair."""
    pos_mask, _ = pos_neg_masks(labels)
    pairs = pos_mask.nonzero()
    return pairs[:, 0], pairs[:, 1]


def euclidean(e: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, N) Euclidean (not squared) distances."""
    return pdist(e, squared=False)


class DistanceWeighted:
    """Distance-weighted negative sampling (Wu et al., 2017) on L2-normalised embeddings."""

    def __init__(self, cut_off: float = 0.5, nonzero_loss_cutoff: float = 1.4,
                 generator: torch.Generator | None = None):
        self.cut_off = cut_off
        self.nonzero_loss_cutoff = nonzero_loss_cutoff
        self.generator = generator

    @torch.no_grad()
    def weights(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, D), (N,) -> (P, N) float32 rows, one per positive pair, each summing to 1.

        Row i is proportional to the inverse of the density of distances on the
        unit sphere of dimension D, restricted to negatives closer than
        ``nonzero_loss_cutoff``; a row with no such negative is uniform over the
        anchor's negatives.
        """
        e = F.normalize(embeddings.float(), dim=1, p=2)
        dim = e.shape[1]
        _, neg_mask = pos_neg_masks(labels)
        eye = torch.eye(len(e), dtype=e.dtype, device=e.device)
        dist = (pdist(e, squared=True) + eye).sqrt().clamp(min=self.cut_off)
        log_w = (2.0 - dim) * dist.log() - ((dim - 3.0) / 2.0) * (1.0 - 0.25 * dist * dist).log()
        w = (log_w - log_w.max(dim=1, keepdim=True)[0]).exp()
        w = w * (neg_mask & (dist < self.nonzero_loss_cutoff)).float()
        w = w + ((w.sum(dim=1, keepdim=True) == 0) & neg_mask).float()
        w = w / w.sum(dim=1, keepdim=True)
        anchor_idx, _ = positive_pairs(labels)
        return w[anchor_idx]

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        anchor_idx, pos_idx = positive_pairs(labels)
        w = self.weights(embeddings, labels)
        neg_idx = torch.multinomial(w, 1, generator=self.generator).squeeze(1)
        return anchor_idx, pos_idx, neg_idx


class HardNegative:
    """The closest negative of each anchor."""

    def __init__(self, dist_func: DistFunc = euclidean):
        self.dist_func = dist_func

    @torch.no_grad()
    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        anchor_idx, pos_idx = positive_pairs(labels)
        _, neg_mask = pos_neg_masks(labels)
        neg_dist = self.dist_func(embeddings) * neg_mask.float()
        neg_dist[neg_dist <= 0] = _BIG
        return anchor_idx, pos_idx, neg_dist.argmin(dim=1)[anchor_idx]


class SemiHardNegative:
    """The closest negative farther than the positive; if none, the farthest negative."""

    def __init__(self, dist_func: DistFunc = euclidean):
        self.dist_func = dist_func

    @torch.no_grad()
    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        anchor_idx, pos_idx = positive_pairs(labels)
        _, neg_mask = pos_neg_masks(labels)
        dist = self.dist_func(embeddings)
        neg_rows = (dist * neg_mask.float())[anchor_idx]
        row_neg_mask = neg_mask[anchor_idx]
        farther = (neg_rows > dist[anchor_idx, pos_idx].unsqueeze(1)) & row_neg_mask
        none_farther = (farther.sum(dim=1) == 0).unsqueeze(1) & row_neg_mask
        score = farther.float() * neg_rows - none_farther.float() * neg_rows
        score[score == 0] = _BIG
        return anchor_idx, pos_idx, score.argmin(dim=1)


class RandomNegative:
    """A negative drawn uniformly for each (anchor, positive) pair."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    @torch.no_grad()
    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        anchor_idx, pos_idx = positive_pairs(labels)
        _, neg_mask = pos_neg_masks(labels)
        neg_idx = torch.multinomial(neg_mask.float()[anchor_idx], 1, generator=self.generator)
        return anchor_idx, pos_idx, neg_idx.squeeze(1)


class AllPairs:
    """Every (anchor, positive, negative) triplet of the batch."""

    @torch.no_grad()
    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        pos_mask, neg_mask = pos_neg_masks(labels)
        triplets = (pos_mask.unsqueeze(2) & neg_mask.unsqueeze(1)).nonzero()
        return triplets[:, 0], triplets[:, 1], triplets[:, 2]


SAMPLERS = {
    "distance": DistanceWeighted,
    "hard": HardNegative,
    "semihard": SemiHardNegative,
    "random": RandomNegative,
    "all": AllPairs,
}


def build_sampler(name: str, generator: torch.Generator | None = None):
    """The triplet sampler ``name``; the random ones (distance, random) draw from ``generator``."""
    cls = SAMPLERS[name]
    return cls(generator=generator) if cls in (DistanceWeighted, RandomNegative) else cls()
