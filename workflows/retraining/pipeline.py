"""One retraining, start to end: data, validation, search, comparison, card, registration, hand-off.

:meth:`Retrainer.retrain` is the one implementation behind ``opsloop retrain``,
``POST /admin/models/{model}/retrain`` and the automatic triggers. Its steps:

1. **lease**: one retraining per model (:mod:`workflows.retraining.store`); runs a dead process
   left behind are marked failed and their MLflow runs ``KILLED``;
2. **data**: :mod:`workflows.retraining.data`, logged into one MLflow run (the data set as an
   input with its hash, the Parquet, the manifest, the rows trained on);
3. **validate**: the new rows against the champion's signature and reference profile
   (:mod:`workflows.retraining.validation`); failing, the run ends ``refused`` with the report;
4. **train**: the model's declared trainer under a bounded optuna search
   (:mod:`workflows.retraining.training`);
5. **evaluate**: challenger and champion on the same holdout, a paired bootstrap CI and slices
   (:mod:`workflows.retraining.evaluation`); not better, the run ends ``not_better``;
6. **register**: the model, its reference profile and its card are logged into the run first,
   then one ``register_model`` call creates the version with every lineage tag, so a process
   killed at any point leaves either no version or a complete one, never a promoted one;
7. **hand-off**: by default a canary experiment (``handoff``, passed in by the composition
   root), or a direct promotion, or nothing.

Every step is audited (``retrain.*``) and recorded as the run's ``step``; a lost lease (the
holder stalled past its expiry and another process took over) stops the run before it registers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from opsloop.auth import Principal, Role
from opsloop.errors import InvalidInputError, OpsloopError
from opsloop.models.runtime import load_version
from workflows.retraining.data import read_user_data
from workflows.retraining.results import Ended, Handoff, HandoffMode, RetrainRequest, RetrainResult, Trigger
from workflows.retraining.steps import Heartbeat, RunSteps
from workflows.retraining.store import RetrainingRecord, RetrainingStore, new_holder
from workflows.retraining.training import LABEL_TAG, TRAINER_TAG, resolve_trainer

if TYPE_CHECKING:
    from opsloop.audit import AuditLog
    from opsloop.predictions import PredictionLog
    from opsloop.registry import Registry

__all__ = ["Handoff", "HandoffMode", "RetrainRequest", "RetrainResult", "Retrainer", "Trigger"]

log = logging.getLogger(__name__)


class Retrainer:
    """Runs retrainings for callers; see the module docs.

    Args:
        store: Runs and leases.
        registry: A started registry.
        predictions: The prediction log (labelled production rows).
        audit: Where each step is recorded.
        handoff: Hands a registered challenger to serving; None: nothing is handed off.
    """

    def __init__(
        self,
        store: RetrainingStore,
        registry: Registry,
        predictions: PredictionLog,
        audit: AuditLog,
        *,
        handoff: Handoff | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.predictions = predictions
        self.audit = audit
        self.handoff = handoff

    def retrain(
        self,
        caller: Principal,
        request: RetrainRequest,
        *,
        progress: Callable[[str, str], None] | None = None,
        on_begin: Callable[[RetrainingRecord], None] | None = None,
    ) -> RetrainResult:
        """Run one retraining of ``request.model`` to its end.

        Args:
            caller: Who asks; needs the operator role.
            request: What to do.
            progress: Called with ``(step, message)`` as the run goes.
            on_begin: Called with the run once it holds the lease (an API answers then; the run
                goes on).

        Returns:
            The result; ``failed`` when a step broke (the reason says which and why).

        Raises:
            ForbiddenError: The caller is below operator.
            NotFoundError: No such model, no champion, or no data file.
            InvalidInputError: The model declares no trainer, or the data file is unusable.
            ConflictError: The model is being retrained.
        """
        caller.require(Role.OPERATOR, f"retraining model {request.model!r}")
        say = progress or (lambda step, message: None)
        champion = self.registry.get_alias(request.model, "champion")
        tags = self.registry.model_tags(request.model)
        trainer_name = tags.get(TRAINER_TAG)
        if not trainer_name:
            raise InvalidInputError(
                f"model {request.model!r} declares no trainer: register it with "
                "'opsloop models register ... --trainer module:function' (docs/retraining.md)",
                model=request.model,
            )
        trainer = resolve_trainer(trainer_name)
        served = load_version(self.registry, request.model, champion.version)
        if served.classes is None:
            raise InvalidInputError(
                f"model {request.model!r} is not a classifier (no predict_proba): retraining compares "
                "classifiers only",
                model=request.model,
            )
        label = tags.get(LABEL_TAG, "label")
        signature = self.registry.input_columns(request.model, champion.version)
        user = None
        if request.user_data is not None:
            user = read_user_data(request.user_data, [*(name for name, _ in signature), label])
        holder = new_holder()
        record, abandoned = self.store.begin(
            request.model,
            request.trigger,
            request.cause,
            tenant=caller.tenant,
            actor=caller.actor,
            holder=holder,
        )
        started = time.monotonic()
        lease = Heartbeat(self.store, request.model, holder)
        run = RunSteps(self, caller, request, record, champion, served, signature, label, lease, say)
        try:  # from here on the run ends recorded, whatever happens: the lease is given back
            for stale in abandoned:
                self._abandon(stale)
            self.log_action(
                caller, "retrain.start", record, {"trigger": request.trigger, "cause": request.cause}
            )
            if on_begin is not None:
                on_begin(record)
            say("lease", f"run {record.id}: retraining {request.model} (champion version {champion.version})")
            with lease:
                result = run.execute(trainer, trainer_name, user)
        except Ended as early:
            result = early.result
        except Exception as exc:  # a failed run is a result to report, not a crash of the caller
            reason = exc.message if isinstance(exc, OpsloopError) else f"{type(exc).__name__}: {exc}"
            log.exception("retraining run %s of %s failed at %s", record.id, request.model, run.step)
            result = run.result("failed", reason=f"{run.step}: {reason}")
        result = replace(result, seconds=time.monotonic() - started)
        self._close(caller, run, holder, result)
        say("done", f"{result.status}" + (f": {result.reason}" if result.reason else ""))
        return result

    def _close(self, caller: Principal, run: RunSteps, holder: str, result: RetrainResult) -> None:
        """End the MLflow run, record the result, give the lease back, audit the end."""
        if run.mlflow_run_id is not None:
            try:
                self.registry.log_run(run.mlflow_run_id, tags={"opsloop.retraining.status": result.status})
                self.registry.end_run(
                    run.mlflow_run_id, "FAILED" if result.status == "failed" else "FINISHED"
                )
            except OpsloopError:
                log.exception("closing MLflow run %s failed", run.mlflow_run_id)
        self.store.finish(
            run.record,
            holder,
            result.status,
            result.to_dict(),
            version=result.version,
            experiment=result.experiment,
        )
        self.log_action(caller, f"retrain.{result.status}", run.record, _audit_summary(result))

    def _abandon(self, stale: RetrainingRecord) -> None:
        if stale.mlflow_run_id is not None:
            try:
                self.registry.end_run(stale.mlflow_run_id, "KILLED")
            except OpsloopError:
                log.warning(
                    "could not close MLflow run %s of abandoned run %s", stale.mlflow_run_id, stale.id
                )
        self.audit.append(
            actor="system",
            tenant=stale.tenant,
            action="retrain.abandoned",
            target=f"model:{stale.model}",
            after={"run": stale.id, "step": stale.step, "mlflow_run_id": stale.mlflow_run_id},
        )

    def log_action(
        self, caller: Principal, action: str, record: RetrainingRecord, after: dict[str, Any]
    ) -> None:
        """Audit ``action`` on the run's model, with the run's number, as done by ``caller``."""
        self.audit.append(
            actor=caller.actor,
            tenant=caller.tenant,
            action=action,
            target=f"model:{record.model}",
            after={"run": record.id, **after},
        )


def _audit_summary(result: RetrainResult) -> dict[str, Any]:
    return {
        "status": result.status,
        "version": result.version,
        "reason": result.reason,
        "data_hash": result.data.get("hash"),
        "quality_score": result.data.get("quality_score"),
        "metrics": {k: result.metrics.get(k) for k in ("metric", "champion", "challenger", "delta", "ci")},
        "experiment": result.experiment,
        "mlflow_run_id": result.mlflow_run_id,
    }
