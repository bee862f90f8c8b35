"""Statistics of eval scores: means with bootstrap confidence intervals, and paired deltas.

Both use the percentile bootstrap with a fixed seed, so a report is reproducible: the same
scores always give the same interval. Eval sets are small (tens to hundreds of questions) and
scores are bounded and often far from normal (hit rate is 0/1), which is where the bootstrap
is the honest choice over a t-interval.

:func:`paired_bootstrap` resamples *pairs* (the same question scored by two runs), so the
question-to-question spread, which both runs share, cancels out: a small but consistent drop
shows up as significant where two independent intervals would overlap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_RESAMPLES", "MeanCI", "PairedDelta", "finite", "mean_ci", "paired_bootstrap"]

DEFAULT_RESAMPLES = 2000
_SEED = 20240601


@dataclass(frozen=True)
class MeanCI:
    """A mean and its ``confidence`` interval over ``n`` values."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float


@dataclass(frozen=True)
class PairedDelta:
    """``candidate - baseline`` over ``n`` paired values: the mean delta and its interval.

    ``p_not_worse`` is the share of resamples whose mean delta was >= 0 (a bootstrap
    estimate of how likely the candidate is no worse; small values mean a real drop).
    """

    delta: float
    low: float
    high: float
    n: int
    confidence: float
    candidate_mean: float
    baseline_mean: float
    p_not_worse: float


def _checked(values: Sequence[float], what: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{what} must be a flat sequence of numbers")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} must be finite numbers (leave failed samples out before)")
    return array


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")


def mean_ci(
    values: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = _SEED,
) -> MeanCI | None:
    """The mean of ``values`` with a percentile-bootstrap interval; None when there are none.

    One value (or all equal) gives a zero-width interval.

    Raises:
        ValueError: A value is not finite, or ``confidence`` is not in (0, 1).
    """
    _check_confidence(confidence)
    array = _checked(values, "values")
    if array.size == 0:
        return None
    mean = float(array.mean())
    if array.size == 1 or np.all(array == array[0]):
        return MeanCI(mean, mean, mean, int(array.size), confidence)
    means = _resampled_means(array, resamples, seed)
    low, high = _percentiles(means, confidence)
    return MeanCI(mean, min(low, mean), max(high, mean), int(array.size), confidence)


def paired_bootstrap(
    candidate: Sequence[float],
    baseline: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = _SEED,
) -> PairedDelta | None:
    """The mean of ``candidate[i] - baseline[i]`` with a paired bootstrap interval.

    None when there are no pairs.

    Raises:
        ValueError: The sequences differ in length, hold a non-finite value, or ``confidence``
            is not in (0, 1).
    """
    _check_confidence(confidence)
    cand = _checked(candidate, "candidate")
    base = _checked(baseline, "baseline")
    if cand.shape != base.shape:
        raise ValueError(f"paired scores differ in length: {cand.size} candidate, {base.size} baseline")
    if cand.size == 0:
        return None
    deltas = cand - base
    delta = float(deltas.mean())
    if cand.size == 1 or np.all(deltas == deltas[0]):
        low = high = delta
        p_not_worse = 1.0 if delta >= 0 else 0.0
    else:
        means = _resampled_means(deltas, resamples, seed)
        low, high = _percentiles(means, confidence)
        low, high = min(low, delta), max(high, delta)
        p_not_worse = float(np.mean(means >= 0))
    return PairedDelta(
        delta=delta,
        low=low,
        high=high,
        n=int(cand.size),
        confidence=confidence,
        candidate_mean=float(cand.mean()),
        baseline_mean=float(base.mean()),
        p_not_worse=p_not_worse,
    )


def _resampled_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    if resamples < 100:
        raise ValueError(f"resamples must be at least 100, got {resamples}")
    rng = np.random.default_rng(seed)
    # Chunked so that large sets do not build one resamples x n index matrix at once.
    means = np.empty(resamples)
    step = max(1, 2_000_000 // values.size)
    for start in range(0, resamples, step):
        stop = min(resamples, start + step)
        index = rng.integers(0, values.size, size=(stop - start, values.size))
        means[start:stop] = values[index].mean(axis=1)
    return means


def _percentiles(means: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def finite(value: float | None) -> bool:
    """Whether ``value`` is a real, finite number (not None, NaN or infinite)."""
    return value is not None and isinstance(value, int | float) and math.isfinite(value)
