"""Pairwise distances, defined exactly as the authors' code defines them."""
import torch


def pdist(e: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distance matrix of a set of embeddings.

    Args:
        e: (N, D) float embeddings.
        squared: return squared distances.
        eps: lower clamp of the squared distance before the square root.

    Returns:
        (N, N) distances, computed as |a|^2 + |b|^2 - 2ab clamped at ``eps``,
        square-rooted unless ``squared``, with the diagonal set to exactly 0.
    """
    sq_norm = e.pow(2).sum(dim=1)
    dist = (sq_norm.unsqueeze(1) + sq_norm.unsqueeze(0) - 2 * (e @ e.t())).clamp(min=eps)
    if not squared:
        dist = dist.sqrt()
    off_diagonal = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    return dist * off_diagonal


def off_diagonal(mat: torch.Tensor) -> torch.Tensor:
    """(N, N) matrix -> (N*(N-1),) entries off its diagonal, row-major."""
    mask = ~torch.eye(mat.shape[0], dtype=torch.bool, device=mat.device)
    return mat[mask]
