"""``opsloop retrain MODEL``: one retraining of a model now, with its steps shown as they go.

It runs in this process on the same store and registry as ``opsloop serve`` (a running server
picks up the hand-off: the canary experiment, or the moved champion alias); the store's lease
keeps it from racing a retraining the server started. ``--history`` lists the runs instead.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from opsloop.errors import OpsloopError
from serving.cli.common import err, fail, out

if TYPE_CHECKING:
    from workflows.retraining.pipeline import RetrainResult
    from workflows.retraining.store import RetrainingRecord

__all__ = ["retrain"]


def retrain(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Registered model name, e.g. credit-risk.")],
    window: Annotated[
        str | None,
        typer.Option(help="Labelled production rows from this long back (30m, 24h, 7d; all: every one)."),
    ] = None,
    trials: Annotated[
        int | None, typer.Option(min=1, help="Most hyperparameter trials (default 20).")
    ] = None,
    time_budget: Annotated[
        str | None, typer.Option(help="How long the hyperparameter search may take, e.g. 60s or 5m.")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Labelled rows to retrain on instead of the production window (.csv or .parquet "
            "with the model's inputs and its label column); validated the same way.",
            dir_okay=False,
        ),
    ] = None,
    handoff: Annotated[
        bool, typer.Option("--handoff/--no-handoff", help="Hand a better challenger to serving.")
    ] = True,
    promote: Annotated[
        bool, typer.Option(help="Promote a better challenger directly instead of starting a canary.")
    ] = False,
    history: Annotated[bool, typer.Option(help="List this model's retraining runs instead.")] = False,
    output: Annotated[Literal["text", "json"], typer.Option("--format", help="text or json.")] = "text",
) -> None:
    """Retrain MODEL on its labelled production rows and hand a better challenger to serving.

    Rows: the champion's training rows (weighted down) and every labelled prediction in --window.

    Validation: below the quality threshold, or any check failing, the run is refused with the report.

    Search: the model's trainer under optuna, within --trials and --time-budget.

    Comparison: challenger and champion on the newest labelled rows, a paired bootstrap interval.

    Only a better challenger is registered (with a model card), then handed to a canary experiment.

    One MLflow run holds it all. Exit status 1 when the run failed (refused, not_better: 0).
    """
    ctx.obj.settings()  # first: it quiets the libraries before the imports below load them
    from opsloop.durations import parse_duration
    from serving.local import cli_principal

    if history:
        store = ctx.obj.store()
        from workflows.retraining.store import RetrainingStore

        _print_history(RetrainingStore(store.db).history(model), output)
        return
    mode: Literal["canary", "promote", "none"] = "none" if not handoff else "promote" if promote else "canary"
    started = time.perf_counter()
    with err.status("opening the store and the registry") as status:

        def step(name: str, message: str) -> None:
            err.print(
                f"{time.perf_counter() - started:6.1f} s  {name:<8} {message}",
                highlight=False,
                soft_wrap=True,
            )
            status.update(f"{name}: {message}")

        try:
            platform, _ = ctx.obj.registry()
            budget = (
                None
                if time_budget is None
                else parse_duration(time_budget, field="time_budget").total_seconds()
            )
            request = platform.retraining.request(
                model, window=window, trials=trials, time_budget=budget, data=data, handoff=mode
            )
            result = platform.retraining.retrainer.retrain(cli_principal(), request, progress=step)
        except OpsloopError as exc:
            raise fail(exc) from exc
    if output == "json":
        out.print_json(json.dumps(result.to_dict()))
    else:
        _print_result(result)
    if result.status == "failed":
        raise typer.Exit(code=1)


def _print_result(result: RetrainResult) -> None:
    head = {
        "registered": f"[green]registered[/] version {result.version} (parent {result.parent_version})",
        "not_better": f"[yellow]not better[/] than version {result.parent_version}: nothing changed",
        "refused": "[red]refused[/]: the new data failed validation, nothing was trained",
        "failed": f"[red]failed[/]: {result.reason}",
    }[result.status]
    out.print(f"retraining {result.model} (run {result.run}, {result.seconds:.1f} s): {head}")
    data = result.data
    if data:
        counts = data.get("counts", {})
        out.print(
            f"  data     {data.get('rows')} rows: {counts.get('reference', 0)} reference, "
            f"{counts.get('production', 0)} production, {counts.get('data', 0)} from --data; "
            f"{counts.get('holdout', 0)} held out"
            + ("" if counts.get("data") else f" ({data.get('window')})"),
            highlight=False,
        )
        out.print(f"  hash     {data.get('hash')}", highlight=False)
    if result.validation is not None:
        score, threshold = result.validation["score"], result.validation["threshold"]
        out.print(f"  quality  {score:.1%} (threshold {threshold:.1%})", highlight=False)
        for failure in data.get("failures", []):
            out.print(f"    [red]x[/] {failure}", highlight=False)
    metrics = result.metrics
    if metrics:
        ci = metrics["ci"]
        out.print(
            f"  metric   {metrics['metric']} champion {metrics['champion']:.4f}, challenger "
            f"{metrics['challenger']:.4f} (better by {metrics['delta']:+.4f}, "
            f"95% CI {ci[0]:+.4f}..{ci[1]:+.4f}) on {metrics['holdout_rows']} holdout rows",
            highlight=False,
        )
    if result.reason and result.status == "not_better":
        out.print(f"  why      {result.reason}", highlight=False)
    if result.model_card:
        out.print(f"  card     {result.model_card}", highlight=False)
    if result.handoff:
        handoff = result.handoff
        said = handoff.get("error") or handoff.get("message") or _handoff_line(handoff)
        out.print(f"  handoff  {handoff.get('mode')}: {said}", highlight=False)
    if result.mlflow_run_id:
        out.print(f"  mlflow   run {result.mlflow_run_id}", highlight=False)


def _handoff_line(handoff: dict[str, Any]) -> str:
    if handoff.get("experiment"):
        return f"canary {handoff['experiment']} (opsloop experiments show {handoff['experiment']})"
    return f"champion {handoff.get('before')} -> {handoff.get('after')}"


def _print_history(records: list[RetrainingRecord], output: str) -> None:
    if output == "json":
        out.print_json(json.dumps([record.to_dict() for record in records]))
        return
    from rich.table import Table

    table = Table("run", "started (UTC)", "trigger", "status", "version", "why", box=None)
    for record in records:
        result = record.result or {}
        failures = (result.get("data") or {}).get("failures") or []
        reason = failures[0] if failures else result.get("reason") or result.get("error") or ""
        version = "" if record.version is None else str(record.version)
        status = record.status if record.status != "running" else f"running ({record.step})"
        started = record.started_at.strftime("%m-%d %H:%M:%S")
        # The first reason, shortened: the whole report is in --format json and the MLflow run.
        table.add_row(str(record.id), started, record.trigger, status, version, reason[:70])
    out.print(table)
