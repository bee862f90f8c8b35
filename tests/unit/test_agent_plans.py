"""The pure parts of the assistant: slots from words, plans from slots, what a failed step stops."""

from __future__ import annotations

import pytest

from agents.plan import WORKFLOWS
from agents.planning.offline import LABELLED_CATALOG
from agents.planning.slots import extract_slots, mask_names
from agents.registry import MUTATING, REGISTRY
from agents.steps import skip_rest, stop_after_failure
from agents.workflows import build_plan, missing_slots


@pytest.mark.parametrize(
    ("text", "workflow", "slots"),
    [
        ("promte chrun version four to champ", "promote", {"model": "churn", "version": 4}),
        (
            "canary credit risk v9 at a tenth",
            "deploy_model",
            {"model": "credit-risk", "version": 9, "percent": 10},
        ),
        ("champion -> credit-risk 6", "promote", {"model": "credit-risk", "version": 6}),
        (
            "what did acme spend on gpt 4o mini in the last 3 days",
            "cost_investigation",
            {"tenant": "acme", "route": "gpt-4o-mini", "window": "3d"},
        ),
        ("run the docs eval against prompt version 3", "eval_run", {"job": "docs", "prompt_version": 3}),
        ("where are the docs on tenants?", "ask_docs", {}),
        (
            "hammer the runbooks query endpoint, 300 requests, 12 in flight",
            "load_test",
            {"collection": "runbooks", "requests": 300, "concurrency": 12},
        ),
        ("can we scale to twelve replicas", "capacity_check", {"replicas": 12}),
        (
            "register ./exports/credit-risk-v7. as a new model named loan-default",
            "register_model",
            {"path": "./exports/credit-risk-v7", "model": "loan-default"},  # the path names no model
        ),
        (
            "register '/srv/models/churn 2' as churn",
            "register_model",
            {"path": "/srv/models/churn 2", "model": "churn"},
        ),
        ("loan-default", "register_model", {"model": "loan-default"}),  # the answer to "which model?"
        (
            "put a $1,500 monthly cap on globex",
            "set_budget",
            {"tenant": "globex", "budget": "monthly_usd", "limit": 1500},
        ),
        (
            "limit key 4be0c2a19f7d of acme to 2.5M tokens a day",
            "set_budget",
            {"tenant": "acme", "key": "4be0c2a19f7d", "budget": "daily_tokens", "limit": 2_500_000},
        ),
        (
            "acme: 300 requests a minute at most",
            "set_budget",
            {"tenant": "acme", "budget": "rpm", "limit": 300},
        ),
        (
            "set tpm of the default tenant to 40k",
            "set_budget",
            {"tenant": "default", "budget": "tpm", "limit": 40_000},
        ),
        ("revoke olk_5d6e7f8091a2_Qx3vTzN0Yy now", "revoke_key", {"key": "5d6e7f8091a2"}),
    ],
)
def test_slots_are_read_from_words(text: str, workflow: str, slots: dict[str, object]) -> None:
    assert extract_slots(text, LABELLED_CATALOG, WORKFLOWS[workflow].slots).slots == slots


def test_two_values_of_one_slot_are_ambiguous_not_guessed() -> None:
    found = extract_slots("promote churn or credit-risk v2", LABELLED_CATALOG, WORKFLOWS["promote"].slots)
    assert found.ambiguous == {"model": ["churn", "credit-risk"]}  # in the order named
    assert "model" not in found.slots


def test_names_are_masked_by_kind() -> None:
    assert mask_names("Roll Fraud Detector v3 back", LABELLED_CATALOG) == "roll model version N back"
    assert mask_names("register ~/m/churn-v2 as churn", LABELLED_CATALOG) == "register path as model"
    assert mask_names("revoke key 3f9a1c2b7d4e", LABELLED_CATALOG) == "revoke key key"
    assert mask_names("load test /predict and a/b it", LABELLED_CATALOG) == "load test predict and a b it"


def test_a_missing_required_slot_is_named_before_any_plan() -> None:
    assert missing_slots("promote", {"model": "churn"}) == ["version"]
    assert missing_slots("ab_test", {"prompt": "summarize"}) == ["prompt_version"]
    assert missing_slots("status_report", {}) == []


def test_plans_take_defaults_and_mark_the_mutating_steps() -> None:
    plan = build_plan("deploy_model", {"model": "churn", "version": 3})
    assert plan.agent == "ml-ops"
    assert plan.args == {"percent": 10, "model": "churn", "version": 3}
    assert [s["tool"] for s in plan.steps if s["mutating"]] == ["start_experiment", "promote_experiment"]
    assert {
        "promote_model",
        "rollback_model",
        "start_experiment",
        "promote_experiment",
        "retrain_model",
        "register_model",
        "set_budget",
        "revoke_key",
    } == MUTATING
    assert all(REGISTRY[s["tool"]].mutating == s["mutating"] for s in plan.steps)


def test_a_failed_step_stops_a_plan_only_when_something_risky_follows() -> None:
    deploy = build_plan("deploy_model", {"model": "churn", "version": 3}).to_dict()
    assert stop_after_failure(deploy, 1)  # check_version failed: nothing may start
    skip_rest(deploy, 1, "skipped", "not run")
    assert [s["status"] for s in deploy["steps"][2:]] == ["skipped"] * 4
    capacity = build_plan("capacity_check", {}).to_dict()
    assert not stop_after_failure(capacity, 0)  # an investigation reports every step


def _cost_plan(by_route: list[dict[str, object]], routes: dict[str, dict[str, float]]) -> dict[str, object]:
    plan = build_plan("cost_investigation", {}).to_dict()
    plan["steps"][0].update(status="ok", result={"by_route": by_route})
    plan["steps"][2].update(status="ok", result={"routes": routes})
    return plan


def test_a_cheaper_route_is_suggested_only_when_its_eval_scores_hold() -> None:
    from agents.cost.prompts import findings

    by_route = [
        {"group": "claude", "calls": 100, "cost_usd": 1.0},
        {"group": "vllm", "calls": 100, "cost_usd": 0.1},
    ]
    as_good = findings(_cost_plan(by_route, {"claude": {"hit_rate": 0.90}, "vllm": {"hit_rate": 0.895}}))
    assert len(as_good) == 1 and "candidate to switch" in as_good[0] and "$0.9000 less" in as_good[0]
    worse = findings(_cost_plan(by_route, {"claude": {"hit_rate": 0.90}, "vllm": {"hit_rate": 0.70}}))
    assert "keep claude" in worse[0]
    unscored = findings(_cost_plan(by_route, {}))
    assert "run one before switching" in unscored[0]
    assert findings(_cost_plan(by_route[:1], {})) == []
