"""Wiring retraining into the platform: the store, the pipeline, its hand-off, and the triggers.

Built with the platform; the drift monitor's hooks and the scheduler's cron job reach the
triggers, while ``opsloop retrain`` and ``POST /admin/models/{model}/retrain`` call the pipeline
directly with :meth:`Retraining.request`. The hand-off is where experiments meet retraining: a
registered challenger becomes a canary of the experiments service (or a direct promotion).
"""

from __future__ import annotations

import re
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsloop.auth import Principal, system_principal
from opsloop.durations import parse_duration
from workflows.retraining.data import DataSpec
from workflows.retraining.pipeline import HandoffMode, Retrainer, RetrainRequest, Trigger
from workflows.retraining.store import RetrainingRecord, RetrainingStore
from workflows.retraining.training import SearchSpec
from workflows.retraining.triggers import RetrainTriggers

if TYPE_CHECKING:
    from opsloop.audit import AuditLog
    from opsloop.db import Database
    from opsloop.predictions import PredictionLog
    from opsloop.registry import Registry
    from opsloop.settings import Settings
    from opsloop.telemetry import RetrainingMetrics
    from workflows.experiments.service import ExperimentService

__all__ = ["Retraining", "experiment_name", "retrain_request"]


def experiment_name(model: str, version: int) -> str:
    """The canary a retrained version goes to: ``retrain-<model>-v<version>``, as names allow."""
    slug = re.sub(r"[^a-z0-9_.-]+", "-", model.lower()).strip("-") or "model"
    suffix = f"-v{version}"
    return f"retrain-{slug}"[: 64 - len(suffix)] + suffix


@dataclass
class Retraining:
    """The retraining components of one process."""

    settings: Settings
    store: RetrainingStore
    retrainer: Retrainer
    triggers: RetrainTriggers

    @classmethod
    def build(
        cls,
        settings: Settings,
        db: Database,
        registry: Registry,
        predictions: PredictionLog,
        audit: AuditLog,
        experiments: ExperimentService,
        metrics: RetrainingMetrics,
    ) -> Retraining:
        """Construct everything; nothing opens until the database and registry do."""
        store = RetrainingStore(db)

        def handoff(caller: Principal, model: str, version: int, mode: HandoffMode) -> dict[str, Any]:
            if mode == "promote":
                if settings.retrain_require_approval:
                    audit.append(
                        actor=caller.actor,
                        tenant=caller.tenant,
                        action="retrain.awaiting_approval",
                        target=f"model:{model}",
                        after={"version": version},
                    )
                    return {
                        "mode": "approval",
                        "message": f"waits for a person: 'opsloop models promote {model} {version}'",
                    }
                from workflows.promotion import promote

                move = promote(caller, registry, audit, model, version)
                return {"mode": "promote", "before": move.before, "after": move.after}
            from workflows.experiments.service import ExperimentPlan

            plan = ExperimentPlan(
                name=experiment_name(model, version),
                kind="canary",
                target_kind="model",
                target=model,
                challenger=str(version),
                require_approval=settings.retrain_require_approval,
            )
            experiment = experiments.create(caller, plan)
            return {"mode": "canary", "experiment": experiment.name, "steps": experiment.config.get("steps")}

        retrainer = Retrainer(store, registry, predictions, audit, handoff=handoff)
        triggers = RetrainTriggers(
            retrainer,
            system_principal("default"),
            lambda model, trigger, cause, span: retrain_request(settings, model, trigger, cause, span=span),
            enabled=settings.retrain_triggers,
            cooldown=timedelta(seconds=settings.retrain_cooldown_seconds),
            accuracy_floor=settings.retrain_accuracy_floor,
            min_labels=settings.retrain_min_labels,
            labelled_since=lambda model, since: predictions.count_labelled(model, since=since),
            lookback=timedelta(seconds=settings.drift_check_seconds),
            in_experiment=lambda model: any(
                e.target_kind == "model" and e.target == model for e in experiments.store.list(running=True)
            ),
            on_outcome=lambda model, trigger, outcome: metrics.triggers.labels(model, trigger, outcome).inc(),
        )
        return cls(settings, store, retrainer, triggers)

    def request(self, model: str, trigger: Trigger = "manual", **options: Any) -> RetrainRequest:
        """:func:`retrain_request` with this process's settings."""
        return retrain_request(self.settings, model, trigger, **options)

    def start(self, caller: Principal, request: RetrainRequest) -> RetrainingRecord:
        """Run ``request`` on a thread of its own; its record once it has begun (blocks until then).

        Raises:
            OpsloopError: What refused it before it began (no champion, no trainer, busy).
        """
        begun: Future[RetrainingRecord] = Future()

        def run() -> None:
            try:
                self.retrainer.retrain(caller, request, on_begin=begun.set_result)
            except Exception as exc:  # refused before it began: the answer; after, the run's own record
                if not begun.done():
                    begun.set_exception(exc)
                else:
                    raise

        threading.Thread(target=run, name=f"retrain-{request.model}", daemon=True).start()
        return begun.result()


def retrain_request(
    settings: Settings,
    model: str,
    trigger: Trigger = "manual",
    cause: dict[str, Any] | None = None,
    *,
    window: str | None = None,
    span: timedelta | None = None,
    trials: int | None = None,
    time_budget: float | None = None,
    data: Path | None = None,
    handoff: HandoffMode | None = None,
) -> RetrainRequest:
    """A request for ``model`` from the ``retrain_*`` settings, with the caller's overrides.

    Raises:
        InvalidInputError: A bad window (``all`` means every labelled row), trial count or budget.
    """
    if span is None:  # a trigger's episode window wins over the text one
        window = window or settings.retrain_window
        span = None if window == "all" else parse_duration(window, field="window")
    search = SearchSpec(
        trials=trials if trials is not None else settings.retrain_trials,
        time_budget=time_budget if time_budget is not None else settings.retrain_time_budget_seconds,
        metric=settings.retrain_metric,
    )
    return RetrainRequest(
        model=model,
        trigger=trigger,
        cause=dict(cause or {}),
        data=DataSpec(
            window=span,
            reference_weight=settings.retrain_reference_weight,
            half_life=parse_duration(settings.retrain_half_life) if settings.retrain_half_life else None,
        ),
        search=search,
        quality_threshold=settings.retrain_quality_threshold,
        min_rows=settings.retrain_min_rows,
        user_data=data,
        handoff=handoff or settings.retrain_handoff,
    )
