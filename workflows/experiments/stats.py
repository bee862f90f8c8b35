"""Fixed-horizon tests of an experiment's metrics, and the sample size that gives them their power.

Library-backed where a library computes the test:

- rates: the pooled two-proportion z test (statsmodels ``proportions_ztest``) with Newcombe's
  hybrid score interval of the difference (``confint_proportions_2indep``; it stays sensible
  at 0 and 100%, where the Wald interval collapses);
- means: Welch's t test (scipy ``ttest_ind_from_stats``, from moments, so a decider needs no
  raw values) with the Welch-Satterthwaite interval of the difference;
- paired values (an eval's score per question for both variants): the paired t test (scipy
  ``ttest_rel``) with the t interval of the mean difference;
- distributions: the Mann-Whitney U test (scipy ``mannwhitneyu``) with the Hodges-Lehmann
  shift and its distribution-free (Moses) interval, which scipy lacks: the same estimate and
  interval Kayenta's canary judge takes from R's ``wilcox.test``;
- sample sizes: statsmodels' two-proportion formula (null variance pooled, alternative
  variance unpooled) and its t-test power for means.

``significant`` follows the p-value (for rates the z test and Newcombe's interval can
disagree right at the edge of significance). These p-values hold for one look at a sample
size fixed in advance. Read after every batch,
use :mod:`workflows.experiments.sequential` instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from statsmodels.stats.power import TTestIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportions_ztest,
    samplesize_proportions_2indep_onetail,
)

from opsloop.errors import InvalidInputError
from workflows.experiments.summaries import Comparison, Moments, finite_sample

__all__ = [
    "SampleSize",
    "hodges_lehmann",
    "mann_whitney",
    "paired_t",
    "sample_size_means",
    "sample_size_proportions",
    "two_proportions",
    "welch",
]

Alternative = Literal["two-sided", "greater", "less"]


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise InvalidInputError(f"alpha {alpha}: must be in (0, 1)", field="alpha")


def two_proportions(
    successes_a: int, n_a: int, successes_b: int, n_b: int, *, metric: str = "rate", alpha: float = 0.05
) -> Comparison:
    """Compare two rates: the challenger's ``successes_b / n_b`` against the champion's.

    Raises:
        InvalidInputError: A count is negative, above its total, or a total is 0.
    """
    _check_alpha(alpha)
    for name, k, n in (("champion", successes_a, n_a), ("challenger", successes_b, n_b)):
        if n < 1 or not 0 <= k <= n:
            raise InvalidInputError(f"{metric}: {name} has {k} successes out of {n}", field=metric)
    p_a, p_b = successes_a / n_a, successes_b / n_b
    pooled = (successes_a + successes_b) / (n_a + n_b)
    if pooled in (0.0, 1.0):  # both all-0 or all-1: nothing differs, the z statistic is 0/0
        p_value = 1.0
    else:
        _, p_value = proportions_ztest([successes_b, successes_a], [n_b, n_a])
    low, high = confint_proportions_2indep(successes_b, n_b, successes_a, n_a, method="newcomb", alpha=alpha)
    return Comparison(
        metric=metric,
        method="two_proportion_z",
        estimate=p_b - p_a,
        ci_low=float(low),
        ci_high=float(high),
        p_value=float(p_value),
        alpha=alpha,
        n_a=n_a,
        n_b=n_b,
        baseline=p_a,
        significant=float(p_value) < alpha,
    )


def welch(a: Moments, b: Moments, *, metric: str = "mean", alpha: float = 0.05) -> Comparison:
    """Welch's t test of the challenger's mean against the champion's, with its interval.

    Raises:
        InvalidInputError: A variant has fewer than two values.
    """
    _check_alpha(alpha)
    if a.n < 2 or b.n < 2:
        raise InvalidInputError(
            f"{metric}: Welch's t needs two values per variant (champion {a.n}, challenger {b.n})",
            field=metric,
        )
    diff = b.mean - a.mean
    se2_a, se2_b = a.var / a.n, b.var / b.n
    se = math.sqrt(se2_a + se2_b)
    if se == 0:  # both samples constant: the difference is known exactly
        p_value, low, high = (1.0 if diff == 0 else 0.0), diff, diff
    else:
        _, p = stats.ttest_ind_from_stats(b.mean, b.sd, b.n, a.mean, a.sd, a.n, equal_var=False)
        dof = (se2_a + se2_b) ** 2 / (se2_a**2 / (a.n - 1) + se2_b**2 / (b.n - 1))
        half = float(stats.t.ppf(1 - alpha / 2, dof)) * se
        p_value, low, high = float(p), diff - half, diff + half
    return Comparison(
        metric=metric,
        method="welch_t",
        estimate=diff,
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        alpha=alpha,
        n_a=a.n,
        n_b=b.n,
        baseline=a.mean,
        significant=p_value < alpha,
    )


def paired_t(a: ArrayLike, b: ArrayLike, *, metric: str = "mean", alpha: float = 0.05) -> Comparison:
    """The paired t test of ``b - a`` over pairs (the challenger's and champion's value of one item).

    Pairing takes out what the items share (a hard question is hard for both prompts), so a
    difference shows on far fewer items than two independent samples would need.

    Raises:
        InvalidInputError: The samples differ in length, hold a non-finite value, or have
            fewer than two pairs.
    """
    _check_alpha(alpha)
    x, y = finite_sample(a, "champion"), finite_sample(b, "challenger")
    if x.size != y.size or x.size < 2:
        raise InvalidInputError(
            f"{metric}: the paired t test needs two or more pairs, got {x.size} and {y.size} values",
            field=metric,
        )
    diff = y - x
    estimate = float(diff.mean())
    if np.ptp(diff) <= 1e-12 * max(1.0, float(np.abs(diff).max())):  # one difference: known exactly
        p_value, low, high = (1.0 if estimate == 0 else 0.0), estimate, estimate
    else:
        result = stats.ttest_rel(y, x)
        interval = result.confidence_interval(confidence_level=1 - alpha)
        p_value, low, high = float(result.pvalue), float(interval.low), float(interval.high)
    return Comparison(
        metric=metric,
        method="paired_t",
        estimate=estimate,
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        alpha=alpha,
        n_a=int(x.size),
        n_b=int(y.size),
        baseline=float(x.mean()),
        significant=p_value < alpha,
    )


def _kth_difference(a_sorted: np.ndarray, b: np.ndarray, k: int) -> float:
    """The ``k``-th smallest (1-based) of the ``len(a) * len(b)`` differences ``b_j - a_i``.

    Bisection on the value, counting the differences at or below it with one ``searchsorted``
    per step (``b`` sorted too): about 40 steps of O(m log n), instead of materialising the
    n * m differences (10^10 for two 10^5 latency samples). The result is the largest
    difference within 10^-12 of the range of the k-th, which is the k-th up to that precision.
    """
    n = a_sorted.size

    def count_at_most(d: float) -> int:
        return int((n - np.searchsorted(a_sorted, b - d, side="left")).sum())

    lo, hi = float(b.min() - a_sorted[-1]), float(b.max() - a_sorted[0])
    if count_at_most(lo) >= k:
        return lo
    resolution = (hi - lo) * 1e-12  # far below any latency's precision; ~40 halvings
    while hi - lo > resolution:
        mid = lo + (hi - lo) / 2
        if mid in (lo, hi):  # adjacent floats
            break
        if count_at_most(mid) >= k:
            hi = mid
        else:
            lo = mid
    # Invariant: count(lo) < k <= count(hi), so the k-th difference lies in (lo, hi]: it is the
    # largest difference at or below hi.
    idx = np.searchsorted(a_sorted, b - hi, side="left")
    inside = idx < n
    return float((b[inside] - a_sorted[idx[inside]]).max())


def hodges_lehmann(a: ArrayLike, b: ArrayLike, *, alpha: float = 0.05) -> tuple[float, float, float]:
    """Hodges-Lehmann shift of ``b`` over ``a`` (median of all ``b_j - a_i``) and its Moses interval.

    The interval's ends are the ``C``-th smallest and largest differences, with ``C`` from the
    normal approximation of the U statistic's null distribution (no tie correction). With too
    few values for the level, an end is infinite.
    """
    # Both sorted: searchsorted with sorted keys walks memory in order (4x faster at 10^4).
    a_sorted, b_arr = np.sort(finite_sample(a, "a")), np.sort(finite_sample(b, "b"))
    n, m = a_sorted.size, b_arr.size
    if n == 0 or m == 0:
        raise InvalidInputError("the Hodges-Lehmann shift needs values in both samples", field="sample")
    total = n * m
    half = (total + 1) // 2
    median = _kth_difference(a_sorted, b_arr, half)
    if total % 2 == 0:
        median = (median + _kth_difference(a_sorted, b_arr, half + 1)) / 2
    z = float(stats.norm.ppf(1 - alpha / 2))
    c = math.floor(total / 2 - z * math.sqrt(total * (n + m + 1) / 12))
    if c < 1:
        return median, -math.inf, math.inf
    return median, _kth_difference(a_sorted, b_arr, c), _kth_difference(a_sorted, b_arr, total + 1 - c)


def mann_whitney(
    a: ArrayLike,
    b: ArrayLike,
    *,
    metric: str = "values",
    alpha: float = 0.05,
    alternative: Alternative = "two-sided",
) -> Comparison:
    """Mann-Whitney U test of the challenger's values against the champion's.

    ``alternative="greater"`` asks whether the challenger's values tend to be larger (a slower
    challenger, for latencies). The estimate is the Hodges-Lehmann shift with its two-sided
    interval at ``1 - alpha``; the baseline is the champion's median.

    Raises:
        InvalidInputError: A sample is empty or holds a non-finite value.
    """
    _check_alpha(alpha)
    a_arr, b_arr = finite_sample(a, f"{metric} (champion)"), finite_sample(b, f"{metric} (challenger)")
    if a_arr.size == 0 or b_arr.size == 0:
        raise InvalidInputError(
            f"{metric}: Mann-Whitney needs values in both variants (champion {a_arr.size},"
            f" challenger {b_arr.size})",
            field=metric,
        )
    if np.ptp(np.concatenate([a_arr, b_arr])) == 0:  # every value equal: all ranks tie
        p_value = 1.0
    else:
        p_value = float(stats.mannwhitneyu(b_arr, a_arr, alternative=alternative).pvalue)
    shift, low, high = hodges_lehmann(a_arr, b_arr, alpha=alpha)
    return Comparison(
        metric=metric,
        method="mann_whitney",
        estimate=shift,
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        alpha=alpha,
        n_a=int(a_arr.size),
        n_b=int(b_arr.size),
        baseline=float(np.median(a_arr)),
        significant=p_value < alpha,
    )


@dataclass(frozen=True)
class SampleSize:
    """Values needed per variant for a two-sided test to find ``effect`` with probability ``power``."""

    n_a: int
    n_b: int
    effect: float
    alpha: float
    power: float

    @property
    def total(self) -> int:
        """Both variants together."""
        return self.n_a + self.n_b


def _check_design(alpha: float, power: float, ratio: float) -> None:
    _check_alpha(alpha)
    if not alpha < power < 1:
        raise InvalidInputError(f"power {power}: must be in (alpha, 1)", field="power")
    if not ratio > 0 or not math.isfinite(ratio):
        raise InvalidInputError(
            f"ratio {ratio}: the challenger's size over the champion's, > 0", field="ratio"
        )


def sample_size_proportions(
    baseline: float, effect: float, *, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0
) -> SampleSize:
    """Sample size for the two-proportion z test to find a change of ``effect`` from ``baseline``.

    Args:
        baseline: The champion's rate, in (0, 1).
        effect: The absolute change to detect (0.02: from 10% to 12%).
        alpha: Two-sided significance level.
        power: Probability of detecting the change when it is real.
        ratio: The challenger's sample size over the champion's (5/95 for a 5% canary).

    Raises:
        InvalidInputError: A rate outside (0, 1), a zero effect, or a bad level or ratio.
    """
    _check_design(alpha, power, ratio)
    if not 0 < baseline < 1 or not 0 < baseline + effect < 1 or effect == 0:
        raise InvalidInputError(
            f"baseline {baseline} and effect {effect}: both rates must be in (0, 1) and differ",
            field="effect",
        )
    n_a = samplesize_proportions_2indep_onetail(effect, baseline, power, ratio=ratio, alpha=alpha)
    n_a = math.ceil(float(n_a))
    return SampleSize(n_a, math.ceil(n_a * ratio), effect, alpha, power)


def sample_size_means(
    effect: float, sd: float, *, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0
) -> SampleSize:
    """Sample size for the two-sample t test to find a difference of means of ``effect``.

    Args:
        effect: The absolute difference to detect, in the metric's unit.
        sd: The metric's standard deviation (per value, both variants alike).
        alpha: Two-sided significance level.
        power: Probability of detecting the difference when it is real.
        ratio: The challenger's sample size over the champion's.

    Raises:
        InvalidInputError: A zero effect, a non-positive sd, or a bad level or ratio.
    """
    _check_design(alpha, power, ratio)
    if effect == 0 or not math.isfinite(effect) or not sd > 0 or not math.isfinite(sd):
        raise InvalidInputError(
            f"effect {effect} and sd {sd}: need a non-zero effect and sd > 0", field="effect"
        )
    n_a = TTestIndPower().solve_power(effect_size=abs(effect) / sd, alpha=alpha, power=power, ratio=ratio)
    n_a = math.ceil(float(n_a))
    return SampleSize(n_a, math.ceil(n_a * ratio), effect, alpha, power)
