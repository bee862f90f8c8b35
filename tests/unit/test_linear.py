"""The compiled linear scorer gives scikit-learn's probabilities, or declines."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from opsloop.models.linear import compile_linear


def _data(rows: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    matrix = np.empty((rows, 4), dtype=object)
    matrix[:, 0] = rng.normal(100, 30, rows)
    matrix[:, 1] = rng.choice(["a", "b", "c"], rows)
    matrix[:, 2] = rng.integers(0, 20, rows)
    matrix[:, 3] = rng.choice(["x", "y"], rows)
    score = matrix[:, 0].astype(float) / 30 + (matrix[:, 1] == "b") * 2 + matrix[:, 2].astype(float) / 5
    labels = np.digitize(
        score + rng.normal(0, 1, rows), np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1])
    )
    return matrix, labels


def _pipeline(scaler: StandardScaler | None = None, **encoder: object) -> Pipeline:
    columns = ColumnTransformer(
        [
            ("num", scaler or StandardScaler(), [0, 2]),
            ("cat", OneHotEncoder(handle_unknown="ignore", **encoder), [1, 3]),  # type: ignore[arg-type]
        ]
    )
    return Pipeline([("prep", columns), ("clf", LogisticRegression(max_iter=500))])


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("scaler", [StandardScaler(), StandardScaler(with_mean=False)])
def test_compiled_matches_scikit_learn(classes: int, scaler: StandardScaler) -> None:
    matrix, labels = _data(500, classes)
    model = _pipeline(scaler).fit(matrix, labels)
    scorer = compile_linear(model)
    assert scorer is not None
    fresh, _ = _data(200, classes, seed=1)
    fresh[0, 1] = "never-seen"  # handle_unknown="ignore": no contribution, as in scikit-learn
    np.testing.assert_allclose(scorer.predict_proba(fresh), model.predict_proba(fresh), rtol=0, atol=1e-12)


def test_unsupported_shapes_are_declined() -> None:
    matrix, labels = _data(300, 2)
    assert compile_linear(_pipeline(min_frequency=5).fit(matrix, labels)) is None
    assert compile_linear(LogisticRegression().fit(matrix[:, [0, 2]], labels)) is None
    forest = Pipeline([("prep", _pipeline().steps[0][1]), ("clf", RandomForestClassifier(n_estimators=3))])
    assert compile_linear(forest.fit(matrix, labels)) is None
    passthrough = ColumnTransformer([("num", StandardScaler(), [0])], remainder="passthrough")
    mixed = Pipeline([("prep", passthrough), ("clf", LogisticRegression())])
    assert compile_linear(mixed.fit(matrix[:, [0, 2]], labels)) is None
