"""Retraining runs and the per-model lease, in the relational store.

A run is a row of ``retraining_runs``: its trigger and cause, the step it is at, and how it
ended (``registered``, ``not_better``, ``refused``, ``failed``). One retraining per model at a
time is a row of ``retraining_leases`` that its holder renews while it works: taking it and
inserting the run happen in one transaction, so two processes never both start. A holder that
dies stops renewing; once the lease expires (at once, when the holder was a process on this
host that is gone) the next :meth:`RetrainingStore.begin` takes it and marks the dead holder's
run ``failed`` (abandoned), so a crash never blocks a model for good.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from opsloop.errors import ConflictError, NotFoundError
from opsloop.tables import RetrainingLease, RetrainingRun, utcnow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from opsloop.db import Database

__all__ = ["RetrainingRecord", "RetrainingStore", "Status", "new_holder"]

Status = Literal["running", "registered", "not_better", "refused", "failed"]
ABANDONED = "abandoned: the process running it stopped before it ended (its lease expired)"


@dataclass(frozen=True)
class RetrainingRecord:
    """One retraining run as stored."""

    id: int
    model: str
    status: str
    step: str
    trigger: str
    cause: dict[str, Any]
    tenant: str
    started_by: str
    started_at: datetime
    ended_at: datetime | None
    mlflow_run_id: str | None
    version: int | None
    experiment: str | None
    result: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, times in ISO 8601."""
        return {
            "id": self.id,
            "model": self.model,
            "status": self.status,
            "step": self.step,
            "trigger": self.trigger,
            "cause": self.cause,
            "started_by": self.started_by,
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "mlflow_run_id": self.mlflow_run_id,
            "version": self.version,
            "experiment": self.experiment,
            "result": self.result,
        }


class RetrainingStore:
    """Runs and leases; see the module docs.

    Args:
        db: A started database.
        lease_seconds: How long a lease lasts unless renewed; a dead holder's model is free
            again after this long.
    """

    def __init__(self, db: Database, *, lease_seconds: float = 60.0) -> None:
        self._db = db
        self.lease_seconds = lease_seconds

    def begin(
        self, model: str, trigger: str, cause: dict[str, Any], *, tenant: str, actor: str, holder: str
    ) -> tuple[RetrainingRecord, list[RetrainingRecord]]:
        """Take ``model``'s lease and record a new run, in one transaction.

        Returns:
            The new run, and the runs it found abandoned (now ``failed``), whose MLflow runs the
            caller may close.

        Raises:
            ConflictError: Another holder's lease on the model has not expired: a retraining runs.
        """
        now = utcnow()

        def start(session: Session) -> tuple[RetrainingRecord, list[RetrainingRecord]]:
            lease = session.get(RetrainingLease, model, with_for_update=True)
            if (
                lease is not None
                and lease.holder != holder
                and lease.expires_at > now
                and _alive(lease.holder)
            ):
                raise ConflictError(
                    f"model {model!r} is being retrained (run {lease.run_id}); one retraining per model "
                    f"at a time: wait for it, or see 'opsloop retrain {model} --history'",
                    model=model,
                    run=lease.run_id,
                )
            stale = session.scalars(
                select(RetrainingRun).where(RetrainingRun.model == model, RetrainingRun.status == "running")
            ).all()
            for row in stale:
                row.status, row.ended_at = "failed", now
                row.result = {**(row.result or {}), "status": "failed", "error": ABANDONED}
            run = RetrainingRun(
                model=model,
                status="running",
                step="starting",
                trigger=trigger,
                cause=cause,
                tenant=tenant,
                started_by=actor,
                started_at=now,
                holder=holder,
            )
            session.add(run)
            session.flush()
            expires = now + timedelta(seconds=self.lease_seconds)
            if lease is None:
                session.add(RetrainingLease(model=model, holder=holder, run_id=run.id, expires_at=expires))
            else:
                lease.holder, lease.run_id, lease.expires_at = holder, run.id, expires
            return _record(run), [_record(row) for row in stale]

        try:
            return self._db.write(start)
        except IntegrityError as exc:  # another process inserted the first lease at the same moment
            raise ConflictError(f"model {model!r} is being retrained", model=model) from exc

    def renew(self, model: str, holder: str) -> bool:
        """Extend ``holder``'s lease; False when it lost it (expired and taken by another)."""
        expires = utcnow() + timedelta(seconds=self.lease_seconds)

        def extend(session: Session) -> bool:
            done = session.execute(
                update(RetrainingLease)
                .where(RetrainingLease.model == model, RetrainingLease.holder == holder)
                .values(expires_at=expires)
            )
            return bool(getattr(done, "rowcount", 0))

        return self._db.write(extend)

    def step(
        self, run_id: int, step: str, *, mlflow_run_id: str | None = None, version: int | None = None
    ) -> None:
        """Record the step a run is at (its MLflow run once it has one, its version once registered)."""
        values: dict[str, Any] = {"step": step}
        if mlflow_run_id is not None:
            values["mlflow_run_id"] = mlflow_run_id
        if version is not None:
            values["version"] = version
        self._db.write(
            lambda session: session.execute(
                update(RetrainingRun).where(RetrainingRun.id == run_id).values(**values)
            )
        )

    def finish(
        self,
        run: RetrainingRecord,
        holder: str,
        status: Status,
        result: dict[str, Any],
        *,
        version: int | None = None,
        experiment: str | None = None,
    ) -> RetrainingRecord:
        """End a run with its result and give the model's lease back.

        A run another process has meanwhile marked abandoned keeps that verdict (its holder lost
        the lease); only a version it registered is added.
        """
        now = utcnow()

        def end(session: Session) -> RetrainingRecord:
            row = session.get(RetrainingRun, run.id)
            if row is None:
                raise NotFoundError(f"no retraining run {run.id}", run=run.id)
            if row.status != "running" or row.holder != holder:
                row.version = row.version or version
                return _record(row)
            row.status, row.step, row.ended_at, row.result = status, "done", now, result
            row.version, row.experiment = version, experiment
            session.execute(
                delete(RetrainingLease).where(
                    RetrainingLease.model == run.model, RetrainingLease.holder == holder
                )
            )
            return _record(row)

        return self._db.write(end)

    def get(self, run_id: int) -> RetrainingRecord:
        """One run.

        Raises:
            NotFoundError: No such run.
        """
        with self._db.read() as session:
            row = session.get(RetrainingRun, run_id)
            if row is None:
                raise NotFoundError(f"no retraining run {run_id}", run=run_id)
            return _record(row)

    def history(self, model: str | None = None, *, limit: int = 50) -> list[RetrainingRecord]:
        """Runs, newest first; only ``model``'s when given."""
        query = select(RetrainingRun).order_by(RetrainingRun.id.desc()).limit(limit)
        if model is not None:
            query = query.where(RetrainingRun.model == model)
        with self._db.read() as session:
            return [_record(row) for row in session.scalars(query).all()]

    def last_started(self, model: str) -> datetime | None:
        """When ``model``'s newest run started (a trigger's cool-down counts from it)."""
        with self._db.read() as session:
            return session.scalar(
                select(func.max(RetrainingRun.started_at)).where(RetrainingRun.model == model)
            )

    def counts(self) -> tuple[dict[tuple[str, str], int], dict[str, datetime]]:
        """Runs by (model, status), and when each model's newest ended run ended (for metrics)."""
        with self._db.read() as session:
            by_status = session.execute(
                select(RetrainingRun.model, RetrainingRun.status, func.count()).group_by(
                    RetrainingRun.model, RetrainingRun.status
                )
            ).all()
            last = session.execute(
                select(RetrainingRun.model, func.max(RetrainingRun.ended_at))
                .where(RetrainingRun.ended_at.is_not(None))
                .group_by(RetrainingRun.model)
            ).all()
        return {(m, s): int(n) for m, s, n in by_status}, {m: at for m, at in last if at is not None}


def _machine() -> str:
    """Where this process's pid means something: the host name and the pid namespace.

    Containers that share a host name (host networking) each have their own pid namespace.
    """
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = "-"
    return f"{socket.gethostname()[:32]}/{namespace}"


def new_holder() -> str:
    """A lease holder's name: ``machine:pid:token``, so a process on the same machine can tell it died."""
    return f"{_machine()}:{os.getpid()}:{secrets.token_hex(4)}"


def _alive(holder: str) -> bool:
    """False only when ``holder`` ran where this process runs and is gone (then its lease is void)."""
    machine, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if machine != _machine() or not pid.isdigit():
        return True  # another machine's process: only the expiry can tell
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _record(row: RetrainingRun) -> RetrainingRecord:
    return RetrainingRecord(
        id=row.id,
        model=row.model,
        status=row.status,
        step=row.step,
        trigger=row.trigger,
        cause=dict(row.cause or {}),
        tenant=row.tenant,
        started_by=row.started_by,
        started_at=row.started_at,
        ended_at=row.ended_at,
        mlflow_run_id=row.mlflow_run_id,
        version=row.version,
        experiment=row.experiment,
        result=row.result,
    )
