"""Synthetic embeddings shaped like a trained network's test embeddings, for the benches and the tests.

Trained test embeddings are not well-separated blobs: there are many classes,
their centres lie close together relative to the spread within a class, the
variance is concentrated in a few directions (anisotropic), the classes differ
in size and in spread, and all embeddings share a common direction (a cone on
the unit sphere rather than the whole sphere). ``trained_like`` draws such
data; ``noise`` sets the difficulty (bench/nmi_speed.py and tests/test_clustering.py
hold the values at which scikit-learn's k-means NMI lands near 60, 75, 88 and 98).
"""
import torch


def trained_like(n: int, classes: int, dim: int = 512, noise: float = 1.0,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, dim) float32 unit embeddings and (n,) int64 labels in ``classes`` classes of uneven size.

    Class sizes: at least 2 (1 when n < 2 * classes), the rest drawn with
    log-normal weights (sigma 0.5). Centres: Gaussian with per-axis scales
    decaying as 1/sqrt(axis) (effective dimension about 30 at 512-d), plus a
    common offset along one direction. Within a class: Gaussian noise of the
    same decay on partly permuted axes, times ``noise``, times a per-class
    spread (log-normal, sigma 0.3). Everything is rotated at random and
    normalised to unit length.
    """
    g = torch.Generator().manual_seed(seed)
    labels = _uneven_labels(n, classes, g)
    scales = (torch.arange(dim) + 1.0) ** -0.5
    scales /= scales.norm()
    centres = torch.randn(classes, dim, generator=g) * scales
    centres[:, 0] += 2.0 * float(scales[0])  # the shared direction: a cone, not the whole sphere
    within = 0.5 * (scales + scales[torch.randperm(dim, generator=g)])
    spread = torch.exp(0.3 * torch.randn(classes, generator=g))
    x = centres[labels] + noise * spread[labels, None] * torch.randn(n, dim, generator=g) * within
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
    return torch.nn.functional.normalize(x @ rotation.t(), dim=1), labels


def _uneven_labels(n: int, classes: int, g: torch.Generator) -> torch.Tensor:
    """(n,) int64 labels in a random order, every class of the ``classes`` present when n allows."""
    least = 2 if n >= 2 * classes else 1 if n >= classes else 0
    sizes = torch.full((classes,), least, dtype=torch.int64)
    weights = torch.exp(0.5 * torch.randn(classes, generator=g))
    rest = n - least * classes
    if rest:
        sizes += torch.bincount(torch.multinomial(weights, rest, replacement=True, generator=g), minlength=classes)
    labels = torch.repeat_interleave(torch.arange(classes), sizes)
    return labels[torch.randperm(n, generator=g)]
