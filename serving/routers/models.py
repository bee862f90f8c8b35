"""Classical models: /predict/{model}, /feedback/{model} and model metadata."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from serving.deps import VARIANT_HEADER, ModelsDep, Unit, UserKey, ViewerKey, request_id

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


class ServedModelPublic(BaseModel):
    """A model being served and the version that answers."""

    name: str
    version: int


class VersionPublic(BaseModel):
    """One registered version of a model."""

    version: int
    aliases: list[str]
    run_id: str | None
    created_ms: int | None


class ModelDescriptionPublic(BaseModel):
    """A model's versions, the champion's input schema and an instance to post as is."""

    name: str
    champion: int
    versions: list[VersionPublic]
    input_schema: list[dict[str, Any]]
    example: dict[str, Any]


@router.post(
    "/predict/{model}",
    summary="Predict with a model's champion version",
    response_model=PredictResponse,
)
async def predict(
    model: str,
    body: PredictRequest,
    models: ModelsDep,
    principal: UserKey,
    request: Request,
    unit: Unit = None,
) -> JSONResponse:
    """Validate the instances against the model's signature and predict them."""
    result = await models.predict(principal, model, body.instances, request_id=request_id(request), unit=unit)
    # A plain JSONResponse: validating the response model again would cost more than the prediction.
    return JSONResponse(
        {name: getattr(result, name) for name in PredictResponse.model_fields},
        headers={VARIANT_HEADER: result.variant},
    )


@router.post("/feedback/{model}", summary="Attach true labels to earlier predictions")
async def feedback(
    model: str, body: FeedbackRequest, models: ModelsDep, principal: UserKey
) -> FeedbackResponse:
    """Labels go to the caller's tenant's predictions of ``model`` by request id."""
    labels = {item.request_id: item.labels for item in body.feedback}
    result = await models.feedback(principal, model, labels)
    return FeedbackResponse.model_validate(result, from_attributes=True)


@router.get("/models", summary="List served models")
async def list_models(models: ModelsDep, principal: ViewerKey) -> list[ServedModelPublic]:
    """Every model currently served, with its champion version."""
    return [ServedModelPublic.model_validate(m, from_attributes=True) for m in models.served(principal)]


@router.get("/models/{model}", summary="A model's versions, input schema and an example")
async def describe_model(model: str, models: ModelsDep, principal: ViewerKey) -> ModelDescriptionPublic:
    """Versions with aliases, the champion's input schema, and an instance to post as is."""
    described = await models.describe(principal, model)
    return ModelDescriptionPublic(
        name=described.name,
        champion=described.champion,
        versions=[VersionPublic.model_validate(v, from_attributes=True) for v in described.versions],
        input_schema=[spec.to_dict() for spec in described.input_schema],
        example={"instances": [described.example]},
    )
