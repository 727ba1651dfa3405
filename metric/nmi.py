"""NMI and AMI in percent of a k-means clustering of the embeddings against their class labels.

The clustering is ``metric.kmeans.kmeans``, scikit-learn's ``KMeans(n_clusters=k,
n_init=1)`` with k the number of classes and seed 0; the scores are
scikit-learn's ``normalized_mutual_info_score`` and ``adjusted_mutual_info_score``
with the arithmetic-mean normaliser (both their defaults).
"""
import math

import numpy as np
import torch

from errors import UserError
from metric.device import float64_device
from metric.kmeans import kmeans


def _mutual_info_parts(labels_a: torch.Tensor, labels_b: torch.Tensor):
    """(MI, H(a), H(b), (R,) sizes of a's groups, (C,) sizes of b's groups) of two (N,) labelings, in nats."""
    _, a = torch.unique(labels_a.cpu(), return_inverse=True)
    _, b = torch.unique(labels_b.cpu(), return_inverse=True)
    n = len(a)
    width = int(b.max()) + 1
    joint = torch.bincount(a * width + b).double()
    size_a, size_b = torch.bincount(a), torch.bincount(b)
    pa, pb = size_a.double() / n, size_b.double() / n
    nz = joint.nonzero().flatten()
    pab = joint[nz] / n
    mi = float((pab * (pab / (pa[nz // width] * pb[nz % width])).log()).sum())
    return mi, -float((pa * pa.log()).sum()), -float((pb * pb.log()).sum()), size_a, size_b


def normalized_mutual_info(labels_a: torch.Tensor, labels_b: torch.Tensor) -> float:
    """NMI of two (N,) labelings with the arithmetic-mean normaliser, in [0, 1] (scikit-learn's default)."""
    mi, ha, hb, _, _ = _mutual_info_parts(labels_a, labels_b)
    denom = (ha + hb) / 2
    if denom == 0:
        return 1.0
    return max(0.0, min(1.0, mi / denom))


def _log_factorial(v: torch.Tensor) -> torch.Tensor:
    """log(v!) of float64 ``v``."""
    return torch.lgamma(v + 1.0)


def expected_mutual_info(size_a: torch.Tensor, size_b: torch.Tensor) -> float:
    """Expected MI (nats) of two random labelings with these (R,) and (C,) group sizes, as scikit-learn's
    ``expected_mutual_information`` (hypergeometric model, Vinh et al. 2010), summed once per distinct
    pair of sizes (R x C pairs of SOP's 11,316 classes share a few dozen sizes)."""
    n = int(size_a.sum())
    sizes_b, repeats_b = torch.unique(size_b, return_counts=True)
    b = sizes_b.double()[:, None]
    total = 0.0
    for a, repeats_a in zip(*(t.tolist() for t in torch.unique(size_a, return_counts=True))):
        low = torch.clamp(a + b - n, min=1)
        high = torch.minimum(b, torch.tensor(float(a)))
        nij = low + torch.arange(int((high - low).max()) + 1, dtype=torch.float64)  # (B, W) cell counts
        inside = nij <= high
        nij = torch.where(inside, nij, low)
        log_p = (math.lgamma(a + 1) + math.lgamma(n - a + 1) - math.lgamma(n + 1) + _log_factorial(b)
                 + _log_factorial(n - b) - _log_factorial(nij) - _log_factorial(a - nij) - _log_factorial(b - nij)
                 - _log_factorial(n - a - b + nij))
        term = nij / n * (math.log(n) + nij.log() - math.log(a) - b.log()) * log_p.exp()
        total += repeats_a * float((torch.where(inside, term, 0.0).sum(dim=1) * repeats_b).sum())
    return total


def adjusted_mutual_info(labels_a: torch.Tensor, labels_b: torch.Tensor) -> float:
    """AMI of two (N,) labelings with the arithmetic-mean normaliser, as scikit-learn's
    ``adjusted_mutual_info_score``: (MI - E[MI]) / (mean(H(a), H(b)) - E[MI]), at most 1."""
    mi, ha, hb, size_a, size_b = _mutual_info_parts(labels_a, labels_b)
    if len(size_a) == len(size_b) <= 1:
        return 1.0
    if len(size_a) == 1 or len(size_b) == 1:
        return 0.0
    emi = expected_mutual_info(size_a, size_b)
    eps = float(np.finfo(np.float64).eps)
    denominator, numerator = (ha + hb) / 2 - emi, mi - emi
    denominator = min(denominator, -eps) if denominator < 0 else max(denominator, eps)
    numerator = min(numerator, -eps) if numerator < 0 else max(numerator, eps)
    return numerator / denominator


def _check(embeddings: torch.Tensor, labels: torch.Tensor) -> None:
    """Refuse in one line what no clustering can score: not (N, D) with N labels, no embeddings, NaN or inf."""
    if embeddings.dim() != 2 or labels is None or labels.dim() != 1 or len(labels) != len(embeddings):
        raise UserError(f"NMI needs (N, D) embeddings and N labels, got embeddings of shape "
                        f"{tuple(embeddings.shape)} and {'no' if labels is None else tuple(labels.shape)} labels; "
                        "pass one label per embedding")
    if not len(embeddings):
        raise UserError("NMI of no embeddings is undefined; evaluate a split with at least one image")
    bad = int((~torch.isfinite(embeddings)).any(dim=1).sum())
    if bad:
        raise UserError(f"{bad} of {len(embeddings)} embeddings are NaN or infinite, so no clustering can score "
                        "them; the network's weights or inputs are broken (try without --amp, or another checkpoint)")


def clustering_metrics(embeddings: torch.Tensor, labels: torch.Tensor, metrics=("nmi",),
                       seed: int = 0) -> dict[str, float]:
    """{"NMI": ..., "AMI": ...} in percent, as ``metrics`` ask ("nmi", "ami"), of one k-means clustering
    (k = number of classes, ``seed``) of (N, D) embeddings against their (N,) labels. Embeddings on MPS
    are clustered on the CPU (``float64_device``)."""
    _check(embeddings, labels)
    embeddings = embeddings.to(float64_device(embeddings.device))
    assign = kmeans(embeddings, len(torch.unique(labels)), seed=seed)
    scores = {"nmi": ("NMI", normalized_mutual_info), "ami": ("AMI", adjusted_mutual_info)}
    return {name: 100.0 * score(assign, labels) for key, (name, score) in scores.items() if key in metrics}


def nmi(embeddings: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> float:
    """NMI in percent of k-means (k = number of classes, ``seed``) on (N, D) embeddings vs (N,) labels."""
    return clustering_metrics(embeddings, labels, ("nmi",), seed)["NMI"]
