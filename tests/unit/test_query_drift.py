"""Query drift: the MMD estimator, calibration and power, score drift, validation."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest
from scipy import stats

from opsloop.errors import InvalidInputError
from workflows.drift import normalised_wasserstein
from workflows.query_drift import (
    MIN_ROWS,
    QueryDriftReport,
    QueryDriftThresholds,
    _mmd2,
    embedding_drift,
    query_drift,
    score_drift,
)

DIMENSION = 384
TOPICS = 6
# Topic mixes over six topic centres: five live topics, and a sixth the reference never asks about.
BASE = np.array([0.2, 0.2, 0.2, 0.2, 0.2, 0.0])
NEW_TOPIC_30 = np.array([0.14, 0.14, 0.14, 0.14, 0.14, 0.3])  # 30% of queries on an unseen topic
REWEIGHTED = np.array([0.3, 0.25, 0.15, 0.15, 0.15, 0.0])  # same topics, different mix


def _centres(seed: int = 1234) -> np.ndarray:
    centres = np.random.default_rng(seed).standard_normal((TOPICS, DIMENSION))
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


CENTRES = _centres()


def _queries(rng: np.random.Generator, weights: np.ndarray, rows: int, spread: float = 1.0) -> np.ndarray:
    """Unit vectors scattered around topic centres, like sentence embeddings of short questions.

    With ``spread`` 1 a query's cosine similarity to its topic centre is about 0.7.
    """
    topic = rng.choice(TOPICS, rows, p=weights)
    noise = spread * rng.standard_normal((rows, DIMENSION)) / np.sqrt(DIMENSION)
    vectors = CENTRES[topic] + noise
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _fire_rate(weights: np.ndarray, rows: int, seeds: range, spread: float = 1.0) -> float:
    fired = 0
    for seed in seeds:
        rng = np.random.default_rng(seed)
        reference = _queries(rng, BASE, rows)
        current = _queries(rng, weights, rows, spread)
        fired += embedding_drift(reference, current, seed=seed).drifted
    return fired / len(seeds)


# --- the estimator --------------------------------------------------------------------------------


def test_unbiased_mmd2_from_sums_matches_the_quadratic_u_statistic() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((30, 7)), rng.standard_normal((45, 7)) + 0.3
    kxx, kyy, kxy = x @ x.T, y @ y.T, x @ y.T
    n, m = len(x), len(y)
    expected = (
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        - 2.0 * kxy.mean()
    )
    sq_x, sq_y = np.asarray((x * x).sum()), np.asarray((y * y).sum())
    assert float(_mmd2(x.sum(axis=0), y.sum(axis=0), sq_x, sq_y, n, m)) == pytest.approx(expected, rel=1e-10)
    # Batched over a leading axis, as the permutations use it.
    batched = _mmd2(
        np.stack([x.sum(axis=0)] * 3), np.stack([y.sum(axis=0)] * 3), sq_x.repeat(3), sq_y.repeat(3), n, m
    )
    assert batched.shape == (3,)
    assert np.allclose(batched, expected, rtol=1e-10)


def test_mean_distances_are_those_of_the_normalised_rows() -> None:
    rng = np.random.default_rng(4)
    reference, current = _queries(rng, BASE, 200), _queries(rng, NEW_TOPIC_30, 150)
    result = embedding_drift(reference * 3.0, current * 0.5)  # lengths do not matter when normalising
    mean_ref, mean_cur = reference.mean(axis=0), current.mean(axis=0)
    cosine = 1.0 - mean_ref @ mean_cur / (np.linalg.norm(mean_ref) * np.linalg.norm(mean_cur))
    assert result.cosine_distance == pytest.approx(cosine, rel=1e-9)
    assert result.mean_distance == pytest.approx(np.linalg.norm(mean_ref - mean_cur), rel=1e-9)
    assert (result.reference_count, result.current_count, result.dimension) == (200, 150, DIMENSION)
    assert result.bandwidth > 0.0


def test_same_distribution_does_not_fire() -> None:
    rng = np.random.default_rng(5)
    result = embedding_drift(_queries(rng, BASE, 500), _queries(rng, BASE, 500))
    assert not result.drifted
    assert result.pvalue > 0.05
    assert abs(result.statistic) < 0.005
    assert result.cosine_distance < 0.05


def test_topic_shift_fires() -> None:
    rng = np.random.default_rng(6)
    result = embedding_drift(_queries(rng, BASE, 300), _queries(rng, NEW_TOPIC_30, 300))
    assert result.drifted
    assert result.pvalue == pytest.approx(1 / 201)  # no permutation comes near
    assert result.cosine_distance > 0.05
    assert result.statistic > 0.01


def test_subtle_shifts_need_more_data() -> None:
    """A reweighted topic mix is missed more often at 60 queries than at 200, and caught at 600."""
    seeds = range(20)
    few, some = _fire_rate(REWEIGHTED, 60, seeds), _fire_rate(REWEIGHTED, 200, seeds)
    assert few < some
    assert _fire_rate(REWEIGHTED, 600, range(10)) == 1.0


def test_spread_only_shift_is_seen_by_the_rbf_half() -> None:
    """Queries scattering wider around the same topics: the RBF half (and the mean's length) see it."""
    rng = np.random.default_rng(8)
    reference, wider = _queries(rng, BASE, 500), _queries(rng, BASE, 500, spread=1.6)
    result = embedding_drift(reference, wider)
    assert result.drifted
    # The centre barely moves: the cosine distance stays small, unlike a topic shift.
    assert result.cosine_distance < 0.05


def test_false_positive_rate_is_at_most_alpha_ish() -> None:
    rate = _fire_rate(BASE, 100, range(60))
    assert rate <= 0.10, f"false-positive rate {rate:.0%} over 60 seeds at alpha 0.05"


def test_detection_rate_on_a_clear_shift() -> None:
    rate = _fire_rate(NEW_TOPIC_30, 100, range(40))
    assert rate >= 0.95, f"detection rate {rate:.0%} over 40 seeds"


def test_pvalue_is_in_the_permutation_range() -> None:
    rng = np.random.default_rng(9)
    reference = _queries(rng, BASE, 50)
    for current, permutations in ((reference, 40), (_queries(rng, BASE, 50), 99), (-reference, 19)):
        result = embedding_drift(reference, current, permutations=permutations)
        assert 1 / (1 + permutations) <= result.pvalue <= 1.0
        assert result.permutations == permutations
    assert embedding_drift(reference, reference).pvalue > 0.5  # the same rows: nothing to see


def test_result_does_not_depend_on_row_order_and_is_reproducible() -> None:
    rng = np.random.default_rng(10)
    reference, current = _queries(rng, BASE, 120), _queries(rng, REWEIGHTED, 90)
    result = embedding_drift(reference, current, seed=3)
    shuffled = embedding_drift(rng.permutation(reference), rng.permutation(current), seed=3)
    assert shuffled.pvalue == result.pvalue
    assert shuffled.statistic == pytest.approx(result.statistic, rel=1e-12)
    assert shuffled.bandwidth == pytest.approx(result.bandwidth, rel=1e-12)
    assert embedding_drift(reference, current, seed=3) == result


def test_materiality_floor_silences_significant_but_small_changes() -> None:
    rng = np.random.default_rng(11)
    reference, current = _queries(rng, BASE, 1000), _queries(rng, REWEIGHTED, 1000)
    significant = embedding_drift(reference, current)
    assert significant.drifted
    assert significant.cosine_distance < 0.05
    floored = embedding_drift(reference, current, min_cosine_distance=0.05)
    assert not floored.drifted
    assert floored.pvalue == significant.pvalue


# --- retrieval scores -----------------------------------------------------------------------------


def test_score_drop_fires_and_resampling_does_not() -> None:
    rng = np.random.default_rng(12)
    reference = np.clip(rng.normal(0.72, 0.08, 400), -1.0, 1.0)
    same = np.clip(rng.normal(0.72, 0.08, 300), -1.0, 1.0)
    dropped = np.clip(rng.normal(0.62, 0.10, 300), -1.0, 1.0)
    quiet = score_drift(reference, same)
    assert not quiet.drifted
    result = score_drift(reference, dropped)
    assert result.drifted
    assert result.mean_change == pytest.approx(dropped.mean() - reference.mean())
    assert result.mean_change < -0.05
    expected = stats.ks_2samp(reference, dropped)
    assert result.ks_statistic == pytest.approx(expected.statistic)
    assert result.ks_pvalue == pytest.approx(expected.pvalue, rel=1e-6, abs=1e-300)
    assert result.wasserstein == pytest.approx(normalised_wasserstein(reference, dropped))
    assert not score_drift(reference, dropped, min_wasserstein=5.0).drifted


# --- the combined report --------------------------------------------------------------------------


def test_report_is_json_and_splits_alpha_between_its_tests() -> None:
    rng = np.random.default_rng(13)
    reference, current = _queries(rng, BASE, 100), _queries(rng, BASE, 100)
    ref_scores, low_scores = rng.normal(0.7, 0.05, 100), rng.normal(0.6, 0.05, 100)
    report = query_drift(reference, current, ref_scores, low_scores)
    assert isinstance(report, QueryDriftReport)
    assert report.drifted
    assert not report.embedding.drifted
    assert report.scores is not None and report.scores.drifted
    body = report.to_dict()
    assert json.loads(json.dumps(body)) == body
    assert set(body) == {"drifted", "embedding", "scores"}
    assert body["embedding"]["alpha"] == body["scores"]["alpha"] == 0.025
    assert all(type(v) in (bool, int, float) for v in [*body["embedding"].values(), *body["scores"].values()])

    alone = query_drift(reference, current, thresholds=QueryDriftThresholds(alpha=0.1)).to_dict()
    assert alone["scores"] is None
    assert alone["embedding"]["alpha"] == 0.1
    assert alone["drifted"] is False


# --- validation -----------------------------------------------------------------------------------

_GOOD = np.random.default_rng(14).standard_normal((MIN_ROWS, 8))


def _with(row: int, value: float) -> np.ndarray:
    bad = _GOOD.copy()
    bad[row, 3] = value
    return bad


@pytest.mark.parametrize(
    ("reference", "current", "options", "field", "message"),
    [
        (_GOOD[:, 0], _GOOD, {}, "reference", "2-D"),
        (_GOOD, _GOOD[None], {}, "current", "2-D"),
        (_GOOD, _GOOD[:, :5], {}, "current", "dimension: 8 != 5"),
        (_GOOD[: MIN_ROWS - 1], _GOOD, {}, "reference", f"at least {MIN_ROWS} rows"),
        (_GOOD, _with(7, np.nan), {}, "current", "row 7"),
        (_with(2, np.inf), _GOOD, {}, "reference", "NaN or infinite"),
        (_GOOD, np.where(np.arange(MIN_ROWS)[:, None] == 4, 0.0, _GOOD), {}, "current", "row 4 is all zeros"),
        (np.full((MIN_ROWS, 8), "x"), _GOOD, {}, "reference", "numeric"),
        (_GOOD, _GOOD, {"permutations": 10}, "permutations", "at least 19"),
        (_GOOD, _GOOD, {"alpha": 0.0}, "alpha", "(0, 1]"),
        (_GOOD, _GOOD, {"features": 0}, "features", "at least 1"),
        (_GOOD, _GOOD, {"min_cosine_distance": -1.0}, "min_cosine_distance", ">= 0"),
    ],
)
def test_embedding_input_errors_name_the_argument(
    reference: Any, current: Any, options: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(InvalidInputError, match=re.escape(message)) as caught:
        embedding_drift(reference, current, **options)
    assert caught.value.details["field"] == field
    assert field in caught.value.message


def test_score_and_report_input_errors_name_the_argument() -> None:
    good = np.linspace(0.0, 1.0, MIN_ROWS)
    cases: list[tuple[Any, Any, str]] = [
        (good[:, None], good, "reference_scores"),
        (good, good[:-1], "current_scores"),
        (good, np.where(good > 0.5, np.nan, good), "current_scores"),
    ]
    for reference, current, field in cases:
        with pytest.raises(InvalidInputError, match=field) as caught:
            score_drift(reference, current)
        assert caught.value.details["field"] == field
    with pytest.raises(InvalidInputError, match="current_scores is missing"):
        query_drift(_GOOD, _GOOD, good, None)
    with pytest.raises(InvalidInputError, match="cosine_distance"):
        QueryDriftThresholds(cosine_distance=-0.1)
