"""The OpenAI-compatible gateway: ``/v1/chat/completions``, ``/v1/models``, ``/v1/embeddings``.

Point any OpenAI client at ``http://host:8000/v1`` with an opsloop key as its API key. The
``model`` of a request is a public route name (``Settings.llm_routes``); the router picks the
backend, falling back in order. Each chat response says who served it in
``X-Opsloop-Backend``, and how many times the router moved on to another backend before, in
``X-Opsloop-Fallbacks``. While a route experiment runs on the model, the caller's unit
(``X-Opsloop-Unit``, default the API key) decides which route answers, named in
``X-Opsloop-Variant``. Chat and embedding calls alike are admitted by the caller's budgets
and rate limits and recorded in the ledger (:class:`opsloop.llm.gateway.Gateway`).

Streams are server-sent events as OpenAI sends them: ``data: {chunk}`` lines of
``chat.completion.chunk`` objects, the last with ``finish_reason``, then (with
``stream_options.include_usage``) a chunk with the usage and no choices, then
``data: [DONE]``. The first chunk is awaited before the response starts, so a route whose
every backend fails still answers with an HTTP error; an error after that is sent as a
``data: {"error": ...}`` event, which the openai SDK raises as ``APIError``.

With ``response_format`` (``json_object`` or ``json_schema``) the backend is asked to
constrain its answer, and the answer is checked before it is returned: JSON that does not
parse or match the schema, or that ``max_tokens`` cut short, is a 502 naming the problem
(streamed: the error event in place of the last chunk). An answer of tool calls is not checked.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Coroutine
from contextlib import aclosing
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from opsloop.auth import Role
from opsloop.errors import InvalidInputError, OpsloopError
from opsloop.llm.gateway import GatewayStream
from opsloop.llm.protocol import ChatChunk
from opsloop.llm.router import RouteOutcome
from opsloop.llm.structured import check_answer
from serving.deps import (
    UNIT_MAX_LENGTH,
    VARIANT_HEADER,
    PlatformDep,
    Unit,
    UserKey,
    authorize,
    bearer_key,
    request_id,
)
from serving.openai_schemas import (
    ChatCompletionRequest,
    EmbeddingRequest,
    chunk_body,
    completion_body,
    embedding_body,
    models_body,
)
from workflows.experiments.assignment import UNIT_HEADER

router = APIRouter(prefix="/v1", tags=["gateway"])

BACKEND_HEADER = "X-Opsloop-Backend"
FALLBACKS_HEADER = "X-Opsloop-Fallbacks"
_EMBEDDING_DIMENSION = 384


def _routing_headers(outcome: RouteOutcome, variant: str | None) -> dict[str, str]:
    headers = {BACKEND_HEADER: outcome.backend or "", FALLBACKS_HEADER: str(outcome.fallbacks)}
    if variant is not None:
        headers[VARIANT_HEADER] = variant
    return headers


def _event(data: dict[str, Any] | str) -> str:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n"


class _EventStream(StreamingResponse):
    """Server-sent events of one gateway stream, settled however the response ends.

    Why not Starlette's own streaming: on a client disconnect it cancels the body's task, and
    a cancellation that lands while the backend stream is being read loses its usage (the
    llama.cpp worker is still generating when the stream's cleanup is cancelled too). Here a
    watcher only notes the disconnect; the send loop checks it between chunks and stops, and
    :meth:`GatewayStream.settle` then closes the backend stream uncancelled. A backend that
    stalls delays noticing by at most its ``timeout_s``.
    """

    def __init__(
        self, stream: GatewayStream, body: ChatCompletionRequest, completion_id: str, headers: dict[str, str]
    ) -> None:
        super().__init__(iter(()), media_type="text/event-stream", headers=headers)
        self._stream = stream
        self._body = body
        self._completion_id = completion_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the events until the stream ends or the client leaves; then settle the stream."""
        gone = anyio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(watch)
                await send(
                    {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
                )
                async with aclosing(
                    _events(self._stream, self._body, self._completion_id, gone.is_set)
                ) as events:
                    async for event in events:
                        await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
                if not gone.is_set():
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                tasks.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._stream.settle("disconnected")  # no-op when the events settled it


async def _events(
    stream: GatewayStream, body: ChatCompletionRequest, completion_id: str, gone: Callable[[], bool]
) -> AsyncGenerator[str, None]:
    """The SSE lines of ``stream``; settles it when it ends or fails, returns early when ``gone()``."""
    created = int(time.time())
    model = body.model
    include_usage = body.include_usage
    structured = _StructuredAnswer(body.answer_schema, stream.outcome.backend or model)
    try:
        chunk = stream.first
        first = True
        while chunk is not None:
            structured.add(chunk)  # a finish chunk of a wrong answer is an error event instead
            yield _event(
                chunk_body(completion_id, created, model, chunk, first=first, include_usage=include_usage)
            )
            first = False
            if chunk.finish_reason is not None:
                break
            if gone():
                return  # the caller settles the stream as disconnected
            chunk = await anext(stream, None)
        if chunk is None:  # the backend ended without a finish reason
            ended = ChatChunk(finish_reason="stop")
            structured.add(ended)
            yield _event(
                chunk_body(completion_id, created, model, ended, first=first, include_usage=include_usage)
            )
        await stream.settle("ok")
        if include_usage:
            yield _event(chunk_body(completion_id, created, model, None, usage=stream.usage))
        yield _event("[DONE]")
    except OpsloopError as exc:
        await stream.settle("error", exc)
        yield _event(exc.to_dict())
        yield _event("[DONE]")


class _StructuredAnswer:
    """A streamed answer's text, checked against ``response_format``'s schema when it finishes."""

    def __init__(self, schema: dict[str, Any] | None, backend: str) -> None:
        self._schema = schema
        self._backend = backend
        self._text: list[str] = []
        self._called = False

    def add(self, chunk: ChatChunk) -> None:
        """Take ``chunk``; on the last one, raise unless the text is JSON of the schema.

        Raises:
            BackendError: The finished answer is cut short, no JSON, or does not match.
        """
        if self._schema is None:
            return
        self._text.append(chunk.delta)
        self._called = self._called or bool(chunk.tool_calls)
        if chunk.finish_reason is not None and not self._called:
            check_answer("".join(self._text), self._schema, chunk.finish_reason, self._backend)


async def chat_completions(
    body: ChatCompletionRequest,
    platform: PlatformDep,
    principal: UserKey,
    request: Request,
    unit: Unit = None,
) -> Any:
    """Complete the conversation on the route named by ``model``; 404 for an unknown model."""
    gateway = platform.gateway  # built at start: no thread-pool hop on the hot path
    rid = request_id(request) or uuid.uuid4().hex
    completion_id = f"chatcmpl-{rid}"
    unit = unit or principal.key_id or rid
    asked = body.to_request()
    if body.stream:
        stream = await gateway.open_stream(principal, body.model, asked, request_id=rid, unit=unit)
        return _EventStream(stream, body, completion_id, _routing_headers(stream.outcome, stream.variant))
    routed = await gateway.chat(principal, body.model, asked, request_id=rid, unit=unit)
    result = routed.result
    if asked.json_schema is not None and not result.tool_calls:
        check_answer(result.text, asked.json_schema, result.finish_reason, result.backend)
    # A response of our own: FastAPI would walk the body with jsonable_encoder first (50 us here).
    return JSONResponse(
        completion_body(completion_id, body.model, result),
        headers=_routing_headers(routed.outcome, routed.variant),
    )


class _ChatRoute(APIRoute):
    """The chat route, answered without FastAPI's per-request dependency solving.

    FastAPI documents it from :func:`chat_completions`' signature as for any route;
    :func:`_answer_chat` reads the same inputs with the same errors in one pass: the key
    (401/403), then the unit header and the body, whose faults make one 422. Solving the
    signature's dependencies and validating the body as a parsed dict cost about 0.1 ms of
    each call on the gateway's hottest path (``bench/gateway``'s profile). Two differences,
    both on purpose: no body is parsed before its key is checked (FastAPI parses JSON first),
    and a body is read as JSON whatever its ``Content-Type`` (``curl -d`` sends a form's).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """:func:`_answer_chat`, in place of FastAPI's generic handler."""
        return _answer_chat


async def _answer_chat(request: Request) -> Response:
    principal = authorize(request, bearer_key(request), Role.USER)
    raw = await request.body()
    unit = request.headers.get(UNIT_HEADER)
    errors: list[dict[str, Any]] = []
    if unit is not None and len(unit) > UNIT_MAX_LENGTH:
        errors.append({
            "type": "string_too_long", "loc": ("header", UNIT_HEADER),
            "msg": f"String should have at most {UNIT_MAX_LENGTH} characters", "input": unit,
        })  # fmt: skip
    body = None
    if not raw:
        errors.append({"type": "missing", "loc": ("body",), "msg": "Field required", "input": None})
    else:
        try:
            body = ChatCompletionRequest.model_validate_json(raw)
        except ValidationError as exc:
            errors.extend(_body_errors(exc, raw))
    if errors or body is None:
        raise RequestValidationError(errors)
    response: Response = await chat_completions(body, request.app.state.platform, principal, request, unit)
    return response


def _body_errors(exc: ValidationError, raw: bytes) -> list[dict[str, Any]]:
    """``exc``'s errors as FastAPI reports a body's: under ``body``, a JSON fault at its position."""
    errors = exc.errors(include_url=False)
    if errors[0]["type"] != "json_invalid":
        return [{**error, "loc": ("body", *error["loc"])} for error in errors]
    try:
        json.loads(raw)
    except (ValueError, UnicodeDecodeError) as fault:
        position = fault.pos if isinstance(fault, json.JSONDecodeError) else 0
        reason = fault.msg if isinstance(fault, json.JSONDecodeError) else str(fault)
        return [
            {
                "type": "json_invalid",
                "loc": ("body", position),
                "msg": "JSON decode error",
                "ctx": {"error": reason},
            }
        ]
    return [{**errors[0], "loc": ("body",)}]  # JSON to Python's parser, not to pydantic's


router.add_api_route(
    "/chat/completions",
    chat_completions,
    methods=["POST"],
    summary="OpenAI-compatible chat completion, streamed or not",
    responses={200: {"content": {"text/event-stream": {}}}},
    route_class_override=_ChatRoute,
)


@router.get("/models", summary="The public model names this gateway serves")
async def list_models(platform: PlatformDep, _: UserKey) -> dict[str, Any]:
    """Every route, as OpenAI's list of model objects."""
    return models_body(list(platform.settings.llm_routes), int(time.time()))


@router.post("/embeddings", summary="OpenAI-compatible embeddings (all-MiniLM-L6-v2, 384 dimensions)")
async def embeddings(
    body: EmbeddingRequest, platform: PlatformDep, principal: UserKey, request: Request
) -> dict[str, Any]:
    """Embed one text or a list of texts for the caller, metered and recorded like a chat call.

    ``usage.prompt_tokens`` counts MiniLM's tokens; the gateway caps the texts per call and
    their length (422 naming the limit).
    """
    if body.dimensions is not None and body.dimensions != _EMBEDDING_DIMENSION:
        raise InvalidInputError(
            f"dimensions must be {_EMBEDDING_DIMENSION} (vectors are not shortened), got {body.dimensions}",
            field="dimensions",
            value=body.dimensions,
        )
    gateway = platform.gateway  # built at start: no thread-pool hop on the hot path
    rid = request_id(request) or uuid.uuid4().hex
    result = await gateway.embed(principal, body.model, body.texts, request_id=rid)
    return embedding_body(result.vectors, result.model, result.prompt_tokens, body.encoding_format)
