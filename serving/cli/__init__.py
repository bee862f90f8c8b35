"""The ``opsloop`` command line: one module per command group, combined here.

``opsloop --help`` builds every group, so each module imports only typer, rich and
``opsloop.errors`` at its top; what a command needs (the store, MLflow, FastAPI, the
models) it imports when it runs. ``tests/unit/test_cli_imports.py`` holds this.
"""

from __future__ import annotations

import atexit
import gc
import os
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

from opsloop.errors import OpsloopError
from serving.cli import (
    audit,
    budgets,
    chat,
    config,
    costs,
    demo,
    drift,
    evals,
    experiments,
    jobs,
    keys,
    models,
    prompts,
    rag,
    retrain,
)
from serving.cli.common import State, err, fail

__all__ = ["app"]

app = typer.Typer(
    help="opsloop: serve, watch, evaluate and improve LLMs, RAG and classical models.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(keys.app, name="keys")
app.add_typer(budgets.app, name="budgets")
app.add_typer(audit.app, name="audit")
app.add_typer(models.app, name="models")
app.add_typer(drift.app, name="drift")
app.add_typer(costs.app, name="costs")
app.add_typer(evals.app, name="eval")
app.add_typer(prompts.app, name="prompts")
app.add_typer(experiments.app, name="experiments")
app.add_typer(demo.app, name="demo")
app.add_typer(jobs.app, name="jobs")
app.add_typer(config.app, name="config")
app.command("ingest")(rag.ingest)
app.command("query")(rag.query)
app.command("retrain")(retrain.retrain)
app.command("chat")(chat.chat)
app.add_typer(chat.agents_app, name="agents")


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="YAML settings file (also OPSLOOP_CONFIG).", dir_okay=False),
    ] = None,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home", help="State directory (also OPSLOOP_HOME; default ./.opsloop).", file_okay=False
        ),
    ] = None,
) -> None:
    """Settings come from flags, OPSLOOP_* variables, the --config file, then defaults."""
    state = State(config, home)
    ctx.obj = state
    ctx.call_on_close(state.close)
    # At exit the interpreter collects garbage over every object still alive: 0.2 s of CPU
    # after a store command, 0.7 s after a registry one (MLflow's modules). What the command
    # opened is closed by then (above), so the collector may skip the rest.
    atexit.unregister(gc.freeze)  # once per process, however often the app runs in it (tests)
    atexit.register(gc.freeze)


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (default 8000).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default 1).")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error.")] = None,
) -> None:
    """Run the API server (OpenAPI docs at /docs); stop it with Ctrl-C."""
    state: State = ctx.obj
    # First: it quiets the libraries (serving.logs) before the imports below load any of them.
    settings = state.settings(host=host, port=port, workers=workers, log_level=log_level)

    import uvicorn

    from evals.schedule import parse_jobs
    from opsloop.telemetry import MULTIPROC_ENV
    from serving.app import create_app
    from serving.http_protocol import HttpProtocol
    from serving.local import claim_home
    from serving.logs import serve_log_config
    from serving.platform import Platform
    from serving.shared_store import serve_embedded_store

    try:
        # Migrate and create the first admin key once, before any worker starts.
        parse_jobs(settings.eval_jobs)  # a bad entry stops start-up here, naming it
        home_lock = claim_home(settings)  # noqa: F841 - held while this process serves
        platform = Platform.build(settings).start_store()
        admin_key = platform.ensure_admin_key()
        if settings.workers > 1:  # MLflow creates its tables on first use: once, not in a race
            platform.start_registry()
        platform.close()
    except OpsloopError as exc:
        raise fail(exc) from exc
    if admin_key is not None:
        err.print(f"[bold green]Created the first admin key[/]: {admin_key} (mode 0600)")
    err.print(f"opsloop on http://{settings.host}:{settings.port}  (docs: /docs, state: {settings.home})")
    if settings.workers == 1:
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            http=HttpProtocol,
            log_level=settings.log_level,
            log_config=serve_log_config(settings.log_level),
        )
        return
    # Workers rebuild Settings from the environment and share metrics through files.
    metrics_dir = settings.home / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ.update(settings.env())
    os.environ[MULTIPROC_ENV] = str(metrics_dir)
    with ExitStack() as held:
        if settings.vector_store == "edge":  # this process holds it; every worker uses it
            try:
                os.environ.update(held.enter_context(serve_embedded_store(settings)))
            except OpsloopError as exc:
                raise fail(exc) from exc
        uvicorn.run(
            "serving.app:create_app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            http=HttpProtocol,
            log_level=settings.log_level,
            log_config=serve_log_config(settings.log_level),
        )
