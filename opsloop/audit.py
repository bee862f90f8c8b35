"""The append-only audit log of every mutating action.

Writers call :meth:`AuditLog.record` inside the same transaction as the change they
audit, so a change is never stored without its audit row (or the other way round).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from opsloop.db import Database
from opsloop.tables import AuditEvent, utcnow

__all__ = ["AuditEntry", "AuditFilter", "AuditLog"]


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
        """Add an event to ``session``; it is stored when the caller's transaction commits."""
        session.add(
            AuditEvent(
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
        query = select(AuditEvent)
        for column, value in (
            (AuditEvent.tenant, where.tenant),
            (AuditEvent.actor, where.actor),
            (AuditEvent.action, where.action),
            (AuditEvent.target, where.target),
        ):
            if value is not None:
                query = query.where(column == value)
        if where.since is not None:
            query = query.where(AuditEvent.at >= where.since)
        if where.until is not None:
            query = query.where(AuditEvent.at < where.until)
        if where.after_id is not None:
            query = query.where(AuditEvent.id > where.after_id).order_by(AuditEvent.id)
        else:
            query = query.order_by(AuditEvent.id.desc())
        with self._db.read() as session:
            rows = session.scalars(query.limit(where.limit)).all()
        return [
            AuditEntry(r.id, r.at, r.actor, r.tenant, r.action, r.target, r.before, r.after, r.request_id)
            for r in rows
        ]
