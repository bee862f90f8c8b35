"""Evals in a running server: ``POST /admin/evals/runs`` and the scheduled jobs.

``POST /admin/evals/runs`` is ``opsloop eval run`` done by the server, which holds the vector
store: the body carries the run's options and the data set's items (parsed by the caller, and
checked again here), and the answer, once the run has finished, is what the CLI prints. The
CLI sends its runs here while a server holds the embedded store (``serving.cli.remote``).

The jobs are ``eval_jobs`` in the settings; ``opsloop serve`` fires them on their cron
schedules. Triggering runs a job now, in the server, and answers when it has finished.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field, field_validator

from evals.dataset import dataset_from_items
from evals.gate import DEFAULT_GATE, GateRule, parse_rule
from evals.schedule import JobStatus
from opsloop.errors import InvalidInputError, NotFoundError
from serving.deps import OperatorKey, PlatformDep
from serving.eval_wiring import EvalRunResult, EvalWiring, eval_config, run_eval

__all__ = ["EvalDatasetIn", "EvalJobPublic", "EvalRunCreate", "EvalRunPublic", "router"]

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


class MetricSummaryPublic(BaseModel):
    """A metric over the run: the mean with its interval, and the samples left out."""

    name: str
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    scored: int
    failed: int
    undefined: int
    not_applicable: int
    failures: dict[str, int] = Field(description="Failed samples by reason.")


class MetricComparisonPublic(BaseModel):
    """One metric of the run against the baseline."""

    metric: str
    pairs: int
    candidate_mean: float | None
    baseline_mean: float | None
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    gated: bool
    max_drop: float | None
    verdict: Literal["regressed", "improved", "no_change", "no_data"]


class GateReportPublic(BaseModel):
    """The gate against the baseline run."""

    baseline_run: str
    passed: bool
    regressions: list[str]
    confidence: float
    paired: int
    candidate_only: int
    baseline_only: int
    comparisons: list[MetricComparisonPublic]


class EvalRunPublic(BaseModel):
    """A finished run; all but the last two fields are what ``opsloop eval run --format json`` prints."""

    run_id: str
    dataset: str
    samples: int
    resumed_samples: int
    seconds: float
    params: dict[str, Any] = Field(description="The run's MLflow params.")
    summaries: dict[str, MetricSummaryPublic]
    gate: GateReportPublic | None = None
    cost_usd: float = Field(description="What the answers and judge calls cost.")
    baseline_ran: bool = Field(description="The baseline had no finished run and was evaluated first.")

    @classmethod
    def of(cls, result: EvalRunResult) -> EvalRunPublic:
        """The public form of a finished run."""
        return cls.model_validate(
            {**result.to_dict(), "cost_usd": result.cost_usd, "baseline_ran": result.baseline_ran}
        )


class EvalJobPublic(BaseModel):
    """A scheduled eval job: when it fires next and how its last run went."""

    name: str
    cron: str
    next_run: datetime | None
    last_run: datetime | None
    last_outcome: Literal["ok", "gate_failed", "failed"] | None
    last_run_id: str | None
    last_error: str | None
    running: bool

    @classmethod
    def of(cls, status: JobStatus) -> EvalJobPublic:
        """The public form of a job's status."""
        fields = {name: getattr(status, name) for name in cls.model_fields}
        return cls(**fields)


@router.get("/jobs", summary="The scheduled eval jobs")
async def list_jobs(platform: PlatformDep, _: OperatorKey) -> list[EvalJobPublic]:
    """Every job of ``eval_jobs`` with its next fire time (UTC) and its last outcome in this server."""
    if platform.evals is None:
        return []
    return [EvalJobPublic.of(status) for status in platform.evals.jobs()]


@router.post("/jobs/{name}/trigger", summary="Run a scheduled eval job now")
async def trigger_job(
    name: Annotated[str, Path(min_length=1, max_length=64)], platform: PlatformDep, _: OperatorKey
) -> EvalJobPublic:
    """Run job ``name`` now and answer when it has finished (``last_outcome`` says how it went)."""
    if platform.evals is None:
        raise NotFoundError(f"no eval job {name!r}; no eval_jobs are configured", job=name)
    return EvalJobPublic.of(await platform.evals.trigger(name))


@router.post("/runs", summary="Run an eval in the server")
async def create_run(body: EvalRunCreate, platform: PlatformDep, principal: OperatorKey) -> EvalRunPublic:
    """Run the data set through the RAG pipeline of the caller's tenant and answer when it has finished.

    The run is scored, resumed, tracked in MLflow and gated exactly as ``opsloop eval run`` does
    it; the items are checked like the lines of a file (item 3 is "line 3"). This can take long:
    set the client's timeout accordingly (a run cut short resumes when asked again).
    """
    data = body.dataset
    dataset = dataset_from_items(data.items, name=data.name, path=data.path)
    if data.sha256 is not None and dataset.sha256 != data.sha256:
        raise InvalidInputError(
            "the data set's items hash otherwise than the caller computed; send them as parsed",
            field="dataset.sha256",
            value=data.sha256,
        )
    config = eval_config(
        tenant=principal.tenant,
        default_top_k=platform.settings.rag_top_k,
        **body.model_dump(include=_CONFIG_FIELDS),
    )
    config.metric_names()  # an unknown or unavailable metric fails before anything loads
    result = await run_eval(
        EvalWiring(platform), dataset, config, resume=body.resume, baseline=body.baseline, rules=body.rules()
    )
    return EvalRunPublic.of(result)
