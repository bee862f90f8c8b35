"""Retraining: ``POST /admin/models/{model}/retrain`` starts one, ``GET /admin/retraining`` lists them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from serving.deps import AdminKey, OperatorKey, PlatformDep
from workflows.retraining.pipeline import RetrainResult

router = APIRouter(prefix="/admin", tags=["retraining"])


class RetrainCreate(BaseModel):
    """Overrides of the ``retrain_*`` settings for one retraining; every field is optional."""

    window: str | None = Field(
        default=None,
        examples=["7d"],
        description="Labelled production rows from this long back; all: every one.",
    )
    trials: int | None = Field(default=None, ge=1, le=1000, description="Most hyperparameter trials.")
    time_budget_seconds: float | None = Field(default=None, gt=0, le=86400, description="Search time budget.")
    handoff: Literal["canary", "promote", "none"] | None = Field(
        default=None, description="What happens to a registered challenger (default retrain_handoff)."
    )
    wait: bool = Field(
        default=False,
        description="Answer when the run ends, with its result; otherwise 202 once it has started.",
    )


@router.post(
    "/models/{model}/retrain",
    summary="Retrain a model now",
    responses={202: {"description": "Started; GET /admin/retraining/{run} follows it."}},
)
async def retrain(
    model: str,
    caller: OperatorKey,
    platform: PlatformDep,
    response: Response,
    body: RetrainCreate | None = None,
) -> dict[str, Any]:
    """Retrain ``model`` on its labelled production rows; refused (409) while one runs.

    The run is the one ``opsloop retrain`` makes: validated data, a bounded search, a comparison
    with the champion on the newest labels, and a hand-off of a better challenger.
    """
    retraining = platform.retraining
    body = body or RetrainCreate()  # no body: the settings' defaults
    request = retraining.request(
        model,
        window=body.window,
        trials=body.trials,
        time_budget=body.time_budget_seconds,
        handoff=body.handoff,
    )
    if body.wait:
        result: RetrainResult = await run_in_threadpool(retraining.retrainer.retrain, caller, request)
        return result.to_dict()
    record = await run_in_threadpool(retraining.start, caller, request)
    response.status_code = 202
    return record.to_dict()


@router.get("/retraining", summary="Retraining runs, newest first")
async def history(
    caller: AdminKey,
    platform: PlatformDep,
    model: Annotated[str | None, Query(description="Only this model's runs.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[dict[str, Any]]:
    """Every retraining with its trigger and cause, its step or how it ended, and its result.

    Admins only, like the scheduled drift checks' history: a model's runs are about every
    tenant's traffic and every operator's requests.
    """
    records = await run_in_threadpool(platform.retraining.store.history, model, limit=limit)
    return [record.to_dict() for record in records]


@router.get("/retraining/{run}", summary="One retraining run")
async def show(
    run: Annotated[int, Path(ge=1, le=2**31 - 1, description="The run's number.")],
    caller: AdminKey,
    platform: PlatformDep,
) -> dict[str, Any]:
    """The run as it is now: its step while it runs, its result once it has ended."""
    record = await run_in_threadpool(platform.retraining.store.get, run)
    return record.to_dict()
