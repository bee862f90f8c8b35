"""Drift report renderings: the JSON shape, the CLI's table, and a self-contained HTML page."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from serving.cli.drift import drift_table
from workflows.drift import DriftThresholds, compare_frames
from workflows.drift_report import DriftReport


@pytest.fixture(scope="module")
def report() -> DriftReport:
    rng = np.random.default_rng(0)
    n = 1000
    reference = pd.DataFrame(
        {
            "age": rng.normal(40, 10, n),
            "income": rng.lognormal(10, 0.5, n),
            "plan": rng.choice(["free", "pro", "<team>"], n, p=[0.6, 0.3, 0.1]),
        }
    )
    current = pd.DataFrame(
        {
            "age": rng.normal(40, 10, n),
            "income": rng.lognormal(10.5, 0.5, n),
            "plan": rng.choice(["free", "pro", "<team>"], n, p=[0.3, 0.4, 0.3]),
        }
    )
    return compare_frames(reference, current)


def test_json_has_the_documented_shape(report: DriftReport) -> None:
    body = json.loads(report.to_json())
    assert isinstance(body["dataset_drift"], bool) and body["dataset_drift"] is True
    assert body["share_drifted"] == pytest.approx(2 / 3)
    assert list(body["features"]) == ["age", "income", "plan"]
    assert body["status"] == "drift"
    common = {"kind", "drifted", "insufficient_data", "reference_count", "current_count", "psi", "js"}
    assert set(body["features"]["age"]) == {*common, "ks_pvalue", "wasserstein", "chi2_pvalue"}
    assert set(body["features"]["plan"]) == {*common, "chi2_pvalue"}
    assert (body["features"]["plan"]["reference_count"], body["features"]["plan"]["current_count"]) == (
        1000,
        1000,
    )
    assert body["features"]["age"]["kind"] == "numeric" and body["features"]["plan"]["kind"] == "categorical"
    assert [body["features"][n]["drifted"] for n in ("age", "income", "plan")] == [False, True, True]
    assert body["thresholds"] == {
        "psi": 0.2,
        "ks_pvalue": 0.05,
        "chi2_pvalue": 0.05,
        "wasserstein": 0.1,
        "js": 0.1,
        "dataset_share": 0.5,
        "min_rows": 300,
    }
    assert (body["reference_rows"], body["current_rows"]) == (1000, 1000)
    assert report.to_dict() == body


def test_dataset_share_decides_the_dataset_verdict(report: DriftReport) -> None:
    strict = DriftReport.build(
        report.features, DriftThresholds(dataset_share=0.9), reference_rows=1000, current_rows=1000
    )
    assert not strict.dataset_drift and strict.share_drifted == pytest.approx(2 / 3)


def test_table_lists_every_feature_with_its_verdict(report: DriftReport) -> None:
    console = Console(width=140, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(drift_table(report))
    text = console.export_text()
    assert "dataset drift (2 of 3 features drifted: income, plan)" in text
    for name in ("age", "income", "plan"):
        assert name in text
    assert text.count("DRIFT") == 2 and text.count(" ok ") == 1


def test_html_is_one_self_contained_page(report: DriftReport) -> None:
    page = report.to_html()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for external in ("http://", "https://", "<script", "<link", "@import", "url("):
        assert external not in page
    assert page.count("<svg") == 3 and page.count("<style>") == 1
    assert "dataset drift (2 of 3 features drifted: income, plan)" in page
    assert "&lt;team&gt;" in page and "<team>" not in page  # values are escaped
    assert page.count('class="verdict drift"') == 2


def test_report_module_needs_neither_the_statistics_nor_rich() -> None:
    # A fresh interpreter, so modules other tests imported do not count.
    probe = (
        "import sys, workflows.drift_report, workflows.concept_drift; "
        "print(sorted(m for m in sys.modules if m == 'workflows.drift' or m.split('.')[0] == 'rich'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def test_three_identical_rows_are_insufficient_data_with_the_counts_everywhere() -> None:
    """The README's three identical /predict requests: no verdict, and every form says why."""
    rng = np.random.default_rng(1)
    reference = pd.DataFrame({"age": rng.normal(40, 10, 500), "plan": rng.choice(["free", "pro"], 500)})
    current = pd.DataFrame({"age": [35.0] * 3, "plan": ["pro"] * 3})
    small = compare_frames(reference, current)
    assert small.status == "insufficient_data" and not small.dataset_drift and small.share_drifted == 0.0
    assert small.drifted_features == [] and all(f.insufficient_data for f in small.features.values())
    body = small.to_dict()
    assert (body["status"], body["reference_rows"], body["current_rows"]) == ("insufficient_data", 500, 3)
    assert (body["features"]["plan"]["reference_count"], body["features"]["plan"]["current_count"]) == (
        500,
        3,
    )
    assert "insufficient data" in small.verdict() and "current 3 rows" in small.verdict()
    assert "reference 500 rows, current 3 rows" in small.to_html() and "too few values" in small.to_html()
    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(drift_table(small))
    text = console.export_text()
    assert "too few (500/3)" in text and "reference 500 rows, current 3 rows" in text


def test_a_categorical_feature_needs_enough_non_missing_values() -> None:
    rng = np.random.default_rng(2)
    n = 600
    reference = pd.DataFrame({"age": rng.normal(40, 10, n), "plan": rng.choice(["free", "pro"], n)})
    # Enough rows, but the categorical column is mostly missing, and what is there moved.
    current = pd.DataFrame({"age": rng.normal(60, 10, n), "plan": ["pro"] * 50 + [None] * (n - 50)})
    report = compare_frames(reference, current)
    plan = report.features["plan"]
    assert plan.insufficient_data and not plan.drifted and plan.current_count == 50
    assert report.status == "drift" and report.drifted_features == ["age"]
    assert report.share_drifted == 1.0  # over the features that got a verdict
    assert (
        compare_frames(reference, current, thresholds=DriftThresholds(min_rows=50)).features["plan"].drifted
    )


def test_min_rows_must_be_a_positive_integer() -> None:
    from opsloop.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="min_rows"):
        DriftThresholds(min_rows=0)
