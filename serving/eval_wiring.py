"""Wires evals to this process's components: the RAG service, the gateway, MLflow.

``evals`` takes its pipeline and LLMs as injected objects; this is where the real ones are
built, for ``opsloop eval`` and for the scheduled jobs of ``opsloop serve``:

* the pipeline is ``Platform.rag`` (``RagService``), queried with ``log_query=False``;
* answers (``--route``, default ``rag_llm_route``) and the judge (``--judge``) are gateway
  routes, called through :class:`GatewayClient`, so every call is routed like a client's and
  lands in the cost ledger: tenant = the eval's tenant, key ``eval``, request id ``eval-<hex>``;
* costs per sample come from the serving backend's prices (``opsloop.ledger.cost_usd``), the
  same numbers the ledger records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from evals.dataset import load_dataset
from evals.gate import DEFAULT_GATE
from evals.runner import EvalConfig, EvalRunner, Progress
from evals.schedule import EvalJob, JobExecutor, JobResult
from evals.scoring import CostFn, JudgeOptions
from evals.service import EvalService
from evals.tracking import EvalTracker
from opsloop.ledger import cost_usd
from opsloop.llm.protocol import Usage
from serving.gateway_service import GatewayClient

if TYPE_CHECKING:
    from serving.gateway_service import Gateway
    from serving.platform import Platform

__all__ = ["EVAL_KEY_ID", "EvalWiring", "GatewayClient", "job_executor"]

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
        service = wiring.service()
        tags = {"opsloop.eval.job": job.name}
        run = await service.run(wiring.runner(config), dataset, config, tags=tags)
        gate = None
        if job.baseline is not None:
            base_config, found = service.find_baseline(dataset, run.config, job.baseline, exclude=run.run_id)
            if found is None:
                base_run = await service.run(wiring.runner(base_config), dataset, base_config, tags=tags)
                baseline_id = base_run.run_id
            else:
                baseline_id = found.run_id
            gate = service.compare(run.run_id, baseline_id, rules=job.gate_rules() or DEFAULT_GATE)
        return JobResult(run.run_id, run.outcome.summaries, gate)

    return execute
