"""The cost agent's tools: LLM spend by day, tenant, route and model, and what changed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agents.tools import Outcome, ToolCall, jsonable, tool
from opsloop.auth import Role
from opsloop.durations import parse_duration
from opsloop.errors import InvalidInputError

__all__ = ["TOOLS", "budget_status", "cost_change", "cost_report", "route_quality", "set_budget"]

BREAKDOWNS = ("route", "model", "tenant")


def _rows(
    call: ToolCall, by: str, window: str, tenant: str | None, route: str | None, until: datetime | None = None
) -> list[dict[str, Any]]:
    since = parse_duration(window, field="window")
    rows = [jsonable(r) for r in call.ops.costs(call.caller, by, since, tenant, until)]
    if route is not None and by == "route":
        rows = [r for r in rows if r["group"] == route]
    return rows


@tool("cost", role=Role.OPERATOR)
async def cost_report(
    call: ToolCall, window: str = "7d", tenant: str | None = None, route: str | None = None
) -> Outcome:
    """LLM usage and cost over a window, by day and by route."""
    by_day = _rows(call, "day", window, tenant, None)
    by_route = _rows(call, "route", window, tenant, route)
    total = sum(r["cost_usd"] for r in by_route)
    calls = sum(r["calls"] for r in by_route)
    days = ", ".join(f"{r['group']} ${r['cost_usd']:.4f}" for r in sorted(by_day, key=lambda r: r["group"]))
    routes = ", ".join(f"{r['group']} ${r['cost_usd']:.4f} ({r['calls']} calls)" for r in by_route[:5])
    scope = f" of {tenant}" if tenant else ""
    summary = f"${total:.4f} over {calls} calls{scope} in the last {window}"
    if routes:
        summary += f"; by route: {routes}; by day: {days}"
    return Outcome(
        summary,
        {
            "window": window,
            "tenant": tenant,
            "total_usd": total,
            "calls": calls,
            "by_day": by_day,
            "by_route": by_route,
        },
    )


@tool("cost", role=Role.OPERATOR)
async def cost_change(
    call: ToolCall, window: str = "7d", tenant: str | None = None, route: str | None = None
) -> Outcome:
    """What changed between this window's spend and the window before: the groups that moved most."""
    length = parse_duration(window, field="window")
    earlier_end = datetime.now(UTC).replace(tzinfo=None) - length
    changes: dict[str, list[dict[str, Any]]] = {}
    totals = {"now": 0.0, "before": 0.0}
    for by in BREAKDOWNS:
        now = {r["group"]: r for r in _rows(call, by, window, tenant, route if by == "route" else None)}
        before = {
            r["group"]: r
            for r in _rows(call, by, window, tenant, route if by == "route" else None, earlier_end)
        }
        if by == "route":
            totals = {
                "now": sum(r["cost_usd"] for r in now.values()),
                "before": sum(r["cost_usd"] for r in before.values()),
            }
        moved = [
            {
                "group": g,
                "now_usd": now.get(g, {}).get("cost_usd", 0.0),
                "before_usd": before.get(g, {}).get("cost_usd", 0.0),
                "now_calls": now.get(g, {}).get("calls", 0),
                "before_calls": before.get(g, {}).get("calls", 0),
            }
            for g in sorted(set(now) | set(before))
        ]
        for m in moved:
            m["delta_usd"] = m["now_usd"] - m["before_usd"]
        changes[by] = sorted(moved, key=lambda m: -abs(m["delta_usd"]))
    delta = totals["now"] - totals["before"]
    summary = f"${totals['now']:.4f} in the last {window} against ${totals['before']:.4f} the {window} before"
    summary += f" ({'+' if delta >= 0 else '-'}${abs(delta):.4f})"
    drivers = [
        f"{by} {c[0]['group']} {'+' if c[0]['delta_usd'] >= 0 else '-'}${abs(c[0]['delta_usd']):.4f}"
        f" ({c[0]['before_calls']} -> {c[0]['now_calls']} calls)"
        for by, c in changes.items()
        if c and c[0]["delta_usd"] != 0
    ]
    if drivers:
        summary += "; moved most: " + ", ".join(drivers)
    return Outcome(
        summary,
        {
            "window": window,
            "tenant": tenant,
            "now_usd": totals["now"],
            "before_usd": totals["before"],
            "delta_usd": delta,
            "changes": changes,
        },
    )


@tool("cost", role=Role.OPERATOR)
async def route_quality(call: ToolCall) -> Outcome:
    """The eval scores of each LLM route (the last run of each eval job that answers with it)."""
    scores = {route: dict(metrics) for route, metrics in call.ops.route_scores(call.caller).items()}
    if not scores:
        return Outcome("no eval job has scored a route yet (eval_jobs in the settings)", {"routes": {}})
    shown = "; ".join(
        f"{route}: " + ", ".join(f"{m} {v:.3f}" for m, v in sorted(metrics.items()))
        for route, metrics in scores.items()
    )
    return Outcome(shown, {"routes": scores})


def _scope(tenant: str, key: str | None) -> str:
    return f"key {key} of tenant {tenant}" if key else f"tenant {tenant}"


def _tenant(call: ToolCall, tenant: str | None, key: str | None) -> str:
    """The tenant named, else the one of the key named (a key's budget is its tenant's row)."""
    if tenant is not None:
        return tenant
    if key is None:
        raise InvalidInputError("name a tenant or one of its keys", field="tenant")
    return call.ops.key(call.caller, key).tenant


@tool("cost", role=Role.ADMIN)
async def budget_status(call: ToolCall, tenant: str | None = None, key: str | None = None) -> Outcome:
    """A tenant's budgets and rate limits, with what their current windows have used."""
    tenant = _tenant(call, tenant, key)
    usages = [
        u for u in call.ops.budgets(call.caller, tenant) if key is None or u.budget.key_id in (None, key)
    ]
    shown = "; ".join(f"{u.budget.name} {u.used:g} of {u.budget.limit:g} ({u.ratio:.0%})" for u in usages)
    summary = f"{_scope(tenant, key)}: " + (shown or "no budget or rate limit is set")
    return Outcome(summary, {"tenant": tenant, "key": key, "budgets": [u.to_dict() for u in usages]})


@tool("cost", role=Role.ADMIN, mutating=True)
async def set_budget(
    call: ToolCall, budget: str, limit: float, tenant: str | None = None, key: str | None = None
) -> Outcome:
    """Create or change a budget or rate limit of a tenant or one of its keys."""
    tenant = _tenant(call, tenant, key)
    before = {
        u.budget.kind: u.budget.limit for u in call.ops.budgets(call.caller, tenant) if u.budget.key_id == key
    }
    done = call.ops.set_budget(call.caller, tenant, budget, limit, key)
    was = f"was {before[budget]:g}" if budget in before else "was not set"
    return Outcome(
        f"{budget} of {_scope(tenant, key)} set to {done.limit:g} ({was}); gateways apply it within seconds",
        {**done.to_dict(), "before": before.get(budget)},
    )


TOOLS = (cost_report, cost_change, route_quality, budget_status, set_budget)
