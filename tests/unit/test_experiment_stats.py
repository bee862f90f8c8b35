"""Fixed-horizon tests, effect sizes and sample sizes: values against independent computations, power."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import power_proportions_2indep, proportion_confint, proportions_ztest

from opsloop.errors import InvalidInputError
from workflows.experiments.stats import (
    hodges_lehmann,
    mann_whitney,
    paired_t,
    sample_size_means,
    sample_size_proportions,
    two_proportions,
    welch,
)
from workflows.experiments.summaries import Moments, VariantSummary


def test_moments_merge_like_one_sample_and_rates_are_moments_of_zeros_and_ones() -> None:
    rng = np.random.default_rng(3)
    x = rng.lognormal(4, 1, 1000) + 1e6  # a large offset: sums of squares would cancel here
    merged = (
        Moments.from_samples(x[:10])
        + Moments.from_samples(x[10:700])
        + Moments()
        + Moments.from_samples(x[700:])
    )
    assert merged.n == 1000
    assert merged.mean == pytest.approx(x.mean(), rel=1e-12)
    assert merged.var == pytest.approx(x.var(ddof=1), rel=1e-9)
    flags = np.r_[np.ones(37), np.zeros(963)]
    rate, sample = Moments.from_counts(37, 1000), Moments.from_samples(flags)
    assert (rate.n, rate.mean, rate.m2) == pytest.approx((sample.n, sample.mean, sample.m2))
    with pytest.raises(InvalidInputError, match="non-finite value"):
        Moments.from_samples([1.0, float("nan")])
    with pytest.raises(InvalidInputError, match="38 successes out of 37"):
        Moments.from_counts(38, 37)


def test_variant_summary_from_per_request_arrays() -> None:
    summary = VariantSummary.from_samples(
        [True, False, True, True], [10, 20, 30, 40], [0.1, 0.1, 0.2, 0.2], [1, 0]
    )
    assert summary.requests == 4
    assert summary.errors.mean == 0.25
    assert summary.cost_usd.mean == pytest.approx(0.15)
    assert summary.primary.n == 2
    with pytest.raises(InvalidInputError, match="latency_ms holds a non-finite value"):
        VariantSummary.from_samples([True], [float("inf")])
    with pytest.raises(InvalidInputError, match="success flags"):
        VariantSummary.from_samples([2, 1], [1, 1])


def _newcombe(k_b: int, n_b: int, k_a: int, n_a: int, alpha: float) -> tuple[float, float]:
    """Newcombe's hybrid score interval of p_b - p_a, from Wilson intervals (his method 10)."""
    p_b, p_a = k_b / n_b, k_a / n_a
    l_b, u_b = proportion_confint(k_b, n_b, alpha=alpha, method="wilson")
    l_a, u_a = proportion_confint(k_a, n_a, alpha=alpha, method="wilson")
    d = p_b - p_a
    return d - math.hypot(p_b - l_b, u_a - p_a), d + math.hypot(u_b - p_b, p_a - l_a)


@pytest.mark.parametrize(
    ("k_a", "n_a", "k_b", "n_b"), [(100, 1000, 120, 1000), (5, 40, 0, 35), (950, 19_000, 80, 1000)]
)
def test_two_proportions_matches_the_pooled_z_test_and_newcombes_interval(
    k_a: int, n_a: int, k_b: int, n_b: int
) -> None:
    result = two_proportions(k_a, n_a, k_b, n_b, metric="conversion", alpha=0.1)
    p_a, p_b = k_a / n_a, k_b / n_b
    pooled = (k_a + k_b) / (n_a + n_b)
    z = (p_b - p_a) / math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    assert result.p_value == pytest.approx(2 * stats.norm.sf(abs(z)))
    assert (result.ci_low, result.ci_high) == pytest.approx(_newcombe(k_b, n_b, k_a, n_a, 0.1))
    assert result.estimate == pytest.approx(p_b - p_a)
    assert result.lift == pytest.approx((p_b - p_a) / p_a)
    assert result.significant == (result.p_value < 0.1)
    assert (result.n_a, result.n_b, result.method, result.metric) == (
        n_a,
        n_b,
        "two_proportion_z",
        "conversion",
    )


def test_two_proportions_at_the_edges() -> None:
    none = two_proportions(0, 500, 0, 500)
    assert (none.p_value, none.estimate, none.significant) == (1.0, 0.0, False)
    assert none.ci_low < 0 < none.ci_high  # Newcombe stays informative at 0%
    assert none.lift is None
    assert two_proportions(500, 500, 500, 500).p_value == 1.0
    with pytest.raises(InvalidInputError, match="challenger has 11 successes out of 10"):
        two_proportions(1, 10, 11, 10)
    with pytest.raises(InvalidInputError, match="champion has 0 successes out of 0"):
        two_proportions(0, 0, 1, 10)
    with pytest.raises(InvalidInputError, match="alpha"):
        two_proportions(1, 10, 1, 10, alpha=1.5)


def test_welch_matches_scipy_on_the_raw_samples() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(100, 10, 40), rng.normal(105, 25, 90)
    result = welch(Moments.from_samples(a), Moments.from_samples(b), metric="latency_ms", alpha=0.01)
    expected = stats.ttest_ind(b, a, equal_var=False)
    ci = expected.confidence_interval(confidence_level=0.99)
    assert result.p_value == pytest.approx(expected.pvalue)
    assert (result.ci_low, result.ci_high) == pytest.approx((ci.low, ci.high))
    assert result.estimate == pytest.approx(b.mean() - a.mean())
    constant = welch(Moments.from_samples([3.0, 3.0]), Moments.from_samples([4.0, 4.0]))
    assert (constant.p_value, constant.ci_low, constant.ci_high) == (0.0, 1.0, 1.0)
    with pytest.raises(InvalidInputError, match="two values per variant"):
        welch(Moments.from_samples([1.0]), Moments.from_samples([1.0, 2.0]))


def test_paired_t_is_the_t_interval_of_the_differences() -> None:
    rng = np.random.default_rng(8)
    a = rng.uniform(0.2, 0.9, 25)
    b = a + rng.normal(0.04, 0.05, 25)
    result = paired_t(a, b, metric="eval:semantic_similarity", alpha=0.1)
    d = b - a
    half = stats.t.ppf(0.95, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    assert result.method == "paired_t" and (result.n_a, result.n_b) == (25, 25)
    assert result.estimate == pytest.approx(d.mean())
    assert (result.ci_low, result.ci_high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert result.p_value == pytest.approx(2 * stats.t.sf(abs(t), d.size - 1))
    assert result.baseline == pytest.approx(a.mean())
    same = paired_t([0.1, 0.5, 0.9], [0.2, 0.6, 1.0])  # every pair moved by the same amount
    assert (same.estimate, same.ci_low, same.p_value) == (pytest.approx(0.1), pytest.approx(0.1), 0.0)
    with pytest.raises(InvalidInputError, match="two or more pairs"):
        paired_t([0.5], [0.6])
    with pytest.raises(InvalidInputError, match="two or more pairs"):
        paired_t([0.5, 0.6], [0.6, 0.7, 0.8])
    with pytest.raises(InvalidInputError, match="non-finite"):
        paired_t([0.5, float("nan")], [0.6, 0.7])


def test_paired_t_holds_its_level_and_finds_what_two_samples_miss() -> None:
    """Questions differ far more than prompts do: pairing takes the questions' spread out."""
    rng = np.random.default_rng(9)
    runs, n = 2000, 40
    false_positives = paired_hits = welch_hits = 0
    for _ in range(runs):
        difficulty = rng.uniform(0.1, 0.9, n)
        a = difficulty + rng.normal(0, 0.05, n)
        null_b = difficulty + rng.normal(0, 0.05, n)
        better_b = difficulty + 0.045 + rng.normal(0, 0.05, n)
        false_positives += paired_t(a, null_b).significant
        paired_hits += paired_t(a, better_b).significant
        welch_hits += welch(Moments.from_samples(a), Moments.from_samples(better_b)).significant
    assert false_positives / runs <= 0.06
    assert paired_hits / runs >= 0.9
    assert welch_hits / runs <= 0.25


@pytest.mark.parametrize(("n", "m"), [(7, 9), (30, 25), (60, 80)])
def test_hodges_lehmann_and_moses_interval_match_brute_force(n: int, m: int) -> None:
    rng = np.random.default_rng(n)
    a = rng.exponential(100, n).round(0)  # rounded: ties among the differences
    b = rng.exponential(120, m).round(0)
    diffs = np.sort(np.subtract.outer(b, a).ravel())
    total = n * m
    c = math.floor(total / 2 - stats.norm.ppf(0.975) * math.sqrt(total * (n + m + 1) / 12))
    shift, low, high = hodges_lehmann(a, b)
    assert shift == np.median(diffs)
    assert (low, high) == (diffs[c - 1], diffs[total - c])


def test_hodges_lehmann_interval_is_unbounded_with_too_few_values() -> None:
    assert hodges_lehmann([1.0, 2.0], [3.0, 4.0])[1:] == (-math.inf, math.inf)


def test_mann_whitney_matches_scipy_and_estimates_the_shift() -> None:
    rng = np.random.default_rng(11)
    a = rng.lognormal(np.log(100), 0.4, 4000)
    b = rng.lognormal(np.log(100), 0.4, 3000) + 15.0  # 15 ms slower throughout
    result = mann_whitney(a, b, metric="latency_ms", alternative="greater")
    assert result.p_value == pytest.approx(stats.mannwhitneyu(b, a, alternative="greater").pvalue)
    assert result.significant
    assert result.ci_low < 15.0 < result.ci_high
    assert result.baseline == pytest.approx(np.median(a))
    same = mann_whitney(np.full(5, 7.0), np.full(6, 7.0))
    assert (same.p_value, same.estimate) == (1.0, 0.0)
    with pytest.raises(InvalidInputError, match="needs values in both variants"):
        mann_whitney([], [1.0])


def test_sample_size_for_proportions_is_the_classical_formula() -> None:
    size = sample_size_proportions(0.10, 0.02)
    p_a, p_b, z_a, z_b = 0.10, 0.12, stats.norm.ppf(0.975), stats.norm.ppf(0.8)
    pooled = (p_a + p_b) / 2
    n = (
        z_a * math.sqrt(2 * pooled * (1 - pooled)) + z_b * math.sqrt(p_a * (1 - p_a) + p_b * (1 - p_b))
    ) ** 2 / 0.02**2
    assert size.n_a == size.n_b == math.ceil(n) == 3841
    canary = sample_size_proportions(0.10, 0.02, ratio=5 / 95)
    assert canary.n_b == math.ceil(canary.n_a * 5 / 95)
    assert power_proportions_2indep(0.02, 0.10, canary.n_a, ratio=5 / 95).power == pytest.approx(
        0.8, abs=1e-3
    )


def test_sample_size_for_means_gives_the_power_by_the_noncentral_t() -> None:
    size = sample_size_means(2.0, 20.0)

    def power(n: int) -> float:
        dof, nc = 2 * n - 2, 2.0 / 20.0 / math.sqrt(2 / n)
        crit = stats.t.ppf(0.975, dof)
        return float(stats.nct.sf(crit, dof, nc) + stats.nct.cdf(-crit, dof, nc))

    assert power(size.n_a) >= 0.8 > power(size.n_a - 1)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: sample_size_proportions(0.1, 0.0), "differ"),
        (lambda: sample_size_proportions(0.95, 0.1), "both rates must be in"),
        (lambda: sample_size_proportions(0.1, 0.02, power=0.01), "power"),
        (lambda: sample_size_proportions(0.1, 0.02, ratio=0), "ratio"),
        (lambda: sample_size_means(1.0, 0.0), "sd > 0"),
        (lambda: sample_size_means(0.0, 1.0), "non-zero effect"),
    ],
)
def test_sample_size_refuses_impossible_designs(call: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        call()  # type: ignore[operator]


def test_power_of_the_rate_test_at_its_designed_sample_size() -> None:
    """A 10% -> 12% conversion is detected in >= 80% of experiments at the designed n.

    The design is exact, so the simulated power sits at 80% give or take the Monte Carlo
    error (0.04 points over 10^6 experiments); it must also agree with statsmodels' power.
    """
    size = sample_size_proportions(0.10, 0.02)
    n, sims = size.n_a, 1_000_000
    rng = np.random.default_rng(20)
    k_a, k_b = rng.binomial(n, 0.10, sims), rng.binomial(n, 0.12, sims)
    pooled = (k_a + k_b) / (2 * n)
    z = (k_b - k_a) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
    p = 2 * stats.norm.sf(np.abs(z))
    for i in range(20):  # the vectorised test is two_proportions'
        assert two_proportions(int(k_a[i]), n, int(k_b[i]), n).p_value == pytest.approx(p[i])
        assert proportions_ztest([k_b[i], k_a[i]], [n, n])[1] == pytest.approx(p[i])
    power = float((p < 0.05).mean())
    se = math.sqrt(power * (1 - power) / sims)
    print(f"rate metric: power {power:.4f} (se {se:.4f}) at n={n} per variant")
    assert power >= 0.80
    assert abs(power - power_proportions_2indep(0.02, 0.10, n).power) < 4 * se


def test_power_of_welch_at_its_designed_sample_size() -> None:
    """A 2 ms shift of a mean of 100 ms (sd 20) is detected in >= 80% of experiments at the designed n.

    Normal data are simulated through their sufficient statistics (the sample mean is normal,
    ``(n - 1) s^2 / sigma^2`` chi-square), which is what Welch's test sees.
    """
    size = sample_size_means(2.0, 20.0)
    n, sims = size.n_a, 1_000_000
    rng = np.random.default_rng(21)
    mean_a, mean_b = rng.normal(100, 20 / math.sqrt(n), sims), rng.normal(102, 20 / math.sqrt(n), sims)
    var_a, var_b = 400 * rng.chisquare(n - 1, (2, sims)) / (n - 1)
    p = stats.ttest_ind_from_stats(
        mean_b, np.sqrt(var_b), n, mean_a, np.sqrt(var_a), n, equal_var=False
    ).pvalue
    for i in range(20):
        a = Moments(n, float(mean_a[i]), float(var_a[i]) * (n - 1))
        b = Moments(n, float(mean_b[i]), float(var_b[i]) * (n - 1))
        assert welch(a, b).p_value == pytest.approx(p[i])
    power = float((p < 0.05).mean())
    se = math.sqrt(power * (1 - power) / sims)
    print(f"continuous metric: power {power:.4f} (se {se:.4f}) at n={n} per variant")
    assert power >= 0.80
    assert abs(power - 0.80) < 4 * se + 0.002  # + the t power's rounding up of n
