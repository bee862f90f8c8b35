"""Which process runs each fire of a periodic job: one, across every process sharing the store.

Several ``opsloop serve`` replicas schedule the same jobs (drift checks, eval jobs, retraining),
and in a cluster Kubernetes CronJobs run them with ``opsloop jobs run``. Each fire belongs to a
*slot*, the period it falls in: ``floor(time / interval)`` for an interval job, the minute for a
cron job (cron's resolution). Every process that fires tries to insert the row ``(job, slot)``;
the primary key lets one insert win on SQLite and PostgreSQL alike, and only the winner runs the
job. The others skip that fire. So a job runs once per slot however many processes schedule it,
and whichever process is up runs it: no process is special, and none has to be elected.

The rows double as the jobs' history (who ran each fire, when, how it ended), which
``opsloop jobs list`` shows; each job keeps its newest :data:`KEEP` rows.

A slot says nothing about overlap: a run longer than its interval can still be running when
another process claims the next slot. The jobs that must not overlap hold a lease of their own
(retraining per model, the experiment decider).
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from opsloop.db import Database
from opsloop.tables import JobRunRow, utcnow

__all__ = ["KEEP", "JobRun", "JobRuns", "slot_of"]

KEEP = 200
"""Rows kept per job; older ones are deleted when a new fire is claimed."""


def slot_of(at: float, period: float) -> int:
    """The slot of a fire at ``at`` (seconds since the epoch) of a job fired every ``period`` seconds."""
    return math.floor(at / period)


@dataclass(frozen=True)
class JobRun:
    """One claimed fire of a job, as ``opsloop jobs list`` shows it."""

    job: str
    slot: int
    holder: str
    started_at: datetime
    ended_at: datetime | None
    status: str
    """``running``, ``ok`` or ``failed`` (a holder that died mid-run leaves ``running``)."""
    error: str | None

    def as_dict(self) -> dict[str, object]:
        """The run as JSON-able values."""
        ended = None if self.ended_at is None else self.ended_at.isoformat()
        return {**asdict(self), "started_at": self.started_at.isoformat(), "ended_at": ended}


class JobRuns:
    """The claims and history of periodic jobs in the relational store; see the module docs."""

    def __init__(self, db: Database, *, holder: str | None = None) -> None:
        self._db = db
        self.holder = holder or f"{socket.gethostname()[:40]}:{os.getpid()}"

    async def run(self, job: str, period: float, work: Callable[[], Awaitable[object]]) -> bool:
        """Run ``work`` if this process claims the current slot of ``job``; False when another did.

        The run's end is recorded either way; an exception from ``work`` is recorded and re-raised.
        """
        slot = slot_of(time.time(), period)
        if not await asyncio.to_thread(self.claim, job, slot):
            return False
        try:
            await work()
        except BaseException as exc:
            await asyncio.to_thread(self.finish, job, slot, f"{type(exc).__name__}: {exc}")
            raise
        await asyncio.to_thread(self.finish, job, slot)
        return True

    def claim(self, job: str, slot: int) -> bool:
        """Whether this process runs ``job``'s fire in ``slot`` (False: another process has it)."""

        def insert(session: Session) -> None:
            session.add(
                JobRunRow(job=job, slot=slot, holder=self.holder, started_at=utcnow(), status="running")
            )
            session.flush()  # the primary key decides here, before the prune below
            oldest = (
                select(JobRunRow.slot)
                .where(JobRunRow.job == job)
                .order_by(JobRunRow.slot.desc())
                .offset(KEEP - 1)
                .limit(1)
                .scalar_subquery()
            )
            session.execute(delete(JobRunRow).where(JobRunRow.job == job, JobRunRow.slot < oldest))

        try:
            self._db.write(insert)
        except IntegrityError:
            return False
        return True

    def finish(self, job: str, slot: int, error: str | None = None) -> None:
        """Record how this process's run of ``job`` in ``slot`` ended (``error``: it failed)."""

        def update(session: Session) -> None:
            row = session.get(JobRunRow, (job, slot))
            if row is not None:
                row.ended_at, row.status, row.error = utcnow(), "failed" if error else "ok", error

        self._db.write(update)

    def recent(self, job: str | None = None, *, limit: int = 20) -> list[JobRun]:
        """The newest runs, of ``job`` or of every job, newest first."""
        query = select(JobRunRow).order_by(JobRunRow.started_at.desc()).limit(limit)
        if job is not None:
            query = query.where(JobRunRow.job == job)
        with self._db.read() as session:
            return [_run(row) for row in session.scalars(query)]

    def latest(self) -> dict[str, JobRun]:
        """Each job's newest run."""
        latest: dict[str, JobRun] = {}
        with self._db.read() as session:  # at most KEEP rows a job
            for row in session.scalars(select(JobRunRow).order_by(JobRunRow.job, JobRunRow.slot.desc())):
                latest.setdefault(row.job, _run(row))
        return latest


def _run(row: JobRunRow) -> JobRun:
    return JobRun(row.job, row.slot, row.holder, row.started_at, row.ended_at, row.status, row.error)
