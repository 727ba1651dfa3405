"""Embedding heads: a linear layer on top of a backbone."""
import torch
import torch.nn.functional as F
from torch import nn

from metric.distance import off_diagonal, pdist


class Embedding(nn.Module):
    """Linear head without L2 normalisation ("Learning without L2 Norm", Sec. 3.1).

    Training mode: (N, D) output divided by the batch's mean off-diagonal
    pairwise distance (not detached). Eval mode: the plain linear output.
    """

    def __init__(self, base: nn.Module, feature_size: int = 512, embedding_size: int = 128):
        super().__init__()
        self.base = base
        self.linear = nn.Linear(feature_size, embedding_size)

    def finish(self, embedding: torch.Tensor) -> torch.Tensor:
        """(N, D) linear outputs of a whole batch -> embeddings; training mode divides by their mean distance."""
        if not self.training:
            return embedding
        with torch.autocast(embedding.device.type, enabled=False):  # distances stay float32 under --amp
            embedding = embedding.float()
            return embedding / off_diagonal(pdist(embedding)).mean()

    def head(self, feat: torch.Tensor) -> torch.Tensor:
        """(N, feature_size) features -> (N, embedding_size) embeddings."""
        return self.finish(self.linear(feat))

    def forward(self, x: torch.Tensor, finish: bool = True) -> torch.Tensor:
        """(N, 3, H, W) images -> (N, D) embeddings; ``finish=False`` gives the linear outputs, to be
        finished on the whole batch gathered from every process."""
        out = self.linear(self.base(x).flatten(1))
        return self.finish(out) if finish else out


class L2NormEmbedding(Embedding):
    """Linear head whose output is always L2-normalised."""

    def finish(self, embedding: torch.Tensor) -> torch.Tensor:
        with torch.autocast(embedding.device.type, enabled=False):  # normalised in float32 under --amp
            return F.normalize(embedding.float(), dim=1, p=2)
