"""``opsloop budgets``: set, list and delete budgets and rate limits of tenants and keys."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from opsloop.budgets import KINDS
from opsloop.errors import OpsloopError
from serving.cli.common import err, fail, out, when

if TYPE_CHECKING:
    from opsloop.budgets import BudgetStore

app = typer.Typer(help="Set, list and delete budgets and rate limits.", no_args_is_help=True)


def _store(ctx: typer.Context) -> BudgetStore:
    from opsloop.budgets import BudgetStore

    store = ctx.obj.store()
    return BudgetStore(store.db, store.audit)


@app.command("set")
def budgets_set(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Option(help="The tenant the budget applies to.")],
    key: Annotated[str | None, typer.Option("--key", help="Only this key of the tenant (its id).")] = None,
    daily_usd: Annotated[float | None, typer.Option(help="Spend per UTC day, in USD.")] = None,
    daily_tokens: Annotated[int | None, typer.Option(help="Tokens per UTC day.")] = None,
    monthly_usd: Annotated[float | None, typer.Option(help="Spend per UTC month, in USD.")] = None,
    monthly_tokens: Annotated[int | None, typer.Option(help="Tokens per UTC month.")] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
    soft_ratio: Annotated[
        float | None,
        typer.Option(help="Share of the limit that raises a warning (default 0.8; kept when changing)."),
    ] = None,
) -> None:
    """Create or change budgets; give one or more limits. Servers apply them within seconds."""
    limits = {
        "daily_usd": daily_usd,
        "daily_tokens": daily_tokens,
        "monthly_usd": monthly_usd,
        "monthly_tokens": monthly_tokens,
        "rpm": rpm,
        "tpm": tpm,
    }
    chosen = {kind: limit for kind, limit in limits.items() if limit is not None}
    if not chosen:
        flags = ", ".join(f"--{kind.replace('_', '-')}" for kind in KINDS)
        err.print(f"[red]error:[/red] give at least one limit: {flags}", highlight=False)
        raise typer.Exit(code=2)
    from serving.local import cli_actor

    store = _store(ctx)
    for kind, limit in chosen.items():
        try:
            budget = store.set(tenant, kind, limit, key_id=key, soft_ratio=soft_ratio, actor=cli_actor())
        except OpsloopError as exc:
            raise fail(exc) from exc
        scope = f"key {key} of tenant {tenant}" if key else f"tenant {tenant}"
        err.print(f"set {kind} of {scope} to {limit:g} (soft at {budget.soft_ratio:.0%})")


@app.command("list")
def budgets_list(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's budgets.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List budgets and rate limits."""
    budgets = _store(ctx).list(tenant=tenant)
    if as_json:
        for budget in budgets:
            print(json.dumps(budget.to_dict()))
        return
    table = Table("tenant", "key", "kind", "limit", "soft", "updated", "by")
    for b in budgets:
        updated = when(b.updated_at) if b.updated_at else ""
        table.add_row(
            b.tenant, b.key_id or "*", b.kind, f"{b.limit:g}", f"{b.soft_ratio:.0%}", updated, b.updated_by
        )
    out.print(table)


@app.command("delete")
def budgets_delete(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Option(help="The budget's tenant.")],
    kind: Annotated[str, typer.Option(help=f"One of {', '.join(KINDS)}.")],
    key: Annotated[str | None, typer.Option("--key", help="The key, for a budget of one key.")] = None,
) -> None:
    """Remove a budget or rate limit."""
    from serving.local import cli_actor

    try:
        _store(ctx).delete(tenant, kind, key_id=key, actor=cli_actor())
    except OpsloopError as exc:
        raise fail(exc) from exc
    err.print(f"deleted {kind} of {f'key {key} of tenant {tenant}' if key else f'tenant {tenant}'}")
