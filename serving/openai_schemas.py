"""OpenAI's chat-completion, model-list and embedding shapes, as the gateway reads and writes them.

Requests are validated strictly: a parameter the gateway does not implement is refused with a
422 that names it, rather than silently ignored (``frequency_penalty`` would otherwise look
applied). Messages, though, ignore unknown keys, because SDKs replay the assistant message of
an earlier response as is (``refusal``, ``annotations``, ``audio``: null). Integers are bounded
here, so that an absurd one (a 400-digit ``max_tokens``) is a 422 and never reaches a counter
or a C library; the gateway then checks ``max_tokens`` against the route's context window.

Responses are built as plain dicts in OpenAI's field order by the ``*_body`` functions:
they are the hot path of streaming, and ``openai``'s own models parse them.
"""

from __future__ import annotations

import base64
import time
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from opsloop.errors import InvalidInputError
from opsloop.llm.protocol import ChatChunk, ChatMessage, ChatRequest, ChatResult, ToolCall, Usage
from opsloop.llm.structured import check_schema

__all__ = [
    "ChatCompletionRequest",
    "EmbeddingRequest",
    "chunk_body",
    "completion_body",
    "embedding_body",
    "models_body",
    "usage_body",
]

MAX_EMBEDDING_INPUTS = 2048
"""OpenAI's own limit on inputs per embeddings request (``embedding_max_inputs`` is at most it)."""
_MAX_INT32 = 2**31 - 1  # llama.cpp and most servers hold token counts in a C int
_MAX_INT64 = 2**63 - 1


class TextPart(BaseModel):
    """One text part of a message's ``content`` list."""

    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    """The function of a tool call: its name and JSON arguments."""

    name: str
    arguments: str = "{}"


class ToolCallIn(BaseModel):
    """A tool call of an earlier assistant message, replayed by the client."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class MessageIn(BaseModel):
    """One message of the conversation; ``developer`` is taken as ``system``."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> MessageIn:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id it answers")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        return self

    def to_message(self) -> ChatMessage:
        """This message in the protocol's form."""
        content = self.content
        text = "\n".join(part.text for part in content) if isinstance(content, list) else content or ""
        calls = [ToolCall(c.id, c.function.name, c.function.arguments) for c in self.tool_calls or ()]
        role = "system" if self.role == "developer" else self.role
        return ChatMessage(role, text, name=self.name, tool_calls=calls, tool_call_id=self.tool_call_id)


class FunctionSpec(BaseModel):
    """A function the model may call: name, description, JSON-schema parameters."""

    model_config = ConfigDict(extra="allow")

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolSpec(BaseModel):
    """One tool offered to the model (only functions exist)."""

    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(BaseModel):
    """The function a named ``tool_choice`` makes the model call."""

    name: str


class NamedToolChoice(BaseModel):
    """``{"type": "function", "function": {"name": ...}}``."""

    type: Literal["function"]
    function: NamedFunction


class StreamOptions(BaseModel):
    """``include_usage``: send a last chunk with the usage and no choices."""

    include_usage: bool = False


class JSONSchemaFormat(BaseModel):
    """``response_format.json_schema``: the schema the answer must match, and its name."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``response_format``: ``text``, ``json_object`` (any JSON object) or ``json_schema``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _check(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type json_schema, and only with it")
        if self.json_schema is not None:
            try:
                check_schema(self.json_schema.schema_, field="response_format.json_schema.schema")
            except InvalidInputError as exc:
                raise ValueError(exc.message) from exc
        return self


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``: OpenAI's request, without the parameters not implemented."""

    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        description="A public model name of GET /v1/models."
    )
    messages: list[MessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        le=_MAX_INT32,
        description="Deprecated by OpenAI; still honoured. At most the model's context window.",
    )
    max_completion_tokens: int | None = Field(
        default=None, ge=1, le=_MAX_INT32, description="Wins over max_tokens."
    )
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = Field(default=None, description="Up to 4 stop sequences.")
    seed: int | None = Field(default=None, ge=-_MAX_INT64 - 1, le=_MAX_INT64)
    tools: list[ToolSpec] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        default=None,
        description="none: offer no tools; auto (the default): the model decides; required: it calls "
        "one; {type: function, function: {name}}: it calls that one.",
    )
    parallel_tool_calls: bool | None = Field(default=None, description="Accepted; backends decide.")
    response_format: ResponseFormat | None = Field(
        default=None,
        description="json_object or json_schema: the answer is JSON (matching the schema), or the call "
        "fails with a 502 that says why (e.g. cut at max_tokens).",
    )
    n: Literal[1] = Field(default=1, description="Only one choice per request.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256, description="Accepted, not recorded.")

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError("stop takes at most 4 sequences")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            raise ValueError("tool_choice required or a named function needs tools")
        if isinstance(self.tool_choice, NamedToolChoice):
            name = self.tool_choice.function.name
            if name not in {tool.function.name for tool in self.tools or ()}:
                raise ValueError(f"tool_choice names {name!r}, which is not among the tools")
        return self

    def to_request(self) -> ChatRequest:
        """The protocol's request; ``model`` stays the public name, the router rewrites it."""
        stop = [self.stop] if isinstance(self.stop, str) else self.stop or []
        spec = self.response_format.json_schema if self.response_format else None
        tools = (
            [] if self.tool_choice == "none" else [t.model_dump(exclude_none=True) for t in self.tools or ()]
        )
        return ChatRequest(
            messages=[m.to_message() for m in self.messages],
            model=self.model,
            max_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stop,
            seed=self.seed,
            tools=tools,
            tool_choice="required" if self.tool_choice == "required" else "auto",
            tool_name=self.tool_choice.function.name
            if isinstance(self.tool_choice, NamedToolChoice)
            else None,
            json_schema=self.answer_schema,
            json_schema_name=spec.name if spec else "answer",
            json_schema_strict=spec.strict if spec else None,
        )

    @property
    def answer_schema(self) -> dict[str, Any] | None:
        """The JSON Schema the answer must match: ``json_object``'s is that of any object."""
        answer = self.response_format
        if answer is None or answer.type == "text":
            return None
        return answer.json_schema.schema_ if answer.json_schema else {"type": "object"}

    @property
    def include_usage(self) -> bool:
        """Whether the stream ends with a usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``: one text or a list of texts (token arrays are not supported)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="all-MiniLM-L6-v2")
    input: str | Annotated[list[str], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="base64: little-endian float32 (what the openai SDK asks for)."
    )
    dimensions: int | None = Field(
        default=None, ge=1, le=_MAX_INT32, description="Must be 384 if given: vectors are not cut."
    )
    user: str | None = Field(default=None, max_length=256)

    @property
    def texts(self) -> list[str]:
        """The inputs as a list."""
        return [self.input] if isinstance(self.input, str) else list(self.input)


def usage_body(usage: Usage) -> dict[str, Any]:
    """OpenAI's ``usage`` object."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def completion_body(completion_id: str, model: str, result: ChatResult) -> dict[str, Any]:
    """A non-streamed ``chat.completion`` for ``result``; ``model`` is the public name."""
    message: dict[str, Any] = {"role": "assistant", "content": result.text, "refusal": None}
    if result.tool_calls:
        message["tool_calls"] = [call.to_openai() for call in result.tool_calls]
        message["content"] = result.text or None
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": result.finish_reason}
        ],
        "usage": usage_body(result.usage),
        "system_fingerprint": None,
    }


def chunk_body(
    completion_id: str,
    created: int,
    model: str,
    chunk: ChatChunk | None,
    *,
    first: bool = False,
    include_usage: bool = False,
    usage: Usage | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``.

    With ``chunk``: its text and tool-call pieces (``role`` on the ``first``), and its
    ``finish_reason`` if it has one. Without: the usage chunk (``choices`` empty). With
    ``include_usage``, every other chunk carries ``"usage": null``, as OpenAI sends them.
    """
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
    }
    if chunk is None:
        body["choices"] = []
        body["usage"] = usage_body(usage or Usage())
        return body
    delta: dict[str, Any] = {"role": "assistant"} if first else {}
    if chunk.delta or first:
        delta["content"] = chunk.delta
    if chunk.tool_calls:
        delta["tool_calls"] = [
            {
                "index": piece.index,
                **({"id": piece.id, "type": "function"} if piece.id else {}),
                "function": {**({"name": piece.name} if piece.name else {}), "arguments": piece.arguments},
            }
            for piece in chunk.tool_calls
        ]
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": chunk.finish_reason}
    body["choices"] = [choice]
    if include_usage:
        body["usage"] = None
    return body


def models_body(names: list[str], created: int) -> dict[str, Any]:
    """``GET /v1/models``: OpenAI's list of model objects."""
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "opsloop"} for name in names
        ],
    }


def embedding_body(vectors: np.ndarray, model: str, prompt_tokens: int, encoding: str) -> dict[str, Any]:
    """``POST /v1/embeddings``'s answer: one embedding object per input, in order."""
    data = []
    for index, row in enumerate(vectors):
        embedding: str | list[float]
        if encoding == "base64":
            embedding = base64.b64encode(np.asarray(row, dtype="<f4").tobytes()).decode("ascii")
        else:
            embedding = [float(x) for x in row]
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
