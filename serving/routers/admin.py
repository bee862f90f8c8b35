"""Admin API: API keys and the audit log (admin role); drift reports and the RAG query log (operator role).

A model is shared by tenants, its traffic is not: an operator's drift report is computed from
its own tenant's predictions and labels only, an admin's from every tenant's (or one named
``tenant``), and the report's ``tenant`` says whose (null: every tenant's).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from opsloop.audit import AuditFilter
from opsloop.auth import KeyInfo, Role
from rag.query_log import QueryLogEntry
from serving.deps import AdminKey, OperatorKey, PlatformDep, request_id

router = APIRouter(prefix="/admin", tags=["admin"])


class KeyCreate(BaseModel):
    """A request for a new API key."""

    tenant: str = Field(examples=["acme"])
    role: str = Field(examples=["user"], description="viewer, user, operator or admin")
    name: str = Field(default="", max_length=128)


class KeyPublic(BaseModel):
    """A stored key; never its secret."""

    id: str
    tenant: str
    role: str
    name: str
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, info: KeyInfo) -> KeyPublic:
        """Build from the store's KeyInfo."""
        return cls.model_validate(info.to_dict())


class KeyCreated(KeyPublic):
    """A new key, with its secret: shown once, store it now."""

    key: str


class AuditPublic(BaseModel):
    """One audit entry."""

    id: int
    at: datetime
    actor: str
    tenant: str
    action: str
    target: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None


@router.get("/keys", summary="List API keys")
async def list_keys(
    platform: PlatformDep,
    _: AdminKey,
    tenant: str | None = None,
    include_revoked: bool = False,
) -> list[KeyPublic]:
    """Every key (of one tenant, if given); revoked ones on request."""
    keys = platform.keys.list(tenant=tenant, include_revoked=include_revoked)
    return [KeyPublic.of(k) for k in keys]


@router.post("/keys", status_code=status.HTTP_201_CREATED, summary="Create an API key")
async def create_key(body: KeyCreate, platform: PlatformDep, admin: AdminKey, request: Request) -> KeyCreated:
    """Create a key; the response holds the only copy of its secret."""
    new = platform.keys.create(
        body.tenant, Role.parse(body.role), name=body.name, actor=admin.actor, request_id=request_id(request)
    )
    return KeyCreated(**KeyPublic.of(new.info).model_dump(), key=new.secret.get_secret_value())


@router.delete("/keys/{key_id}", summary="Revoke an API key")
async def revoke_key(key_id: str, platform: PlatformDep, admin: AdminKey, request: Request) -> KeyPublic:
    """Revoke a key; 404 if unknown, 409 if already revoked."""
    info = platform.keys.revoke(key_id, actor=admin.actor, request_id=request_id(request))
    return KeyPublic.of(info)


@router.get("/audit", summary="Read the audit log")
async def audit(
    platform: PlatformDep,
    _: AdminKey,
    tenant: str | None = None,
    actor: str | None = None,
    action: Annotated[str | None, Query(examples=["key.create"])] = None,
    target: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditPublic]:
    """Entries matching every given filter, newest first."""
    where = AuditFilter(tenant, actor, action, target, since, until, limit=limit)
    return [AuditPublic.model_validate(e.to_dict()) for e in platform.audit.query(where)]


_TENANT = Query(description="Admins only (default: every tenant's); others see their own tenant's.")


@router.get("/drift/{model}", summary="Drift of a model's live inputs against its reference")
async def drift(
    model: str,
    platform: PlatformDep,
    principal: OperatorKey,
    last: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    window: Annotated[str | None, Query(examples=["1h"])] = None,
    version: Annotated[int | None, Query(ge=1)] = None,
    tenant: Annotated[str | None, _TENANT] = None,
) -> dict[str, Any]:
    """The report of ``opsloop drift report`` as JSON, of the caller's tenant's traffic (operator role)."""
    from workflows.drift_monitor import live_report, window_start

    scope = principal.scope(tenant, "predictions")

    def run() -> dict[str, Any]:
        since = window_start(window)
        report = live_report(
            platform.registry,
            platform.predictions,
            model,
            version=version,
            tenant=scope,
            last=last,
            since=since,
            min_rows=platform.settings.drift_min_rows,
        )
        return {"tenant": scope, **report.to_dict()}

    return await run_in_threadpool(run)


@router.get("/drift/{model}/concept", summary="Change points of a model version's error rate (ADWIN)")
async def concept_drift(
    model: str,
    platform: PlatformDep,
    principal: OperatorKey,
    version: Annotated[int | None, Query(ge=1)] = None,
    window: Annotated[str | None, Query(examples=["7d"])] = None,
    delta: Annotated[float, Query(gt=0, lt=1)] = 0.002,
    tenant: Annotated[str | None, _TENANT] = None,
) -> dict[str, Any]:
    """The report of ``opsloop drift concept`` as JSON, of the caller's tenant's labels (operator role)."""
    from workflows.concept_drift import concept_report
    from workflows.drift_monitor import window_start

    scope = principal.scope(tenant, "predictions")

    def run() -> dict[str, Any]:
        since = window_start(window)
        chosen = version or platform.registry.get_alias(model, "champion").version
        report = concept_report(platform.predictions, model, chosen, tenant=scope, since=since, delta=delta)
        return {"tenant": scope, **report.to_dict()}

    return await run_in_threadpool(run)


@router.get("/drift/{model}/history", summary="Stored results of the scheduled drift checks")
async def drift_history(
    model: str,
    platform: PlatformDep,
    principal: OperatorKey,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Scheduled checks of ``model``, newest first, each with its full report (admin role).

    A scheduled check compares every tenant's traffic, so operators, who see only their own
    tenant's, ask ``GET /admin/drift/{model}`` instead.
    """
    principal.require(Role.ADMIN, "reading the scheduled drift checks (of every tenant's predictions)")
    checks = await run_in_threadpool(platform.drift.history, model, limit=limit)
    return [{**check.__dict__, "at": check.at.isoformat()} for check in checks]


@router.get("/queries", summary="Recent RAG queries: retrieved chunks, answer, tokens and latency")
async def queries(
    platform: PlatformDep,
    principal: OperatorKey,
    collection: str | None = None,
    tenant: Annotated[str | None, Query(description="Admins only; others see their own tenant.")] = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[QueryLogEntry]:
    """Logged queries, newest first: an operator sees its own tenant's, an admin any tenant's."""
    return await run_in_threadpool(
        platform.queries.recent, principal, tenant=tenant, collection=collection, since=since, limit=limit
    )
