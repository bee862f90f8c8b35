"""The gateway's limits over HTTP: bounded ``max_tokens`` and reservations, metered embeddings.

The app runs in-process (``TestClient``, its lifespan included); chat routes go to a fake
OpenAI-compatible server on loopback that takes a while to answer, so concurrent calls are
really in flight together. It bills ``PROMPT_TOKENS`` prompt tokens (fewer than the gateway's
estimate of any message here) and exactly ``max_tokens`` completion tokens, so each call costs
its worst case; streams send ``STREAM_PIECES`` pieces, ``PIECE_S`` apart.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from opsloop.audit import AuditFilter
from opsloop.auth import Role
from opsloop.budgets import Budget
from opsloop.llm.gateway import EMBEDDING_MODEL
from opsloop.settings import load_settings
from serving.app import create_app
from serving.platform import Platform
from tests.e2e.server import uvicorn_thread

PROMPT_TOKENS = 5
ANSWER_S = 0.5
STREAM_PIECES = 10
PIECE_S = 0.2
USD_PER_TOKEN = 0.001  # input and output alike: 1000 USD per million tokens
HELLO = [{"role": "user", "content": "Say hi."}]  # estimated at 7 // 3 + 8 = 10 prompt tokens


async def _completions(request: Request) -> Response:
    body = await request.json()
    completion = body.get("max_tokens") or 16
    usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion}
    if not body.get("stream"):
        await asyncio.sleep(ANSWER_S)
        message = {"role": "assistant", "content": "hi"}
        choice = {"index": 0, "message": message, "finish_reason": "length"}
        return JSONResponse({"id": "c", "object": "chat.completion", "choices": [choice], "usage": usage})

    async def events() -> AsyncIterator[str]:
        for _ in range(STREAM_PIECES):
            await asyncio.sleep(PIECE_S)
            piece = {"index": 0, "delta": {"content": "hi "}, "finish_reason": None}
            yield f"data: {json.dumps({'choices': [piece]})}\n\n"
        end = {"index": 0, "delta": {}, "finish_reason": "stop"}
        yield f"data: {json.dumps({'choices': [end]})}\n\n"
        usage["completion_tokens"] = STREAM_PIECES
        yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    """API root of the fake OpenAI-compatible server."""
    app = Starlette(routes=[Route("/v1/chat/completions", _completions, methods=["POST"])])
    with uvicorn_thread(app) as port:
        yield f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def app(tmp_path: Path, upstream: str) -> FastAPI:
    paid = {
        "name": "upstream",
        "kind": "openai",
        "base_url": upstream,
        "model": "m",
        "input_per_mtok": USD_PER_TOKEN * 1e6,
        "output_per_mtok": USD_PER_TOKEN * 1e6,
        "max_retries": 0,
        "timeout_s": 10,
    }
    settings = load_settings(
        home=tmp_path / "home",
        bootstrap_demo=False,
        bootstrap_docs=False,
        budget_cache_seconds=0,
        llm_routes={
            "paid": {"backends": [paid], "queue_timeout_s": 10},
            "tiny": [{"name": "local", "kind": "llamacpp", "n_ctx": 64}],
        },
    )
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def _platform(app: FastAPI) -> Platform:
    platform: Platform = app.state.platform
    return platform


def _key(app: FastAPI, tenant: str) -> tuple[str, dict[str, str]]:
    new = _platform(app).keys.create(tenant, Role.USER, actor="test")
    return new.info.id, {"Authorization": f"Bearer {new.secret.get_secret_value()}"}


def _budget(app: FastAPI, tenant: str, kind: str, limit: float, key_id: str | None = None) -> Budget:
    return _platform(app).budgets.set(tenant, kind, limit, key_id=key_id, actor="test")


def _chat(client: TestClient, headers: dict[str, str], **body: Any) -> httpx2.Response:
    return client.post(
        "/v1/chat/completions", json={"model": "paid", "messages": HELLO, **body}, headers=headers
    )


def _used(app: FastAPI, budget: Budget) -> float:
    return _platform(app).enforcer.usage([budget])[0].used


def _wait_for_the_minute_to_hold(seconds: int) -> None:
    """Rate limits count UTC minutes: make sure the next ``seconds`` stay in one."""
    now = datetime.now(UTC)
    if now.second > 59 - seconds:
        time.sleep(60.5 - now.second - now.microsecond / 1e6)


# --- chat: reservations ----------------------------------------------------------------------


def test_concurrent_calls_overspend_a_usd_budget_by_less_than_one_call(
    app: FastAPI, client: TestClient
) -> None:
    _, headers = _key(app, "acme")
    one_call = (PROMPT_TOKENS + 100) * USD_PER_TOKEN  # what each admitted call really costs
    budget = _budget(app, "acme", "daily_usd", 2.5 * one_call)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: _chat(client, headers, max_tokens=100), range(8)))

    ok = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert len(ok) + len(refused) == 8, [a.text for a in answers]
    assert all(a.json()["error"]["details"]["budget"] == "daily_usd" for a in refused)
    spent = sum(row.cost_usd for row in _platform(app).ledger.calls(tenant="acme") if row.outcome == "ok")
    assert spent == pytest.approx(len(ok) * one_call)
    # Without a USD reservation all 8 were admitted (8 calls' worth for a 2.5-call budget).
    assert len(ok) >= 1 and spent < budget.limit + one_call, (len(ok), spent)
    assert _used(app, budget) == pytest.approx(spent)  # every reservation was settled to the real cost


def test_absurd_max_tokens_are_422_and_reserve_nothing(app: FastAPI, client: TestClient) -> None:
    attacker_id, attacker = _key(app, "acme")
    _, colleague = _key(app, "acme")
    budget = _budget(app, "acme", "daily_tokens", 1000)
    with ThreadPoolExecutor(1) as pool:
        huge = pool.submit(_chat, client, attacker, max_tokens=10**15, stream=True)
        time.sleep(3 * PIECE_S)  # if it was admitted, its stream is under way now
        during = _chat(client, colleague, max_tokens=8)
        digits = _chat(client, attacker, max_tokens=int("9" * 400))
        above = _chat(client, attacker, max_tokens=40_000)  # the default window of a remote backend
    assert during.status_code == 200, during.text  # the colleague is not locked out
    assert huge.result().status_code == 422, huge.result().text
    for refused in (huge.result(), digits):
        error = refused.json()["error"]
        assert error["type"] == "invalid_input"
        assert error["details"]["errors"][0]["field"] == "max_tokens"
        assert "2147483647" in error["message"]
    assert digits.status_code == 422, digits.text
    assert above.status_code == 422, above.text
    error = above.json()["error"]
    assert (error["details"]["field"], error["details"]["limit"]) == ("max_tokens", 32768)
    assert "32768" in error["message"] and "'paid'" in error["message"]

    assert _used(app, budget) == PROMPT_TOKENS + 8  # the colleague's call and nothing else
    assert _platform(app).audit.query(AuditFilter(action="budget.soft_limit")) == []
    rows = _platform(app).ledger.calls(tenant="acme")
    assert [r.error_type for r in rows if r.key_id == attacker_id] == [
        "invalid_input"
    ]  # the one that got by the schema


def test_max_tokens_are_capped_by_the_llamacpp_context(app: FastAPI, client: TestClient) -> None:
    _, headers = _key(app, "acme")
    answer = client.post(
        "/v1/chat/completions", json={"model": "tiny", "messages": HELLO, "max_tokens": 65}, headers=headers
    )
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert (error["details"]["field"], error["details"]["limit"]) == ("max_tokens", 64)


def test_an_unsupported_parameter_is_a_422_naming_it(app: FastAPI, client: TestClient) -> None:
    _, headers = _key(app, "acme")
    body = {"model": "tiny", "messages": HELLO, "max_tokens": 4, "logit_bias": {"50256": -100}}
    answer = client.post("/v1/chat/completions", json=body, headers=headers)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["details"]["errors"][0]["field"] == "logit_bias"
    assert "logit_bias: not a parameter this route supports; remove it" in error["message"]


def test_the_chat_route_checks_key_then_body_and_unit_with_fastapis_errors(
    app: FastAPI, client: TestClient
) -> None:
    """The chat route reads its inputs itself (serving.routers.gateway): the same answers as any route."""
    _, headers = _key(app, "acme")
    viewer = _platform(app).keys.create("acme", Role.VIEWER, actor="test").secret.get_secret_value()
    url = "/v1/chat/completions"
    assert client.post(url, content=b"{").status_code == 401  # the key comes first
    assert client.post(url, json={}, headers={"Authorization": "Basic abc"}).status_code == 401
    assert client.post(url, json={}, headers={"Authorization": f"Bearer {viewer}"}).status_code == 403

    json_type = {**headers, "Content-Type": "application/json"}
    malformed = client.post(url, content=b'{"model": ', headers=json_type)
    assert malformed.status_code == 400, malformed.text
    assert malformed.json()["error"]["message"].startswith("request body is not valid JSON: Expecting value")
    assert malformed.json()["error"]["details"]["position"] == 10

    empty = client.post(url, headers=json_type)
    assert empty.status_code == 422
    assert empty.json()["error"]["message"] == "invalid request: body: Field required"

    both = client.post(
        url, json={"model": "tiny", "messages": []}, headers={**headers, "X-Opsloop-Unit": "u" * 257}
    )
    assert both.status_code == 422
    fields = [error["field"] for error in both.json()["error"]["details"]["errors"]]
    assert fields == ["header.X-Opsloop-Unit", "messages"]


# --- embeddings --------------------------------------------------------------------------------


def test_embeddings_are_rate_limited_budgeted_and_in_the_ledger(app: FastAPI, client: TestClient) -> None:
    key_id, headers = _key(app, "acme")
    _budget(app, "acme", "rpm", 1)
    tokens = _budget(app, "acme", "daily_tokens", 100_000)
    body = {"model": EMBEDDING_MODEL, "input": ["the first text", "and a second one"]}
    _wait_for_the_minute_to_hold(20)  # the model loads within the first call
    first = client.post("/v1/embeddings", json=body, headers=headers)
    second = client.post("/v1/embeddings", json=body, headers=headers)

    assert first.status_code == 200, first.text
    assert second.status_code == 429, second.text
    assert "rate limit rpm of tenant acme" in second.json()["error"]["message"]
    used = first.json()["usage"]["prompt_tokens"]
    assert _used(app, tokens) == used
    rows = _platform(app).ledger.calls(tenant="acme")
    ok = [r for r in rows if r.outcome == "ok"]
    assert [(r.route, r.model, r.key_id, r.prompt_tokens, r.completion_tokens) for r in ok] == [
        (EMBEDDING_MODEL, EMBEDDING_MODEL, key_id, used, 0)
    ]
    assert [r.error_type for r in rows if r.outcome == "error"] == ["rate_limited"]
    metrics = client.get("/metrics").text
    assert f'opsloop_llm_requests_total{{outcome="ok",route="{EMBEDDING_MODEL}"}} 1.0' in metrics
    assert (
        f'opsloop_llm_tokens_total{{backend="{EMBEDDING_MODEL}",direction="prompt",route="{EMBEDDING_MODEL}"}}'
        in metrics
    )


@pytest.mark.parametrize(
    ("texts", "field", "limit"),
    [(["a"] * 129, "input", 128), (["fine", "x" * 8193], "input.1", 8192)],
    ids=["inputs", "characters"],
)
def test_embedding_inputs_are_capped_naming_the_limit(
    app: FastAPI, client: TestClient, texts: list[str], field: str, limit: int
) -> None:
    _, headers = _key(app, "acme")
    budget = _budget(app, "acme", "daily_tokens", 100_000)
    answer = client.post("/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": texts}, headers=headers)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert (error["details"]["field"], error["details"]["limit"]) == (field, limit)
    assert str(limit) in error["message"]
    assert _used(app, budget) == 0
    assert [r.error_type for r in _platform(app).ledger.calls(tenant="acme")] == ["invalid_input"]


def test_the_embedding_settings_reach_the_gateway(tmp_path: Path) -> None:
    settings = load_settings(
        home=tmp_path / "home",
        bootstrap_demo=False,
        bootstrap_docs=False,
        embedding_max_inputs=2,
        embedding_max_chars=10,
        embedding_per_mtok=5.0,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        gateway = _platform(client.app).gateway  # type: ignore[arg-type]
        assert (gateway.embedding_max_inputs, gateway.embedding_max_chars) == (2, 10)
        assert gateway.embedding_per_mtok == 5.0
