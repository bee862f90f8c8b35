"""What every LLM backend speaks: chat requests in the OpenAI shape, results with usage.

The gateway, the RAG answerer, evals and agents depend on :class:`LLMClient` only;
``opsloop.llm`` holds the backends (llama.cpp in-process, any OpenAI-compatible server
such as vLLM, Anthropic's Messages API). Token counts are the backend's own, so the cost
ledger charges what the backend counted, streamed or not.

Function tools follow OpenAI's chat format: a request offers ``tools`` (``{"type":
"function", "function": {"name", "description", "parameters"}}``), the model answers with
:class:`ToolCall` objects (``finish_reason="tool_calls"``; streamed as
:class:`ToolCallDelta` pieces), the caller replays them in an assistant message's
``tool_calls`` and answers each with a ``role="tool"`` message naming its
``tool_call_id``. The Anthropic backend translates all of this, the OpenAI-compatible one
passes it through; llama.cpp in-process does not send tools (its answers are text).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "ChatChunk",
    "ChatMessage",
    "ChatRequest",
    "ChatResult",
    "FinishReason",
    "LLMClient",
    "MeteredStream",
    "Role",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
]

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


@dataclass(frozen=True)
class ToolCall:
    """A function call the model asked for: one entry of OpenAI's ``tool_calls``.

    ``arguments`` is JSON text, as the model wrote it (OpenAI does not guarantee it parses).
    """

    id: str
    name: str
    arguments: str = "{}"

    def to_openai(self) -> dict[str, Any]:
        """Return the call in OpenAI's shape, ``{"id", "type": "function", "function": {...}}``."""
        function = {"name": self.name, "arguments": self.arguments}
        return {"id": self.id, "type": "function", "function": function}

    @classmethod
    def from_openai(cls, data: Mapping[str, Any]) -> ToolCall:
        """Build a call from OpenAI's shape (the inverse of :meth:`to_openai`).

        Raises:
            KeyError: ``data`` has no ``id`` or no ``function.name``.
        """
        function = data.get("function") or {}
        arguments = function.get("arguments") or "{}"
        return cls(id=str(data["id"]), name=str(function["name"]), arguments=str(arguments))


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a streamed tool call, as in OpenAI's ``delta.tool_calls``.

    ``index`` numbers the calls of one answer from 0; the first piece of a call carries its
    ``id`` and ``name``, later pieces append to ``arguments``.
    """

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class ChatMessage:
    """One message of a conversation.

    An assistant message that only calls tools has ``content=""`` (OpenAI's ``null``) and
    ``tool_calls``; a ``role="tool"`` message carries one result in ``content`` and the
    ``tool_call_id`` it answers.
    """

    role: Role
    content: str = ""
    name: str | None = None
    tool_calls: Sequence[ToolCall] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True)
class Usage:
    """Tokens one call used, as the backend counted them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
        )


@dataclass(frozen=True)
class ChatRequest:
    """A chat completion request; ``model`` is the backend's own model name."""

    messages: Sequence[ChatMessage]
    model: str = ""
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: Sequence[str] = ()
    seed: int | None = None
    tools: Sequence[Mapping[str, Any]] = ()
    """Function tools in OpenAI's shape: ``{"type": "function", "function": {...}}``."""
    tool_choice: Literal["auto", "required"] = "auto"
    """With ``tools``: ``auto`` lets the model answer in words, ``required`` makes it call one."""
    tool_name: str | None = None
    """With ``tools``: the one function the model must call (OpenAI's named ``tool_choice``)."""
    json_schema: Mapping[str, Any] | None = None
    """The answer must be JSON matching this JSON Schema (constrained decoding where the
    backend has it: llama.cpp's grammars, vLLM's guided decoding, OpenAI's structured outputs,
    Anthropic's ``output_config``)."""
    json_schema_name: str = "answer"
    """The schema's name, sent where the backend's API takes one (OpenAI's ``json_schema.name``)."""
    json_schema_strict: bool | None = None
    """OpenAI's ``strict``, passed to OpenAI-compatible backends as the client set it."""
    frequency_penalty: float | None = None
    """OpenAI's: lowers a token's odds by how often it already occurs (-2 to 2; llama.cpp counts
    the last 64 tokens). llama.cpp and OpenAI-compatible backends send it; Anthropic's API has no
    such parameter, so that backend leaves it out."""


@dataclass(frozen=True)
class ChatResult:
    """A finished completion."""

    text: str
    finish_reason: FinishReason
    usage: Usage
    model: str
    backend: str
    ttft_ms: float | None = None
    tool_calls: Sequence[ToolCall] = ()
    cost_usd: float | None = None
    """What the call cost as the gateway recorded it; None from a backend, which knows no prices."""


@dataclass(frozen=True)
class ChatChunk:
    """One piece of a streamed completion; the last one has ``finish_reason`` and ``usage``."""

    delta: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    extra: dict[str, object] = field(default_factory=dict)
    tool_calls: Sequence[ToolCallDelta] = ()


class MeteredStream(Protocol):
    """A streamed completion that knows what it used, also when stopped early.

    ``usage`` is set with the final chunk, or by :meth:`aclose` after the consumer stopped
    (a client disconnect), for what was generated up to then. Consume it as
    ``try: async for chunk in stream: ... finally: await stream.aclose()`` and charge
    ``stream.usage``: a stream that is never closed may generate on to ``max_tokens``.
    """

    usage: Usage | None

    def __aiter__(self) -> MeteredStream:
        """The stream itself."""
        ...

    async def __anext__(self) -> ChatChunk:
        """The next piece of the completion."""
        ...

    async def aclose(self) -> None:
        """Stop generating and settle ``usage``."""
        ...


@runtime_checkable
class LLMClient(Protocol):
    """A chat backend. Implementations raise opsloop errors, never their SDK's.

    ``BackendError`` (or a subclass) for connection failures, timeouts, 5xx and 429, so a
    router can fall back; ``InvalidInputError`` for requests the backend refuses as bad.
    """

    name: str

    async def chat(self, request: ChatRequest) -> ChatResult:
        """Complete ``request`` and return the whole answer."""
        ...

    def stream(self, request: ChatRequest) -> MeteredStream:
        """Complete ``request`` piece by piece; the final chunk carries usage."""
        ...

    async def aclose(self) -> None:
        """Release the backend's resources (model memory, HTTP connections)."""
        ...
