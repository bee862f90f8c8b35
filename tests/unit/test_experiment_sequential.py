"""The always-valid mSPRT: its formula, and A/A experiments read after every batch (seeded simulations)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from opsloop.errors import InvalidInputError
from workflows.experiments.sequential import (
    MIXTURE_SD,
    always_valid_p_values,
    mixture_log_lr,
    mixture_log_lr_grid,
    msprt,
    msprt_radius,
)
from workflows.experiments.stats import sample_size_proportions
from workflows.experiments.summaries import Moments

ALPHA = 0.05
EXPERIMENTS = 1000
LOOKS = 20


def test_the_closed_form_is_the_mixture_of_likelihood_ratios() -> None:
    """Lambda equals the N(d; theta, V) / N(d; theta0, V) ratio integrated over theta ~ N(theta0, tau^2)."""
    for d, v, tau, null in ((0.013, 4e-5, 0.01, 0.0), (-2.5, 1.7, 0.5, 0.3), (0.0, 1e-4, 0.02, 0.01)):

        def integrand(
            theta: float, d: float = d, v: float = v, tau: float = tau, null: float = null
        ) -> float:
            ratio = stats.norm.pdf(d, theta, math.sqrt(v)) / stats.norm.pdf(d, null, math.sqrt(v))
            return float(ratio * stats.norm.pdf(theta, null, tau))

        expected, _ = integrate.quad(integrand, null - 12 * tau, null + 12 * tau, points=[d], limit=200)
        assert float(np.exp(mixture_log_lr(d, v, tau, null))) == pytest.approx(expected, rel=1e-6)


def test_the_grid_averages_the_ratios_of_its_scales() -> None:
    d, v, taus = np.array([0.0, 0.01, 0.2]), np.array([1e-4, 1e-4, 4e-3]), (0.003, 0.01, 0.03, 0.1)
    singles = np.exp([mixture_log_lr(d, v, tau) for tau in taus])
    assert np.exp(mixture_log_lr_grid(d, v, taus)) == pytest.approx(singles.mean(axis=0))


def test_the_interval_ends_are_where_the_ratio_reaches_one_over_alpha() -> None:
    d, v, tau = 0.02, 3e-5, 0.01
    r = float(msprt_radius(v, tau, ALPHA))
    for end in (d - r, d + r):
        assert float(mixture_log_lr(d, v, tau, null=end)) == pytest.approx(math.log(1 / ALPHA))


def test_msprt_from_moments_keeps_the_running_minimum_and_intersection() -> None:
    a, b = Moments.from_counts(100, 1000), Moments.from_counts(140, 1000)
    first = msprt(a, b, metric="conversion", tau=0.02)
    variance = a.var / a.n + b.var / b.n
    assert first.p_value == pytest.approx(min(1.0, math.exp(-float(mixture_log_lr(0.04, variance, 0.02)))))
    assert first.ci_high - first.estimate == pytest.approx(float(msprt_radius(variance, 0.02, ALPHA)))
    assert first.method == "msprt" and first.baseline == pytest.approx(0.1)
    # A later look with weaker evidence keeps the earlier, smaller p-value and the tighter ends.
    later = msprt(
        a + Moments.from_counts(100, 1000), b + Moments.from_counts(100, 1000), tau=0.02, previous=first
    )
    assert later.p_value == first.p_value
    assert later.ci_low >= first.ci_low and later.ci_high <= first.ci_high
    assert msprt(a, b).p_value == pytest.approx(
        math.exp(-float(mixture_log_lr(0.04, variance, MIXTURE_SD * math.sqrt((a.m2 + b.m2) / 1998))))
    )


def test_msprt_edges_and_bad_input() -> None:
    same = msprt(Moments.from_counts(0, 500), Moments.from_counts(0, 500))
    assert (same.p_value, same.ci_low, same.ci_high, same.significant) == (1.0, 0.0, 0.0, False)
    certain = msprt(Moments.from_counts(0, 500), Moments.from_counts(500, 500))
    assert (certain.p_value, certain.significant) == (0.0, True)
    with pytest.raises(InvalidInputError, match="both variants need values"):
        msprt(Moments(), Moments.from_counts(1, 10))
    with pytest.raises(InvalidInputError, match="tau"):
        msprt(Moments.from_counts(1, 10), Moments.from_counts(2, 10), tau=0.0)
    with pytest.raises(InvalidInputError, match="alpha"):
        msprt(Moments.from_counts(1, 10), Moments.from_counts(2, 10), alpha=0.0)


def _rate_looks(
    rng: np.random.Generator, batch: int, p_a: float, p_b: float, looks: int
) -> dict[str, np.ndarray]:
    """Cumulative per-look statistics of EXPERIMENTS rate experiments: shape (experiments, looks)."""
    counts = rng.binomial(batch, [p_a, p_b], size=(EXPERIMENTS, looks, 2)).cumsum(axis=1)
    n = batch * np.arange(1, looks + 1)[None, :, None]
    rate = counts / n
    var = rate * (1 - rate) * n / (n - 1)
    return {"mean": rate, "var": var, "n": np.broadcast_to(n, rate.shape)}


def _continuous_looks(rng: np.random.Generator, batch: int, shift: float) -> dict[str, np.ndarray]:
    """The same for a skewed latency-like metric (log-normal, median 100 ms)."""
    x = rng.lognormal(math.log(100), 0.5, size=(EXPERIMENTS, LOOKS, batch, 2))
    x[..., 1] += shift
    total, squares = x.sum(axis=2).cumsum(axis=1), (x**2).sum(axis=2).cumsum(axis=1)
    n = batch * np.arange(1, LOOKS + 1)[None, :, None]
    mean = total / n
    return {"mean": mean, "var": (squares - total * mean) / (n - 1), "n": np.broadcast_to(n, mean.shape)}


def _sequential_p(looks: dict[str, np.ndarray], tau: float | None = None) -> np.ndarray:
    """Always-valid p-values at every look, with msprt()'s default tau unless one is given."""
    mean, var, n = looks["mean"], looks["var"], looks["n"]
    diff = mean[..., 1] - mean[..., 0]
    variance = var[..., 0] / n[..., 0] + var[..., 1] / n[..., 1]
    scale = MIXTURE_SD * np.sqrt((var[..., 0] + var[..., 1]) / 2) if tau is None else tau
    return always_valid_p_values(diff, variance, scale)


def _agrees_with_msprt(looks: dict[str, np.ndarray], p: np.ndarray, tau: float | None = None) -> None:
    """The vectorised p-values are the ones msprt() gives look by look from Moments."""
    for e in range(10):
        previous = None
        for k in range(LOOKS):
            n = int(looks["n"][e, k, 0])
            a, b = (
                Moments(n, float(looks["mean"][e, k, v]), float(looks["var"][e, k, v]) * (n - 1))
                for v in (0, 1)
            )
            previous = msprt(a, b, tau=tau, previous=previous)
            assert previous.p_value == pytest.approx(p[e, k], rel=1e-9, abs=1e-12)


def _report(name: str, sequential: float, naive: float, last: float) -> None:
    print(
        f"A/A {name}, {EXPERIMENTS} experiments x {LOOKS} looks: false positives mSPRT {sequential:.1%},"
        f" fixed-horizon test at every look {naive:.1%} (at the last look only {last:.1%})"
    )


def test_aa_rate_metric_checked_after_every_batch_keeps_false_positives_under_alpha() -> None:
    looks = _rate_looks(np.random.default_rng(101), batch=200, p_a=0.1, p_b=0.1, looks=LOOKS)
    p = _sequential_p(looks)
    _agrees_with_msprt(looks, p)
    sequential = float((p[:, -1] <= ALPHA).mean())  # running minimum: significant at any look
    # The naive analysis: the pooled two-proportion z test at every look, stopping at p < alpha.
    counts, n = looks["mean"] * looks["n"], looks["n"][..., 0]
    pooled = counts.sum(axis=-1) / (2 * n)
    z = (looks["mean"][..., 1] - looks["mean"][..., 0]) / np.sqrt(pooled * (1 - pooled) * 2 / n)
    fixed = 2 * stats.norm.sf(np.abs(z))
    naive, last = float((fixed < ALPHA).any(axis=1).mean()), float((fixed[:, -1] < ALPHA).mean())
    _report("conversion 10%", sequential, naive, last)
    assert sequential <= ALPHA
    assert naive > 0.10  # peeking inflates the fixed-horizon test's error several-fold


def test_aa_continuous_metric_checked_after_every_batch_keeps_false_positives_under_alpha() -> None:
    looks = _continuous_looks(np.random.default_rng(102), batch=100, shift=0.0)
    p = _sequential_p(looks)
    _agrees_with_msprt(looks, p)
    sequential = float((p[:, -1] <= ALPHA).mean())
    mean, var, n = looks["mean"], looks["var"], looks["n"]
    fixed = stats.ttest_ind_from_stats(
        mean[..., 1],
        np.sqrt(var[..., 1]),
        n[..., 1],
        mean[..., 0],
        np.sqrt(var[..., 0]),
        n[..., 0],
        equal_var=False,
    ).pvalue
    naive, last = float((fixed < ALPHA).any(axis=1).mean()), float((fixed[:, -1] < ALPHA).mean())
    _report("log-normal latency", sequential, naive, last)
    assert sequential <= ALPHA
    assert naive > 0.10


def test_always_valid_interval_covers_the_true_effect_at_every_look_at_once() -> None:
    looks = _continuous_looks(np.random.default_rng(103), batch=100, shift=5.0)
    mean, var, n = looks["mean"], looks["var"], looks["n"]
    diff = mean[..., 1] - mean[..., 0]
    variance = var[..., 0] / n[..., 0] + var[..., 1] / n[..., 1]
    radius = msprt_radius(variance, MIXTURE_SD * np.sqrt((var[..., 0] + var[..., 1]) / 2), ALPHA)
    low, high = np.maximum.accumulate(diff - radius, axis=1), np.minimum.accumulate(diff + radius, axis=1)
    missed = float(((low > 5.0) | (high < 5.0)).any(axis=1).mean())
    print(f"always-valid 95% interval missed the true shift at some look in {missed:.1%} of experiments")
    assert missed <= ALPHA


def test_sequential_power_at_the_fixed_horizon_design_and_beyond() -> None:
    """The price of looking after every batch: less power at the fixed test's n, 80% by twice it."""
    size = sample_size_proportions(0.10, 0.02)
    batch = math.ceil(size.n_a / LOOKS)
    looks = _rate_looks(np.random.default_rng(104), batch=batch, p_a=0.10, p_b=0.12, looks=2 * LOOKS)
    p = _sequential_p(looks, tau=0.02)  # tau: the effect the experiment was designed for
    at_design, at_double = float((p[:, LOOKS - 1] <= ALPHA).mean()), float((p[:, -1] <= ALPHA).mean())
    print(
        f"mSPRT power for 10% -> 12% (tau 0.02, a look every {batch} per variant):"
        f" {at_design:.1%} at the fixed design's n={batch * LOOKS}, {at_double:.1%} at n={2 * batch * LOOKS}"
    )
    assert 0.3 < at_design < 0.8
    assert at_double >= 0.8
