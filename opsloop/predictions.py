"""The prediction log: every /predict request, recorded off the request path.

Requests hand a record to :class:`opsloop.batch_writer.BatchWriter` and return; its thread
inserts the queue in batches. A crash loses at most what was queued and not yet written;
what cannot be queued or written is counted through ``on_dropped``. Ground-truth
labels arrive later through :meth:`PredictionLog.feedback`, by request id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from opsloop.batch_writer import BatchedLog, BatchWriter
from opsloop.db import Database
from opsloop.tables import Prediction, utcnow

__all__ = ["FeedbackResult", "PredictionLog", "PredictionRecord"]


@dataclass(frozen=True)
class PredictionRecord:
    """What one /predict request did."""

    request_id: str
    tenant: str
    model: str
    version: int
    variant: str
    inputs: list[dict[str, Any]]
    outputs: list[Any]
    latency_ms: float
    at: datetime = field(default_factory=utcnow)
    labels: list[Any] | None = None
    experiment: str | None = None
    """The experiment that routed the request, if one did."""
    id: int | None = None
    """The row's id, once written (what a retraining data set's manifest lists)."""


@dataclass(frozen=True)
class FeedbackResult:
    """Which request ids got their labels, and which could not take them."""

    attached: list[str]
    unknown: list[str]
    rejected: dict[str, str]


class PredictionLog(BatchedLog[PredictionRecord]):
    """Batched, asynchronous writes of predictions; feedback by request id."""

    def __init__(
        self,
        db: Database,
        *,
        batch_size: int = 500,
        flush_seconds: float = 0.25,
        max_pending: int = 100_000,
        on_dropped: Callable[[int], None] = lambda count: None,
        on_written: Callable[[int], None] = lambda count: None,
    ) -> None:
        self._db = db
        self._writer = BatchWriter[PredictionRecord](
            db,
            Prediction,
            _row,
            name="prediction-log",
            batch_size=batch_size,
            flush_seconds=flush_seconds,
            max_pending=max_pending,
            on_dropped=on_dropped,
            on_written=on_written,
        )

    def feedback(self, tenant: str, model: str, labels: dict[str, list[Any]]) -> FeedbackResult:
        """Attach true labels (one per instance) to earlier predictions of ``model``."""
        self.flush()  # a request answered a moment ago may still be queued

        def attach(session: Session) -> FeedbackResult:
            found = session.execute(
                select(Prediction.request_id, Prediction.inputs).where(
                    Prediction.tenant == tenant,
                    Prediction.model == model,
                    Prediction.request_id.in_(list(labels)),
                )
            ).all()
            sizes = {request_id: len(inputs) for request_id, inputs in found}
            attached, rejected = [], {}
            now = utcnow()
            for request_id, values in labels.items():
                size = sizes.get(request_id)
                if size is None:
                    continue
                if len(values) != size:
                    rejected[request_id] = f"expected {size} labels (one per instance), got {len(values)}"
                    continue
                session.execute(
                    update(Prediction)
                    .where(
                        Prediction.tenant == tenant,
                        Prediction.model == model,
                        Prediction.request_id == request_id,
                    )
                    .values(labels=values, feedback_at=now)
                )
                attached.append(request_id)
            unknown = [request_id for request_id in labels if request_id not in sizes]
            return FeedbackResult(attached, unknown, rejected)

        return self._db.write(attach)

    def labelled(
        self,
        model: str,
        version: int | None,
        *,
        tenant: str | None = None,
        since: datetime | None = None,
        limit: int = 100_000,
    ) -> list[PredictionRecord]:
        """The newest ``limit`` labelled predictions of a version (None: of every version), oldest first.

        Only ``tenant``'s when given; None: every tenant's.
        """
        self.flush()
        query = select(Prediction).where(Prediction.model == model, Prediction.feedback_at.is_not(None))
        if version is not None:
            query = query.where(Prediction.version == version)
        if tenant is not None:
            query = query.where(Prediction.tenant == tenant)
        if since is not None:
            query = query.where(Prediction.at >= since)
        with self._db.read() as session:
            rows = session.scalars(query.order_by(Prediction.id.desc()).limit(limit)).all()
        return [_record(r) for r in reversed(rows)]

    def count_labelled(self, model: str, *, since: datetime | None = None) -> int:
        """Labelled predictions of ``model`` (every version and tenant) made since ``since``."""
        self.flush()
        query = select(func.count()).where(Prediction.model == model, Prediction.feedback_at.is_not(None))
        if since is not None:
            query = query.where(Prediction.at >= since)
        with self._db.read() as session:
            return int(session.scalar(query) or 0)

    def by_ids(self, ids: list[int]) -> list[PredictionRecord]:
        """The predictions with these row ids, in the order given (unknown ids left out)."""
        self.flush()
        found: dict[int, PredictionRecord] = {}
        with self._db.read() as session:
            for start in range(0, len(ids), 1000):  # bounded IN lists
                chunk = ids[start : start + 1000]
                for row in session.scalars(select(Prediction).where(Prediction.id.in_(chunk))).all():
                    found[row.id] = _record(row)
        return [found[i] for i in ids if i in found]

    def latencies(self, model: str, *, since: datetime, tenant: str | None = None) -> list[float]:
        """The latency in ms of each logged request of ``model`` since ``since`` (of ``tenant``; None: all).

        Only the one column: a request rate over the last minutes of a busy model reads no inputs.
        """
        self.flush()
        query = select(Prediction.latency_ms).where(Prediction.model == model, Prediction.at >= since)
        if tenant is not None:
            query = query.where(Prediction.tenant == tenant)
        with self._db.read() as session:
            return list(session.scalars(query))

    def recent(
        self,
        model: str,
        *,
        tenant: str | None = None,
        since: datetime | None = None,
        limit: int = 1000,
    ) -> list[PredictionRecord]:
        """The newest logged predictions of ``model`` (of ``tenant``; None: every tenant's), newest first."""
        self.flush()
        query = select(Prediction).where(Prediction.model == model)
        if tenant is not None:
            query = query.where(Prediction.tenant == tenant)
        if since is not None:
            query = query.where(Prediction.at >= since)
        with self._db.read() as session:
            rows = session.scalars(query.order_by(Prediction.id.desc()).limit(limit)).all()
        return [_record(r) for r in rows]


def _row(record: PredictionRecord) -> dict[str, Any]:
    row = dict(vars(record))  # not asdict(): it deep-copies every input
    del row["id"]  # the database numbers rows (PostgreSQL refuses an explicit NULL id)
    return row


def _record(row: Prediction) -> PredictionRecord:
    return PredictionRecord(
        row.request_id, row.tenant, row.model, row.version, row.variant, row.inputs, row.outputs,
        row.latency_ms, row.at, row.labels, row.experiment, row.id,
    )  # fmt: skip
