"""The append-only audit log of every mutating action.

Writers call :meth:`AuditLog.record` inside the same transaction as the change they
audit, so a change is never stored without its audit row (or the other way round).

The log's table, :data:`audit_events`, is a Core table defined here, and the log reads and
writes it with Core statements: ``opsloop audit tail`` runs without SQLAlchemy's ORM
(:mod:`opsloop.db`). :class:`opsloop.tables.AuditEvent` maps it for ORM queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Column, Index, Integer, String, Table, insert, select

from opsloop.db import Database, UTCDateTime, metadata, utcnow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["AuditEntry", "AuditFilter", "AuditLog", "audit_events"]

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False, index=True, default=utcnow),
    Column("actor", String(64), nullable=False),
    Column("tenant", String(64), nullable=False, index=True),
    Column("action", String(64), nullable=False),
    Column("target", String(256), nullable=False, default=""),
    Column("before", JSON),
    Column("after", JSON),
    Column("request_id", String(64)),
    Index("ix_audit_events_action_at", "action", "at"),
)
"""One mutating action per row; append-only (the migration's triggers refuse UPDATE and DELETE)."""


@dataclass(frozen=True)
class AuditEntry:
    """One audited action as readers see it."""

    id: int
    at: datetime
    actor: str
    tenant: str
    action: str
    target: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**self.__dict__, "at": self.at.isoformat()}


@dataclass(frozen=True)
class AuditFilter:
    """Which entries to read; unset fields match everything."""

    tenant: str | None = None
    actor: str | None = None
    action: str | None = None
    target: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    after_id: int | None = None
    limit: int = 100


class AuditLog:
    """Appends audit events and reads them back, newest first."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def record(
        self,
        session: Session,
        *,
        actor: str,
        tenant: str,
        action: str,
        target: str = "",
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> None:
        """Add an event to ``session``; it is stored when the caller's transaction commits.

        A Core insert, sent at once: it flushes none of the caller's pending ORM objects (only
        ORM statements autoflush), and commits or rolls back with them.
        """
        session.execute(
            insert(audit_events).values(
                at=utcnow(),
                actor=actor,
                tenant=tenant,
                action=action,
                target=target,
                before=before,
                after=after,
                request_id=request_id,
            )
        )

    def append(self, **event: Any) -> None:
        """Record one event in a transaction of its own (for actions outside the store)."""
        self._db.write(lambda session: self.record(session, **event))

    def query(self, where: AuditFilter) -> list[AuditEntry]:
        """Entries matching ``where``, newest first (oldest first when ``after_id`` is set)."""
        c = audit_events.c
        query = select(audit_events)
        for column, value in (
            (c.tenant, where.tenant),
            (c.actor, where.actor),
            (c.action, where.action),
            (c.target, where.target),
        ):
            if value is not None:
                query = query.where(column == value)
        if where.since is not None:
            query = query.where(c.at >= where.since)
        if where.until is not None:
            query = query.where(c.at < where.until)
        if where.after_id is not None:
            query = query.where(c.id > where.after_id).order_by(c.id)
        else:
            query = query.order_by(c.id.desc())
        rows = self._db.rows(query.limit(where.limit))
        return [
            AuditEntry(r.id, r.at, r.actor, r.tenant, r.action, r.target, r.before, r.after, r.request_id)
            for r in rows
        ]
