"""The decider: every few seconds, judge each running experiment and act on the verdict.

It runs inside ``opsloop serve`` on the one scheduler. With several processes on one
database only the holder of the store's lease acts (the lease outlives a tick by a few
seconds, so a dead holder is replaced quickly). A verdict comes from
:func:`workflows.experiments.policy.judge`, a pure function of the variants' samples and the
experiment's plan; acting on it goes through :class:`ExperimentService` as the system caller,
so every move is audited the same way an operator's is.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from datetime import datetime

from opsloop.auth import system_principal
from opsloop.tables import utcnow
from opsloop.traffic import CHALLENGER, CHAMPION
from workflows.experiments.evaluation import Evaluator, eval_metric
from workflows.experiments.metrics import summary
from workflows.experiments.policy import (
    CanaryState,
    Decision,
    Policy,
    decide_ab,
    decide_canary,
    decide_eval,
)
from workflows.experiments.service import ExperimentService
from workflows.experiments.store import Experiment, VariantSamples

__all__ = ["Decider"]

log = logging.getLogger(__name__)


class Decider:
    """Judges running experiments and promotes, advances or rolls them back.

    Args:
        service: The experiment service it acts through.
        lease_seconds: How long one tick's lease lasts; another process takes over after that.
        on_decision: Called with each experiment and the action taken (metrics).
        evaluator: Runs the eval-decided experiments' evals; attached by the server that runs
            them (until then such an experiment waits).
    """

    def __init__(
        self,
        service: ExperimentService,
        *,
        lease_seconds: float = 10.0,
        on_decision: Callable[[Experiment, str], None] = lambda experiment, action: None,
        evaluator: Evaluator | None = None,
    ) -> None:
        self.service = service
        self.evaluator = evaluator
        self.lease_seconds = lease_seconds
        self.on_decision = on_decision
        self.holder = f"{socket.gethostname()}:{os.getpid()}"

    def tick(self) -> list[tuple[str, Decision]]:
        """Judge every running experiment once, if this process holds the lease; returns what it decided."""
        store = self.service.store
        if not store.take_lease(self.holder, self.lease_seconds):
            return []
        done = []
        running = store.list(running=True)
        if self.evaluator is not None:  # runs of experiments that have ended since are cancelled
            self.evaluator.keep_only({e.name for e in running if eval_metric(e.config["primary"])})
        for experiment in running:
            if experiment.status != "running" or experiment.kind == "shadow":
                continue  # a pending approval waits for an operator; a shadow is only compared
            try:
                checked_at = utcnow()
                samples = store.samples(experiment.name)
                decision = self.judge(experiment, samples)
                seen = max((int(s.ids.max()) for s in samples.values() if s.ids.size), default=0)
                if decision.judge is not None and decision.judge.verdict == "nodata":
                    # Too few latencies for a verdict: keep them for the next check rather than
                    # drop them, or a canary on light traffic (a few requests a tick) never advances.
                    seen = int(experiment.checks.get("seen", 0))
                self.act(experiment, decision, checked_at, seen=seen)
            except Exception:  # one broken experiment must not stop the others' decisions
                log.exception("could not decide experiment %s", experiment.name)
                continue
            done.append((experiment.name, decision))
        return done

    def judge(self, experiment: Experiment, samples: dict[str, VariantSamples] | None = None) -> Decision:
        """The decision on an experiment's outcomes so far (read from the store unless given)."""
        policy = Policy.from_config(experiment.config)
        if samples is None:
            samples = self.service.store.samples(experiment.name)
        feedback = self.service.labels.values(experiment.target_kind, experiment.name)
        champion, challenger = (
            summary(policy.primary, samples.get(v, VariantSamples()), feedback.get(v))
            for v in (CHAMPION, CHALLENGER)
        )
        if eval_metric(policy.primary) is not None:
            if self.evaluator is None:
                why = "waiting for a server that runs eval runs to hold the decider's lease"
                return Decision("continue", why, policy.weight)
            return decide_eval(policy, champion, challenger, self.evaluator.evaluate(experiment))
        if experiment.kind == "ab":
            return decide_ab(policy, champion, challenger)
        from workflows.experiments.canary import judge_latency  # scipy, only for canaries

        # The latency judge sees only the outcomes stored since the last check: fresh data each
        # check. Row ids, not times, draw the line: the servers that write outcomes and the one
        # deciding need not agree on the clock, and no row is judged in two checks.
        recent = {v: s.after(int(experiment.checks.get("seen", 0))) for v, s in samples.items()}
        judge = judge_latency(
            recent.get(CHAMPION, VariantSamples()).latency_ms,
            recent.get(CHALLENGER, VariantSamples()).latency_ms,
            alpha=policy.alpha,
        )
        step_samples = samples.get(CHALLENGER, VariantSamples()).since(experiment.step_started_at)
        return decide_canary(
            policy,
            CanaryState(experiment.step, int(experiment.checks.get("failed", 0))),
            champion,
            challenger,
            step_samples=step_samples.requests,
            judge=judge,
        )

    def act(self, experiment: Experiment, decision: Decision, checked_at: datetime, *, seen: int) -> None:
        """Carry out a decision through the service, as the system caller of the experiment's tenant.

        ``seen`` is the last outcome row this check judged; the next check's latencies start after it.
        """
        caller = system_principal(experiment.tenant, "decider")
        service = self.service
        checks = {
            "failed": decision.failed_checks,
            "at": checked_at.isoformat(),
            "seen": seen,
            "last": decision.to_dict(),
        }
        service.store.update(experiment.name, expect="running", checks=checks)
        action: str = decision.action
        if action == "continue":
            return
        if action == "rollback":  # status and weight 0 in one write: each server's next poll stops routing
            service.rollback(caller, experiment.name, decision.reason)
        elif action == "advance":
            service.advance(caller, experiment, decision.reason)
        elif experiment.config.get("require_approval"):
            action = "pending_approval"
            service.hold_for_approval(caller, experiment, decision.reason)
        else:
            service.promote(caller, experiment.name, decision.reason)
        log.warning("experiment %s: %s (%s)", experiment.name, action, decision.reason)
        self.on_decision(experiment, action)
