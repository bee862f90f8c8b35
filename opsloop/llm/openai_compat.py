"""Any OpenAI-compatible chat server (vLLM, llama.cpp's server, OpenAI) through the ``openai`` SDK.

The SDK's errors are translated here, at the boundary::

    openai error                               opsloop error       details
    APIConnectionError, APITimeoutError        BackendError        retryable=True
    RateLimitError (429), InternalServerError  BackendError        retryable=True, upstream_status
    AuthenticationError, PermissionDenied      BackendError        retryable=False ("rejected the API key")
    BadRequestError (400), Unprocessable (422) InvalidInputError   upstream_status
    any other APIError                         BackendError        retryable=False

The SDK's own retries are off by default (``max_retries=0``): the gateway's router
decides whether to retry or fall back, and a dead backend fails in one round trip.

Streams are :class:`OpenAICompatStream` objects; like the llama.cpp stream, ``usage`` is
set once the stream ends or is closed early (``await stream.aclose()``). The server's
usage is used when it sends one (``stream_options.include_usage``); otherwise, and after an
early stop, completion tokens are the content chunks received (servers send about one
token per chunk) and prompt tokens an estimate of four characters per token, flagged by
``usage_estimated`` in the final chunk's ``extra``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import httpx
from pydantic import SecretStr

from opsloop.errors import BackendError, InvalidInputError
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

if TYPE_CHECKING:
    import openai

__all__ = ["OpenAICompatClient", "OpenAICompatStream"]

_FINISH_REASONS: frozenset[str] = frozenset({"stop", "length", "tool_calls", "content_filter"})


def _finish_reason(value: object) -> FinishReason:
    return value if isinstance(value, str) and value in _FINISH_REASONS else "stop"  # type: ignore[return-value]


def _usage(usage: Any) -> Usage:
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) or 0
    return Usage(
        prompt_tokens=usage.prompt_tokens or 0,
        completion_tokens=usage.completion_tokens or 0,
        cached_tokens=cached,
    )


class OpenAICompatStream:
    """One streamed completion; iterate it, then read :attr:`usage` (also after an early stop)."""

    def __init__(self, client: OpenAICompatClient, request: ChatRequest) -> None:
        self._client = client
        self._request = request
        self._chunks = self._run()
        self.usage: Usage | None = None
        """Tokens used; set with the final chunk, or by :meth:`aclose` after an early stop."""
        self.usage_estimated = False
        self.finish_reason: FinishReason | None = None
        self.ttft_ms: float | None = None

    def __aiter__(self) -> OpenAICompatStream:
        return self

    async def __anext__(self) -> ChatChunk:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        """Close the HTTP response (the server stops generating) and settle :attr:`usage`."""
        await self._chunks.aclose()

    async def _run(self) -> AsyncGenerator[ChatChunk, None]:
        client = self._client
        started = time.perf_counter()
        received = 0
        server_usage: Usage | None = None
        try:
            try:
                stream = await client._sdk().chat.completions.create(
                    **client._arguments(self._request),
                    stream=True,
                    stream_options={"include_usage": True},
                )
                async with stream:
                    async for chunk in stream:
                        if chunk.usage is not None:
                            server_usage = _usage(chunk.usage)
                        for choice in chunk.choices[:1]:
                            if choice.finish_reason:
                                self.finish_reason = _finish_reason(choice.finish_reason)
                            delta = choice.delta.content if choice.delta else None
                            calls = _tool_call_deltas(choice.delta)
                            if delta or calls:
                                if self.ttft_ms is None:
                                    self.ttft_ms = (time.perf_counter() - started) * 1000
                                received += 1
                                yield ChatChunk(delta=delta or "", tool_calls=calls)
            except Exception as exc:
                client._raise(exc)
        finally:
            if server_usage is None:
                self.usage_estimated = True
                server_usage = Usage(_estimate_prompt_tokens(self._request), received)
            self.usage = server_usage
        yield ChatChunk(
            finish_reason=self.finish_reason or "stop",
            usage=self.usage,
            extra={"ttft_ms": self.ttft_ms, "backend": client.name, "usage_estimated": self.usage_estimated},
        )


def _message(message: ChatMessage) -> dict[str, Any]:
    """One message in the chat completions shape, tool calls and tool results included."""
    body: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.name:
        body["name"] = message.name
    if message.tool_calls:
        body["tool_calls"] = [call.to_openai() for call in message.tool_calls]
        body["content"] = message.content or None  # OpenAI's null for a call without text
    if message.tool_call_id:
        body["tool_call_id"] = message.tool_call_id
    return body


def _tool_calls(message: Any) -> tuple[ToolCall, ...]:
    calls = getattr(message, "tool_calls", None) or ()
    return tuple(ToolCall(c.id, c.function.name, c.function.arguments or "{}") for c in calls)


def _tool_call_deltas(delta: Any) -> tuple[ToolCallDelta, ...]:
    calls = getattr(delta, "tool_calls", None) or ()
    return tuple(
        ToolCallDelta(
            c.index,
            c.id,
            c.function.name if c.function else None,
            (c.function.arguments or "") if c.function else "",
        )
        for c in calls
    )


def _estimate_prompt_tokens(request: ChatRequest) -> int:
    # Four characters per token is the usual rule of thumb for English BPE vocabularies.
    return sum(len(m.content) for m in request.messages) // 4 + 4 * len(request.messages)


class OpenAICompatClient:
    """The :class:`LLMClient` for a server speaking OpenAI's chat completions API.

    Args:
        base_url: the API root, e.g. ``http://vllm:8000/v1``.
        api_key: bearer key; a placeholder is sent when omitted (vLLM and llama.cpp accept
            any), never ``OPENAI_API_KEY`` from the environment.
        model: the server's model name, used when a request names none.
        name: backend name in results, metrics and the ledger.
        timeout: seconds per request.
        http_client: an ``httpx.AsyncClient`` to send requests with (a loopback server, a
            ``MockTransport``); the caller keeps ownership and closes it.
        max_retries: the SDK's own retries; 0 leaves retrying to the router.
        structured_output: how a request's ``json_schema`` is sent: ``json_schema`` (OpenAI's
            structured outputs, vLLM) or ``json_object`` with a ``schema`` (llama.cpp's server).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: SecretStr | str | None = None,
        model: str,
        name: str = "openai",
        timeout: float = 60.0,
        http_client: httpx.AsyncClient | None = None,
        max_retries: int = 0,
        structured_output: Literal["json_schema", "json_object"] = "json_schema",
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise InvalidInputError(f"base_url must be an http(s) URL, got {base_url!r}", field="base_url")
        if timeout <= 0:
            raise InvalidInputError(f"timeout must be > 0, got {timeout}", field="timeout")
        self.name = name
        self.base_url = base_url
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.structured_output = structured_output
        self._api_key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key or "unused")
        self._http_client = http_client
        self._client: openai.AsyncOpenAI | None = None

    def __repr__(self) -> str:
        return f"OpenAICompatClient(name={self.name!r}, base_url={self.base_url!r}, model={self.model!r})"

    async def chat(self, request: ChatRequest) -> ChatResult:
        """Complete ``request`` in one call."""
        started = time.perf_counter()
        try:
            response = await self._sdk().chat.completions.create(**self._arguments(request))
        except Exception as exc:
            self._raise(exc)
        if not response.choices:
            raise BackendError(f"{self.name}: the server answered with no choices", backend=self.name)
        choice = response.choices[0]
        return ChatResult(
            text=choice.message.content or "",
            finish_reason=_finish_reason(choice.finish_reason),
            usage=_usage(response.usage) if response.usage else Usage(),
            model=response.model or self.model,
            backend=self.name,
            ttft_ms=(time.perf_counter() - started) * 1000,
            tool_calls=_tool_calls(choice.message),
        )

    def stream(self, request: ChatRequest) -> OpenAICompatStream:
        """Stream ``request``; the HTTP call is made on first iteration."""
        return OpenAICompatStream(self, request)

    async def aclose(self) -> None:
        """Close the connections this client opened (an injected ``http_client`` stays open)."""
        if self._client is not None and self._http_client is None:
            await self._client.close()
        self._client = None

    def _sdk(self) -> openai.AsyncOpenAI:
        if self._client is None:
            try:
                import openai
            except ImportError as exc:
                raise BackendError(
                    "OpenAI-compatible backends need the openai SDK: pip install openai"
                ) from exc
            self._client = openai.AsyncOpenAI(
                base_url=self.base_url,
                api_key=self._api_key.get_secret_value(),
                timeout=self.timeout,
                max_retries=self.max_retries,
                http_client=self._http_client,  # type: ignore[arg-type]  # the SDK accepts httpx and httpx2
            )
        return self._client

    def _arguments(self, request: ChatRequest) -> dict[str, Any]:
        if not request.messages:
            raise InvalidInputError("messages must not be empty", field="messages")
        arguments: dict[str, Any] = {
            "model": request.model or self.model,
            "messages": [_message(m) for m in request.messages],
        }
        if request.tools:
            arguments["tools"] = [dict(tool) for tool in request.tools]
        if request.json_schema is not None:
            schema = dict(request.json_schema)
            arguments["response_format"] = (
                {"type": "json_object", "schema": schema}
                if self.structured_output == "json_object"
                else {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
            )
        optional = {
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
            "stop": list(request.stop) or None,
        }
        arguments.update({key: value for key, value in optional.items() if value is not None})
        return arguments

    def _raise(self, exc: Exception) -> NoReturn:
        """Raise the opsloop error for an SDK error, chained to it."""
        import openai

        if isinstance(exc, BackendError | InvalidInputError):
            raise exc
        where = f"{self.name} ({self.base_url})"
        if isinstance(exc, openai.APITimeoutError):
            raise BackendError(
                f"{where} timed out after {self.timeout}s", backend=self.name, retryable=True
            ) from exc
        if isinstance(exc, openai.APIConnectionError):
            raise BackendError(f"{where} is unreachable: {exc}", backend=self.name, retryable=True) from exc
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            message = _server_message(exc)
            if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
                raise BackendError(
                    f"{where} rejected the API key (HTTP {status}): {message}",
                    backend=self.name,
                    upstream_status=status,
                    retryable=False,
                ) from exc
            if isinstance(exc, openai.BadRequestError | openai.UnprocessableEntityError):
                raise InvalidInputError(
                    f"{where} refused the request (HTTP {status}): {message}",
                    backend=self.name,
                    upstream_status=status,
                ) from exc
            retryable = status == 429 or status >= 500
            raise BackendError(
                f"{where} failed with HTTP {status}: {message}",
                backend=self.name,
                upstream_status=status,
                retryable=retryable,
            ) from exc
        if isinstance(exc, openai.OpenAIError):
            raise BackendError(f"{where} failed: {exc}", backend=self.name, retryable=False) from exc
        raise exc


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:500]
    return str(exc.message)[:500]
