"""NMI of a k-means clustering of the embeddings against the class labels."""
import torch


def kmeans(x: torch.Tensor, k: int, iterations: int = 100, seed: int = 0,
           block: int = 8192) -> torch.Tensor:
    """Lloyd's k-means of (N, D) points into k clusters -> (N,) int64 assignments.

    Centroids start from k-means++ seeding drawn with ``seed``; an empty
    cluster keeps its centroid. Stops early once no assignment changes.
    """
    x = x.float()
    centroids = _kmeans_plus_plus(x, k, torch.Generator().manual_seed(seed))
    assign = torch.full((len(x),), -1, dtype=torch.int64, device=x.device)
    for _ in range(iterations):
        new = _nearest_centroid(x, centroids, block)
        if torch.equal(new, assign):
            break
        assign = new
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).float()
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return assign


def _kmeans_plus_plus(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """(k, D) initial centroids: each next one drawn with probability proportional to squared distance."""
    chosen = [int(torch.randint(len(x), (1,), generator=g))]
    min_sq = (x - x[chosen[0]]).pow(2).sum(dim=1)
    for _ in range(1, k):
        weights = min_sq.clamp(min=0).double().cpu()
        nxt = int(torch.multinomial(weights, 1, generator=g)) if weights.sum() > 0 else len(chosen)
        chosen.append(nxt)
        min_sq = torch.minimum(min_sq, (x - x[nxt]).pow(2).sum(dim=1))
    return x[chosen].clone()


def _nearest_centroid(x: torch.Tensor, centroids: torch.Tensor, block: int) -> torch.Tensor:
    c_sq = centroids.pow(2).sum(dim=1)
    return torch.cat([torch.addmm(c_sq, x[i:i + block], centroids.t(), alpha=-2.0).argmin(dim=1)
                      for i in range(0, len(x), block)])


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
    """NMI in percent of k-means (k = number of classes) on (N, D) embeddings vs (N,) labels."""
    k = len(torch.unique(labels))
    return 100.0 * normalized_mutual_info(kmeans(embeddings, k, seed=seed), labels)
