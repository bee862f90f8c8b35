"""Wiring experiments into the platform: the store, the traffic router, the service and the decider.

Built with the platform (the predict service takes the router at construction); started only
by ``serve``, where the router re-reads running experiments, challengers load beside their
champions, and the decider runs on the one scheduler, with the eval runs of eval-decided
prompt experiments (``serving.experiment_evals``). The CLI uses the service alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opsloop.audit import AuditLog
from opsloop.db import Database
from opsloop.llm.aliases import RouteAliases
from opsloop.llm.routes import RouteConfig
from opsloop.models.runtime import ModelRuntime, load_version
from opsloop.models.shadow import ShadowQueue
from opsloop.registry import Registry
from opsloop.telemetry import ExperimentMetrics
from rag.answer import ANSWER_PROMPT, check_answer_template
from workflows.experiments.decider import Decider
from workflows.experiments.labels import LabelSource
from workflows.experiments.service import ExperimentService
from workflows.experiments.store import Experiment, ExperimentStore, OutcomeLog
from workflows.experiments.traffic import TrafficRouter

if TYPE_CHECKING:
    from evals.tasks import EvalTasks
    from serving.eval_wiring import EvalHost

__all__ = ["Experiments"]


def _check_eval_plan(metric: str, plan: Mapping[str, Any]) -> dict[str, Any]:
    from serving.experiment_evals import check_eval_plan  # the evals package: only for such a plan

    return check_eval_plan(metric, plan)


@dataclass
class Experiments:
    """Every experiment component of one process."""

    service: ExperimentService
    router: TrafficRouter
    outcomes: OutcomeLog
    decider: Decider
    shadows: ShadowQueue
    pollers: list[Callable[[], None]] = field(default_factory=list)
    """Called after every re-read of the running experiments, in the watcher thread."""
    started: bool = False

    @classmethod
    def build(
        cls,
        db: Database,
        registry: Registry,
        audit: AuditLog,
        runtime: ModelRuntime,
        metrics: ExperimentMetrics,
        *,
        poll_seconds: float,
        max_instances: int,
        routes: Mapping[str, RouteConfig] | None = None,
    ) -> Experiments:
        """Construct the components; nothing runs until :meth:`start`."""
        store = ExperimentStore(db)
        outcomes = OutcomeLog(db)

        def load_challengers(running: list[Experiment]) -> None:
            runtime.load_challengers(
                {(e.target, int(e.challenger)) for e in running if e.target_kind == "model"}
            )

        pollers: list[Callable[[], None]] = []

        def poll() -> None:
            for poller in pollers:
                poller()

        router = TrafficRouter(
            store, outcomes, metrics, poll_seconds=poll_seconds, on_change=load_challengers, on_poll=poll
        )
        # The prompts opsloop serves, each with its answerer's check of a template.
        prompt_checks = {ANSWER_PROMPT: check_answer_template}
        service = ExperimentService(
            store,
            registry,
            audit,
            LabelSource(db),
            load_version,
            prompt_checks,
            _check_eval_plan,
            routes=RouteAliases(db),
            llm_routes=routes,
        )
        decider = Decider(
            service, on_decision=lambda e, action: metrics.decisions.labels(e.name, action).inc()
        )
        shadows = ShadowQueue(
            runtime,
            router.record,
            max_instances=max_instances,
            on_dropped=lambda experiment: metrics.shadow_dropped.labels(experiment).inc(),
        )
        return cls(service, router, outcomes, decider, shadows, pollers)

    def run_evals(self, host: EvalHost, tasks: EvalTasks, loop: asyncio.AbstractEventLoop) -> None:
        """Let the decider run eval-decided experiments' evals on ``host`` (the server, on its loop)."""
        from serving.experiment_evals import ExperimentEvals

        self.decider.evaluator = ExperimentEvals(host, tasks, loop)

    def start(self) -> None:
        """Route the running experiments' traffic and record its outcomes (the server only)."""
        self.outcomes.start()
        self.shadows.start()
        self.router.start()
        self.started = True

    def close(self) -> None:
        """Stop routing, write the queued outcomes, and give the decider's lease up."""
        if not self.started:
            return
        self.router.close()
        self.shadows.close()
        self.outcomes.close()
        self.service.store.release_lease(self.decider.holder)
        self.started = False
