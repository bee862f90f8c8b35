"""Drift of a served model's live inputs against the reference of the version that serves.

:class:`DriftMonitor` runs such checks on a schedule inside ``opsloop serve``, keeps each
result, exports it to Prometheus and hands drifted checks to subscribers (retraining).

Each check also runs ADWIN (:mod:`workflows.concept_drift`) over the champion's labelled
feedback, when there is some, exports its error rate and hands the report to concept
subscribers (retraining's concept-drift and accuracy triggers).

The reference is the sample kept in the version's reference profile (:mod:`workflows.reference`),
which the registry stores with the version at training or registration time
(``Registry.reference``), so a check never reads the training set; the current data are
the newest instances in the prediction log. A version registered without a reference has
nothing to compare with: its checks are counted as skipped.

A check with fewer than ``min_rows`` rows (or, for a feature, non-missing values) on either
side gives no verdict: it is kept and counted as ``insufficient_data``, is not audited, does
not call subscribers, and leaves ``opsloop_drift_dataset`` at 0, so the shipped alert rules
stay quiet on a new install's first few requests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from opsloop.durations import parse_duration
from opsloop.errors import InvalidInputError, NotFoundError, OpsloopError
from opsloop.tables import DriftCheck, utcnow

if TYPE_CHECKING:  # the statistics pull in pandas, SciPy and MLflow; `opsloop --help` should not
    from sqlalchemy.orm import Session

    from opsloop.audit import AuditLog
    from opsloop.db import Database
    from opsloop.predictions import PredictionLog
    from opsloop.registry import Registry
    from opsloop.telemetry import DriftMetrics
    from workflows.concept_drift import ConceptDriftReport
    from workflows.drift_report import DriftReport, DriftThresholds

__all__ = ["DriftCheckResult", "DriftMonitor", "live_report", "parse_window", "window_start"]

log = logging.getLogger(__name__)


def _call(hook: Callable[[Any], None], value: Any) -> None:
    """A subscriber's failure is logged: it must not fail the check, nor keep other subscribers waiting."""
    try:
        hook(value)
    except Exception:
        log.exception("a drift subscriber (%s) failed", getattr(hook, "__qualname__", hook))


def parse_window(window: str) -> timedelta:
    """``30m``, ``1h``, ``7d`` and the like as a timedelta."""
    return parse_duration(window, field="window")


def live_report(
    registry: Registry,
    predictions: PredictionLog,
    model: str,
    *,
    version: int | None = None,
    tenant: str | None = None,
    last: int = 1000,
    since: datetime | None = None,
    thresholds: DriftThresholds | None = None,
    min_rows: int | None = None,
) -> DriftReport:
    """Compare the newest ``last`` logged instances (since ``since``) with the reference.

    Args:
        registry: A started registry.
        predictions: The prediction log.
        model: Registered model name.
        version: Whose reference to use; default the current champion.
        tenant: Only this tenant's logged instances; None: every tenant's (a model is shared
            by tenants, their traffic is not: a non-admin's report must pass its own).
        last: At most this many of the newest instances.
        since: Only instances logged after this time.
        thresholds: Drift thresholds; defaults when None.
        min_rows: Overrides ``thresholds.min_rows`` (the ``drift_min_rows`` setting) when given.

    Returns:
        The report; ``insufficient_data`` (no verdict) below ``min_rows`` rows.

    Raises:
        NotFoundError: No such model or version, or no reference profile.
        InvalidInputError: No logged instances in the window, or a profile without a sample.
    """
    import pandas as pd

    from workflows.drift import compare_frames
    from workflows.drift_report import DriftThresholds

    if min_rows is not None:
        thresholds = replace(thresholds or DriftThresholds(), min_rows=min_rows)
    if last < 1:
        raise InvalidInputError("last must be at least 1", field="last", value=last)
    info = registry.get_alias(model, "champion") if version is None else registry.get_version(model, version)
    profile = registry.reference(model, info.version)
    if not profile.get("sample"):
        raise InvalidInputError(
            f"the reference profile of {model!r} version {info.version} has no sample; retrain it",
            model=model,
            version=info.version,
        )
    reference = pd.DataFrame(profile["sample"])
    rows = [
        instance
        for record in predictions.recent(model, tenant=tenant, limit=last, since=since)
        for instance in record.inputs
    ][:last]
    if not rows:
        window = f" since {since.isoformat()}" if since else ""
        whose = f" of tenant {tenant!r}" if tenant is not None else ""
        raise NotFoundError(
            f"no logged predictions{whose} of {model!r}{window} to compare", model=model, tenant=tenant
        )
    categorical = [name for name, f in profile["features"].items() if f.get("kind") == "categorical"]
    columns = list(reference.columns)
    return compare_frames(
        reference, pd.DataFrame(rows, columns=columns), categorical, thresholds, columns=columns
    )


def window_start(window: str | None) -> datetime | None:
    """The start of a ``window`` ending now, or None for no window."""
    return None if window is None else utcnow() - parse_window(window)


@dataclass(frozen=True)
class DriftCheckResult:
    """One stored drift check."""

    model: str
    version: int
    at: datetime
    dataset_drift: bool
    share_drifted: float
    report: dict[str, Any]


class DriftMonitor:
    """Checks served models for drift, keeps every result, and tells subscribers.

    A retraining workflow subscribes with :meth:`subscribe`; it is called on every check
    that finds dataset drift. The first drifted check after a calm one is audited. Checks with
    fewer than ``min_rows`` rows (the ``drift_min_rows`` setting) are kept as
    ``insufficient_data``: no verdict, no audit, no subscriber call.
    """

    def __init__(
        self,
        db: Database,
        registry: Registry,
        predictions: PredictionLog,
        audit: AuditLog,
        metrics: DriftMetrics,
        *,
        last: int = 1000,
        thresholds: DriftThresholds | None = None,
        min_rows: int | None = None,
    ) -> None:
        self._db = db
        self._registry = registry
        self._predictions = predictions
        self._audit = audit
        self._metrics = metrics
        self._last = last
        self._thresholds = thresholds
        self._min_rows = min_rows
        self._hooks: list[Callable[[DriftCheckResult], None]] = []
        self._concept_hooks: list[Callable[[ConceptDriftReport], None]] = []

    def subscribe(self, hook: Callable[[DriftCheckResult], None]) -> None:
        """Call ``hook`` with every check that finds dataset drift."""
        self._hooks.append(hook)

    def subscribe_concept(self, hook: Callable[[ConceptDriftReport], None]) -> None:
        """Call ``hook`` with each check's concept-drift report of the champion (once it has labels)."""
        self._concept_hooks.append(hook)

    def check(self, model: str) -> DriftCheckResult | None:
        """Check ``model``'s champion now; None when there is no traffic to compare yet."""
        version = self._registry.get_alias(model, "champion").version
        try:
            report = live_report(
                self._registry,
                self._predictions,
                model,
                version=version,
                last=self._last,
                thresholds=self._thresholds,
                min_rows=self._min_rows,
            )
        except NotFoundError:
            self._metrics.checks.labels(model, "skipped").inc()
            return None
        previous = self.history(model, limit=1)
        result = DriftCheckResult(
            model, version, utcnow(), report.dataset_drift, report.share_drifted, report.to_dict()
        )

        def store(session: Session) -> None:
            session.add(
                DriftCheck(
                    at=result.at,
                    model=model,
                    version=version,
                    dataset_drift=result.dataset_drift,
                    share_drifted=result.share_drifted,
                    report=result.report,
                )
            )
            if result.dataset_drift and not (previous and previous[0].dataset_drift):
                self._audit.record(
                    session,
                    actor="system",
                    tenant="default",
                    action="drift.detected",
                    target=f"model:{model}",
                    after={
                        "version": version,
                        "drifted": report.drifted_features,
                        "share": result.share_drifted,
                    },
                )

        self._db.write(store)
        self._export(result, report)
        self._check_concept(model, version)
        if result.dataset_drift:
            for hook in self._hooks:
                _call(hook, result)
        return result

    def _check_concept(self, model: str, version: int) -> None:
        """Export the champion's error rate and ADWIN's verdict, once feedback has labels."""
        from workflows.concept_drift import concept_report

        try:
            concept = concept_report(self._predictions, model, version, since=None)
        except NotFoundError:
            return  # no labels yet
        self._metrics.concept.labels(model, str(version)).set(1.0 if concept.drifted else 0.0)
        self._metrics.error_rate.labels(model, str(version)).set(concept.current_error_rate)
        for hook in self._concept_hooks:
            _call(hook, concept)

    def check_all(self, models: Iterable[str]) -> None:
        """Check each model; one failure is logged and does not stop the others."""
        for model in models:
            try:
                self.check(model)
            except OpsloopError:
                self._metrics.checks.labels(model, "failed").inc()
                log.exception("drift check of %s failed", model)

    def history(self, model: str, *, limit: int = 100) -> list[DriftCheckResult]:
        """Stored checks of ``model``, newest first.

        A scheduled check compares every tenant's traffic of the model, so its results are
        platform-wide: only admins may read them (``GET /admin/drift/{model}/history``).
        """
        query = (
            select(DriftCheck).where(DriftCheck.model == model).order_by(DriftCheck.id.desc()).limit(limit)
        )
        with self._db.read() as session:
            rows = session.scalars(query).all()
        return [
            DriftCheckResult(r.model, r.version, r.at, r.dataset_drift, r.share_drifted, r.report)
            for r in rows
        ]

    def _export(self, result: DriftCheckResult, report: DriftReport) -> None:
        model = result.model
        self._metrics.checks.labels(model, report.status).inc()
        # 0, not a removed series, for insufficient data: in multiprocess mode a removed series
        # would keep its last value in the other workers' files, and a stale 1 would keep alerting.
        self._metrics.dataset.labels(model).set(1.0 if result.dataset_drift else 0.0)
        self._metrics.share.labels(model).set(result.share_drifted)
        for feature in report.features.values():
            if feature.insufficient_data:
                continue  # small-sample scores are noise; a dashboard should not plot them
            for method, value in feature.scores.items():
                self._metrics.score.labels(model, feature.name, method).set(value)
