"""Router logic against scripted fake backends, each standing for "a backend that fails in way X".

Real backends (a dead port, HTTP 500/429, a stalled server, llama.cpp) are in
tests/integration/test_router_fallback.py.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any

import pytest
from pydantic import TypeAdapter

from opsloop.errors import (
    BackendError,
    ConfigError,
    InvalidInputError,
    NotFoundError,
    OpsloopError,
    OverloadedError,
)
from opsloop.llm.protocol import ChatChunk, ChatMessage, ChatRequest, ChatResult, LLMClient, Usage
from opsloop.llm.router import (
    Attempt,
    RouteOutcome,
    Router,
    RouterHooks,
    backoff_delay,
    classify,
)
from opsloop.llm.routes import RouteConfig, RouteTable

REQUEST = ChatRequest(messages=[ChatMessage("user", "hi")], model="chat")
HANG = "hang"
DIE_AFTER_FIRST = "die-after-first"
STALL_AFTER_FIRST = "stall-after-first"
Action = str | OpsloopError


def _retryable(status: int = 503) -> BackendError:
    return BackendError(f"HTTP {status}", backend="x", upstream_status=status, retryable=True)


class FakeStream:
    """Chunks ``Hel``, ``lo`` and a final one, or fails as its action says."""

    def __init__(self, backend: FakeBackend, action: Action) -> None:
        self._backend = backend
        self._action = action
        self._chunks = self._run()
        self.usage: Usage | None = None
        self.sent = 0
        self.closed = False

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> ChatChunk:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        self.closed = True
        await self._chunks.aclose()

    async def _run(self) -> AsyncGenerator[ChatChunk, None]:
        async with self._backend.busy():
            try:
                if isinstance(self._action, OpsloopError):
                    raise self._action
                if self._action == HANG:
                    await asyncio.Event().wait()
                for index, piece in enumerate(("Hel", "lo")):
                    if index == 1 and self._action == DIE_AFTER_FIRST:
                        raise _retryable(500)
                    if index == 1 and self._action == STALL_AFTER_FIRST:
                        await asyncio.Event().wait()
                    self.sent += 1
                    yield ChatChunk(delta=piece)
                yield ChatChunk(finish_reason="stop", usage=Usage(3, self.sent))
            finally:
                self.usage = Usage(3, self.sent)


class FakeBackend:
    """An LLMClient that plays one scripted action per call, then answers normally.

    Actions: "ok", HANG, an OpsloopError to raise, and for streams DIE_AFTER_FIRST and
    STALL_AFTER_FIRST. It counts calls and the most calls in flight at once.
    """

    def __init__(self, name: str, *script: Action, delay: float = 0.0) -> None:
        self.name = name
        self.script = list(script)
        self.delay = delay
        self.requests: list[ChatRequest] = []
        self.streams: list[FakeStream] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed = 0

    def busy(self) -> Any:
        backend = self

        class _Busy:
            async def __aenter__(self) -> None:
                backend.in_flight += 1
                backend.max_in_flight = max(backend.max_in_flight, backend.in_flight)
                if backend.delay:
                    await asyncio.sleep(backend.delay)

            async def __aexit__(self, *exc: object) -> None:
                backend.in_flight -= 1

        return _Busy()

    def _next(self, request: ChatRequest) -> Action:
        self.requests.append(request)
        return self.script.pop(0) if self.script else "ok"

    async def chat(self, request: ChatRequest) -> ChatResult:
        action = self._next(request)
        async with self.busy():
            if isinstance(action, OpsloopError):
                raise action
            if action == HANG:
                await asyncio.Event().wait()
            return ChatResult("hello", "stop", Usage(3, 2), model=request.model, backend=self.name)

    def stream(self, request: ChatRequest) -> FakeStream:
        stream = FakeStream(self, self._next(request))
        self.streams.append(stream)
        return stream

    async def aclose(self) -> None:
        self.closed += 1


def _routes(**routes: Any) -> dict[str, RouteConfig]:
    return TypeAdapter(RouteTable).validate_python(routes)


def _spec(name: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "kind": "openai",
        "base_url": f"http://{name}/v1",
        "model": f"m-{name}",
    }
    return {"max_retries": 0, "backoff_s": 0.1, "backoff_max_s": 1.0, **spec, **overrides}


class Recorder:
    """Hooks and a sleep that remember what they saw."""

    def __init__(self) -> None:
        self.attempts: list[Attempt] = []
        self.fallbacks: list[tuple[str, str]] = []
        self.failures: list[OpsloopError] = []
        self.sleeps: list[float] = []

    def hooks(self) -> RouterHooks:
        return RouterHooks(
            on_attempt=lambda outcome, attempt: self.attempts.append(attempt),
            on_fallback=lambda outcome, failed, to: self.fallbacks.append((failed.backend, to)),
            on_failure=lambda outcome, error: self.failures.append(error),
        )

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def _router(
    routes: dict[str, RouteConfig], *backends: FakeBackend, recorder: Recorder | None = None
) -> Router:
    recorder = recorder or Recorder()
    return Router(
        routes,
        {b.name: b for b in backends},
        hooks=recorder.hooks(),
        sleep=recorder.sleep,
        rng=random.Random(7),
    )


def _run(make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(make())


async def _collect(router: Router, route: str = "chat") -> tuple[list[ChatChunk], Any]:
    stream = router.stream(route, REQUEST)
    chunks: list[ChatChunk] = []
    try:
        async for chunk in stream:
            chunks.append(chunk)
    finally:
        await stream.aclose()
    return chunks, stream


# -- pure parts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "decision"),
    [
        (_retryable(429), "retry"),
        (OverloadedError("queue full", retryable=True), "retry"),
        (BackendError("inference failed"), "fallback"),
        (BackendError("rejected the API key", upstream_status=401, retryable=False), "fatal"),
        (InvalidInputError("bad", field="messages"), "fatal"),
        (NotFoundError("no model"), "fatal"),
    ],
)
def test_classify(error: OpsloopError, decision: str) -> None:
    assert classify(error) == decision


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    rng = random.Random(1)
    for retry in range(1, 9):
        step = min(2.0, 0.1 * 2 ** (retry - 1))
        delays = {backoff_delay(retry, 0.1, 2.0, rng) for _ in range(50)}
        assert all(step / 2 <= d <= step for d in delays)
        assert len(delays) > 1  # jittered
    with pytest.raises(ValueError, match="from 1"):
        backoff_delay(0, 0.1, 2.0, rng)


# -- chat ----------------------------------------------------------------------------------


def test_unknown_route_names_the_model_and_lists_known_ones() -> None:
    router = _router(_routes(chat=[_spec("a")], small=[_spec("a")]), FakeBackend("a"))
    assert router.routes() == ["chat", "small"]
    with pytest.raises(NotFoundError, match=r"'gpt-5' is not served here; known models: chat, small") as info:
        _run(lambda: router.chat("gpt-5", REQUEST))
    assert info.value.details == {"model": "gpt-5", "known": ["chat", "small"]}
    with pytest.raises(NotFoundError):
        router.stream("gpt-5", REQUEST)


def test_a_backend_without_client_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no client for backends: b"):
        Router(_routes(chat=[_spec("a"), _spec("b")]), {"a": FakeBackend("a")})


def test_healthy_primary_serves_with_the_backends_model_name() -> None:
    primary, secondary = FakeBackend("a"), FakeBackend("b")
    routed = _run(
        lambda: _router(_routes(chat=[_spec("a"), _spec("b")]), primary, secondary).chat("chat", REQUEST)
    )
    assert routed.result.backend == "a" and routed.outcome.backend == "a"
    assert primary.requests[0].model == "m-a" and primary.requests[0].messages == REQUEST.messages
    assert (len(routed.outcome.attempts), routed.outcome.fallbacks, routed.outcome.retries) == (1, 0, 0)
    assert not secondary.requests


def test_retryable_errors_retry_with_backoff_then_fall_back() -> None:
    primary = FakeBackend("a", _retryable(503), _retryable(429), _retryable(500))
    secondary = FakeBackend("b")
    recorder = Recorder()
    router = _router(
        _routes(chat=[_spec("a", max_retries=2), _spec("b")]), primary, secondary, recorder=recorder
    )
    routed = _run(lambda: router.chat("chat", REQUEST))
    outcome: RouteOutcome = routed.outcome
    assert outcome.backend == "b" and routed.result.backend == "b"
    assert [(a.backend, a.number, a.reason) for a in outcome.attempts] == [
        ("a", 1, "http_503"),
        ("a", 2, "http_429"),
        ("a", 3, "http_500"),
        ("b", 1, None),
    ]
    assert (outcome.fallbacks, outcome.retries) == (1, 2)
    assert len(recorder.sleeps) == 2
    assert 0.05 <= recorder.sleeps[0] <= 0.1 and 0.1 <= recorder.sleeps[1] <= 0.2
    assert recorder.attempts == outcome.attempts and recorder.fallbacks == [("a", "b")]
    assert router.in_flight() == {"a": 0, "b": 0}


def test_a_retry_can_succeed_on_the_same_backend() -> None:
    primary = FakeBackend("a", _retryable(503))
    routed = _run(
        lambda: _router(
            _routes(chat=[_spec("a", max_retries=1), _spec("b")]), primary, FakeBackend("b")
        ).chat("chat", REQUEST)
    )
    assert routed.outcome.backend == "a" and (routed.outcome.retries, routed.outcome.fallbacks) == (1, 0)


def test_unflagged_backend_error_falls_back_without_retrying() -> None:
    primary = FakeBackend("a", BackendError("a: inference failed", backend="a"))
    recorder = Recorder()
    router = _router(
        _routes(chat=[_spec("a", max_retries=3), _spec("b")]), primary, FakeBackend("b"), recorder=recorder
    )
    routed = _run(lambda: router.chat("chat", REQUEST))
    assert routed.outcome.backend == "b" and len(primary.requests) == 1 and not recorder.sleeps
    assert routed.outcome.attempts[0].decision == "fallback"


@pytest.mark.parametrize(
    "error",
    [
        InvalidInputError("prompt does not fit the context window", field="messages"),
        BackendError("a rejected the API key (HTTP 401)", backend="a", upstream_status=401, retryable=False),
    ],
)
def test_non_retryable_errors_are_raised_at_once(error: OpsloopError) -> None:
    primary, secondary = FakeBackend("a", error), FakeBackend("b")
    recorder = Recorder()
    router = _router(
        _routes(chat=[_spec("a", max_retries=3), _spec("b")]), primary, secondary, recorder=recorder
    )
    with pytest.raises(type(error)) as info:
        _run(lambda: router.chat("chat", REQUEST))
    assert info.value is error
    assert len(primary.requests) == 1 and not secondary.requests and not recorder.sleeps
    assert recorder.failures == [error] and router.in_flight() == {"a": 0, "b": 0}


def test_timeout_falls_back() -> None:
    primary, secondary = FakeBackend("a", HANG), FakeBackend("b")
    router = _router(_routes(chat=[_spec("a", timeout_s=0.05), _spec("b")]), primary, secondary)
    started = time.monotonic()
    routed = _run(lambda: router.chat("chat", REQUEST))
    assert time.monotonic() - started < 1.0
    assert routed.outcome.backend == "b"
    timed_out = routed.outcome.attempts[0]
    assert (timed_out.backend, timed_out.reason, timed_out.decision) == ("a", "timeout", "retry")
    assert timed_out.error is not None and "within 0.05s" in timed_out.error.message
    assert primary.in_flight == 0  # the hung call was cancelled


def test_every_backend_failing_is_one_error_listing_the_attempts() -> None:
    primary = FakeBackend("a", _retryable(500), _retryable(502))
    secondary = FakeBackend("b", _retryable(429))
    recorder = Recorder()
    router = _router(
        _routes(chat=[_spec("a", max_retries=1), _spec("b")]), primary, secondary, recorder=recorder
    )
    with pytest.raises(
        BackendError, match=r"model 'chat': every backend failed \(a: HTTP 502; b: HTTP 429\)"
    ) as info:
        _run(lambda: router.chat("chat", REQUEST))
    error = info.value
    assert error.status == 502 and error.details["route"] == "chat"
    assert [(a["backend"], a["attempt"], a["reason"]) for a in error.details["attempts"]] == [
        ("a", 1, "http_500"),
        ("a", 2, "http_502"),
        ("b", 1, "http_429"),
    ]
    assert isinstance(error.__cause__, BackendError) and error.__cause__.message == "HTTP 429"
    assert recorder.failures == [error]
    assert error.to_dict()["error"]["details"]["attempts"][0]["message"] == "HTTP 500"  # JSON-ready


# -- concurrency ---------------------------------------------------------------------------


def test_concurrency_limit_holds_under_load() -> None:
    backend = FakeBackend("a", delay=0.02)
    router = _router(
        _routes(chat={"backends": [_spec("a", max_concurrency=2)], "queue_timeout_s": 5}), backend
    )

    async def run() -> list[Any]:
        return await asyncio.gather(*(router.chat("chat", REQUEST) for _ in range(10)))

    results = _run(run)
    assert len(results) == 10 and all(r.outcome.backend == "a" for r in results)
    assert backend.max_in_flight == 2
    assert max(r.outcome.queued_ms for r in results) > 0
    assert router.in_flight() == {"a": 0}


def test_a_full_backend_spills_over_to_the_next() -> None:
    primary, secondary = FakeBackend("a", delay=0.05), FakeBackend("b", delay=0.05)
    router = _router(_routes(chat=[_spec("a", max_concurrency=1), _spec("b")]), primary, secondary)

    async def run() -> tuple[Any, ...]:
        return await asyncio.gather(router.chat("chat", REQUEST), router.chat("chat", REQUEST))

    first, second = _run(run)
    assert (first.outcome.backend, second.outcome.backend) == ("a", "b")
    assert second.outcome.queued_ms == 0 and not second.outcome.attempts[0].error


def test_a_waiting_request_takes_the_first_slot_freed_in_any_backend() -> None:
    slow, fast = FakeBackend("a", delay=1.0), FakeBackend("b", delay=0.05)
    router = _router(
        _routes(chat={"backends": [_spec("a", max_concurrency=1), _spec("b", max_concurrency=1)]}), slow, fast
    )

    async def run() -> list[Any]:
        return await asyncio.gather(*(router.chat("chat", REQUEST) for _ in range(3)))

    results = _run(run)
    assert [r.outcome.backend for r in results] == ["a", "b", "b"]
    assert 30 < results[2].outcome.queued_ms < 900


def test_saturated_route_waits_its_queue_timeout_then_is_overloaded() -> None:
    backend = FakeBackend("a", HANG)
    router = _router(
        _routes(chat={"backends": [_spec("a", max_concurrency=1)], "queue_timeout_s": 0.05}), backend
    )

    async def run() -> OverloadedError:
        hung = asyncio.create_task(router.chat("chat", REQUEST))
        await asyncio.sleep(0.01)
        try:
            with pytest.raises(OverloadedError) as info:
                await router.chat("chat", REQUEST)
        finally:
            hung.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hung
        return info.value

    error = _run(run)
    assert error.status == 503
    assert (
        "model 'chat' is at capacity: a 1/1 requests in flight, and none finished within 0.05s"
        in error.message
    )
    assert error.details["busy"] == ["a"]
    assert router.in_flight() == {"a": 0}  # the cancelled request gave its slot back


# -- streams -------------------------------------------------------------------------------


def test_stream_falls_back_before_the_first_chunk() -> None:
    primary, secondary = FakeBackend("a", _retryable(503)), FakeBackend("b")
    router = _router(_routes(chat=[_spec("a"), _spec("b")]), primary, secondary)
    chunks, stream = _run(lambda: _collect(router))
    assert [c.delta for c in chunks] == ["Hel", "lo", ""] and chunks[-1].usage == Usage(3, 2)
    assert stream.outcome.backend == "b" and stream.outcome.fallbacks == 1
    assert stream.usage == Usage(3, 2)
    assert primary.streams[0].closed and secondary.streams[0].closed
    assert secondary.requests[0].model == "m-b"
    assert router.in_flight() == {"a": 0, "b": 0}


def test_stream_timeout_before_the_first_chunk_falls_back() -> None:
    primary, secondary = FakeBackend("a", HANG), FakeBackend("b")
    router = _router(_routes(chat=[_spec("a", timeout_s=0.05), _spec("b")]), primary, secondary)

    async def run() -> tuple[list[ChatChunk], Any]:
        try:
            return await _collect(router)
        finally:
            await router.aclose()  # waits for the abandoned stream's close

    chunks, stream = _run(run)
    assert stream.outcome.backend == "b" and stream.outcome.attempts[0].reason == "timeout"
    assert "".join(c.delta for c in chunks) == "Hello"
    assert primary.streams[0].closed and primary.in_flight == 0


def test_stream_error_after_the_first_chunk_propagates_without_fallback() -> None:
    primary, secondary = FakeBackend("a", DIE_AFTER_FIRST), FakeBackend("b")
    recorder = Recorder()
    router = _router(
        _routes(chat=[_spec("a", max_retries=2), _spec("b")]), primary, secondary, recorder=recorder
    )

    async def run() -> tuple[list[str], Any]:
        stream = router.stream("chat", REQUEST)
        seen: list[str] = []
        try:
            with pytest.raises(BackendError, match="HTTP 500"):
                async for chunk in stream:
                    seen.append(chunk.delta)
        finally:
            await stream.aclose()
        return seen, stream

    seen, stream = _run(run)
    assert seen == ["Hel"] and not secondary.requests and len(primary.requests) == 1
    assert stream.outcome.backend == "a" and stream.outcome.error is recorder.failures[0]
    assert stream.usage == Usage(3, 1) and router.in_flight() == {"a": 0, "b": 0}


def test_stream_stalling_after_the_first_chunk_ends_with_an_error() -> None:
    primary = FakeBackend("a", STALL_AFTER_FIRST)
    router = _router(_routes(chat=[_spec("a", timeout_s=0.05), _spec("b")]), primary, FakeBackend("b"))
    with pytest.raises(BackendError, match=r"a stalled: no chunk for 0.05s"):
        _run(lambda: _collect(router))
    assert primary.streams[0].closed and router.in_flight() == {"a": 0, "b": 0}


def test_early_close_settles_usage_and_frees_the_slot() -> None:
    backend = FakeBackend("a")
    router = _router(_routes(chat=[_spec("a", max_concurrency=1)]), backend)

    async def run() -> Any:
        stream = router.stream("chat", REQUEST)
        try:
            async for _ in stream:
                assert router.in_flight() == {"a": 1}
                break
        finally:
            await stream.aclose()
        return stream

    stream = _run(run)
    assert backend.streams[0].closed and stream.usage == Usage(3, 1)
    assert router.in_flight() == {"a": 0}


def test_a_stream_closed_before_iterating_costs_nothing() -> None:
    backend = FakeBackend("a")
    router = _router(_routes(chat=[_spec("a")]), backend)

    async def run() -> None:
        await router.stream("chat", REQUEST).aclose()

    _run(run)
    assert not backend.requests and router.in_flight() == {"a": 0}


def test_non_retryable_stream_error_is_raised_at_once() -> None:
    error = InvalidInputError("bad", field="messages")
    primary, secondary = FakeBackend("a", error), FakeBackend("b")
    router = _router(_routes(chat=[_spec("a"), _spec("b")]), primary, secondary)
    with pytest.raises(InvalidInputError):
        _run(lambda: _collect(router))
    assert not secondary.requests and primary.streams[0].closed


# -- the route as a client -----------------------------------------------------------------


def test_a_route_is_an_llm_client_and_the_router_closes_backends() -> None:
    primary, secondary = FakeBackend("a", _retryable()), FakeBackend("b")
    router = _router(_routes(chat=[_spec("a"), _spec("b")], small=[_spec("b")]), primary, secondary)
    client: LLMClient = router.client("chat")  # statically, too
    assert isinstance(client, LLMClient) and client.name == "chat"

    async def run() -> ChatResult:
        result = await client.chat(REQUEST)
        await client.aclose()
        assert not primary.closed
        await router.aclose()
        return result

    assert _run(run).backend == "b"
    assert (primary.closed, secondary.closed) == (1, 1)
