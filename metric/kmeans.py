"""scikit-learn's ``KMeans(n_clusters=k, n_init=1)``, fast enough for SOP (60,502 points, k = 11,316) on 2 cores.

- The points are centred on their float64 mean, as scikit-learn does (the
  float32 distances ``|x|^2 + |c|^2 - 2 x.c`` keep their precision however far
  from the origin the embeddings sit).
- Seeding is scikit-learn's greedy k-means++ on the full points: each
  centroid keeps, of 2 + ln k candidates drawn by squared distance, the one
  lowering the total squared distance most. The candidates of many centroids
  are drawn at once (k-means||-style rounds, Bahmani et al. 2012, without the
  reclustering step) and measured in one matrix product, which keeps only the
  rare (point, candidate) pairs where a candidate is nearer than the point's
  centroid; the greedy choices then run centroid after centroid on those.
- Lloyd's iterations stop as scikit-learn's: when the labels repeat, or when
  the centroids' total squared shift is at most 1e-4 of the mean
  per-dimension variance (then the labels of the last centroids), after at
  most 300 iterations; an empty cluster takes the point farthest from its
  centroid, as in scikit-learn. From the same initial centroids the labels
  are scikit-learn's.
- Assignments skip what bounds settle (Hamerly 2010): each point keeps an
  upper bound on its distance to its centroid and a lower bound on its
  distance to every other, both moved by the centroids' shifts; it is looked
  at only when they cross. Then its 8 nearest centroids at its last full
  pass are tried first, with a lower bound on all the others; only when that
  fails does it get a full row again. The largest shifts of an iteration (an
  empty cluster's relocated centroid) are checked directly so that they do
  not loosen every bound.

All products run in blocks through ``metric.tile_scan.products`` (numpy's BLAS
on the CPU); the bounds are rounded outward by the float32 error of the
distances they come from.
"""
import math
from typing import Iterator

import numpy as np
import torch

from metric.ranking import cpu_threads
from metric.tile_scan import augment, mean64, products, squared_norms

MAX_ITERATIONS = 300  # scikit-learn's max_iter
_TOLERANCE = 1e-4  # scikit-learn's tol: total squared centroid shift over the mean per-dimension variance
_SEED_ROUNDS = 64  # a seeding round draws at most (k - 1) / 64 centroids' candidates
_PAIR_BUDGET = 8 * 2**20  # seeding: (point, candidate) pairs a round expects to keep
_BLOCK_BYTES = 64 * 2**20  # bytes of one (points, centroids) block of squared distances
_TRIAL_BLOCK_BYTES = 16 * 2**20  # bytes of one (points, candidates) block: about 2,000 rows at SOP, where BLAS peaks
_CANDIDATES = 8  # nearest centroids a full pass keeps per point
_JUMPS = 16  # one in this many centroids, those of an iteration's largest shifts, may be checked directly
_ROUNDING = 1e-5  # float32 error of a squared distance, relative to the largest squared norms


def kmeans(x: torch.Tensor, k: int, iterations: int = MAX_ITERATIONS, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means of (N, D) points into k clusters -> (N,) int64 labels, deterministic for ``seed``.

    Centroids start at the points that batched greedy k-means++ picks
    (``seed_indices``); Lloyd stops after ``iterations`` or at scikit-learn's
    convergence (``lloyd``).
    """
    x = x.detach().float()
    with cpu_threads(x.device, 1):  # torch's own passes; numpy's BLAS keeps its threads
        x = (x - mean64(x).float().to(x.device)).contiguous()
        centroids = x[torch.tensor(seed_indices(x, k, torch.Generator().manual_seed(seed)), device=x.device)]
        return lloyd(x, centroids, iterations)


def seed_indices(x: torch.Tensor, k: int, g: torch.Generator) -> list[int]:
    """k indices of the (N, D) points to start as centroids: scikit-learn's greedy k-means++, in rounds.

    The first centroid is uniform. Each further centroid draws 2 + ln k
    candidates (scikit-learn's count) with probability proportional to the
    squared distance to the nearest centroid so far, and keeps the one that
    lowers the total squared distance most given every centroid chosen before
    it. A round draws the candidates of many centroids at once (without
    replacement, from the distances at the start of the round) and finds, in
    one matrix product, the few (point, candidate) pairs where a candidate is
    nearer than the point's centroid (``_claims``), the only pairs that can
    lower the total; the greedy choices then run one centroid after the other
    on those pairs (``_greedy``). Rounds grow from 1 centroid to (k - 1) / 64
    as the pairs thin out. Once every point is a centroid's duplicate, the
    lowest unchosen indices fill up.
    """
    x_sq = squared_norms(x)
    x_gallery = augment(x, x_sq, "gallery")
    first = int(torch.randint(len(x), (1,), generator=g))
    chosen = [first]
    min_sq = (x - x[first]).pow_(2).sum(dim=1)
    most = -(-(k - 1) // _SEED_ROUNDS)
    per_centroid = 2 + int(math.log(k))
    take = 1
    while len(chosen) < k:
        weights = min_sq.double().cpu()
        available = int((weights > 0).sum())
        take = min(take, k - len(chosen), available)
        if take == 0:
            taken = set(chosen)
            chosen += [i for i in range(len(x)) if i not in taken][:k - len(chosen)]
            break
        trials = max(1, min(per_centroid, available // take))
        candidates = torch.multinomial(weights, take * trials, replacement=False, generator=g).to(x.device)
        claims = _claims(x_gallery, x[candidates], x_sq[candidates], min_sq)
        chosen += _greedy(claims, candidates, trials, min_sq)
        density = len(claims[0]) / (len(candidates) * len(x))
        take = min(most, 2 * take, max(1, int(_PAIR_BUDGET / (max(density, 1e-12) * trials * len(x)))))
    return chosen


def _claims(x_gallery: torch.Tensor, candidates: torch.Tensor, candidates_sq: torch.Tensor,
            min_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """((P,) candidate rows, (P,) point indices, (P,) float32 squared distances) of the pairs where a
    candidate is nearer a point than the point's nearest centroid (distance below ``min_sq``), sorted by row.

    ``x_gallery`` is the (N, D + 2) ``augment``-ed points ("gallery" side);
    ``candidates`` (c, D) with their (c,) float64 squared norms.
    """
    c_query = augment(candidates, candidates_sq, "query")
    n, c = len(x_gallery), len(candidates)
    block = max(1, _TRIAL_BLOCK_BYTES // (4 * c))
    buf = torch.empty(c * min(block, n), device=x_gallery.device)
    rows, points, dists = [], [], []
    for i in range(0, n, block):
        tile = buf[:c * min(block, n - i)].view(c, -1)
        products(c_query, x_gallery[i:i + block], tile)
        flat = _flat_below(tile, min_sq[i:i + block])
        rows.append(flat // tile.shape[1])
        points.append(flat % tile.shape[1] + i)
        dists.append(tile.view(-1)[flat])
    rows, points, dists = torch.cat(rows), torch.cat(points), torch.cat(dists)
    order = torch.sort(rows, stable=True).indices
    return rows[order], points[order], dists[order]


def _flat_below(tile: torch.Tensor, limit: torch.Tensor) -> torch.Tensor:
    """(P,) int64 flat indices of the entries of a (c, b) tile below the (b,) ``limit`` of their column."""
    if tile.device.type == "cpu":  # numpy's compare and flatnonzero: 2-5x torch's on one thread
        return torch.from_numpy(np.flatnonzero(np.less(tile.numpy(), limit.numpy()[None, :])))
    return (tile < limit[None, :]).view(-1).nonzero().squeeze(1)


def _greedy(claims: tuple[torch.Tensor, torch.Tensor, torch.Tensor], candidates: torch.Tensor, trials: int,
            min_sq: torch.Tensor) -> list[int]:
    """One centroid from each group of ``trials`` consecutive ``candidates``, group after group: the one
    whose ``_claims`` lower the total of ``min_sq`` most (ties: the first), which is then lowered in place."""
    rows, points, dists = claims
    ends = torch.bincount(rows, minlength=len(candidates)).cumsum(0)[trials - 1::trials].tolist()
    chosen = []
    for group, (lo, hi) in enumerate(zip([0] + ends[:-1], ends)):
        trial, at, d = rows[lo:hi] - group * trials, points[lo:hi], dists[lo:hi]
        gain = (min_sq[at] - d).clamp_(min=0).double()
        best = int(torch.zeros(trials, dtype=torch.float64).index_add_(0, trial, gain).argmax())
        won = trial == best
        min_sq[at[won]] = torch.minimum(min_sq[at[won]], d[won])
        chosen.append(int(candidates[group * trials + best]))
        min_sq[chosen[-1]] = 0  # never drawn twice, whatever the rounding
    return chosen


def _distance_blocks(x_aug: torch.Tensor, centroids: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield (row slice, (b, c) float32 squared distances) of the ``augment``-ed (N, D + 2) points to the
    (c, D) centroids, in blocks of ``_BLOCK_BYTES``."""
    c_aug = augment(centroids, squared_norms(centroids), "gallery")
    block = max(1, _BLOCK_BYTES // (4 * max(1, len(centroids))))
    buf = torch.empty(min(block, len(x_aug)) * len(centroids), device=x_aug.device)
    for i in range(0, len(x_aug), block):
        rows = slice(i, min(i + block, len(x_aug)))
        dist = buf[:(rows.stop - i) * len(centroids)].view(-1, len(centroids))
        products(x_aug[rows], c_aug, dist)
        yield rows, dist


class _Assignment:
    """Lloyd's assignment step of the (N, D) points, exact, with bounds that let most points skip it.

    Per point (float64 distances, not squared): ``upper`` >= distance to its
    centroid ``labels``; ``lower`` <= distance to every other centroid;
    ``floor`` <= distance to every centroid outside ``candidates``, its
    nearest at its last full pass.
    """

    def __init__(self, x: torch.Tensor, k: int):
        n, device = len(x), x.device
        self.x_aug = augment(x, squared_norms(x), "query")
        self.x_sq_max = float(self.x_aug[:, -1].max()) if n else 0.0
        self.labels = torch.zeros(n, dtype=torch.int64, device=device)
        self.upper = torch.full((n,), math.inf, dtype=torch.float64, device=device)
        self.lower = torch.full((n,), -math.inf, dtype=torch.float64, device=device)
        self.floor = torch.full((n,), -math.inf, dtype=torch.float64, device=device)
        self.candidates = torch.zeros(n, min(_CANDIDATES, k), dtype=torch.int64, device=device)
        self.first = True

    def __call__(self, centroids: torch.Tensor) -> torch.Tensor:
        """(N,) int64 nearest of the (k, D) centroids of every point."""
        c_aug = augment(centroids, squared_norms(centroids), "gallery")
        rounding = _ROUNDING * (self.x_sq_max + float(c_aug[:, -2].max()))
        if self.first:
            self.first = False
            self._full_pass(torch.arange(len(self.labels), device=self.labels.device), centroids, rounding)
            return self.labels
        look = (self.upper >= self.lower).nonzero().squeeze(1)
        if len(look):  # tighten the upper bound to the exact distance
            own = (self.x_aug[look] * c_aug[self.labels[look]]).sum(dim=1)
            self.upper[look] = _outward(own, rounding)
            look = look[self.upper[look] >= self.lower[look]]
        if len(look):
            look = self._candidate_pass(look, c_aug, rounding)
        if len(look):
            self._full_pass(look, centroids, rounding)
        return self.labels

    def _candidate_pass(self, rows: torch.Tensor, c_aug: torch.Tensor, rounding: float) -> torch.Tensor:
        """Assign the points ``rows`` among their candidates where the floor allows; return the others."""
        if self.candidates.shape[1] < 2:
            return rows
        block = max(1, _TRIAL_BLOCK_BYTES // (4 * c_aug.shape[1] * self.candidates.shape[1]))
        failed = []
        for i in range(0, len(rows), block):
            part = rows[i:i + block]
            cand = self.candidates[part]
            sq = torch.bmm(c_aug[cand], self.x_aug[part, :, None]).squeeze(2)
            near = sq.topk(2, dim=1, largest=False)
            upper = _outward(near.values[:, 0], rounding)
            settled = upper < self.floor[part]
            done = part[settled]
            self.labels[done] = cand[settled].gather(1, near.indices[settled, :1]).squeeze(1)
            self.upper[done] = upper[settled]
            self.lower[done] = torch.minimum(_inward(near.values[settled, 1], rounding), self.floor[done])
            failed.append(part[~settled])
        return torch.cat(failed)

    def _full_pass(self, rows: torch.Tensor, centroids: torch.Tensor, rounding: float) -> None:
        """Every centroid's distance to the points ``rows``: their labels, candidates and bounds anew."""
        m = self.candidates.shape[1]
        for part, dist in _distance_blocks(self.x_aug[rows], centroids):
            near = dist.topk(min(m + 1, len(centroids)), dim=1, largest=False)
            at = rows[part]
            self.labels[at] = near.indices[:, 0]
            self.candidates[at] = near.indices[:, :m]
            self.upper[at] = _outward(near.values[:, 0], rounding)
            self.lower[at] = _inward(near.values[:, 1], rounding) if len(centroids) > 1 else math.inf
            self.floor[at] = _inward(near.values[:, m], rounding) if len(centroids) > m else math.inf

    def moved(self, shift: torch.Tensor, centroids: torch.Tensor) -> None:
        """Move the bounds for the (k,) float64 shifts (distances) that gave the new (k, D) ``centroids``.

        Each upper bound grows by its centroid's shift, and the lower bounds and
        floors drop by the largest shift; or, when that spares more full rows
        than it costs, by the largest but those of the k / ``_JUMPS`` largest,
        whose new distances cap them instead.
        """
        self.upper += shift[self.labels]
        jumps = shift.topk(max(1, len(shift) // _JUMPS)).indices
        rest = shift.clone()
        rest[jumps] = 0
        largest, beyond = float(shift.max()), float(rest.max())
        spared = int(((self.upper >= self.lower - largest) & (self.upper < self.lower - beyond)).sum())
        if spared * len(shift) <= len(self.upper) * len(jumps):  # a spared point saves k distances; the check: N J
            self.lower -= largest
            self.floor -= largest
            return
        self.lower -= beyond
        self.floor -= beyond
        rounding = _ROUNDING * (self.x_sq_max + float(squared_norms(centroids).max()))
        column = torch.full((len(shift),), -1, dtype=torch.int64, device=shift.device)
        column[jumps] = torch.arange(len(jumps), device=shift.device)
        for rows, sq in _distance_blocks(self.x_aug, centroids[jumps]):
            others = _min_without(sq, column[self.labels[rows], None])
            self.lower[rows] = torch.minimum(self.lower[rows], _inward(others, rounding))
            outside = _min_without(sq, column[self.candidates[rows]])
            self.floor[rows] = torch.minimum(self.floor[rows], _inward(outside, rounding))


def _min_without(sq: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """(b,) row minima of (b, J) ``sq`` leaving out the (b, c) ``columns`` of each row (-1: none)."""
    hidden = torch.zeros(len(sq), sq.shape[1] + 1, dtype=torch.bool, device=sq.device)
    hidden.scatter_(1, torch.where(columns >= 0, columns, sq.shape[1]), True)
    return sq.masked_fill(hidden[:, :-1], math.inf).min(dim=1).values


def _outward(sq: torch.Tensor, rounding: float) -> torch.Tensor:
    """float64 distance surely at least the one whose float32 squared value is ``sq``."""
    return (sq.double() + rounding).clamp(min=0).sqrt()


def _inward(sq: torch.Tensor, rounding: float) -> torch.Tensor:
    """float64 distance surely at most the one whose float32 squared value is ``sq``."""
    return (sq.double() - rounding).clamp(min=0).sqrt()


def _updated(x: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(k, D) means of the clusters of (N,) ``labels``; an empty cluster takes the point farthest from its
    centroid, which leaves its old cluster (scikit-learn's relocation)."""
    k = len(centroids)
    sums = torch.zeros_like(centroids).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=k)
    empty = (counts == 0).nonzero().squeeze(1)
    if len(empty):
        sq = (x - centroids[labels]).pow_(2).sum(dim=1)
        if float(sq.max()) > 0:
            far = torch.sort(sq, descending=True, stable=True).indices[:len(empty)]
            sums.index_add_(0, labels[far], x[far], alpha=-1)
            counts.index_add_(0, labels[far], torch.full_like(far, -1))
            sums[empty[:len(far)]] = x[far]
            counts[empty[:len(far)]] = 1
    filled = counts > 0
    out = centroids.clone()
    out[filled] = sums[filled] / counts[filled, None].float()
    return out


def lloyd(x: torch.Tensor, centroids: torch.Tensor, iterations: int = MAX_ITERATIONS) -> torch.Tensor:
    """(N,) int64 labels of Lloyd's iterations on centred (N, D) float32 points from (k, D) ``centroids``.

    As scikit-learn's: stops when the labels repeat (strict convergence) or
    when the centroids' total squared shift is at most 1e-4 of the points' mean
    per-dimension variance, and then returns the labels of the last centroids.
    """
    tolerance = _TOLERANCE * float(squared_norms(x).sum()) / max(1, x.numel())
    assign = _Assignment(x, len(centroids))
    labels = None
    for _ in range(iterations):
        new = assign(centroids).clone()
        if labels is not None and torch.equal(new, labels):
            return new
        labels = new
        updated = _updated(x, labels, centroids)
        shift = (updated.double() - centroids.double()).pow(2).sum(dim=1)
        centroids = updated
        assign.moved(shift.sqrt(), centroids)
        if float(shift.sum()) <= tolerance:
            break
    return assign(centroids).clone()
