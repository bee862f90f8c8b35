"""Routing requests of running experiments: the :class:`opsloop.traffic.TrafficSplit` that serving uses.

Each process keeps the running experiments in a dictionary, re-read from the store every
``poll_seconds`` by one thread, so a request costs a lookup and a hash, never a query. A
rollback the decider writes reaches every process within one poll. Outcomes are queued
for the batched :class:`~workflows.experiments.store.OutcomeLog`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from opsloop.telemetry import ExperimentMetrics
from opsloop.traffic import CHALLENGER, CHAMPION, Assignment, Outcome, TargetKind
from workflows.experiments.assignment import assign
from workflows.experiments.store import Experiment, ExperimentStore, OutcomeLog

__all__ = ["TrafficRouter"]

log = logging.getLogger(__name__)


class TrafficRouter:
    """Sticky variants for the running experiments, and their outcomes.

    Args:
        store: Where the experiments are.
        outcomes: A started outcome log.
        metrics: Requests, errors and latency per variant, and the challenger's weight.
        poll_seconds: How often the running experiments are re-read.
        on_change: Called (in the watcher thread) with the running experiments whenever they
            change, before requests are routed by them: serving loads challenger versions there.
        on_poll: Called (in the watcher thread) after every re-read: the gateway re-reads the
            route aliases a promotion moves there, so a process that never saw the experiment
            running still follows it.
    """

    def __init__(
        self,
        store: ExperimentStore,
        outcomes: OutcomeLog,
        metrics: ExperimentMetrics,
        *,
        poll_seconds: float = 0.5,
        on_change: Callable[[list[Experiment]], None] = lambda running: None,
        on_poll: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._outcomes = outcomes
        self._metrics = metrics
        self._poll_seconds = poll_seconds
        self._on_change = on_change
        self._on_poll = on_poll
        self._running: dict[tuple[TargetKind, str], Experiment] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def assign(self, kind: TargetKind, target: str, unit: str) -> Assignment | None:
        """The variant of the experiment running on ``target`` that answers ``unit``, if one runs."""
        experiment = self._running.get((kind, target))
        if experiment is None:
            return None
        if experiment.kind == "shadow":
            return Assignment(
                experiment.name,
                CHAMPION,
                experiment.champion,
                shadow_target=experiment.challenger,
                tenant=experiment.tenant,
            )
        weights = {CHAMPION: 100.0 - experiment.weight, CHALLENGER: experiment.weight}
        variant = assign(experiment.salt, unit, weights)
        target_of = experiment.challenger if variant == CHALLENGER else experiment.champion
        return Assignment(experiment.name, variant, target_of, tenant=experiment.tenant)

    def record(self, outcome: Outcome) -> None:
        """Count an outcome and queue it for the store; never blocks."""
        labels = (outcome.experiment, outcome.variant)
        self._metrics.requests.labels(*labels).inc()
        if not outcome.ok:
            self._metrics.errors.labels(*labels).inc()
        self._metrics.latency.labels(*labels).observe(outcome.latency_ms / 1000)
        self._outcomes.record(outcome)

    def refresh(self) -> None:
        """Re-read the running experiments; a changed set goes through ``on_change`` first."""
        running = {(e.target_kind, e.target): e for e in self._store.list(running=True)}
        if running != self._running:
            self._on_change(list(running.values()))
            for key in self._running.keys() - running.keys():
                self._metrics.weight.labels(self._running[key].name).set(0)
            for experiment in running.values():
                self._metrics.weight.labels(experiment.name).set(experiment.weight)
            self._running = running

    def start(self) -> TrafficRouter:
        """Read the running experiments now and keep re-reading them."""
        self.refresh()
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._watch, name="experiment-watcher", daemon=True)
            self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            try:
                self.refresh()
                self._on_poll()
            except Exception:  # keep watching: a missed poll only delays a change by one interval
                log.exception("could not read the running experiments")

    def close(self) -> None:
        """Stop watching (the outcome log is closed by its owner)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
