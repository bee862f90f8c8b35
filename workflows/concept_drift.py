"""Concept drift: does the model get more answers wrong than it used to?

Data drift (:mod:`workflows.drift`) watches inputs; concept drift watches the errors that
ground-truth labels reveal once they arrive through ``/feedback``. Each labelled instance
becomes one value of an error stream (1.0 for a wrong class, the absolute error for a
number), in the order the predictions were made, per model version. River's ADWIN keeps an
adaptive window over that stream and cuts it where the mean error before and after differ
more than chance allows (at confidence ``delta``); each cut is a change point.

:func:`detect_changes` is the pure part; :func:`concept_report` reads the prediction log.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np

from opsloop.errors import InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from opsloop.predictions import PredictionLog

__all__ = ["ChangePoint", "ConceptDriftReport", "concept_report", "detect_changes", "instance_errors"]

DEFAULT_DELTA = 0.002  # ADWIN's confidence; River's and MOA's default


@dataclass(frozen=True)
class ChangePoint:
    """Where the error rate changed.

    Attributes:
        index: Position in the error stream where the new regime starts (0-based).
        detected_at: Position at which ADWIN noticed it (detection lags the change).
        at: When the prediction at ``index`` was made, where times are known.
        error_before: Mean error from the previous change point up to ``index``.
        error_after: Mean error from ``index`` up to the next change point or the end.
    """

    index: int
    detected_at: int
    at: datetime | None
    error_before: float
    error_after: float

    @property
    def worse(self) -> bool:
        """The model got more wrong here (the change that matters)."""
        return self.error_after > self.error_before


def instance_errors(outputs: Sequence[Any], labels: Sequence[Any]) -> list[float]:
    """One error per instance: 0/1 for classes, the absolute error for numeric predictions.

    A prediction may be a class, a number, or a classifier's ``{class: probability}`` as the
    prediction log keeps it (classes as strings).

    Raises:
        InvalidInputError: Different lengths, or a numeric prediction with a non-numeric label.
    """
    if len(outputs) != len(labels):
        raise InvalidInputError(
            f"{len(outputs)} predictions but {len(labels)} labels", field="labels", value=len(labels)
        )
    errors = []
    for predicted, label in zip(outputs, labels, strict=True):
        if isinstance(predicted, dict):  # a classifier's probabilities: its answer is the likeliest
            errors.append(0.0 if str(label) == max(predicted, key=lambda c: predicted[c]) else 1.0)
        elif isinstance(predicted, float) and not isinstance(label, bool):
            if not isinstance(label, int | float):
                raise InvalidInputError(
                    f"label {label!r} of a numeric prediction is not a number", field="labels", value=label
                )
            errors.append(abs(predicted - label))
        else:
            errors.append(0.0 if predicted == label else 1.0)
    return errors


def detect_changes(
    errors: Sequence[float],
    times: Sequence[datetime] | None = None,
    *,
    delta: float = DEFAULT_DELTA,
) -> list[ChangePoint]:
    """Change points of an error stream: ADWIN (``river.drift.ADWIN``) decides *that* it changed.

    ADWIN says when its window no longer has one mean, but it sheds the old part of the
    window a bucket at a time, so one change raises a burst of detections. Hence, at a
    detection, the change is placed where splitting the stream since the previous change
    point best separates two means (the largest standardised difference), and a fresh
    detector continues from there with the new regime's values. ADWIN checks every value
    (``clock=1``; River's default is 32): streams of labelled feedback are short, and a late
    detection costs more than the computation.

    Raises:
        InvalidInputError: ``delta`` outside (0, 1), a non-finite error, or ``times`` of
            another length.
    """
    from river.drift import ADWIN

    if not 0 < delta < 1:
        raise InvalidInputError(f"delta must be in (0, 1), got {delta}", field="delta", value=delta)
    if times is not None and len(times) != len(errors):
        raise InvalidInputError(f"{len(times)} times for {len(errors)} errors", field="times")
    values = np.asarray(errors, dtype=float)
    if not np.isfinite(values).all():
        raise InvalidInputError("errors must be finite numbers", field="errors")
    starts, detections = [0], []
    detector, position = ADWIN(delta=delta, clock=1), 0
    while position < len(values):
        detector.update(float(values[position]))
        if detector.drift_detected:
            start = starts[-1] + _best_split(values[starts[-1] : position + 1])
            starts.append(start)
            detections.append(position)
            detector = ADWIN(delta=delta, clock=1)
            for value in values[start : position + 1]:
                detector.update(float(value))
        position += 1
    means = [float(values[a:b].mean()) for a, b in pairwise([*starts, len(values)])]
    return [
        ChangePoint(
            index=start,
            detected_at=detected,
            at=times[start] if times is not None else None,
            error_before=means[i],
            error_after=means[i + 1],
        )
        for i, (start, detected) in enumerate(zip(starts[1:], detections, strict=True))
    ]


def _best_split(segment: np.ndarray) -> int:
    """The k in [1, n) where ``segment[:k]`` and ``segment[k:]`` differ most in mean, in std errors."""
    n = len(segment)
    k = np.arange(1, n)
    totals = np.cumsum(segment)[:-1]
    difference = totals / k - (segment.sum() - totals) / (n - k)
    return int(k[np.argmax(np.abs(difference) * np.sqrt(k * (n - k) / n))])


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


@dataclass(frozen=True)
class ConceptDriftReport:
    """A model version's error stream and where it changed.

    Attributes:
        model: Registered model name.
        version: Model version whose predictions were scored.
        instances: Labelled instances in the stream.
        error_rate: Mean error over the whole stream.
        current_error_rate: Mean error since the last change point (the model as it is now).
        change_points: Every change ADWIN found, oldest first.
        delta: ADWIN's confidence parameter.
    """

    model: str
    version: int
    instances: int
    error_rate: float
    current_error_rate: float
    change_points: tuple[ChangePoint, ...]
    delta: float

    @property
    def drifted(self) -> bool:
        """The error rate rose at some change point."""
        return any(point.worse for point in self.change_points)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO 8601, and the ``drifted`` verdict."""
        points = [
            {**asdict(p), "at": p.at.isoformat() if p.at else None, "worse": p.worse}
            for p in self.change_points
        ]
        return {**asdict(self), "change_points": points, "drifted": self.drifted}

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    def verdict(self) -> str:
        """One line for people."""
        state = "concept drift: the error rate rose" if self.drifted else "no concept drift"
        return (
            f"{state} ({self.model} version {self.version}: {self.instances} labelled instances, "
            f"error {self.current_error_rate:.3f} now, {self.error_rate:.3f} overall)"
        )


def concept_report(
    predictions: PredictionLog,
    model: str,
    version: int,
    *,
    tenant: str | None = None,
    since: datetime | None = None,
    limit: int = 100_000,
    delta: float = DEFAULT_DELTA,
) -> ConceptDriftReport:
    """Run ADWIN over the labelled predictions of one model version.

    A model is shared by tenants, but their predictions and labels are not: ``tenant`` limits
    the stream to one tenant's (None: every tenant's, for admins and the scheduled checks).

    Raises:
        NotFoundError: No labelled predictions of that version (in the window).
        InvalidInputError: Labels that do not fit the predictions, or a bad ``delta``.
    """
    errors: list[float] = []
    times: list[datetime] = []
    for record in predictions.labelled(model, version, tenant=tenant, since=since, limit=limit):
        scored = instance_errors(record.outputs, record.labels or [])
        errors.extend(scored)
        times.extend([record.at] * len(scored))
    if not errors:
        window = f" since {since.isoformat()}" if since else ""
        raise NotFoundError(
            f"no labelled predictions of {model!r} version {version}{window}: send labels to /feedback",
            model=model,
            version=version,
        )
    points = detect_changes(errors, times, delta=delta)
    current = errors[points[-1].index :] if points else errors
    return ConceptDriftReport(
        model, version, len(errors), _mean(errors), _mean(current), tuple(points), delta
    )
