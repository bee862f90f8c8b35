"""Scheduled eval jobs: their configuration, running one, and the scheduler inside ``opsloop serve``.

A job is declared in Settings (``eval_jobs``, a list of :class:`EvalJob`): a cron expression,
a data set, a collection, the prompt alias, routes, and optionally a baseline to gate against.
:func:`run_job` runs one through an injected executor (``evals.runs.EvalRuns.run_job``, over
the process's RAG service and gateway as ``serving`` wires them) and exports the outcome as
Prometheus metrics (``opsloop.telemetry.EvalMetrics``): the last mean of every metric, failed
samples per metric, the time of the last success, runs by outcome and the gate's verdict.

:class:`EvalScheduler` registers the jobs on the process's one :class:`~opsloop.scheduler.Scheduler`,
which fires them on the server's own event loop, because the gateway's router and clients belong
to one loop. A job never overlaps itself and missed fires collapse into one.

A job belongs to its ``tenant``: it bills that tenant's collection and budget. A caller
(:class:`~opsloop.auth.Principal`) who is not an admin sees and triggers only its own tenant's
jobs; another tenant's job is "not found", as if it did not exist. A trigger by a caller is
audited (``eval.trigger``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from evals.gate import GateReport, GateRule, parse_rule
from evals.results import MetricSummary
from opsloop.auth import Role
from opsloop.errors import ConfigError, NotFoundError, OpsloopError
from opsloop.scheduler import Job, Scheduler, cron_trigger

if TYPE_CHECKING:
    from opsloop.audit import AuditLog
    from opsloop.auth import Principal
    from opsloop.telemetry import EvalMetrics

__all__ = ["EvalJob", "EvalScheduler", "JobExecutor", "JobResult", "JobStatus", "next_fire_times", "run_job"]

log = logging.getLogger("opsloop.evals")


class EvalJob(BaseModel):
    """One scheduled eval (an entry of ``Settings.eval_jobs``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="Job name: in metrics labels and the CLI."
    )
    cron: str = Field(description="Standard 5-field cron expression, in UTC, e.g. '0 3 * * *'.")
    dataset: Path = Field(description="The data set (JSON Lines) to run.")
    collection: str = Field(min_length=1, description="The collection the questions are asked of.")
    tenant: str = Field(default="default", min_length=1, description="The collection's tenant.")
    prompt: str = Field(default="production", min_length=1, description="Answer prompt alias or version.")
    route: str | None = Field(default=None, description="Gateway route that answers; default in-process.")
    judge: str | None = Field(
        default=None, description="Gateway route of the LLM judge; none: no judge metrics."
    )
    top_k: int | None = Field(
        default=None, ge=1, le=50, description="Chunks per question; default rag_top_k."
    )
    generate: bool = Field(default=True, description="False: retrieval metrics only.")
    max_answer_tokens: int | None = Field(default=None, ge=1, description="Cap of each answer.")
    limit: int | None = Field(default=None, ge=1, description="Run only the first N items of the data set.")
    baseline: str | None = Field(
        default=None, description="Prompt alias to gate against, e.g. 'production' (for a candidate alias)."
    )
    gate: tuple[str, ...] = Field(
        default=(), description="Gated metrics as 'metric' or 'metric:max_drop'; default the standard gate."
    )

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str) -> str:
        try:
            cron_trigger(cron)
        except ValueError as exc:
            raise ValueError(f"not a valid cron expression ({exc})") from None
        return cron

    @field_validator("gate")
    @classmethod
    def _valid_gate(cls, gate: tuple[str, ...]) -> tuple[str, ...]:
        for rule in gate:
            parse_rule(rule)  # ValueError names the rule
        return gate

    def gate_rules(self) -> tuple[GateRule, ...] | None:
        """The parsed gate rules; None for the default gate."""
        return tuple(parse_rule(rule) for rule in self.gate) or None


def parse_jobs(entries: Sequence[Mapping[str, Any]]) -> list[EvalJob]:
    """``Settings.eval_jobs`` as checked jobs.

    Raises:
        ConfigError: An entry is invalid or two share a name; the message names it and the field.
    """
    jobs = []
    for number, entry in enumerate(entries):
        try:
            jobs.append(EvalJob.model_validate(entry))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"invalid eval_jobs[{number}]: {problems}", setting="eval_jobs") from exc
    names = [job.name for job in jobs]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ConfigError(f"eval job names must be unique: {', '.join(duplicated)}", setting="eval_jobs")
    return jobs


@dataclass(frozen=True)
class JobResult:
    """What one run of a job produced."""

    run_id: str
    summaries: dict[str, MetricSummary]
    gate: GateReport | None = None


JobExecutor = Callable[[EvalJob], Awaitable[JobResult]]
"""Runs a job end to end (``evals.runs.EvalRuns.run_job``) and returns its result."""

Outcome = Literal["ok", "gate_failed", "failed"]


@dataclass
class JobStatus:
    """A job's next fire time and last outcome (``GET /admin/evals/jobs``, ``eval schedule trigger``)."""

    name: str
    cron: str
    next_run: datetime | None
    tenant: str = "default"
    last_run: datetime | None = None
    last_outcome: Outcome | None = None
    last_run_id: str | None = None
    last_scores: dict[str, float] = field(default_factory=dict)
    """The last successful run's mean score per metric."""
    last_error: str | None = None
    running: bool = False


def _visible(caller: Principal, job: EvalJob) -> bool:
    """Admins see every tenant's jobs, everyone else their own tenant's."""
    return caller.role >= Role.ADMIN or job.tenant == caller.tenant


def next_fire_times(job: EvalJob, *, after: datetime | None = None, count: int = 1) -> list[datetime]:
    """The job's next ``count`` fire times after ``after`` (default now), in UTC."""
    trigger = cron_trigger(job.cron)
    now = after or datetime.now(UTC)
    times: list[datetime] = []
    previous = None
    for _ in range(count):
        fire = trigger.get_next_fire_time(previous, now)
        if fire is None:
            break
        times.append(fire)
        previous, now = fire, fire
    return times


async def run_job(
    job: EvalJob,
    execute: JobExecutor,
    metrics: EvalMetrics,
    *,
    clock: Callable[[], float] = time.time,
) -> tuple[Outcome, JobResult | None]:
    """Run ``job`` once and export its outcome; errors are counted, logged and re-raised.

    Returns:
        ``ok`` or ``gate_failed`` with the result.

    Raises:
        OpsloopError: What the run raised (counted as ``failed``).
    """
    try:
        result = await execute(job)
    except Exception:
        metrics.runs.labels(job.name, "failed").inc()
        log.exception("scheduled eval %r failed", job.name)
        raise
    for name, summary in result.summaries.items():
        if summary.mean is not None:
            metrics.score.labels(job.name, name).set(summary.mean)
        else:
            # A metric nobody could score has no last value; drop a stale one rather than keep it.
            with contextlib.suppress(KeyError):
                metrics.score.remove(job.name, name)
        metrics.metric_failures.labels(job.name, name).set(summary.failed)
    outcome: Outcome = "ok"
    if result.gate is not None:
        metrics.gate_passed.labels(job.name).set(1 if result.gate.passed else 0)
        if not result.gate.passed:
            outcome = "gate_failed"
    metrics.last_success.labels(job.name).set(clock())
    metrics.runs.labels(job.name, outcome).inc()
    return outcome, result


class EvalScheduler:
    """Fires eval jobs on their cron schedules, on the running event loop.

    Args:
        jobs: The configured jobs, as :func:`parse_jobs` checked them (names are unique).
        execute: Runs one job (see :data:`JobExecutor`).
        metrics: Where outcomes are exported.
        audit: Where triggers are recorded (``eval.trigger``); None records nothing.
    """

    def __init__(
        self,
        jobs: Sequence[EvalJob],
        execute: JobExecutor,
        metrics: EvalMetrics,
        audit: AuditLog | None = None,
    ) -> None:
        self._audit = audit
        self._jobs = {job.name: job for job in jobs}
        self._execute = execute
        self._metrics = metrics
        self._status = {job.name: JobStatus(job.name, job.cron, None, job.tenant) for job in jobs}
        self._scheduler: Scheduler | None = None

    def periodic(self) -> dict[str, Job]:
        """Every job as the scheduler runs it, by its scheduler id ``eval:NAME``."""
        return {
            f"eval:{name}": Job(functools.partial(self._fire, name), cron=job.cron)
            for name, job in self._jobs.items()
        }

    def schedule(self, scheduler: Scheduler) -> None:
        """Register every job on the process's scheduler, which fires them on its event loop."""
        for job_id, job in self.periodic().items():
            scheduler.add(job_id, job)
        self.attach(scheduler)

    def attach(self, scheduler: Scheduler | None) -> None:
        """The scheduler that fires the jobs here, for their next fire times (None: they fire elsewhere)."""
        self._scheduler = scheduler

    def jobs(self, caller: Principal, *, tenant: str | None = None) -> list[JobStatus]:
        """The jobs ``caller`` may see, with their next fire time and last outcome.

        Args:
            caller: Who asks: a non-admin sees only its own tenant's jobs.
            tenant: Only this tenant's jobs (a non-admin may name only its own).

        Raises:
            ForbiddenError: A non-admin named another tenant.
        """
        tenant = caller.scope(tenant, "eval jobs")
        statuses = []
        for name, status in self._status.items():
            if tenant is not None and self._jobs[name].tenant != tenant:
                continue
            if self._scheduler is not None:
                status.next_run = self._scheduler.next_run(f"eval:{name}")
            else:
                fires = next_fire_times(self._jobs[name])
                status.next_run = fires[0] if fires else None
            statuses.append(status)
        return statuses

    async def trigger(
        self, caller: Principal, name: str, *, request_id: str | None = None, prompt: str | None = None
    ) -> JobStatus:
        """Run job ``name`` now and wait for it; returns its status afterwards.

        The trigger is audited (``eval.trigger``, the caller as actor, in the job's tenant),
        whether the run succeeds or not.

        Args:
            caller: Who triggers it: an operator or admin; a non-admin only its own tenant's jobs.
            name: The job.
            request_id: The request that triggered it, for the audit entry.
            prompt: Answer with this alias or version of the prompt instead of the job's, this once.

        Raises:
            ForbiddenError: The caller's role is below operator.
            NotFoundError: No such job visible to the caller; the message lists the visible ones.
            OpsloopError: The run failed (it is also counted and kept as the last outcome).
        """
        caller.require(Role.OPERATOR, "triggering an eval job")
        visible = [job for job in self._jobs.values() if _visible(caller, job)]
        job = next((job for job in visible if job.name == name), None)
        if job is None:
            # Another tenant's job answers like an unknown one, and only visible names are listed.
            known = [job.name for job in visible]
            raise NotFoundError(
                f"no eval job {name!r}; known jobs: {', '.join(known) or 'none'}", job=name, known=known
            )
        status = self._status[name]
        try:
            await self._run(
                name,
                raise_errors=True,
                job=job if prompt is None else job.model_copy(update={"prompt": prompt}),
            )
        finally:
            if self._audit is not None:
                self._audit.append(
                    actor=caller.actor,
                    tenant=job.tenant,
                    action="eval.trigger",
                    target=f"eval_job:{name}",
                    after={
                        "outcome": status.last_outcome,
                        "run_id": status.last_run_id,
                        "error": status.last_error,
                        **({} if prompt is None else {"prompt": prompt}),
                    },
                    request_id=request_id,
                )
        return status

    async def _fire(self, name: str) -> None:
        await self._run(name, raise_errors=False)

    async def _run(self, name: str, *, raise_errors: bool, job: EvalJob | None = None) -> None:
        status = self._status[name]
        status.running = True
        status.last_run = datetime.now(UTC)
        try:
            outcome, result = await run_job(job or self._jobs[name], self._execute, self._metrics)
        except Exception as exc:
            status.last_outcome = "failed"
            status.last_error = (
                exc.message if isinstance(exc, OpsloopError) else f"{type(exc).__name__}: {exc}"
            )
            if raise_errors:
                raise
            return  # logged and counted by run_job; the next fire tries again
        finally:
            status.running = False
        status.last_outcome = outcome
        status.last_run_id = result.run_id if result is not None else None
        status.last_scores = (
            {}
            if result is None
            else {name: s.mean for name, s in result.summaries.items() if s.mean is not None}
        )
        status.last_error = None
