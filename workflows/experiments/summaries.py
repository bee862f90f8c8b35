"""The plain data the experiment statistics work on: moments of a metric, a variant's summary, a comparison.

- :class:`Moments`: count, mean and sum of squared deviations of one metric; mergeable across
  batches (Chan et al.'s parallel update), so a decider can keep one per variant and add each
  batch instead of re-reading every sample. A rate is the moments of 0/1 values.
- :class:`VariantSummary`: what one variant's requests did so far: errors, latencies, cost and
  the primary metric.
- :class:`Comparison`: the result of comparing the challenger with the champion on one
  metric, by any of the tests in :mod:`~workflows.experiments.stats` and
  :mod:`~workflows.experiments.sequential`.

Everywhere here ``a`` is the champion (control) and ``b`` the challenger, and an effect is
``b - a``: positive when the challenger's value is higher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from opsloop.errors import InvalidInputError

__all__ = ["Comparison", "Method", "Moments", "VariantSummary", "finite_sample"]

Method = Literal["two_proportion_z", "welch_t", "paired_t", "mann_whitney", "msprt"]


def finite_sample(values: ArrayLike, name: str) -> np.ndarray:
    """``values`` as a 1-d float array, refusing NaN and infinities (they would poison every statistic).

    Raises:
        InvalidInputError: ``values`` is not one-dimensional or holds a non-finite value.
    """
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise InvalidInputError(f"{name} must be a 1-d sample, got shape {array.shape}", field=name)
    if not np.isfinite(array).all():
        bad = array[~np.isfinite(array)][0]
        raise InvalidInputError(f"{name} holds a non-finite value ({bad})", field=name)
    return array


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations (``m2``) of one metric's values."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def __post_init__(self) -> None:
        if self.n < 0 or not math.isfinite(self.mean) or not math.isfinite(self.m2) or self.m2 < 0:
            raise InvalidInputError(
                f"moments need n >= 0 and finite mean and m2 >= 0, got n={self.n}, mean={self.mean},"
                f" m2={self.m2}",
                field="moments",
            )

    @classmethod
    def from_samples(cls, values: ArrayLike, name: str = "values") -> Moments:
        """Moments of a sample (two passes over the values: no cancellation in ``m2``)."""
        array = finite_sample(values, name)
        if array.size == 0:
            return cls()
        mean = float(array.mean())
        return cls(int(array.size), mean, float(((array - mean) ** 2).sum()))

    @classmethod
    def from_counts(cls, successes: int, n: int, name: str = "rate") -> Moments:
        """Moments of ``successes`` ones among ``n`` 0/1 values (a rate)."""
        if not 0 <= successes <= n:
            raise InvalidInputError(f"{name}: {successes} successes out of {n} trials", field=name)
        if n == 0:
            return cls()
        p = successes / n
        return cls(n, p, successes * (1.0 - p))

    @property
    def var(self) -> float:
        """Sample variance (``ddof=1``); 0 below two values."""
        return self.m2 / (self.n - 1) if self.n > 1 else 0.0

    @property
    def sd(self) -> float:
        """Sample standard deviation."""
        return math.sqrt(self.var)

    @property
    def total(self) -> float:
        """Sum of the values (for a rate: the number of ones)."""
        return self.mean * self.n

    def __add__(self, other: Moments) -> Moments:
        if not isinstance(other, Moments):
            return NotImplemented
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * other.n / n
        return Moments(n, mean, self.m2 + other.m2 + delta * delta * self.n * other.n / n)


@dataclass(frozen=True)
class VariantSummary:
    """What one variant's requests did: the inputs of the guardrails and the decisions.

    ``errors`` holds one 0/1 value per request (1: it failed), ``cost_usd`` one cost per
    request, ``latency_ms`` one latency per request (a sample is enough: quantiles and the
    canary judge need values, not moments), ``primary`` the primary metric's values (for
    accuracy: 1 per correctly labelled instance, 0 per wrong one).
    """

    errors: Moments
    latency_ms: np.ndarray
    cost_usd: Moments
    primary: Moments

    @classmethod
    def from_samples(
        cls,
        ok: ArrayLike,
        latency_ms: ArrayLike,
        cost_usd: ArrayLike | None = None,
        primary: ArrayLike | None = None,
    ) -> VariantSummary:
        """Summarise per-request arrays: success flags, latencies, costs and primary-metric values."""
        flags = np.asarray(ok)
        if flags.ndim != 1 or (flags.size and not np.isin(flags, (0, 1)).all()):
            raise InvalidInputError("ok must be a 1-d array of success flags", field="ok")
        failed = int(flags.size - np.count_nonzero(flags))
        return cls(
            errors=Moments.from_counts(failed, int(flags.size), "errors"),
            latency_ms=finite_sample(latency_ms, "latency_ms"),
            cost_usd=Moments() if cost_usd is None else Moments.from_samples(cost_usd, "cost_usd"),
            primary=Moments() if primary is None else Moments.from_samples(primary, "primary"),
        )

    @property
    def requests(self) -> int:
        """How many requests the variant handled."""
        return self.errors.n


@dataclass(frozen=True)
class Comparison:
    """The challenger against the champion on one metric.

    ``estimate`` is the challenger's value minus the champion's (a difference of rates or
    means, or the Hodges-Lehmann shift for Mann-Whitney), ``[ci_low, ci_high]`` its
    confidence interval at level ``1 - alpha`` (for ``msprt`` an always-valid one), and
    ``baseline`` the champion's level (rate, mean or median), the denominator of the lift.
    """

    metric: str
    method: Method
    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    alpha: float
    n_a: int
    n_b: int
    baseline: float
    significant: bool

    @property
    def lift(self) -> float | None:
        """The estimate relative to the champion's level (0.1: 10% higher); None when that level is 0."""
        return None if self.baseline == 0 else self.estimate / abs(self.baseline)

    @property
    def lift_ci(self) -> tuple[float, float] | None:
        """The interval relative to the champion's level, that level taken as known.

        To first order this is the delta-method interval of the ratio when the lift is small
        (the champion's own noise is already in the interval of the difference).
        """
        if self.baseline == 0:
            return None
        return self.ci_low / abs(self.baseline), self.ci_high / abs(self.baseline)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (an unbounded interval end becomes None)."""

        def number(value: float) -> float | None:
            return value if math.isfinite(value) else None

        lift_ci = self.lift_ci
        return {
            "metric": self.metric,
            "method": self.method,
            "estimate": number(self.estimate),
            "ci": [number(self.ci_low), number(self.ci_high)],
            "p_value": self.p_value,
            "alpha": self.alpha,
            "n": [self.n_a, self.n_b],
            "baseline": self.baseline,
            "lift": self.lift,
            "lift_ci": None if lift_ci is None else [number(lift_ci[0]), number(lift_ci[1])],
            "significant": self.significant,
        }

    def describe(self, digits: int = 4) -> str:
        """One line with the numbers, for a decision's reason."""
        ci = f"[{self.ci_low:.{digits}g}, {self.ci_high:.{digits}g}]"
        lift = "" if self.lift is None else f" ({self.lift:+.1%})"
        return (
            f"{self.metric} {self.estimate:+.{digits}g}{lift}, {1 - self.alpha:.0%} CI {ci},"
            f" p={self.p_value:.3g} ({self.method}, n={self.n_a}/{self.n_b})"
        )
