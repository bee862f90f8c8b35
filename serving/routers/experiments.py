"""Experiments: ``/admin/experiments`` to create, list, show, stop, promote, roll back and approve them."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from opsloop.errors import InvalidInputError
from serving.deps import OperatorKey, PlatformDep, ViewerKey
from workflows.experiments.service import ExperimentPlan, ExperimentService

router = APIRouter(prefix="/admin/experiments", tags=["experiments"])


async def get_experiments(platform: PlatformDep) -> ExperimentService:
    """The platform's experiment service."""
    return platform.experiments.service


ExperimentsDep = Annotated[ExperimentService, Depends(get_experiments)]


class ExperimentEval(BaseModel):
    """The data set an eval-decided prompt experiment is run on, once per variant, in this server."""

    dataset: str = Field(max_length=4096, description="Path of the JSON Lines data set on the server.")
    collection: str = Field(max_length=128, description="Collection the questions are asked of.")
    limit: int | None = Field(default=None, ge=2, description="Only the first N questions.")
    route: str | None = Field(default=None, description="Gateway route that answers (default rag_llm_route).")
    judge: str | None = Field(default=None, description="Gateway route of the judge, for judge metrics.")


class ExperimentCreate(BaseModel):
    """An experiment to start: one target (a model, a prompt or a route) and its challenger."""

    name: str = Field(max_length=64, examples=["credit-risk-v2"])
    kind: Literal["ab", "canary", "shadow"] | None = Field(
        default=None, description="Default canary; ab for an experiment decided by an eval."
    )
    model: str | None = Field(default=None, examples=["credit-risk"])
    prompt: str | None = None
    route: str | None = None
    challenger: str = Field(
        max_length=128, examples=["2"], description="A version of the model or prompt, or another route."
    )
    weight: float | None = Field(
        default=None, description="ab: the challenger's share in percent (default 50)."
    )
    steps: list[float] = Field(
        default=[5, 25, 50, 100], description="canary: the challenger's weights in percent."
    )
    primary: str | None = Field(
        default=None,
        description="The metric that decides an ab test"
        " (default: accuracy for a model, answer_score for a prompt).",
    )
    guardrails: list[str] = Field(default=[], examples=[["error_rate:0.01", "p99_ms:+20%"]])
    min_samples: int = Field(default=200, ge=1, description="Requests per variant before a step or decision.")
    require_approval: bool = False
    eval: ExperimentEval | None = Field(
        default=None, description="A prompt ab test decided by an eval per variant (primary eval:METRIC)."
    )

    def plan(self) -> ExperimentPlan:
        """The service's plan.

        Raises:
            InvalidInputError: Not exactly one target is named.
        """
        targets = [
            (k, t) for k, t in (("model", self.model), ("prompt", self.prompt), ("route", self.route)) if t
        ]
        if len(targets) != 1:
            raise InvalidInputError("name exactly one target: model, prompt or route", field="model")
        kind, target = targets[0]
        return ExperimentPlan(
            name=self.name,
            kind=self.kind or ("ab" if self.eval else "canary"),
            target_kind=kind,  # type: ignore[arg-type]
            target=target,
            challenger=self.challenger,
            weight=self.weight,
            steps=self.steps,
            primary=self.primary,
            guardrails=self.guardrails,
            min_samples=self.min_samples,
            require_approval=self.require_approval,
            evaluation=None if self.eval is None else self.eval.model_dump(),
        )


@router.post("", status_code=201, summary="Start an experiment")
async def create(body: ExperimentCreate, service: ExperimentsDep, principal: OperatorKey) -> dict[str, Any]:
    """Start routing the challenger's share of the target's traffic (operator)."""
    experiment = await run_in_threadpool(service.create, principal, body.plan())
    return await run_in_threadpool(lambda: asdict(service.show(principal, experiment.name)))


@router.get("", summary="List experiments")
async def list_experiments(service: ExperimentsDep, principal: ViewerKey) -> list[dict[str, Any]]:
    """The caller's tenant's experiments, newest first, with their variants' outcomes."""

    def reports() -> list[dict[str, Any]]:
        return [asdict(service.show(principal, e.name)) for e in service.experiments(principal)]

    return await run_in_threadpool(reports)


@router.get("/{name}", summary="An experiment, its variants, tests and decision")
async def show(name: str, service: ExperimentsDep, principal: ViewerKey) -> dict[str, Any]:
    """What ``opsloop experiments show NAME --format json`` prints."""
    return await run_in_threadpool(lambda: asdict(service.show(principal, name)))


@router.post("/{name}/{action}", summary="Stop, promote, roll back or approve an experiment")
async def act(
    name: str,
    action: Literal["stop", "promote", "rollback", "approve"],
    service: ExperimentsDep,
    principal: OperatorKey,
) -> dict[str, Any]:
    """End the experiment by hand (operator); ``approve`` carries out a promotion waiting for approval."""
    method = {
        "stop": service.stop,
        "promote": service.promote,
        "rollback": service.rollback,
        "approve": service.approve,
    }
    await run_in_threadpool(method[action], principal, name)
    return await run_in_threadpool(lambda: asdict(service.show(principal, name)))
