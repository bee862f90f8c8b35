"""The console's read-only pages: models, experiments, drift, costs, evals and the audit log.

Each page asks the services the API's routes ask, as the logged-in key: a page the key's role
may not read answers 403 like the route would, and what a page lists is scoped to the key's
tenant the same way (an admin sees every tenant's). The work runs off the event loop.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Query, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import Response

from opsloop.audit import AuditFilter
from opsloop.auth import Principal, Role
from opsloop.durations import parse_duration
from opsloop.errors import NotFoundError, OpsloopError
from opsloop.llm.ledger import GroupBy
from serving.console import charts
from serving.console.pages import activity, over_time
from serving.console.routes import SessionDep, console_router, render
from serving.deps import PlatformDep
from serving.platform import Platform

__all__ = ["router"]

router = console_router()

ACTIVITY_MINUTES = 5
"""The window of a model's live request rate and latency."""


def _model_row(platform: Platform, caller: Principal, name: str, version: int) -> dict[str, Any]:
    """A served model's versions, aliases, lineage, live traffic and last drift verdict."""
    since = datetime.now(UTC) - timedelta(minutes=ACTIVITY_MINUTES)
    latencies = platform.predictions.latencies(name, since=since, tenant=caller.scope(None, "predictions"))
    drift, retraining = None, []
    if caller.role >= Role.ADMIN:  # checks and retrainings are about every tenant's traffic: admins only
        checks = platform.drift.history(name, limit=1)
        drift = checks[0] if checks else None
        retraining = platform.retraining.store.history(name, limit=5)
    versions = sorted(platform.registry.versions(name), key=lambda v: v.version, reverse=True)
    return {
        "name": name,
        "champion": version,
        "versions": versions,
        "activity": activity(latencies, ACTIVITY_MINUTES),
        "drift": drift,
        "retraining": retraining,
    }


@router.get("/models")
async def models_page(request: Request, caller: SessionDep, platform: PlatformDep) -> Response:
    """Every served model with its versions, aliases, lineage tags, cards, traffic and drift verdict."""
    principal = caller.principal
    served = platform.models.served(principal)
    rows = await run_in_threadpool(
        lambda: [_model_row(platform, principal, m.name, m.version) for m in served]
    )
    context = {"title": "Models", "models": rows, "minutes": ACTIVITY_MINUTES}
    return render(request, caller, "models.html", context, page="models")


@router.get("/models/{model}/{version}/card")
async def model_card(
    request: Request, model: str, version: int, caller: SessionDep, platform: PlatformDep
) -> Response:
    """A version's model card (retrained versions have one), as its Markdown."""
    caller.principal.require(Role.VIEWER, "reading a model card")

    def read() -> str:
        info = platform.registry.get_version(model, version)
        if "model_card" not in info.tags:
            raise NotFoundError(f"{model} version {version} has no model card", model=model, version=version)
        return platform.registry.run_text(info.tags["model_card"])

    card = await run_in_threadpool(read)
    context = {"title": f"{model} version {version}: model card", "card": card}
    return render(request, caller, "card.html", context, page="models")


@router.get("/experiments")
async def experiments_page(request: Request, caller: SessionDep, platform: PlatformDep) -> Response:
    """The tenant's experiments: status, step and weight, decision and its reason."""
    service = platform.experiments.service
    reports = await run_in_threadpool(
        lambda: [service.show(caller.principal, e.name) for e in service.experiments(caller.principal)]
    )
    context = {"title": "Experiments", "experiments": reports}
    return render(request, caller, "experiments.html", context, page="experiments")


@router.get("/experiments/{name}")
async def experiment_page(request: Request, name: str, caller: SessionDep, platform: PlatformDep) -> Response:
    """One experiment: per-variant metrics over time, its tests with intervals, its decision."""
    service = platform.experiments.service

    def gather() -> dict[str, Any]:
        platform.experiments.outcomes.flush()  # the requests just answered count too
        report = service.show(caller.principal, name)
        samples = service.store.samples(report.name)
        times = [float(t) for got in samples.values() for t in got.at]
        shared = (min(times), max(times)) if times else None
        latency, volume, errors = {}, {}, {}
        for variant, got in samples.items():
            latency[f"{variant} p50"] = over_time(got.at, got.latency_ms, "p50", span=shared)
            volume[variant] = over_time(got.at, None, "count", span=shared)
            errors[variant] = over_time(got.at, (~got.ok).astype(float), "mean", span=shared)
        span = _span(times)
        return {
            "title": f"Experiment {report.name}",
            "experiment": report,
            "charts": [
                charts.lines(volume, "requests per bucket", x_labels=span),
                charts.lines(latency, "latency p50 (ms)", x_labels=span),
                charts.lines(errors, "error rate", x_labels=span),
            ],
        }

    context = await run_in_threadpool(gather)
    return render(request, caller, "experiment.html", context, page="experiments")


def _span(times: list[float]) -> tuple[str, str]:
    if not times:
        return ("", "")
    fmt = "%H:%M:%S"
    return (
        datetime.fromtimestamp(min(times), UTC).strftime(fmt),
        datetime.fromtimestamp(max(times), UTC).strftime(fmt) + " UTC",
    )


@router.get("/drift")
async def drift_page(
    request: Request,
    caller: SessionDep,
    platform: PlatformDep,
    model: str = "",
    last: Annotated[int, Query(ge=1, le=100_000)] = 1000,
) -> Response:
    """Per model and feature: reference and current distributions, scores over time, concept drift."""
    from workflows.concept_drift import concept_report
    from workflows.drift_monitor import live_report

    principal = caller.principal
    principal.require(Role.OPERATOR, "reading drift reports")
    served = [m.name for m in platform.models.served(principal)]
    chosen = model or (served[0] if served else "")
    scope = principal.scope(None, "predictions")

    def gather() -> dict[str, Any]:
        context: dict[str, Any] = {"title": "Drift", "models": served, "model": chosen, "last": last}
        if not chosen:
            return context
        try:
            report = live_report(
                platform.registry,
                platform.predictions,
                chosen,
                tenant=scope,
                last=last,
                min_rows=platform.settings.drift_min_rows,
            )
        except OpsloopError as exc:
            context["report_error"] = exc.message
        else:
            context["report"] = report
            context["features"] = [
                (name, feature, charts.bars(
                    list(feature.bins),
                    {"reference": feature.reference_shares, "current": feature.current_shares},
                    f"{name}: share of rows per bin",
                ))
                for name, feature in report.features.items()
            ]  # fmt: skip
        if principal.role >= Role.ADMIN:  # scheduled checks compare every tenant's traffic
            checks = list(reversed(platform.drift.history(chosen, limit=200)))
            context["history"] = _psi_over_time(checks)
            context["checks"] = checks[-10:][::-1]
        context["concept"] = _concept(platform, chosen, scope, concept_report)
        return context

    context = await run_in_threadpool(gather)
    return render(request, caller, "drift.html", context, page="drift")


def _psi_over_time(checks: list[Any]) -> Any:
    """Each feature's PSI in the scheduled checks, oldest first, with the share of features drifted."""
    series: dict[str, list[tuple[float, float]]] = {"share drifted": []}
    for check in checks:
        at = check.at.replace(tzinfo=UTC).timestamp()
        series["share drifted"].append((at, check.share_drifted))
        for name, feature in check.report.get("features", {}).items():
            if feature.get("psi") is not None:
                series.setdefault(f"PSI {name}", []).append((at, feature["psi"]))
    return charts.lines(series, "scheduled checks: PSI per feature and share of features drifted",
                        x_labels=_span([t for t, _ in series["share drifted"]]))  # fmt: skip


def _concept(platform: Platform, model: str, scope: str | None, concept_report: Any) -> dict[str, Any]:
    """The champion's error rate by regime, with ADWIN's change points marked."""
    try:
        version = platform.registry.get_alias(model, "champion").version
        report = concept_report(platform.predictions, model, version, tenant=scope)
    except OpsloopError as exc:
        return {"error": exc.message}
    points: list[tuple[float, float]] = []
    start, rate = 0, report.error_rate
    for point in report.change_points:
        points += [(start, point.error_before), (point.index, point.error_before)]
        start, rate = point.index, point.error_after
    points += [(start, rate), (max(report.instances - 1, start), rate)]
    marks = [
        (p.index, f"change at instance {p.index}: {p.error_before:.3f} -> {p.error_after:.3f}")
        for p in report.change_points
    ]
    chart = charts.lines(
        {"error rate": points} if report.instances else {},
        f"version {version}: error rate by regime over {report.instances} labelled instances",
        x_labels=("first", "latest"),
        marks=marks,
    )
    return {"report": report.to_dict(), "chart": chart}


COST_GROUPS: tuple[GroupBy, ...] = ("tenant", "key", "route", "model", "backend")


@router.get("/costs")
async def costs_page(
    request: Request,
    caller: SessionDep,
    platform: PlatformDep,
    since: Annotated[str, Query(max_length=16)] = "7d",
) -> Response:
    """Spend and tokens by tenant, key, route, model and backend, by day, and budgets with their use."""
    principal = caller.principal
    principal.require(Role.OPERATOR, "reading costs")
    window = parse_duration(since, field="since")

    def gather() -> dict[str, Any]:
        groups = {by: platform.ledger.report(principal, by, window) for by in COST_GROUPS}
        days = sorted(platform.ledger.report(principal, "day", window), key=lambda row: row.group)
        stamps = [datetime.fromisoformat(row.group).replace(tzinfo=UTC).timestamp() for row in days]
        context: dict[str, Any] = {
            "title": "Costs",
            "since": since,
            "groups": groups,
            "spend": charts.lines(
                {"cost (USD)": [(t, row.cost_usd) for t, row in zip(stamps, days, strict=True)]},
                "spend per day", x_labels=(days[0].group, days[-1].group) if days else ("", ""),
            ),
            "tokens": charts.lines(
                {
                    "prompt": [(t, row.prompt_tokens) for t, row in zip(stamps, days, strict=True)],
                    "completion": [(t, row.completion_tokens) for t, row in zip(stamps, days, strict=True)],
                },
                "tokens per day", x_labels=(days[0].group, days[-1].group) if days else ("", ""),
            ),
            "budgets": None,
        }  # fmt: skip
        if principal.role >= Role.ADMIN:  # budgets are an admin's to read and set (GET /admin/budgets)
            context["budgets"] = platform.enforcer.usage(platform.budgets.list())
        return context

    context = await run_in_threadpool(gather)
    return render(request, caller, "costs.html", context, page="costs")


@router.get("/evals")
async def evals_page(request: Request, caller: SessionDep, platform: PlatformDep) -> Response:
    """Eval runs going on, the scheduled jobs, and finished runs' metric trends and gates."""
    from evals.tracking import TAG_GATE, EvalTracker

    principal = caller.principal
    principal.require(Role.OPERATOR, "reading eval runs")
    tasks = platform.eval_tasks.visible(principal)
    jobs = platform.evals.jobs(principal) if platform.evals is not None else []
    settings = platform.settings

    def gather() -> dict[str, Any]:
        tracker = EvalTracker(settings.tracking_uri, settings.artifact_root).start()
        runs = [
            run for run in tracker.runs(limit=200)
            if principal.role >= Role.ADMIN or run.params.get("tenant") == principal.tenant
        ]  # fmt: skip
        trends: dict[tuple[str, str], dict[str, list[tuple[float, float]]]] = {}
        for run in sorted(runs, key=lambda r: r.start_ms or 0):
            key = (run.params.get("dataset", "?"), run.params.get("prompt", "?"))
            for metric in run.metric_names():
                value = run.metrics.get(metric)
                if value is not None and run.start_ms:
                    trends.setdefault(key, {}).setdefault(metric, []).append((run.start_ms / 1000, value))
        return {
            "runs": runs[:50],
            "gate_tag": TAG_GATE,
            "trends": [
                charts.lines(series, f"{dataset} · prompt {prompt}", x_labels=("oldest", "newest"))
                for (dataset, prompt), series in trends.items()
            ],
        }

    context = {"title": "Evals", "tasks": tasks, "jobs": jobs, **await run_in_threadpool(gather)}
    return render(request, caller, "evals.html", context, page="evals")


@router.get("/audit")
async def audit_page(
    request: Request,
    caller: SessionDep,
    platform: PlatformDep,
    tenant: Annotated[str, Query(max_length=64)] = "",
    actor: Annotated[str, Query(max_length=128)] = "",
    action: Annotated[str, Query(max_length=64)] = "",
    target: Annotated[str, Query(max_length=256)] = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """The audit log, newest first, filtered by tenant, actor, action and target (admins)."""
    caller.principal.require(Role.ADMIN, "reading the audit log")
    where = AuditFilter(tenant or None, actor or None, action or None, target or None, limit=limit)
    entries = await run_in_threadpool(platform.audit.query, where)
    filters = {"tenant": tenant, "actor": actor, "action": action, "target": target}
    context = {"title": "Audit", "entries": entries, "filters": filters, "limit": limit}
    return render(request, caller, "audit.html", context, page="audit")
