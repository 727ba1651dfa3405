"""NMI of a k-means clustering of the embeddings against the class labels.

k-means runs at SOP scale (60,502 points, k = 11,316): the greedy D^2 seeding
(scikit-learn's k-means++) draws its centroids in rounds of many at once
(k-means||-style, Bahmani et al. 2012, without the reclustering step), each
round one matrix product, instead of k sequential passes over the data.
Seeding sees a 256-d random projection of the points (half the products at
512-d); Lloyd's iterations and assignments use the full points in blocked
matrix products.
"""
import math

import torch

from metric.device import float64_device

_SEED_ROUNDS = 64  # seeding rounds: k-means++ exactly when k <= 65
_BLOCK_BYTES = 64 * 2**20  # bytes of one (points, k) block of distances in the assignment
_TRIAL_BLOCK_BYTES = 8 * 2**20  # bytes of one (points, candidates) block of the seeding trials: stays in cache
_SEED_DIM = 256  # seeding works on a random projection to this many dimensions (none when D <= 256)
_TOLERANCE = 1e-3  # Lloyd stops once fewer than this fraction of the points change cluster


def kmeans(x: torch.Tensor, k: int, iterations: int = 10, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means of (N, D) points into k clusters -> (N,) int64 assignments, deterministic for ``seed``.

    Centroids start at the points that batched D^2 seeding picks on a random
    projection (``_project``, ``_seed_indices``); an empty
    cluster keeps its centroid. Stops after ``iterations`` or once fewer than
    0.1% of the points change cluster.
    """
    x = x.float()
    g = torch.Generator().manual_seed(seed)
    centroids = x[_seed_indices(_project(x, _SEED_DIM, g), k, g)]
    assign = torch.full((len(x),), -1, dtype=torch.int64, device=x.device)
    for _ in range(iterations):
        new = _nearest_centroid(x, centroids)
        changed = int((new != assign).sum())
        assign = new
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).float()
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
        if changed <= _TOLERANCE * len(x):
            break
    return assign


def _project(x: torch.Tensor, dim: int, g: torch.Generator) -> torch.Tensor:
    """(N, dim) Gaussian random projection of the (N, D) points, keeping squared distances in expectation; x when D <= dim."""
    if x.shape[1] <= dim:
        return x
    return x @ (torch.randn(x.shape[1], dim, generator=g) / math.sqrt(dim)).to(x.device)


def _seed_indices(x: torch.Tensor, k: int, g: torch.Generator) -> list[int]:
    """k indices of the (N, D) points to start as centroids: greedy D^2 seeding (as scikit-learn's k-means++) in rounds.

    The first centroid is uniform. The rest come in up to 64 rounds of
    m = ceil((k - 1) / 64) centroids; a round draws m groups of 2 + ln k
    candidates (scikit-learn's count) with probability proportional to the squared distance to the
    nearest centroid so far (without replacement), and from each group keeps
    the candidate that lowers the total squared distance most. Each round is
    one matrix product. Once every point is a centroid's duplicate, the lowest
    unchosen indices fill up.
    """
    first = int(torch.randint(len(x), (1,), generator=g))
    chosen = [first]
    min_sq = (x - x[first]).pow(2).sum(dim=1)
    per_round = -(-(k - 1) // _SEED_ROUNDS)
    group = 2 + int(math.log(k))
    while len(chosen) < k:
        weights = min_sq.clamp(min=0).double().cpu()
        available = int((weights > 0).sum())
        take = min(per_round, k - len(chosen), available)
        if take == 0:
            taken = set(chosen)
            chosen += [i for i in range(len(x)) if i not in taken][:k - len(chosen)]
            break
        trials = max(1, min(group, available // take))
        candidates = torch.multinomial(weights, take * trials, replacement=False, generator=g).to(x.device)
        reduction = _reduction_with(x, x[candidates], min_sq).view(take, trials)
        new = candidates.view(take, trials).gather(1, reduction.argmax(dim=1, keepdim=True)).flatten()
        chosen += new.tolist()
        min_sq = torch.minimum(min_sq, _nearest_sq_dist(x, x[new]))
        min_sq[new] = 0  # never drawn twice, whatever the rounding
    return chosen


def _reduction_with(x: torch.Tensor, candidates: torch.Tensor, min_sq: torch.Tensor) -> torch.Tensor:
    """(c,) float64 drop in the total squared distance of the (N, D) points if each (D,) candidate alone joined.

    Sums relu(min_sq - |x - c|^2) over the points, the bias min_sq - |x|^2 - |c|^2
    taking the place of the product's initial value: three passes over each block.
    """
    c_sq = candidates.pow(2).sum(dim=1)
    bias = min_sq - x.pow(2).sum(dim=1)
    block = max(1, _TRIAL_BLOCK_BYTES // (4 * max(1, len(candidates))))
    total = torch.zeros(len(candidates), dtype=torch.float64, device=x.device)
    for i in range(0, len(x), block):
        gain = torch.sub(bias[i:i + block, None], c_sq).addmm_(x[i:i + block], candidates.t(), alpha=2.0).relu_()
        total += gain.sum(dim=0)
    return total


def _blocked_min(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """((N,) float32 min over centroids of |c|^2 - 2 x.c, (N,) int64 argmin) in blocks of ``_BLOCK_BYTES``."""
    c_sq = centroids.pow(2).sum(dim=1)
    block = max(1, _BLOCK_BYTES // (4 * max(1, len(centroids))))
    parts = [torch.addmm(c_sq, x[i:i + block], centroids.t(), alpha=-2.0).min(dim=1) for i in range(0, len(x), block)]
    return torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts])


def _nearest_sq_dist(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(N,) float32 squared distance of each of the (N, D) points to its nearest of the (m, D) centroids."""
    return (_blocked_min(x, centroids)[0] + x.pow(2).sum(dim=1)).clamp(min=0)


def _nearest_centroid(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(N,) int64 index of each of the (N, D) points' nearest centroid (squared Euclidean)."""
    return _blocked_min(x, centroids)[1]


def normalized_mutual_info(labels_a: torch.Tensor, labels_b: torch.Tensor) -> float:
    """NMI of two (N,) labelings with the arithmetic-mean normaliser, in [0, 1]."""
    _, a = torch.unique(labels_a.cpu(), return_inverse=True)
    _, b = torch.unique(labels_b.cpu(), return_inverse=True)
    n = len(a)
    joint = torch.bincount(a * (int(b.max()) + 1) + b).double()
    pa = torch.bincount(a).double() / n
    pb = torch.bincount(b).double() / n
    nz = joint.nonzero().flatten()
    pab = joint[nz] / n
    ia, ib = nz // (int(b.max()) + 1), nz % (int(b.max()) + 1)
    mi = float((pab * (pab / (pa[ia] * pb[ib])).log()).sum())
    ha = -float((pa[pa > 0] * pa[pa > 0].log()).sum())
    hb = -float((pb[pb > 0] * pb[pb > 0].log()).sum())
    denom = (ha + hb) / 2
    if denom == 0:
        return 1.0
    return max(0.0, min(1.0, mi / denom))


def nmi(embeddings: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> float:
    """NMI in percent of k-means (k = number of classes, ``seed``) on (N, D) embeddings vs (N,) labels.

    Embeddings on MPS are clustered on the CPU (``float64_device``).
    """
    embeddings = embeddings.to(float64_device(embeddings.device))
    k = len(torch.unique(labels))
    return 100.0 * normalized_mutual_info(kmeans(embeddings, k, seed=seed), labels)
