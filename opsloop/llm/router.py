"""The gateway's router: one public model name, served by an ordered list of backends.

For each request the router walks the route's backends (:mod:`opsloop.llm.routes`) in
order::

    take a slot on the backend (max_concurrency)
        full -> skip to the next backend; when every one left is full, wait up to the
                route's queue_timeout_s for any of them, then OverloadedError (503)
    attempt: client.chat(), or a stream's first chunk, within timeout_s
    on an error, classify() decides:
        "retry"     BackendError(retryable=True): unreachable, timeout, 5xx, 429, overloaded
                    -> the same backend after backoff, up to max_retries, then the next one
        "fallback"  BackendError without a retryable flag (llama.cpp inference failed,
                    model file missing) -> the next backend at once
        "fatal"     InvalidInputError, BackendError(retryable=False) such as a rejected API
                    key, any other opsloop error -> raised at once, no fallback
    every backend failed -> BackendError (502) that lists the attempts

The slot is held across one backend's retries, backoff sleeps included, so retries never
put more than ``max_concurrency`` requests on a backend. A stream can fall back only until
its first chunk has reached the consumer; after that an error (or ``timeout_s`` without a
chunk) ends it. Closing a stream early closes the backend's stream, which settles
``usage``, and frees the slot.

Each request's :class:`RouteOutcome` says which backend served it and every attempt with
its error, for the served-by header and metrics; :class:`RouterHooks` report attempts,
fallbacks and failures as they happen. The router holds no global state: build one per app
with :func:`build_router` and close it with :meth:`Router.aclose`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

from opsloop.errors import BackendError, ConfigError, NotFoundError, OpsloopError, OverloadedError
from opsloop.llm.protocol import ChatChunk, ChatRequest, ChatResult, LLMClient, MeteredStream
from opsloop.llm.routes import (
    BackendSpec,
    ClientFactory,
    RouteConfig,
    backend_specs,
    build_clients,
    create_client,
)
from opsloop.llm.stream import ChunkStream

__all__ = [
    "Attempt",
    "Decision",
    "RouteClient",
    "RouteOutcome",
    "RoutedResult",
    "RoutedStream",
    "Router",
    "RouterHooks",
    "backoff_delay",
    "build_router",
    "classify",
]

_T = TypeVar("_T")
Decision = Literal["retry", "fallback", "fatal"]


def classify(error: OpsloopError) -> Decision:
    """Say what the router does after ``error`` from a backend (see the module docstring)."""
    if not isinstance(error, BackendError):
        return "fatal"
    retryable = error.details.get("retryable")
    if retryable is True:
        return "retry"
    if retryable is False:
        return "fatal"
    return "fallback"


def backoff_delay(retry: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Seconds to wait before retry number ``retry`` (1 for the first) of one backend.

    Exponential (``base_s * 2**(retry-1)``, capped at ``cap_s``) with equal jitter: half
    the step is fixed and half random, so many requests retrying together spread out, yet
    none comes back sooner than half the step.
    """
    if retry < 1:
        raise ValueError(f"retry counts from 1, got {retry}")
    step = min(cap_s, base_s * 2.0 ** (retry - 1))
    return step / 2 + rng.uniform(0, step / 2)


@dataclass(frozen=True)
class Attempt:
    """One call to one backend, successful or not."""

    backend: str
    number: int
    """1 for the first call to this backend within the request, 2 for its first retry."""
    elapsed_ms: float
    error: OpsloopError | None = None
    decision: Decision | None = None
    """What the router did after the error; None after a success."""

    @property
    def reason(self) -> str | None:
        """A short label of the error for metrics: ``timeout``, ``http_429``, or the error type."""
        if self.error is None:
            return None
        status = self.error.details.get("upstream_status")
        if isinstance(status, int):
            return f"http_{status}"
        if "timeout_s" in self.error.details:
            return "timeout"
        return self.error.type

    def to_dict(self) -> dict[str, Any]:
        """This attempt as JSON-ready data, for error details and logs."""
        return {
            "backend": self.backend,
            "attempt": self.number,
            "elapsed_ms": round(self.elapsed_ms, 1),
            "reason": self.reason,
            "message": None if self.error is None else self.error.message,
        }


@dataclass
class RouteOutcome:
    """How the router served one request; filled in while it runs."""

    route: str
    backend: str | None = None
    """The backend that served the request; None while none has (or when all failed)."""
    attempts: list[Attempt] = field(default_factory=list)
    queued_ms: float = 0.0
    """Time spent waiting for a slot because every backend was at its limit."""
    error: OpsloopError | None = None
    """The error the request ended with, if it failed."""

    @property
    def fallbacks(self) -> int:
        """How many times the router moved on to another backend."""
        tried = dict.fromkeys(attempt.backend for attempt in self.attempts)
        return max(len(tried) - 1, 0)

    @property
    def retries(self) -> int:
        """Calls that repeated an earlier call to the same backend."""
        return sum(1 for attempt in self.attempts if attempt.number > 1)


@dataclass(frozen=True)
class RoutedResult:
    """A completion and how it was routed."""

    result: ChatResult
    outcome: RouteOutcome
    variant: str | None = None
    """The variant of the route experiment that answered (set by the gateway; None: none runs)."""


@dataclass(frozen=True)
class RouterHooks:
    """Callbacks for metrics; they run inline on the request's task and must not raise.

    Attributes:
        on_attempt: after every call to a backend, with the request's outcome so far.
        on_fallback: when the router moves on from a failed backend: the failed attempt
            and the name of the backend tried next.
        on_failure: when a request fails for good, with the error the caller gets.
    """

    on_attempt: Callable[[RouteOutcome, Attempt], None] | None = None
    on_fallback: Callable[[RouteOutcome, Attempt, str], None] | None = None
    on_failure: Callable[[RouteOutcome, OpsloopError], None] | None = None


class _MovedOn(Exception):
    """Internal: the backend is done with for this request; try the next one."""


class _Backend:
    """A client with its spec and in-flight count; full at ``max_concurrency``."""

    def __init__(self, spec: BackendSpec, client: LLMClient, freed: Callable[[], None]) -> None:
        self.spec = spec
        self.client = client
        self.in_flight = 0
        self._freed = freed

    def try_acquire(self) -> bool:
        if self.in_flight >= self.spec.max_concurrency:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight -= 1
        self._freed()


class Router:
    """Serves public model names from their routes' backends, with fallback.

    A counter per backend stands in for an ``asyncio.Semaphore`` because a request that
    finds every backend full waits for whichever of them frees first, which a set of
    semaphores cannot express without racing tasks. Like those, the router belongs to one
    event loop at a time (the app's).

    Args:
        routes: public model name -> route.
        clients: backend name -> client, for every backend of ``routes``; the router owns
            them and closes them in :meth:`aclose`.
        hooks: metrics callbacks.
        sleep: waits between retries (tests pass one that records the delays).
        rng: source of backoff jitter.

    Raises:
        ConfigError: the routes are inconsistent or a backend has no client.
    """

    def __init__(
        self,
        routes: Mapping[str, RouteConfig],
        clients: Mapping[str, LLMClient],
        *,
        hooks: RouterHooks | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        specs = backend_specs(routes)
        missing = [name for name in specs if name not in clients]
        if missing:
            raise ConfigError(f"no client for backends: {', '.join(missing)}", backends=missing)
        self._routes = dict(routes)
        self._backends = {name: _Backend(spec, clients[name], self._wake) for name, spec in specs.items()}
        self._hooks = hooks or RouterHooks()
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._waiters: list[asyncio.Future[None]] = []
        self._closing: set[asyncio.Task[None]] = set()

    def routes(self) -> list[str]:
        """The public model names, in configuration order (for ``GET /v1/models``)."""
        return list(self._routes)

    def route(self, name: str) -> RouteConfig:
        """The route of public model ``name``.

        Raises:
            NotFoundError: no such route; the message lists the known ones.
        """
        try:
            return self._routes[name]
        except KeyError:
            known = ", ".join(self._routes) or "none"
            raise NotFoundError(
                f"model {name!r} is not served here; known models: {known}",
                model=name,
                known=list(self._routes),
            ) from None

    def in_flight(self) -> dict[str, int]:
        """Requests each backend is serving now, by backend name."""
        return {name: backend.in_flight for name, backend in self._backends.items()}

    def warm_up(self, route_name: str) -> list[str]:
        """Load the in-process models of ``route_name``'s backends now (blocking); their names.

        A remote backend has nothing to load here; an in-process one (llama.cpp) would otherwise
        load its weights during the first request routed to it.
        """
        warmed = []
        for spec in self.route(route_name).backends:
            warm_up = getattr(self._backends[spec.name].client, "warm_up", None)
            if warm_up is not None:
                warm_up()
                warmed.append(spec.name)
        return warmed

    async def chat(self, route_name: str, request: ChatRequest) -> RoutedResult:
        """Complete ``request`` on the first backend of ``route_name`` that can.

        Raises:
            NotFoundError: unknown route.
            OverloadedError: every backend stayed full for ``queue_timeout_s``.
            BackendError: every backend failed, or one failed in a way no retry fixes.
            InvalidInputError: a backend refused the request as bad.
        """
        outcome = RouteOutcome(route=route_name)
        result, backend = await self._dispatch(outcome, request, _chat)
        backend.release()
        return RoutedResult(result, outcome)

    def stream(self, route_name: str, request: ChatRequest) -> RoutedStream:
        """Stream ``request``; backends are tried on first iteration.

        Raises:
            NotFoundError: unknown route (at once, before any iteration).
        """
        self.route(route_name)
        return RoutedStream(self, route_name, request)

    def client(self, route_name: str) -> RouteClient:
        """``route_name`` as an :class:`LLMClient`, for code that takes one (RAG, evals, agents)."""
        self.route(route_name)
        return RouteClient(self, route_name)

    async def aclose(self) -> None:
        """Close every backend's client, after abandoned streams have been closed."""
        if self._closing:
            await asyncio.gather(*self._closing)
        failed: list[tuple[str, Exception]] = []
        for name, backend in self._backends.items():
            try:
                await backend.client.aclose()
            except Exception as exc:  # close the others before reporting
                failed.append((name, exc))
        if failed:
            names = [name for name, _ in failed]
            first_error = failed[0][1]
            raise BackendError(
                f"closing backends failed: {', '.join(names)}", backends=names
            ) from first_error

    # -- routing ---------------------------------------------------------------------------

    async def _dispatch(
        self,
        outcome: RouteOutcome,
        request: ChatRequest,
        call: Callable[[Router, LLMClient, ChatRequest], Awaitable[_T]],
    ) -> tuple[_T, _Backend]:
        """Run ``call`` on the route's backends until one succeeds; its slot stays taken."""
        route = self.route(outcome.route)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + route.queue_timeout_s
        untried = deque(self._backends[spec.name] for spec in route.backends)
        full: list[_Backend] = []
        while untried or full:
            if untried:
                backend = untried.popleft()
                if not backend.try_acquire():
                    full.append(backend)
                    continue
            else:
                waited = loop.time()
                found = await self._wait_for_slot(full, deadline)
                outcome.queued_ms += (loop.time() - waited) * 1000
                if found is None:
                    raise self._fail(outcome, self._overloaded(outcome, route, full))
                backend = found
                full.remove(backend)
            try:
                return await self._attempts(outcome, backend, request, call), backend
            except _MovedOn:
                backend.release()
            except BaseException:
                backend.release()
                raise
        raise self._fail(outcome, self._exhausted(outcome))

    async def _attempts(
        self,
        outcome: RouteOutcome,
        backend: _Backend,
        request: ChatRequest,
        call: Callable[[Router, LLMClient, ChatRequest], Awaitable[_T]],
    ) -> _T:
        """Call one backend, retrying with backoff; raise _MovedOn to go to the next."""
        spec = backend.spec
        if outcome.attempts and self._hooks.on_fallback is not None:
            self._hooks.on_fallback(outcome, outcome.attempts[-1], spec.name)
        request = replace(request, model=spec.model)  # the backend's name, not the public one
        for number in range(1, spec.max_retries + 2):
            if number > 1:
                await self._sleep(backoff_delay(number - 1, spec.backoff_s, spec.backoff_max_s, self._rng))
            started = time.perf_counter()
            try:
                async with asyncio.timeout(spec.timeout_s):
                    value = await call(self, backend.client, request)
            except TimeoutError as exc:
                error: OpsloopError = BackendError(
                    f"{spec.name} did not answer within {spec.timeout_s}s",
                    backend=spec.name,
                    retryable=True,
                    timeout_s=spec.timeout_s,
                )
                error.__cause__ = exc
            except OpsloopError as exc:
                error = exc
            else:
                self._record(outcome, Attempt(spec.name, number, _ms_since(started)))
                outcome.backend = spec.name
                return value
            decision = classify(error)
            self._record(outcome, Attempt(spec.name, number, _ms_since(started), error, decision))
            if decision == "fatal":
                raise self._fail(outcome, error)
            if decision == "fallback":
                break
        raise _MovedOn

    async def _wait_for_slot(self, candidates: list[_Backend], deadline: float) -> _Backend | None:
        """Take a slot on the first of ``candidates`` to free up; None at ``deadline``."""
        loop = asyncio.get_running_loop()
        while True:
            for backend in candidates:
                if backend.try_acquire():
                    return backend
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait([waiter], timeout=remaining)
            finally:
                self._waiters.remove(waiter)

    def _wake(self) -> None:
        # Every waiter re-checks its own route's backends; they were queued in arrival order.
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _close_later(self, stream: MeteredStream) -> None:
        # A timed-out llama.cpp stream may still be queued behind other work; closing it
        # in the background lets the request fall back now.
        task = asyncio.get_running_loop().create_task(stream.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _record(self, outcome: RouteOutcome, attempt: Attempt) -> None:
        outcome.attempts.append(attempt)
        if self._hooks.on_attempt is not None:
            self._hooks.on_attempt(outcome, attempt)

    def _fail(self, outcome: RouteOutcome, error: OpsloopError) -> OpsloopError:
        outcome.error = error
        if self._hooks.on_failure is not None:
            self._hooks.on_failure(outcome, error)
        return error

    def _exhausted(self, outcome: RouteOutcome) -> BackendError:
        failed = [attempt for attempt in outcome.attempts if attempt.error is not None]
        last: dict[str, str] = {attempt.backend: attempt.error.message for attempt in failed if attempt.error}
        summary = "; ".join(f"{name}: {message}" for name, message in last.items())
        error = BackendError(
            f"model {outcome.route!r}: every backend failed ({summary})",
            route=outcome.route,
            attempts=[attempt.to_dict() for attempt in failed],
        )
        error.__cause__ = failed[-1].error if failed else None
        return error

    def _overloaded(self, outcome: RouteOutcome, route: RouteConfig, full: list[_Backend]) -> OverloadedError:
        busy = ", ".join(f"{b.spec.name} {b.in_flight}/{b.spec.max_concurrency}" for b in full)
        failed = sorted({attempt.backend for attempt in outcome.attempts if attempt.error is not None})
        message = (
            f"model {outcome.route!r} is at capacity: {busy} requests in flight, "
            f"and none finished within {route.queue_timeout_s}s"
        )
        if failed:
            message += f"; {', '.join(failed)} failed"
        return OverloadedError(
            message,
            route=outcome.route,
            busy=[b.spec.name for b in full],
            queue_timeout_s=route.queue_timeout_s,
            attempts=[attempt.to_dict() for attempt in outcome.attempts],
            retryable=True,
        )


async def _chat(router: Router, client: LLMClient, request: ChatRequest) -> ChatResult:
    return await client.chat(request)


async def _open_stream(
    router: Router, client: LLMClient, request: ChatRequest
) -> tuple[MeteredStream, ChatChunk | None]:
    """Open a backend's stream and wait for its first chunk (None: it sent none)."""
    stream = client.stream(request)
    try:
        return stream, await stream.__anext__()
    except StopAsyncIteration:
        return stream, None
    except asyncio.CancelledError:  # the attempt's timeout, or the caller went away
        router._close_later(stream)
        raise
    except BaseException:
        await stream.aclose()
        raise


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


class RoutedStream(ChunkStream):
    """A routed streamed completion: a :class:`MeteredStream` plus its :attr:`outcome`.

    Iterate it, and ``await stream.aclose()`` when done or abandoned; that closes the
    backend's stream (which settles :attr:`usage`, the serving backend's) and frees the
    backend's slot.
    """

    def __init__(self, router: Router, route: str, request: ChatRequest) -> None:
        super().__init__()
        self._router = router
        self._request = request
        self.outcome = RouteOutcome(route=route)

    async def _run(self) -> AsyncGenerator[ChatChunk, None]:
        router = self._router
        (inner, first), backend = await router._dispatch(self.outcome, self._request, _open_stream)
        timeout_s = backend.spec.timeout_s
        try:
            if first is None:
                return
            yield first
            while True:
                try:
                    async with asyncio.timeout(timeout_s):
                        chunk = await inner.__anext__()
                except StopAsyncIteration:
                    return
                except TimeoutError as exc:
                    error = BackendError(
                        f"{backend.spec.name} stalled: no chunk for {timeout_s}s",
                        backend=backend.spec.name,
                        timeout_s=timeout_s,
                    )
                    raise router._fail(self.outcome, error) from exc
                except OpsloopError as exc:
                    router._fail(self.outcome, exc)
                    raise
                yield chunk
        finally:
            try:
                await inner.aclose()
            finally:
                self.usage = inner.usage
                backend.release()


class RouteClient:
    """One route of a :class:`Router` as an :class:`LLMClient`; the router owns the backends."""

    def __init__(self, router: Router, route: str) -> None:
        self.name = route
        self._router = router

    async def chat(self, request: ChatRequest) -> ChatResult:
        """Complete ``request`` through the route; ``result.backend`` names who served it."""
        return (await self._router.chat(self.name, request)).result

    def stream(self, request: ChatRequest) -> RoutedStream:
        """Stream ``request`` through the route."""
        return self._router.stream(self.name, request)

    async def aclose(self) -> None:
        """Nothing to release: the router closes the backends."""


def build_router(
    routes: Mapping[str, RouteConfig],
    *,
    factory: ClientFactory = create_client,
    hooks: RouterHooks | None = None,
) -> Router:
    """Make a client per backend with ``factory`` and a :class:`Router` over them.

    Raises:
        ConfigError: the routes are inconsistent, or a client refused its spec.
    """
    return Router(routes, build_clients(routes, factory), hooks=hooks)
