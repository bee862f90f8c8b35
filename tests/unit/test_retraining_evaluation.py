"""Challenger against champion: metrics, the paired bootstrap, slices and bad input."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from opsloop.errors import InvalidInputError
from workflows.retraining.evaluation import compare

ROWS = 500


def two_columns(p: np.ndarray) -> np.ndarray:
    return np.column_stack([1.0 - p, p])


@pytest.fixture(scope="module")
def holdout() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels drawn from known probabilities, those probabilities, and a noisy copy of them."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=ROWS)
    truth = 1.0 / (1.0 + np.exp(-(1.5 * x - 1.0)))
    labels = (rng.random(ROWS) < truth).astype(int)
    noisy = np.clip(truth + rng.normal(0.0, 0.25, ROWS), 0.01, 0.99)
    return labels, truth, noisy


def test_the_true_probabilities_beat_noisy_ones(holdout: tuple) -> None:
    labels, truth, noisy = holdout
    result = compare(labels, two_columns(noisy), two_columns(truth), (0, 1))
    assert result.metric == "roc_auc"
    assert result.champion == pytest.approx(roc_auc_score(labels, noisy))
    assert result.challenger == pytest.approx(roc_auc_score(labels, truth))
    assert result.delta == pytest.approx(result.challenger - result.champion)
    assert 0 < result.ci[0] < result.delta < result.ci[1]
    assert result.better
    assert result.share_not_better == 0.0
    assert (result.resamples_used, result.holdout_rows, result.confidence) == (1000, ROWS, 0.95)
    assert re.fullmatch(
        r"roc_auc 0\.\d{4} -> 0\.\d{4} \(\+0\.\d{4}, 95% CI \+0\.\d{3}\.\.\+0\.\d{3}\): better",
        result.summary(),
    )


def test_identical_models_differ_by_nothing(holdout: tuple) -> None:
    labels, truth, _ = holdout
    result = compare(labels, two_columns(truth), two_columns(truth), (0, 1))
    assert result.delta == 0.0
    assert result.ci == (0.0, 0.0)
    assert not result.better
    assert result.share_not_better == 1.0  # every resample ties, and a tie is not a win
    assert result.summary().endswith(": not better")


def test_a_worse_challenger_has_a_negative_delta(holdout: tuple) -> None:
    labels, truth, noisy = holdout
    result = compare(labels, two_columns(truth), two_columns(noisy), (0, 1))
    assert result.delta < 0 and result.ci[1] < 0
    assert not result.better
    assert result.share_not_better == 1.0


def test_log_loss_delta_is_positive_when_the_challenger_is_lower(holdout: tuple) -> None:
    labels, truth, noisy = holdout
    result = compare(labels, two_columns(noisy), two_columns(truth), (0, 1), metric="log_loss")
    assert result.champion == pytest.approx(log_loss(labels, noisy))
    assert result.challenger == pytest.approx(log_loss(labels, truth))
    assert result.challenger < result.champion
    assert result.delta == pytest.approx(result.champion - result.challenger)
    assert result.delta > 0 and result.better
    assert "(lower is better: +" in result.summary()
    swapped = compare(labels, two_columns(truth), two_columns(noisy), (0, 1), metric="log_loss")
    assert swapped.delta == pytest.approx(-result.delta)
    assert not swapped.better


def test_accuracy_is_that_of_the_most_probable_class(holdout: tuple) -> None:
    labels, truth, noisy = holdout
    result = compare(labels, two_columns(noisy), two_columns(truth), (0, 1), metric="accuracy")
    assert result.champion == pytest.approx(accuracy_score(labels, noisy >= 0.5))
    assert result.challenger == pytest.approx(accuracy_score(labels, truth >= 0.5))


def test_multiclass_auc_is_the_one_vs_rest_macro_average() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 300)
    champion = rng.dirichlet(np.ones(3), 300)
    challenger = champion.copy()
    challenger[np.arange(300), labels] += 0.3
    challenger /= challenger.sum(axis=1, keepdims=True)
    names = np.array(["low", "mid", "high"])
    result = compare(names[labels], champion, challenger, ["low", "mid", "high"], resamples=200)
    assert result.champion == pytest.approx(roc_auc_score(labels, champion, multi_class="ovr"))
    assert result.challenger == pytest.approx(roc_auc_score(labels, challenger, multi_class="ovr"))
    assert result.better


def test_labels_match_classes_as_text(holdout: tuple) -> None:
    labels, truth, noisy = holdout
    expected = compare(labels, two_columns(noisy), two_columns(truth), (0, 1), resamples=50)
    as_text = compare(labels.astype(str), two_columns(noisy), two_columns(truth), (0, 1), resamples=50)
    as_floats = compare(
        pd.Series(labels.astype(float)), two_columns(noisy), two_columns(truth), ("0", "1"), resamples=50
    )
    assert as_text == expected == as_floats


def test_the_seed_makes_it_reproducible(holdout: tuple) -> None:
    labels, truth, noisy = holdout
    args = (labels, two_columns(noisy), two_columns(truth), (0, 1))
    assert compare(*args, seed=7, resamples=200) == compare(*args, seed=7, resamples=200)
    assert compare(*args, seed=7, resamples=200).ci != compare(*args, seed=8, resamples=200).ci


def test_resamples_without_both_classes_are_skipped() -> None:
    labels = np.zeros(60, dtype=int)
    labels[:2] = 1
    rng = np.random.default_rng(2)
    result = compare(labels, two_columns(rng.random(60)), two_columns(rng.random(60)), (0, 1), resamples=300)
    assert 0 < result.resamples_used < 300  # P(no positive in a resample) = (58/60)^60 ~ 13%


def test_slices_per_categorical_value_with_enough_rows(holdout: tuple) -> None:
    labels, truth, noisy = holdout
    segment = np.where(np.arange(ROWS) < 300, "retail", "business").astype(object)
    segment[:20] = "tiny"  # below min_slice_rows
    pure = np.where(labels == 0, "clean", "other")  # 'clean' holds class 0 only: no AUC there
    slices = pd.DataFrame(
        {"segment": segment, "pure": pd.Series(pure, dtype="str"), "income": np.arange(ROWS, dtype=float)}
    )
    result = compare(labels, two_columns(noisy), two_columns(truth), (0, 1), slices=slices)
    found = {(s.feature, s.value): s for s in result.slices}
    assert set(found) == {
        ("segment", "retail"),
        ("segment", "business"),
        ("pure", "clean"),
        ("pure", "other"),
    }
    retail = found[("segment", "retail")]
    rows = segment == "retail"
    assert (retail.rows, retail.metric) == (280, "roc_auc")
    assert retail.champion == pytest.approx(roc_auc_score(labels[rows], noisy[rows]))
    assert retail.delta == pytest.approx(retail.challenger - retail.champion)
    clean = found[("pure", "clean")]
    assert clean.metric == "accuracy"
    assert clean.challenger == pytest.approx(np.mean(truth[labels == 0] < 0.5))
    assert json.loads(json.dumps(result.to_dict()))["slices"][0]["feature"] == "segment"


def test_to_dict_is_json_ready(holdout: tuple) -> None:
    labels, truth, noisy = holdout
    data = json.loads(json.dumps(compare(labels, two_columns(noisy), two_columns(truth), (0, 1)).to_dict()))
    assert set(data) >= {"metric", "champion", "challenger", "delta", "ci", "better", "share_not_better"}
    assert len(data["ci"]) == 2


@pytest.mark.parametrize(
    ("labels", "champion", "challenger", "field"),
    [
        ([0, 1, 0], np.full((4, 2), 0.5), np.full((3, 2), 0.5), "champion"),
        ([0, 1, 0], np.full((3, 2), 0.5), np.full((3, 3), 0.5), "challenger"),
        ([0, 1, 0], np.full((3, 2), 0.5), np.full(3, 0.5), "challenger"),
        ([], np.empty((0, 2)), np.empty((0, 2)), "labels"),
        ([0, 1, 2], np.full((3, 2), 0.5), np.full((3, 2), 0.5), "labels"),
        ([0, 1, 0], np.full((3, 2), 1.5), np.full((3, 2), 0.5), "champion"),
        ([0, 0, 0], np.full((3, 2), 0.5), np.full((3, 2), 0.5), "labels"),  # AUC of one class
    ],
)
def test_bad_input_names_the_field(
    labels: list, champion: np.ndarray, challenger: np.ndarray, field: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        compare(labels, champion, challenger, (0, 1), resamples=10)
    assert caught.value.details["field"] == field


def test_bad_settings_name_the_field() -> None:
    args = ([0, 1, 0, 1], np.full((4, 2), 0.5), np.full((4, 2), 0.5), (0, 1))
    cases = [
        ({"slices": pd.DataFrame({"a": ["x"] * 3})}, "slices"),
        ({"confidence": 1.0}, "confidence"),
        ({"resamples": 0}, "resamples"),
        ({"metric": "f1"}, "metric"),
    ]
    for kwargs, field in cases:
        with pytest.raises(InvalidInputError) as caught:
            compare(*args, **kwargs)
        assert caught.value.details["field"] == field
    with pytest.raises(InvalidInputError) as caught:
        compare([0, 1], np.full((2, 2), 0.5), np.full((2, 2), 0.5), (0, 0))
    assert caught.value.details["field"] == "classes"


def test_one_class_holdouts_can_still_compare_accuracy() -> None:
    result = compare(
        [1, 1, 1, 1], np.full((4, 2), 0.4), np.full((4, 2), [0.2, 0.8]), (0, 1), metric="accuracy"
    )
    assert (result.champion, result.challenger, result.delta) == (0.0, 1.0, 1.0)
