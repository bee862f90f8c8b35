"""An always-valid sequential test: the normal-mixture mSPRT, so results may be read after every batch.

A fixed-horizon test read after every batch and stopped at the first ``p < alpha`` finds a
"winner" in an A/A experiment far more often than ``alpha`` (about one in four with 20 looks;
tests/unit/test_experiment_sequential.py measures it). The mixture sequential probability
ratio test of Johari, Pekelis and Walsh ("Always Valid Inference", 2017; Operations Research
2022) does not: its p-value and confidence interval hold simultaneously at every look, so
the experiment may stop whenever the p-value drops below ``alpha``.

For an estimate ``d`` of the difference ``theta = mean_b - mean_a`` with variance ``V``
(``var_a / n_a + var_b / n_b``), and a normal mixing distribution ``theta ~ N(theta0, tau^2)``
over the alternatives, the likelihood ratio against ``H0: theta = theta0`` is (the paper's
normal case, written with ``V`` in place of ``2 sigma^2 / n`` so the variants may differ in
size)::

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 (d - theta0)^2 / (2 V (V + tau^2)))

``Lambda`` is a non-negative martingale under ``H0``, so by Ville's inequality it reaches
``1 / alpha`` with probability at most ``alpha`` ever. The always-valid p-value is the
running minimum of ``1 / Lambda``; the always-valid interval is ``{theta0 : Lambda(theta0) <
1 / alpha}``, ``d`` plus or minus a radius, intersected over the looks.

The variances are plug-in estimates, so the guarantee is asymptotic: below a few dozen
values per variant the estimate of ``V`` is too noisy to rely on, which is why the
decisions wait for ``min_samples``. ``tau`` is the scale of the effects the test is tuned to
find; it defaults to ``MIXTURE_SD`` standard deviations of the metric (a small effect), or the
minimum detectable effect when an experiment states one. Any fixed ``tau`` keeps the error
rate; a good one only makes detection faster. A small one is slow on a large effect seen in
few values (``V`` far above ``tau^2``): the guardrails, which must catch a broken challenger
within its first requests, average the ratio over several scales
(:func:`mixture_log_lr_grid`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from opsloop.errors import InvalidInputError
from workflows.experiments.summaries import Comparison, Moments

__all__ = [
    "MIXTURE_SD",
    "always_valid_p_values",
    "default_tau",
    "mixture_log_lr",
    "mixture_log_lr_grid",
    "msprt",
    "msprt_radius",
]

MIXTURE_SD = 0.1
"""Default mixing scale ``tau``, in standard deviations of the metric's values."""


def mixture_log_lr(diff: ArrayLike, variance: ArrayLike, tau: ArrayLike, null: float = 0.0) -> np.ndarray:
    """``log Lambda`` of the normal-mixture SPRT, element-wise (any broadcastable shapes).

    Where ``variance`` is 0 the estimate is exact: the ratio is 0 at ``diff == null`` and
    infinite elsewhere.
    """
    d = np.asarray(diff, dtype=float) - null
    v = np.asarray(variance, dtype=float)
    t2 = np.square(np.asarray(tau, dtype=float))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lr = 0.5 * np.log(v / (v + t2)) + t2 * d * d / (2.0 * v * (v + t2))
    return np.where(v > 0, log_lr, np.where(d == 0, -np.inf, np.inf))


def mixture_log_lr_grid(
    diff: ArrayLike, variance: ArrayLike, taus: Sequence[ArrayLike], null: float = 0.0
) -> np.ndarray:
    """``log`` of the equal-weight average of ``Lambda`` over several mixing scales.

    An average of non-negative martingales is one too, so Ville's bound still holds; the
    average is never below ``1/len(taus)`` of its best member, so it loses only ``log K``
    to the scale that fits the effect, whatever that turns out to be.
    """
    logs = np.stack([np.asarray(mixture_log_lr(diff, variance, tau, null), dtype=float) for tau in taus])
    return np.logaddexp.reduce(logs, axis=0) - math.log(len(taus))


def always_valid_p_values(
    diff: ArrayLike, variance: ArrayLike, tau: ArrayLike, null: float = 0.0
) -> np.ndarray:
    """Always-valid p-values along the last axis (the looks): the running minimum of ``1 / Lambda``."""
    p = np.minimum(1.0, np.exp(-mixture_log_lr(diff, variance, tau, null)))
    return np.minimum.accumulate(p, axis=-1)


def msprt_radius(variance: ArrayLike, tau: ArrayLike, alpha: float) -> np.ndarray:
    """Half-width of the always-valid interval at one look: ``d - r < theta < d + r``."""
    v = np.asarray(variance, dtype=float)
    t2 = np.square(np.asarray(tau, dtype=float))
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = v * (v + t2) / t2 * (2.0 * math.log(1.0 / alpha) + np.log((v + t2) / v))
    return np.where(v > 0, np.sqrt(r2), 0.0)


def default_tau(a: Moments, b: Moments) -> float:
    """``MIXTURE_SD`` times the pooled standard deviation of the two variants' values."""
    dof = a.n + b.n - 2
    pooled = math.sqrt((a.m2 + b.m2) / dof) if dof > 0 else 0.0
    return MIXTURE_SD * pooled


def msprt(
    a: Moments,
    b: Moments,
    *,
    metric: str = "metric",
    alpha: float = 0.05,
    tau: float | None = None,
    null: float = 0.0,
    previous: Comparison | None = None,
) -> Comparison:
    """The always-valid comparison of the challenger's mean with the champion's at this look.

    Args:
        a: The champion's moments so far (cumulative).
        b: The challenger's moments so far.
        metric: Named in the result.
        alpha: Error rate over all looks together.
        tau: Mixing scale in the metric's unit (see the module docstring); default
            :func:`default_tau`.
        null: The difference under the null hypothesis (a non-inferiority margin, say).
        previous: The result of the previous look at the same comparison (same metric,
            ``tau`` and ``null``), if any: the p-value keeps its running minimum and the
            interval its running intersection. Each look is valid on its own too.

    Raises:
        InvalidInputError: Either variant has no values, ``alpha`` is outside (0, 1), or
            ``tau`` is not positive.
    """
    if not 0 < alpha < 1:
        raise InvalidInputError(f"alpha {alpha}: must be in (0, 1)", field="alpha")
    if a.n == 0 or b.n == 0:
        raise InvalidInputError(
            f"{metric}: both variants need values (champion {a.n}, challenger {b.n})", field=metric
        )
    scale = default_tau(a, b) if tau is None else tau
    variance = a.var / a.n + b.var / b.n
    diff = b.mean - a.mean
    if variance > 0 and not scale > 0:
        raise InvalidInputError(f"tau {tau}: must be positive", field="tau")
    p = float(min(1.0, math.exp(-float(mixture_log_lr(diff, variance, scale, null)))))
    radius = float(msprt_radius(variance, scale, alpha))
    low, high = diff - radius, diff + radius
    if previous is not None and previous.method == "msprt":
        p = min(p, previous.p_value)
        # An empty intersection means the effect moved between looks (the test assumes a
        # fixed one): the current interval is the honest one to report then.
        if max(low, previous.ci_low) <= min(high, previous.ci_high):
            low, high = max(low, previous.ci_low), min(high, previous.ci_high)
    return Comparison(
        metric=metric,
        method="msprt",
        estimate=diff,
        ci_low=low,
        ci_high=high,
        p_value=p,
        alpha=alpha,
        n_a=a.n,
        n_b=b.n,
        baseline=a.mean,
        significant=p <= alpha,
    )
