"""Budgets in the relational store: set, list and delete (audited), cached per tenant for the hot path."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from opsloop.audit import AuditLog
from opsloop.auth import check_tenant
from opsloop.budgets.model import DEFAULT_SOFT_RATIO, KINDS, Budget, validate
from opsloop.db import Database
from opsloop.errors import BackendError, ConflictError, InvalidInputError, NotFoundError
from opsloop.refreshing import RefreshAhead
from opsloop.tables import ApiKey, BudgetRow, utcnow

__all__ = ["BudgetStore"]

log = logging.getLogger("opsloop.budgets")


def _budget(row: BudgetRow) -> Budget:
    return Budget(row.tenant, row.key_id, row.kind, row.limit, row.soft_ratio, row.updated_at, row.updated_by)


class BudgetStore:
    """Sets, lists and deletes budgets in the relational store; every change is audited.

    Args:
        db: The started database.
        audit: The audit log changes are recorded in, in the same transaction.
        cache_seconds: How long :meth:`applicable` trusts the rows it read for a tenant.
    """

    def __init__(self, db: Database, audit: AuditLog, *, cache_seconds: float = 5.0) -> None:
        self._db = db
        self._audit = audit
        self._cache = RefreshAhead(self._read, cache_seconds, name="opsloop-budgets")

    def set(
        self,
        tenant: str,
        kind: str,
        limit: float,
        *,
        key_id: str | None = None,
        soft_ratio: float | None = None,
        actor: str,
        request_id: str | None = None,
    ) -> Budget:
        """Create or change the budget of ``kind``; ``soft_ratio`` None keeps the current one (default 0.8).

        Raises:
            InvalidInputError: A value is wrong (``details["field"]`` names it), or the key
                belongs to another tenant.
            NotFoundError: ``key_id`` names no key.
        """
        check_tenant(tenant)
        validate(kind, limit, soft_ratio)

        def upsert(session: Session) -> Budget:
            if key_id is not None:
                key = session.get(ApiKey, key_id)
                if key is None:
                    raise NotFoundError(f"no key with id {key_id!r}", field="key_id", key_id=key_id)
                if key.tenant != tenant:
                    raise InvalidInputError(
                        f"key {key_id!r} belongs to tenant {key.tenant!r}, not {tenant!r}",
                        field="key_id",
                        value=key_id,
                    )
            row = self._row(session, tenant, key_id, kind)
            before = _budget(row).to_dict() if row is not None else None
            if row is None:
                row = BudgetRow(tenant=tenant, key_id=key_id, kind=kind, soft_ratio=DEFAULT_SOFT_RATIO)
                session.add(row)
            row.limit = float(limit)
            if soft_ratio is not None:
                row.soft_ratio = float(soft_ratio)
            row.updated_at = utcnow()
            row.updated_by = actor
            session.flush()
            budget = _budget(row)
            self._audit.record(
                session,
                actor=actor,
                tenant=tenant,
                action="budget.set",
                target=f"budget:{tenant}/{budget.name}",
                before=before,
                after=budget.to_dict(),
                request_id=request_id,
            )
            return budget

        for attempt in range(2):
            try:
                budget = self._db.write(upsert)
                break
            except IntegrityError as exc:  # another writer inserted the same budget first: update it
                if attempt:
                    raise ConflictError(f"budget {kind} of tenant {tenant!r} changed concurrently") from exc
        self.invalidate(tenant)
        return budget

    def delete(
        self, tenant: str, kind: str, *, key_id: str | None = None, actor: str, request_id: str | None = None
    ) -> Budget:
        """Remove a budget; NotFoundError if there is none of ``kind`` for the tenant (and key)."""

        def remove(session: Session) -> Budget:
            row = self._row(session, tenant, key_id, kind)
            if row is None:
                scope = f"key {key_id!r} of tenant {tenant!r}" if key_id else f"tenant {tenant!r}"
                raise NotFoundError(
                    f"no budget {kind!r} for {scope}", tenant=tenant, key_id=key_id, kind=kind
                )
            budget = _budget(row)
            session.delete(row)
            self._audit.record(
                session,
                actor=actor,
                tenant=tenant,
                action="budget.delete",
                target=f"budget:{tenant}/{budget.name}",
                before=budget.to_dict(),
                request_id=request_id,
            )
            return budget

        budget = self._db.write(remove)
        self.invalidate(tenant)
        return budget

    def list(self, *, tenant: str | None = None) -> list[Budget]:
        """Budgets ordered by tenant, key (tenant-wide first) and kind."""
        query = select(BudgetRow).order_by(BudgetRow.tenant, BudgetRow.key_id.is_not(None), BudgetRow.key_id)
        if tenant is not None:
            query = query.where(BudgetRow.tenant == tenant)
        with self._db.read() as session:
            budgets = [_budget(row) for row in session.scalars(query)]
        order = list(KINDS)
        return sorted(
            budgets, key=lambda b: (b.tenant, b.key_id is not None, b.key_id or "", order.index(b.kind))
        )

    def applicable(self, tenant: str, key_id: str | None) -> tuple[Budget, ...]:
        """The tenant's budgets and those of ``key_id``, from a cache of at most ``cache_seconds``.

        The cache reads a tenant's rows again in the background before they expire, so a
        steady caller does not wait for the store. When the store fails and an expired entry
        is at hand, that entry is used (and the failure logged) rather than failing every
        request.
        """
        try:
            budgets = self._cache.get(tenant) or ()
        except SQLAlchemyError as exc:
            stale = self._cache.last(tenant)
            if stale is None:
                raise BackendError(f"cannot read the budgets of tenant {tenant!r}: {exc}") from exc
            log.warning("reading budgets of tenant %r failed; using those read before: %s", tenant, exc)
            self._cache.put(tenant, stale)  # the next read in cache_seconds, not on every request
            budgets = stale
        return tuple(b for b in budgets if b.key_id is None or b.key_id == key_id)

    def _read(self, tenant: str) -> tuple[Budget, ...]:
        with self._db.read() as session:
            rows = session.scalars(select(BudgetRow).where(BudgetRow.tenant == tenant)).all()
        return tuple(_budget(row) for row in rows)

    def invalidate(self, tenant: str | None = None) -> None:
        """Forget cached rows (of one tenant), so the next request reads them again."""
        self._cache.forget(tenant)

    @staticmethod
    def _row(session: Session, tenant: str, key_id: str | None, kind: str) -> BudgetRow | None:
        key_match = BudgetRow.key_id.is_(None) if key_id is None else BudgetRow.key_id == key_id
        query = select(BudgetRow).where(BudgetRow.tenant == tenant, BudgetRow.kind == kind, key_match)
        return session.scalars(query).first()
