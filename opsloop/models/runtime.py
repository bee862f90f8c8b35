"""Serving classical models: each model's champion version loaded once, kept warm, hot-swapped.

A watcher thread polls the registry; when a model's ``champion`` alias moves (by the
CLI, the API or another process), it loads the new version beside the old one and then
swaps one dictionary entry. A request holds the LoadedModel it started with, so it
finishes on that version; no request waits for a load.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from opsloop.errors import OpsloopError
from opsloop.models.linear import LinearScorer, compile_linear
from opsloop.models.schema import FieldSpec, InputSchema
from opsloop.registry import Registry

__all__ = ["LoadedModel", "ModelRuntime"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """One model version in memory, ready to predict."""

    name: str
    version: int
    schema: InputSchema
    estimator: Any
    classes: tuple[Any, ...] | None
    accepts_arrays: bool
    scorer: LinearScorer | None = None

    def predict(self, matrix: np.ndarray) -> tuple[list[Any], list[dict[str, float]] | None]:
        """Predictions and, for classifiers, each class's probability."""
        if self.classes is None:
            return np.asarray(self.estimator.predict(self._features(matrix))).tolist(), None
        if self.scorer is not None:
            proba = self.scorer.predict_proba(matrix)
        else:
            proba = self.estimator.predict_proba(self._features(matrix))
        labels = [self.classes[i] for i in proba.argmax(axis=1)]
        keys = [str(c) for c in self.classes]
        return labels, [dict(zip(keys, row, strict=True)) for row in proba.tolist()]

    def _features(self, matrix: np.ndarray) -> Any:
        if self.accepts_arrays:
            return matrix
        import pandas as pd  # only models that select columns by name need a DataFrame

        return pd.DataFrame(matrix, columns=self.schema.names)


def load_version(registry: Registry, name: str, version: int) -> LoadedModel:
    """Load a version and pick the fastest way to score it that gives the model's own answers.

    In order of preference: a compiled linear scorer, plain object arrays, a DataFrame.
    """
    columns = registry.input_columns(name, version)
    try:
        estimator = registry.load_model(name, version, flavor="sklearn")
    except OpsloopError:  # not a scikit-learn model (e.g. native XGBoost): MLflow's pyfunc
        estimator = registry.load_model(name, version)
    names = [column for column, _ in columns]
    categories = _known_categories(estimator, names)
    schema = InputSchema(tuple(FieldSpec(n, t, categories.get(n, ())) for n, t in columns))
    raw_classes = getattr(estimator, "classes_", None)
    classes = None
    if raw_classes is not None and hasattr(estimator, "predict_proba"):
        classes = tuple(c.item() if hasattr(c, "item") else c for c in raw_classes)
    model = LoadedModel(name, version, schema, estimator, classes, accepts_arrays=False)
    probe = _probe_rows(schema)
    if not hasattr(estimator, "feature_names_in_"):  # one fitted on a DataFrame wants names
        try:
            fast = replace(model, accepts_arrays=True)
            if fast.predict(probe) == model.predict(probe):
                model = fast
        except Exception:  # any failure just means "needs a DataFrame"
            log.info("model %s version %s needs pandas input", name, version)
    scorer = compile_linear(estimator) if classes is not None else None
    if scorer is not None:
        expected = estimator.predict_proba(model._features(probe))
        if np.allclose(scorer.predict_proba(probe), expected, rtol=0, atol=1e-9):
            model = replace(model, scorer=scorer)
        else:
            log.warning("compiled %s version %s disagrees with scikit-learn; not used", name, version)
    return model


def _probe_rows(schema: InputSchema) -> np.ndarray:
    """Valid rows that use every known category and several magnitudes of every number."""
    base = schema.example()
    rows = [base]
    for spec in schema.fields:
        rows.extend({**base, spec.name: category} for category in spec.categories)
    numbers = [spec for spec in schema.fields if spec.type in ("long", "integer", "double", "float")]
    for factor in (0, 7, -3, 10_000):
        rows.append({**base, **{spec.name: base[spec.name] * factor for spec in numbers}})
    return schema.to_matrix(rows, len(rows))


def _known_categories(estimator: Any, names: list[str]) -> dict[str, tuple[str, ...]]:
    """Categories that a fitted scikit-learn OneHotEncoder inside the pipeline knows."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    steps = estimator.named_steps.values() if isinstance(estimator, Pipeline) else [estimator]
    found: dict[str, tuple[str, ...]] = {}
    for step in steps:
        if not isinstance(step, ColumnTransformer):
            continue
        for _, transformer, columns in step.transformers_:
            encoder = transformer[-1] if isinstance(transformer, Pipeline) else transformer
            if isinstance(encoder, OneHotEncoder):
                for column, values in zip(columns, encoder.categories_, strict=False):
                    name = names[column] if isinstance(column, int | np.integer) else str(column)
                    found[name] = tuple(str(v) for v in values)
    return found


class ModelRuntime:
    """The champion version of every registered model, loaded and watched."""

    def __init__(
        self,
        registry: Registry,
        *,
        alias: str = "champion",
        poll_seconds: float = 1.0,
        on_swap: Callable[[LoadedModel], None] = lambda model: None,
    ) -> None:
        self._registry = registry
        self.alias = alias
        self._poll_seconds = poll_seconds
        self._on_swap = on_swap
        self._models: dict[str, LoadedModel] = {}
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, name: str) -> LoadedModel | None:
        """The loaded champion of ``name``, if there is one (a dictionary lookup)."""
        return self._models.get(name)

    def loaded(self) -> dict[str, LoadedModel]:
        """Every model currently served."""
        return dict(self._models)

    def refresh(self, name: str, version: int | None = None) -> LoadedModel:
        """Serve ``version`` of ``name`` (default: where its alias points now) unless it is already.

        Raises:
            NotFoundError: No such model, or it has no version with the alias.
        """
        with self._load_lock:
            target = version if version is not None else self._registry.get_alias(name, self.alias).version
            current = self._models.get(name)
            if current is not None and current.version == target:
                return current
            model = load_version(self._registry, name, target)
            self._models[name] = model  # the swap: new requests see the new version
        log.info("serving %s version %s (%s)", name, model.version, self.alias)
        self._on_swap(model)
        return model

    def refresh_all(self) -> None:
        """Bring every model up to date; one broken model does not stop the rest.

        One registry query per call, since the watcher runs it every poll interval.
        """
        targets = self._registry.alias_versions(self.alias)
        for name in set(self._models) - set(targets):
            self._models.pop(name, None)  # the alias was removed: stop serving it
        for name, version in targets.items():
            current = self._models.get(name)
            if current is not None and current.version == version:
                continue
            try:
                self.refresh(name, version)
            except Exception:  # a broken artifact raises anything; keep serving the others
                log.exception("could not load %s version %s; still serving the one before", name, version)

    def start(self) -> ModelRuntime:
        """Load every model now and start watching the registry."""
        self.refresh_all()
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._watch, name="model-watcher", daemon=True)
            self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            try:
                self.refresh_all()
            except Exception:  # the watcher must outlive any one failure, or swaps stop for good
                log.exception("model watcher could not read the registry")

    def close(self) -> None:
        """Stop watching."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
