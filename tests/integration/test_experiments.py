"""Experiments on a model, end to end through the API: canaries that roll back, an A/B test that promotes.

One real app (SQLite, MLflow on SQLite, the demo model as champion) with challengers made the
way a user makes them: MLflow pyfunc models that wrap the champion, registered like any
other version. Traffic goes through ``POST /predict`` with many units; the decider is ticked
by the test (its schedule is off) so each check sees a known batch. No caller may see a
failed request, and the champion alias moves only for the better challenger.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from opsloop.audit import AuditFilter
from opsloop.settings import load_settings
from serving.app import create_app
from serving.platform import Platform, cli_principal
from tests.integration.challengers import save_wrapper
from workflows.demo import FEATURE_NAMES, LABEL, generate_credit_data
from workflows.promotion import promote
from workflows.registration import register

MODEL = "credit-risk"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    home = tmp_path_factory.mktemp("experiments") / "home"
    settings = load_settings(
        home=home,
        bootstrap_docs=False,
        drift_check_seconds=0,
        experiment_decide_seconds=0,  # the tests tick the decider themselves
        experiment_poll_seconds=0.1,
    )
    return create_app(settings)


@pytest.fixture(scope="module")
def applicants() -> list[dict[str, Any]]:
    """Labelled applicants the models never saw."""
    frame = generate_credit_data(3000, seed=99)
    return [
        {**{name: _plain(row[name]) for name in FEATURE_NAMES}, LABEL: int(row[LABEL])}
        for row in frame.to_dict(orient="records")
    ]


@pytest.fixture(autouse=True)
def _stops_its_experiment(platform: Platform) -> Iterator[None]:
    """A failed test leaves no experiment running and the champion where it found it."""
    champion = platform.registry.get_alias(MODEL, "champion").version
    yield
    service = platform.experiments.service
    for experiment in service.store.list(running=True):
        service.stop(cli_principal(), experiment.name)
    if platform.registry.get_alias(MODEL, "champion").version != champion:
        promote(cli_principal(), platform.registry, platform.audit, MODEL, champion)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _challenger(platform: Platform, tmp_path: Path, **wrapper: Any) -> str:
    """Register a wrapper of the current champion; returns its version."""
    champion = platform.registry.get_alias(MODEL, "champion").version
    folder = save_wrapper(f"models:/{MODEL}/{champion}", tmp_path / "challenger", **wrapper)
    done = register(cli_principal(), platform.registry, platform.audit, MODEL, str(folder))
    return str(done.version.version)


def _wait_routed(platform: Platform, name: str) -> None:
    """Until this process routes the experiment and has its challenger loaded."""
    deadline = time.monotonic() + 60
    while True:
        experiment = platform.experiments.service.store.get(name)
        assignment = platform.experiments.router.assign("model", MODEL, "probe")
        loaded = platform.runtime.challenger(MODEL, int(experiment.challenger))
        if assignment is not None and assignment.experiment == name and loaded is not None:
            return
        assert time.monotonic() < deadline, "the experiment was not picked up"
        time.sleep(0.05)


def _traffic(
    client: TestClient, headers: dict[str, str], applicants: list[dict[str, Any]], start: int, count: int
) -> list[dict[str, Any]]:
    """``count`` requests, one applicant and one unit each; every one must succeed."""
    answers = []
    for i in range(start, start + count):
        applicant = {k: v for k, v in applicants[i % len(applicants)].items() if k != LABEL}
        response = client.post(
            f"/predict/{MODEL}",
            json={"instances": [applicant]},
            headers={**headers, "X-Opsloop-Unit": f"user-{i}"},
        )
        assert response.status_code == 200, response.text
        assert response.headers["X-Opsloop-Variant"] == response.json()["variant"]
        answers.append(response.json())
    return answers


def test_a_failing_challenger_is_rolled_back_and_no_caller_sees_it(
    client: TestClient,
    platform: Platform,
    operator: dict[str, str],
    applicants: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    version = _challenger(platform, tmp_path, fail_when=("home_ownership", "rent"))
    created = client.post(
        "/admin/experiments",
        json={
            "name": "failing",
            "model": MODEL,
            "challenger": version,
            "steps": [20, 50, 100],
            "min_samples": 100,
        },
        headers=operator,
    )
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "running" and created.json()["variants"][1]["weight"] == 20
    _wait_routed(platform, "failing")

    answers = _traffic(client, operator, applicants, 0, 400)
    variants = {a["variant"] for a in answers}
    assert variants == {"champion", "challenger"}, variants
    # Which experiment routed a request is in the prediction log, not in the answer: the
    # experiment may be another tenant's (models are shared).
    logged = platform.predictions.recent(MODEL, limit=400)
    assert {r.experiment for r in logged if r.request_id in {a["request_id"] for a in answers}} == {"failing"}

    platform.experiments.outcomes.flush()
    decided = dict(platform.experiments.decider.tick())
    assert decided["failing"].action == "rollback", decided["failing"].reason
    shown = client.get("/admin/experiments/failing", headers=operator).json()
    assert shown["status"] == "rolled_back"
    assert "error_rate" in shown["decision"]["reason"]
    challenger = shown["variants"][1]
    assert challenger["errors"] > 0 and challenger["requests"] > challenger["errors"]
    assert platform.registry.get_alias(MODEL, "champion").version != int(version)  # the alias never moved
    rollbacks = platform.audit.query(AuditFilter(action="experiment.rollback"))
    assert rollbacks and rollbacks[0].actor == "decider"

    # Within a poll, nothing goes to the challenger any more.
    time.sleep(0.3)
    after = _traffic(client, operator, applicants, 400, 50)
    assert {a["variant"] for a in after} == {"champion"}


def test_a_slow_challenger_fails_the_latency_checks_and_is_rolled_back(
    client: TestClient,
    platform: Platform,
    operator: dict[str, str],
    applicants: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    version = _challenger(platform, tmp_path, delay_s=0.03)
    created = client.post(
        "/admin/experiments",
        json={"name": "slow", "model": MODEL, "challenger": version, "steps": [50, 100], "min_samples": 1000},
        headers=operator,
    )
    assert created.status_code == 201, created.text
    _wait_routed(platform, "slow")
    actions = []
    for check in range(3):  # the judge needs three failed checks in a row, each on fresh requests
        _traffic(client, operator, applicants, 1000 + 80 * check, 80)
        platform.experiments.outcomes.flush()  # a check judges what is stored; a slow writer is not a pass
        (_, decision), *_ = platform.experiments.decider.tick()
        actions.append(decision.action)
    assert actions == ["continue", "continue", "rollback"], actions
    shown = client.get("/admin/experiments/slow", headers=operator).json()
    assert shown["status"] == "rolled_back" and "latency" in shown["decision"]["reason"]
    assert shown["variants"][1]["p50_ms"] > shown["variants"][0]["p50_ms"] + 20


def test_a_better_challenger_wins_an_ab_test_on_labelled_feedback(
    client: TestClient,
    platform: Platform,
    operator: dict[str, str],
    applicants: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    # A weak champion (wrong for a quarter of the applicants) against the strong model it wraps.
    strong = platform.registry.get_alias(MODEL, "champion").version
    weak = int(_challenger(platform, tmp_path, flip_share=0.25))
    promote(cli_principal(), platform.registry, platform.audit, MODEL, weak)
    deadline = time.monotonic() + 30
    while platform.runtime.get(MODEL) is None or platform.runtime.get(MODEL).version != weak:  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    created = client.post(
        "/admin/experiments",
        json={"name": "better", "kind": "ab", "model": MODEL, "challenger": str(strong), "min_samples": 200},
        headers=operator,
    )
    assert created.status_code == 201, created.text
    _wait_routed(platform, "better")

    decision = None
    for batch in range(15):  # promotion waits for the p99 guardrail: 1,000 champion requests
        answers = _traffic(client, operator, applicants, 2000 + 200 * batch, 200)
        labels = {
            a["request_id"]: [applicants[(2000 + 200 * batch + i) % len(applicants)][LABEL]]
            for i, a in enumerate(answers)
        }
        feedback = client.post(
            f"/feedback/{MODEL}",
            json={"feedback": [{"request_id": r, "labels": v} for r, v in labels.items()]},
            headers=operator,
        )
        assert feedback.status_code == 200 and not feedback.json()["unknown"]
        platform.predictions.flush()
        platform.experiments.outcomes.flush()
        (_, decision), *_ = platform.experiments.decider.tick()
        if decision.action != "continue":
            break
    assert decision is not None and decision.action == "promote", decision and decision.reason
    shown = client.get("/admin/experiments/better", headers=operator).json()
    assert shown["status"] == "promoted"
    champion, challenger = shown["variants"]
    # A quarter of the weak champion's answers are flipped: about 0.8 * 0.75 + 0.2 * 0.25 right.
    assert 0.55 < champion["accuracy"] < 0.72 < 0.76 < challenger["accuracy"]
    assert platform.registry.get_alias(MODEL, "champion").version == strong


def test_a_canary_on_light_traffic_gathers_latencies_across_checks(
    client: TestClient,
    platform: Platform,
    operator: dict[str, str],
    applicants: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    # Eight requests a check: about four latencies per variant, a fifth of what the latency judge
    # needs. Judged check by check alone, the canary would hold for ever; gathered until there
    # are enough, they show the wrapper challenger (a pyfunc) many times slower: rolled back.
    version = _challenger(platform, tmp_path)
    champion = platform.registry.get_alias(MODEL, "champion").version
    created = client.post(
        "/admin/experiments",
        json={"name": "light", "model": MODEL, "challenger": version, "steps": [50, 100], "min_samples": 40},
        headers=operator,
    )
    assert created.status_code == 201, created.text
    _wait_routed(platform, "light")
    judged = []
    for batch in range(60):
        _traffic(client, operator, applicants, 5000 + 8 * batch, 8)
        platform.experiments.outcomes.flush()
        (_, decision), *_ = platform.experiments.decider.tick()
        judged.append(decision.judge.verdict if decision.judge else None)
        if decision.action != "continue":
            break
    assert decision.action == "rollback" and "latency check failed" in decision.reason, decision.reason
    assert judged.count("fail") == 3 and judged.count("nodata") > 3 * judged.count("fail")
    assert platform.registry.get_alias(MODEL, "champion").version == champion


def test_a_shadow_gets_copies_and_never_answers(
    client: TestClient,
    platform: Platform,
    operator: dict[str, str],
    applicants: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    champion = platform.registry.get_alias(MODEL, "champion").version
    version = _challenger(platform, tmp_path, flip_share=0.25)
    created = client.post(
        "/admin/experiments",
        json={"name": "shadowed", "kind": "shadow", "model": MODEL, "challenger": version},
        headers=operator,
    )
    assert created.status_code == 201, created.text
    _wait_routed(platform, "shadowed")
    answers = _traffic(client, operator, applicants, 0, 200)
    assert {(a["variant"], a["version"]) for a in answers} == {("champion", champion)}
    assert platform.experiments.decider.tick() == []  # a shadow is compared, not decided

    deadline = time.monotonic() + 30
    while (shown := client.get("/admin/experiments/shadowed", headers=operator).json())["variants"][1][
        "requests"
    ] < 200:
        assert time.monotonic() < deadline, shown
        platform.experiments.outcomes.flush()
        time.sleep(0.1)
    shadow = shown["variants"][1]
    assert shadow["weight"] == 0 and shadow["errors"] == 0
    assert 0.6 < shadow["agreement"] < 0.9  # a quarter of its answers are flipped
    stopped = client.post("/admin/experiments/shadowed/stop", headers=operator).json()
    assert (
        stopped["status"] == "stopped" and platform.registry.get_alias(MODEL, "champion").version == champion
    )
