"""Multi-level Distance Regularization (Kim & Park, AAAI 2021)."""
from typing import Sequence

import torch
from torch import nn

from metric.distance import off_diagonal, pdist

LEVELS = (-3.0, 0.0, 3.0)  # the authors' initial levels, in units of the running std of the distances
MOMENTUM = 0.9  # the authors' momentum of the running mean and std
SAMPLE = 1000  # eval embeddings whose distances mdr_distance_sample draws


def level_names(count: int) -> list[str]:
    """The names of MDR's levels everywhere (TensorBoard tags, plots, printed lines): level_1, level_2, ...,
    in the order of ``MDRLoss.levels`` and of a metrics.jsonl record's "levels" list."""
    return [f"level_{i}" for i in range(1, count + 1)]


class MDRLoss(nn.Module):
    """Pulls every normalised pairwise distance towards its nearest learnable level.

    The batch statistics are the mean and the unbiased std of the full (N, N)
    distance matrix, zero diagonal included, as in the authors' code. The first
    batch initialises the running values; later ones update them as
    ``m = momentum * m + (1 - momentum) * batch``. Off-diagonal distances are
    normalised with the running values after the update.

    Buffers ``momented_mean``, ``momented_std`` and ``initialized`` are saved in
    the state_dict, so a resumed run continues with the same statistics.
    """

    def __init__(self, levels: Sequence[float] = LEVELS, momentum: float = MOMENTUM):
        super().__init__()
        self.levels = nn.Parameter(torch.tensor(list(levels), dtype=torch.float32))
        self.momentum = momentum
        self.register_buffer("momented_mean", torch.zeros(()))
        self.register_buffer("momented_std", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def _update_statistics(self, dist: torch.Tensor) -> None:
        mean, std = dist.mean().float(), dist.std().float()
        if not bool(self.initialized):
            self.momented_mean.copy_(mean)
            self.momented_std.copy_(std)
            self.initialized.fill_(True)
            return
        self.momented_mean.mul_(self.momentum).add_((1 - self.momentum) * mean)
        self.momented_std.mul_(self.momentum).add_((1 - self.momentum) * std)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, D) embeddings -> scalar loss: mean over off-diagonal pairs of min_k |d_hat - level_k|.

        In training mode (the default, as in the original) the running statistics
        are updated first; in eval mode they are only read.
        """
        dist = pdist(embeddings.float())
        if self.training:
            self._update_statistics(dist)
        normalized = (off_diagonal(dist) - self.momented_mean) / self.momented_std
        return (normalized.unsqueeze(0) - self.levels.unsqueeze(1)).abs().min(dim=0)[0].mean()

    def level_penalty(self) -> torch.Tensor:
        """Scalar sum of squared levels: the nu term of the paper."""
        return self.levels.pow(2).sum()

    def regularizer(self, embeddings: torch.Tensor, lambda_mdr: float, nu_mdr: float) -> torch.Tensor:
        """Scalar ``lambda_mdr * MDR(embeddings) + nu_mdr * sum(levels ** 2)``."""
        return lambda_mdr * self(embeddings) + nu_mdr * self.level_penalty()


def mdr_distance_sample(embeddings: torch.Tensor, momented_mean: float, momented_std: float,
                        mean_scaled: bool, seed: int = 0) -> torch.Tensor:
    """Normalised off-diagonal distances, as MDR sees them, of up to SAMPLE of the (N, D) eval
    embeddings: (S * (S - 1),) float32 in running standard deviations, S = min(N, SAMPLE).

    ``mean_scaled``: the head divides training outputs by their mean pairwise
    distance (the default head, not --l2norm), so the sample is scaled the same
    way before the running mean and std are applied.
    """
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(embeddings), generator=g)[:SAMPLE]
    dist = off_diagonal(pdist(embeddings.float().cpu()[pick]))
    if mean_scaled:
        dist = dist / dist.mean()
    return (dist - momented_mean) / momented_std
