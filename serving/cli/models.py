"""``opsloop models``: train, register, list, promote and roll back models."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from opsloop.errors import OpsloopError
from opsloop.registry import Lineage
from serving.cli.common import err, fail, out
from serving.platform import Platform, cli_actor

app = typer.Typer(help="Train, register, list, promote and roll back models.", no_args_is_help=True)


@app.command("train")
def models_train(
    ctx: typer.Context,
    demo: Annotated[bool, typer.Option("--demo", help="Train the built-in credit-risk demo model.")] = False,
    shift: Annotated[bool, typer.Option(help="Train on drifted data (see workflows/demo.py).")] = False,
    rows: Annotated[int, typer.Option(min=100, help="Rows of synthetic data.")] = 5000,
    seed: Annotated[int, typer.Option(help="Random seed of the data.")] = 0,
    promote_: Annotated[
        bool, typer.Option("--promote/--no-promote", help="Make the new version champion.")
    ] = True,
) -> None:
    """Train a model on generated data, log it to MLflow, register it and make it champion."""
    from workflows.demo import train_demo
    from workflows.promotion import promote

    if not demo:
        err.print("only the demo model can be trained here: pass --demo (or use 'models register')")
        raise typer.Exit(code=2)
    platform, registry = ctx.obj.registry()
    try:
        with err.status("training the demo model") as status:
            info = train_demo(registry, rows=rows, seed=seed, shift=shift, alias=None, progress=status.update)
        _audit_registration(platform, info.name, info.version, info.source)
        if promote_:
            promote(registry, platform.audit, info.name, info.version, actor=cli_actor())
    except OpsloopError as exc:
        raise fail(exc) from exc
    role = "champion" if promote_ else "not promoted"
    err.print(f"registered [bold]{info.name}[/] version {info.version} ({role}): {info.description}")


def _audit_registration(platform: Platform, name: str, version: int, source: str) -> None:
    platform.audit.append(
        actor=cli_actor(),
        tenant="default",
        action="model.register",
        target=f"model:{name}",
        after={"version": version, "source": source},
    )


@app.command("register")
def models_register(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    source: Annotated[
        str, typer.Option("--from", help="An MLflow model: models:/<id>, runs:/<run>/<path> or a folder.")
    ],
) -> None:
    """Register an MLflow-format scikit-learn or XGBoost model as a new version."""
    platform, registry = ctx.obj.registry()
    path = Path(source)
    uri = path.resolve().as_uri() if path.exists() else source
    try:
        info = registry.register_model(name, uri, Lineage.capture(params={"source": source}))
    except OpsloopError as exc:
        raise fail(exc) from exc
    _audit_registration(platform, name, info.version, info.source)
    err.print(f"registered {name} version {info.version}; promote it with 'opsloop models promote'")


@app.command("list")
def models_list(ctx: typer.Context) -> None:
    """List registered models with their champion versions."""
    _, registry = ctx.obj.registry()
    table = Table("model", "versions", "champion")
    for name in registry.models():
        versions = registry.versions(name)
        champion = next((str(v.version) for v in versions if "champion" in v.aliases), "")
        table.add_row(name, str(len(versions)), champion)
    out.print(table)


@app.command("versions")
def models_versions(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Model name.")]) -> None:
    """List a model's versions with aliases and lineage."""
    _, registry = ctx.obj.registry()
    try:
        versions = registry.versions(name)
    except OpsloopError as exc:
        raise fail(exc) from exc
    table = Table("version", "aliases", "created", "data hash", "git sha", "source")
    for v in versions:
        created = datetime.fromtimestamp((v.created_ms or 0) / 1000).strftime("%Y-%m-%d %H:%M:%S")
        lineage = v.lineage
        table.add_row(
            str(v.version),
            ", ".join(v.aliases),
            created,
            (lineage.data_hash or "")[:12],
            (lineage.git_sha or "")[:10],
            v.source,
        )
    out.print(table)


@app.command("promote")
def models_promote(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(min=1, help="Version to make champion.")],
) -> None:
    """Make a version champion; running servers switch to it within seconds."""
    from workflows.promotion import promote

    platform, registry = ctx.obj.registry()
    try:
        move = promote(registry, platform.audit, name, version, actor=cli_actor())
    except OpsloopError as exc:
        raise fail(exc) from exc
    err.print(f"{name}: champion {move.before} -> {move.after}")


@app.command("rollback")
def models_rollback(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Model name.")]) -> None:
    """Move champion back to the version it held before its last move."""
    from workflows.promotion import rollback

    platform, registry = ctx.obj.registry()
    try:
        move = rollback(registry, platform.audit, name, actor=cli_actor())
    except OpsloopError as exc:
        raise fail(exc) from exc
    err.print(f"{name}: champion {move.before} -> {move.after} (rolled back)")
