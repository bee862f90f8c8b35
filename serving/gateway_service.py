"""The LLM gateway's runtime: the router over the configured routes, metering and the ledger.

:class:`Gateway` is what ``serving.routers.gateway`` calls; it knows chat requests and
results (``opsloop.llm.protocol``), not HTTP. Each call ends in exactly one ledger row and
one set of metric updates, whichever way it ends:

==============  ====================================================================
answered        ``outcome="ok"``, the backend's usage, cost from its prices
failed          ``outcome="error"`` with the error type; the last backend tried
abandoned       ``outcome="disconnected"``: a stream whose client went away; the
                backend stream is closed first, so usage (and cost) is what was generated
==============  ====================================================================

A stream is settled by :meth:`GatewayStream.settle`, which the HTTP layer calls from a
``finally`` that cannot be cancelled: an unsettled llama.cpp stream would go on generating
to ``max_tokens`` for nobody, and its tokens would never be charged.

Budgets and rate limits (``opsloop.budgets``) are checked before a call is routed: the
request is reserved against every budget of its tenant and key, with its prompt estimated
from its characters plus its ``max_tokens`` as the token estimate, so a token budget ends
less than one request over its limit; a refused call is a 429 naming the budget and its
reset, and is recorded with ``error_type="rate_limited"``. Every recorded call then settles
its reservation with the tokens and cost it really used.

The router and embedder are built on first use, so processes that never serve the gateway
(the CLI) load nothing.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, NoReturn

import numpy as np

from opsloop.budgets import BudgetEnforcer, Reservation
from opsloop.errors import InvalidInputError, NotFoundError, OpsloopError
from opsloop.ledger import Ledger, LLMCall, Outcome, cost_usd
from opsloop.llm.protocol import ChatChunk, ChatRequest, ChatResult, Usage
from opsloop.llm.router import (
    Attempt,
    RoutedResult,
    RoutedStream,
    RouteOutcome,
    Router,
    RouterHooks,
    build_router,
)
from opsloop.llm.routes import BackendSpec, ClientFactory, RouteConfig, create_client
from opsloop.telemetry import LLMMetrics

if TYPE_CHECKING:
    from rag.chunking import HFTokenizer
    from rag.embedder import SentenceTransformerEmbedder

__all__ = [
    "EMBEDDING_MODEL",
    "Caller",
    "Embeddings",
    "Gateway",
    "GatewayClient",
    "GatewayStream",
    "estimated_tokens",
]

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
"""The one model ``POST /v1/embeddings`` serves (matched case-insensitively)."""
_UNKNOWN_ROUTE = "<unknown>"  # metrics label for model names that are no route (bounded cardinality)
_MAX_LABEL = 128


@dataclass(frozen=True)
class Caller:
    """Who a gateway call is for: its request id, tenant and API key."""

    request_id: str
    tenant: str
    key_id: str


@dataclass(frozen=True)
class Embeddings:
    """Unit-length vectors, one row per input, and the tokens the inputs came to."""

    vectors: np.ndarray
    prompt_tokens: int
    model: str


class Gateway:
    """Routes chat requests, meters them, and records each one in the ledger.

    Args:
        routes: public model name -> route (``Settings.llm_routes``).
        ledger: where every call is recorded; the gateway starts its writer.
        metrics: the gateway's Prometheus metrics.
        enforcer: the budgets and rate limits every call is admitted by (started).
        default_max_tokens: the completion limit of requests that set none.
        factory: makes a backend's client from its spec (tests and the app may pass their own).
    """

    def __init__(
        self,
        routes: dict[str, RouteConfig],
        ledger: Ledger,
        metrics: LLMMetrics,
        enforcer: BudgetEnforcer,
        *,
        default_max_tokens: int,
        factory: ClientFactory = create_client,
    ) -> None:
        self.ledger = ledger.start()
        self.metrics = metrics
        self.enforcer = enforcer
        self.default_max_tokens = default_max_tokens
        self.router: Router = build_router(routes, factory=factory, hooks=self._hooks())
        self._specs = {spec.name: spec for route in routes.values() for spec in route.backends}
        self._embedder: SentenceTransformerEmbedder | None = None
        self._tokenizer: HFTokenizer | None = None
        self._embed_lock = threading.Lock()

    def routes(self) -> list[str]:
        """The public model names, in configuration order."""
        return self.router.routes()

    def prepare(self, request: ChatRequest) -> ChatRequest:
        """``request`` with the default completion limit when it sets none."""
        if request.max_tokens is not None:
            return request
        return replace(request, max_tokens=self.default_max_tokens)

    async def chat(self, caller: Caller, route: str, request: ChatRequest) -> RoutedResult:
        """Complete ``request`` on ``route`` and record it (also when it fails).

        Raises:
            NotFoundError: no such route.
            OpsloopError: what the router raised (every backend failed, bad input, overloaded).
        """
        started = time.perf_counter()
        request = self.prepare(request)
        reservation = self._reserve(caller, route, request, started, streamed=False)
        try:
            routed = await self.router.chat(route, request)
        except OpsloopError as exc:
            self._record_failure(caller, route, None, exc, started, streamed=False, reservation=reservation)
            raise
        result = routed.result
        self._record(
            caller,
            routed.outcome,
            result.usage,
            ttft_ms=result.ttft_ms,
            started=started,
            streamed=False,
            outcome="ok",
            model=result.model,
            reservation=reservation,
        )
        return routed

    async def open_stream(self, caller: Caller, route: str, request: ChatRequest) -> GatewayStream:
        """Start streaming ``request`` on ``route`` and wait for its first chunk.

        Waiting here, before any byte of the response is sent, lets a request whose every
        backend fails get a proper HTTP error, and the response headers name the backend.

        Raises:
            NotFoundError: no such route.
            OpsloopError: every backend failed before its first chunk.
        """
        started = time.perf_counter()
        request = self.prepare(request)
        reservation = self._reserve(caller, route, request, started, streamed=True)
        try:
            routed = self.router.stream(route, request)
        except OpsloopError as exc:
            self._record_failure(caller, route, None, exc, started, streamed=True, reservation=reservation)
            raise
        stream = GatewayStream(self, caller, routed, started, reservation)
        await stream.open()
        return stream

    def _reserve(
        self, caller: Caller, route: str, request: ChatRequest, started: float, *, streamed: bool
    ) -> Reservation:
        """Admit the call by its tenant's and key's budgets; a refusal is recorded, then raised."""
        try:
            return self.enforcer.reserve(caller.tenant, caller.key_id, est_tokens=estimated_tokens(request))
        except OpsloopError as exc:
            self._record_failure(caller, route, None, exc, started, streamed=streamed)
            raise

    def spec(self, backend: str | None) -> BackendSpec | None:
        """The spec of backend ``backend``; None for None or an unknown name."""
        return None if backend is None else self._specs.get(backend)

    async def embed(self, model: str, texts: Sequence[str]) -> Embeddings:
        """Embed ``texts`` with MiniLM (on a worker thread) and count their tokens.

        Raises:
            NotFoundError: ``model`` is not the embedding model served here.
        """
        if model.lower() != EMBEDDING_MODEL.lower():
            raise NotFoundError(
                f"embedding model {model!r} is not served here; known models: {EMBEDDING_MODEL}",
                model=model,
                known=[EMBEDDING_MODEL],
            )

        def run() -> Embeddings:
            embedder, tokenizer = self._embedding_parts()
            vectors = embedder.embed(list(texts))
            tokens = sum(tokenizer.count(text) for text in texts)
            return Embeddings(vectors, tokens, EMBEDDING_MODEL)

        return await asyncio.to_thread(run)

    async def aclose(self) -> None:
        """Close the backends (waiting for abandoned streams), then write what the ledger holds."""
        try:
            await self.router.aclose()
        finally:
            await asyncio.to_thread(self.ledger.close)

    # -- recording -------------------------------------------------------------------------

    def _embedding_parts(self) -> tuple[SentenceTransformerEmbedder, HFTokenizer]:
        with self._embed_lock:
            if self._embedder is None or self._tokenizer is None:
                from rag.chunking import HFTokenizer
                from rag.embedder import SentenceTransformerEmbedder

                self._embedder, self._tokenizer = SentenceTransformerEmbedder(), HFTokenizer()
            return self._embedder, self._tokenizer

    def _hooks(self) -> RouterHooks:
        metrics = self.metrics

        def on_fallback(outcome: RouteOutcome, failed: Attempt, next_backend: str) -> None:
            metrics.fallbacks.labels(outcome.route, failed.backend, next_backend).inc()

        def on_attempt(outcome: RouteOutcome, attempt: Attempt) -> None:
            if attempt.error is not None:
                metrics.backend_errors.labels(attempt.backend, attempt.reason).inc()

        def on_failure(outcome: RouteOutcome, error: OpsloopError) -> None:
            metrics.errors.labels(outcome.route, error.type).inc()

        return RouterHooks(on_attempt=on_attempt, on_fallback=on_fallback, on_failure=on_failure)

    def _backend_model(self, spec: BackendSpec | None) -> str:
        if spec is None:
            return ""
        if spec.model or spec.kind != "llamacpp":
            return spec.model
        if spec.model_path is not None:
            return spec.model_path.stem
        from opsloop.llm.llamacpp import default_model_path

        try:
            return default_model_path().stem
        except OpsloopError:
            return spec.name

    def _record_failure(
        self,
        caller: Caller,
        route: str,
        outcome: RouteOutcome | None,
        error: OpsloopError,
        started: float,
        *,
        streamed: bool,
        usage: Usage | None = None,
        ttft_ms: float | None = None,
        reservation: Reservation | None = None,
    ) -> None:
        if outcome is None:
            outcome = RouteOutcome(route=route, error=error)
            tried = error.details.get("attempts") or [{"backend": error.details.get("backend")}]
            last = tried[-1].get("backend") if isinstance(tried[-1], dict) else None
            if isinstance(last, str):
                outcome.attempts.append(Attempt(last, 1, 0.0, error))
        known = route in self.router.routes()
        if not known:  # the router's own hook never ran: count it here, under a bounded label
            self.metrics.errors.labels(_UNKNOWN_ROUTE, error.type).inc()
        self._record(
            caller,
            outcome,
            usage or Usage(),
            ttft_ms=ttft_ms,
            started=started,
            streamed=streamed,
            outcome="error",
            error_type=error.type,
            metrics_route=route if known else _UNKNOWN_ROUTE,
            reservation=reservation,
        )

    def _record(
        self,
        caller: Caller,
        routed: RouteOutcome,
        usage: Usage,
        *,
        ttft_ms: float | None,
        started: float,
        streamed: bool,
        outcome: Outcome,
        error_type: str | None = None,
        model: str | None = None,
        metrics_route: str | None = None,
        reservation: Reservation | None = None,
    ) -> None:
        latency_ms = (time.perf_counter() - started) * 1000
        backend = routed.backend or (routed.attempts[-1].backend if routed.attempts else "")
        spec = self.spec(backend)
        served = routed.backend is not None
        cost = cost_usd(spec, usage, latency_ms) if spec is not None and served else 0.0
        if reservation is not None:
            self.enforcer.settle(reservation, usage.total_tokens, cost)
        route = routed.route[:_MAX_LABEL]
        self.ledger.record(
            LLMCall(
                request_id=caller.request_id,
                tenant=caller.tenant,
                key_id=caller.key_id,
                route=route,
                backend=backend,
                model=model or self._backend_model(spec),
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cached_tokens=usage.cached_tokens,
                ttft_ms=ttft_ms,
                latency_ms=latency_ms,
                cost_usd=cost,
                streamed=streamed,
                outcome=outcome,
                error_type=error_type,
            )
        )
        label = metrics_route or route
        metrics = self.metrics
        metrics.requests.labels(label, outcome).inc()
        if not served:
            return
        for direction, count in (
            ("prompt", usage.prompt_tokens),
            ("completion", usage.completion_tokens),
            ("cached", usage.cached_tokens),
        ):
            if count:
                metrics.tokens.labels(label, backend, direction).inc(count)
        if cost:
            metrics.cost.labels(label, backend).inc(cost)
        if ttft_ms is not None:
            metrics.ttft.labels(label, backend).observe(ttft_ms / 1000)
        metrics.latency.labels(label, backend, str(streamed).lower()).observe(latency_ms / 1000)


class GatewayStream:
    """A routed stream being served to one client; settle it exactly once, however it ends.

    Iterate it after :meth:`open` (``first`` holds the first chunk); ``ttft_ms`` is measured
    from the request's start to the first chunk with text or a tool call.
    """

    def __init__(
        self, gateway: Gateway, caller: Caller, routed: RoutedStream, started: float, reservation: Reservation
    ) -> None:
        self.gateway = gateway
        self.caller = caller
        self.routed = routed
        self.reservation = reservation
        self.first: ChatChunk | None = None
        self.ttft_ms: float | None = None
        self.settled = False
        self._started = started

    @property
    def outcome(self) -> RouteOutcome:
        """How the router served the stream (backend, attempts)."""
        return self.routed.outcome

    @property
    def usage(self) -> Usage | None:
        """What the backend used; known once the stream ended or was settled."""
        return self.routed.usage

    async def open(self) -> None:
        """Wait for the first chunk; a failure is settled (recorded) before it is raised."""
        try:
            self.first = await self.routed.__anext__()
        except StopAsyncIteration:
            self.first = None
        except OpsloopError as exc:
            await self.settle("error", exc)
            raise
        except BaseException:
            await self.settle("disconnected")
            raise
        self._seen(self.first)

    def __aiter__(self) -> GatewayStream:
        return self

    async def __anext__(self) -> ChatChunk:
        chunk = await self.routed.__anext__()
        self._seen(chunk)
        return chunk

    async def settle(self, outcome: Outcome, error: OpsloopError | None = None) -> None:
        """Close the backend stream (which settles its usage) and record the call, once."""
        if self.settled:
            return
        self.settled = True
        try:
            await self.routed.aclose()
        finally:
            gateway = self.gateway
            usage = self.routed.usage or Usage()
            if error is not None:
                gateway._record_failure(
                    self.caller,
                    self.outcome.route,
                    self.outcome,
                    error,
                    self._started,
                    streamed=True,
                    usage=usage,
                    ttft_ms=self.ttft_ms,
                    reservation=self.reservation,
                )
            else:
                gateway._record(
                    self.caller,
                    self.outcome,
                    usage,
                    ttft_ms=self.ttft_ms,
                    started=self._started,
                    streamed=True,
                    outcome=outcome,
                    reservation=self.reservation,
                )

    def _seen(self, chunk: ChatChunk | None) -> None:
        if self.ttft_ms is None and chunk is not None and (chunk.delta or chunk.tool_calls):
            self.ttft_ms = (time.perf_counter() - self._started) * 1000


def estimated_tokens(request: ChatRequest) -> int:
    """An upper-bound guess of a call's tokens before it runs, all of ``max_tokens`` included.

    Prompt tokens are taken as a token per 3 characters (English runs about 4) plus 8 a
    message for the chat template, so the guess errs high, as a reservation should.
    """
    characters = sum(len(m.content) + sum(len(c.arguments) for c in m.tool_calls) for m in request.messages)
    return characters // 3 + 8 * len(request.messages) + (request.max_tokens or 0)


class GatewayClient:
    """A gateway route as an :class:`~opsloop.llm.protocol.LLMClient` for opsloop's own callers.

    Unlike ``Router.client(route)``, which calls the router directly, every call goes through
    :meth:`Gateway.chat`, so it is admitted by the caller's budgets and ends in a ledger row:
    tenant ``tenant``, key ``key_id``, request id ``request_id`` (RAG answers: the query's own),
    else ``<key_id>-<hex>``.

    Raises:
        NotFoundError: ``route`` is no gateway route (the message lists the known ones).
    """

    def __init__(
        self, gateway: Gateway, route: str, tenant: str, *, key_id: str, request_id: str | None = None
    ) -> None:
        gateway.router.route(route)
        self.name = route
        self._gateway = gateway
        self._tenant = tenant
        self._key_id = key_id
        self._request_id = request_id

    async def chat(self, request: ChatRequest) -> ChatResult:
        """Complete ``request`` on the route; ``result.backend`` names the backend that served it."""
        request_id = self._request_id or f"{self._key_id}-{uuid.uuid4().hex}"
        caller = Caller(request_id=request_id, tenant=self._tenant, key_id=self._key_id)
        return (await self._gateway.chat(caller, self.name, request)).result

    def stream(self, request: ChatRequest) -> NoReturn:
        """Not offered: opsloop's own callers read whole answers."""
        raise InvalidInputError("this client does not stream", field="stream")

    async def aclose(self) -> None:
        """Nothing to release: the gateway owns the backends."""
