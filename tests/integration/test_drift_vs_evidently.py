"""opsloop's drift statistics agree with Evidently's and SciPy's where the definitions coincide.

Evidently 0.7 runs in a virtual environment of its own (it does not import with pandas 3),
created on first use by :mod:`bench.drift.evidently_side` beside ./dev's wheel cache and run
through :mod:`bench.drift.evidently_worker` in a subprocess. Without PyPI that environment
cannot be made: the module is skipped then, except in CI, where it fails.

Where the definitions coincide the values must agree to rounding: the KS p-value, the
Wasserstein distance over the reference's standard deviation (Evidently divides by at least
0.001), the Jensen-Shannon distance and PSI of categorical features (the bins are the
categories; Evidently's Jensen-Shannon is in nats, ours in bits), PSI and Jensen-Shannon of
numeric features once our functions are given Evidently's Sturges bins (ours bin at the
reference's deciles). For categorical features both run a chi-square test, but ours is the
two-sample test of homogeneity and Evidently's a goodness of fit to the reference's
frequencies taken as exact; the test checks each against its own SciPy formula.
The verdicts of Evidently's ``DataDriftPreset`` and ours agree on clear cases.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from bench.drift.agreement import evidently_binned_shares
from bench.drift.data import generate
from bench.drift.evidently_side import EvidentlyUnavailableError, ensure_venv, run_worker
from workflows.drift import DriftReport, compare_frames, jensen_shannon, psi, quantile_edges

ROWS = 5_000
NUMERIC = ("score", "income", "wait_time", "visits", "session_minutes", "click_rate")
CATEGORICAL = ("region", "channel", "product", "is_member")
CLEAR_VERDICTS = {
    "score": True,  # mean +0.5 sd
    "wait_time": True,  # scale x1.3
    "channel": True,
    "is_member": True,
    "income": False,
    "visits": False,
    "session_minutes": False,
    "region": False,
    "product": False,
}
TIGHT = {"rel": 1e-9, "abs": 1e-300}


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    return generate(ROWS, seed=7, features=NUMERIC + CATEGORICAL)


@pytest.fixture(scope="module")
def evidently(
    tmp_path_factory: pytest.TempPathFactory, frames: tuple[pd.DataFrame, pd.DataFrame]
) -> dict[str, Any]:
    """Evidently's values per column: the preset's choice and each method set explicitly."""
    try:
        python = ensure_venv()
    except EvidentlyUnavailableError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Evidently's environment is required in CI: {exc}")
        pytest.skip(f"Evidently's environment is unavailable (no PyPI?): {exc}")
    workdir: Path = tmp_path_factory.mktemp("evidently")
    reference, current = frames
    reference.to_parquet(workdir / "reference.parquet", index=False)
    current.to_parquet(workdir / "current.parquet", index=False)
    done = run_worker(
        python, workdir, "values",
        "--reference", str(workdir / "reference.parquet"), "--current", str(workdir / "current.parquet"),
        "--categorical", ",".join(CATEGORICAL), timeout=300,
    )  # fmt: skip
    return done.result["columns"]


@pytest.fixture(scope="module")
def ours(frames: tuple[pd.DataFrame, pd.DataFrame]) -> DriftReport:
    reference, current = frames
    return compare_frames(reference, current, CATEGORICAL)


@pytest.mark.parametrize("name", NUMERIC)
def test_ks_pvalue_is_scipys_and_evidentlys(
    name: str, frames: tuple[pd.DataFrame, pd.DataFrame], ours: DriftReport, evidently: dict[str, Any]
) -> None:
    reference, current = frames
    p = ours.features[name].ks_pvalue
    assert p == pytest.approx(stats.ks_2samp(reference[name], current[name]).pvalue, **TIGHT)
    assert p == pytest.approx(evidently[name]["ks"]["value"], **TIGHT)


@pytest.mark.parametrize("name", NUMERIC)
def test_wasserstein_over_reference_std_is_scipys_and_evidentlys(
    name: str, frames: tuple[pd.DataFrame, pd.DataFrame], ours: DriftReport, evidently: dict[str, Any]
) -> None:
    reference, current = frames
    std = float(np.std(reference[name]))
    ours_value = ours.features[name].wasserstein
    assert ours_value == pytest.approx(
        stats.wasserstein_distance(reference[name], current[name]) / std, rel=1e-9
    )
    # Evidently divides by max(std, 0.001): a rate of a few in 10,000 (click_rate, std 1e-4) gets
    # a tenth of its score there, which hides a shift of 0.3 standard deviations.
    assert ours_value * std / max(std, 0.001) == pytest.approx(
        evidently[name]["wasserstein"]["value"], rel=1e-9
    )
    if name == "click_rate":
        assert ours_value > 0.1 > evidently[name]["wasserstein"]["value"]


@pytest.mark.parametrize("name", CATEGORICAL)
def test_categorical_psi_and_js_are_evidentlys(
    name: str, ours: DriftReport, evidently: dict[str, Any]
) -> None:
    feature = ours.features[name]
    assert "<other>" not in feature.bins  # no unseen categories: the same cells on both sides
    assert feature.psi == pytest.approx(evidently[name]["psi"]["value"], rel=1e-9)
    # scipy's jensenshannon in base e (Evidently) is ours (base 2) times sqrt(ln 2).
    assert feature.js * math.sqrt(math.log(2)) == pytest.approx(
        evidently[name]["jensenshannon"]["value"], rel=1e-9
    )
    assert feature.js == pytest.approx(
        jensenshannon(feature.reference_shares, feature.current_shares, base=2)
    )


@pytest.mark.parametrize("name", NUMERIC)
def test_numeric_psi_and_js_on_evidentlys_bins_are_evidentlys(
    name: str, frames: tuple[pd.DataFrame, pd.DataFrame], ours: DriftReport, evidently: dict[str, Any]
) -> None:
    """The formulas agree; only the binning differs (deciles of the reference vs Sturges bins of both)."""
    reference, current = frames
    ref_shares, cur_shares = evidently_binned_shares(reference[name], current[name], numeric=True)
    # Evidently fills empty bins with 1e-4 while the smallest filled share is above it, as our floor does.
    assert ref_shares[ref_shares > 0].min() > 1e-4 and cur_shares[cur_shares > 0].min() > 1e-4
    assert psi(ref_shares, cur_shares) == pytest.approx(evidently[name]["psi"]["value"], rel=1e-9)
    js_nats = jensen_shannon(ref_shares, cur_shares) * math.sqrt(math.log(2))
    assert js_nats == pytest.approx(evidently[name]["jensenshannon"]["value"], rel=1e-9)
    # Our own values, on our own bins, are scipy's.
    feature = ours.features[name]
    assert feature.js == pytest.approx(
        jensenshannon(feature.reference_shares, feature.current_shares, base=2)
    )


@pytest.mark.parametrize("name", NUMERIC)
def test_numeric_binned_chi2_is_scipys_contingency_test(
    name: str, frames: tuple[pd.DataFrame, pd.DataFrame], ours: DriftReport
) -> None:
    reference, current = frames[0][name].to_numpy(), frames[1][name].to_numpy()
    edges = quantile_edges(reference)
    counts = [
        np.bincount(np.searchsorted(edges, s, side="right"), minlength=len(edges) + 1)
        for s in (reference, current)
    ]
    table = np.vstack(counts)
    table = table[:, table.sum(axis=0) > 0]
    expected = stats.chi2_contingency(table, correction=False).pvalue
    assert ours.features[name].chi2_pvalue == pytest.approx(expected, **TIGHT)


@pytest.mark.parametrize("name", CATEGORICAL)
def test_categorical_chi2_is_scipys_two_sample_test_and_evidentlys_is_goodness_of_fit(
    name: str, frames: tuple[pd.DataFrame, pd.DataFrame], ours: DriftReport, evidently: dict[str, Any]
) -> None:
    """Ours tests homogeneity of two samples; Evidently's takes the reference frequencies as exact.

    With ``m = n`` Evidently's statistic is about twice a chi-square variable, so it flags two
    samples of one distribution far more often than its level says (every 50-category feature
    of the benchmark's 20k-row sample is "drifted" by Evidently's chi-square test).
    """
    reference, current = frames
    feature = ours.features[name]
    n, m = len(reference), len(current)
    ref_counts = reference[name].value_counts().reindex(list(feature.bins)).to_numpy(dtype=float)
    cur_counts = current[name].value_counts().reindex(list(feature.bins), fill_value=0).to_numpy(dtype=float)
    table = np.vstack([ref_counts, cur_counts])
    table = table[:, table.sum(axis=0) > 0]
    assert feature.chi2_pvalue == pytest.approx(
        stats.chi2_contingency(table, correction=False).pvalue, **TIGHT
    )
    plain = stats.chisquare(cur_counts, ref_counts / n * m).statistic
    assert stats.chi2.sf(plain, len(feature.bins) - 1) == pytest.approx(
        evidently[name]["chisquare"]["value"], **TIGHT
    )


def test_verdicts_agree_with_evidentlys_preset_on_clear_cases(
    ours: DriftReport, evidently: dict[str, Any]
) -> None:
    for name, drifted in CLEAR_VERDICTS.items():
        assert ours.features[name].drifted is drifted, name
        assert evidently[name]["preset"]["drifted"] is drifted, name
    # Above 1,000 rows the preset picks Wasserstein for numeric, Jensen-Shannon for categorical columns.
    assert {evidently[n]["preset"]["method"] for n in NUMERIC} == {"Wasserstein distance (normed)"}
    assert {evidently[n]["preset"]["method"] for n in CATEGORICAL} == {"Jensen-Shannon distance"}
