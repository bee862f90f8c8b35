"""``opsloop costs report``: LLM usage and cost from the ledger, by tenant, key, route, model or backend.

It reads the ledger in the store directly (SQLite or PostgreSQL), so it works with or without
a running server; a server writes its calls within a fraction of a second.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich import box
from rich.table import Table

from opsloop.durations import parse_duration
from opsloop.errors import OpsloopError
from serving.cli.common import State, fail, out

if TYPE_CHECKING:
    from opsloop.llm.ledger import CostRow

app = typer.Typer(help="LLM usage and cost from the gateway's ledger.", no_args_is_help=True)

# ``opsloop.llm.ledger.GroupBy`` spelled out: typer needs the type when it builds the CLI (for
# ``opsloop --help`` too), and importing the ledger would load SQLAlchemy then. mypy checks that
# every value here is one the ledger takes; tests/unit/test_cli_imports.py that none is missing.
GroupBy = Literal["tenant", "key", "route", "model", "backend", "variant", "day"]


@app.command("report")
def report(
    ctx: typer.Context,
    by: Annotated[
        GroupBy,
        typer.Option("--by", help="Group by tenant, key, route, model, backend, experiment variant or day."),
    ] = "tenant",
    since: Annotated[str, typer.Option("--since", help="Window ending now: 30m, 24h, 7d.")] = "24h",
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant's calls.")] = None,
    format_: Annotated[
        Literal["table", "json"], typer.Option("--format", "-f", help="table (for people) or json.")
    ] = "table",
) -> None:
    """Calls, tokens, cost, errors and latency per group over the window, most expensive first."""
    from opsloop.llm.ledger import Ledger
    from serving.local import cli_principal

    state: State = ctx.obj
    try:
        window = parse_duration(since, field="--since")
        store = state.store()
        try:
            # Reads only: the ledger's writer thread is never started here.
            rows = Ledger(store.db).report(cli_principal(), by, window, tenant)
        finally:
            store.close()
    except OpsloopError as exc:
        raise fail(exc) from exc
    if format_ == "json":
        out.print_json(data={"by": by, "since": since, "tenant": tenant, "rows": [r.to_dict() for r in rows]})
        return
    _print(rows, by, since, tenant)


def _print(rows: list[CostRow], by: str, since: str, tenant: str | None) -> None:
    scope = f" of tenant {tenant}" if tenant else ""
    if not rows:
        out.print(f"no gateway calls in the last {since}{scope}", highlight=False)
        return
    cached = any(row.cached_tokens for row in rows)  # a column only where a backend caches
    # No vertical rules, no edge padding and short headings, so that a report fits an 80-column
    # terminal; "abandoned" (streams whose client left) is the longest, as a shorter one was cryptic.
    table = Table(
        title=f"LLM costs by {by}, last {since}{scope}",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )
    table.add_column(by, overflow="fold")  # the one column that gives way (numbers are never cut)
    headings = [
        "calls",
        "prompt",
        "output",
        *(["cached"] if cached else []),
        "USD",
        "err",
        "abandoned",
        "p50/p95 ms",
    ]
    for heading in headings:
        table.add_column(heading, justify="right", no_wrap=True)

    def cells(group: str, part: list[CostRow], latency: str) -> list[str]:
        values = [group, _int(sum(r.calls for r in part)), _int(sum(r.prompt_tokens for r in part))]
        values.append(_int(sum(r.completion_tokens for r in part)))
        if cached:
            values.append(_int(sum(r.cached_tokens for r in part)))
        values += [_usd(sum(r.cost_usd for r in part)), _int(sum(r.errors for r in part))]
        return [*values, _int(sum(r.disconnected for r in part)), latency]

    for row in rows:
        table.add_row(*cells(row.group or "-", [row], f"{_ms(row.p50_latency_ms)}/{_ms(row.p95_latency_ms)}"))
    if len(rows) > 1:
        table.add_section()
        table.add_row(*cells("total", rows, ""))
    out.print(table)


def _int(value: int) -> str:
    # Exact up to 99,999; rounded above (123k, 12.3M), so a busy tenant's token counts still
    # leave the group column room in 80 columns. --format json has the exact numbers.
    if value < 100_000:
        return f"{value:,}"
    if value < 1_000_000:
        return f"{value / 1e3:.0f}k"
    if value < 1_000_000_000:
        return f"{value / 1e6:.1f}M"
    return f"{value / 1e9:.1f}B"


def _usd(value: float) -> str:
    # Cents are enough from a dollar up; below, a few calls of a small model cost fractions of one.
    if abs(value) >= 1:
        return f"{value:,.2f}"
    return f"{value:.6f}".rstrip("0").rstrip(".") if value else "0"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
