"""``GET /admin/costs``: LLM usage and cost from the ledger, grouped (the rows of ``opsloop costs report``).

An admin sees every tenant (or one, with ``tenant``); an operator sees its own tenant only.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from opsloop.durations import parse_duration
from opsloop.llm.ledger import GroupBy
from serving.deps import OperatorKey, PlatformDep

router = APIRouter(prefix="/admin", tags=["admin"])


class CostRowPublic(BaseModel):
    """Usage and cost of one group of gateway calls."""

    group: str = Field(description="The tenant, key id, route, model or backend.")
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: float
    errors: int = Field(description="Calls that failed.")
    disconnected: int = Field(description="Streams their client abandoned (charged for what was generated).")
    p50_latency_ms: float | None
    p95_latency_ms: float | None


class CostReport(BaseModel):
    """A ledger report: rows most expensive first."""

    by: GroupBy
    since: str
    tenant: str | None
    rows: list[CostRowPublic]


@router.get("/costs", summary="LLM usage and cost by tenant, key, route, model, backend or variant")
async def costs(
    platform: PlatformDep,
    principal: OperatorKey,
    by: GroupBy = "tenant",
    since: Annotated[str, Query(examples=["24h"], description="Window ending now: 30m, 24h, 7d.")] = "24h",
    tenant: Annotated[str | None, Query(description="Admins only; others see their own tenant.")] = None,
) -> CostReport:
    """The ledger's totals per group over the window (operator role)."""
    window = parse_duration(since, field="since")
    rows = await run_in_threadpool(platform.ledger.report, principal, by, window, tenant)
    return CostReport(
        by=by,
        since=since,
        tenant=principal.scope(tenant, "costs"),
        rows=[CostRowPublic.model_validate(row.to_dict()) for row in rows],
    )
