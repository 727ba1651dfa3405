"""Triplet margin loss over sampled triplets."""
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from loss.sampler import DistanceWeighted, Triplets

Sampler = Callable[[torch.Tensor, torch.Tensor], Triplets]


class TripletLoss(nn.Module):
    """Mean of ``F.triplet_margin_loss`` over the triplets the sampler returns.

    Unlike the original, the sampler is used as given: its distance function is
    not replaced, so every sampler works.
    """

    def __init__(self, margin: float = 0.2, sampler: Sampler | None = None):
        super().__init__()
        self.margin = margin
        self.sampler = sampler if sampler is not None else DistanceWeighted()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, D) embeddings, (N,) labels -> scalar loss; 0 (with a graph) when the batch has no triplet."""
        anchor_idx, pos_idx, neg_idx = self.sampler(embeddings, labels)
        if len(anchor_idx) == 0:
            return embeddings.sum() * 0.0
        return F.triplet_margin_loss(embeddings[anchor_idx], embeddings[pos_idx],
                                     embeddings[neg_idx], margin=self.margin)
