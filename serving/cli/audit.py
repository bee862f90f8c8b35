"""``opsloop audit``: read the audit log."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated

import typer

from serving.cli.common import out, when

if TYPE_CHECKING:
    from opsloop.audit import AuditEntry

app = typer.Typer(help="Read the audit log of every mutating action.", no_args_is_help=True)


@app.command("tail")
def audit_tail(
    ctx: typer.Context,
    lines: Annotated[int, typer.Option("-n", "--lines", min=1, max=1000, help="How many entries.")] = 20,
    action: Annotated[str | None, typer.Option(help="Only this action, e.g. key.create.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    actor: Annotated[str | None, typer.Option(help="Only this actor (key id or cli:USER).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new entries.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Print the newest audit entries, oldest first, and optionally follow new ones."""
    from opsloop.audit import AuditFilter

    audit = ctx.obj.quick_store().audit
    where = AuditFilter(tenant=tenant, actor=actor, action=action, limit=lines)
    entries = list(reversed(audit.query(where)))
    _print_audit(entries, as_json)
    last = entries[-1].id if entries else 0
    while follow:
        time.sleep(1.0)
        entries = audit.query(AuditFilter(tenant=tenant, actor=actor, action=action, after_id=last))
        if entries:
            _print_audit(entries, as_json)
            last = entries[-1].id


def _print_audit(entries: list[AuditEntry], as_json: bool) -> None:
    if as_json:
        for entry in entries:
            print(json.dumps(entry.to_dict()))
        return
    for e in entries:
        change = json.dumps(e.after or e.before or {}, separators=(",", ":"))
        out.print(
            f"{when(e.at)}  [bold]{e.action:<14}[/] {e.target:<22} by {e.actor:<14} "
            f"tenant={e.tenant}  {change}",
            highlight=False,
            soft_wrap=True,
        )
