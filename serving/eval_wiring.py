"""Wires evals to this process's components: the RAG service, the gateway, MLflow.

``evals`` takes its pipeline and LLMs as injected objects; this is where the real ones are
built, for ``opsloop eval`` and for the scheduled jobs of ``opsloop serve``:

* the pipeline is ``Platform.rag`` (``RagService``), queried with ``log_query=False``;
* answers (``--route``, default ``rag_llm_route``) and the judge (``--judge``) are gateway
  routes, called through :class:`GatewayClient`, so every call is routed like a client's and
  lands in the cost ledger: tenant = the eval's tenant, key ``eval``, request id ``eval-<hex>``;
* costs per sample come from the serving backend's prices (``opsloop.ledger.cost_usd``), the
  same numbers the ledger records.

:func:`run_eval` is one ``opsloop eval run``: the tracked run and, with a baseline, the gate.
The CLI calls it in its own process, the server's ``POST /admin/evals/runs`` on its event loop
(when it holds the vector store), and the scheduled jobs too, so every run is scored alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from evals.dataset import EvalDataset, load_dataset
from evals.gate import DEFAULT_GATE, GateReport, GateRule
from evals.runner import EvalConfig, EvalRunner, Progress
from evals.schedule import EvalJob, JobExecutor, JobResult
from evals.scoring import CostFn, JudgeOptions
from evals.service import EvalService, Resume, TrackedRun
from evals.tracking import EvalTracker
from opsloop.ledger import cost_usd
from opsloop.llm.protocol import Usage
from serving.gateway_service import GatewayClient

if TYPE_CHECKING:
    from serving.gateway_service import Gateway
    from serving.platform import Platform

__all__ = [
    "EVAL_KEY_ID",
    "EvalRunResult",
    "EvalWiring",
    "GatewayClient",
    "Stage",
    "eval_config",
    "job_executor",
    "run_eval",
]

EVAL_KEY_ID = "eval"
"""The ledger's key id of eval calls (answers on a route, judge calls)."""


def gateway_cost(gateway: Gateway) -> CostFn:
    """Prices a call as the ledger does, from the spec of the backend that served it."""

    def cost(backend: str, usage: Usage, latency_ms: float) -> float:
        spec = gateway.spec(backend)
        return cost_usd(spec, usage, latency_ms) if spec is not None else 0.0

    return cost


@dataclass
class EvalWiring:
    """The eval service of a Platform, and runners over its RAG service and gateway."""

    platform: Platform

    def service(self) -> EvalService:
        """The eval service on this home and MLflow store."""
        settings = self.platform.settings
        tracker = EvalTracker(settings.tracking_uri, settings.artifact_root)
        return EvalService(settings.home, tracker, self.platform.start_registry())

    def runner(self, config: EvalConfig, *, progress: Progress | None = None) -> EvalRunner:
        """A runner for ``config``: the RAG service, and gateway clients for its routes.

        Raises:
            NotFoundError: ``config.route`` or ``config.judge`` is no gateway route.
            ConflictError: Another process holds the embedded vector store.
        """
        rag = self.platform.rag
        gateway = self.platform.gateway
        route = config.route or self.platform.settings.rag_route
        answer_llm = GatewayClient(gateway, route, config.tenant, key_id=EVAL_KEY_ID)
        judge = None
        if config.judge:
            judge = GatewayClient(gateway, config.judge, config.tenant, key_id=EVAL_KEY_ID)
        cost = gateway_cost(gateway)
        return EvalRunner(
            rag,
            embedder=rag.embedder,
            judge=judge,
            answer_llm=answer_llm,
            answer_cost=cost,
            judge_cost=cost,
            progress=progress,
        )


Stage = Callable[[str], AbstractContextManager[Progress | None]]
"""Opened around each run (``"eval"``, then ``"baseline"``): yields its progress callback, if any."""


def _no_progress(label: str) -> AbstractContextManager[Progress | None]:
    return contextlib.nullcontext()


@dataclass(frozen=True)
class EvalRunResult:
    """A finished ``eval run``: the tracked run and, when a baseline was given, the gate's report."""

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

    def to_dict(self) -> dict[str, Any]:
        """What ``opsloop eval run --format json`` prints."""
        outcome = self.run.outcome
        body: dict[str, Any] = {
            "run_id": self.run.run_id,
            "dataset": self.dataset.name,
            "samples": len(outcome.samples),
            "resumed_samples": outcome.resumed,
            "seconds": round(outcome.seconds, 2),
            "params": self.run.config.params(),
            "summaries": {name: s.to_dict() for name, s in outcome.summaries.items()},
        }
        if self.gate is not None:
            body["gate"] = {"baseline_run": self.baseline_run, **self.gate.to_dict()}
        return body


async def run_eval(
    wiring: EvalWiring,
    dataset: EvalDataset,
    config: EvalConfig,
    *,
    resume: Resume = "auto",
    baseline: str | None = None,
    rules: tuple[GateRule, ...] = DEFAULT_GATE,
    tags: Mapping[str, str] | None = None,
    stage: Stage = _no_progress,
    notice: Callable[[str], None] | None = None,
) -> EvalRunResult:
    """Run ``config`` on ``dataset`` (resumed per ``resume``) and, with ``baseline``, gate it.

    The baseline is the newest finished run of the ``baseline`` prompt with the same settings;
    when there is none it is evaluated first (``notice`` is told so), then compared with
    ``rules`` and the verdict recorded on the run.

    Raises:
        OpsloopError: What :meth:`EvalService.run` or :meth:`EvalService.compare` raised.
    """
    service = wiring.service()
    with stage("eval") as progress:
        tracked = await service.run(
            wiring.runner(config, progress=progress), dataset, config, resume=resume, tags=tags
        )
    if baseline is None:
        return EvalRunResult(dataset, tracked)
    base_config, found = service.find_baseline(dataset, tracked.config, baseline, exclude=tracked.run_id)
    if found is None:
        if notice is not None:
            notice(f"no finished run of the {baseline} prompt with these settings: running it first")
        with stage("baseline") as progress:
            base_run = await service.run(
                wiring.runner(base_config, progress=progress), dataset, base_config, tags=tags
            )
        baseline_id = base_run.run_id
    else:
        baseline_id = found.run_id
    report = service.compare(tracked.run_id, baseline_id, rules=rules)
    return EvalRunResult(dataset, tracked, report, baseline_id, baseline_ran=found is None)


def eval_config(
    *,
    collection: str,
    tenant: str,
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
    ``generate`` no answer is written, so ``max_answer_tokens`` does not apply.

    Raises:
        InvalidInputError: A value ``EvalConfig`` refuses.
    """
    prompt: str | int | None = prompt_version
    if prompt_version is not None and prompt_version.isdigit():
        prompt = int(prompt_version)
    return EvalConfig(
        collection=collection,
        tenant=tenant,
        top_k=top_k or default_top_k,
        prompt=prompt,
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


def job_config(job: EvalJob, default_top_k: int) -> EvalConfig:
    """The run configuration of a scheduled job."""
    prompt: str | int = int(job.prompt) if job.prompt.isdigit() else job.prompt
    return EvalConfig(
        collection=job.collection,
        tenant=job.tenant,
        top_k=job.top_k or default_top_k,
        prompt=prompt,
        route=job.route,
        generate=job.generate,
        judge=job.judge,
        max_answer_tokens=job.max_answer_tokens,
        judge_options=JudgeOptions(),
    )


def job_executor(platform: Platform) -> JobExecutor:
    """Runs scheduled jobs on ``platform`` (for ``evals.schedule.EvalScheduler`` in ``opsloop serve``).

    With a ``baseline``, the job's run is compared with the newest finished run of the baseline
    prompt (evaluated first when there is none) and the verdict is part of the result.
    """
    wiring = EvalWiring(platform)

    async def execute(job: EvalJob) -> JobResult:
        dataset = load_dataset(job.dataset)
        if job.limit is not None:
            dataset = dataset.subset(limit=job.limit)
        config = job_config(job, platform.settings.rag_top_k)
        result = await run_eval(
            wiring,
            dataset,
            config,
            baseline=job.baseline,
            rules=job.gate_rules() or DEFAULT_GATE,
            tags={"opsloop.eval.job": job.name},
        )
        return JobResult(result.run.run_id, result.run.outcome.summaries, result.gate)

    return execute
