"""The documented workflows as plans: which tools run, in which order, with which arguments.

Pure: a workflow's name and its slots in, the :class:`Plan` out. Defaults are filled here (a
canary starts at 10%, a load test sends 200 requests); what the request left out and has no
default is asked for before a plan is made (:func:`missing_slots`).
"""

from __future__ import annotations

from typing import Any

from agents.mlops.tools import canary_name
from agents.plan import WORKFLOWS, Plan, Step, step
from agents.registry import REGISTRY

__all__ = ["DEFAULTS", "build_plan", "missing_slots"]

DEFAULTS: dict[str, dict[str, Any]] = {
    "deploy_model": {"percent": 10},
    "ab_test": {"percent": 50},
    "cost_investigation": {"window": "7d"},
    "load_test": {"requests": 200, "concurrency": 8},
    "capacity_check": {"replicas": 1},
    "ask_docs": {"collection": "docs"},
}


def missing_slots(workflow: str, slots: dict[str, Any]) -> list[str]:
    """The slots of the closest alternative of required slots that ``slots`` lacks (none: complete)."""
    groups = WORKFLOWS[workflow].required
    if not groups:
        return []
    gaps = [[s for s in group if s not in slots] for group in groups]
    return min(gaps, key=lambda gap: (len(gap), gaps.index(gap)))


def build_plan(workflow: str, slots: dict[str, Any], question: str = "") -> Plan:
    """The plan of ``workflow`` with ``slots`` (complete: see :func:`missing_slots`)."""
    spec = WORKFLOWS[workflow]
    args = {**DEFAULTS.get(workflow, {}), **{k: v for k, v in slots.items() if k in spec.slots}}
    steps = _STEPS[workflow](args, question)
    for planned in steps:
        planned["mutating"] = REGISTRY[planned["tool"]].mutating
    return Plan(workflow, spec.agent, args, steps)


def _status_report(a: dict[str, Any], _: str) -> list[Step]:
    steps = [step("health"), step("list_models")]
    if "model" in a:
        steps.append(step("model_status", model=a["model"]))
    return steps


def _deploy_model(a: dict[str, Any], _: str) -> list[Step]:
    model, version, percent = a["model"], a["version"], a["percent"]
    name = canary_name(model, version, "canary")
    return [
        step("model_status", model=model),
        step("check_version", model=model, version=version),
        step("start_experiment", kind="canary", model=model, version=version, percent=percent),
        step("load_test", model=model, requests=200, concurrency=8),
        step("slo_check", name=name),
        step("promote_experiment", name=name),
    ]


def _promote(a: dict[str, Any], _: str) -> list[Step]:
    return [
        step("model_status", model=a["model"]),
        step("check_version", model=a["model"], version=a["version"]),
        step("promote_model", model=a["model"], version=a["version"]),
    ]


def _rollback(a: dict[str, Any], _: str) -> list[Step]:
    return [step("model_status", model=a["model"]), step("rollback_model", model=a["model"])]


def _ab_test(a: dict[str, Any], _: str) -> list[Step]:
    if "model" in a and "version" in a:
        return [
            step("model_status", model=a["model"]),
            step("check_version", model=a["model"], version=a["version"]),
            step("start_experiment", kind="ab", model=a["model"], version=a["version"], percent=a["percent"]),
        ]
    return [
        step(
            "start_experiment",
            kind="ab",
            prompt=a["prompt"],
            prompt_version=a["prompt_version"],
            percent=a["percent"],
        ),
    ]


def _drift_investigation(a: dict[str, Any], _: str) -> list[Step]:
    window = a.get("window")
    if "model" in a:
        return [
            step("data_drift", model=a["model"], window=window),
            step("concept_drift", model=a["model"], window=window),
            step("data_quality", model=a["model"], window=window),
        ]
    return [step("query_drift", collection=a["collection"], window=window)]


def _retrain(a: dict[str, Any], _: str) -> list[Step]:
    return [step("model_status", model=a["model"]), step("retrain_model", model=a["model"])]


def _eval_run(a: dict[str, Any], _: str) -> list[Step]:
    return [
        step(
            "run_eval",
            job=a.get("job"),
            collection=a.get("collection"),
            prompt_version=a.get("prompt_version"),
        )
    ]


def _cost_investigation(a: dict[str, Any], _: str) -> list[Step]:
    scope = {"window": a["window"], "tenant": a.get("tenant"), "route": a.get("route")}
    return [step("cost_report", **scope), step("cost_change", **scope), step("route_quality")]


def _load_test(a: dict[str, Any], _: str) -> list[Step]:
    target = {k: a[k] for k in ("model", "collection", "route") if k in a}
    return [step("load_test", **target, requests=a["requests"], concurrency=a["concurrency"])]


def _capacity_check(a: dict[str, Any], _: str) -> list[Step]:
    sized = {"replicas": a["replicas"]}
    return [
        step("health"),
        step("queues"),
        step("stores"),
        step("capacity", **sized),
        step("manifests", **sized),
    ]


def _ask_docs(a: dict[str, Any], question: str) -> list[Step]:
    return [step("ask_docs", question=question, collection=a["collection"])]


def _register_model(a: dict[str, Any], _: str) -> list[Step]:
    return [
        step("inspect_model", path=a["path"], model=a["model"]),
        step("register_model", path=a["path"], model=a["model"]),
    ]


def _set_budget(a: dict[str, Any], _: str) -> list[Step]:
    scope = {"tenant": a.get("tenant"), "key": a.get("key")}  # a key's tenant is read from the key
    return [step("budget_status", **scope), step("set_budget", **scope, budget=a["budget"], limit=a["limit"])]


def _revoke_key(a: dict[str, Any], _: str) -> list[Step]:
    return [step("key_info", key=a["key"]), step("revoke_key", key=a["key"])]


_STEPS = {
    "status_report": _status_report,
    "deploy_model": _deploy_model,
    "promote": _promote,
    "rollback": _rollback,
    "ab_test": _ab_test,
    "drift_investigation": _drift_investigation,
    "retrain": _retrain,
    "eval_run": _eval_run,
    "cost_investigation": _cost_investigation,
    "load_test": _load_test,
    "capacity_check": _capacity_check,
    "ask_docs": _ask_docs,
    "register_model": _register_model,
    "set_budget": _set_budget,
    "revoke_key": _revoke_key,
}
