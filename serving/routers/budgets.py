"""Admin API of budgets and rate limits (admin role): ``PUT``, ``GET`` and ``DELETE /admin/budgets``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from opsloop.budgets import Budget, BudgetStore
from serving.deps import AdminKey, PlatformDep, request_id

router = APIRouter(prefix="/admin", tags=["admin"])

Kind = Literal["daily_usd", "daily_tokens", "monthly_usd", "monthly_tokens", "rpm", "tpm"]


async def get_budget_store(platform: PlatformDep) -> BudgetStore:
    """The platform's BudgetStore: a change made here applies to this process's gateway at once."""
    return platform.budgets


BudgetStoreDep = Annotated[BudgetStore, Depends(get_budget_store)]


class BudgetSet(BaseModel):
    """A budget to create or change; ``key_id`` limits it to one key of the tenant."""

    tenant: str = Field(examples=["acme"])
    key_id: str | None = Field(default=None, description="Only this key; omit for the whole tenant.")
    kind: Kind = Field(
        examples=["daily_usd"],
        description="daily_usd, daily_tokens, monthly_usd, monthly_tokens (UTC day and month), "
        "rpm or tpm (requests and tokens per UTC minute).",
    )
    limit: float = Field(gt=0, examples=[25.0], description="USD, tokens or requests; whole for tokens.")
    soft_ratio: float | None = Field(
        default=None, gt=0, le=1, description="Share of the limit that warns; default 0.8, kept when omitted."
    )


class BudgetPublic(BaseModel):
    """A stored budget."""

    tenant: str
    key_id: str | None
    kind: str
    limit: float
    soft_ratio: float
    updated_at: datetime | None
    updated_by: str

    @classmethod
    def of(cls, budget: Budget) -> BudgetPublic:
        """Build from the store's Budget."""
        return cls.model_validate(budget.to_dict())


@router.put("/budgets", summary="Create or change a budget or rate limit")
async def set_budget(
    body: BudgetSet, store: BudgetStoreDep, admin: AdminKey, request: Request
) -> BudgetPublic:
    """Set one limit of a tenant or key; audited as ``budget.set``. Gateways apply it within seconds."""
    budget = await run_in_threadpool(
        lambda: store.set(
            body.tenant,
            body.kind,
            body.limit,
            key_id=body.key_id,
            soft_ratio=body.soft_ratio,
            actor=admin.actor,
            request_id=request_id(request),
        )
    )
    return BudgetPublic.of(budget)


@router.get("/budgets", summary="List budgets and rate limits")
async def list_budgets(store: BudgetStoreDep, _: AdminKey, tenant: str | None = None) -> list[BudgetPublic]:
    """Every budget (of one tenant, if given)."""
    budgets = await run_in_threadpool(lambda: store.list(tenant=tenant))
    return [BudgetPublic.of(b) for b in budgets]


@router.delete("/budgets", summary="Delete a budget or rate limit")
async def delete_budget(
    store: BudgetStoreDep,
    admin: AdminKey,
    request: Request,
    tenant: str,
    kind: Annotated[Kind, Query()],
    key_id: str | None = None,
) -> BudgetPublic:
    """Remove one limit; 404 if there is none. Audited as ``budget.delete``."""
    budget = await run_in_threadpool(
        lambda: store.delete(tenant, kind, key_id=key_id, actor=admin.actor, request_id=request_id(request))
    )
    return BudgetPublic.of(budget)
