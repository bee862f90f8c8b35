"""Evals in a running server: ``POST /admin/evals/runs`` and the scheduled jobs.

``POST /admin/evals/runs`` is ``opsloop eval run`` done by the server, which holds the vector
store: the body carries the run's options and the data set's items (parsed by the caller, and
checked again here), and the answer, once the run has finished, is what the CLI prints. With
``?wait=false`` it answers 202 at once with the run's task (``evals.tasks``), which
``GET /admin/evals/tasks/{id}`` shows with its progress (samples done of the total) until it
ends, then with the same result or the error. The CLI sends its runs here that way while a
server holds the embedded store, and polls the task into its progress bar (``serving.cli.remote``).

The jobs are ``eval_jobs`` in the settings; ``opsloop serve`` fires them on their cron
schedules. Triggering runs a job now, in the server, and answers when it has finished. A job
runs on its tenant's collection and budget, so a caller who is not an admin lists and triggers
only its own tenant's jobs (another tenant's is a 404); every trigger is audited.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from evals.dataset import dataset_from_items
from evals.gate import DEFAULT_GATE, GateReport, GateRule, MetricComparison, parse_rule
from evals.results import MetricSummary
from evals.runs import EvalRunResult, eval_config
from evals.schedule import JobStatus
from evals.tasks import EvalTask, TaskState
from opsloop.errors import InvalidInputError, NotFoundError, OpsloopError
from serving.deps import EvalTasksDep, OperatorKey, PlatformDep, request_id
from serving.eval_wiring import eval_runs

__all__ = [
    "EvalDatasetIn",
    "EvalRunCreate",
    "EvalRunPublic",
    "EvalTaskPublic",
    "GateReportPublic",
    "router",
]

router = APIRouter(prefix="/admin/evals", tags=["evals"])

_CONFIG_FIELDS = {
    "collection",
    "prompt_version",
    "route",
    "top_k",
    "judge",
    "generate",
    "max_answer_tokens",
    "metrics",
    "concurrency",
    "judge_max_tokens",
    "judge_timeout",
    "judge_retries",
}
"""The fields of :class:`EvalRunCreate` that make the run's ``EvalConfig``."""


class EvalDatasetIn(BaseModel):
    """A data set's content: its items as ``EvalItem.to_dict`` writes them, and the file's name."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="The file's stem, e.g. docs_golden.")
    path: str | None = Field(
        default=None, max_length=4096, description="Where the caller read it (recorded, never read)."
    )
    sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="The caller's content hash; the server refuses items that hash otherwise.",
    )
    items: list[dict[str, Any]] = Field(min_length=1, description="The questions, as JSON Lines objects.")


class EvalRunCreate(BaseModel):
    """An eval run: ``opsloop eval run``'s options (the tenant is the caller's) and the data set."""

    model_config = ConfigDict(extra="forbid")

    dataset: EvalDatasetIn
    collection: str = Field(min_length=1, max_length=128)
    prompt_version: str | None = Field(default=None, description="Alias or version; default production.")
    route: str | None = Field(default=None, description="Gateway route that answers; default rag_route.")
    top_k: int | None = Field(default=None, ge=1, le=50, description="Default: the server's rag_top_k.")
    judge: str | None = Field(default=None, description="Gateway route of the LLM judge.")
    generate: bool = Field(default=True, description="False: retrieval metrics only.")
    max_answer_tokens: int = Field(default=64, ge=1)
    metrics: list[str] | None = Field(default=None, description="Only these metrics.")
    concurrency: int = Field(default=2, ge=1, le=64)
    judge_max_tokens: int = Field(default=512, ge=16)
    judge_timeout: float = Field(default=120.0, ge=1.0)
    judge_retries: int = Field(default=2, ge=0, le=10)
    baseline: str | None = Field(default=None, description="Prompt alias to gate against.")
    gate: list[str] | None = Field(default=None, description="METRIC or METRIC:MAX_DROP rules.")
    resume: str = Field(
        default="auto",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="auto (continue a killed run with these settings), never, or a run id.",
    )

    @field_validator("gate")
    @classmethod
    def _known_rules(cls, value: list[str] | None) -> list[str] | None:
        for rule in value or ():
            parse_rule(rule)  # its ValueError names the rule
        return value

    def rules(self) -> tuple[GateRule, ...]:
        """The gate's rules (``DEFAULT_GATE`` when none are given)."""
        return tuple(parse_rule(rule) for rule in self.gate) if self.gate else DEFAULT_GATE


class GateReportPublic(BaseModel):
    """The gate against the baseline run (``evals.gate.GateReport.to_dict`` and the baseline's id)."""

    baseline_run: str
    passed: bool
    regressions: list[str]
    confidence: float
    paired: int
    candidate_only: int
    baseline_only: int
    comparisons: list[MetricComparison]

    def report(self) -> GateReport:
        """The report this was made of (``passed`` and ``regressions`` follow from the rest)."""
        return GateReport(
            list(self.comparisons), self.confidence, self.paired, self.candidate_only, self.baseline_only
        )


class EvalRunPublic(BaseModel):
    """A finished run; all but the last two fields are what ``opsloop eval run --format json`` prints.

    The CLI prints this whether it ran the eval itself or a server did.
    """

    run_id: str
    dataset: str
    samples: int
    resumed_samples: int
    seconds: float
    params: dict[str, Any] = Field(description="The run's MLflow params.")
    summaries: dict[str, MetricSummary]
    gate: GateReportPublic | None = None
    cost_usd: float = Field(description="What the answers and judge calls cost.")
    baseline_ran: bool = Field(description="The baseline had no finished run and was evaluated first.")

    @classmethod
    def of(cls, result: EvalRunResult) -> EvalRunPublic:
        """The public form of a finished run."""
        outcome = result.run.outcome
        gate = None
        if result.gate is not None:
            gate = {"baseline_run": result.baseline_run, **result.gate.to_dict()}
        return cls.model_validate(
            {
                "run_id": result.run.run_id,
                "dataset": result.dataset.name,
                "samples": len(outcome.samples),
                "resumed_samples": outcome.resumed,
                "seconds": round(outcome.seconds, 2),
                "params": result.run.config.params(),
                "summaries": outcome.summaries,
                "gate": gate,
                "cost_usd": result.cost_usd,
                "baseline_ran": result.baseline_ran,
            }
        )


@router.get("/jobs", summary="The scheduled eval jobs")
async def list_jobs(
    platform: PlatformDep,
    principal: OperatorKey,
    tenant: Annotated[str | None, Query(description="Admins only; others see their own tenant's.")] = None,
) -> list[JobStatus]:
    """The jobs the caller may see, with their next fire time (UTC) and last outcome in this server.

    A non-admin sees its own tenant's jobs; an admin every tenant's, or ``tenant``'s.
    """
    if platform.evals is None:
        principal.scope(tenant, "eval jobs")  # the same 403 whether or not jobs are configured
        return []
    return platform.evals.jobs(principal, tenant=tenant)


@router.post("/jobs/{name}/trigger", summary="Run a scheduled eval job now")
async def trigger_job(
    name: Annotated[str, Path(min_length=1, max_length=64)],
    platform: PlatformDep,
    principal: OperatorKey,
    request: Request,
) -> JobStatus:
    """Run job ``name`` now and answer when it has finished (``last_outcome`` says how it went).

    Audited as ``eval.trigger`` in the job's tenant, the caller as actor.
    """
    if platform.evals is None:
        raise NotFoundError(f"no eval job {name!r}; no eval_jobs are configured", job=name)
    return await platform.evals.trigger(principal, name, request_id=request_id(request))


class TaskError(BaseModel):
    """Why a task failed: the error body a waiting request would have had, and its HTTP status."""

    type: str
    message: str
    details: dict[str, Any]
    status: int


class EvalTaskPublic(BaseModel):
    """An eval run in this server, with its progress: the answer of ``GET /admin/evals/tasks/{id}``."""

    id: str
    state: TaskState = Field(description="running, finished (see result) or failed (see error).")
    tenant: str
    actor: str = Field(description="Who started it (key id, or cli:<user>).")
    dataset: str
    samples: int = Field(description="Questions in the data set.")
    stage: str = Field(description="eval, or baseline while the baseline is evaluated first.")
    done: int = Field(description="Samples of the stage scored so far (resumed ones included).")
    total: int = Field(description="Samples of the stage.")
    notices: list[str]
    started_at: datetime
    seconds: float
    result: EvalRunPublic | None = Field(default=None, description="Once finished.")
    error: TaskError | None = Field(default=None, description="Once failed.")

    @classmethod
    def of(cls, task: EvalTask) -> EvalTaskPublic:
        """The public form of ``task`` as it is now."""
        return cls(
            id=task.id,
            state=task.state,
            tenant=task.tenant,
            actor=task.actor,
            dataset=task.dataset,
            samples=task.samples,
            stage=task.stage,
            done=task.done,
            total=task.total,
            notices=list(task.notices),
            started_at=task.started_at,
            seconds=round(task.seconds, 2),
            result=None if task.result is None else EvalRunPublic.of(task.result),
            error=None if task.error is None else _task_error(task),
        )


def _task_error(task: EvalTask) -> TaskError:
    error = task.error
    if isinstance(error, OpsloopError):
        return TaskError(**error.to_dict()["error"], status=error.status)
    if isinstance(error, asyncio.CancelledError):
        message = "the server stopped before the run finished; run it again to resume it"
        return TaskError(type="cancelled", message=message, details={"task": task.id}, status=503)
    message = "internal server error; the server log has the details"
    return TaskError(type="internal_error", message=message, details={"task": task.id}, status=500)


@router.post(
    "/runs",
    summary="Run an eval in the server",
    response_model=EvalRunPublic,
    responses={202: {"model": EvalTaskPublic, "description": "wait=false: the run started; poll its task"}},
)
async def create_run(
    body: EvalRunCreate,
    platform: PlatformDep,
    tasks: EvalTasksDep,
    principal: OperatorKey,
    request: Request,
    wait: Annotated[
        bool, Query(description="false: answer 202 with the run's task at once (poll it for progress).")
    ] = True,
) -> EvalRunPublic | JSONResponse:
    """Run the data set through the RAG pipeline of the caller's tenant; answer when it has finished.

    The run is scored, resumed, tracked in MLflow, gated and audited (``eval.run``) exactly as
    ``opsloop eval run`` does it; the items are checked like the lines of a file (item 3 is
    "line 3"). This can take long: set the client's timeout accordingly (a run cut short
    resumes when asked again), or pass ``wait=false`` and poll ``GET /admin/evals/tasks/{id}``
    (the ``Location`` of the 202) for its progress and, at the end, its result.
    """
    data = body.dataset
    dataset = dataset_from_items(data.items, name=data.name, path=data.path)
    if data.sha256 is not None and dataset.sha256 != data.sha256:
        raise InvalidInputError(
            "the data set's items hash otherwise than the caller computed; send them as parsed",
            field="dataset.sha256",
            value=data.sha256,
        )
    config = eval_config(default_top_k=platform.settings.rag_top_k, **body.model_dump(include=_CONFIG_FIELDS))
    config.metric_names()  # an unknown or unavailable metric fails before anything loads
    runs = eval_runs(platform)
    task = tasks.start(
        principal,
        dataset.name,
        len(dataset.items),
        lambda stage, notice: runs.run(
            principal,
            dataset,
            config,
            resume=body.resume,
            baseline=body.baseline,
            rules=body.rules(),
            stage=stage,
            notice=notice,
            request_id=request_id(request),
        ),
    )
    if not wait:
        answer = EvalTaskPublic.of(task).model_dump(mode="json")
        return JSONResponse(answer, status_code=202, headers={"Location": f"{router.prefix}/tasks/{task.id}"})
    return EvalRunPublic.of(await tasks.wait(task))


@router.get("/tasks", summary="The eval runs in this server, with their progress")
async def list_tasks(
    tasks: EvalTasksDep,
    principal: OperatorKey,
    tenant: Annotated[str | None, Query(description="Admins only; others see their own tenant's.")] = None,
) -> list[EvalTaskPublic]:
    """Runs going on in this server and those that ended in the last hour, newest first.

    A non-admin sees its own tenant's; an admin every tenant's, or ``tenant``'s.
    """
    return [EvalTaskPublic.of(task) for task in tasks.visible(principal, tenant=tenant)]


@router.get("/tasks/{task_id}", summary="One eval run in this server: its progress, result or error")
async def get_task(
    task_id: Annotated[str, Path(min_length=1, max_length=64)], tasks: EvalTasksDep, principal: OperatorKey
) -> EvalTaskPublic:
    """The run's state and progress; once it has ended, its result (as the waiting POST answers) or error.

    Another tenant's task is a 404 for a non-admin, as if it did not exist.
    """
    return EvalTaskPublic.of(tasks.get(principal, task_id))
