"""Classical models as a service: predict, attach feedback, describe and list, each for a caller.

:class:`ModelService` owns the whole predict use case: which loaded version answers (the
runtime's champion), validating the instances against its signature, scoring, the metrics, the
prediction log, and which version and variant answered. ``POST /predict/{model}``, the CLI and
the agents' tools call it with the caller (:class:`~opsloop.auth.Principal`); predictions and
labels belong to the caller's tenant.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from opsloop.auth import Principal, Role
from opsloop.errors import NotFoundError, OpsloopError
from opsloop.models.runtime import LoadedModel, ModelRuntime
from opsloop.models.schema import FieldSpec
from opsloop.models.shadow import ShadowCopy, ShadowQueue
from opsloop.predictions import FeedbackResult, PredictionLog, PredictionRecord
from opsloop.registry import ModelVersionInfo, Registry
from opsloop.telemetry import ModelMetrics
from opsloop.traffic import CHALLENGER, CHAMPION, Assignment, Outcome, TrafficSplit

__all__ = ["UNKNOWN_MODEL", "ModelDescription", "ModelService", "Prediction", "ServedModel"]

UNKNOWN_MODEL = "<unknown>"
"""The ``model`` label of requests for a model that is not served (bounded label cardinality)."""


@dataclass(frozen=True)
class Prediction:
    """Predictions in instance order, with the version and variant that made them."""

    predictions: list[Any]
    probabilities: list[dict[str, float]] | None
    """Per instance, each class's probability (classifiers only)."""
    model: str
    version: int
    variant: str
    request_id: str
    latency_ms: float
    experiment: str | None = None
    """The experiment that chose the variant, if one runs on the model."""


@dataclass(frozen=True)
class ServedModel:
    """A model being served and the version that answers."""

    name: str
    version: int


@dataclass(frozen=True)
class ModelDescription:
    """A served model: its versions, the champion's input schema and an instance to post as is."""

    name: str
    champion: int
    versions: list[ModelVersionInfo]
    input_schema: list[FieldSpec]
    example: dict[str, Any]
    classes: list[Any] | None = None
    """A classifier's classes in the order of its probabilities; None for a regressor."""


class ModelService:
    """Predictions and feedback over the models a :class:`ModelRuntime` serves.

    Args:
        runtime: The loaded champion versions (started by the composition root).
        registry: Where a model's versions are listed.
        log: Where every prediction is recorded (a started :class:`PredictionLog`).
        metrics: Predictions, latency and errors per model and version.
        max_instances: Most instances in one request.
        traffic: The running experiments, which may send a request to a challenger version.
        shadows: Where copies of requests go for a shadow experiment's challenger.
    """

    def __init__(
        self,
        runtime: ModelRuntime,
        registry: Registry,
        log: PredictionLog,
        metrics: ModelMetrics,
        *,
        max_instances: int,
        traffic: TrafficSplit | None = None,
        shadows: ShadowQueue | None = None,
    ) -> None:
        self.runtime = runtime
        self.registry = registry
        self.log = log
        self.metrics = metrics
        self.max_instances = max_instances
        self.traffic = traffic
        self.shadows = shadows

    async def predict(
        self,
        caller: Principal,
        model: str,
        instances: list[Any],
        *,
        request_id: str | None = None,
        unit: str | None = None,
        log: bool = True,
    ) -> Prediction:
        """Validate ``instances`` against the serving version's signature and predict them.

        Scoring runs on the calling event loop: for these models it takes well under a
        millisecond, less than a hop to a worker thread would cost. When an experiment runs
        on the model, ``unit`` (default: the caller's key) decides the variant; a challenger
        that fails is answered for by the champion, and the failure counts against it.
        ``log=False`` keeps the prediction out of the prediction log (a load test's repeated
        instance would read as drift), as evals keep their questions out of the query log.

        Raises:
            ForbiddenError: The caller is a viewer.
            NotFoundError: No such model, or it has no champion version.
            InvalidInputError: Naming each bad instance and field.
        """
        caller.require(Role.USER, "predicting")
        started = time.perf_counter()
        request_id = request_id or uuid.uuid4().hex
        try:
            loaded = await self._serving(model)
        except OpsloopError as exc:
            # Only a model the runtime knows (one failing to load) is a label: one per unknown
            # name would grow the series with every 404.
            label = model if model in self.runtime.failures() else UNKNOWN_MODEL
            self.metrics.errors.labels(label, exc.type).inc()
            raise
        try:
            matrix = loaded.schema.to_matrix(instances, self.max_instances)
        except OpsloopError as exc:
            self.metrics.errors.labels(model, exc.type).inc()
            raise
        assignment = self.traffic.assign("model", model, unit or caller.key_id) if self.traffic else None
        answer = self._challenger_answer(assignment, model, instances, request_id, started)
        if answer is None:
            try:
                answer = loaded, *loaded.predict(matrix)
            except OpsloopError as exc:
                self.metrics.errors.labels(model, exc.type).inc()
                if assignment is not None and assignment.variant == CHAMPION:
                    self._outcome(assignment, request_id, started, variant=CHAMPION, error=exc.type)
                raise
        served, predictions, probabilities = answer
        elapsed = time.perf_counter() - started
        version = str(served.version)
        self.metrics.predictions.labels(model, version).inc(len(predictions))
        self.metrics.latency.labels(model, version).observe(elapsed)
        variant = self.runtime.alias
        if assignment is not None:
            variant = CHALLENGER if served is not loaded else CHAMPION
            # A challenger's outcome was recorded where it answered or failed; the champion's
            # answer for a failed challenger is a fallback, not a champion request.
            counted = self._shadow(assignment, model, request_id, instances, predictions)
            if assignment.variant == CHAMPION and counted:
                self._outcome(assignment, request_id, started, variant=CHAMPION)
        result = Prediction(
            predictions=predictions,
            probabilities=probabilities,
            model=model,
            version=served.version,
            variant=variant,
            request_id=request_id,
            latency_ms=elapsed * 1000,
            experiment=assignment.experiment if assignment else None,
        )
        if log:
            self.log.record(
                PredictionRecord(
                    request_id=result.request_id,
                    tenant=caller.tenant,
                    model=model,
                    version=result.version,
                    variant=result.variant,
                    inputs=instances,
                    outputs=probabilities if probabilities is not None else predictions,
                    latency_ms=result.latency_ms,
                    experiment=result.experiment,
                )
            )
        return result

    def _shadow(
        self, assignment: Assignment, model: str, request_id: str, instances: list[Any], answers: list[Any]
    ) -> bool:
        """Queue a copy for a shadow experiment's challenger; whether the champion's outcome counts.

        A copy that a full queue drops has nothing to be compared with, so its champion outcome
        is not recorded either: a full queue then costs the request one failed put.
        """
        if assignment.shadow_target is None:
            return True
        if self.shadows is None:
            return False
        copy = ShadowCopy(
            assignment.experiment, model, int(assignment.shadow_target), request_id, instances, answers
        )
        return self.shadows.offer(copy)

    def _challenger_answer(
        self, assignment: Assignment | None, model: str, instances: list[Any], request_id: str, started: float
    ) -> tuple[LoadedModel, list[Any], list[dict[str, float]] | None] | None:
        """The challenger's answer when the request is routed to it and it answers; else None."""
        if assignment is None or assignment.variant != CHALLENGER:
            return None
        challenger = self.runtime.challenger(model, int(assignment.target))
        if challenger is None:  # not loaded (yet): the champion answers, nothing is counted
            return None
        try:
            predictions, probabilities = challenger.predict(
                challenger.schema.to_matrix(instances, self.max_instances)
            )
        except Exception as exc:  # whatever the challenger raises, the caller gets the champion's answer
            error = exc.type if isinstance(exc, OpsloopError) else type(exc).__name__
            self._outcome(assignment, request_id, started, variant=CHALLENGER, error=error)
            return None
        self._outcome(assignment, request_id, started, variant=CHALLENGER)
        return challenger, predictions, probabilities

    def _outcome(
        self,
        assignment: Assignment,
        request_id: str,
        started: float,
        *,
        variant: str,
        error: str | None = None,
    ) -> None:
        """Count the request for ``variant``: answered, or failed with ``error``."""
        if self.traffic is not None:  # always, since only the traffic split makes assignments
            self.traffic.record(Outcome.since(assignment, variant, request_id, started, error))

    async def feedback(self, caller: Principal, model: str, labels: dict[str, list[Any]]) -> FeedbackResult:
        """Attach true labels (one per instance) to the caller's tenant's predictions, by request id.

        Raises:
            ForbiddenError: The caller is a viewer.
        """
        caller.require(Role.USER, "sending feedback")
        return await asyncio.to_thread(self.log.feedback, caller.tenant, model, labels)

    def served(self, caller: Principal) -> list[ServedModel]:
        """Every model being served, with the version that answers."""
        return [ServedModel(m.name, m.version) for m in self.runtime.loaded().values()]

    async def describe(self, caller: Principal, model: str) -> ModelDescription:
        """The model's versions with aliases, the champion's input schema and an example instance.

        Raises:
            NotFoundError: No such model, or it has no champion version.
        """
        loaded = await self._serving(model)
        versions = await asyncio.to_thread(self.registry.versions, model)
        return ModelDescription(
            name=model,
            champion=loaded.version,
            versions=versions,
            input_schema=list(loaded.schema.fields),
            example=loaded.schema.example(),
            classes=list(loaded.classes) if loaded.classes is not None else None,
        )

    async def signature(self, caller: Principal, model: str) -> tuple[int, list[FieldSpec]]:
        """The serving version and its input fields, without asking the registry (a hot path's).

        Raises:
            NotFoundError: No such model, or it has no champion version.
        """
        loaded = await self._serving(model)
        return loaded.version, list(loaded.schema.fields)

    async def _serving(self, model: str) -> LoadedModel:
        """The loaded version that answers for ``model``, loading it when the runtime has none yet."""
        loaded = self.runtime.get(model)
        if loaded is None:  # registered since the watcher last looked, or not at all
            try:
                loaded = await asyncio.to_thread(self.runtime.refresh, model)
            except NotFoundError as exc:
                raise NotFoundError(
                    f"no model {model!r} with a '{self.runtime.alias}' version", model=model
                ) from exc
        return loaded
