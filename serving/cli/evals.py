"""``opsloop eval``: run eval sets through the RAG pipeline, list and compare runs, gate, schedules.

``eval run`` works on this home's vector store in this process, unless an ``opsloop serve`` holds
the embedded store: then, like ``opsloop query``, it hands the run to that server
(``POST /admin/evals/runs``, ``serving.cli.remote``) and prints the same report. Exit codes:
0 done (and the gate passed), 1 an error, 3 the gate found a regression.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from opsloop.errors import InvalidInputError, OpsloopError
from serving.cli.common import State, err, fail, out

if TYPE_CHECKING:
    from evals.dataset import EvalDataset
    from evals.gate import GateReport, GateRule
    from evals.results import MetricSummary
    from evals.runner import EvalConfig
    from evals.schedule import EvalJob, JobStatus
    from evals.tracking import EvalRunInfo
    from opsloop.settings import Settings
    from serving.cli.remote import ServerRag
    from serving.routers.evals import EvalRunPublic, EvalTaskPublic

__all__ = ["GATE_EXIT_CODE", "app"]

GATE_EXIT_CODE = 3

app = typer.Typer(help="Evaluate the RAG pipeline on labelled question sets.", no_args_is_help=True)
schedule_app = typer.Typer(help="Scheduled eval jobs (eval_jobs in the settings).", no_args_is_help=True)
app.add_typer(schedule_app, name="schedule")

FormatOption = Annotated[Literal["text", "json"], typer.Option("--format", "-f", help="text or json.")]
GateOption = Annotated[
    list[str] | None,
    typer.Option(
        "--gate",
        help="Gate on METRIC or METRIC:MAX_DROP (repeatable); default: hit_rate, mrr, semantic_similarity, "
        "rouge_score and the judge metrics.",
    ),
]


def _rules(gate: list[str] | None) -> tuple[GateRule, ...]:
    from evals.gate import DEFAULT_GATE, parse_rule

    if not gate:
        return DEFAULT_GATE
    try:
        return tuple(parse_rule(rule) for rule in gate)
    except ValueError as exc:
        raise fail(InvalidInputError(str(exc), field="gate")) from exc


def _bars() -> Progress:
    """Progress bars of a run's stages on stderr: the stage, samples done of the total, time."""
    return Progress(
        TextColumn("[bold]{task.description}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


@contextlib.contextmanager
def _progress_bar(label: str) -> Iterator[Any]:
    """A stage of a run in this process (an ``evals.runs.Stage``): its bar, moved by each sample."""
    with _bars() as progress:
        task = progress.add_task(label, total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield advance


@contextlib.contextmanager
def _task_bars() -> Iterator[Callable[[EvalTaskPublic], None]]:
    """The bars of a run in the server: one per stage, moved to where each poll finds the task.

    Notices the server gives (a baseline evaluated first) are printed as they come.
    """
    with _bars() as progress:
        bars: dict[str, TaskID] = {}
        shown = 0

        def show(task: EvalTaskPublic) -> None:
            nonlocal shown
            for notice in task.notices[shown:]:
                err.print(notice, highlight=False)
            shown = len(task.notices)
            if task.stage not in bars:
                bars[task.stage] = progress.add_task(task.stage, total=task.total)
            progress.update(bars[task.stage], completed=task.done, total=task.total)

        yield show


@app.command("run")
def run(
    ctx: typer.Context,
    dataset: Annotated[Path, typer.Option("--dataset", help="Eval set (JSON Lines).", dir_okay=False)],
    collection: Annotated[str, typer.Option("--collection", help="Collection the questions are asked of.")],
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant that owns the collection.")] = "default",
    prompt_version: Annotated[
        str | None,
        typer.Option("--prompt-version", help="Answer prompt alias or version (default production)."),
    ] = None,
    route: Annotated[
        str | None,
        typer.Option("--route", help="Gateway route that answers (default: the in-process model)."),
    ] = None,
    top_k: Annotated[
        int | None, typer.Option("--top-k", min=1, max=50, help="Chunks per question (default rag_top_k).")
    ] = None,
    judge: Annotated[
        str | None, typer.Option("--judge", help="Gateway route of the LLM judge; adds the judge metrics.")
    ] = None,
    generate: Annotated[
        bool, typer.Option("--generate/--no-generate", help="--no-generate: retrieval metrics only, no LLM.")
    ] = True,
    max_answer_tokens: Annotated[
        int,
        typer.Option("--max-answer-tokens", min=1, help="Cap of each answer (small: CPU models are slow)."),
    ] = 64,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N questions.")] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="Only questions with this tag (repeatable).")
    ] = None,
    metric: Annotated[
        list[str] | None, typer.Option("--metric", help="Only these metrics (repeatable).")
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, max=64, help="Questions in flight.")
    ] = 2,
    judge_max_tokens: Annotated[int, typer.Option("--judge-max-tokens", min=16)] = 512,
    judge_timeout: Annotated[
        float, typer.Option("--judge-timeout", min=1.0, help="Seconds per judge call.")
    ] = 120.0,
    judge_retries: Annotated[int, typer.Option("--judge-retries", min=0, max=10)] = 2,
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline", help="Prompt alias to compare with, e.g. production; exit 3 on a regression."
        ),
    ] = None,
    gate: GateOption = None,
    resume: Annotated[
        str,
        typer.Option(
            "--resume", help="auto (continue a killed run with these settings), never, or a run id."
        ),
    ] = "auto",
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", min=1.0, help="While opsloop serve holds the store: seconds to wait for its answer."
        ),
    ] = 86400.0,
    format_: FormatOption = "text",
) -> None:
    """Run DATASET through the RAG pipeline and score it; the run is tracked in MLflow.

    Retrieval metrics (hit rate, MRR, ragas' non-LLM context precision and recall) always run;
    answer metrics (ROUGE, BLEU, string and semantic similarity) unless --no-generate; the
    ragas judge metrics with --judge. A killed run is resumed by running the same command.
    While an ``opsloop serve`` holds this home's vector store, the server runs it.
    """
    from evals.dataset import load_dataset
    from evals.runs import eval_config

    state: State = ctx.obj
    settings = state.settings()
    rules = _rules(gate)
    options: dict[str, Any] = {
        "collection": collection,
        "prompt_version": prompt_version,
        "route": route,
        "top_k": top_k,
        "judge": judge,
        "generate": generate,
        "max_answer_tokens": max_answer_tokens,
        "metrics": metric,
        "concurrency": concurrency,
        "judge_max_tokens": judge_max_tokens,
        "judge_timeout": judge_timeout,
        "judge_retries": judge_retries,
    }
    try:
        data = load_dataset(dataset).subset(limit=limit, tags=tag or ())
        if not data.items:
            raise InvalidInputError(f"no question of {dataset} has the tags {tag}", field="tag")
        config = eval_config(default_top_k=settings.rag_top_k, **options)
        config.metric_names()  # an unknown or unavailable metric fails before anything loads
        server = _server(settings, tenant, timeout)
    except OpsloopError as exc:
        raise fail(exc) from exc
    if server is not None:
        request = {**options, "baseline": baseline, "gate": gate, "resume": resume}
        done = _run_remote(server, data, request, timeout)
    else:
        done = _run_local(state, data, config, tenant, resume=resume, baseline=baseline, rules=rules)
    if format_ == "json":
        out.print_json(data=_run_json(done))
    else:
        _print_run(done, collection, baseline)
    if done.gate is not None and not done.gate.passed:
        raise typer.Exit(code=GATE_EXIT_CODE)


def _server(settings: Settings, tenant: str, timeout: float) -> ServerRag | None:
    """The server to hand the run to, when one holds the embedded store."""
    from serving.cli.remote import ServerRag
    from serving.local import cli_actor

    if settings.vector_store != "edge":
        return None
    server = ServerRag.find(settings.home, tenant=tenant, actor=cli_actor())
    if server is not None:
        err.print(
            f"opsloop serve at {server.url} holds the vector store; the server runs this eval "
            f"(waiting up to {timeout:.0f} s)",
            highlight=False,
            soft_wrap=True,
        )
    return server


def _dataset_body(data: EvalDataset) -> dict[str, Any]:
    """The data set as ``POST /admin/evals/runs`` takes it: the server hashes it as this process did."""
    return {
        "name": data.name,
        "path": data.path,
        "sha256": data.sha256,
        "items": [item.to_dict() for item in data.items],
    }


def _run_remote(
    server: ServerRag, data: EvalDataset, request: dict[str, Any], timeout: float
) -> EvalRunPublic:
    """The run in the server."""
    try:
        with server, _task_bars() as show:
            body = {**request, "dataset": _dataset_body(data)}
            return server.run_eval(body, timeout=timeout, progress=show)
    except OpsloopError as exc:
        raise fail(exc) from exc


def _run_local(
    state: State,
    data: EvalDataset,
    config: EvalConfig,
    tenant: str,
    *,
    resume: str,
    baseline: str | None,
    rules: tuple[GateRule, ...],
) -> EvalRunPublic:
    """The run (and its baseline) in this process, for ``tenant``, with a progress bar on stderr."""
    from serving.eval_wiring import eval_runs
    from serving.local import cli_principal
    from serving.routers.evals import EvalRunPublic

    platform = state.platform()
    try:
        result = asyncio.run(
            eval_runs(platform).run(
                cli_principal(tenant),
                data,
                config,
                resume=resume,
                baseline=baseline,
                rules=rules,
                stage=_progress_bar,
                notice=err.print,
            )
        )
    except OpsloopError as exc:
        raise fail(exc) from exc
    finally:
        platform.close()
    return EvalRunPublic.of(result)


def _run_json(done: EvalRunPublic) -> dict[str, Any]:
    """What ``--format json`` prints: the run without its cost and baseline flag, and no gate without one."""
    hidden = {"cost_usd", "baseline_ran"} | ({"gate"} if done.gate is None else set())
    return done.model_dump(mode="json", exclude=hidden)


def _print_run(done: EvalRunPublic, collection: str, baseline: str | None) -> None:
    """A run's report for a person (run here or by the server)."""
    params = done.params
    prompt_text = "retrieval only" if params["prompt"] == "none" else f"prompt v{params['prompt']}"
    title = f"eval {done.dataset} on {collection}: {prompt_text}, top_k {params['top_k']}"
    out.print(_summary_table(done.summaries, title))
    resumed = f" ({done.resumed_samples} resumed)" if done.resumed_samples else ""
    out.print(
        f"{done.samples} samples{resumed} in {done.seconds:.1f} s; "
        f"cost ${done.cost_usd:.6f}; run {done.run_id}",
        highlight=False,
    )
    if done.gate is not None:
        report = done.gate.report()
        out.print(_gate_table(report, f"gate against {baseline} (run {done.gate.baseline_run})"))
        _print_verdict(report)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _summary_table(summaries: Mapping[str, MetricSummary], title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric", overflow="fold")
    table.add_column("mean", justify="right", no_wrap=True)
    table.add_column("95% CI", justify="right", no_wrap=True)
    table.add_column("scored", justify="right", no_wrap=True, min_width=6)
    table.add_column("failed", justify="right", min_width=6)
    table.add_column("undef.", justify="right", no_wrap=True, min_width=6)
    for name, s in summaries.items():
        digits = 0 if name == "latency_ms" else (5 if name == "cost_usd" else 3)
        ci = "-" if s.ci_low is None else f"{_fmt(s.ci_low, digits)}-{_fmt(s.ci_high, digits)}"
        failed = str(s.failed)
        if s.failures:
            failed += " (" + ", ".join(f"{k} {v}" for k, v in s.failures.items()) + ")"
        table.add_row(name, _fmt(s.mean, digits), ci, str(s.scored), failed, str(s.undefined))
    return table


def _gate_table(report: GateReport, title: str) -> Table:
    table = Table(title=title)
    for column in (
        "metric",
        "candidate",
        "baseline",
        "delta",
        f"{report.confidence:.0%} CI",
        "pairs",
        "verdict",
    ):
        table.add_column(column, justify="left" if column in ("metric", "verdict") else "right")
    colours = {"regressed": "red", "improved": "green", "no_change": "", "no_data": "dim"}
    for c in report.comparisons:
        ci = "-" if c.ci_low is None else f"[{c.ci_low:+.3f}, {c.ci_high:+.3f}]"
        delta = "-" if c.delta is None else f"{c.delta:+.3f}"
        verdict = c.verdict + ("" if c.gated else " (not gated)")
        colour = colours[c.verdict]
        table.add_row(
            c.metric,
            _fmt(c.candidate_mean),
            _fmt(c.baseline_mean),
            delta,
            ci,
            str(c.pairs),
            f"[{colour}]{verdict}[/]" if colour else verdict,
        )
    return table


def _print_verdict(report: GateReport) -> None:
    if report.passed:
        out.print("[green]gate passed[/]: no gated metric regressed significantly")
    else:
        names = ", ".join(c.metric for c in report.regressions)
        out.print(f"[red]gate failed[/]: {names} regressed significantly")


@app.command("list")
def list_runs(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Newest N runs.")] = 20,
    format_: FormatOption = "text",
) -> None:
    """List eval runs, newest first (they are MLflow runs in the opsloop-evals experiment)."""
    runs = _with_tracker(ctx, lambda tracker: tracker.runs(limit=limit))
    if format_ == "json":
        out.print_json(data=[_run_dict(run) for run in runs])
        return
    table = Table(title="eval runs (every param: --format json)", box=box.SIMPLE, pad_edge=False)
    for column in ("run", "started", "status", "prompt", "hit", "sem"):
        table.add_column(column, no_wrap=True, min_width=4)
    table.add_column("gate")
    for run in runs:
        table.add_row(
            run.run_id,
            _started(run),
            {"FINISHED": "done"}.get(run.status, run.status.lower()),
            run.params.get("prompt", ""),
            _fmt(run.metrics.get("hit_rate"), 2),
            _fmt(run.metrics.get("semantic_similarity"), 2),
            run.tags.get("opsloop.eval.gate", ""),
        )
    out.print(table)


@app.command("show")
def show(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="The eval run's id (see eval list).")],
    samples: Annotated[bool, typer.Option("--samples", help="Also print every sample.")] = False,
    format_: FormatOption = "text",
) -> None:
    """Show one eval run: its settings, metric means with intervals, failures and samples."""

    def read(tracker: Any) -> tuple[EvalRunInfo, list[Any]]:
        info = tracker.get(run_id)
        return info, (tracker.samples(run_id) if samples or format_ == "json" else [])

    info, rows = _with_tracker(ctx, read)
    if format_ == "json":
        out.print_json(data={**_run_dict(info), "samples": [s.to_dict() for s in rows]})
        return
    out.print(f"run {info.run_id} ({info.name}): {info.status}, started {_started(info)}", highlight=False)
    out.print(", ".join(f"{k}={v}" for k, v in sorted(info.params.items())), highlight=False, markup=False)
    out.print(_summary_table(_summaries(info), "metrics"))
    if info.tags.get("opsloop.eval.gate"):
        out.print(f"gate: {info.tags['opsloop.eval.gate']}", highlight=False)
    for sample in rows:
        scores = ", ".join(f"{k}={v:.3f}" for k, v in sample.scores.items())
        out.print(
            f"- {sample.question}\n  answer: {sample.answer!r}\n  {scores}", highlight=False, markup=False
        )


@app.command("compare")
def compare_runs(
    ctx: typer.Context,
    candidate: Annotated[str, typer.Argument(help="The candidate run's id.")],
    baseline: Annotated[str, typer.Argument(help="The baseline run's id.")],
    gate: GateOption = None,
    format_: FormatOption = "text",
) -> None:
    """Compare two finished runs per metric (paired bootstrap); exit 3 when a gated metric regresses."""
    from serving.eval_wiring import eval_runs

    rules = _rules(gate)
    state: State = ctx.obj
    platform = state.platform()
    try:
        report = eval_runs(platform).service.compare(candidate, baseline, rules=rules)
    except OpsloopError as exc:
        raise fail(exc) from exc
    finally:
        platform.close()
    if format_ == "json":
        out.print_json(data={"candidate_run": candidate, "baseline_run": baseline, **report.to_dict()})
    else:
        out.print(_gate_table(report, f"{candidate} against {baseline}"))
        _print_verdict(report)
    if not report.passed:
        raise typer.Exit(code=GATE_EXIT_CODE)


def _with_tracker(ctx: typer.Context, action: Any) -> Any:
    from evals.tracking import EvalTracker

    state: State = ctx.obj
    settings = state.settings()
    try:
        return action(EvalTracker(settings.tracking_uri, settings.artifact_root).start())
    except OpsloopError as exc:
        raise fail(exc) from exc


def _summaries(info: EvalRunInfo) -> dict[str, MetricSummary]:
    from evals.results import MetricSummary

    summaries = {}
    for name in info.metric_names():
        s = info.summary(name)
        summaries[name] = MetricSummary(
            name=name,
            mean=s["mean"],
            ci_low=s["ci_low"],
            ci_high=s["ci_high"],
            scored=int(s["scored"] or 0),
            failed=int(s["failed"] or 0),
            undefined=int(s["undefined"] or 0),
            not_applicable=0,
            failures={},
        )
    return summaries


def _started(run: EvalRunInfo) -> str:
    if run.start_ms is None:
        return ""
    return datetime.fromtimestamp(run.start_ms / 1000, tz=UTC).astimezone().strftime("%m-%d %H:%M")


def _run_dict(run: EvalRunInfo) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "name": run.name,
        "status": run.status,
        "start_ms": run.start_ms,
        "end_ms": run.end_ms,
        "params": run.params,
        "summaries": {name: run.summary(name) for name in run.metric_names()},
        "gate": run.tags.get("opsloop.eval.gate"),
    }


# -- schedules ---------------------------------------------------------------------------------------


def _jobs(ctx: typer.Context) -> list[EvalJob]:
    from evals.schedule import parse_jobs

    state: State = ctx.obj
    try:
        return parse_jobs(state.settings().eval_jobs)
    except OpsloopError as exc:
        raise fail(exc) from exc


@schedule_app.command("list")
def schedule_list(ctx: typer.Context, format_: FormatOption = "text") -> None:
    """List the configured eval jobs and when each fires next (UTC)."""
    from evals.schedule import next_fire_times

    jobs = _jobs(ctx)
    rows = []
    for job in jobs:
        fires = next_fire_times(job)
        rows.append(
            {
                "name": job.name,
                "cron": job.cron,
                "next_run": fires[0].isoformat() if fires else None,
                "dataset": str(job.dataset),
                "collection": job.collection,
                "prompt": job.prompt,
                "route": job.route,
                "judge": job.judge,
                "baseline": job.baseline,
            }
        )
    if format_ == "json":
        out.print_json(data=rows)
        return
    if not rows:
        err.print("no eval jobs configured (eval_jobs in the settings)")
        return
    table = Table(title="eval jobs")
    for column in ("name", "cron", "next_run", "dataset", "collection", "prompt", "judge", "baseline"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            *(
                str(row[c] or "")
                for c in ("name", "cron", "next_run", "dataset", "collection", "prompt", "judge", "baseline")
            )
        )
    out.print(table)


@schedule_app.command("trigger")
def schedule_trigger(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The job's name.")],
    format_: FormatOption = "text",
) -> None:
    """Run eval job NAME now and wait for it; exit 3 when its gate fails.

    While an ``opsloop serve`` holds this home's vector store, the server runs it.
    """
    from evals.schedule import EvalScheduler
    from serving.cli.remote import ServerRag
    from serving.eval_wiring import job_executor
    from serving.local import cli_actor, cli_principal

    state: State = ctx.obj
    jobs = _jobs(ctx)
    try:
        server = ServerRag.find(state.settings().home, tenant="default", actor=cli_actor())
        status: JobStatus
        if server is not None:
            with server:
                status = server.trigger_eval(name)
        else:
            platform = state.platform()
            try:
                scheduler = EvalScheduler(
                    jobs, job_executor(platform), platform.metrics.evals, platform.audit
                )
                status = asyncio.run(scheduler.trigger(cli_principal(), name))
            finally:
                platform.close()
    except OpsloopError as exc:
        raise fail(exc) from exc
    body = {"job": name, "outcome": status.last_outcome, "run_id": status.last_run_id}
    if format_ == "json":
        out.print_json(data=body)
    else:
        out.print(json.dumps(body), highlight=False)
    if status.last_outcome == "gate_failed":
        raise typer.Exit(code=GATE_EXIT_CODE)
