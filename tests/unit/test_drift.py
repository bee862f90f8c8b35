"""Drift statistics: values against independent computations, edge cases, detection quality."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from opsloop.errors import InvalidInputError
from workflows.demo import generate_credit_data
from workflows.drift import (
    OTHER,
    DriftThresholds,
    Kind,
    compare_feature,
    compare_frames,
    ks_test,
    normalised_wasserstein,
    psi,
    quantile_edges,
)

SEEDS = range(20)
SIZES = (500, 2000, 10_000)
CATEGORIES = np.array(["a", "b", "c", "d"])
BASE_MIX = (0.4, 0.3, 0.2, 0.1)


def test_psi_matches_a_hand_computed_value() -> None:
    reference = np.array([0.25, 0.25, 0.5])
    current = np.array([0.5, 0.25, 0.25])
    expected = (0.5 - 0.25) * np.log(0.5 / 0.25) + 0 + (0.25 - 0.5) * np.log(0.25 / 0.5)
    assert psi(reference, current) == pytest.approx(expected)
    assert psi(reference, current) == pytest.approx(0.5 * np.log(2))
    assert psi(reference, reference) == 0.0


def test_numeric_psi_uses_reference_quantile_bins_with_open_outer_bins() -> None:
    reference = np.arange(1.0, 11.0)  # 1..10
    edges = quantile_edges(reference, bins=2)
    assert edges.tolist() == [5.5]
    # Current: 3 below the median edge, 1 above; -100 and 100 land in the open outer bins.
    result = compare_feature(reference, np.array([-100.0, 2.0, 3.0, 100.0]), "numeric", name="x", bins=2)
    assert result.reference_shares == (0.5, 0.5)
    assert result.current_shares == (0.75, 0.25)
    assert result.psi == pytest.approx(0.25 * np.log(1.5) - 0.25 * np.log(0.5))
    assert result.bins == ("< 5.5", ">= 5.5")


def test_ks_wasserstein_and_js_match_scipy() -> None:
    rng = np.random.default_rng(7)
    for n, m in ((50, 80), (3000, 2000), (20_000, 15_000)):  # exact and asymptotic KS p-values
        ref, cur = rng.normal(0, 2, n), rng.normal(0.3, 2.5, m)
        expected = stats.ks_2samp(ref, cur)
        statistic, pvalue = ks_test(ref, cur)
        assert statistic == pytest.approx(expected.statistic)
        assert pvalue == pytest.approx(expected.pvalue, rel=1e-6, abs=1e-300)
        result = compare_feature(ref, cur, "numeric")
        assert result.ks_statistic == pytest.approx(expected.statistic)
        assert result.ks_pvalue == pytest.approx(expected.pvalue, rel=1e-6, abs=1e-300)
        w = stats.wasserstein_distance(ref, cur) / np.std(ref)
        assert result.wasserstein == pytest.approx(w, rel=1e-9)
        assert normalised_wasserstein(ref, cur) == pytest.approx(w, rel=1e-9)
        expected_js = jensenshannon(result.reference_shares, result.current_shares, base=2)
        assert result.js == pytest.approx(expected_js)


def test_categorical_scores_match_independent_computations() -> None:
    ref = pd.Series(["a"] * 50 + ["b"] * 30 + ["c"] * 20)
    cur = pd.Series(["a"] * 30 + ["b"] * 30 + ["c"] * 40)
    result = compare_feature(ref, cur, "categorical", name="colour")
    assert result.bins == ("a", "b", "c")
    r, c = np.array([0.5, 0.3, 0.2]), np.array([0.3, 0.3, 0.4])
    assert result.psi == pytest.approx(float(np.sum((c - r) * np.log(c / r))))
    assert result.js == pytest.approx(jensenshannon(r, c, base=2))
    two_samples = stats.chi2_contingency([[50, 30, 20], [30, 30, 40]], correction=False)
    assert result.chi2_pvalue == pytest.approx(two_samples.pvalue)
    assert result.ks_pvalue is None and result.wasserstein is None


def test_constant_feature_is_finite_and_not_drifted() -> None:
    same = compare_feature(np.full(200, 3.0), np.full(300, 3.0), "numeric")
    assert not same.drifted and same.psi == 0.0 and same.wasserstein == 0.0 and same.ks_statistic == 0.0
    moved = compare_feature(np.full(200, 3.0), np.full(300, 4.0), "numeric", DriftThresholds(min_rows=200))
    assert moved.drifted and np.isfinite(moved.psi) and np.isfinite(moved.wasserstein or np.inf)


def test_empty_bins_keep_psi_finite() -> None:
    rng = np.random.default_rng(1)
    result = compare_feature(rng.normal(0, 1, 1000), rng.normal(10, 1, 1000), "numeric")
    assert np.isfinite(result.psi) and result.psi > 5 and result.drifted
    assert 0.0 <= result.js <= 1.0


def test_unseen_categories_are_pooled_into_other() -> None:
    ref = pd.Series(["a", "b"] * 500)
    cur = pd.Series(["a", "b"] * 450 + ["z", "y"] * 50)
    result = compare_feature(ref, cur, "categorical")
    assert result.bins == ("a", "b", OTHER)
    assert result.current_shares == pytest.approx((0.45, 0.45, 0.1))
    assert result.reference_shares == pytest.approx((0.5, 0.5, 0.0))
    assert np.isfinite(result.psi) and result.chi2_pvalue is not None and result.chi2_pvalue < 1e-10
    assert result.drifted


def test_missing_values_are_dropped_and_counted() -> None:
    rng = np.random.default_rng(2)
    ref = np.append(rng.normal(size=500), [np.nan] * 5)
    cur = pd.Series(np.append(rng.normal(size=400), [np.nan] * 7))
    result = compare_feature(ref, cur, "numeric")
    assert (result.reference_count, result.reference_missing) == (500, 5)
    assert (result.current_count, result.current_missing) == (400, 7)
    cats = compare_feature(pd.Series(["a", None, "b"]), pd.Series(["a", "b", None, None]), "categorical")
    assert (cats.reference_missing, cats.current_missing) == (1, 2)


def test_tiny_samples_do_not_fire_on_noise() -> None:
    rng = np.random.default_rng(3)
    # The statistics alone (no floor on the sample) already hold back on noise ...
    no_floor = DriftThresholds(min_rows=1)
    fired = [
        compare_feature(rng.normal(size=8), rng.normal(size=6), "numeric", no_floor).drifted
        for _ in range(40)
    ]
    assert sum(fired) <= 2
    # ... and the default floor gives no verdict at all, with the counts.
    small = compare_feature(rng.normal(size=8), rng.normal(size=6), "numeric")
    assert small.insufficient_data and not small.drifted
    assert (small.reference_count, small.current_count) == (8, 6)
    single = compare_feature(np.array([1.0]), np.array([1.0]), "numeric")
    assert not single.drifted


def test_bad_input_names_the_column() -> None:
    ref = pd.DataFrame({"x": [1.0, 2.0], "y": ["a", "b"]})
    with pytest.raises(InvalidInputError, match="current lacks columns \\['y'\\]"):
        compare_frames(ref, pd.DataFrame({"x": [1.0]}))
    with pytest.raises(InvalidInputError, match="'x' has no values") as info:
        compare_frames(ref, pd.DataFrame({"x": [np.nan], "y": ["a"]}))
    assert info.value.details["field"] == "x"
    with pytest.raises(InvalidInputError, match="no rows"):
        compare_frames(ref, ref.iloc[:0])
    with pytest.raises(InvalidInputError, match="'y' is not numeric"):
        compare_feature(ref["y"], ref["y"], "numeric", name="y")
    with pytest.raises(InvalidInputError, match="ks_pvalue"):
        DriftThresholds(ks_pvalue=0.0)


def test_compare_frames_detects_kinds_and_honours_declarations() -> None:
    rng = np.random.default_rng(4)
    frame = pd.DataFrame(
        {"x": rng.normal(size=300), "code": rng.integers(0, 3, 300), "s": ["a", "b", "c"] * 100}
    )
    report = compare_frames(frame, frame.sample(frac=1.0, random_state=0), categorical={"code"})
    assert {n: f.kind for n, f in report.features.items()} == {
        "x": "numeric",
        "code": "categorical",
        "s": "categorical",
    }
    assert not report.dataset_drift and report.share_drifted == 0.0
    assert (report.reference_rows, report.current_rows) == (300, 300)


# Detection quality at the default thresholds: each case draws a reference and a current
# sample of the same size; real changes must be caught in >= 95% of the seeds, no change and
# a negligible one (0.02 std) flagged in <= 5%.


def _normal(loc: float, scale: float) -> Callable[[np.random.Generator, int], np.ndarray]:
    return lambda rng, n: rng.normal(loc, scale, n)


def _mix(*p: float) -> Callable[[np.random.Generator, int], np.ndarray]:
    return lambda rng, n: rng.choice(CATEGORIES, n, p=p)


CASES: dict[str, tuple[Kind, Callable[[np.random.Generator, int], np.ndarray], bool]] = {
    "mean shift 0.5 std": ("numeric", _normal(0.5, 1.0), True),
    "variance x2": ("numeric", _normal(0.0, np.sqrt(2.0)), True),
    "category mix": ("categorical", _mix(0.25, 0.3, 0.25, 0.2), True),
    "no change (numeric)": ("numeric", _normal(0.0, 1.0), False),
    "shift 0.02 std": ("numeric", _normal(0.02, 1.0), False),
    "no change (categorical)": ("categorical", _mix(*BASE_MIX), False),
}


@pytest.mark.parametrize("rows", SIZES)
@pytest.mark.parametrize("case", list(CASES))
def test_detection_rates_at_default_thresholds(case: str, rows: int) -> None:
    kind, draw, real = CASES[case]
    base = _normal(0.0, 1.0) if kind == "numeric" else _mix(*BASE_MIX)
    fired = 0
    for seed in SEEDS:
        rng = np.random.default_rng([seed, rows])
        fired += compare_feature(base(rng, rows), draw(rng, rows), kind).drifted
    rate = fired / len(SEEDS)
    if real:
        assert rate >= 0.95, f"{case} at {rows} rows: true-positive rate {rate:.0%}"
    else:
        assert rate <= 0.05, f"{case} at {rows} rows: false-positive rate {rate:.0%}"


def test_demo_data_shift_is_detected_and_resampling_is_not() -> None:
    reference = generate_credit_data(3000, seed=1)
    same_world = compare_frames(reference, generate_credit_data(3000, seed=2))
    assert not same_world.dataset_drift and same_world.drifted_features == []
    shifted = compare_frames(reference, generate_credit_data(3000, seed=2, shift=True))
    changed = {"income", "loan_amount", "num_late_payments", "debt_to_income", "employment_type"}
    assert set(shifted.drifted_features) == changed | {"purpose", "default"}
    assert shifted.dataset_drift  # 7 of 11 columns


@pytest.mark.parametrize(("n", "m"), [(300, 500), (20_000, 15_000), (200_000, 300_000)])
def test_ks_and_wasserstein_match_scipy_with_ties_and_at_every_size(n: int, m: int) -> None:
    rng = np.random.default_rng(n)
    reference = rng.integers(0, 20, n).astype(float)  # many ties
    current = rng.integers(1, 21, m).astype(float) + rng.normal(0, 0.001, m) * (m > 100_000)
    statistic, pvalue = ks_test(reference, current)
    expected = stats.ks_2samp(reference, current)
    assert statistic == pytest.approx(expected.statistic, abs=1e-12)
    # Above 50,000 effective rows the limiting distribution stands in for SciPy's finite one.
    assert pvalue == pytest.approx(expected.pvalue, rel=5e-3, abs=1e-300)
    scale = float(np.std(reference))
    assert normalised_wasserstein(reference, current) == pytest.approx(
        stats.wasserstein_distance(reference, current) / scale, rel=1e-9
    )


def test_many_rare_categories_do_not_fire_without_drift() -> None:
    """200 categories, 5,000 rows a side: the two-sample test keeps its level."""
    categories = np.array([f"c{i}" for i in range(200)])
    weights = np.random.default_rng(0).dirichlet(np.ones(200))
    fired = 0
    for seed in SEEDS:
        rng = np.random.default_rng([seed, 200])
        reference, current = rng.choice(categories, 5000, p=weights), rng.choice(categories, 5000, p=weights)
        p = compare_feature(reference, current, "categorical").chi2_pvalue
        fired += p is not None and p < 0.05
    assert fired <= 3, f"{fired} of {len(SEEDS)} undrifted samples had p < 0.05"
