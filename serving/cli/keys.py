"""``opsloop keys``: create, list and revoke API keys."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from opsloop.errors import OpsloopError
from serving.cli.common import err, fail, out, when

app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


@app.command("create")
def keys_create(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Option(help="Tenant that owns the key (a-z, 0-9, -, _).")],
    role: Annotated[str, typer.Option(help="viewer, user, operator or admin.")],
    name: Annotated[str, typer.Option(help="A label to recognise the key by.")] = "",
) -> None:
    """Create a key and print it; it is shown only this once."""
    from opsloop.auth import Role
    from serving.local import cli_actor

    try:
        new = ctx.obj.quick_store().keys.create(tenant, Role.parse(role), name=name, actor=cli_actor())
    except OpsloopError as exc:
        raise fail(exc) from exc
    err.print(f"created key [bold]{new.info.id}[/] ({new.info.role}) for tenant {tenant}; store it now:")
    print(new.secret.get_secret_value())


@app.command("list")
def keys_list(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List keys (never their secrets)."""
    keys = ctx.obj.quick_store().keys.list(tenant=tenant, include_revoked=all_)
    if as_json:
        for key in keys:
            print(json.dumps(key.to_dict()))
        return
    table = Table("id", "tenant", "role", "name", "created", "revoked")
    for key in keys:
        revoked = when(key.revoked_at) if key.revoked_at else ""
        table.add_row(key.id, key.tenant, str(key.role), key.name, when(key.created_at), revoked)
    out.print(table)


@app.command("revoke")
def keys_revoke(ctx: typer.Context, key_id: Annotated[str, typer.Argument(help="The key's id.")]) -> None:
    """Revoke a key; servers stop accepting it within seconds."""
    from serving.local import cli_actor

    try:
        ctx.obj.quick_store().keys.revoke(key_id, actor=cli_actor())
    except OpsloopError as exc:
        raise fail(exc) from exc
    err.print(f"revoked key {key_id}")
