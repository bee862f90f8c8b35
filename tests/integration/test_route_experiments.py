"""Experiments on a gateway route, end to end through ``/v1/chat/completions`` and the admin API.

Real parts: the app and its lifespan, SmolLM2-135M in llama.cpp in-process behind every route,
llama.cpp's own OpenAI-compatible server on loopback, a dead loopback port as a backend that
never answers, the decider, the ledger. ``chat`` falls back from the dead backend to llama.cpp
(so it pays a retry on every call); ``direct`` is llama.cpp alone; ``broken`` is the dead port
alone; ``mirror`` is the llama.cpp server, backends of its own for a shadow.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from opsloop.audit import AuditFilter
from opsloop.llm.aliases import RouteAliases
from opsloop.settings import load_settings
from serving.app import create_app
from serving.platform import Platform, cli_principal
from tests.integration.llama_server import MODEL, free_port

LOCAL = {"name": "local", "kind": "llamacpp", "max_concurrency": 1, "cost_per_token": 1e-6}


def _dead(name: str, **retries: Any) -> dict[str, Any]:
    url = f"http://127.0.0.1:{free_port()}/v1"
    return {"name": name, "kind": "openai", "base_url": url, "model": "x", "max_retries": 0, **retries}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, llama_server_url: str) -> FastAPI:
    server = {"name": "server", "kind": "openai", "base_url": llama_server_url, "model": MODEL}
    routes = {
        "chat": {
            "backends": [_dead("flaky", max_retries=1, backoff_s=0.05, backoff_max_s=0.05), LOCAL],
            "queue_timeout_s": 30,
        },
        "direct": {"backends": [LOCAL], "queue_timeout_s": 30},
        "broken": {"backends": [_dead("gone")]},
        "mirror": {"backends": [server]},
    }
    settings = load_settings(
        home=tmp_path_factory.mktemp("route-experiments") / "home",
        bootstrap_demo=False,
        bootstrap_docs=False,
        drift_check_seconds=0,
        experiment_decide_seconds=0,  # the tests tick the decider themselves
        experiment_poll_seconds=0.1,
        llm_routes=routes,
        rag_llm_route="direct",
    )
    return create_app(settings)


@pytest.fixture(autouse=True)
def _leaves_chat_as_it_was(platform: Platform) -> Iterator[None]:
    """A failed test leaves no experiment running and ``chat`` served by itself."""
    yield
    service = platform.experiments.service
    for experiment in service.store.list(running=True):
        service.stop(cli_principal(), experiment.name)
    RouteAliases(platform.db).set("chat", "chat", actor="test")
    time.sleep(0.3)  # a poll: the gateway reads the alias again


def _chat(client: TestClient, auth: dict[str, str], unit: str, status: int = 200, **extra: Any) -> Any:
    body = {"model": "chat", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 1, **extra}
    response = client.post("/v1/chat/completions", json=body, headers={**auth, "X-Opsloop-Unit": unit})
    assert response.status_code == status, response.text
    return response


def _variants(client: TestClient, auth: dict[str, str], name: str) -> list[dict[str, Any]]:
    variants: list[dict[str, Any]] = client.get(f"/admin/experiments/{name}", headers=auth).json()["variants"]
    return variants


def _create(client: TestClient, auth: dict[str, str], **plan: Any) -> dict[str, Any]:
    created = client.post("/admin/experiments", json={"route": "chat", **plan}, headers=auth)
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


def _wait_routed(platform: Platform, name: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        assignment = platform.experiments.router.assign("route", "chat", "probe")
        if assignment is not None and assignment.experiment == name:
            return
        assert time.monotonic() < deadline, "the experiment was not picked up"
        time.sleep(0.05)


def _assigned(platform: Platform, unit: str) -> str:
    assignment = platform.experiments.router.assign("route", "chat", unit)
    assert assignment is not None
    return assignment.variant


def test_without_an_experiment_the_route_answers_with_no_variant(
    client: TestClient, operator: dict[str, str]
) -> None:
    response = _chat(client, operator, "anyone")
    assert "X-Opsloop-Variant" not in response.headers
    assert (response.headers["X-Opsloop-Backend"], response.headers["X-Opsloop-Fallbacks"]) == ("local", "1")


def test_a_broken_challenger_route_is_rolled_back_and_no_caller_sees_it(
    client: TestClient, platform: Platform, operator: dict[str, str]
) -> None:
    created = _create(
        client, operator, name="broken-route", challenger="broken", steps=[50, 100], min_samples=20
    )
    assert created["target"] == {"kind": "route", "name": "chat"}
    assert [(v["name"], v["version"]) for v in created["variants"]] == [
        ("champion", "chat"),
        ("challenger", "broken"),
    ]
    _wait_routed(platform, "broken-route")

    answers = [_chat(client, operator, f"user-{i}") for i in range(99)]  # 30 a variant for a check
    # The challenger's calls all fail; the champion answers each of them, a stream too.
    unit = next(f"user-{i}" for i in range(99) if _assigned(platform, f"user-{i}") == "challenger")
    streamed = _chat(client, operator, unit, stream=True)
    assert "data: [DONE]" in streamed.text
    answers.append(streamed)
    assert {a.headers["X-Opsloop-Variant"] for a in answers} == {"champion"}
    assert {a.headers["X-Opsloop-Backend"] for a in answers} == {"local"}

    platform.experiments.outcomes.flush()
    decided = dict(platform.experiments.decider.tick())
    assert decided["broken-route"].action == "rollback", decided["broken-route"].reason
    shown = client.get("/admin/experiments/broken-route", headers=operator).json()
    assert shown["status"] == "rolled_back" and "error_rate" in shown["decision"]["reason"]
    champion, challenger = shown["variants"]
    assert challenger["requests"] == challenger["errors"] > 10
    assert champion["requests"] + challenger["requests"] == 100 and champion["errors"] == 0
    assert RouteAliases(platform.db).all() == {}  # the route's name never moved

    # Each side's calls are in the ledger under their variant: the failed ones and the champion's answers.
    costs = client.get("/admin/costs", params={"by": "variant"}, headers=operator).json()
    calls = {row["group"]: row["calls"] for row in costs["rows"]}
    assert calls["broken-route:challenger"] == challenger["requests"]
    assert calls["broken-route:champion"] == 100


def test_a_promoted_route_serves_the_name_until_another_experiment_moves_it_back(
    client: TestClient, platform: Platform, operator: dict[str, str]
) -> None:
    _create(client, operator, name="direct-ab", kind="ab", challenger="direct", weight=50, min_samples=20)
    _wait_routed(platform, "direct-ab")
    answers = [_chat(client, operator, f"user-{i}") for i in range(40)]
    fallbacks = {a.headers["X-Opsloop-Variant"]: a.headers["X-Opsloop-Fallbacks"] for a in answers}
    assert fallbacks == {"champion": "1", "challenger": "0"}  # direct skips the dead backend
    # A unit keeps its variant, streamed or not.
    first = answers[0].headers["X-Opsloop-Variant"]
    streamed = _chat(client, operator, "user-0", stream=True)
    assert streamed.headers["X-Opsloop-Variant"] == first and "data: [DONE]" in streamed.text

    # A request no route can take is the caller's: refused, and counted for neither variant.
    _chat(client, operator, "user-0", status=422, max_tokens=10**6)

    platform.experiments.outcomes.flush()
    shown = client.get("/admin/experiments/direct-ab", headers=operator).json()
    champion, challenger = shown["variants"]
    assert (
        champion["requests"] + challenger["requests"] == 41
        and champion["errors"] == challenger["errors"] == 0
    )
    assert challenger["p50_ms"] < champion["p50_ms"]  # the champion waits out a retry on every call
    assert shown["config"]["primary"] == "latency_ms"
    calls = [c for c in platform.ledger.calls(limit=500) if c.experiment == "direct-ab" and c.outcome == "ok"]
    for v in (champion, challenger):  # what each variant's calls cost, as the ledger priced them
        charged = [c.cost_usd for c in calls if c.variant == v["name"]]
        assert len(charged) == v["requests"] and v["cost_per_request"] == pytest.approx(
            sum(charged) / len(charged)
        )
        assert v["cost_per_request"] > 0

    promoted = client.post("/admin/experiments/direct-ab/promote", headers=operator)
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["status"] == "promoted"
    moved = platform.audit.query(AuditFilter(action="route.alias"))
    assert moved[0].target == "route:chat" and moved[0].after == {
        "served_by": "direct",
        "experiment": "direct-ab",
    }
    time.sleep(0.3)  # a poll
    after = _chat(client, operator, "user-0")
    assert "X-Opsloop-Variant" not in after.headers
    assert after.headers["X-Opsloop-Fallbacks"] == "0"  # chat is now served by direct

    # An experiment on chat now runs direct against a challenger; chat's own backends can win it back.
    again = client.post(
        "/admin/experiments", json={"name": "same", "route": "chat", "challenger": "direct"}, headers=operator
    )
    assert again.status_code == 409 and "already serves" in again.json()["error"]["message"]
    back = _create(client, operator, name="back", challenger="chat")
    assert [v["version"] for v in back["variants"]] == ["direct", "chat"]
    assert client.post("/admin/experiments/back/promote", headers=operator).status_code == 200
    assert RouteAliases(platform.db).all() == {}
    time.sleep(0.3)
    assert _chat(client, operator, "user-0").headers["X-Opsloop-Fallbacks"] == "1"


def test_a_shadow_route_gets_a_copy_of_every_call_and_its_answers_go_nowhere(
    client: TestClient, platform: Platform, operator: dict[str, str]
) -> None:
    _create(client, operator, name="mirror-shadow", kind="shadow", challenger="mirror")
    _wait_routed(platform, "mirror-shadow")
    answers = [_chat(client, operator, f"user-{i}") for i in range(10)]
    answers.append(_chat(client, operator, "user-0", stream=True))
    _chat(client, operator, "user-0", status=422, max_tokens=10**6)  # refused: nothing to copy
    assert {(a.headers["X-Opsloop-Variant"], a.headers["X-Opsloop-Backend"]) for a in answers} == {
        ("champion", "local")
    }

    deadline = time.monotonic() + 60  # the copies run off the request path
    while True:
        platform.experiments.outcomes.flush()
        champion, challenger = _variants(client, operator, "mirror-shadow")
        if challenger["requests"] == 11 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (champion["requests"], challenger["requests"], challenger["errors"]) == (11, 11, 0)
    by_key = client.get("/admin/costs", params={"by": "key"}, headers=operator).json()["rows"]
    assert {row["group"]: row["calls"] for row in by_key}["shadow"] == 11  # the experiment's calls

    # Too many copies in flight: new ones are dropped and counted; callers are answered as ever.
    platform.gateway.shadow_max_pending = 0
    try:
        for i in range(3):
            assert _chat(client, operator, f"user-{i}").headers["X-Opsloop-Backend"] == "local"
    finally:
        platform.gateway.shadow_max_pending = 256
    metrics = client.get("/metrics").text
    assert 'opsloop_experiment_shadow_dropped_total{experiment="mirror-shadow"} 3.0' in metrics


@pytest.mark.parametrize(
    ("plan", "status", "says"),
    [
        (
            {"route": "nope", "challenger": "direct"},
            404,
            "no route 'nope'; the gateway's routes: chat, direct, broken, mirror",
        ),
        ({"route": "chat", "challenger": "nope"}, 404, "no route 'nope'"),
        ({"route": "chat", "challenger": "chat"}, 409, "route 'chat' already serves 'chat'"),
        ({"route": "chat", "challenger": "direct", "kind": "shadow"}, 422, "would share backend 'local'"),
        ({"route": "chat", "challenger": "direct", "primary": "accuracy"}, 422, "primary metric 'accuracy'"),
    ],
)
def test_a_route_experiment_that_cannot_run_is_refused(
    client: TestClient, operator: dict[str, str], plan: dict[str, Any], status: int, says: str
) -> None:
    response = client.post("/admin/experiments", json={"name": "refused", **plan}, headers=operator)
    assert response.status_code == status, response.text
    assert says in response.json()["error"]["message"]
