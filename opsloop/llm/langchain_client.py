"""Remote backends through LangChain's chat models: ``ChatOpenAI`` and ``ChatAnthropic``.

A backend with ``client: langchain`` (:class:`~opsloop.llm.routes.BackendSpec`) is called
through LangChain instead of opsloop's own clients; the gateway stays in front of it, so its
calls are admitted by budgets, written to the ledger, retried, traced and fall back like any
other. Kind ``openai`` uses ``ChatOpenAI`` (chat completions, any OpenAI-compatible server such
as vLLM), kind ``anthropic`` uses ``ChatAnthropic`` (the Messages API). Translation::

    protocol (OpenAI chat)                    LangChain
    system / user messages                    SystemMessage / HumanMessage (system messages are
                                              joined into one leading message for Anthropic)
    assistant with ``tool_calls``             AIMessage.tool_calls, arguments parsed as JSON
    ``role="tool"`` with ``tool_call_id``     ToolMessage
    ``tools`` (OpenAI function shape)         ``bind_tools`` (ChatAnthropic makes Messages API tools)
    ``tool_choice`` required / ``tool_name``  ``tool_choice`` "any" / the function's name
    max_tokens, temperature, top_p, stop      the same; ``seed`` and ``frequency_penalty`` for openai
    AIMessage text and tool calls             ChatResult text and ToolCall (arguments as JSON text)
    ``usage_metadata``                        Usage: input (the whole prompt, cache included),
                                              output, and ``cache_read`` as cached tokens
    finish_reason / stop_reason               finish_reason; "tool_calls" whenever tools are called

``json_schema`` (structured outputs) is refused: use the native client for it. ``max_tokens``
reaches an openai backend as ``max_tokens`` in the body, as the native client sends it, not as
ChatOpenAI's ``max_completion_tokens``, which llama-cpp-python's server ignores (OpenAI's
reasoning models take only the latter: call them natively). Keys are always passed, so neither
model reads ``OPENAI_API_KEY`` or ``ANTHROPIC_API_KEY`` (an openai backend without a key sends a
placeholder). LangChain keeps its HTTP connection pools process-wide, one per base URL and
timeout, so :meth:`LangChainClient.aclose` has none of its own to close. The SDKs' retries are
off (``max_retries=0``): the router decides.

Errors reach the router as opsloop errors, as :mod:`opsloop.llm.anthropic` translates them:
timeouts and connection failures are retryable ``BackendError``; HTTP 408, 409, 429 and 5xx
retryable with ``upstream_status``; 401 and 403 not retryable; 400, 413 and 422
``InvalidInputError``; an answer LangChain cannot read is a ``BackendError`` the router falls
back from. Streams come from ``astream``; their usage is the one the server sent, else an
estimate (four characters a prompt token, tools included; a piece a completion token) flagged
``usage_estimated``.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from pydantic import SecretStr

from opsloop.errors import BackendError, InvalidInputError, OpsloopError
from opsloop.llm.anthropic import (
    _ERROR_TYPE_STATUS,
    _STOP_REASONS,
    DEFAULT_BASE_URL,
    _estimate_prompt_tokens,
)
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
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage, BaseMessage
    from langchain_core.runnables import Runnable

__all__ = ["LangChainClient", "LangChainStream"]

_FINISH: dict[str, FinishReason] = {
    **_STOP_REASONS,
    **{reason: reason for reason in ("stop", "length", "tool_calls", "content_filter")},
    "function_call": "tool_calls",
}


def _usage(metadata: Mapping[str, Any] | None) -> Usage:
    if not metadata:
        return Usage()
    details = metadata.get("input_token_details") or {}
    return Usage(
        int(metadata.get("input_tokens") or 0),
        int(metadata.get("output_tokens") or 0),
        int(details.get("cache_read") or 0),
    )


def _finish_reason(metadata: Mapping[str, Any]) -> FinishReason | None:
    reason = metadata.get("finish_reason") or metadata.get("stop_reason")
    return _FINISH.get(reason, "stop") if isinstance(reason, str) else None


def _arguments(arguments: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"tool call arguments are not JSON: {exc}", field=where) from exc
    if not isinstance(value, dict):
        raise InvalidInputError("tool call arguments must be a JSON object", field=where)
    return value


def _messages(messages: Sequence[ChatMessage], *, one_system: bool) -> list[BaseMessage]:
    """LangChain messages for ``messages``; ``one_system`` joins system ones first (Anthropic)."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

    if not messages:
        raise InvalidInputError("messages must not be empty", field="messages")
    system = [m.content for m in messages if m.role == "system" and m.content.strip()] if one_system else []
    out: list[BaseMessage] = [SystemMessage("\n\n".join(system))] if system else []
    for i, message in enumerate(messages):
        if message.role == "system":
            if not one_system:
                out.append(SystemMessage(message.content))
        elif message.role == "user":
            out.append(HumanMessage(message.content, name=message.name))
        elif message.role == "assistant":
            calls = [
                {
                    "id": c.id,
                    "name": c.name,
                    "args": _arguments(c.arguments, f"messages[{i}].tool_calls[{j}]"),
                }
                for j, c in enumerate(message.tool_calls)
            ]
            out.append(AIMessage(message.content, tool_calls=calls))
        elif message.role == "tool" and message.tool_call_id:
            out.append(ToolMessage(message.content, tool_call_id=message.tool_call_id))
        else:
            raise InvalidInputError(
                "a tool message needs the tool_call_id it answers; roles are system, user, assistant, tool",
                field=f"messages[{i}]",
            )
    return out


def _tool_calls(message: AIMessage) -> tuple[ToolCall, ...]:
    """The answer's tool calls; unparsable arguments are passed on as the model wrote them."""
    calls = [
        ToolCall(c.get("id") or f"call_{i}", c["name"], json.dumps(c["args"], ensure_ascii=False))
        for i, c in enumerate(message.tool_calls)
    ]
    calls += [
        ToolCall(c.get("id") or f"call_{len(calls) + i}", c.get("name") or "", c.get("args") or "{}")
        for i, c in enumerate(message.invalid_tool_calls)
    ]
    return tuple(calls)


class LangChainStream(BackendStream):
    """One streamed completion over ``astream``; iterate it, then read :attr:`usage`."""

    def __init__(self, client: LangChainClient, request: ChatRequest) -> None:
        super().__init__(client.name)
        self._client = client
        self._request = request
        self.model = request.model or client.model

    async def _run(self) -> AsyncGenerator[ChatChunk, None]:
        runnable, messages, options = self._client._prepare(self._request)
        started = time.perf_counter()
        usage: Usage | None = None
        received = 0
        calls: dict[int, int] = {}  # the model's tool-call index -> ours, 0, 1, ...
        failed = False
        try:
            try:
                async for piece in runnable.astream(messages, **options):
                    if piece.usage_metadata:
                        usage = _usage(piece.usage_metadata) + (usage or Usage())
                    meta = piece.response_metadata
                    self.finish_reason = _finish_reason(meta) or self.finish_reason
                    self.model = meta.get("model_name") or meta.get("model") or self.model
                    deltas = tuple(
                        ToolCallDelta(
                            calls.setdefault(c.get("index") or 0, len(calls)),
                            c.get("id"),
                            c.get("name"),
                            c.get("args") or "",
                        )
                        for c in getattr(piece, "tool_call_chunks", ())
                    )
                    if piece.text or deltas:
                        self._first_piece(started)
                        received += 1
                        yield ChatChunk(delta=piece.text, tool_calls=deltas)
            except Exception as exc:
                failed = True
                self._client._raise(exc)
        finally:
            if calls and self.finish_reason == "stop":
                self.finish_reason = "tool_calls"
            counted = usage or Usage()
            if usage is None and failed and not received:
                usage = Usage()  # refused or unreachable: nothing was used
            elif not counted.prompt_tokens:  # no count, or ChatAnthropic's from message_delta only
                self.usage_estimated = True
                prompt = _estimate_prompt_tokens(self._request)
                usage = Usage(prompt, counted.completion_tokens or received, counted.cached_tokens)
            self.usage = usage
        yield self._final(model=self.model)


class LangChainClient:
    """The :class:`~opsloop.llm.protocol.LLMClient` over a LangChain chat model.

    Args:
        kind: ``openai`` (``ChatOpenAI``, any OpenAI-compatible server) or ``anthropic``
            (``ChatAnthropic``).
        model: the backend's model name, used when a request names none.
        base_url: the API root (``http://vllm:8000/v1``); needed by openai, Anthropic's own
            when omitted for anthropic.
        api_key: the key, never read from the environment.
        name: backend name in results, metrics and the ledger.
        timeout: seconds per request.
        max_tokens: the answer budget of an Anthropic request that sets none (the API needs one).

    Raises:
        InvalidInputError: an openai backend without ``base_url``, or a non-positive timeout.
    """

    def __init__(
        self,
        kind: Literal["openai", "anthropic"],
        *,
        model: str,
        base_url: str | None = None,
        api_key: SecretStr | str | None = None,
        name: str = "langchain",
        timeout: float = 60.0,
        max_tokens: int = 1024,
    ) -> None:
        if kind == "openai" and not base_url:
            raise InvalidInputError("an openai backend needs base_url", field="base_url")
        if timeout <= 0:
            raise InvalidInputError(f"timeout must be > 0, got {timeout}", field="timeout")
        self.kind = kind
        self.name = name
        self.model = model
        self.base_url = base_url or DEFAULT_BASE_URL
        self.timeout = timeout
        self.max_tokens = max_tokens
        self._api_key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key or "")
        self._models: dict[str, BaseChatModel] = {}

    def __repr__(self) -> str:
        return f"LangChainClient(kind={self.kind!r}, name={self.name!r}, model={self.model!r})"

    async def chat(self, request: ChatRequest) -> ChatResult:
        """Complete ``request`` with ``ainvoke``."""
        runnable, messages, options = self._prepare(request)
        started = time.perf_counter()
        try:
            answer = await runnable.ainvoke(messages, **options)
        except Exception as exc:
            self._raise(exc)
        calls = _tool_calls(answer)
        meta = answer.response_metadata
        return ChatResult(
            text=answer.text,
            finish_reason="tool_calls" if calls else _finish_reason(meta) or "stop",
            usage=_usage(answer.usage_metadata),
            model=meta.get("model_name") or meta.get("model") or request.model or self.model,
            backend=self.name,
            ttft_ms=(time.perf_counter() - started) * 1000,
            tool_calls=calls,
        )

    def stream(self, request: ChatRequest) -> LangChainStream:
        """Stream ``request`` with ``astream``; the HTTP call is made on first iteration."""
        return LangChainStream(self, request)

    async def aclose(self) -> None:
        """Forget the chat models (LangChain owns their process-wide connection pools)."""
        self._models.clear()

    def _chat_model(self, model: str) -> BaseChatModel:
        if model not in self._models:
            if self.kind == "openai":
                from langchain_openai import ChatOpenAI

                self._models[model] = ChatOpenAI(
                    model=model,
                    base_url=self.base_url,
                    api_key=self._api_key if self._api_key.get_secret_value() else SecretStr("unused"),
                    timeout=self.timeout,
                    max_retries=0,
                    stream_usage=True,  # stream_options.include_usage, as the native client asks
                    use_responses_api=False,  # chat completions: what vLLM and every compatible server speak
                )
            else:
                from langchain_anthropic import ChatAnthropic

                self._models[model] = ChatAnthropic(
                    model=model,
                    api_key=self._api_key,
                    base_url=self.base_url,
                    timeout=self.timeout,
                    max_retries=0,
                    max_tokens=self.max_tokens,
                )
        return self._models[model]

    def _prepare(
        self, request: ChatRequest
    ) -> tuple[Runnable[Any, AIMessage], list[BaseMessage], dict[str, Any]]:
        """The model with the request's tools bound, its messages, and the call's options."""
        if request.json_schema is not None:
            raise InvalidInputError(
                f"backend {self.name} (client langchain) does not take json_schema; use client native",
                field="json_schema",
            )
        messages = _messages(request.messages, one_system=self.kind == "anthropic")
        model = self._chat_model(request.model or self.model)
        runnable: Runnable[Any, AIMessage] = model
        if request.tools:
            choice = request.tool_name or ("any" if request.tool_choice == "required" else None)
            try:
                runnable = model.bind_tools([dict(tool) for tool in request.tools], tool_choice=choice)
            except (ValueError, TypeError, KeyError) as exc:
                raise InvalidInputError(f"tools: {exc}", field="tools") from exc
        options: dict[str, Any] = {
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stop": list(request.stop) or None,
        }
        if self.kind == "openai":
            options |= {"seed": request.seed, "frequency_penalty": request.frequency_penalty}
            # As max_tokens, not ChatOpenAI's max_completion_tokens: the field every compatible
            # server reads (llama-cpp-python's ignores the other and generates to its window).
            if options.pop("max_tokens") is not None:
                options["extra_body"] = {"max_tokens": request.max_tokens}
        return runnable, messages, {key: value for key, value in options.items() if value is not None}

    def _raise(self, exc: Exception) -> NoReturn:
        """Raise the opsloop error for a LangChain or SDK error, chained to it."""
        if isinstance(exc, OpsloopError):
            raise exc
        import httpx2

        sdk = importlib.import_module(self.kind)  # LangChain's errors subclass the SDK's
        where = f"backend {self.name}"  # never its URL: errors reach clients
        if isinstance(exc, sdk.APITimeoutError | httpx2.TimeoutException | TimeoutError):
            raise BackendError(
                f"{where} timed out after {self.timeout}s", backend=self.name, retryable=True
            ) from exc
        if isinstance(exc, sdk.APIConnectionError | httpx2.TransportError):
            raise BackendError(f"{where} is unreachable: {exc}", backend=self.name, retryable=True) from exc
        if isinstance(exc, sdk.APIStatusError):
            raise _status_error(exc, where, self.name) from exc
        if isinstance(exc, sdk.APIError | ValueError | KeyError):  # an error event, an unreadable answer
            raise BackendError(f"{where} failed: {str(exc)[:500]}", backend=self.name) from exc
        raise exc


def _status_error(exc: Any, where: str, backend: str) -> BackendError | InvalidInputError:
    """The opsloop error for an SDK's status error (or an error event inside a 200 stream)."""
    kind = getattr(exc, "type", None)
    details: dict[str, Any] = {"backend": backend}
    if exc.status_code >= 400:
        status = details["upstream_status"] = exc.status_code
        said = f"HTTP {status}"
    else:  # an error event inside a stream that began with 200 OK: only its type says what
        status = _ERROR_TYPE_STATUS.get(kind or "", 500)
        said = f"a mid-stream {kind or 'error'}"
    if kind:
        details["upstream_type"] = kind
    body = exc.body.get("error", exc.body) if isinstance(exc.body, dict) else None
    text = body.get("message") if isinstance(body, dict) else None
    message = str(text or exc.message)[:500]
    if status in (401, 403):
        return BackendError(f"{where} rejected the API key ({said}): {message}", **details, retryable=False)
    if status in (400, 413, 422):
        return InvalidInputError(f"{where} refused the request ({said}): {message}", **details)
    retryable = status in (408, 409, 429) or status >= 500
    return BackendError(f"{where} failed with {said}: {message}", **details, retryable=retryable)
