"""What starts a retraining on its own: drift, a worse error rate, low accuracy, a schedule.

:class:`RetrainTriggers` subscribes to the drift monitor's hooks (dataset drift, and each
concept-drift report, which also carries the labelled error rate the accuracy floor reads) and
is called by the scheduler for a cron schedule. Each trigger passes through :meth:`fire`, which
starts :meth:`Retrainer.retrain <workflows.retraining.pipeline.Retrainer.retrain>` in a thread of
its own (a drift check must not wait minutes for a training) unless:

- the trigger is not enabled (``retrain_triggers``);
- the model's last retraining started less than ``cooldown`` ago (read from the store, so it
  holds across processes): one drift episode starts one retraining, not one per check;
- a retraining of the model runs (here, or elsewhere: the store's lease refuses it);
- an experiment runs on the model (``in_experiment``): its challenger, retrained or not, is being
  judged on the traffic a new one would learn from, and its hand-off would be refused anyway;
- the model declares no trainer (nothing could retrain it);
- fewer than ``min_labels`` labelled predictions arrived since the episode's first signal
  (drift shows in the inputs long before the labels that a challenger learns from and is
  compared on): the trigger waits for them, and fires on a later signal of the same episode.

A run a signal starts trains on the rows since its episode began (and ``lookback`` before), not
the whole ``retrain_window``: labelled rows of the world that ended would pull the challenger
back towards the champion (on the demo's drift, 500 such rows among 1,500 new ones left a
+0.014 log-loss gain that no interval could tell from zero).

Each outcome is counted (``on_outcome``); a started run is audited with its trigger and cause
by the pipeline itself.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from opsloop.errors import ConflictError, NotFoundError, OpsloopError
from opsloop.tables import utcnow
from workflows.retraining.training import TRAINER_TAG

if TYPE_CHECKING:
    from opsloop.auth import Principal
    from workflows.concept_drift import ConceptDriftReport
    from workflows.drift_monitor import DriftCheckResult
    from workflows.retraining.pipeline import Retrainer, RetrainRequest, Trigger

__all__ = ["Outcome", "RetrainTriggers"]

log = logging.getLogger(__name__)

_EPISODE_GAP = timedelta(hours=1)

Outcome = Literal[
    "started", "disabled", "cooldown", "busy", "in_experiment", "no_trainer", "waiting_for_labels"
]


class RetrainTriggers:
    """Turns monitoring signals into retrainings; see the module docs.

    Args:
        retrainer: Runs a retraining.
        caller: Who the automatic runs act as (the system principal).
        request: Builds the request for a model, trigger, cause and window (settings applied; a
            window of None means the settings' own).
        enabled: The automatic triggers that may fire (``schedule`` always may once scheduled).
        cooldown: Least time between the starts of two automatic retrainings of a model.
        accuracy_floor: Retrain when the champion's labelled accuracy falls below; None: never.
        min_labels: Labelled predictions a signal's episode needs before it retrains (and the
            accuracy floor before it may fire).
        labelled_since: Counts a model's labelled predictions since a time.
        lookback: How far before its first signal an episode's training window starts (a
            drift check's interval: the change came before the check that saw it).
        in_experiment: Whether an experiment runs on a model now.
        on_outcome: Called with ``(model, trigger, outcome)`` for every trigger.
    """

    def __init__(
        self,
        retrainer: Retrainer,
        caller: Principal,
        request: Callable[[str, Trigger, dict[str, Any], timedelta | None], RetrainRequest],
        *,
        enabled: Iterable[str],
        cooldown: timedelta,
        accuracy_floor: float | None = None,
        min_labels: int = 1000,
        labelled_since: Callable[[str, datetime], int] = lambda model, since: 0,
        lookback: timedelta = timedelta(0),
        in_experiment: Callable[[str], bool] = lambda model: False,
        on_outcome: Callable[[str, str, Outcome], None] = lambda model, trigger, outcome: None,
    ) -> None:
        self._retrainer = retrainer
        self._caller = caller
        self._request = request
        self._enabled = set(enabled) | {"schedule"}
        self._cooldown = cooldown
        self._accuracy_floor = accuracy_floor
        self._min_labels = min_labels
        self._labelled_since = labelled_since
        self._lookback = lookback
        self._in_experiment = in_experiment
        self._on_outcome = on_outcome
        self._lock = threading.Lock()
        self._running: dict[str, threading.Thread] = {}
        self._episodes: dict[str, tuple[datetime, datetime]] = {}
        """When each model's current episode of signals began and last signalled (reset when a
        retraining starts, or after an hour without a signal)."""

    def on_drift(self, result: DriftCheckResult) -> None:
        """A drift check found dataset drift."""
        drifted = [name for name, f in result.report.get("features", {}).items() if f.get("drifted")]
        self.fire(
            result.model,
            "drift",
            {"version": result.version, "share_drifted": result.share_drifted, "drifted": drifted},
        )

    def on_concept(self, report: ConceptDriftReport) -> None:
        """A concept-drift report of a champion: fires on a worse error rate, or accuracy below the floor."""
        cause = {
            "version": report.version,
            "labelled": report.instances,
            "error_rate": report.current_error_rate,
        }
        if report.drifted:
            worse = [p for p in report.change_points if p.worse][-1]
            self.fire(
                report.model,
                "concept_drift",
                {**cause, "error_before": worse.error_before, "error_after": worse.error_after},
            )
        elif (
            self._accuracy_floor is not None
            and report.instances >= self._min_labels
            and 1.0 - report.current_error_rate < self._accuracy_floor
        ):
            floor = {"accuracy": 1.0 - report.current_error_rate, "floor": self._accuracy_floor}
            self.fire(report.model, "accuracy", {**cause, **floor})

    def on_schedule(self, models: Iterable[str]) -> None:
        """The retraining schedule fired: every served model."""
        for model in models:
            self.fire(model, "schedule", {"at": utcnow().isoformat()})

    def fire(self, model: str, trigger: Trigger, cause: dict[str, Any]) -> Outcome:
        """Start a retraining of ``model`` in the background unless something stops it (module docs)."""
        outcome = self._start(model, trigger, cause)
        self._on_outcome(model, trigger, outcome)
        if outcome != "started":
            log.debug("retraining trigger %s of %s: %s", trigger, model, outcome)
        return outcome

    def _start(self, model: str, trigger: Trigger, cause: dict[str, Any]) -> Outcome:
        if trigger not in self._enabled:
            return "disabled"
        with self._lock:
            running = self._running.get(model)
            if running is not None and running.is_alive():
                return "busy"
            now = utcnow()
            last = self._retrainer.store.last_started(model)
            if last is not None and now - last < self._cooldown:
                return "cooldown"
            if self._in_experiment(model):
                return "in_experiment"
            try:
                if not self._retrainer.registry.model_tags(model).get(TRAINER_TAG):
                    return "no_trainer"
            except NotFoundError:
                return "no_trainer"
            began, latest = self._episodes.get(model, (now, now))
            if now - latest > _EPISODE_GAP:  # the signals had stopped: this is a new episode
                began = now
            self._episodes[model] = (began, now)
            window = None
            if trigger != "schedule":
                if self._labelled_since(model, began) < self._min_labels:
                    return "waiting_for_labels"
                # The episode's rows, and one check's worth before (detection lags the change):
                # rows of the world that ended would dilute what the challenger learns.
                window = timedelta(seconds=math.ceil((now - began + self._lookback).total_seconds()))
                cause = {**cause, "episode_began": began.isoformat()}
            del self._episodes[model]
            request = self._request(model, trigger, cause, window)
            thread = threading.Thread(target=self._run, args=(request,), name=f"retrain-{model}", daemon=True)
            self._running[model] = thread
            thread.start()
        log.info("retraining %s: triggered by %s (%s)", model, trigger, cause)
        return "started"

    def _run(self, request: RetrainRequest) -> None:
        try:
            result = self._retrainer.retrain(self._caller, request)
        except ConflictError as exc:  # another process took the model's lease first
            log.info("retraining %s not started: %s", request.model, exc.message)
            return
        except OpsloopError:
            log.exception("retraining %s could not start", request.model)
            return
        log.info(
            "retraining %s (%s) ended %s%s",
            request.model,
            request.trigger,
            result.status,
            f": {result.reason}" if result.reason else f", version {result.version}",
        )

    def join(self, timeout: float | None = None) -> None:
        """Wait for the retrainings this object started (tests, shutdown)."""
        with self._lock:
            threads = list(self._running.values())
        for thread in threads:
            thread.join(timeout)
