"""The ml-ops agent's tools: models, versions, promotion, rollback, experiments, retraining."""

from __future__ import annotations

from agents.tools import Outcome, ToolCall, jsonable, tool
from opsloop.auth import Role
from opsloop.errors import InvalidInputError, NotFoundError
from workflows.experiments.policy import DEFAULT_STEPS
from workflows.experiments.service import ExperimentPlan

__all__ = [
    "TOOLS",
    "canary_name",
    "check_version",
    "inspect_model",
    "list_models",
    "model_status",
    "promote_experiment",
    "promote_model",
    "register_model",
    "retrain_model",
    "rollback_model",
    "start_experiment",
]

CANARY_STEPS = (5.0, 10.0, 25.0, 50.0, 100.0)
ROUTED_TIMEOUT_S = 60.0


def canary_name(model: str, version: int, kind: str) -> str:
    """The experiment a plan starts: one per model version and kind, so a re-run finds it."""
    return f"{model}-v{version}-{kind}"[:64]


@tool("ml-ops", role=Role.VIEWER)
async def list_models(call: ToolCall) -> Outcome:
    """The served models and the version of each that answers."""
    served = call.ops.models(call.caller)
    summary = ", ".join(f"{m.name} v{m.version}" for m in served) or "no model is served"
    return Outcome(f"{len(served)} served: {summary}", {"models": jsonable(served)})


@tool("ml-ops", role=Role.VIEWER)
async def model_status(call: ToolCall, model: str) -> Outcome:
    """A model's champion, its versions and the experiments running on it."""
    described = await call.ops.describe(call.caller, model)
    running = [
        {"name": e.name, "kind": e.kind, "challenger": e.challenger, "status": e.status}
        for e in call.ops.experiments(call.caller)
        if e.target == model and e.running
    ]
    versions = [v.version for v in described.versions]
    summary = f"{model}: champion v{described.champion} of versions {versions}"
    if running:
        summary += "; running: " + ", ".join(f"{e['name']} ({e['status']})" for e in running)
    return Outcome(
        summary,
        {"model": model, "champion": described.champion, "versions": versions, "experiments": running},
    )


def _input_changes(expected: list[tuple[str, str]], given: list[tuple[str, str]]) -> dict[str, list]:
    """The ``(column, type)`` inputs ``given`` lacks (``missing``) and adds (``extra``)."""
    return {"missing": sorted(set(expected) - set(given)), "extra": sorted(set(given) - set(expected))}


@tool("ml-ops", role=Role.VIEWER)
async def check_version(call: ToolCall, model: str, version: int) -> Outcome:
    """Whether a registered version takes the champion's inputs (names and types of its signature)."""
    current = call.ops.champion(call.caller, model)
    candidate = call.ops.signature(call.caller, model, version)
    champion = call.ops.signature(call.caller, model, current)
    result = {"model": model, "version": version, "champion": current, **_input_changes(champion, candidate)}
    if version == current:
        return Outcome(f"{model} v{version} is the champion already", result, "failed")
    if result["missing"] or result["extra"]:
        return Outcome(
            f"{model} v{version} does not take the champion's inputs: missing {result['missing']},"
            f" extra {result['extra']}",
            result,
            "failed",
        )
    return Outcome(f"{model} v{version} takes the champion v{current}'s {len(champion)} inputs", result)


@tool("ml-ops", role=Role.OPERATOR, mutating=True)
async def promote_model(call: ToolCall, model: str, version: int) -> Outcome:
    """Point the champion alias of a model at a version."""
    move = call.ops.promote(call.caller, model, version)
    return Outcome(f"{model}: champion v{move.before} -> v{move.after}", jsonable(move))


@tool("ml-ops", role=Role.OPERATOR, mutating=True)
async def rollback_model(call: ToolCall, model: str) -> Outcome:
    """Roll back a model: its running experiments if any (the champion keeps all traffic), else its alias."""
    running = [e for e in call.ops.experiments(call.caller) if e.target == model and e.running]
    if running:
        ended = [
            call.ops.end_experiment(call.caller, e.name, "rollback", "rolled back from chat") for e in running
        ]
        names = ", ".join(e.name for e in ended)
        return Outcome(
            f"{model}: rolled back {names}; the champion takes all traffic", {"experiments": jsonable(ended)}
        )
    move = call.ops.rollback(call.caller, model)
    return Outcome(f"{model}: champion v{move.before} -> v{move.after} (rolled back)", jsonable(move))


@tool("ml-ops", role=Role.OPERATOR, mutating=True)
async def start_experiment(
    call: ToolCall,
    kind: str,
    percent: int,
    model: str | None = None,
    version: int | None = None,
    prompt: str | None = None,
    prompt_version: int | None = None,
) -> Outcome:
    """Start a canary or an A/B test of a model version or a prompt version."""
    target_kind, target, challenger = (
        ("model", model, version) if model is not None else ("prompt", prompt, prompt_version)
    )
    if target is None or challenger is None:
        raise InvalidInputError("name a model and version, or a prompt and prompt_version", field="model")
    name = canary_name(target, challenger, kind)
    rising = (float(percent), *(s for s in CANARY_STEPS if s > percent))
    plan = ExperimentPlan(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        target_kind=target_kind,  # type: ignore[arg-type]
        target=target,
        challenger=str(challenger),
        weight=float(percent) if kind == "ab" else None,
        steps=rising if kind == "canary" else DEFAULT_STEPS,
    )
    report = call.ops.start_experiment(call.caller, plan)
    summary = f"{kind} {name} started: {target} v{challenger} at {percent}%"
    if target_kind == "model":  # what follows (a load test, an SLO check) needs the challenger answering
        routed = await call.ops.wait_routed(call.caller, name, ROUTED_TIMEOUT_S)
        summary += ", routed" if routed else f"; not yet routed after {ROUTED_TIMEOUT_S:g} s"
    return Outcome(summary, jsonable(report))


@tool("ml-ops", role=Role.OPERATOR, mutating=True)
async def promote_experiment(call: ToolCall, name: str) -> Outcome:
    """Promote an experiment's challenger now (it becomes the champion)."""
    experiment = call.ops.end_experiment(call.caller, name, "promote", "promoted from chat")
    return Outcome(f"{name}: {experiment.status}", jsonable(experiment))


@tool("ml-ops", role=Role.OPERATOR, mutating=True)
async def retrain_model(call: ToolCall, model: str) -> Outcome:
    """Retrain a model in the background; a better version goes to a canary."""
    record = call.ops.retrain(call.caller, model)
    return Outcome(f"retraining of {model} started as run {record['id']}", dict(record))


@tool("ml-ops", role=Role.OPERATOR)
async def inspect_model(call: ToolCall, path: str, model: str) -> Outcome:
    """What a model folder holds (flavors, input columns, size), against the model's champion if any."""
    found = call.ops.inspect_model(call.caller, path)
    result = jsonable(found)
    size = (
        f"{found.size_bytes / 1e6:.1f} MB"
        if found.size_bytes >= 100_000
        else f"{found.size_bytes / 1e3:.0f} kB"
    )
    if found.columns is None:
        return Outcome(
            f"{path}: {', '.join(found.flavors)} model of {size} without a column-based input signature;"
            " it cannot be registered for serving (save it with an input signature)",
            result,
            "failed",
        )
    summary = f"{path}: {', '.join(found.flavors)} model of {size} taking {len(found.columns)} inputs"
    try:
        champion = call.ops.champion(call.caller, model)
    except NotFoundError:  # a new model, or one nobody has promoted yet
        return Outcome(summary + f"; {model} has no champion to compare with", result)
    expected = call.ops.signature(call.caller, model, champion)
    result |= {"champion": champion, **_input_changes(expected, found.columns)}
    summary += (
        f"; differs from {model} v{champion}'s inputs: missing {result['missing']}, extra {result['extra']}"
        if result["missing"] or result["extra"]
        else f", the same as {model} v{champion}'s"
    )
    return Outcome(summary, result)


@tool("ml-ops", role=Role.OPERATOR, mutating=True)
async def register_model(call: ToolCall, path: str, model: str) -> Outcome:
    """Register a model folder as the next version of a model (no alias moves)."""
    done = await call.ops.register(call.caller, model, path)
    version = done.version.version
    return Outcome(
        f"{model} v{version} registered from {path}; the champion is unchanged"
        " (promote or canary it to serve it)",
        {"model": model, "version": version, "source": done.version.source, "path": path},
    )


TOOLS = (
    list_models,
    model_status,
    check_version,
    promote_model,
    rollback_model,
    start_experiment,
    promote_experiment,
    retrain_model,
    inspect_model,
    register_model,
)
