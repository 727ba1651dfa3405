"""Statistics over the seeds of one configuration: mean, sample std, the Student-t confidence interval of the
mean, and the paired t-test of two configurations over the seeds they share."""
import math
import statistics
import warnings
from dataclasses import dataclass

from scipy import stats

CONFIDENCE = 0.95
MIN_PAIRED_SEEDS = 3  # below this a paired t-test has 1 degree of freedom or none: no p-value is given


@dataclass(frozen=True)
class Summary:
    """Mean and sample std (0 for one value) of n values, and the CONFIDENCE interval of the mean (None for one)."""

    mean: float
    std: float
    ci: tuple[float, float] | None
    n: int


def ci_halfwidth(std, n: int):
    """Half the width of the Student-t CONFIDENCE interval of a mean over n ≥ 2 values of sample std ``std``
    (a float or a tensor of them): t(0.975, n - 1) · std / √n; 0 for n = 1."""
    return std * (float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) / math.sqrt(n) if n > 1 else 0.0)


def summarize(values: list[float]) -> Summary:
    """Mean ± sample std of ``values`` and the Student-t interval of the mean, mean ± ci_halfwidth."""
    n, mean = len(values), statistics.mean(values)
    if n < 2:
        return Summary(mean, 0.0, None, n)
    std = statistics.stdev(values)
    half = ci_halfwidth(std, n)
    return Summary(mean, std, (mean - half, mean + half), n)


@dataclass(frozen=True)
class Comparison:
    """A configuration against a baseline over their n common seeds: the mean difference and its p-value."""

    delta: float
    p: float | None  # two-sided paired t-test; None below MIN_PAIRED_SEEDS seeds, or when every difference is 0
    n: int


def paired(values: dict[int, float], baseline: dict[int, float]) -> Comparison | None:
    """``values`` ({seed: metric}) against ``baseline`` over their common seeds (None when there are none).

    The same seed gives the same training batches to every configuration, so the differences are
    taken seed by seed (scipy.stats.ttest_rel).
    """
    seeds = sorted(set(values) & set(baseline))
    if not seeds:
        return None
    a, b = [values[s] for s in seeds], [baseline[s] for s in seeds]
    delta = statistics.mean(x - y for x, y in zip(a, b))
    p = None
    if len(seeds) >= MIN_PAIRED_SEEDS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # constant differences: scipy warns, gives nan or 0
            p = float(stats.ttest_rel(a, b).pvalue)
        p = None if math.isnan(p) else p
    return Comparison(delta, p, len(seeds))
