"""Wires eval runs (``evals.runs.EvalRuns``) to this process's RAG service, gateway and MLflow store.

* the pipeline is the process's ``RagService``, opened when a run starts;
* answers (``--route``, default ``rag_llm_route``) and the judge (``--judge``) are gateway
  routes, called through :class:`GatewayClient`, so every call is routed like a client's and
  lands in the cost ledger: tenant = the caller's, key ``eval``, request id ``eval-<hex>``;
* costs per sample come from the serving backend's prices (``opsloop.llm.ledger.cost_usd``), the
  same numbers the ledger records.

The CLI, the server's routes and its scheduled jobs each take their runs from :func:`eval_runs`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from evals.runs import EvalRag, EvalRuns
from evals.schedule import EvalJob, JobExecutor, JobResult
from evals.service import EvalService
from evals.tracking import EvalTracker
from opsloop.audit import AuditLog
from opsloop.llm.gateway import Gateway, GatewayClient
from opsloop.llm.ledger import cost_usd
from opsloop.llm.protocol import LLMClient, Usage
from opsloop.registry import Registry
from opsloop.settings import Settings
from opsloop.tracing import Tracer

__all__ = ["EVAL_KEY_ID", "EvalHost", "GatewayLLMs", "eval_runs", "job_executor"]

EVAL_KEY_ID = "eval"
"""The ledger's key id of eval calls (answers on a route, judge calls)."""


class EvalHost(Protocol):
    """What eval runs take from the process: ``serving.platform.Platform`` is one.

    A Protocol rather than the Platform itself, so that this module, which the Platform
    imports, does not import it back.
    """

    @property
    def settings(self) -> Settings:
        """``home``, ``tracking_uri``, ``artifact_root``, ``rag_top_k`` and ``rag_route``."""
        ...

    @property
    def audit(self) -> AuditLog:
        """Where runs are recorded."""
        ...

    @property
    def tracer(self) -> Tracer:
        """Records a trace of each eval sample."""
        ...

    @property
    def rag(self) -> EvalRag:
        """The RAG service, built on first use (it takes the embedded store's lock)."""
        ...

    @property
    def gateway(self) -> Gateway:
        """The LLM gateway, built on first use."""
        ...

    def start_registry(self) -> Registry:
        """The started registry (the Platform serialises its start with its own)."""
        ...


@dataclass(frozen=True)
class GatewayLLMs:
    """Gateway routes as the LLMs of eval runs (an ``evals.runs.EvalLLMs``): budgeted and in the ledger."""

    gateway: Callable[[], Gateway]
    """The gateway; called on first use, since building it imports the backends' SDKs."""

    def client(self, route: str, tenant: str) -> LLMClient:
        """Route ``route`` for ``tenant``, in the ledger under key ``eval``.

        Raises:
            NotFoundError: ``route`` is no gateway route.
        """
        return GatewayClient(self.gateway(), route, tenant, key_id=EVAL_KEY_ID)

    def cost(self, backend: str, usage: Usage, latency_ms: float) -> float:
        """Prices a call as the ledger does, from the spec of the backend that served it."""
        spec = self.gateway().spec(backend)
        return cost_usd(spec, usage, latency_ms) if spec is not None else 0.0


def eval_runs(host: EvalHost) -> EvalRuns:
    """Eval runs on ``host``'s home, MLflow store, RAG service and gateway.

    Starts the registry (prompt aliases resolve there); the RAG service and the gateway are
    built only when a run starts.
    """
    settings = host.settings
    tracker = EvalTracker(settings.tracking_uri, settings.artifact_root)
    return EvalRuns(
        EvalService(settings.home, tracker, host.start_registry()),
        lambda: host.rag,
        GatewayLLMs(lambda: host.gateway),
        host.audit,
        default_top_k=settings.rag_top_k,
        default_route=settings.rag_route,
        tracer=host.tracer,
    )


def job_executor(host: EvalHost) -> JobExecutor:
    """Runs scheduled jobs on ``host`` (for ``evals.schedule.EvalScheduler`` in ``opsloop serve``)."""

    async def execute(job: EvalJob) -> JobResult:
        # Wired per run, as a CLI run is: the registry starts when a job first fires, not
        # while the server starts its schedules.
        return await eval_runs(host).run_job(job)

    return execute
