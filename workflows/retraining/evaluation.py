"""Is the retrained model better? The challenger against the champion on the same holdout.

Both models' ``predict_proba`` outputs on the same labelled holdout rows are scored with one
metric:

- ``roc_auc``: ROC AUC of the positive class (the last of ``classes``) for two classes; for
  more, the one-vs-rest macro average over the classes present in the holdout;
- ``accuracy``: share of rows whose most probable class (``argmax``) is the label;
- ``log_loss``: mean negative log probability of the label (clipped at machine epsilon,
  as sklearn does; rows are not renormalised).

``delta`` is signed so that **positive always means the challenger is better**: challenger
minus champion for ``roc_auc`` and ``accuracy``, champion minus challenger for ``log_loss``
(where lower is better). ``champion`` and ``challenger`` stay the plain metric values.

The uncertainty comes from a paired bootstrap: each resample draws rows with replacement
once and scores both models on those same rows, so what the rows share (an easy resample is
easy for both) cancels out of the difference. The interval is the percentile interval of the
resampled deltas; resamples in which ROC AUC is undefined (a class missing) are skipped and
counted. The challenger is ``better`` when the interval's lower bound is above 0.
``share_not_better`` is the share of resamples with delta <= 0: a bootstrap estimate of how
often the challenger would not win on a holdout like this one, read like a one-sided p-value
of "not better" (it is not a p-value of a null-hypothesis test).

Slices show where the change happens: per value of each categorical holdout feature with
enough rows, both models' metric on those rows. ROC AUC is undefined in a slice that holds
one class only, so such a slice reports accuracy instead and says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

from opsloop.errors import InvalidInputError

__all__ = ["LOWER_IS_BETTER", "Comparison", "Metric", "SliceMetric", "compare"]

Metric = Literal["roc_auc", "accuracy", "log_loss"]

LOWER_IS_BETTER = frozenset({"log_loss"})
"""Metrics whose smaller value is better; ``delta`` is flipped for them, so positive means better."""
# sklearn's log_loss clipping (``eps="auto"``): a confident miss costs ~36, not infinity.
_CLIP = float(np.finfo(float).eps)


@dataclass(frozen=True)
class SliceMetric:
    """Both models on the holdout rows where one categorical feature has one value.

    Attributes:
        feature: The categorical column.
        value: Its value in these rows, as text.
        rows: Holdout rows in the slice.
        metric: The metric used here: the comparison's own, or ``accuracy`` where that is
            undefined in the slice (ROC AUC over one class).
        champion: The champion's metric on the slice.
        challenger: The challenger's metric on the slice.
        delta: Signed like :attr:`Comparison.delta`: positive when the challenger is better.
    """

    feature: str
    value: str
    rows: int
    metric: str
    champion: float
    challenger: float
    delta: float

    def to_dict(self) -> dict[str, Any]:
        """Return the slice as a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    """The challenger against the champion on one holdout.

    Attributes:
        metric: The metric compared.
        champion: The champion's metric on the whole holdout.
        challenger: The challenger's metric on the whole holdout.
        delta: The challenger's gain: positive when it is better, for every metric (for
            ``log_loss``, champion minus challenger).
        ci: Percentile bootstrap interval of ``delta`` at ``confidence``.
        confidence: The interval's confidence level.
        resamples_used: Bootstrap resamples behind the interval (those where the metric was
            defined for both models).
        holdout_rows: Labelled rows both models were scored on.
        better: The interval's lower bound is above 0.
        share_not_better: Share of the used resamples with ``delta <= 0``.
        slices: Per value of each categorical feature with enough rows.
    """

    metric: str
    champion: float
    challenger: float
    delta: float
    ci: tuple[float, float]
    confidence: float
    resamples_used: int
    holdout_rows: int
    better: bool
    share_not_better: float
    slices: tuple[SliceMetric, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return the comparison as a JSON-ready dict (``ci`` and ``slices`` as lists)."""
        return {
            "metric": self.metric,
            "champion": self.champion,
            "challenger": self.challenger,
            "delta": self.delta,
            "ci": list(self.ci),
            "confidence": self.confidence,
            "resamples_used": self.resamples_used,
            "holdout_rows": self.holdout_rows,
            "better": self.better,
            "share_not_better": self.share_not_better,
            "slices": [s.to_dict() for s in self.slices],
        }

    def summary(self) -> str:
        """One line, e.g. ``roc_auc 0.7123 -> 0.7811 (+0.0688, 95% CI +0.041..+0.097): better``."""
        direction = "lower is better: " if self.metric in LOWER_IS_BETTER else ""
        low, high = self.ci
        return (
            f"{self.metric} {self.champion:.4f} -> {self.challenger:.4f} ({direction}{self.delta:+.4f}, "
            f"{self.confidence * 100:g}% CI {low:+.3f}..{high:+.3f}): "
            f"{'better' if self.better else 'not better'}"
        )


def compare(
    labels: Sequence[Any] | np.ndarray,
    champion: np.ndarray,
    challenger: np.ndarray,
    classes: Sequence[Any],
    *,
    metric: Metric = "roc_auc",
    slices: pd.DataFrame | None = None,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    min_slice_rows: int = 30,
) -> Comparison:
    """Compare the challenger's probabilities with the champion's on the same labelled holdout.

    Args:
        labels: The holdout's true classes, one per row. Matched to ``classes`` by value, or
            else as text (labels ``1`` or ``1.0`` match class ``"1"``).
        champion: The champion's ``predict_proba`` output, ``(rows, len(classes))``, columns in
            ``classes`` order.
        challenger: The challenger's, same shape and order.
        classes: The classes, in the probability columns' order; the last is the positive
            class of a binary ROC AUC.
        metric: ``roc_auc``, ``accuracy`` or ``log_loss``.
        slices: The holdout's features, row for row with ``labels`` (matched by position);
            its object, string and category columns are sliced. None: no slices.
        resamples: Bootstrap resamples to draw.
        confidence: Confidence level of the interval, in (0, 1).
        seed: Seed of the resampling; the same inputs and seed give the same result.
        min_slice_rows: Fewest rows a slice needs to be reported.

    Returns:
        The comparison, ``delta`` positive when the challenger is better.

    Raises:
        InvalidInputError: An unknown metric; fewer than two or repeated classes; an empty
            holdout; a label not among the classes; probabilities of the wrong shape, or not
            finite in [0, 1]; ``slices`` of another length; ROC AUC over a holdout of one
            class; or a bad ``resamples``, ``confidence`` or ``min_slice_rows``.
    """
    if metric not in get_args(Metric):
        raise InvalidInputError(
            f"metric {metric!r}: expected one of {list(get_args(Metric))}", field="metric", value=metric
        )
    if resamples < 1:
        raise InvalidInputError(
            f"resamples must be >= 1, got {resamples}", field="resamples", value=resamples
        )
    if not 0.0 < confidence < 1.0:
        raise InvalidInputError(
            f"confidence must be in (0, 1), got {confidence}", field="confidence", value=confidence
        )
    if min_slice_rows < 1:
        raise InvalidInputError(
            f"min_slice_rows must be >= 1, got {min_slice_rows}", field="min_slice_rows", value=min_slice_rows
        )
    y = _class_indices(labels, classes)
    rows = len(y)
    p_champion = _probabilities(champion, rows, len(classes), "champion")
    p_challenger = _probabilities(challenger, rows, len(classes), "challenger")
    if slices is not None and len(slices) != rows:
        raise InvalidInputError(f"slices has {len(slices)} rows for {rows} labels", field="slices")

    # ROC AUC averages over the classes the holdout has; one absent altogether has no AUC.
    present = tuple(int(c) for c in np.unique(y))
    scorers = (_Scorer(metric, y, p_champion, present), _Scorer(metric, y, p_challenger, present))
    whole = np.ones(rows)
    a, b = (s.score(whole) for s in scorers)
    if math.isnan(a) or math.isnan(b):
        raise InvalidInputError(
            f"{metric} needs at least two classes in the holdout, which only holds "
            f"{_class_text(classes[present[0]])}; compare on accuracy or log_loss instead",
            field="labels",
        )
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    deltas = _bootstrap(scorers, rows, resamples, seed, sign)
    if deltas.size == 0:
        raise InvalidInputError(
            f"no bootstrap resample of the {rows} holdout rows held every class: too few rows of the rarest",
            field="labels",
        )
    tail = (1.0 - confidence) / 2.0
    low, high = (float(v) for v in np.quantile(deltas, [tail, 1.0 - tail]))
    return Comparison(
        metric=metric,
        champion=a,
        challenger=b,
        delta=sign * (b - a),
        ci=(low, high),
        confidence=confidence,
        resamples_used=int(deltas.size),
        holdout_rows=rows,
        better=low > 0.0,
        share_not_better=float((deltas <= 0.0).mean()),
        slices=_slices(slices, metric, y, p_champion, p_challenger, present, min_slice_rows, sign),
    )


class _Scorer:
    """One model's metric on the holdout under row weights (a bootstrap resample's row counts).

    Weights make a resample cheap: the sorting that ROC AUC needs happens once, and each
    resample costs a few O(rows) passes instead of a sort per resample.
    """

    def __init__(self, metric: str, y: np.ndarray, proba: np.ndarray, present: tuple[int, ...]) -> None:
        self.metric = metric
        if metric == "accuracy":
            self.row_values = (proba.argmax(axis=1) == y).astype(float)
        elif metric == "log_loss":
            self.row_values = -np.log(np.clip(proba[np.arange(len(y)), y], _CLIP, 1.0))
        else:
            # Binary: the positive class only (its AUC equals the other's); else one-vs-rest.
            targets = (proba.shape[1] - 1,) if proba.shape[1] == 2 else present
            self.curves = [_SortedScores(proba[:, j], y == j) for j in targets]

    def score(self, weights: np.ndarray) -> float:
        """The metric with row ``i`` counted ``weights[i]`` times; NaN where it is undefined."""
        if self.metric != "roc_auc":
            return float(weights @ self.row_values / weights.sum())
        return float(np.mean([curve.auc(weights) for curve in self.curves]))


class _SortedScores:
    """Scores sorted once, with their tie groups, for the weighted Mann-Whitney form of ROC AUC."""

    def __init__(self, scores: np.ndarray, positive: np.ndarray) -> None:
        self.order = np.argsort(scores, kind="stable")
        ordered = scores[self.order]
        self.group = np.concatenate([[0], np.cumsum(ordered[1:] != ordered[:-1])])
        self.groups = int(self.group[-1]) + 1
        self.positive = positive[self.order]

    def auc(self, weights: np.ndarray) -> float:
        """P(a positive scores above a negative), ties counting half; NaN without both."""
        w = weights[self.order]
        pos = np.bincount(self.group, w * self.positive, self.groups)
        neg = np.bincount(self.group, w * ~self.positive, self.groups)
        n_pos, n_neg = pos.sum(), neg.sum()
        if n_pos == 0 or n_neg == 0:
            return math.nan
        below = np.cumsum(neg) - neg
        return float(pos @ (below + 0.5 * neg) / (n_pos * n_neg))


def _bootstrap(
    scorers: tuple[_Scorer, _Scorer], rows: int, resamples: int, seed: int, sign: float
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    deltas = np.empty(resamples)
    used = 0
    for _ in range(resamples):
        # The same draw for both models: that is what makes the bootstrap paired.
        weights = np.bincount(rng.integers(0, rows, rows), minlength=rows).astype(float)
        a, b = (s.score(weights) for s in scorers)
        if not (math.isnan(a) or math.isnan(b)):
            deltas[used] = sign * (b - a)
            used += 1
    return deltas[:used]


def _slices(
    frame: pd.DataFrame | None,
    metric: str,
    y: np.ndarray,
    p_champion: np.ndarray,
    p_challenger: np.ndarray,
    present: tuple[int, ...],
    min_rows: int,
    sign: float,
) -> tuple[SliceMetric, ...]:
    if frame is None:
        return ()
    found = []
    for feature in frame.columns:
        column = frame[feature]
        if not (
            pd.api.types.is_object_dtype(column)
            or pd.api.types.is_string_dtype(column)
            or isinstance(column.dtype, pd.CategoricalDtype)
        ):
            continue
        values = column.to_numpy(dtype=object)
        for value, count in column.value_counts(dropna=True).items():
            if count < min_rows:
                continue
            rows = values == value
            used, a, b = metric, math.nan, math.nan
            if metric == "roc_auc":
                a, b = (
                    _Scorer(metric, y[rows], p[rows], present).score(np.ones(int(count)))
                    for p in (p_champion, p_challenger)
                )
            if math.isnan(a) or math.isnan(b):  # ROC AUC over one class: fall back to accuracy
                used = metric if metric != "roc_auc" else "accuracy"
                a, b = (
                    _Scorer(used, y[rows], p[rows], present).score(np.ones(int(count)))
                    for p in (p_champion, p_challenger)
                )
            found.append(SliceMetric(str(feature), str(value), int(count), used, a, b, sign * (b - a)))
    return tuple(found)


def _class_indices(labels: Sequence[Any] | np.ndarray, classes: Sequence[Any]) -> np.ndarray:
    classes = list(classes)
    if len(classes) < 2:
        raise InvalidInputError(f"need at least two classes, got {classes}", field="classes")
    texts = [_class_text(c) for c in classes]
    if len(set(texts)) != len(texts):
        raise InvalidInputError(f"classes repeat a value: {classes}", field="classes")
    values = np.asarray(labels, dtype=object).ravel().tolist()
    if not values:
        raise InvalidInputError("the holdout is empty: no labels", field="labels")
    exact: dict[Any, int] = {}
    for i, c in enumerate(classes):
        exact.setdefault(c, i)
    by_text = {text: i for i, text in enumerate(texts)}
    indices = np.empty(len(values), dtype=np.intp)
    for row, value in enumerate(values):
        # Exact first (1 == 1.0 == np.int64(1)), then as text: ints from /feedback, "1" in MLflow.
        index = exact.get(value) if _hashable(value) else None
        if index is None:
            index = by_text.get(_class_text(value))
        if index is None:
            raise InvalidInputError(
                f"label {value!r} in row {row} is not one of the classes {classes}",
                field="labels",
                value=str(value),
            )
        indices[row] = index
    return indices


def _class_text(value: Any) -> str:
    if isinstance(value, float | np.floating) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _probabilities(values: np.ndarray, rows: int, classes: int, field: str) -> np.ndarray:
    try:
        proba = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{field} probabilities are not numbers: {exc}", field=field) from exc
    if proba.shape != (rows, classes):
        raise InvalidInputError(
            f"{field} probabilities have shape {proba.shape}; expected ({rows}, {classes}): "
            "one row per label, one column per class",
            field=field,
        )
    if not np.isfinite(proba).all() or (proba < 0).any() or (proba > 1).any():
        raise InvalidInputError(f"{field} probabilities must be finite and within [0, 1]", field=field)
    return proba
