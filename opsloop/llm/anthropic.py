"""Anthropic's Messages API (Claude) through the official ``anthropic`` SDK.

Requests and results keep the protocol's OpenAI chat shape; this module translates both
ways::

    protocol (OpenAI chat)                   Messages API
    system messages, wherever they are       ``system``, joined with blank lines
    user / assistant messages                user / assistant turns; consecutive messages of
                                             one role merged into one turn
    assistant ``tool_calls``                 ``tool_use`` blocks, arguments parsed as JSON
    ``role="tool"`` with ``tool_call_id``    ``tool_result`` block in a user turn
    ``tools`` (function, ``parameters``)     ``tools`` (``name``, ``input_schema``)
    ``tool_choice`` required / a function    ``tool_choice`` any / tool with its name
    ``stop``                                 ``stop_sequences``
    ``json_schema``                          ``output_config.format`` (type json_schema)
    ``max_tokens``, optional                 ``max_tokens``, required: the client's default
    finish_reason "stop"                     stop_reason end_turn, stop_sequence, pause_turn
    finish_reason "length"                   max_tokens, model_context_window_exceeded
    finish_reason "tool_calls"               tool_use (arguments become a JSON string)
    finish_reason "content_filter"           refusal

``seed`` and a message's ``name`` have no Messages API counterpart and are not sent. The
SDK dropped ``temperature`` and ``top_p`` from its arguments and recent Claude models
refuse them; they are sent in the raw body when a request sets them, unless the client is
built with ``send_sampling=False``.

Usage: Anthropic's ``input_tokens`` leaves out the prompt tokens read from and written to
its prompt cache, OpenAI's ``prompt_tokens`` counts them. ``prompt_tokens`` here means
what it means for the other backends, the whole prompt (``input_tokens +
cache_creation_input_tokens + cache_read_input_tokens``), and ``cached_tokens`` is the
part read from the cache (``cache_read_input_tokens``). A ledger charging
``prompt_tokens - cached_tokens`` at the input price and ``cached_tokens`` at the
cache-read price charges cache writes at the plain input price (Anthropic bills them at
a premium).

The SDK's errors are translated here, at the boundary::

    anthropic error                               opsloop error      details
    APIConnectionError, APITimeoutError           BackendError       retryable=True
    httpx2 transport error while streaming        BackendError       retryable=True ("dropped the connection")
    408, 409, 429, 5xx incl. 529 overloaded       BackendError       retryable=True, upstream_status
    401, 403                                      BackendError       retryable=False ("rejected the API key")
    400, 413, 422                                 InvalidInputError  upstream_status
    any other status or SDK error                 BackendError       retryable=False
    an ``error`` event inside a 200 stream        as its error type says (overloaded_error
                                                  like 529 ...), upstream_type instead of status

The SDK's own retries are off by default (``max_retries=0``): the router decides whether
to retry or fall back. Retryable statuses are those the SDK itself would retry.

Streams are :class:`AnthropicStream` objects. ``message_start`` gives the prompt's usage,
``message_delta`` the stop reason and the cumulative output tokens. ``usage`` is set when
the stream ends or is closed early (``await stream.aclose()``, which closes the HTTP
response so the API stops generating). A stream closed before ``message_delta`` arrived
has no output count from the API: completion tokens are then estimated as the larger of
the text and tool-argument characters received over four, the number of deltas
received, and ``message_start``'s output tokens; without ``message_start``, prompt tokens
are estimated at four characters per token. Both cases set ``usage_estimated``, also in
the final chunk's ``extra``. A request the API refused or never received (an error status,
a connection error) used nothing: ``Usage()``. Time to first token is taken at the first text or tool-call
piece (thinking is not counted).

The SDK (1.0 on) takes only ``httpx2`` clients; an injected ``httpx.AsyncClient`` is
bridged to it (:mod:`opsloop.llm._httpx2_bridge`), an ``httpx2.AsyncClient`` is used as
it is.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import httpx
from pydantic import SecretStr

from opsloop.errors import BackendError, ConfigError, InvalidInputError
from opsloop.llm.protocol import (
    ChatChunk,
    ChatMessage,
    ChatRequest,
    ChatResult,
    FinishReason,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from opsloop.llm.stream import BackendStream

if TYPE_CHECKING:
    import anthropic
    import httpx2
    from anthropic.types import RawMessageStreamEvent

__all__ = ["AnthropicClient", "AnthropicStream"]

DEFAULT_BASE_URL = "https://api.anthropic.com"

_STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# The HTTP status each error type is sent with; an error event inside a stream has only its type.
_ERROR_TYPE_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "conflict_error": 409,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def _finish_reason(stop_reason: str | None) -> FinishReason:
    return _STOP_REASONS.get(stop_reason or "", "stop")


def _usage(input_tokens: int, output_tokens: int, cache_creation: int, cache_read: int) -> Usage:
    return Usage(
        prompt_tokens=input_tokens + cache_creation + cache_read,
        completion_tokens=output_tokens,
        cached_tokens=cache_read,
    )


@dataclass
class _Meter:
    """What a stream has used so far, from the API's counts or from what arrived."""

    responded: bool = False  # the API accepted the request (HTTP 200)
    input_tokens: int | None = None
    cache_creation: int = 0
    cache_read: int = 0
    start_output_tokens: int = 0
    output_tokens: int | None = None  # from message_delta: cumulative, authoritative
    characters: int = 0
    deltas: int = 0
    tool_indexes: dict[int, int] = field(default_factory=dict)  # content block -> tool call index

    def start(self, usage: anthropic.types.Usage) -> None:
        self.input_tokens = usage.input_tokens or 0
        self.cache_creation = usage.cache_creation_input_tokens or 0
        self.cache_read = usage.cache_read_input_tokens or 0
        self.start_output_tokens = usage.output_tokens or 0

    def delta(self, usage: anthropic.types.MessageDeltaUsage) -> None:
        self.output_tokens = usage.output_tokens
        # Newer API versions repeat the (cumulative) input counts here.
        if usage.input_tokens is not None:
            self.input_tokens = usage.input_tokens
        if usage.cache_creation_input_tokens is not None:
            self.cache_creation = usage.cache_creation_input_tokens
        if usage.cache_read_input_tokens is not None:
            self.cache_read = usage.cache_read_input_tokens

    def received(self, text: str) -> None:
        self.characters += len(text)
        self.deltas += 1

    def usage(self, request: ChatRequest) -> tuple[Usage, bool]:
        """The usage so far, and whether any of it is estimated."""
        if not self.responded:  # refused or unreachable: the API bills nothing
            return Usage(), False
        estimated = self.input_tokens is None or self.output_tokens is None
        output = self.output_tokens
        if output is None:
            output = max(math.ceil(self.characters / 4), self.deltas, self.start_output_tokens)
        input_tokens = _estimate_prompt_tokens(request) if self.input_tokens is None else self.input_tokens
        return _usage(input_tokens, output, self.cache_creation, self.cache_read), estimated


def _estimate_prompt_tokens(request: ChatRequest) -> int:
    # Four characters per token is the usual rule of thumb for English BPE vocabularies.
    characters = sum(len(m.content) + sum(len(c.arguments) for c in m.tool_calls) for m in request.messages)
    characters += sum(len(json.dumps(tool)) for tool in request.tools)
    return characters // 4 + 4 * len(request.messages)


class AnthropicStream(BackendStream):
    """One streamed completion; iterate it, then read :attr:`usage` (also after an early stop)."""

    def __init__(self, client: AnthropicClient, request: ChatRequest) -> None:
        super().__init__(client.name)
        self._client = client
        self._request = request
        self.model: str = request.model or client.model

    async def _run(self) -> AsyncGenerator[ChatChunk, None]:
        client = self._client
        try:
            arguments = client._arguments(self._request)
        except InvalidInputError:
            self.usage = Usage()  # refused before anything was sent
            raise
        started = time.perf_counter()
        meter = _Meter()
        try:
            try:
                events = await client._sdk().messages.create(**arguments, stream=True)
                meter.responded = True
                async with events:
                    async for event in events:
                        chunk = self._chunk(event, meter)
                        if chunk is not None:
                            self._first_piece(started)
                            yield chunk
            except Exception as exc:
                client._raise(exc)
        finally:
            self.usage, self.usage_estimated = meter.usage(self._request)
        yield self._final(model=self.model)

    def _chunk(self, event: RawMessageStreamEvent, meter: _Meter) -> ChatChunk | None:
        """Account for one stream event; return the chunk it makes, if any."""
        if event.type == "message_start":
            meter.start(event.message.usage)
            self.model = event.message.model or self.model
        elif event.type == "content_block_start":
            block = event.content_block
            if block.type == "tool_use":
                index = meter.tool_indexes.setdefault(event.index, len(meter.tool_indexes))
                meter.received(block.name)
                return ChatChunk(tool_calls=(ToolCallDelta(index, id=block.id, name=block.name),))
            if block.type == "text" and block.text:
                meter.received(block.text)
                return ChatChunk(delta=block.text)
        elif event.type == "content_block_delta":
            delta = event.delta
            if delta.type == "text_delta" and delta.text:
                meter.received(delta.text)
                return ChatChunk(delta=delta.text)
            if delta.type == "input_json_delta" and delta.partial_json and event.index in meter.tool_indexes:
                meter.received(delta.partial_json)
                call = ToolCallDelta(meter.tool_indexes[event.index], arguments=delta.partial_json)
                return ChatChunk(tool_calls=(call,))
        elif event.type == "message_delta":
            meter.delta(event.usage)
            if event.delta.stop_reason is not None:
                self.finish_reason = _finish_reason(event.delta.stop_reason)
        return None


class AnthropicClient:
    """The :class:`LLMClient` for Anthropic's Messages API.

    Args:
        model: the model name requests use when they name none, e.g. ``claude-sonnet-4-5``.
        api_key: the API key; required, never read from the environment, logged or shown
            in a repr.
        base_url: the API root, ``https://api.anthropic.com`` when omitted; an
            Anthropic-compatible proxy or gateway may stand in.
        name: backend name in results, metrics and the ledger.
        timeout: seconds per request.
        max_tokens: the answer budget of a request that sets none (the Messages API
            requires one).
        http_client: an ``httpx.AsyncClient`` (bridged to the SDK's httpx2) or an
            ``httpx2.AsyncClient`` to send requests with; the caller keeps ownership and
            closes it.
        max_retries: the SDK's own retries; 0 leaves retrying to the router.
        send_sampling: send a request's ``temperature`` and ``top_p``; turn off for models
            that refuse them.

    Raises:
        ConfigError: No ``api_key``.
        InvalidInputError: A setting is out of range (``details["field"]`` names it).
    """

    def __init__(
        self,
        model: str,
        *,
        api_key: SecretStr | str | None,
        base_url: str | None = None,
        name: str = "anthropic",
        timeout: float = 60.0,
        max_tokens: int = 1024,
        http_client: httpx.AsyncClient | httpx2.AsyncClient | None = None,
        max_retries: int = 0,
        send_sampling: bool = True,
    ) -> None:
        key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key or "")
        if not key.get_secret_value():
            raise ConfigError("the Anthropic backend needs an api_key", field="api_key", backend=name)
        base_url = base_url or DEFAULT_BASE_URL
        if not model:
            raise InvalidInputError("model must be a model name", field="model")
        if not base_url.startswith(("http://", "https://")):
            raise InvalidInputError(f"base_url must be an http(s) URL, got {base_url!r}", field="base_url")
        if timeout <= 0:
            raise InvalidInputError(f"timeout must be > 0, got {timeout}", field="timeout")
        if max_tokens < 1:
            raise InvalidInputError(f"max_tokens must be >= 1, got {max_tokens}", field="max_tokens")
        if max_retries < 0:
            raise InvalidInputError(f"max_retries must be >= 0, got {max_retries}", field="max_retries")
        self.name = name
        self.model = model
        self.base_url = base_url
        self.timeout = timeout
        self.max_tokens = max_tokens
        self.max_retries = max_retries
        self.send_sampling = send_sampling
        self._api_key = key
        self._http_client = http_client
        self._bridge: httpx2.AsyncClient | None = None
        self._client: anthropic.AsyncAnthropic | None = None

    def __repr__(self) -> str:
        return f"AnthropicClient(name={self.name!r}, base_url={self.base_url!r}, model={self.model!r})"

    async def chat(self, request: ChatRequest) -> ChatResult:
        """Complete ``request`` in one call."""
        arguments = self._arguments(request)
        started = time.perf_counter()
        try:
            message = await self._sdk().messages.create(**arguments)
        except Exception as exc:
            self._raise(exc)
        text: list[str] = []
        tool_calls: list[ToolCall] = []
        for block in message.content:
            if block.type == "text":
                text.append(block.text)
            elif block.type == "tool_use":
                tool_calls.append(ToolCall(block.id, block.name, json.dumps(block.input, ensure_ascii=False)))
        usage = message.usage
        return ChatResult(
            text="".join(text),
            finish_reason=_finish_reason(message.stop_reason),
            usage=_usage(
                usage.input_tokens,
                usage.output_tokens,
                usage.cache_creation_input_tokens or 0,
                usage.cache_read_input_tokens or 0,
            ),
            model=message.model or arguments["model"],
            backend=self.name,
            ttft_ms=(time.perf_counter() - started) * 1000,
            tool_calls=tuple(tool_calls),
        )

    def stream(self, request: ChatRequest) -> AnthropicStream:
        """Stream ``request``; the HTTP call is made on first iteration."""
        return AnthropicStream(self, request)

    async def aclose(self) -> None:
        """Close the connections this client opened (an injected ``http_client`` stays open)."""
        if self._client is not None and self._http_client is None:
            await self._client.close()
        if self._bridge is not None:
            await self._bridge.aclose()  # leaves the injected httpx client open
        self._client = None
        self._bridge = None

    def _sdk(self) -> anthropic.AsyncAnthropic:
        if self._client is None:
            try:
                import anthropic
            except ImportError as exc:
                raise BackendError(
                    "the Anthropic backend needs the anthropic SDK: pip install anthropic",
                    backend=self.name,
                    package="anthropic",
                ) from exc
            http_client = self._http_client
            if isinstance(http_client, httpx.AsyncClient):
                from opsloop.llm._httpx2_bridge import httpx2_client

                self._bridge = http_client = httpx2_client(http_client)
            # Explicit key and base URL: the SDK then reads no ANTHROPIC_* credentials or URL.
            self._client = anthropic.AsyncAnthropic(
                api_key=self._api_key.get_secret_value(),
                base_url=self.base_url,
                timeout=self.timeout,
                max_retries=self.max_retries,
                http_client=http_client,
            )
        return self._client

    def _arguments(self, request: ChatRequest) -> dict[str, Any]:
        if not request.messages:
            raise InvalidInputError("messages must not be empty", field="messages")
        max_tokens = self.max_tokens if request.max_tokens is None else request.max_tokens
        if max_tokens < 1:
            raise InvalidInputError(f"max_tokens must be >= 1, got {max_tokens}", field="max_tokens")
        system, turns = _turns(request.messages)
        arguments: dict[str, Any] = {
            "model": request.model or self.model,
            "max_tokens": max_tokens,
            "messages": turns,
            "timeout": self.timeout,
        }
        if system:
            arguments["system"] = system
        if request.stop:
            arguments["stop_sequences"] = list(request.stop)
        if request.tools:
            arguments["tools"] = _tools(request.tools)
            if request.tool_name is not None:
                arguments["tool_choice"] = {"type": "tool", "name": request.tool_name}
            elif request.tool_choice == "required":
                arguments["tool_choice"] = {"type": "any"}
        if request.json_schema is not None:  # structured outputs: the text is JSON of the schema
            arguments["output_config"] = {
                "format": {"type": "json_schema", "schema": dict(request.json_schema)}
            }
        sampling = {"temperature": request.temperature, "top_p": request.top_p}
        sampling = {key: value for key, value in sampling.items() if value is not None}
        if sampling and self.send_sampling:
            arguments["extra_body"] = sampling
        return arguments

    def _raise(self, exc: Exception) -> NoReturn:
        """Raise the opsloop error for an SDK (or httpx2) error, chained to it."""
        if isinstance(exc, BackendError | InvalidInputError):
            raise exc  # ours already (the SDK is missing, a request was refused before sending)
        import anthropic
        import httpx2

        where = f"backend {self.name}"  # never its URL: errors reach clients
        if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException):
            raise BackendError(
                f"{where} timed out after {self.timeout}s", backend=self.name, retryable=True
            ) from exc
        if isinstance(exc, anthropic.APIConnectionError):
            raise BackendError(f"{where} is unreachable: {exc}", backend=self.name, retryable=True) from exc
        if isinstance(exc, httpx2.TransportError):  # raised while reading a stream's body
            raise BackendError(
                f"{where} dropped the connection: {exc}", backend=self.name, retryable=True
            ) from exc
        if isinstance(exc, anthropic.APIStatusError):
            raise _status_error(exc, where, self.name) from exc
        if isinstance(exc, anthropic.AnthropicError):
            raise BackendError(f"{where} failed: {exc}", backend=self.name, retryable=False) from exc
        raise exc


def _status_error(
    exc: anthropic.APIStatusError, where: str, backend: str
) -> BackendError | InvalidInputError:
    http_status = exc.status_code
    details: dict[str, Any] = {"backend": backend}
    if http_status >= 400:
        status = http_status
        details["upstream_status"] = http_status
        said = f"HTTP {http_status}"
    else:  # an error event inside a stream that began with 200 OK
        status = _ERROR_TYPE_STATUS.get(exc.type or "", 500)
        said = f"a mid-stream {exc.type or 'error'}"
    if exc.type:
        details["upstream_type"] = exc.type
    if exc.request_id:
        details["request_id"] = exc.request_id
    message = (exc.api_message or exc.message)[:500]
    if status in (401, 403):
        return BackendError(f"{where} rejected the API key ({said}): {message}", **details, retryable=False)
    if status in (400, 413, 422):
        return InvalidInputError(f"{where} refused the request ({said}): {message}", **details)
    retryable = status in (408, 409, 429) or status >= 500
    overloaded = " (overloaded)" if status == 529 else ""
    return BackendError(f"{where} failed with {said}{overloaded}: {message}", **details, retryable=retryable)


# -- translation to the Messages API -------------------------------------------------------


def _turns(messages: Sequence[ChatMessage]) -> tuple[str, list[dict[str, Any]]]:
    """Return the ``system`` text and the user/assistant turns for ``messages``."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if message.role == "system":
            if message.content.strip():
                system.append(message.content)
            continue
        role, blocks = _blocks(message, i)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)  # the API wants user and assistant to alternate
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise InvalidInputError("messages need a user message besides system ones", field="messages")
    for turn in turns:
        # Tool results lead their user turn (the API refuses text before them); sort is stable.
        turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    return "\n\n".join(system), turns


def _blocks(message: ChatMessage, i: int) -> tuple[Literal["user", "assistant"], list[dict[str, Any]]]:
    if message.role == "tool":
        if not message.tool_call_id:
            raise InvalidInputError(
                "a tool message needs the tool_call_id it answers", field=f"messages[{i}].tool_call_id"
            )
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
        if message.content:
            result["content"] = message.content
        return "user", [result]
    if message.role != "user" and message.role != "assistant":
        raise InvalidInputError(
            "role must be system, user, assistant or tool", field=f"messages[{i}].role", value=message.role
        )
    # The API refuses empty and whitespace-only text blocks.
    blocks: list[dict[str, Any]] = []
    if message.content.strip():
        blocks.append({"type": "text", "text": message.content})
    if message.tool_calls:
        if message.role != "assistant":
            raise InvalidInputError(
                "only assistant messages carry tool_calls", field=f"messages[{i}].tool_calls"
            )
        for j, call in enumerate(message.tool_calls):
            arguments = _tool_input(call.arguments, f"messages[{i}].tool_calls[{j}].function.arguments")
            blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": arguments})
    if not blocks:
        raise InvalidInputError("message content must not be empty", field=f"messages[{i}].content")
    return message.role, blocks


def _tool_input(arguments: str, where: str) -> dict[str, Any]:
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(
            f"tool call arguments are not JSON: {exc}", field=where, value=arguments[:200]
        ) from exc
    if not isinstance(value, dict):
        raise InvalidInputError(
            "tool call arguments must be a JSON object", field=where, value=arguments[:200]
        )
    return value


def _tools(tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Translate OpenAI function tools into Messages API tools."""
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if tool.get("type") == "function" else None
        name = function.get("name") if isinstance(function, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(name, str) or not name:
            raise InvalidInputError(
                'tools must be {"type": "function", "function": {"name": ..., "parameters": ...}}',
                field=f"tools[{i}]",
            )
        schema = dict(function.get("parameters") or {})
        schema.setdefault("type", "object")
        spec: dict[str, Any] = {"name": name, "input_schema": schema}
        if function.get("description"):
            spec["description"] = function["description"]
        if function.get("strict") is True:
            spec["strict"] = True
        out.append(spec)
    return out
