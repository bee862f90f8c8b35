"""``opsloop models``: train, register, list, promote, roll back models and unset their aliases.

Each command is a thin adapter: registering is ``workflows.registration.register`` and
moving or unsetting an alias ``workflows.promotion``, called as the local CLI operator
(``serving.platform.cli_principal``: an admin of the ``default`` tenant).
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from opsloop.errors import OpsloopError
from serving.cli.common import err, fail, out

app = typer.Typer(help="Train, register, list, promote and roll back models.", no_args_is_help=True)
alias_app = typer.Typer(help="Manage a model's aliases.", no_args_is_help=True)
app.add_typer(alias_app, name="alias")


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
    """Train a model on generated data, log it to MLflow, register it and make it champion.

    Each step is printed on stderr as it starts, with the seconds since the command began.
    """
    if not demo:
        err.print("only the demo model can be trained here: pass --demo (or use 'models register')")
        raise typer.Exit(code=2)
    ctx.obj.settings()  # first: it quiets the libraries before the imports below load them
    started = time.perf_counter()
    with err.status("starting") as status:

        def step(line: str) -> None:
            # A line per step as well as the spinner: it stays on the terminal, and a log
            # that is not a terminal (CI) shows the steps too.
            err.print(f"{time.perf_counter() - started:5.1f} s  {line}", highlight=False, soft_wrap=True)
            status.update(line)

        step("opening the MLflow store")
        from serving.local import cli_principal
        from workflows.demo import DEMO_TRAINER, LABEL, log_demo_run
        from workflows.promotion import promote
        from workflows.registration import register

        platform, registry = ctx.obj.registry()
        caller = cli_principal()
        try:
            run = log_demo_run(registry, rows=rows, seed=seed, shift=shift, progress=step)
            step(f"registering {run.name!r} with its reference profile")
            info = register(
                caller,
                registry,
                platform.audit,
                run.name,
                run.model_uri,
                reference=run.reference,
                lineage=run.lineage,
                description=run.description,
                trainer=DEMO_TRAINER,
                label=LABEL,
            ).version
            if promote_:
                step(f"making version {info.version} champion")
                promote(caller, registry, platform.audit, info.name, info.version)
        except OpsloopError as exc:
            raise fail(exc) from exc
    role = "champion" if promote_ else "not promoted"
    err.print(f"registered [bold]{info.name}[/] version {info.version} ({role}): {info.description}")


@app.command("register")
def models_register(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    source: Annotated[
        str, typer.Option("--from", help="An MLflow model: models:/<id>, runs:/<run>/<path> or a folder.")
    ],
    reference: Annotated[
        Path | None,
        typer.Option(
            "--reference",
            help="Training rows with the model's input columns (.csv or .parquet): "
            "profiled and kept with the version, so drift checks have a reference.",
        ),
    ] = None,
    signature_from: Annotated[
        Path | None,
        typer.Option(
            "--signature-from",
            help="Input rows (.csv or .parquet, only the model's input columns) to infer the "
            "input signature from, for a model saved without one.",
        ),
    ] = None,
    trainer: Annotated[
        str | None,
        typer.Option(
            help="The function that retrains this model, module:function "
            "(docs/retraining.md says what it is called with).",
        ),
    ] = None,
    label: Annotated[
        str | None,
        typer.Option(help="The label column of its training data, for retraining (default label)."),
    ] = None,
) -> None:
    """Register an MLflow-format scikit-learn or XGBoost model as a new version.

    The model is loaded first and must have a column-based input signature (or take one
    from --signature-from); otherwise nothing is registered. Without --reference the
    version has nothing to compare live traffic with, and its scheduled drift checks are
    skipped.
    """
    from serving.cli.drift import read_frame
    from serving.local import cli_principal
    from workflows.registration import register

    store, registry = ctx.obj.store_and_registry()
    try:
        rows = None if reference is None else read_frame(reference)
        inputs = None if signature_from is None else read_frame(signature_from)
        done = register(
            cli_principal(),
            registry,
            store.audit,
            name,
            source,
            reference=rows,
            signature_from=inputs,
            trainer=trainer,
            label=label,
        )
    except OpsloopError as exc:
        raise fail(exc) from exc
    kept = "" if done.reference_rows is None else f" with a reference of {done.reference_rows} rows"
    err.print(
        f"registered {name} version {done.version.version}{kept}; promote it with 'opsloop models promote'"
    )


@app.command("list")
def models_list(ctx: typer.Context) -> None:
    """List registered models with their champion versions."""
    registry = ctx.obj.registry_reader()
    table = Table("model", "versions", "champion")
    for name in registry.models():
        versions = registry.versions(name)
        champion = next((str(v.version) for v in versions if "champion" in v.aliases), "")
        table.add_row(name, str(len(versions)), champion)
    out.print(table)


@app.command("versions")
def models_versions(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Model name.")]) -> None:
    """List a model's versions with aliases and lineage."""
    registry = ctx.obj.registry_reader()
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
    from serving.local import cli_principal
    from workflows.promotion import promote

    store, registry = ctx.obj.store_and_registry()
    try:
        move = promote(cli_principal(), registry, store.audit, name, version)
    except OpsloopError as exc:
        raise fail(exc) from exc
    err.print(f"{name}: champion {move.before} -> {move.after}")


@app.command("rollback")
def models_rollback(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Model name.")]) -> None:
    """Move champion back to the version it held before its last move."""
    from serving.local import cli_principal
    from workflows.promotion import rollback

    store, registry = ctx.obj.store_and_registry()
    try:
        move = rollback(cli_principal(), registry, store.audit, name)
    except OpsloopError as exc:
        raise fail(exc) from exc
    err.print(f"{name}: champion {move.before} -> {move.after} (rolled back)")


@alias_app.command("unset")
def models_alias_unset(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Argument(help="Alias to remove, e.g. champion.")],
) -> None:
    """Remove an alias; removing champion makes running servers stop serving the model."""
    from serving.local import cli_principal
    from workflows.promotion import unset_alias

    store, registry = ctx.obj.store_and_registry()
    try:
        done = unset_alias(cli_principal(), registry, store.audit, name, alias)
    except OpsloopError as exc:
        raise fail(exc) from exc
    err.print(f"{name}: {alias} unset (it pointed at version {done.before})")
