"""The LLM gateway's runtime: the router over the configured routes, metering and the ledger.

:class:`Gateway` is the one implementation of a chat completion for every caller: the HTTP
routes (``serving.routers.gateway``) and, through :class:`GatewayClient`, opsloop's own
callers (RAG answers, evals). It takes the caller as a :class:`~opsloop.auth.Principal` plus
a request id, knows chat requests and results (``opsloop.llm.protocol``), not HTTP. Each
call ends in exactly one ledger row (tenant, key, request id) and one set of metric
updates, whichever way it ends:

==============  ====================================================================
answered        ``outcome="ok"``, the backend's usage, cost from its prices
failed          ``outcome="error"`` with the error type; the last backend tried
abandoned       ``outcome="disconnected"``: a stream whose client went away; the
                backend stream is closed first, so usage (and cost) is what was generated
==============  ====================================================================

A stream is settled by :meth:`GatewayStream.settle`, which the HTTP layer calls from a
``finally`` that cannot be cancelled: an unsettled llama.cpp stream would go on generating
to ``max_tokens`` for nobody, and its tokens would never be charged.

Before a call is routed it is checked and admitted, in this order, and a refusal is recorded
(with nothing reserved) before it is raised:

1. the route exists (404), and ``max_tokens`` is at most the route's context window
   (:attr:`~opsloop.llm.routes.RouteConfig.context_window`; 422 naming the field and the
   limit); a request without one gets ``default_max_tokens``, cut to that window;
2. budgets and rate limits (``opsloop.budgets``): the call is reserved against every budget
   of its tenant and key with its worst case (:func:`worst_case`): the prompt estimated from
   its characters plus all of ``max_tokens``, in tokens and in US dollars at the prices of
   the route's dearest backend, each capped by what that backend's window holds. So a token
   or USD budget ends less than one call over its limit; a refused call is a 429 naming the
   budget and its reset, recorded with ``error_type="rate_limited"``.

Every recorded call then settles its reservation with the tokens and cost it really used.

Embeddings are metered like chat calls (:meth:`Gateway.meter_embedding`): admitted by the
caller's budgets with an estimate of their tokens, then recorded under the embedding model's
name as route, model and backend, the tokens the embedder's tokenizer counted as prompt
tokens, priced at ``embedding_per_mtok``. ``POST /v1/embeddings`` (:meth:`Gateway.embed`)
also caps the inputs of one call (``embedding_max_inputs`` texts of at most
``embedding_max_chars`` characters, 422 naming the limit); other services that embed for a
caller themselves (RAG's retrieval) meter their call with :meth:`Gateway.meter_embedding`.
The embedder and its tokenizer live above the kernel (``rag``): the composition root passes a
factory of them (:data:`EmbeddingParts`), called on the first embeddings request, so
processes that never serve one (the CLI) load no model. Building the backends from settings
is the composition root's too (``factory``).

A route's name may be served by another route (:mod:`opsloop.llm.aliases`): once an
experiment promoted ``chat-big`` on ``chat``, requests for ``chat`` go to ``chat-big``'s
backends. While a route experiment runs, a chat call that names its ``unit`` (the HTTP
route's callers) is answered by the unit's variant; a call the challenger route fails is
answered by the champion route, and the failure counts against the challenger. Each such
call reports its variant's outcome (latency, cost, error) to the ``traffic`` split; its ledger
row carries the experiment and variant. A shadow experiment's challenger route gets a copy of
each call as a task of its own (at most ``shadow_max_pending`` at a time; more are dropped and
counted), charged to the experiment's tenant under key ``shadow``; its answer goes nowhere.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any, NoReturn, Protocol, TypeVar

import numpy as np

from opsloop.auth import Principal, Role
from opsloop.budgets import BudgetEnforcer, Reservation
from opsloop.errors import BackendError, InvalidInputError, NotFoundError, OpsloopError, RateLimitedError
from opsloop.llm.aliases import applicable
from opsloop.llm.ledger import Ledger, LLMCall, Outcome, cost_usd
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
from opsloop.privacy import ConversationRedaction, PrivacyPolicies, Redactor
from opsloop.telemetry import LLMMetrics
from opsloop.tracing import Tracer, current_span
from opsloop.traffic import CHALLENGER, CHAMPION, Assignment, ExperimentVariant, TrafficSplit
from opsloop.traffic import Outcome as VariantOutcome

__all__ = [
    "EMBEDDING_MODEL",
    "EmbeddingMeter",
    "EmbeddingParts",
    "Embeddings",
    "Gateway",
    "GatewayClient",
    "GatewayStream",
    "TextEmbedder",
    "TokenCounter",
    "estimated_prompt_tokens",
    "worst_case",
]

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
"""The one model ``POST /v1/embeddings`` serves (matched case-insensitively)."""
_UNKNOWN_ROUTE = "<unknown>"  # metrics label for model names that are no route (bounded cardinality)
_MAX_LABEL = 128
_MILLION = 1_000_000
T = TypeVar("T")
SHADOW_KEY = "shadow"
"""The key id a shadow copy's ledger row carries, under the experiment's tenant."""
log = logging.getLogger(__name__)

_MAX_PLACEHOLDER = 96
"""Longer than any placeholder (``<EMAIL_ADDRESS_12>``): how much streamed text may be held back."""


class TextEmbedder(Protocol):
    """Turns texts into unit-length vectors (``rag.embedder.SentenceTransformerEmbedder``)."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """A ``(len(texts), dimension)`` float32 array, one L2-normalised row per text."""
        ...


class TokenCounter(Protocol):
    """Counts the tokens the embedder sees in a text (``rag.chunking.HFTokenizer``)."""

    def count(self, text: str) -> int:
        """Token ids the model gets for ``text``, special tokens included."""
        ...


EmbeddingParts = Callable[[], tuple[TextEmbedder, TokenCounter]]
"""Builds the embedder of :data:`EMBEDDING_MODEL` and its tokenizer; called once, on first use."""


@dataclass(frozen=True)
class _Call:
    """One gateway call's caller and request id: what its ledger row is recorded under."""

    caller: Principal
    request_id: str
    variant: ExperimentVariant | None = None
    assignment: Assignment | None = None
    """Set when the call's outcome counts for its variant: not for a champion answering in
    place of a failed challenger."""
    request: ChatRequest | None = None
    """What was asked: the inputs of the call's trace."""


@dataclass(frozen=True)
class Embeddings:
    """Unit-length vectors, one row per input, and the tokens the inputs came to."""

    vectors: np.ndarray
    prompt_tokens: int
    model: str


@dataclass
class EmbeddingMeter:
    """One admitted embedding call (:meth:`Gateway.meter_embedding`); set what it used.

    Attributes:
        estimated_tokens: What was reserved for it: charged when ``prompt_tokens`` stays None.
        prompt_tokens: The tokens the embedder's tokenizer counted, set by the caller.
    """

    estimated_tokens: int
    prompt_tokens: int | None = None

    @property
    def charged(self) -> int:
        """The tokens the call is charged: ``prompt_tokens``, else the estimate."""
        return self.estimated_tokens if self.prompt_tokens is None else self.prompt_tokens


class Gateway:
    """Routes chat requests, meters them, and records each one in the ledger.

    Args:
        routes: public model name -> route (``Settings.llm_routes``).
        ledger: where every call is recorded; the gateway starts its writer.
        metrics: the gateway's Prometheus metrics.
        enforcer: the budgets and rate limits every call is admitted by (started).
        default_max_tokens: the completion limit of requests that set none (cut to the
            route's context window).
        factory: makes a backend's client from its spec (tests and the app may pass their own).
        embedding: builds what ``POST /v1/embeddings`` needs, on its first request; None: the
            gateway serves no embeddings (:meth:`embed` answers 404).
        embedding_max_inputs: most texts one :meth:`embed` call takes.
        embedding_max_chars: most characters of each of them.
        embedding_per_mtok: USD per million embedding tokens; None: embeddings are free.
        traffic: the running experiments' split; None: no route experiment answers a call.
        aliases: reads the stored route aliases (route name -> the route serving it); read now
            and again on every :meth:`reload_aliases`. None: every route serves itself.
        shadow_max_pending: shadow copies in flight before new ones are dropped.
        on_shadow_dropped: called with the experiment of each dropped shadow copy (a metric).
        tracer: records each call as a trace (or as a span of the trace it is made in).
        privacy: the PII policy of each tenant and route; where it says ``redact_outbound``, a
            request's messages are redacted (by ``redactor``) before they reach a backend, and
            the placeholders the answer repeats are replaced by the original values.
        redactor: finds and replaces PII (``opsloop.privacy.Redactor``).
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
        embedding: EmbeddingParts | None = None,
        embedding_max_inputs: int = 128,
        embedding_max_chars: int = 8192,
        embedding_per_mtok: float | None = None,
        traffic: TrafficSplit | None = None,
        aliases: Callable[[], Mapping[str, str]] | None = None,
        shadow_max_pending: int = 256,
        on_shadow_dropped: Callable[[str], None] = lambda experiment: None,
        tracer: Tracer | None = None,
        privacy: PrivacyPolicies | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.ledger = ledger.start()
        self.tracer = tracer or Tracer(None)
        self.privacy = privacy
        self.redactor = redactor or Redactor()
        self.metrics = metrics
        self.enforcer = enforcer
        self.default_max_tokens = default_max_tokens
        self.embedding_max_inputs = embedding_max_inputs
        self.embedding_max_chars = embedding_max_chars
        self.embedding_per_mtok = embedding_per_mtok
        self.router: Router = build_router(routes, factory=factory, hooks=self._hooks())
        self._specs = {spec.name: spec for route in routes.values() for spec in route.backends}
        self._embedding = embedding
        self._embedding_parts: tuple[TextEmbedder, TokenCounter] | None = None
        self._embed_lock = threading.Lock()
        self.traffic = traffic
        self._read_aliases = aliases
        self._aliases: Mapping[str, str] = {}
        self.reload_aliases()
        self.shadow_max_pending = shadow_max_pending
        self._on_shadow_dropped = on_shadow_dropped
        self._shadows: set[asyncio.Task[None]] = set()

    def routes(self) -> list[str]:
        """The public model names, in configuration order."""
        return self.router.routes()

    def serving(self, route: str) -> str:
        """The route whose backends answer requests for ``route``: its alias, else itself."""
        return self._aliases.get(route, route)

    def reload_aliases(self) -> None:
        """Read the stored route aliases again (an experiment promoted a route)."""
        if self._read_aliases is not None:
            self._aliases = applicable(self._read_aliases(), self.router.routes())

    def prepare(self, route: str, config: RouteConfig, request: ChatRequest) -> ChatRequest:
        """``request`` with its completion limit checked against ``route`` (``config``), or the default one.

        Raises:
            InvalidInputError: ``max_tokens`` is below 1 or above the route's context window
                (``details["limit"]``).
        """
        window = config.context_window
        if request.max_tokens is None:
            return replace(request, max_tokens=min(self.default_max_tokens, window))
        if not 1 <= request.max_tokens <= window:
            raise InvalidInputError(
                f"max_tokens must be between 1 and {window}, the context window of model {route!r}; "
                f"got {request.max_tokens}",
                field="max_tokens",
                limit=window,
                value=request.max_tokens,
            )
        return request

    async def chat(
        self,
        caller: Principal,
        route: str,
        request: ChatRequest,
        *,
        request_id: str,
        unit: str | None = None,
        variant: ExperimentVariant | None = None,
    ) -> RoutedResult:
        """Complete ``request`` on ``route`` for ``caller`` and record it (also when it fails).

        The call is admitted by the budgets of the caller's tenant and key, and its ledger row
        carries them, ``request_id`` and the experiment ``variant`` that made it, if any. With
        a ``unit``, a route experiment running on ``route`` answers with the unit's variant
        (``result.variant``).

        Raises:
            RateLimitedError: a budget or rate limit of the tenant or key is used up.
            NotFoundError: no such route.
            InvalidInputError: ``max_tokens`` is above the route's context window.
            OpsloopError: what the router raised (every backend failed, bad input, overloaded).
        """

        async def routed(call: _Call, served: str) -> RoutedResult:
            return await self._chat(call, served, request)

        call = _Call(caller, request_id, variant, request=request)
        result, answered = await self._split(call, route, request, unit, routed)
        return result if answered is None else replace(result, variant=answered)

    async def _chat(self, call: _Call, route: str, request: ChatRequest) -> RoutedResult:
        started = time.perf_counter()
        request, reservation = self._admit(call, route, request, started, streamed=False)
        try:
            request, redaction = await self._redact_outbound(call, route, request)
            routed = await self.router.chat(route, request)
            if redaction is not None:
                routed = replace(routed, result=_restored(routed.result, redaction))
        except OpsloopError as exc:
            self._record_failure(call, route, None, exc, started, streamed=False, reservation=reservation)
            raise
        except asyncio.CancelledError:  # the server is stopping: settle what was reserved
            self._record(
                call, RouteOutcome(route=route), Usage(), ttft_ms=None, started=started, streamed=False,
                outcome="disconnected", reservation=reservation,
            )  # fmt: skip
            raise
        result = routed.result
        cost = self._record(
            call,
            routed.outcome,
            result.usage,
            ttft_ms=result.ttft_ms,
            started=started,
            streamed=False,
            outcome="ok",
            model=result.model,
            reservation=reservation,
            answer=result,
        )
        return replace(routed, result=replace(result, cost_usd=cost))

    async def open_stream(
        self, caller: Principal, route: str, request: ChatRequest, *, request_id: str, unit: str | None = None
    ) -> GatewayStream:
        """Start streaming ``request`` on ``route`` for ``caller`` and wait for its first chunk.

        Waiting here, before any byte of the response is sent, lets a request whose every
        backend fails get a proper HTTP error, and the response headers name the backend.
        Admission, the ledger row and ``unit`` are as for :meth:`chat`; the stream is recorded
        when it is settled (:meth:`GatewayStream.settle`), and a challenger's stream that fails
        before its first chunk is replaced by the champion's.

        Raises:
            RateLimitedError: a budget or rate limit of the tenant or key is used up.
            NotFoundError: no such route.
            InvalidInputError: ``max_tokens`` is above the route's context window.
            OpsloopError: every backend failed before its first chunk.
        """

        async def opened(call: _Call, served: str) -> GatewayStream:
            started = time.perf_counter()
            prepared, reservation = self._admit(call, served, request, started, streamed=True)
            try:
                prepared, redaction = await self._redact_outbound(call, served, prepared)
                routed = self.router.stream(served, prepared)
            except OpsloopError as exc:
                self._record_failure(call, served, None, exc, started, streamed=True, reservation=reservation)
                raise
            stream = GatewayStream(self, call, routed, started, reservation)
            if redaction is not None:
                stream.restoring = _Restoring(redaction)
            await stream.open()
            return stream

        call = _Call(caller, request_id, request=request)
        opened_stream, variant = await self._split(call, route, request, unit, opened)
        opened_stream.variant = variant
        return opened_stream

    async def _split(
        self,
        call: _Call,
        route: str,
        request: ChatRequest,
        unit: str | None,
        run: Callable[[_Call, str], Awaitable[T]],
    ) -> tuple[T, str | None]:
        """``run`` the call on the route that answers it, and the experiment variant that did.

        With no ``unit`` or no experiment on ``route``: the route's alias or the route itself.
        Else the unit's variant; a challenger's failure is recorded against it (unless the
        call was refused before it was routed: a bad request or a budget is the caller's),
        and the champion answers. A shadow experiment's challenger gets a copy of each call
        the champion answered.
        """
        assignment = None
        if unit is not None and self.traffic is not None:
            assignment = self.traffic.assign("route", route, unit)
        if assignment is None:
            return await run(call, self.serving(route)), None
        name = assignment.experiment
        if assignment.variant == CHALLENGER:
            challenger = replace(call, variant=(name, CHALLENGER), assignment=assignment)
            try:
                return await run(challenger, assignment.target), CHALLENGER
            except RateLimitedError:  # the caller's budget: the champion would be refused as well
                raise
            except OpsloopError as exc:  # the caller still gets an answer
                log.info(
                    "experiment %s: route %s failed (%s), the champion answers",
                    name,
                    assignment.target,
                    exc.type,
                )
        # Only the champion's own requests count for it, not those it answers for a failed challenger.
        champion = replace(
            call, variant=(name, CHAMPION), assignment=assignment if assignment.variant == CHAMPION else None
        )
        answered = await run(champion, self.serving(route))
        if assignment.shadow_target is not None:  # only a call admitted and answered is copied
            self._shadow(call, assignment, assignment.shadow_target, request)
        return answered, CHAMPION

    def _shadow(self, call: _Call, assignment: Assignment, route: str, request: ChatRequest) -> None:
        """Copy ``call``'s ``request`` to the shadow ``route``; drop it when too many copies are in flight.

        The copy is the experiment's: charged to its tenant (the caller's when the split names
        none), under key :data:`SHADOW_KEY`.
        """
        name = assignment.experiment
        if len(self._shadows) >= self.shadow_max_pending:
            self._on_shadow_dropped(name)
            return
        payer = Principal(SHADOW_KEY, assignment.tenant or call.caller.tenant, Role.USER)
        copy = _Call(payer, call.request_id, (name, CHALLENGER), Assignment(name, CHALLENGER, route), request)
        task = asyncio.create_task(self._shadow_copy(copy, route, request), name=f"shadow-{name}")
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _shadow_copy(self, call: _Call, route: str, request: ChatRequest) -> None:
        with suppress(OpsloopError):  # recorded against the shadow, like any failed call
            await self._chat(call, route, request)

    def _admit(
        self, call: _Call, route: str, request: ChatRequest, started: float, *, streamed: bool
    ) -> tuple[ChatRequest, Reservation]:
        """Check the request against its route, then reserve its worst case against the budgets.

        A refusal is recorded, then raised; nothing stays reserved for it.
        """
        caller = call.caller
        try:
            config = self.router.route(route)  # NotFoundError for an unknown route
            request = self.prepare(route, config, request)
            tokens, usd = worst_case(config, request)
            reservation = self.enforcer.reserve(caller.tenant, caller.key_id, est_tokens=tokens, est_usd=usd)
        except OpsloopError as exc:
            self._record_failure(call, route, None, exc, started, streamed=streamed, unrouted=True)
            raise
        return request, reservation

    async def _redact_outbound(
        self, call: _Call, route: str, request: ChatRequest
    ) -> tuple[ChatRequest, ConversationRedaction | None]:
        """``request`` with its messages' PII replaced, where the route's policy says so.

        Presidio takes milliseconds of CPU per message: it runs on a worker thread.

        Raises:
            BackendError: the redaction failed (the request is not sent).
        """
        if self.privacy is None:
            return request, None
        policy = self.privacy.resolve(call.caller.tenant, route)
        if not policy.redact_outbound:
            return request, None
        contents = [message.content for message in request.messages]
        try:
            redaction = await asyncio.to_thread(
                self.redactor.redact_many, contents, policy.model_copy(update={"enabled": True})
            )
        except Exception as exc:  # nothing leaves unredacted
            log.exception("redacting a request to route %s failed", route)
            raise BackendError(
                f"route {route!r} redacts PII before a request leaves, and redacting failed: {exc}",
                route=route,
            ) from exc
        if not redaction.originals:
            return request, None
        messages = [
            replace(message, content=text)
            for message, text in zip(request.messages, redaction.texts, strict=True)
        ]
        return replace(request, messages=messages), redaction

    def spec(self, backend: str | None) -> BackendSpec | None:
        """The spec of backend ``backend``; None for None or an unknown name."""
        return None if backend is None else self._specs.get(backend)

    async def embed(
        self, caller: Principal, model: str, texts: Sequence[str], *, request_id: str
    ) -> Embeddings:
        """Embed ``texts`` with MiniLM (on a worker thread) for ``caller``, metered and recorded.

        The inputs are checked first, then the call is metered as :meth:`meter_embedding`
        describes; a refused call is recorded too.

        Raises:
            NotFoundError: ``model`` is not the embedding model served here (or none is).
            InvalidInputError: more than ``embedding_max_inputs`` texts, or a text longer than
                ``embedding_max_chars`` (``details["limit"]`` is the limit).
            RateLimitedError: a budget or rate limit of the tenant or key is used up.
        """
        served = self._embedding is not None and model.lower() == EMBEDDING_MODEL.lower()
        try:
            self._check_embedding(served, model, texts)
        except OpsloopError as exc:
            self._record_failure(
                _Call(caller, request_id), EMBEDDING_MODEL if served else model, None, exc,
                time.perf_counter(), streamed=False, unrouted=True,
                metrics_route=EMBEDDING_MODEL if served else None,
            )  # fmt: skip
            raise

        def run() -> Embeddings:
            embedder, tokenizer = self._embedding_backend()
            vectors = embedder.embed(list(texts))
            tokens = sum(tokenizer.count(text) for text in texts)
            return Embeddings(vectors, tokens, EMBEDDING_MODEL)

        with self.meter_embedding(caller, texts, request_id=request_id) as meter:
            result = await asyncio.to_thread(run)
            meter.prompt_tokens = result.prompt_tokens
        return result

    @contextmanager
    def meter_embedding(
        self, caller: Principal, texts: Sequence[str], *, request_id: str, model: str = EMBEDDING_MODEL
    ) -> Iterator[EmbeddingMeter]:
        """Admit, then record, an embedding of ``texts`` for ``caller``, whoever computes it.

        On entry the call is reserved against the caller's budgets and rate limits, its tokens
        estimated from the texts' characters; a refusal is recorded, then raised. In the block
        the caller embeds and sets ``meter.prompt_tokens`` to what its tokenizer counted (left
        None, the estimate is charged). On exit the reservation is settled and the call is in
        the ledger and the metrics: route, model and backend ``model``, the tokens as prompt
        tokens, cost at ``embedding_per_mtok``. A block that raises an opsloop error is
        recorded as failed (charged what ``prompt_tokens`` says, else nothing); one cancelled
        as ``disconnected``, charged the estimate, since work handed to a thread runs on::

            with gateway.meter_embedding(caller, [question], request_id=rid) as meter:
                vector = embedder.embed([question])
                meter.prompt_tokens = tokenizer.count(question)

        Raises:
            RateLimitedError: on entry, a budget or rate limit of the tenant or key is used up.
        """
        started = time.perf_counter()
        call = _Call(caller, request_id)
        estimate = sum(len(text) // 3 + 2 for text in texts)  # as for prompts, plus [CLS] and [SEP]
        try:
            reservation = self.enforcer.reserve(
                caller.tenant, caller.key_id, est_tokens=estimate, est_usd=self._embedding_cost(estimate)
            )
        except OpsloopError as exc:
            self._record_failure(
                call, model, None, exc, started, streamed=False, unrouted=True, metrics_route=model
            )
            raise
        meter = EmbeddingMeter(estimate)

        def record(outcome: Outcome, tokens: int, error: OpsloopError | None = None) -> None:
            usage = Usage(prompt_tokens=tokens)
            cost = self._embedding_cost(tokens)
            if error is None:
                self._record(
                    call, RouteOutcome(route=model, backend=model), usage, ttft_ms=None, started=started,
                    streamed=False, outcome=outcome, model=model, reservation=reservation, cost=cost,
                )  # fmt: skip
                return
            failed = RouteOutcome(route=model, attempts=[Attempt(model, 1, 0.0, error)], error=error)
            self._record_failure(
                call, model, failed, error, started, streamed=False, usage=usage, reservation=reservation,
                unrouted=True, model=model, cost=cost, metrics_route=model,
            )  # fmt: skip

        try:
            yield meter
        except OpsloopError as exc:
            record("error", meter.prompt_tokens or 0, exc)
            raise
        except Exception as exc:  # recorded as the 500 it becomes, then passed on unchanged
            record("error", meter.prompt_tokens or 0, OpsloopError(f"{type(exc).__name__}: {exc}"))
            raise
        except BaseException:  # cancelled: the embedding handed to a thread runs on
            record("disconnected", meter.charged)
            raise
        record("ok", meter.charged)

    async def aclose(self) -> None:
        """Cancel the shadow copies, close the backends (waiting for abandoned streams), write the ledger."""
        for task in list(self._shadows):
            task.cancel()
        await asyncio.gather(*self._shadows, return_exceptions=True)
        try:
            await self.router.aclose()
        finally:
            await asyncio.to_thread(self.ledger.close)

    # -- internals -------------------------------------------------------------------------

    def _check_embedding(self, served: bool, model: str, texts: Sequence[str]) -> None:
        if not served:
            known = [EMBEDDING_MODEL] if self._embedding is not None else []
            listed = ", ".join(known) or "none"
            raise NotFoundError(
                f"embedding model {model!r} is not served here; known models: {listed}",
                model=model,
                known=known,
            )
        limit = self.embedding_max_inputs
        if len(texts) > limit:
            raise InvalidInputError(
                f"input takes at most {limit} texts per request, got {len(texts)}",
                field="input",
                limit=limit,
                value=len(texts),
            )
        limit = self.embedding_max_chars
        for index, text in enumerate(texts):
            if len(text) > limit:
                raise InvalidInputError(
                    f"input text {index} has {len(text)} characters; each may have at most {limit}",
                    field=f"input.{index}",
                    limit=limit,
                    value=len(text),
                )

    def _embedding_cost(self, tokens: int) -> float:
        return tokens * (self.embedding_per_mtok or 0.0) / _MILLION

    def _embedding_backend(self) -> tuple[TextEmbedder, TokenCounter]:
        with self._embed_lock:
            if self._embedding_parts is None:
                assert self._embedding is not None  # noqa: S101 - embed() refuses the model without it
                self._embedding_parts = self._embedding()
            return self._embedding_parts

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
        call: _Call,
        route: str,
        outcome: RouteOutcome | None,
        error: OpsloopError,
        started: float,
        *,
        streamed: bool,
        usage: Usage | None = None,
        ttft_ms: float | None = None,
        reservation: Reservation | None = None,
        unrouted: bool = False,
        model: str | None = None,
        cost: float | None = None,
        metrics_route: str | None = None,
    ) -> None:
        """Record a failed call; ``unrouted``: it failed outside the router (whose hooks count errors)."""
        if outcome is None:
            outcome = RouteOutcome(route=route, error=error)
            tried = error.details.get("attempts") or [{"backend": error.details.get("backend")}]
            last = tried[-1].get("backend") if isinstance(tried[-1], dict) else None
            if isinstance(last, str):
                outcome.attempts.append(Attempt(last, 1, 0.0, error))
        # Bounded: a model name a client made up is no label.
        label = metrics_route or (route if route in self.router.routes() else _UNKNOWN_ROUTE)
        if unrouted:  # the router's hook, which counts the errors of routed calls, never ran
            self.metrics.errors.labels(label, error.type).inc()
            call = replace(call, assignment=None)  # a refusal is the request's, not its variant's
        self._record(
            call,
            outcome,
            usage or Usage(),
            ttft_ms=ttft_ms,
            started=started,
            streamed=streamed,
            outcome="error",
            error_type=error.type,
            model=model,
            metrics_route=label,
            reservation=reservation,
            cost=cost,
        )

    def _record(
        self,
        call: _Call,
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
        cost: float | None = None,
        answer: ChatResult | str | None = None,
    ) -> float:
        """Settle the reservation, write the ledger row, update the metrics and trace one call.

        ``cost`` None: priced at the serving backend's prices (0 when none served). Returns
        the cost recorded.
        """
        latency_ms = (time.perf_counter() - started) * 1000
        backend = routed.backend or (routed.attempts[-1].backend if routed.attempts else "")
        spec = self.spec(backend)
        served = routed.backend is not None
        served_model = model or self._backend_model(spec)
        if cost is None:
            cost = cost_usd(spec, usage, latency_ms) if spec is not None and served else 0.0
        if reservation is not None:
            self.enforcer.settle(reservation, usage.total_tokens, cost)
        route = routed.route[:_MAX_LABEL]
        # A client that went away (or a stopping server) says nothing of the variant.
        if call.assignment is not None and self.traffic is not None and outcome != "disconnected":
            self.traffic.record(
                VariantOutcome(
                    call.assignment.experiment,
                    call.assignment.variant,
                    call.request_id,
                    outcome == "ok",
                    latency_ms,
                    cost_usd=cost,
                    error_type=error_type,
                )
            )
        experiment, variant = call.variant or (None, None)
        self.ledger.record(
            LLMCall(
                request_id=call.request_id,
                experiment=experiment,
                variant=variant,
                tenant=call.caller.tenant,
                key_id=call.caller.key_id,
                route=route,
                backend=backend,
                model=served_model,
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
        if self.tracer.enabled or current_span() is not None:
            self._trace(
                call, routed, usage, latency_ms, cost, outcome, error_type, served_model, streamed, answer
            )
        label = metrics_route or route
        metrics = self.metrics
        metrics.requests.labels(label, outcome).inc()
        if not served:
            return cost
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
        return cost

    def _trace(
        self,
        call: _Call,
        routed: RouteOutcome,
        usage: Usage,
        latency_ms: float,
        cost: float,
        outcome: Outcome,
        error_type: str | None,
        model: str,
        streamed: bool,
        answer: ChatResult | str | None,
    ) -> None:
        """Record the call as a span of the current trace (a ``/query``'s), or as a trace of its own.

        Each backend it tried is a child span, laid end to end from the call's start.
        """
        try:
            end = time.time_ns()
            start = end - int(latency_ms * 1e6)
            request = call.request
            inputs = None
            if request is not None:
                inputs = {"messages": request.messages, "tools": list(request.tools) or None}
            experiment, variant = call.variant or (None, None)
            span = self.tracer.start(
                "generate" if current_span() is not None else "chat.completions",
                "CHAT_MODEL",
                request_id=call.request_id,
                tenant=call.caller.tenant,
                inputs=inputs,
                start_ns=start,
                route=routed.route,
                backend=routed.backend,
                model=model,
                streamed=streamed,
                outcome=outcome,
                usage={
                    "input_tokens": usage.prompt_tokens,
                    "output_tokens": usage.completion_tokens,
                    "total_tokens": usage.total_tokens,
                },
                cost_usd=cost,
                experiment=experiment,
                variant=variant,
            )
            at = start
            for attempt in routed.attempts:
                tried = span.child(
                    attempt.backend, "LLM", start_ns=at, backend=attempt.backend, attempt=attempt.number
                )
                at = min(end, at + int(attempt.elapsed_ms * 1e6))
                tried.end(error=None if attempt.error is None else attempt.error.message, end_ns=at)
            outputs: dict[str, Any] | None = None
            if isinstance(answer, ChatResult):
                outputs = {"content": answer.text, "finish_reason": answer.finish_reason}
                if answer.tool_calls:
                    outputs["tool_calls"] = [tool.to_openai() for tool in answer.tool_calls]
            elif answer is not None:
                outputs = {"content": answer}
            span.end(outputs, error=error_type, end_ns=end)
        except Exception:  # a trace is never worth failing the call it describes
            log.warning("could not trace gateway call %s", call.request_id, exc_info=True)


def _restored(result: ChatResult, redaction: ConversationRedaction) -> ChatResult:
    """``result`` with the original values of the placeholders it repeats (text and tool arguments)."""
    tools = [replace(tool, arguments=redaction.restore(tool.arguments)) for tool in result.tool_calls]
    return replace(result, text=redaction.restore(result.text), tool_calls=tools)


class _Restoring:
    """Puts a redaction's original values back into streamed text.

    A placeholder can arrive cut between chunks (``<EMAIL_`` then ``ADDRESS_1>``): text from an
    unclosed ``<`` is held back until the next chunk, at most a placeholder's length.
    """

    def __init__(self, redaction: ConversationRedaction) -> None:
        self.redaction = redaction
        self.held = ""

    def feed(self, chunk: ChatChunk) -> ChatChunk:
        text = self.held + chunk.delta
        self.held = ""
        if chunk.finish_reason is None:
            cut = text.rfind("<")
            if cut != -1 and ">" not in text[cut:] and len(text) - cut < _MAX_PLACEHOLDER:
                text, self.held = text[:cut], text[cut:]
        tools = [replace(tool, arguments=self.redaction.restore(tool.arguments)) for tool in chunk.tool_calls]
        return replace(chunk, delta=self.redaction.restore(text), tool_calls=tools)


class GatewayStream:
    """A routed stream being served to one client; settle it exactly once, however it ends.

    Iterate it after :meth:`open` (``first`` holds the first chunk); ``ttft_ms`` is measured
    from the request's start to the first chunk with text or a tool call.
    """

    def __init__(
        self, gateway: Gateway, call: _Call, routed: RoutedStream, started: float, reservation: Reservation
    ) -> None:
        self.gateway = gateway
        self.routed = routed
        self.reservation = reservation
        self.first: ChatChunk | None = None
        self.ttft_ms: float | None = None
        self.settled = False
        self.variant: str | None = None
        """The variant of the route experiment whose route streams (None: none runs)."""
        self._call = call
        self._started = started
        self._text: list[str] = []
        self.restoring: _Restoring | None = None
        """Set when the request was redacted: the answer's placeholders are restored."""

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
            self.first = await self.__anext__()
        except StopAsyncIteration:
            self.first = None
        except OpsloopError as exc:
            await self.settle("error", exc)
            raise
        except BaseException:
            await self.settle("disconnected")
            raise

    def __aiter__(self) -> GatewayStream:
        return self

    async def __anext__(self) -> ChatChunk:
        chunk = await self.routed.__anext__()
        if self.restoring is not None:
            chunk = self.restoring.feed(chunk)
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
                    self._call,
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
                    self._call,
                    self.outcome,
                    usage,
                    ttft_ms=self.ttft_ms,
                    started=self._started,
                    streamed=True,
                    outcome=outcome,
                    reservation=self.reservation,
                    answer="".join(self._text),
                )

    def _seen(self, chunk: ChatChunk | None) -> None:
        if chunk is None:
            return
        if chunk.delta:
            self._text.append(chunk.delta)
        if self.ttft_ms is None and (chunk.delta or chunk.tool_calls):
            self.ttft_ms = (time.perf_counter() - self._started) * 1000


def estimated_prompt_tokens(request: ChatRequest) -> int:
    """A guess of the prompt tokens of ``request`` before it runs, erring high.

    A token per 3 characters (English runs about 4) of the messages, tool calls, offered tools
    and JSON schema, plus 8 a message for the chat template.
    """
    characters = sum(len(m.content) + sum(len(c.arguments) for c in m.tool_calls) for m in request.messages)
    if request.tools:
        characters += len(json.dumps(list(request.tools), default=str))
    if request.json_schema is not None:
        characters += len(json.dumps(request.json_schema, default=str))
    return characters // 3 + 8 * len(request.messages)


def worst_case(route: RouteConfig, request: ChatRequest) -> tuple[int, float]:
    """The most tokens and US dollars one call of ``request`` can use on ``route``: its reservation.

    For each backend the prompt estimate (:func:`estimated_prompt_tokens`) and ``max_tokens``
    are capped by what its context window holds, prompt and completion together (a longer
    prompt is refused, a longer completion cut), with the window filled by the dearer kind of
    token first; the call may end on any backend, so the largest of each is taken. A backend
    priced per GPU hour is charged for the call's whole time, bounded here by its attempts'
    timeouts and backoffs (a stream's ``timeout_s`` is per chunk, so a long one can pass it).
    """
    prompt = estimated_prompt_tokens(request)
    completion = request.max_tokens or 0
    tokens, usd = 0, 0.0
    for spec in route.backends:
        window = spec.context_window
        if (spec.output_per_mtok or 0.0) >= (spec.input_per_mtok or 0.0):
            generated = min(completion, window)
            usage = Usage(min(prompt, window - generated), generated)
        else:
            read = min(prompt, window)
            usage = Usage(read, min(completion, window - read))
        retries = spec.max_retries
        seconds = route.queue_timeout_s + spec.timeout_s * (retries + 1) + spec.backoff_max_s * retries
        tokens = max(tokens, usage.total_tokens)
        usd = max(usd, cost_usd(spec, usage, seconds * 1000))
    return tokens, usd


class GatewayClient:
    """A gateway route as an :class:`~opsloop.llm.protocol.LLMClient` for opsloop's own callers.

    Unlike ``Router.client(route)``, which calls the router directly, every call goes through
    :meth:`Gateway.chat`, so it is admitted by the caller's budgets and ends in a ledger row:
    tenant ``tenant``, key ``key_id``, request id ``request_id`` (RAG answers: the query's own),
    else ``<key_id>-<hex>``. The gateway checks no role, so the caller is taken as a
    ``user``, the least role that may call it over HTTP.

    Raises:
        NotFoundError: ``route`` is no gateway route (the message lists the known ones).
    """

    def __init__(
        self,
        gateway: Gateway,
        route: str,
        tenant: str,
        *,
        key_id: str,
        request_id: str | None = None,
        variant: ExperimentVariant | None = None,
    ) -> None:
        gateway.router.route(route)
        self.name = route
        self._gateway = gateway
        self._caller = Principal(key_id, tenant, Role.USER)
        self._request_id = request_id
        self._variant = variant

    async def chat(self, request: ChatRequest) -> ChatResult:
        """Complete ``request`` on the route; ``result.backend`` names the backend that served it."""
        request_id = self._request_id or f"{self._caller.key_id}-{uuid.uuid4().hex}"
        routed = await self._gateway.chat(
            self._caller, self.name, request, request_id=request_id, variant=self._variant
        )
        return routed.result

    def stream(self, request: ChatRequest) -> NoReturn:
        """Not offered: opsloop's own callers read whole answers."""
        raise InvalidInputError("this client does not stream", field="stream")

    async def aclose(self) -> None:
        """Nothing to release: the gateway owns the backends."""
