"""The router with real backends: dead, silent, failing and llama.cpp ones.

The backends: a dead port, a server that never answers, HTTP 500/429/401, and llama.cpp
(its OpenAI-compatible server on loopback, and in-process).

Clients come from the router's real factory (``create_client``); HTTP errors come from a
scripted server on loopback (``tests/integration/scripted_server.py``).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter

from opsloop.errors import BackendError, InvalidInputError, NotFoundError
from opsloop.llm.llamacpp import LlamaCppClient
from opsloop.llm.protocol import ChatChunk, ChatMessage, ChatRequest
from opsloop.llm.router import RoutedStream, Router, build_router
from opsloop.llm.routes import RouteConfig, RouteTable
from tests.integration.llama_server import MODEL, free_port
from tests.integration.scripted_server import scripted_server

FAST_RETRY = {"max_retries": 1, "backoff_s": 0.01, "backoff_max_s": 0.02}


def _request(question: str = "What is the capital of France?", max_tokens: int = 12) -> ChatRequest:
    return ChatRequest(
        messages=[ChatMessage("user", question)], model="chat", max_tokens=max_tokens, temperature=0.0, seed=7
    )


def _routes(*backends: dict[str, Any]) -> dict[str, RouteConfig]:
    return TypeAdapter(RouteTable).validate_python({"chat": list(backends)})


def _dead() -> dict[str, Any]:
    return {
        "name": "dead",
        "kind": "openai",
        "base_url": f"http://127.0.0.1:{free_port()}/v1",
        "model": MODEL,
    }


def _remote(name: str, url: str, **overrides: Any) -> dict[str, Any]:
    return {"name": name, "kind": "openai", "base_url": url, "model": MODEL, **overrides}


def _completion(model: str) -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Paris"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
    }


async def _drain(stream: RoutedStream, stop_after: int | None = None) -> list[ChatChunk]:
    chunks: list[ChatChunk] = []
    try:
        async for chunk in stream:
            chunks.append(chunk)
            if stop_after is not None and len(chunks) == stop_after:
                break
    finally:
        await stream.aclose()
    return chunks


def _with_router(router: Router, use: Callable[[Router], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        try:
            return await use(router)
        finally:
            await router.aclose()

    return asyncio.run(run())


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port whose kernel accepts connections that no one ever answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


def test_dead_primary_falls_back_to_a_real_server(llama_server_url: str) -> None:
    router = build_router(_routes({**_dead(), **FAST_RETRY}, _remote("local", llama_server_url)))
    routed = _with_router(router, lambda r: r.chat("chat", _request()))
    assert routed.result.text.strip() and routed.result.backend == "local"
    assert routed.result.usage.prompt_tokens > 0 and 0 < routed.result.usage.completion_tokens <= 12
    outcome = routed.outcome
    assert outcome.backend == "local" and (outcome.fallbacks, outcome.retries) == (1, 1)
    assert [(a.backend, a.number, a.decision) for a in outcome.attempts] == [
        ("dead", 1, "retry"),
        ("dead", 2, "retry"),
        ("local", 1, None),
    ]
    assert all(a.error is not None and "unreachable" in a.error.message for a in outcome.attempts[:2])
    with pytest.raises(NotFoundError, match="known models: chat"):
        asyncio.run(router.chat("gpt-4o", _request()))


def test_dead_primary_falls_back_when_streaming(llama_server_url: str) -> None:
    router = build_router(_routes(_dead(), _remote("local", llama_server_url)))

    async def use(r: Router) -> tuple[list[ChatChunk], RoutedStream]:
        stream = r.stream("chat", _request("Write a story about a cat."))
        return await _drain(stream), stream

    chunks, stream = _with_router(router, use)
    *deltas, final = chunks
    assert "".join(c.delta for c in deltas).strip()
    assert final.finish_reason == "length" and final.usage is not None and final.usage.completion_tokens > 0
    assert stream.usage == final.usage
    assert stream.outcome.backend == "local" and stream.outcome.attempts[0].backend == "dead"
    assert router.in_flight() == {"dead": 0, "local": 0}


def test_http_500_and_429_are_retried_then_fall_back(llama_server_url: str) -> None:
    statuses = iter([500, 429])
    seen: list[dict[str, Any]] = []

    def reply(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        status = next(statuses)
        return httpx.Response(status, json={"error": {"message": f"upstream said {status}"}})

    async def use(r: Router) -> Any:
        return await r.chat("chat", _request())

    async def run() -> Any:
        async with scripted_server(reply) as root:
            routes = _routes(
                _remote("flaky", f"{root}/v1", model="flaky-model", **FAST_RETRY),
                _remote("local", llama_server_url),
            )
            router = build_router(routes)
            try:
                return await use(router)
            finally:
                await router.aclose()

    routed = asyncio.run(run())
    assert routed.outcome.backend == "local" and routed.result.text.strip()
    assert [a.reason for a in routed.outcome.attempts] == ["http_500", "http_429", None]
    assert [body["model"] for body in seen] == ["flaky-model", "flaky-model"]  # the backend's name


def test_a_retry_that_succeeds_stays_on_the_backend() -> None:
    replies = iter([httpx.Response(503, json={"error": {"message": "warming up"}})])

    def reply(request: httpx.Request) -> httpx.Response:
        return next(replies, None) or httpx.Response(200, json=_completion("flaky-model"))

    async def run() -> Any:
        async with scripted_server(reply) as root:
            router = build_router(_routes(_remote("flaky", f"{root}/v1", **FAST_RETRY), _dead()))
            try:
                return await router.chat("chat", _request())
            finally:
                await router.aclose()

    routed = asyncio.run(run())
    assert routed.result.text == "Paris" and routed.outcome.backend == "flaky"
    assert (routed.outcome.retries, routed.outcome.fallbacks) == (1, 0)


@pytest.mark.parametrize(
    ("status", "error"), [(401, BackendError), (403, BackendError), (400, InvalidInputError)]
)
def test_non_retryable_http_errors_do_not_fall_back(status: int, error: type[Exception]) -> None:
    calls: dict[str, int] = {"primary": 0, "secondary": 0}

    def reply(request: httpx.Request) -> httpx.Response:
        host = request.url.path.split("/")[1]
        calls[host] += 1
        if host == "primary":
            return httpx.Response(status, json={"error": {"message": f"no ({status})"}})
        return httpx.Response(200, json=_completion(MODEL))

    async def run() -> None:
        async with scripted_server(reply) as root:
            router = build_router(
                _routes(
                    _remote("primary", f"{root}/primary/v1", max_retries=3),
                    _remote("secondary", f"{root}/secondary/v1"),
                )
            )
            with pytest.raises(error, match=rf"no \({status}\)"):
                await router.chat("chat", _request())
            assert router.in_flight() == {"primary": 0, "secondary": 0}
            await router.aclose()

    asyncio.run(run())
    assert calls == {"primary": 1, "secondary": 0}


@pytest.mark.parametrize("streaming", [False, True])
def test_a_server_that_never_answers_times_out_and_falls_back(
    silent_port: int, llama_server_url: str, streaming: bool
) -> None:
    silent = _remote("silent", f"http://127.0.0.1:{silent_port}/v1", timeout_s=0.5, max_retries=0)
    router = build_router(_routes(silent, _remote("local", llama_server_url)))

    async def use(r: Router) -> Any:
        if streaming:
            stream = r.stream("chat", _request())
            await _drain(stream)
            return stream.outcome
        return (await r.chat("chat", _request())).outcome

    started = time.monotonic()
    outcome = _with_router(router, use)
    assert outcome.backend == "local"
    first = outcome.attempts[0]
    assert (first.backend, first.reason, first.decision) == ("silent", "timeout", "retry")
    assert 0.5 <= first.elapsed_ms / 1000 < 1.5
    assert time.monotonic() - started < 30


def test_concurrency_limit_holds_against_a_real_client() -> None:
    in_flight = 0
    most = 0

    async def reply(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return httpx.Response(200, json=_completion("m"))

    async def run() -> list[Any]:
        async with scripted_server(reply) as root:
            route = {
                "backends": [_remote("vllm", f"{root}/v1", max_concurrency=2)],
                "queue_timeout_s": 10,
            }
            router = build_router(TypeAdapter(RouteTable).validate_python({"chat": route}))
            try:
                return await asyncio.gather(*(router.chat("chat", _request()) for _ in range(8)))
            finally:
                await router.aclose()

    results = asyncio.run(run())
    assert len(results) == 8 and all(r.result.text == "Paris" for r in results)
    assert most == 2


def test_warm_up_loads_a_routes_in_process_model_and_leaves_remote_ones_alone() -> None:
    local = {"name": "local", "kind": "llamacpp", "threads": 1, "max_concurrency": 1}
    far = {**_dead(), "name": "far"}
    router = build_router(TypeAdapter(RouteTable).validate_python({"chat": [_dead(), local], "far": [far]}))
    client = router._backends["local"].client
    assert isinstance(client, LlamaCppClient) and not client.loaded
    assert router.warm_up("far") == [] and not client.loaded
    assert router.warm_up("chat") == ["local"] and client.loaded
    with pytest.raises(NotFoundError):
        router.warm_up("missing")
    asyncio.run(router.aclose())


def test_falls_back_to_llamacpp_in_process_and_early_close_settles_usage() -> None:
    local = {"name": "local", "kind": "llamacpp", "threads": 1, "max_concurrency": 1, "timeout_s": 60}
    router = build_router(_routes(_dead(), local))

    async def use(r: Router) -> tuple[Any, list[ChatChunk], RoutedStream]:
        routed = await r.chat("chat", _request())
        stream = r.stream("chat", _request("Write a long story about a dragon.", max_tokens=24))
        return routed, await _drain(stream, stop_after=2), stream

    routed, chunks, stream = _with_router(router, use)
    assert routed.result.backend == "local" and routed.result.model.startswith("SmolLM2-135M-Instruct")
    assert routed.outcome.fallbacks == 1 and routed.result.usage.completion_tokens > 0
    assert len(chunks) == 2 and stream.outcome.backend == "local"
    assert stream.usage is not None and stream.usage.prompt_tokens > 0
    assert 2 <= stream.usage.completion_tokens < 24  # what was generated before the close
    assert router.in_flight() == {"dead": 0, "local": 0}
