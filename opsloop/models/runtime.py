"""Serving classical models: each model's champion version loaded once, kept warm, hot-swapped.

A watcher thread polls the registry; when a model's ``champion`` alias moves (by the
CLI, the API or another process), it loads the new version beside the old one and then
swaps one dictionary entry. A request holds the LoadedModel it started with, so it
finishes on that version; no request waits for a load.

A version that fails to load is recorded (:meth:`ModelRuntime.failures`, shown by
``/readyz``), reported once per model and version (a warning with the reason, and the
``on_load_failed`` callback, which the server turns into metrics) and retried with a
growing delay, since most such failures are a broken artifact that no retry fixes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from opsloop.errors import BackendError, OpsloopError
from opsloop.models.linear import LinearScorer, compile_linear
from opsloop.models.schema import FieldSpec, InputSchema
from opsloop.registry import Registry

__all__ = ["LoadFailure", "LoadedModel", "ModelRuntime"]

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


@dataclass(frozen=True)
class LoadFailure:
    """A model whose aliased version cannot be loaded, and why."""

    name: str
    version: int
    reason: str
    since: float
    """``time.monotonic()`` of the first failed load of this version."""
    attempts: int = 1
    retry_at: float = 0.0
    """``time.monotonic()`` before which the watcher does not try this version again."""


_RETRY_MAX_SECONDS = 60.0


def _reason(exc: BaseException) -> str:
    return exc.message if isinstance(exc, OpsloopError) else f"{type(exc).__name__}: {exc}"


def _unloadable(failure: LoadFailure) -> BackendError:
    return BackendError(
        f"model {failure.name!r} version {failure.version} cannot be loaded: {failure.reason}",
        model=failure.name,
        version=failure.version,
    )


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
        on_load_failed: Callable[[LoadFailure], None] = lambda failure: None,
        on_drop: Callable[[str], None] = lambda name: None,
    ) -> None:
        """Store the settings; nothing loads until :meth:`start`.

        Args:
            registry: A started registry.
            alias: The alias whose versions are served.
            poll_seconds: How often the watcher reads the registry.
            on_swap: Called with each newly served version.
            on_load_failed: Called once per model and version that fails to load (not per retry).
            on_drop: Called with a model's name when it stops being served or failing
                (its alias was removed).
        """
        self._registry = registry
        self.alias = alias
        self._poll_seconds = poll_seconds
        self._on_swap = on_swap
        self._on_load_failed = on_load_failed
        self._on_drop = on_drop
        self._models: dict[str, LoadedModel] = {}
        self._challengers: dict[tuple[str, int], LoadedModel] = {}
        self._failures: dict[str, LoadFailure] = {}
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, name: str) -> LoadedModel | None:
        """The loaded champion of ``name``, if there is one (a dictionary lookup)."""
        return self._models.get(name)

    def loaded(self) -> dict[str, LoadedModel]:
        """Every model currently served."""
        return dict(self._models)

    def challenger(self, name: str, version: int) -> LoadedModel | None:
        """A version loaded beside the champion for an experiment (the champion itself if it is that one)."""
        current = self._models.get(name)
        if current is not None and current.version == version:
            return current
        return self._challengers.get((name, version))

    def load_challengers(self, wanted: set[tuple[str, int]]) -> None:
        """Hold exactly the ``(model, version)`` pairs experiments route to, loading new ones.

        Called off the request path (the experiments' watcher); a version that does not load
        is logged and left out, so its requests go to the champion.
        """
        for pair in set(self._challengers) - wanted:
            del self._challengers[pair]
        for name, version in wanted - set(self._challengers):
            try:
                self._challengers[(name, version)] = load_version(self._registry, name, version)
            except Exception as exc:  # a broken artifact raises anything; the champion keeps answering
                log.warning("could not load challenger %s version %s: %s", name, version, _reason(exc))
            else:
                log.info("loaded %s version %s beside the champion for an experiment", name, version)

    def failures(self) -> dict[str, LoadFailure]:
        """Every model whose aliased version could not be loaded (it serves the one before, if any)."""
        return dict(self._failures)

    def refresh(self, name: str, version: int | None = None) -> LoadedModel:
        """Serve ``version`` of ``name`` (default: where its alias points now) unless it is already.

        Raises:
            NotFoundError: No such model, or it has no version with the alias.
            BackendError: Asked without ``version``: the version does not load, now or
                when last tried (the reason in the message).
        """
        with self._load_lock:
            target = version if version is not None else self._registry.get_alias(name, self.alias).version
            current = self._models.get(name)
            if current is not None and current.version == target:
                return current
            started = time.perf_counter()
            if version is None:  # a request asked: answer from the record, load at most once
                failed = self._failures.get(name)
                if failed is not None and failed.version == target and time.monotonic() < failed.retry_at:
                    raise _unloadable(failed)
                try:
                    model = load_version(self._registry, name, target)
                except Exception as exc:
                    self._failed(name, target, exc, failed if failed and failed.version == target else None)
                    raise _unloadable(self._failures[name]) from exc
            else:
                model = load_version(self._registry, name, target)
            self._models[name] = model  # the swap: new requests see the new version
            self._failures.pop(name, None)
        seconds = time.perf_counter() - started
        log.info("serving %s version %s (%s), loaded in %.1f s", name, model.version, self.alias, seconds)
        self._on_swap(model)
        return model

    def refresh_all(self) -> None:
        """Bring every model up to date; one broken model does not stop the rest.

        One registry query per call, since the watcher runs it every poll interval. A
        version that failed to load is tried again after a delay that doubles with each
        failure (up to a minute), and reported only the first time.
        """
        targets = self._registry.alias_versions(self.alias)
        for name in (set(self._models) | set(self._failures)) - set(targets):
            # The alias was removed: stop serving the model and forget its failure.
            self._models.pop(name, None)
            self._failures.pop(name, None)
            log.info("%s has no %s version any more: not serving it", name, self.alias)
            self._on_drop(name)
        now = time.monotonic()
        for name, version in targets.items():
            current = self._models.get(name)
            if current is not None and current.version == version:
                self._failures.pop(name, None)  # the alias moved back to what is served
                continue
            failed = self._failures.get(name)
            if failed is not None and failed.version == version and now < failed.retry_at:
                continue
            try:
                self.refresh(name, version)
            except Exception as exc:  # a broken artifact raises anything; keep serving the others
                self._failed(name, version, exc, failed if failed and failed.version == version else None)

    def _failed(self, name: str, version: int, exc: Exception, before: LoadFailure | None) -> None:
        """Record a failed load; warn and call back only for the first failure of this version."""
        now = time.monotonic()
        attempts = 1 if before is None else before.attempts + 1
        delay = min(self._poll_seconds * 2**attempts, _RETRY_MAX_SECONDS)
        reason = _reason(exc)
        failure = LoadFailure(name, version, reason, before.since if before else now, attempts, now + delay)
        self._failures[name] = failure
        if before is not None:
            log.debug("%s version %s still does not load: %s", name, version, reason)
            return
        served = self._models.get(name)
        still = f"still serving version {served.version}" if served else "not serving the model"
        log.warning("could not load %s version %s (%s); %s: %s", name, version, self.alias, still, reason)
        log.debug("loading %s version %s failed", name, version, exc_info=exc)
        self._on_load_failed(failure)

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
