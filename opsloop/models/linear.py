"""A fitted scikit-learn linear pipeline, compiled to a few numpy operations.

scikit-learn spends about a millisecond of Python overhead per ``predict_proba`` call
(input checks, ColumnTransformer bookkeeping), whatever the row count; for the common
``ColumnTransformer(StandardScaler, OneHotEncoder) -> LogisticRegression`` shape, the
same arithmetic on the validated object array takes microseconds. ``compile_linear``
recognises that shape and returns None for anything else, and serving only uses the
result after checking it against scikit-learn on real rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit

__all__ = ["LinearScorer", "compile_linear"]


@dataclass(frozen=True)
class LinearScorer:
    """``predict_proba`` of a logistic regression over standardised and one-hot columns."""

    numeric: np.ndarray  # input column positions of the numeric features
    mean: np.ndarray
    scale: np.ndarray
    numeric_weights: np.ndarray  # (n_numeric, n_outputs)
    categorical: tuple[tuple[int, dict[Any, np.ndarray]], ...]  # column -> category -> weights
    intercept: np.ndarray
    multinomial: bool

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        """Class probabilities for each row of a validated object array."""
        values = matrix[:, self.numeric].astype(np.float64)
        z = ((values - self.mean) / self.scale) @ self.numeric_weights + self.intercept
        zero = np.zeros_like(self.intercept)
        for column, weights in self.categorical:
            z += np.array([weights.get(value, zero) for value in matrix[:, column]])
        if self.multinomial:
            z -= z.max(axis=1, keepdims=True)
            e = np.exp(z)
            return np.asarray(e / e.sum(axis=1, keepdims=True))
        positive = expit(z[:, 0])  # as scikit-learn does; no overflow for large |z|
        return np.column_stack([1.0 - positive, positive])


def compile_linear(estimator: Any) -> LinearScorer | None:
    """Compile ``estimator`` if it has the supported shape, else return None."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    if not isinstance(estimator, Pipeline):
        return None
    steps = [step for _, step in estimator.steps]
    # A leading np.asarray (to accept both arrays and DataFrames) changes nothing here.
    if steps and isinstance(steps[0], FunctionTransformer) and steps[0].func is np.asarray:
        steps = steps[1:]
    if len(steps) != 2 or not isinstance(steps[0], ColumnTransformer):
        return None
    columns, classifier = steps
    if not isinstance(classifier, LogisticRegression) or columns.remainder != "drop":
        return None
    coef = classifier.coef_.T  # (n_features, n_outputs)
    multinomial = coef.shape[1] > 1
    offset = 0
    numeric: list[int] = []
    means: list[float] = []
    scales: list[float] = []
    numeric_rows: list[np.ndarray] = []
    categorical: list[tuple[int, dict[Any, np.ndarray]]] = []
    for _, transformer, positions in columns.transformers_:
        if transformer == "drop":
            continue
        if not all(isinstance(p, int | np.integer) for p in positions):
            return None
        if isinstance(transformer, StandardScaler):
            n = len(positions)
            mean = transformer.mean_ if transformer.with_mean else np.zeros(n)
            scale = transformer.scale_ if transformer.with_std else np.ones(n)
            numeric.extend(int(p) for p in positions)
            means.extend(mean)
            scales.extend(scale)
            numeric_rows.extend(coef[offset : offset + n])
            offset += n
        elif isinstance(transformer, OneHotEncoder):
            if (transformer.drop, transformer.min_frequency, transformer.max_categories) != (
                None,
                None,
                None,
            ):
                return None
            for position, categories in zip(positions, transformer.categories_, strict=True):
                weights = {c: coef[offset + i] for i, c in enumerate(categories)}
                categorical.append((int(position), weights))
                offset += len(categories)
        else:
            return None
    if offset != coef.shape[0]:
        return None
    return LinearScorer(
        numeric=np.array(numeric, dtype=np.intp),
        mean=np.array(means),
        scale=np.array(scales),
        numeric_weights=np.array(numeric_rows).reshape(len(numeric), coef.shape[1]),
        categorical=tuple(categorical),
        intercept=np.array(classifier.intercept_, dtype=np.float64),
        multinomial=multinomial,
    )
