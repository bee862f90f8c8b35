"""``opsloop jobs``: the periodic jobs (drift checks, eval jobs, retraining), listed or run once.

``opsloop serve`` fires them on its scheduler; in a cluster, Kubernetes CronJobs run
``opsloop jobs run NAME`` against the shared store instead (``scheduler_enabled: false`` in the
replicas). Either way a fire runs once: the process that claims the current slot of the job in
the store runs it, and any other finds it taken (``opsloop.job_runs``). A one-shot run goes over
the registry's champions, where a server goes over the models it has loaded.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from opsloop.errors import NotFoundError, OpsloopError
from serving.cli.common import State, err, fail, out, when

if TYPE_CHECKING:
    from opsloop.scheduler import Job
    from serving.platform import Platform

__all__ = ["app"]

app = typer.Typer(
    help="The periodic jobs (drift checks, eval jobs, retraining): list them, run one once.",
    no_args_is_help=True,
)

FormatOption = Annotated[Literal["table", "json"], typer.Option("--format", "-f", help="table or json.")]


def _jobs(platform: Platform) -> dict[str, Job]:
    """The configured jobs; a one-shot run goes over the registry's champions."""
    runtime = platform.runtime
    return platform.periodic_jobs(lambda: sorted(platform.start_registry().alias_versions(runtime.alias)))


@app.command("list")
def list_jobs(ctx: typer.Context, format_: FormatOption = "table") -> None:
    """List the periodic jobs, their schedule and their last run (whichever process ran it)."""
    from rich.table import Table

    from opsloop.job_runs import JobRuns

    state: State = ctx.obj
    platform = state.platform()
    jobs = _jobs(platform)
    latest = JobRuns(platform.db).latest()
    if format_ == "json":
        rows = [
            {
                "job": name,
                "schedule": _schedule(job),
                "last_run": None if name not in latest else latest[name].as_dict(),
            }
            for name, job in jobs.items()
        ]
        out.print_json(data={"scheduler_enabled": platform.settings.scheduler_enabled, "jobs": rows})
        return
    table = Table("job", "schedule", "last run", "status", "ran in", title="periodic jobs")
    for name, job in jobs.items():
        last = latest.get(name)
        if last is None:
            table.add_row(name, _schedule(job), "-", "-", "-")
        else:
            status = last.status + (f": {last.error}" if last.error else "")
            table.add_row(name, _schedule(job), when(last.started_at), status, last.holder)
    out.print(table)
    if not jobs:
        err.print("no periodic jobs: drift_check_seconds is 0, and no retrain_schedule or eval_jobs is set")
    elif not platform.settings.scheduler_enabled:
        err.print(
            "scheduler_enabled is off: `opsloop serve` runs none of these; run them with `opsloop jobs run`"
        )


@app.command("run")
def run(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The job: drift-checks, retraining or eval:NAME.")],
    force: Annotated[
        bool, typer.Option(help="Run even if another process already ran this slot's fire (not recorded).")
    ] = False,
) -> None:
    """Run job NAME once now, unless another process already ran it in the current slot.

    Exit status 0 when it ran or was already run, 1 when it failed. Meant for Kubernetes CronJobs.
    """
    from opsloop.job_runs import JobRuns

    state: State = ctx.obj
    platform = state.platform()
    started = time.monotonic()
    try:
        jobs = _jobs(platform)
        job = jobs.get(name)
        if job is None:
            known = ", ".join(jobs) or "none (see `opsloop jobs list`)"
            raise NotFoundError(f"no periodic job {name!r}; configured jobs: {known}", job=name)
        err.print(f"running {name} ...")
        try:
            if force:
                asyncio.run(_run(job))
                ran = True
            else:
                ran = asyncio.run(job.run_once(name, JobRuns(platform.db)))
            platform.retraining.triggers.join()  # drift or the schedule may have started retrainings
        finally:
            _push(platform, name)  # what it measured, whether it ran, failed or found its fire taken
    except OpsloopError as exc:
        raise fail(exc) from exc
    except Exception as exc:  # the job's own failure: recorded in the store, shown here
        err.print(f"[red]error:[/red] {name} failed: {type(exc).__name__}: {exc}", highlight=False)
        raise typer.Exit(code=1) from exc
    if ran:
        err.print(f"{name} done in {time.monotonic() - started:.1f} s")
    else:
        err.print(f"{name}: this slot's fire already ran in another process (see `opsloop jobs list`)")


def _push(platform: Platform, name: str) -> None:
    """Push this run's metrics to ``pushgateway_url``, grouped by the job (each run replaces the last).

    A CronJob's pod ends before Prometheus scrapes it; the Pushgateway keeps the drift, eval and
    retraining series its run exported (``honorLabels`` keeps their labels when scraped). A push
    that fails is reported and does not fail the job: the job's results are in the store.
    """
    url = platform.settings.pushgateway_url
    if not url:
        return
    from prometheus_client import push_to_gateway

    try:
        push_to_gateway(
            url,
            job="opsloop-jobs",
            grouping_key={"periodic_job": name},
            registry=platform.metrics.registry,
            timeout=10,
        )
    except OSError as exc:
        err.print(
            f"[yellow]warning:[/yellow] could not push {name}'s metrics to {url}: {exc}", highlight=False
        )


def _schedule(job: Job) -> str:
    return job.cron or f"every {job.seconds:g} s"


async def _run(job: Job) -> None:
    await job.work()
