"""Any OpenAI-compatible chat server (vLLM, llama.cpp's server, OpenAI), spoken over aiohttp.

Why not the ``openai`` SDK: on the gateway's hot path it cost about 0.8 ms a call against a
backend that answers at once (building pydantic models both ways, and its own HTTP client
over ``httpx2``). Why not ``httpx``: its connection pool scans every pooled connection on each
request (a readability probe per socket), so a call cost 0.55 ms of CPU at one connection
and 1.05 ms at sixteen; aiohttp's connector costs 0.22 ms and 0.08 ms against the same
backend (``bench/gateway``, issue "hot paths"). The wire format is small and stable: ``POST
{base_url}/chat/completions`` with a JSON body, answered with JSON or, streamed, with
server-sent events (``data: {...}`` lines, ending ``data: [DONE]``).

Failures are translated here, at the boundary::

    failure                                   opsloop error       details
    connection refused/reset, timeout         BackendError        retryable=True
    HTTP 429, 5xx                             BackendError        retryable=True, upstream_status
    HTTP 401, 403                             BackendError        retryable=False ("rejected the API key")
    HTTP 400, 422                             InvalidInputError   upstream_status
    any other status, a body that is no JSON  BackendError        retryable=False

Nothing retries here: the gateway's router decides whether to retry or fall back, and a dead
backend fails in one round trip.

Streams are :class:`OpenAICompatStream` objects; like the llama.cpp stream, ``usage`` is set
once the stream ends or is closed early (``await stream.aclose()``, which closes the response
so the server stops generating). The server's usage is used when it sends one (the request
asks for it with ``stream_options.include_usage``); otherwise, and after an early stop,
completion tokens are the content chunks received (servers send about one token per chunk)
and prompt tokens an estimate of four characters per token, flagged by ``usage_estimated`` in
the final chunk's ``extra``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncGenerator, Mapping
from typing import Any, Literal, NoReturn

import aiohttp
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
from opsloop.llm.stream import BackendStream

__all__ = ["OpenAICompatClient", "OpenAICompatStream"]

_MAX_EVENT_BYTES = 4 * 1024 * 1024
"""The longest server-sent event line read (a tool call's whole arguments can be one)."""
_FINISH_REASONS: frozenset[str] = frozenset({"stop", "length", "tool_calls", "content_filter"})


def _finish_reason(value: object) -> FinishReason:
    return value if isinstance(value, str) and value in _FINISH_REASONS else "stop"  # type: ignore[return-value]


def _usage(usage: Mapping[str, Any]) -> Usage:
    details = usage.get("prompt_tokens_details") or {}
    return Usage(
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        cached_tokens=int(details.get("cached_tokens") or 0),
    )


class OpenAICompatStream(BackendStream):
    """One streamed completion; iterate it, then read :attr:`usage` (also after an early stop)."""

    def __init__(self, client: OpenAICompatClient, request: ChatRequest) -> None:
        super().__init__(client.name)
        self._client = client
        self._request = request

    async def _run(self) -> AsyncGenerator[ChatChunk, None]:
        client = self._client
        started = time.perf_counter()
        received = 0
        server_usage: Usage | None = None
        body = {**client._arguments(self._request), "stream": True, "stream_options": {"include_usage": True}}
        try:
            try:
                async with (await client._session()).post(
                    client._url, json=body, headers=client._headers, proxy=client._proxy
                ) as response:
                    if response.status >= 400:
                        await client._raise_status(response)
                    async for raw in response.content:
                        event = _event(raw.decode(), client.name)
                        if event is None:
                            continue
                        if event.get("usage"):
                            server_usage = _usage(event["usage"])
                        for choice in (event.get("choices") or [])[:1]:
                            if choice.get("finish_reason"):
                                self.finish_reason = _finish_reason(choice["finish_reason"])
                            delta = choice.get("delta") or {}
                            text = delta.get("content") or ""
                            calls = _tool_call_deltas(delta)
                            if text or calls:
                                self._first_piece(started)
                                received += 1
                                yield ChatChunk(delta=text, tool_calls=calls)
            except (aiohttp.ClientError, TimeoutError) as exc:
                client._raise_transport(exc)
        finally:
            if server_usage is None:
                self.usage_estimated = True
                server_usage = Usage(_estimate_prompt_tokens(self._request), received)
            self.usage = server_usage
        yield self._final()


def _event(line: str, backend: str) -> dict[str, Any] | None:
    """The JSON of one ``data:`` line of a server-sent event stream; None for anything else."""
    if not line.startswith("data:"):
        return None  # blank separators, comments, ``event:`` lines
    data = line[5:].strip()
    if not data or data == "[DONE]":
        return None
    try:
        event = json.loads(data)
    except json.JSONDecodeError as exc:
        raise BackendError(f"{backend}: a stream event is no JSON: {data[:120]!r}", backend=backend) from exc
    if isinstance(event, dict) and "error" in event:  # an error in the middle of a 200 stream
        raise BackendError(f"{backend} failed mid-stream: {_message_of(event)}", backend=backend)
    return event if isinstance(event, dict) else None


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


def _tool_calls(message: Mapping[str, Any]) -> tuple[ToolCall, ...]:
    return tuple(ToolCall.from_openai(call) for call in message.get("tool_calls") or ())


def _tool_call_deltas(delta: Mapping[str, Any]) -> tuple[ToolCallDelta, ...]:
    pieces = []
    for call in delta.get("tool_calls") or ():
        function = call.get("function") or {}
        pieces.append(
            ToolCallDelta(
                int(call.get("index", 0)),
                call.get("id"),
                function.get("name"),
                function.get("arguments") or "",
            )
        )
    return tuple(pieces)


def _estimate_prompt_tokens(request: ChatRequest) -> int:
    # Four characters per token is the usual rule of thumb for English BPE vocabularies.
    return sum(len(m.content) for m in request.messages) // 4 + 4 * len(request.messages)


def _env_proxy(url: str) -> str | None:
    """The proxy ``HTTP(S)_PROXY`` names for ``url``, unless ``NO_PROXY`` exempts its host.

    Read once per client, as the SDKs do per client: aiohttp's ``trust_env`` reads the
    environment and ``~/.netrc`` in a worker thread on every request.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None or urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def _message_of(body: object) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the body itself (shortened)."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:500]
        if isinstance(error, str):
            return error[:500]
    return str(body)[:500]


class OpenAICompatClient:
    """The :class:`LLMClient` for a server speaking OpenAI's chat completions API.

    Args:
        base_url: the API root, e.g. ``http://vllm:8000/v1``.
        api_key: bearer key; a placeholder is sent when omitted (vLLM and llama.cpp accept
            any), never ``OPENAI_API_KEY`` from the environment.
        model: the server's model name, used when a request names none.
        name: backend name in results, metrics and the ledger.
        timeout: seconds per request.
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
        self.structured_output = structured_output
        key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key or "unused")
        self._headers = {"Authorization": f"Bearer {key.get_secret_value()}"}
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._proxy = _env_proxy(self._url)
        self._http: aiohttp.ClientSession | None = None
        self._http_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"OpenAICompatClient(name={self.name!r}, base_url={self.base_url!r}, model={self.model!r})"

    async def chat(self, request: ChatRequest) -> ChatResult:
        """Complete ``request`` in one call."""
        started = time.perf_counter()
        body = self._arguments(request)
        try:
            async with (await self._session()).post(
                self._url, json=body, headers=self._headers, proxy=self._proxy
            ) as response:
                if response.status >= 400:
                    await self._raise_status(response)
                raw = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._raise_transport(exc)
        try:
            answer = json.loads(raw)
        except ValueError as exc:
            raise BackendError(f"{self.name}: the answer is no JSON", backend=self.name) from exc
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not choices:
            raise BackendError(f"{self.name}: the server answered with no choices", backend=self.name)
        choice = choices[0]
        message = choice.get("message") or {}
        return ChatResult(
            text=message.get("content") or "",
            finish_reason=_finish_reason(choice.get("finish_reason")),
            usage=_usage(answer["usage"]) if answer.get("usage") else Usage(),
            model=answer.get("model") or self.model,
            backend=self.name,
            ttft_ms=(time.perf_counter() - started) * 1000,
            tool_calls=_tool_calls(message),
        )

    def stream(self, request: ChatRequest) -> OpenAICompatStream:
        """Stream ``request``; the HTTP call is made on first iteration."""
        return OpenAICompatStream(self, request)

    async def aclose(self) -> None:
        """Close the connections this client opened."""
        if self._http is not None:
            await self._release(self._http)
            self._http = None

    async def _session(self) -> aiohttp.ClientSession:
        """The connection pool of the running event loop (a new one after the loop changed)."""
        loop = asyncio.get_running_loop()
        if self._http is None or self._http.closed or self._http_loop is not loop:
            if self._http is not None:
                await self._release(self._http)
            self._http = aiohttp.ClientSession(
                # Like a read timeout: a long stream lives as long as tokens keep coming.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=self.timeout),
                connector=aiohttp.TCPConnector(limit=0),  # the router bounds concurrency per backend
                # One session serves every tenant: a cookie a backend sets for one caller's call
                # must not ride along on the next caller's (and the jar costs each call ~10 us).
                cookie_jar=aiohttp.DummyCookieJar(),
                read_bufsize=_MAX_EVENT_BYTES,
            )
            self._http_loop = loop
        return self._http

    async def _release(self, session: aiohttp.ClientSession) -> None:
        """Close ``session``'s connections: it may belong to a loop that has finished already.

        aiohttp's connections belong to the loop that opened them (one ``asyncio.run`` per
        CLI call, say); once that loop closed, closing them here only marks them closed.
        """
        if self._http_loop is asyncio.get_running_loop() or (self._http_loop and self._http_loop.is_closed()):
            await session.close()
        else:  # a live loop elsewhere owns them: leave them to it
            session.detach()

    def _arguments(self, request: ChatRequest) -> dict[str, Any]:
        if not request.messages:
            raise InvalidInputError("messages must not be empty", field="messages")
        arguments: dict[str, Any] = {
            "model": request.model or self.model,
            "messages": [_message(m) for m in request.messages],
        }
        if request.tools:
            arguments["tools"] = [dict(tool) for tool in request.tools]
            if request.tool_name is not None:
                arguments["tool_choice"] = {"type": "function", "function": {"name": request.tool_name}}
            elif request.tool_choice == "required":
                arguments["tool_choice"] = "required"
        if request.json_schema is not None:
            schema = dict(request.json_schema)
            spec: dict[str, Any] = {"name": request.json_schema_name, "schema": schema}
            if request.json_schema_strict is not None:
                spec["strict"] = request.json_schema_strict
            arguments["response_format"] = (
                {"type": "json_object", "schema": schema}
                if self.structured_output == "json_object"
                else {"type": "json_schema", "json_schema": spec}
            )
        optional = {
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "frequency_penalty": request.frequency_penalty,
            "seed": request.seed,
            "stop": list(request.stop) or None,
        }
        arguments.update({key: value for key, value in optional.items() if value is not None})
        return arguments

    def _raise_transport(self, exc: aiohttp.ClientError | TimeoutError) -> NoReturn:
        where = f"backend {self.name}"  # never its URL: errors reach clients
        if isinstance(exc, TimeoutError):  # aiohttp's timeouts are TimeoutErrors too
            raise BackendError(
                f"{where} timed out after {self.timeout}s", backend=self.name, retryable=True
            ) from exc
        if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
            # An OS error's text names the address; clients see the backend's name only.
            reason = (
                os.strerror(exc.errno) if isinstance(exc, aiohttp.ClientOSError) and exc.errno else str(exc)
            )
            raise BackendError(
                f"{where} is unreachable: {reason or type(exc).__name__}", backend=self.name, retryable=True
            ) from exc
        raise BackendError(f"{where} failed: {exc}", backend=self.name, retryable=False) from exc

    async def _raise_status(self, response: aiohttp.ClientResponse) -> NoReturn:
        """Raise the opsloop error for an error status of the server."""
        where = f"backend {self.name}"  # never its URL: errors reach clients
        status = response.status
        text = (await response.read()).decode(errors="replace")
        cause = aiohttp.ClientResponseError(
            response.request_info, response.history, status=status, message=response.reason or ""
        )
        try:
            message = _message_of(json.loads(text))
        except ValueError:
            message = text[:500] or response.reason or f"HTTP {status}"
        if status in (401, 403):
            raise BackendError(
                f"{where} rejected the API key (HTTP {status}): {message}",
                backend=self.name,
                upstream_status=status,
                retryable=False,
            ) from cause
        if status in (400, 422):
            raise InvalidInputError(
                f"{where} refused the request (HTTP {status}): {message}",
                backend=self.name,
                upstream_status=status,
            ) from cause
        raise BackendError(
            f"{where} failed with HTTP {status}: {message}",
            backend=self.name,
            upstream_status=status,
            retryable=status == 429 or status >= 500,
        ) from cause
