"""ADWIN over error streams: change points, their error rates, and no false alarms."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from opsloop.errors import InvalidInputError
from workflows.concept_drift import (
    ChangePoint,
    ConceptDriftReport,
    detect_changes,
    instance_errors,
)


def _stream(rates: list[tuple[float, int]], seed: int) -> list[float]:
    """Bernoulli errors: ``count`` values at each ``rate``, one regime after another."""
    rng = np.random.default_rng(seed)
    return [float(e) for rate, count in rates for e in rng.random(count) < rate]


def test_errors_are_zero_one_for_classes_and_absolute_for_numbers() -> None:
    assert instance_errors([1, 0, "a", True], [1, 1, "b", True]) == [0.0, 1.0, 1.0, 0.0]
    assert instance_errors([2.5, 1.0], [2.0, 3]) == [0.5, 2.0]
    probabilities = [{"0": 0.7, "1": 0.3}, {"0": 0.2, "1": 0.8}]
    assert instance_errors(probabilities, [0, 0]) == [0.0, 1.0]
    with pytest.raises(InvalidInputError, match="2 predictions but 1 labels"):
        instance_errors([1, 0], [1])
    with pytest.raises(InvalidInputError, match="not a number"):
        instance_errors([2.5], ["high"])


def test_a_jump_in_error_rate_is_found_near_where_it_happened() -> None:
    errors = _stream([(0.1, 2000), (0.4, 2000)], seed=1)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    times = [start + timedelta(seconds=i) for i in range(len(errors))]
    points = detect_changes(errors, times)
    assert len(points) >= 1
    first = points[0]
    assert 1900 <= first.index <= 2150 and first.detected_at >= first.index
    assert first.at == times[first.index]
    assert first.error_before == pytest.approx(0.1, abs=0.03)
    assert first.error_after == pytest.approx(0.4, abs=0.05)
    assert first.worse


def test_a_model_that_gets_better_is_a_change_but_not_drift() -> None:
    points = detect_changes(_stream([(0.4, 1500), (0.05, 1500)], seed=2))
    assert points and not any(p.worse for p in points)
    report = ConceptDriftReport("m", 1, 3000, 0.2, 0.05, tuple(points), 0.002)
    assert not report.drifted and "no concept drift" in report.verdict()


def test_stationary_streams_rarely_raise_an_alarm() -> None:
    alarms = sum(bool(detect_changes(_stream([(0.2, 3000)], seed=seed))) for seed in range(20))
    assert alarms <= 2, f"{alarms} of 20 stationary streams had a change point"


def test_detection_rate_on_a_clear_jump() -> None:
    found = sum(
        any(p.worse for p in detect_changes(_stream([(0.1, 1000), (0.3, 1000)], seed=seed)))
        for seed in range(20)
    )
    assert found >= 19, f"found the jump in {found} of 20 streams"


def test_bad_input_is_refused_by_name() -> None:
    with pytest.raises(InvalidInputError, match="delta"):
        detect_changes([0.0, 1.0], delta=1.5)
    with pytest.raises(InvalidInputError, match="finite"):
        detect_changes([0.0, float("nan")])
    with pytest.raises(InvalidInputError, match="times"):
        detect_changes([0.0, 1.0], [datetime.now(UTC)])


def test_report_json_has_the_change_points_and_verdict() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    report = ConceptDriftReport("credit-risk", 2, 100, 0.3, 0.5, (ChangePoint(40, 60, at, 0.1, 0.5),), 0.002)
    data = report.to_dict()
    assert data["drifted"] is True and data["current_error_rate"] == 0.5
    assert data["change_points"] == [
        {
            "index": 40,
            "detected_at": 60,
            "at": at.isoformat(),
            "error_before": 0.1,
            "error_after": 0.5,
            "worse": True,
        }
    ]
    assert "concept drift: the error rate rose" in report.verdict()
