"""``opsloop config``: the settings in effect, and whether the components they name answer."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from serving.cli.common import State, err, out

__all__ = ["app"]

app = typer.Typer(
    help="Show the settings in effect and check the components they point at.", no_args_is_help=True
)

FormatOption = Annotated[Literal["table", "json"], typer.Option("--format", "-f", help="table or json.")]


@app.command("check")
def check(
    ctx: typer.Context,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds each component has to answer.")] = 5.0,
    format_: FormatOption = "table",
) -> None:
    """Connect to each configured component (database, MLflow, vector store, Redis, LLM backends).

    Each line says what answered; one that did not names the setting that points at it.
    Exit status 1 when any component is down.
    """
    from rich.table import Table

    from serving.config_check import check_all

    state: State = ctx.obj
    checks = check_all(state.settings(), timeout=timeout)
    down = [c for c in checks if c.status == "down"]
    if format_ == "json":
        out.print_json(data={"ok": not down, "checks": [c.as_dict() for c in checks]})
    else:
        table = Table("component", "status", "target", "detail", title="opsloop config check")
        table.columns[2].overflow = "fold"  # a URL or path is read whole
        colour = {"ok": "green", "down": "red", "skipped": "dim"}
        for c in checks:
            table.add_row(c.component, f"[{colour[c.status]}]{c.status}[/]", c.target, c.detail)
        out.print(table)
        for c in down:
            err.print(f"[red]{c.component} is down[/]: check {c.setting} ({c.target})", highlight=False)
    if down:
        raise typer.Exit(code=1)


@app.command("show")
def show(ctx: typer.Context) -> None:
    """Print the settings in effect as JSON (defaults, the YAML file and OPSLOOP_* merged; secrets masked)."""
    from serving.config_check import masked

    state: State = ctx.obj
    shown = state.settings().model_dump(mode="json")  # SecretStr fields print as ********
    for name in (
        "database_url",
        "mlflow_tracking_uri",
        "mlflow_artifact_root",
        "qdrant_url",
        "pushgateway_url",
    ):
        if shown.get(name):
            shown[name] = masked(shown[name])
    out.print_json(data=shown)
