"""The model card: its JSON form and its Markdown rendering."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from opsloop.errors import InvalidInputError
from workflows.demo import FEATURE_NAMES, FEATURES, LABEL, generate_credit_data, reference_profile
from workflows.retraining.card import ModelCard, default_limits
from workflows.retraining.evaluation import Comparison, compare
from workflows.retraining.validation import ValidationReport, validate

WINDOW = {"start": "2026-11-01T00:00:00+00:00", "end": "2026-12-01T00:00:00+00:00"}


@pytest.fixture(scope="module")
def report() -> ValidationReport:
    reference = generate_credit_data(1000, seed=0)
    profile = reference_profile(reference[list(FEATURE_NAMES)], np.full(len(reference), 0.3))
    frame = generate_credit_data(400, seed=1, shift=True)
    frame.loc[:49, "income"] = np.nan  # 12.5% missing: one failed check to show
    return validate(frame, [(f.name, f.dtype) for f in FEATURES], profile, LABEL)


@pytest.fixture(scope="module")
def comparison() -> Comparison:
    rng = np.random.default_rng(0)
    truth = rng.random(300)
    labels = (rng.random(300) < truth).astype(int)
    noisy = np.clip(truth + rng.normal(0, 0.3, 300), 0.01, 0.99)
    slices = pd.DataFrame({"purpose": rng.choice(["car", "home", "biz|ness"], 300)})
    return compare(
        labels,
        np.column_stack([1 - noisy, noisy]),
        np.column_stack([1 - truth, truth]),
        (0, 1),
        slices=slices,
        resamples=200,
    )


@pytest.fixture
def card(report: ValidationReport, comparison: Comparison) -> ModelCard:
    return ModelCard(
        model="credit-risk",
        version=4,
        parent_version=3,
        trigger="drift",
        cause={"share_drifted": 0.6, "drifted": ["income", "loan_amount"]},
        created_at="2026-12-01T12:00:00+00:00",
        training_run_id="a1b2c3",
        code_version="0123abcd",
        data={
            "window": WINDOW,
            "hash": "sha256:feed",
            "manifest": "runs:/a1b2c3/manifest.json",
            "rows": {
                "train": 1200,
                "holdout": 300,
                "reference": 1000,
                "production": 1400,
                "user-supplied": 100,
            },
            "weights": {"production": 1.0, "user-supplied": 2.0},
        },
        validation=report.to_dict(),
        metrics=comparison.to_dict(),
        params={"C": 0.5, "solver": "lbfgs", "class_weight": None, "note": "a|b"},
        trainer="alice",
        known_limits=default_limits(
            holdout_rows=300, window=WINDOW, min_slice_rows=30, user_supplied_rows=100
        ),
    )


def test_to_dict_is_json_ready(card: ModelCard) -> None:
    data = json.loads(json.dumps(card.to_dict(), allow_nan=False))
    assert data["version"] == 4
    assert data["metrics"]["ci"] == list(card.metrics["ci"])
    assert data["validation"]["passed"] is False
    assert data["known_limits"] == list(card.known_limits)


def test_to_dict_drops_what_json_cannot_hold(card: ModelCard) -> None:
    odd = replace(
        card, params={"alpha": np.float64(0.1), "gamma": math.nan, "steps": (1, 2), "n": np.int64(3)}
    )
    params = json.loads(json.dumps(odd.to_dict(), allow_nan=False))["params"]
    assert params == {"alpha": 0.1, "gamma": None, "steps": [1, 2], "n": 3}


def test_markdown_has_every_section_and_the_key_numbers(card: ModelCard, comparison: Comparison) -> None:
    text = card.to_markdown()
    assert text.startswith("# Model card: credit-risk version 4\n")
    for section in ("Data", "Validation", "Evaluation", "Parameters", "Lineage", "Known limits"):
        assert f"\n## {section}\n" in text
    low, high = comparison.ci
    summary = (
        f"The challenger is better than the champion on roc_auc: {comparison.champion:.4f} -> "
        f"{comparison.challenger:.4f} ({comparison.delta:+.4f}, 95% CI {low:+.4f}..{high:+.4f}) "
        "over 300 holdout rows."
    )
    assert summary in text
    assert "Its training data failed validation (quality 98.8%, threshold 95.0%)." in text
    assert "- Window: 2026-11-01T00:00:00+00:00 to 2026-12-01T00:00:00+00:00" in text
    assert "- Hash: `sha256:feed`" in text
    assert "| user-supplied | 100 |" in text
    assert "- Weights: production: 1, user-supplied: 2" in text
    assert "| missing | income | FAIL | 12.5% | <= 5.0% | income: 12.5% missing (50 of 400 rows)" in text
    assert "| quality |  | pass | 98.8% | >= 95.0% |" in text
    assert "| income | double | 50 | 0 |" in text
    assert f"- Champion: {comparison.champion:.4f}" in text
    assert "from 200 paired bootstrap resamples" in text
    for s in comparison.slices:
        assert f"| {s.feature} | {s.value.replace('|', chr(92) + '|')} | {s.rows} | {s.metric} |" in text
    assert "| C | 0.5 |" in text
    assert "| class_weight | none |" in text
    assert "| note | a\\|b |" in text
    assert "- Parent version: 3" in text
    assert "- Trigger: drift" in text
    assert "- Cause: share_drifted: 0.6, drifted: income, loan_amount" in text
    assert "- Training run: `a1b2c3`" in text
    assert "- Code version: `0123abcd`" in text
    assert "- Trainer: alice" in text
    for limit in card.known_limits:
        assert f"- {limit}" in text


def test_markdown_escapes_pipes_in_table_cells(card: ModelCard) -> None:
    rows = [line for line in card.to_markdown().splitlines() if line.startswith("| purpose | biz")]
    assert rows and rows[0].startswith("| purpose | biz\\|ness |")


def test_an_unregistered_card_without_evaluation_still_renders(card: ModelCard) -> None:
    bare = replace(
        card, version=None, parent_version=None, metrics={}, validation={}, params={}, known_limits=()
    )
    text = bare.to_markdown()
    assert text.startswith("# Model card: credit-risk version (not registered yet)")
    assert "No comparison with the champion was recorded." in text
    assert "No validation was recorded." in text
    assert "No parameters recorded." in text
    assert "- Parent version: none" in text
    assert text.rstrip().endswith("None recorded.")


def test_a_worse_challenger_is_called_worse(card: ModelCard) -> None:
    metrics = card.metrics | {"delta": -0.05, "ci": [-0.08, -0.02], "better": False}
    assert "The challenger is worse than the champion" in replace(card, metrics=metrics).to_markdown()


def test_default_limits_carry_the_numbers() -> None:
    limits = default_limits(holdout_rows=812, window="2026-11", min_slice_rows=50)
    assert limits == (
        "evaluated on 812 holdout rows from 2026-11; slices with fewer than 50 rows are not reported",
        "labels come from /feedback and may lag or be biased toward disputed predictions",
        "the holdout is the newest labelled rows, so it measures the recent world only",
    )
    assert len(default_limits(holdout_rows=1, window="w", user_supplied_rows=5)) == 4


def test_created_at_must_be_iso_8601(card: ModelCard) -> None:
    with pytest.raises(InvalidInputError) as caught:
        replace(card, created_at="yesterday")
    assert caught.value.details["field"] == "created_at"
