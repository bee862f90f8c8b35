"""The steps of one retraining run, in order, and the lease heartbeat that guards them.

:class:`RunSteps` holds what a run has found so far; :meth:`RunSteps.execute` goes through data,
validation, search, evaluation, registration and hand-off (:mod:`workflows.retraining.pipeline`
says what each does and why the order keeps a killed process harmless). A step that ends the run
early (refused, not better) raises :class:`~workflows.retraining.results.Ended` with the result.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from opsloop.auth import Principal
from opsloop.errors import ConflictError, InvalidInputError, NotFoundError, OpsloopError
from opsloop.models.runtime import LoadedModel
from opsloop.registry import REFERENCE_ARTIFACT, Lineage, current_git_sha
from opsloop.tables import utcnow
from workflows.retraining.data import (
    DATASET_ARTIFACT,
    MANIFEST_ARTIFACT,
    SOURCE,
    TRAINING_DATA_ARTIFACT,
    WEIGHT,
    DataSpec,
    TrainingData,
    assemble,
    typed_features,
)
from workflows.retraining.results import Ended, Handoff, RetrainRequest, RetrainResult
from workflows.retraining.store import RetrainingRecord, RetrainingStore, Status
from workflows.retraining.training import SKLEARN_REQUIREMENTS

if TYPE_CHECKING:
    import pandas as pd

    from opsloop.predictions import PredictionLog
    from opsloop.registry import ModelVersionInfo, Registry
    from workflows.retraining.card import ModelCard
    from workflows.retraining.evaluation import Comparison
    from workflows.retraining.training import SearchResult, Trainer
    from workflows.retraining.validation import Check

__all__ = ["CARD_JSON", "CARD_MARKDOWN", "Heartbeat", "RunOwner", "RunSteps", "code_version"]

log = logging.getLogger(__name__)

CARD_MARKDOWN = "model_card.md"
CARD_JSON = "model_card.json"


class RunOwner(Protocol):
    """What the steps use of the :class:`~workflows.retraining.pipeline.Retrainer` running them."""

    store: RetrainingStore
    registry: Registry
    predictions: PredictionLog
    handoff: Handoff | None

    def log_action(
        self, caller: Principal, action: str, record: RetrainingRecord, after: dict[str, Any]
    ) -> None:
        """Audit ``action`` on the run's model."""


class Heartbeat:
    """Renews the model's lease in a thread while the run works; notes when it was lost."""

    def __init__(self, store: RetrainingStore, model: str, holder: str) -> None:
        self._store, self._model, self._holder = store, model, holder
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._beat, name=f"retrain-lease-{model}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _beat(self) -> None:
        renewed = time.monotonic()
        while not self._stop.wait(self._store.lease_seconds / 3):
            try:
                if not self._store.renew(self._model, self._holder):
                    self.lost = True
                    return
                renewed = time.monotonic()
            except Exception:  # a database hiccup: try again next beat, unless the lease ran out
                log.warning("renewing the retraining lease of %s failed", self._model, exc_info=True)
                if time.monotonic() - renewed > self._store.lease_seconds:
                    self.lost = True
                    return

    def hold(self) -> None:
        """Renew now and raise unless the lease is still ours: the last check before registering.

        Raises:
            ConflictError: The lease ran out and another process may have taken the model over.
        """
        if self.lost or not self._store.renew(self._model, self._holder):
            self.lost = True
            raise ConflictError(
                f"the retraining lease of {self._model!r} was lost (another process may have taken it "
                "over): not registering",
                model=self._model,
            )


@dataclass
class RunSteps:
    """The state of one run as its steps go (the pipeline's body)."""

    owner: RunOwner
    caller: Principal
    request: RetrainRequest
    record: RetrainingRecord
    champion: ModelVersionInfo
    served: LoadedModel
    """The champion as servers load it: what the challenger is compared with."""
    signature: list[tuple[str, str]]
    label: str
    lease: Heartbeat
    say: Callable[[str, str], None]
    step: str = "starting"
    mlflow_run_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        """The MLflow run every step logs into."""
        if self.mlflow_run_id is None:
            raise RuntimeError("the MLflow run is not open yet")
        return self.mlflow_run_id

    def result(self, status: Status, **fields: Any) -> RetrainResult:
        """The run's result so far, ending as ``status``."""
        return RetrainResult(
            status=status,
            model=self.request.model,
            run=self.record.id,
            parent_version=self.champion.version,
            data=self.data,
            validation=self.validation,
            metrics=self.metrics,
            mlflow_run_id=self.mlflow_run_id,
            **fields,
        )

    def enter(self, step: str, message: str) -> None:
        """Record, audit and show the step the run starts."""
        self.step = step
        self.owner.store.step(self.record.id, step, mlflow_run_id=self.mlflow_run_id)
        self.owner.log_action(self.caller, f"retrain.{step}", self.record, {"message": message})
        self.say(step, message)

    def execute(
        self, trainer: Trainer, trainer_name: str, user: tuple[pd.DataFrame, str] | None
    ) -> RetrainResult:
        """Every step, in order, to a registered and handed-off challenger (or an early end)."""
        registry, model = self.owner.registry, self.request.model
        self.mlflow_run_id = registry.open_run(
            f"{model}-retrain-{self.record.id}",
            tags={"opsloop.retraining.run": str(self.record.id), "opsloop.trigger": self.request.trigger},
        )
        self.enter("data", "collecting labelled production rows")
        data = self._data(user)
        self.enter("validate", f"validating {len(data.new_rows)} new rows")
        self._validate(data)
        self._log_data(data)  # Parquet only once the rows are known to be well typed
        self.enter("train", f"searching {trainer_name} ({self.request.search.trials} trials at most)")
        from workflows.retraining.training import search

        train = data.train.dropna(subset=[*data.features, data.label])
        features = typed_features(train, self.signature)
        labels = _labels(train[data.label])
        found = search(
            trainer,
            features,
            labels,
            train[WEIGHT].to_numpy(dtype=float),
            self.request.search,
            progress=lambda line: self.say("train", line),
        )
        registry.log_run(
            self.mlflow_run_id,
            params={"trainer": trainer_name, **{f"best.{k}": v for k, v in found.params.items()}},
            metrics={
                f"validation_{self.request.search.metric}": found.validation_score,
                "search_trials": found.completed,
                "search_failed_trials": found.failed,
                "search_seconds": found.seconds,
            },
            artifacts={"search_trials.json": found.history},
        )
        self.enter(
            "evaluate", f"comparing with version {self.champion.version} on {len(data.holdout)} holdout rows"
        )
        comparison = self._evaluate(data, found.estimator)
        card = self._card(data, found, comparison, trainer_name)
        if not comparison.better:
            registry.log_run(
                self.mlflow_run_id, artifacts={CARD_MARKDOWN: card.to_markdown(), CARD_JSON: card.to_dict()}
            )
            raise Ended(self.result("not_better", reason=comparison.summary(), model_card=self._card_uri()))
        self.enter("register", "logging the challenger and registering it")
        version = self._register(data, found, features, card)
        try:  # the version exists, complete: whatever fails now is the hand-off's, not the run's
            self.owner.store.step(self.record.id, "handoff", version=version.version)
            self.enter("handoff", f"handing version {version.version} to serving ({self.request.handoff})")
            handoff = self._handoff(version.version)
        except Exception as exc:
            log.exception("handing version %s of %s to serving failed", version.version, model)
            reason = exc.message if isinstance(exc, OpsloopError) else f"{type(exc).__name__}: {exc}"
            handoff = {"mode": self.request.handoff, "error": reason}
        return self.result(
            "registered",
            version=version.version,
            model_card=self._card_uri(),
            experiment=handoff.get("experiment"),
            handoff=handoff,
        )

    def _data(self, user: tuple[pd.DataFrame, str] | None) -> TrainingData:
        registry, request = self.owner.registry, self.request
        reference = None
        reference_source: dict[str, Any] = {}
        if self.champion.run_id is not None:
            try:
                reference = registry.run_frame(self.champion.run_id, TRAINING_DATA_ARTIFACT)
                reference_source = {
                    "model": request.model,
                    "version": self.champion.version,
                    "run_id": self.champion.run_id,
                }
            except NotFoundError:
                self.say(
                    "data", f"version {self.champion.version} kept no training rows: production rows only"
                )
        since = None if request.data.window is None else utcnow() - request.data.window
        user_frame, user_source = None, None
        if user is not None and request.user_data is not None:
            # A user's rows stand in for the production window: they are what gets validated and
            # compared on, and good production rows cannot mask a bad file.
            user_frame, digest = user
            user_source = {"path": str(request.user_data.resolve()), "digest": digest}
            production = []
        else:
            production = self.owner.predictions.labelled(
                request.model, None, since=since, limit=request.data.max_production_rows
            )
        data = assemble(
            self.signature,
            self.label,
            request.data,
            classes=self.served.classes or (),
            reference=reference,
            reference_source=reference_source,
            production=production,
            production_source={
                "model": request.model,
                "since": since.isoformat() if since else None,
                "until": utcnow().isoformat(),
            },
            user=user_frame,
            user_source=user_source,
        )
        counts = data.counts()
        self.data = {
            "rows": counts["total"],
            "counts": counts,
            "hash": data.hash,
            "window": _window_text(request.data),
            "quality_score": None,
            "failures": [],
        }
        self.say("data", f"{counts['total']} rows ({_counts_text(counts)}), {data.hash[:19]}")
        self.owner.registry.log_run(
            self.run_id,
            params={
                "data.hash": data.hash,
                "data.rows": counts["total"],
                "data.train_rows": counts["train"],
                "data.holdout_rows": counts["holdout"],
                "data.window": self.data["window"],
                "data.reference_weight": request.data.reference_weight,
                "parent_version": self.champion.version,
                "trigger": request.trigger,
            },
            artifacts={MANIFEST_ARTIFACT: data.manifest},
        )
        return data

    def _log_data(self, data: TrainingData) -> None:
        """The data set, the rows trained on, and the data set as the run's input with its hash."""
        registry = self.owner.registry
        fitted = data.train[[*data.features, data.label]].reset_index(drop=True)
        registry.log_run(
            self.run_id, artifacts={DATASET_ARTIFACT: data.frame, TRAINING_DATA_ARTIFACT: fitted}
        )
        digest = data.hash.removeprefix("sha256:")
        name = f"{self.request.model}-retrain"
        registry.log_run_dataset(
            self.run_id, data.frame, name=name, digest=digest, context="training", label=data.label
        )

    def _validate(self, data: TrainingData) -> None:
        from workflows.retraining.validation import validate

        try:
            profile = self.owner.registry.reference(self.request.model, self.champion.version)
        except NotFoundError:
            profile = {}  # no reference: types, missing values, duplicates and labels are still checked
        new = data.new_rows[[*data.features, data.label]].reset_index(drop=True)
        report = validate(
            new,
            self.signature,
            profile,
            data.label,
            threshold=self.request.quality_threshold,
            min_rows=self.request.min_rows,
        )
        report = replace(
            report, checks=(*report.checks, _classes_check(new[data.label], self.served.classes or ()))
        )
        full = report.to_dict()
        self.owner.registry.log_run(
            self.run_id,
            metrics={"data_quality_score": report.score},
            artifacts={"validation_report.json": full},
        )
        # Example values stay in the MLflow run (platform-wide, like the data set): the result goes
        # to whoever asked, and the rows are every tenant's traffic.
        self.validation = {
            **full,
            "columns": [{k: v for k, v in c.items() if k != "examples"} for c in full["columns"]],
        }
        self.data["quality_score"] = report.score
        self.data["failures"] = [check.message for check in report.failures]
        self.say("validate", report.summary())
        if not report.passed:
            failed = "; ".join(check.message for check in report.failures)
            raise Ended(self.result("refused", reason=f"the new data failed validation: {failed}"))

    def _evaluate(self, data: TrainingData, estimator: Any) -> Comparison:
        from workflows.retraining.evaluation import compare

        holdout = data.holdout.dropna(subset=[*data.features, data.label])
        if len(holdout) == 0:
            raise InvalidInputError("no complete holdout rows to compare on", field="holdout")
        champion = self.served
        if champion.classes is None:  # checked before the run began; for the type checker
            raise InvalidInputError("the champion is not a classifier", field="classes")
        classes = tuple(c.item() if hasattr(c, "item") else c for c in estimator.classes_)
        if [str(c) for c in classes] != [str(c) for c in champion.classes]:
            raise InvalidInputError(
                f"the challenger predicts classes {list(classes)}, the champion {list(champion.classes)}",
                field="classes",
            )
        challenger = LoadedModel(
            self.request.model, 0, champion.schema, estimator, champion.classes,
            accepts_arrays=not hasattr(estimator, "feature_names_in_"),
        )  # fmt: skip
        matrix = typed_features(holdout, self.signature).to_numpy(dtype=object)
        keys = [str(c) for c in champion.classes]
        probabilities = [
            np.asarray([[row[k] for k in keys] for row in (model.predict(matrix)[1] or [])])
            for model in (champion, challenger)
        ]
        comparison = compare(
            _labels(holdout[data.label]),
            probabilities[0],
            probabilities[1],
            champion.classes,
            metric=self.request.search.metric,
            slices=holdout[data.features].reset_index(drop=True),
        )
        self.metrics = {
            "metric": comparison.metric,
            "champion": comparison.champion,
            "challenger": comparison.challenger,
            "delta": comparison.delta,
            "ci": list(comparison.ci),
            "better": comparison.better,
            "holdout_rows": comparison.holdout_rows,
            "slices": [s.to_dict() for s in comparison.slices],
        }
        self.owner.registry.log_run(
            self.run_id,
            metrics={
                f"champion_{comparison.metric}": comparison.champion,
                f"challenger_{comparison.metric}": comparison.challenger,
                f"delta_{comparison.metric}": comparison.delta,
                "delta_ci_low": comparison.ci[0],
                "delta_ci_high": comparison.ci[1],
            },
            artifacts={"evaluation.json": comparison.to_dict()},
        )
        self.say("evaluate", comparison.summary())
        return comparison

    def _card(
        self, data: TrainingData, found: SearchResult, comparison: Comparison, trainer_name: str
    ) -> ModelCard:
        from workflows.retraining.card import ModelCard, default_limits

        return ModelCard(
            model=self.request.model,
            version=None,
            parent_version=self.champion.version,
            trigger=self.request.trigger,
            cause=self.request.cause,
            created_at=utcnow().isoformat(),
            training_run_id=self.run_id,
            code_version=code_version(),
            data={
                "window": self.data["window"],
                "hash": data.hash,
                "manifest": f"runs:/{self.mlflow_run_id}/{MANIFEST_ARTIFACT}",
                "rows": data.counts(),
                "weights": data.manifest["weights"],
            },
            validation=self.validation or {},
            metrics=comparison.to_dict(),
            params=found.params,
            trainer=trainer_name,
            known_limits=default_limits(
                holdout_rows=comparison.holdout_rows,
                window=self.data["window"],
                user_supplied_rows=data.counts()["data"],
            ),
        )

    def _card_uri(self) -> str:
        return f"runs:/{self.mlflow_run_id}/{CARD_MARKDOWN}"

    def _register(
        self, data: TrainingData, found: SearchResult, features: pd.DataFrame, card: ModelCard
    ) -> ModelVersionInfo:
        from workflows.reference import build_profile, columns_from_signature

        registry, model = self.owner.registry, self.request.model
        run_id = self.run_id
        estimator = found.estimator
        proba = estimator.predict_proba(
            features.to_numpy(dtype=object) if not hasattr(estimator, "feature_names_in_") else features
        )
        logged = registry.log_sklearn_model(
            estimator,
            run_name=f"{model}-retrain-{self.record.id}",
            inputs=features,
            outputs=proba,
            requirements=[f"{dist}=={installed_version(dist)}" for dist in SKLEARN_REQUIREMENTS],
            predict_fn="predict_proba",
            trusted_types=_untrusted_types(estimator),
            run_id=run_id,
        )
        if registry.signature_columns(logged.model_uri) != self.signature:
            raise InvalidInputError(
                "the challenger's input signature differs from the champion's: its trainer changed them",
                field="signature",
            )
        # Drift checks compare live traffic with this profile: the new world's rows, not the old
        # reference rows mixed in at a low weight, or traffic of the new world would read as drift.
        train = data.train.dropna(subset=[*data.features, data.label])
        new = (train[SOURCE] != "reference").to_numpy()
        rows = new if new.any() else np.ones(len(train), dtype=bool)
        profile = build_profile(features[rows], columns_from_signature(self.signature), proba[rows])
        registry.log_run(
            run_id,
            artifacts={
                REFERENCE_ARTIFACT: profile,
                CARD_MARKDOWN: card.to_markdown(),
                CARD_JSON: card.to_dict(),
            },
        )
        self.lease.hold()
        lineage = Lineage(data_hash=data.hash, git_sha=_git_sha(), params=found.params)
        comparison = self.metrics
        version = registry.register_model(
            model,
            logged.model_uri,
            lineage,
            description=(
                f"retrained from version {self.champion.version} ({self.request.trigger}); holdout "
                f"{comparison['metric']} {comparison['champion']:.4f} -> {comparison['challenger']:.4f}"
            ),
            tags={
                "data_hash": data.hash,
                "parent_version": str(self.champion.version),
                "code_version": code_version(),
                "trigger": self.request.trigger,
                "training_run_id": run_id,
                "model_card": self._card_uri(),
            },
        )
        # The card names its version now that it has one (the version exists, complete, either way).
        registry.log_run(
            run_id,
            artifacts={
                CARD_JSON: replace(card, version=version.version).to_dict(),
                CARD_MARKDOWN: replace(card, version=version.version).to_markdown(),
            },
        )
        self.say("register", f"registered {model} version {version.version}")
        return version

    def _handoff(self, version: int) -> dict[str, Any]:
        mode = self.request.handoff
        if mode == "none" or self.owner.handoff is None:
            return {
                "mode": "none",
                "message": f"promote it with 'opsloop models promote {self.request.model} {version}'",
            }
        try:
            return self.owner.handoff(self.caller, self.request.model, version, mode)
        except OpsloopError as exc:  # the version stays registered; say why serving did not get it
            return {"mode": mode, "error": exc.message}


def _classes_check(labels: pd.Series, classes: tuple[Any, ...]) -> Check:
    """Every label is one of the classes the champion predicts (as text: JSON gives 1, a CSV "1")."""
    from workflows.retraining.validation import Check

    known = {str(c) for c in classes}
    present = labels.dropna()
    unknown = present[~present.astype(str).isin(known)]
    allowed = ", ".join(sorted(known))
    if unknown.empty:
        message = f"label values: every label is one of the model's classes ({allowed})"
    else:
        seen = ", ".join(repr(v) for v in unknown.astype(str).unique()[:5])
        message = (
            f"label values: {len(unknown)} of {len(present)} labels are not among the model's "
            f"classes ({allowed}): {seen}"
        )
    return Check("label_values", unknown.empty, len(unknown), "0 unknown", message, column=str(labels.name))


@functools.cache  # the code a process runs does not change under it
def _git_sha() -> str | None:
    return current_git_sha(Path(__file__).resolve().parent)


def code_version() -> str:
    """The git commit of the code that trains, or the installed opsloop version outside a checkout."""
    return _git_sha() or f"opsloop {installed_version('opsloop')}"


def _labels(values: pd.Series) -> np.ndarray:
    """Labels as the numbers or strings they are (JSON feedback gives ints; Parquet may give floats)."""
    array = values.to_numpy()
    if array.dtype.kind == "f" and np.all(np.mod(array, 1) == 0):
        return array.astype(np.int64)
    return array


def _untrusted_types(estimator: Any) -> list[str]:
    """The types skops would refuse to load from this estimator: the trainer built them, so trust them."""
    import skops.io

    return list(skops.io.get_untrusted_types(data=skops.io.dumps(estimator)))


def _window_text(spec: DataSpec) -> str:
    return "all labelled rows" if spec.window is None else f"last {_duration(spec.window.total_seconds())}"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _counts_text(counts: dict[str, int]) -> str:
    return (
        f"{counts['reference']} reference, {counts['production']} production, "
        f"{counts['data']} from the data file; {counts['holdout']} held out"
    )
