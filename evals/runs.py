"""The eval run operation: ``opsloop eval run``, ``POST /admin/evals/runs`` and the scheduled jobs.

:meth:`EvalRuns.run` is one run for one caller (``opsloop.auth.Principal``): the data set goes
through the RAG pipeline of the caller's tenant, is scored, tracked and resumed
(:class:`~evals.service.EvalService`) and, with a baseline, gated; the run is then recorded in
the audit log (``eval.run``, target ``eval-run:<run id>``). The CLI calls it as the local
operator, the server's route as the key's owner, and :meth:`EvalRuns.run_job` as the system
caller of the job's tenant, so every run is scored, scoped and audited alike.

What it needs from above is passed in (``serving`` wires the real ones):

* :class:`EvalRag`: the pipeline under evaluation and its embedder (``rag.service.RagService``),
  built on first use, since opening it takes the embedded store's lock;
* :class:`EvalLLMs`: the LLM clients of answer and judge routes, by route name and tenant, and
  what a call on a backend costs (the gateway's routes and prices).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any, Protocol

from evals.calls import JudgeOptions
from evals.dataset import EvalDataset, load_dataset
from evals.gate import DEFAULT_GATE, GateReport, GateRule
from evals.runner import EvalConfig, EvalRunner, Progress, RagPipeline
from evals.schedule import EvalJob, JobResult
from evals.service import EvalService, Resume, TrackedRun
from opsloop.audit import AuditLog
from opsloop.auth import Principal, Role, system_principal
from opsloop.llm.protocol import LLMClient, Usage
from opsloop.tracing import Tracer
from rag.embedder import Embedder

__all__ = ["EvalLLMs", "EvalRag", "EvalRunResult", "EvalRuns", "Stage", "eval_config"]


class EvalRag(RagPipeline, Protocol):
    """The pipeline an eval run queries, with the embedder of its semantic metrics."""

    @property
    def embedder(self) -> Embedder:
        """The pipeline's own embedder (MiniLM): semantic similarity and answer relevancy use it."""
        ...


class EvalLLMs(Protocol):
    """The LLMs of eval runs: a client per route and tenant, and the price of each call."""

    def client(self, route: str, tenant: str) -> LLMClient:
        """The client of ``route`` whose calls are ``tenant``'s.

        Raises:
            NotFoundError: No such route.
        """
        ...

    def cost(self, backend: str, usage: Usage, latency_ms: float) -> float:
        """What one call served by ``backend`` cost, in USD (an ``evals.calls.CostFn``)."""
        ...


Stage = Callable[[str], AbstractContextManager[Progress | None]]
"""Opened around each run (``"eval"``, then ``"baseline"``): yields its progress callback, if any."""


def _no_progress(label: str) -> AbstractContextManager[Progress | None]:
    return contextlib.nullcontext()


@dataclass(frozen=True)
class EvalRunResult:
    """A finished eval run: the tracked run and, when a baseline was given, the gate's report."""

    dataset: EvalDataset
    run: TrackedRun
    gate: GateReport | None = None
    baseline_run: str | None = None
    baseline_ran: bool = False
    """Whether the baseline had no finished run and was evaluated first."""

    @property
    def cost_usd(self) -> float:
        """What the run's answers and judge calls cost."""
        return sum(s.cost_usd for s in self.run.outcome.samples)


class EvalRuns:
    """Runs evals for callers (see the module docs).

    Args:
        service: Run directories, resuming, MLflow tracking and the gate.
        rag: Builds (or returns) the pipeline under evaluation; called when a run starts.
        llms: The answer and judge routes, and their prices.
        audit: Where each run is recorded.
        default_top_k: Chunks per question when a scheduled job does not say.
        default_route: The route that answers when a run names none.
        tracer: Records a trace of each sample.
    """

    def __init__(
        self,
        service: EvalService,
        rag: Callable[[], EvalRag],
        llms: EvalLLMs,
        audit: AuditLog,
        *,
        default_top_k: int,
        default_route: str,
        tracer: Tracer | None = None,
    ) -> None:
        self.tracer = tracer
        self.service = service
        self._rag = rag
        self.llms = llms
        self.audit = audit
        self.default_top_k = default_top_k
        self.default_route = default_route

    def runner(
        self, caller: Principal, config: EvalConfig, *, progress: Progress | None = None
    ) -> EvalRunner:
        """A runner of ``config`` for ``caller``: the pipeline, and clients of its routes.

        Answers and judge calls are the caller's tenant's (its budgets, its ledger rows).

        Raises:
            NotFoundError: ``config.route`` or ``config.judge`` is no route.
            ConflictError: Another process holds the embedded vector store.
        """
        rag = self._rag()
        judge = self.llms.client(config.judge, caller.tenant) if config.judge else None
        return EvalRunner(
            rag,
            caller=caller,
            embedder=rag.embedder,
            judge=judge,
            answer_llm=self.llms.client(config.route or self.default_route, caller.tenant),
            answer_cost=self.llms.cost,
            judge_cost=self.llms.cost,
            progress=progress,
            tracer=self.tracer,
        )

    async def run(
        self,
        caller: Principal,
        dataset: EvalDataset,
        config: EvalConfig,
        *,
        resume: Resume = "auto",
        baseline: str | None = None,
        rules: tuple[GateRule, ...] = DEFAULT_GATE,
        tags: Mapping[str, str] | None = None,
        stage: Stage = _no_progress,
        notice: Callable[[str], None] | None = None,
        request_id: str | None = None,
    ) -> EvalRunResult:
        """Run ``config`` on ``dataset`` for ``caller`` (resumed per ``resume``); with ``baseline``, gate it.

        ``config.tenant`` is replaced by the caller's. The baseline is the newest finished run
        of the ``baseline`` prompt with the same settings; when there is none it is evaluated
        first (``notice`` is told so), then compared with ``rules`` and the verdict recorded on
        the run. The finished run is audited as ``eval.run`` under ``request_id``.

        Raises:
            ForbiddenError: The caller is below the operator role.
            OpsloopError: What :meth:`EvalService.run` or :meth:`EvalService.compare` raised.
        """
        caller.require(Role.OPERATOR, "running an eval")
        config = replace(config, tenant=caller.tenant)
        with stage("eval") as progress:
            tracked = await self.service.run(
                self.runner(caller, config, progress=progress), dataset, config, resume=resume, tags=tags
            )
        result = EvalRunResult(dataset, tracked)
        if baseline is not None:
            result = await self._gate(caller, result, baseline, rules, tags, stage, notice)
        await asyncio.to_thread(self._record, caller, result, tags, request_id)
        return result

    async def _gate(
        self,
        caller: Principal,
        result: EvalRunResult,
        baseline: str,
        rules: tuple[GateRule, ...],
        tags: Mapping[str, str] | None,
        stage: Stage,
        notice: Callable[[str], None] | None,
    ) -> EvalRunResult:
        tracked, dataset = result.run, result.dataset
        base_config, found = await asyncio.to_thread(
            self.service.find_baseline, dataset, tracked.config, baseline, exclude=tracked.run_id
        )
        if found is None:
            if notice is not None:
                notice(f"no finished run of the {baseline} prompt with these settings: running it first")
            with stage("baseline") as progress:
                base_run = await self.service.run(
                    self.runner(caller, base_config, progress=progress), dataset, base_config, tags=tags
                )
            baseline_id = base_run.run_id
        else:
            baseline_id = found.run_id
        report = await asyncio.to_thread(self.service.compare, tracked.run_id, baseline_id, rules=rules)
        return replace(result, gate=report, baseline_run=baseline_id, baseline_ran=found is None)

    def _record(
        self,
        caller: Principal,
        result: EvalRunResult,
        tags: Mapping[str, str] | None,
        request_id: str | None,
    ) -> None:
        run = result.run
        after: dict[str, Any] = {
            "dataset": result.dataset.name,
            "dataset_sha256": result.dataset.sha256,
            "samples": len(run.outcome.samples),
            "resumed_run": run.resumed_run,
            "params": run.config.params(),
            "tags": dict(tags or {}),
        }
        if result.gate is not None:
            after |= {"baseline_run": result.baseline_run, "gate_passed": result.gate.passed}
        self.audit.append(
            actor=caller.actor,
            tenant=caller.tenant,
            action="eval.run",
            target=f"eval-run:{run.run_id}",
            after=after,
            request_id=request_id,
        )

    async def run_job(self, job: EvalJob) -> JobResult:
        """Run scheduled job ``job`` as the system caller of its tenant (an ``evals.schedule.JobExecutor``).

        With a ``baseline``, the job's run is compared with the newest finished run of the
        baseline prompt (evaluated first when there is none) and the verdict is part of the result.
        """
        dataset = await asyncio.to_thread(load_dataset, job.dataset)
        if job.limit is not None:
            dataset = dataset.subset(limit=job.limit)
        result = await self.run(
            system_principal(job.tenant),
            dataset,
            _job_config(job, self.default_top_k),
            baseline=job.baseline,
            rules=job.gate_rules() or DEFAULT_GATE,
            tags={"opsloop.eval.job": job.name},
        )
        return JobResult(result.run.run_id, result.run.outcome.summaries, result.gate)


def eval_config(
    *,
    collection: str,
    default_top_k: int,
    prompt_version: str | None = None,
    route: str | None = None,
    top_k: int | None = None,
    judge: str | None = None,
    generate: bool = True,
    max_answer_tokens: int = 64,
    metrics: Sequence[str] | None = None,
    concurrency: int = 2,
    judge_max_tokens: int = 512,
    judge_timeout: float = 120.0,
    judge_retries: int = 2,
) -> EvalConfig:
    """The run configuration of ``opsloop eval run``'s options (and of ``POST /admin/evals/runs``).

    A ``prompt_version`` of digits is a version number, anything else an alias; without
    ``generate`` no answer is written, so ``max_answer_tokens`` does not apply. The tenant is
    left to :meth:`EvalRuns.run`, which takes the caller's.

    Raises:
        InvalidInputError: A value ``EvalConfig`` refuses.
    """
    return EvalConfig(
        collection=collection,
        top_k=top_k or default_top_k,
        prompt=None if prompt_version is None else _prompt(prompt_version),
        route=route,
        generate=generate,
        judge=judge,
        metrics=tuple(metrics) if metrics else None,
        max_answer_tokens=max_answer_tokens if generate else None,
        concurrency=concurrency,
        judge_options=JudgeOptions(
            max_tokens=judge_max_tokens, timeout_s=judge_timeout, retries=judge_retries
        ),
    )


def _job_config(job: EvalJob, default_top_k: int) -> EvalConfig:
    """The run configuration of a scheduled job (its tenant is its caller's, as in :func:`eval_config`)."""
    # Not eval_config(): a job keeps its max_answer_tokens without generation, and that is in
    # the resume and baseline keys of the runs it has made so far.
    return EvalConfig(
        collection=job.collection,
        top_k=job.top_k or default_top_k,
        prompt=_prompt(job.prompt),
        route=job.route,
        generate=job.generate,
        judge=job.judge,
        max_answer_tokens=job.max_answer_tokens,
        judge_options=JudgeOptions(),
    )


def _prompt(alias_or_version: str) -> str | int:
    """A prompt version number when ``alias_or_version`` is digits, else the alias."""
    return int(alias_or_version) if alias_or_version.isdigit() else alias_or_version
