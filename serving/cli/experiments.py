"""``opsloop experiments``: start, list, show, stop, promote, roll back and approve experiments.

Thin adapters over :class:`workflows.experiments.service.ExperimentService`, called as the
local CLI operator. The CLI writes to the shared store; a running ``opsloop serve`` picks a
new experiment up within ``experiment_poll_seconds`` and its decider judges it from then on.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from opsloop.errors import OpsloopError
from serving.cli.common import err, fail, out

if TYPE_CHECKING:
    from workflows.experiments.service import ExperimentReport, ExperimentService

app = typer.Typer(
    help="A/B tests, canaries and shadow experiments that promote or roll back by themselves.",
    no_args_is_help=True,
)

Format = Literal["table", "json"]
FormatOption = Annotated[Format, typer.Option("--format", help="table or json.")]
NameArg = Annotated[str, typer.Argument(help="Experiment name.")]
_VERSUS = {"model": "--challenger", "prompt": "--candidate", "route": "--challenger-route"}


def _service(ctx: typer.Context) -> ExperimentService:
    platform, _ = ctx.obj.registry()
    return platform.experiments.service


def _store_service(ctx: typer.Context) -> ExperimentService:
    """The service over the store alone: MLflow (seconds to import) stays unloaded.

    Enough to read, stop and roll back any experiment, and to start and promote one on a
    route; a model's or prompt's registry is needed only to start or promote theirs.
    """
    from opsloop.llm.aliases import RouteAliases
    from opsloop.registry import Registry
    from workflows.experiments.labels import LabelSource
    from workflows.experiments.service import ExperimentService
    from workflows.experiments.store import ExperimentStore

    store = ctx.obj.store()
    settings = store.settings
    unstarted = Registry(settings.tracking_uri, settings.artifact_root)  # none of this starts it
    return ExperimentService(
        ExperimentStore(store.db),
        unstarted,
        store.audit,
        LabelSource(store.db),
        None,
        routes=RouteAliases(store.db),
        llm_routes=settings.llm_routes,
    )


def _print(report: ExperimentReport, fmt: Format) -> None:
    if fmt == "json":
        out.print_json(json.dumps(asdict(report)))
        return
    from rich.table import Table

    target = f"{report.target['kind']} {report.target['name']}"
    step = f", step {report.step + 1}/{len(report.steps)}" if report.steps else ""
    out.print(f"[bold]{report.name}[/]: {report.kind} on {target}, {report.status}{step}")
    columns = ["variant", "version", "weight%", "requests", "errors", "p50 ms", "p99 ms", "feedback"]
    costed = any(v.cost_per_request for v in report.variants)  # routes and priced backends
    if costed:
        columns.insert(-1, "USD/request")
    table = Table(*columns, **_compact())
    for v in report.variants:
        accuracy = "" if v.accuracy is None else f"{v.accuracy:.3f} (n={v.labelled})"
        if v.answer_score is not None:
            accuracy = f"score {v.answer_score:.3f} (n={v.labelled})"
        if v.agreement is not None:
            accuracy = f"agrees {v.agreement:.1%}"
        numbers = [v.requests, v.errors, _ms(v.p50_ms), _ms(v.p99_ms)]
        if costed:
            numbers.append(f"{v.cost_per_request:.3g}")
        table.add_row(v.name, v.version, f"{v.weight:g}", *map(str, numbers), accuracy)
    out.print(table)
    for test in report.tests:
        out.print(f"  {test.get('summary', test)}", highlight=False)
    if report.decision:
        d = report.decision
        out.print(f"decision: [bold]{d['action']}[/] at {d['at']}: {d['reason']}", highlight=False)


def _compact() -> dict[str, Any]:
    from rich import box

    return {"box": box.SIMPLE_HEAD, "padding": 0, "collapse_padding": True, "pad_edge": False}


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _act(ctx: typer.Context, action: str, name: str, fmt: Format) -> None:
    from serving.local import cli_principal

    service = _store_service(ctx)
    caller = cli_principal()
    try:
        if action in ("promote", "approve") and service.get(caller, name).target_kind != "route":
            service = _service(ctx)  # it moves a registry alias
        getattr(service, action)(caller, name)
        report = service.show(caller, name)
    except OpsloopError as exc:
        raise fail(exc) from exc
    _print(report, fmt)


@app.command("create")
def create(
    ctx: typer.Context,
    name: NameArg,
    model: Annotated[str | None, typer.Option(help="Experiment on this model's champion.")] = None,
    challenger: Annotated[str | None, typer.Option(help="The model version (or route) to try.")] = None,
    prompt: Annotated[
        str | None, typer.Option(help="Experiment on this prompt's production version.")
    ] = None,
    candidate: Annotated[str | None, typer.Option(help="The prompt version to try.")] = None,
    route: Annotated[str | None, typer.Option(help="Experiment on this LLM route.")] = None,
    challenger_route: Annotated[str | None, typer.Option(help="The route to try instead.")] = None,
    kind: Annotated[
        Literal["ab", "canary", "shadow"] | None,
        typer.Option(help="ab, canary or shadow (default canary; ab with --eval-dataset)."),
    ] = None,
    steps: Annotated[str, typer.Option(help="canary: the challenger's weights in percent.")] = "5,25,50,100",
    weight: Annotated[
        float | None, typer.Option(help="ab: the challenger's share in percent (default 50).")
    ] = None,
    primary: Annotated[
        str | None,
        typer.Option(
            help="The metric an ab test decides on"
            " (default: accuracy for a model, answer_score for a prompt).",
        ),
    ] = None,
    guardrail: Annotated[
        list[str] | None,
        typer.Option(help="METRIC:MARGIN, e.g. error_rate:0.01 or p99_ms:+20% (repeatable)."),
    ] = None,
    min_samples: Annotated[
        int, typer.Option(min=1, help="Requests per variant before a step or decision.")
    ] = 200,
    require_approval: Annotated[
        bool, typer.Option("--require-approval", help="Wait for 'experiments approve' before promoting.")
    ] = False,
    eval_dataset: Annotated[
        Path | None,
        typer.Option(
            "--eval-dataset",
            dir_okay=False,
            help="prompt ab: decide by an eval run per variant on this data set (JSON Lines)"
            " instead of feedback; --primary eval:METRIC (default eval:semantic_similarity).",
        ),
    ] = None,
    eval_collection: Annotated[
        str | None, typer.Option("--eval-collection", help="Collection the eval's questions are asked of.")
    ] = None,
    eval_limit: Annotated[
        int | None, typer.Option("--eval-limit", min=2, help="Only the data set's first N questions.")
    ] = None,
    eval_route: Annotated[
        str | None, typer.Option("--eval-route", help="Gateway route that answers (default rag_llm_route).")
    ] = None,
    eval_judge: Annotated[
        str | None, typer.Option("--eval-judge", help="Gateway route of the judge, for judge metrics.")
    ] = None,
    fmt: FormatOption = "table",
) -> None:
    """Start an experiment: the challenger gets its share of traffic within a second.

    A prompt's ab test can be decided by an eval instead of feedback: with --eval-dataset the
    server runs the data set once per prompt version and promotes the candidate only if it
    scores significantly better, question by question (docs/experiments.md).
    """
    from serving.platform import cli_principal
    from workflows.experiments.service import ExperimentPlan

    targets = [
        ("model", model, challenger),
        ("prompt", prompt, candidate),
        ("route", route, challenger_route),
    ]
    chosen = [(k, t, c) for k, t, c in targets if t is not None]
    if len(chosen) != 1:
        err.print(
            "name one target: --model M --challenger V, --prompt P --candidate V,"
            " or --route R --challenger-route R2"
        )
        raise typer.Exit(code=2)
    target_kind, target, versus = chosen[0]
    if versus is None:
        err.print(f"--{target_kind} needs {_VERSUS[target_kind]}: the variant to try")
        raise typer.Exit(code=2)
    try:
        parsed_steps = [float(s) for s in steps.split(",")]
    except ValueError:
        err.print(f"--steps {steps!r}: comma-separated percentages, e.g. 5,25,50,100")
        raise typer.Exit(code=2) from None
    service = _store_service(ctx) if target_kind == "route" else _service(ctx)
    caller = cli_principal()
    evaluation = None
    if eval_dataset is not None or eval_collection is not None:
        evaluation = {
            "dataset": str(eval_dataset or ""),
            "collection": eval_collection,
            "limit": eval_limit,
            "route": eval_route,
            "judge": eval_judge,
        }
    plan = ExperimentPlan(
        name=name,
        kind=kind or ("ab" if evaluation else "canary"),
        target_kind=target_kind,  # type: ignore[arg-type]
        target=target,
        challenger=versus,
        weight=weight,
        steps=parsed_steps,
        primary=primary,
        guardrails=guardrail or [],
        min_samples=min_samples,
        require_approval=require_approval,
        evaluation=evaluation,
    )
    try:
        service.create(caller, plan)
        report = service.show(caller, name)
    except OpsloopError as exc:
        raise fail(exc) from exc
    _print(report, fmt)


@app.command("list")
def list_(ctx: typer.Context, fmt: FormatOption = "table") -> None:
    """Experiments, newest first."""
    from rich.table import Table

    from serving.local import cli_principal

    service = _store_service(ctx)
    caller = cli_principal()
    experiments = service.experiments(caller)
    if fmt == "json":
        out.print_json(json.dumps([_brief(e) for e in experiments]))
        return
    table = Table("name", "kind", "target", "status", "versions", "weight%", "created", **_compact())
    for e in experiments:
        versions = f"{e.champion} vs {e.challenger}"
        created = e.created_at.strftime("%m-%d %H:%M")
        table.add_row(e.name, e.kind, e.target, e.status, versions, f"{e.weight:g}", created)
    out.print(table)


def _brief(e: Any) -> dict[str, Any]:
    return {
        "name": e.name,
        "kind": e.kind,
        "target": {"kind": e.target_kind, "name": e.target},
        "status": e.status,
        "champion": e.champion,
        "challenger": e.challenger,
        "weight": e.weight,
        "created_at": e.created_at.isoformat(),
        "decision": e.decision,
    }


@app.command("show")
def show(ctx: typer.Context, name: NameArg, fmt: FormatOption = "table") -> None:
    """An experiment's variants, latest tests and decision."""
    from serving.local import cli_principal

    service = _store_service(ctx)
    try:
        report = service.show(cli_principal(), name)
    except OpsloopError as exc:
        raise fail(exc) from exc
    _print(report, fmt)


@app.command("stop")
def stop(ctx: typer.Context, name: NameArg, fmt: FormatOption = "table") -> None:
    """End the experiment without a verdict; the champion takes all traffic."""
    _act(ctx, "stop", name, fmt)


@app.command("promote")
def promote(ctx: typer.Context, name: NameArg, fmt: FormatOption = "table") -> None:
    """Make the challenger the champion now and end the experiment."""
    _act(ctx, "promote", name, fmt)


@app.command("rollback")
def rollback(ctx: typer.Context, name: NameArg, fmt: FormatOption = "table") -> None:
    """Send all traffic back to the champion and end the experiment."""
    _act(ctx, "rollback", name, fmt)


@app.command("approve")
def approve(ctx: typer.Context, name: NameArg, fmt: FormatOption = "table") -> None:
    """Carry out a promotion that waits for approval (--require-approval)."""
    _act(ctx, "approve", name, fmt)
