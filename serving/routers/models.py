"""Classical models: /predict/{model}, /feedback/{model} and model metadata."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from opsloop.errors import NotFoundError, OpsloopError
from opsloop.predictions import PredictionRecord
from serving.deps import PlatformDep, UserKey, ViewerKey, request_id
from serving.platform import Platform
from serving.runtime import LoadedModel

router = APIRouter(tags=["models"])


class PredictRequest(BaseModel):
    """Instances to predict, each an object of feature name to value."""

    instances: list[Any] = Field(description="One object per row, e.g. [{'age': 41, ...}]")


class PredictResponse(BaseModel):
    """Predictions in instance order, with the version and variant that made them."""

    predictions: list[Any]
    probabilities: list[dict[str, float]] | None = Field(
        default=None, description="Per instance, each class's probability (classifiers only)."
    )
    model: str
    version: int
    variant: str
    request_id: str


class FeedbackItem(BaseModel):
    """True labels for an earlier /predict request, one per instance."""

    request_id: str = Field(max_length=64)
    labels: list[Any] = Field(min_length=1)


class FeedbackRequest(BaseModel):
    """Ground truth for earlier predictions."""

    feedback: list[FeedbackItem] = Field(min_length=1, max_length=10_000)


class FeedbackResponse(BaseModel):
    """Which request ids took their labels; unknown ids are reported, not dropped."""

    attached: list[str]
    unknown: list[str]
    rejected: dict[str, str]


async def _champion(platform: Platform, name: str) -> LoadedModel:
    model = platform.runtime.get(name)
    if model is None:  # registered since the watcher last looked, or not at all
        try:
            model = await run_in_threadpool(platform.runtime.refresh, name)
        except NotFoundError as exc:
            raise NotFoundError(
                f"no model {name!r} with a '{platform.runtime.alias}' version", model=name
            ) from exc
    return model


@router.post(
    "/predict/{model}",
    summary="Predict with a model's champion version",
    response_model=PredictResponse,
)
async def predict(
    model: str, body: PredictRequest, platform: PlatformDep, principal: UserKey, request: Request
) -> JSONResponse:
    """Validate the instances against the model's signature and predict them."""
    started = time.perf_counter()
    metrics = platform.metrics.models
    try:
        loaded = await _champion(platform, model)
        # Scoring runs on the event loop: for these models it takes well under a
        # millisecond, less than a hop to the thread pool would cost.
        matrix = loaded.schema.to_matrix(body.instances, platform.settings.max_instances)
        predictions, probabilities = loaded.predict(matrix)
    except OpsloopError as exc:
        metrics.errors.labels(model, exc.type).inc()
        raise
    elapsed = time.perf_counter() - started
    rid = request_id(request) or ""
    version = str(loaded.version)
    metrics.predictions.labels(model, version).inc(len(predictions))
    metrics.latency.labels(model, version).observe(elapsed)
    platform.predictions.record(
        PredictionRecord(
            request_id=rid,
            tenant=principal.tenant,
            model=model,
            version=loaded.version,
            variant="champion",
            inputs=body.instances,
            outputs=probabilities if probabilities is not None else predictions,
            latency_ms=elapsed * 1000,
        )
    )
    response: dict[str, Any] = {
        "predictions": predictions,
        "probabilities": probabilities,
        "model": model,
        "version": loaded.version,
        "variant": "champion",
        "request_id": rid,
    }
    return JSONResponse(response)


@router.post("/feedback/{model}", summary="Attach true labels to earlier predictions")
async def feedback(
    model: str, body: FeedbackRequest, platform: PlatformDep, principal: UserKey
) -> FeedbackResponse:
    """Labels go to the caller's tenant's predictions of ``model`` by request id."""
    labels = {item.request_id: item.labels for item in body.feedback}
    result = await run_in_threadpool(platform.predictions.feedback, principal.tenant, model, labels)
    return FeedbackResponse(attached=result.attached, unknown=result.unknown, rejected=result.rejected)


@router.get("/models", summary="List served models")
async def list_models(platform: PlatformDep, _: ViewerKey) -> list[dict[str, Any]]:
    """Every model currently served, with its champion version."""
    return [{"name": m.name, "version": m.version} for m in platform.runtime.loaded().values()]


@router.get("/models/{model}", summary="A model's versions, input schema and an example")
async def describe_model(model: str, platform: PlatformDep, _: ViewerKey) -> dict[str, Any]:
    """Versions with aliases, the champion's input schema, and an instance to post as is."""
    loaded = await _champion(platform, model)
    versions = await run_in_threadpool(platform.registry.versions, model)
    return {
        "name": model,
        "champion": loaded.version,
        "versions": [
            {"version": v.version, "aliases": list(v.aliases), "run_id": v.run_id, "created_ms": v.created_ms}
            for v in versions
        ],
        "input_schema": [spec.to_dict() for spec in loaded.schema.fields],
        "example": {"instances": [loaded.schema.example()]},
    }
