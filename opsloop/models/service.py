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
from opsloop.predictions import FeedbackResult, PredictionLog, PredictionRecord
from opsloop.registry import ModelVersionInfo, Registry
from opsloop.telemetry import ModelMetrics

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


class ModelService:
    """Predictions and feedback over the models a :class:`ModelRuntime` serves.

    Args:
        runtime: The loaded champion versions (started by the composition root).
        registry: Where a model's versions are listed.
        log: Where every prediction is recorded (a started :class:`PredictionLog`).
        metrics: Predictions, latency and errors per model and version.
        max_instances: Most instances in one request.
    """

    def __init__(
        self,
        runtime: ModelRuntime,
        registry: Registry,
        log: PredictionLog,
        metrics: ModelMetrics,
        *,
        max_instances: int,
    ) -> None:
        self.runtime = runtime
        self.registry = registry
        self.log = log
        self.metrics = metrics
        self.max_instances = max_instances

    async def predict(
        self, caller: Principal, model: str, instances: list[Any], *, request_id: str | None = None
    ) -> Prediction:
        """Validate ``instances`` against the serving version's signature and predict them.

        Scoring runs on the calling event loop: for these models it takes well under a
        millisecond, less than a hop to a worker thread would cost.

        Raises:
            ForbiddenError: The caller is a viewer.
            NotFoundError: No such model, or it has no champion version.
            InvalidInputError: Naming each bad instance and field.
        """
        caller.require(Role.USER, "predicting")
        started = time.perf_counter()
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
            predictions, probabilities = loaded.predict(matrix)
        except OpsloopError as exc:
            self.metrics.errors.labels(model, exc.type).inc()
            raise
        elapsed = time.perf_counter() - started
        version = str(loaded.version)
        self.metrics.predictions.labels(model, version).inc(len(predictions))
        self.metrics.latency.labels(model, version).observe(elapsed)
        result = Prediction(
            predictions=predictions,
            probabilities=probabilities,
            model=model,
            version=loaded.version,
            variant=self.runtime.alias,
            request_id=request_id or uuid.uuid4().hex,
            latency_ms=elapsed * 1000,
        )
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
            )
        )
        return result

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
        )

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
