"""AnthropicClient through the real ``anthropic`` SDK, fed Messages API replies by an httpx transport.

Every reply is a real Messages API body: JSON messages, error bodies, and streams as the
server-sent-event bytes the API sends. Requests go through an injected ``httpx.AsyncClient``
with an ``httpx.MockTransport`` (bridged to the SDK's httpx2), so what the SDK put on the
wire is asserted too; one test injects an ``httpx2.AsyncClient`` directly and one talks to a
dead loopback port with the SDK's own client.
"""

# ruff: noqa: E501 - the SSE bodies below are the API's wire bytes, one event per line, verbatim

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import httpx2
import pytest

from opsloop.errors import BackendError, ConfigError, InvalidInputError
from opsloop.llm.anthropic import AnthropicClient, AnthropicStream
from opsloop.llm.protocol import (
    ChatChunk,
    ChatMessage,
    ChatRequest,
    ChatResult,
    LLMClient,
    ToolCall,
    ToolCallDelta,
    Usage,
)

MODEL = "claude-sonnet-4-5"
KEY = "sk-ant-api03-secret"
BASE = "http://anthropic.test"
SSE = {"content-type": "text/event-stream; charset=utf-8"}

TEXT_MESSAGE = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [{"type": "text", "text": "Paris is the capital of France."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 21,
        "cache_creation_input_tokens": 5,
        "cache_read_input_tokens": 1800,
        "cache_creation": {"ephemeral_5m_input_tokens": 5, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 9,
        "service_tier": "standard",
    },
}

TOOL_USE_MESSAGE = {
    "id": "msg_01Aq9w938a90dw8q",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [
        {"type": "text", "text": "I'll check the weather in Paris."},
        {
            "type": "tool_use",
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "get_weather",
            "input": {"location": "Paris, France", "unit": "celsius"},
        },
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 384, "cache_read_input_tokens": 0, "output_tokens": 58},
}

# A text answer as the API streams it, byte for byte (ping included).
TEXT_STREAM = b"""event: message_start
data: {"type":"message_start","message":{"id":"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5-20250929","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":100,"output_tokens":1}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" there, how can I help?"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}

event: message_stop
data: {"type":"message_stop"}

"""

# Text, then a tool call whose input arrives as partial JSON pieces.
TOOL_STREAM = b"""event: message_start
data: {"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay, let's check the weather"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" for San Francisco, CA:"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"location\\":"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \\"San Francisc"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"o, CA\\", \\"unit\\": \\"fahrenheit\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"""


def _event(data: dict[str, Any]) -> bytes:
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()


def _long_stream(deltas: int) -> list[bytes]:
    """A long text answer, one SSE event per part, so a consumer can stop in the middle."""
    start = json.loads(TEXT_STREAM.split(b"\n")[1].removeprefix(b"data: "))
    parts = [_event(start)]
    parts.append(
        _event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    )
    for n in range(deltas):
        delta = {"type": "text_delta", "text": f"word{n:03d} "}  # 8 characters each
        parts.append(_event({"type": "content_block_delta", "index": 0, "delta": delta}))
    parts.append(_event({"type": "content_block_stop", "index": 0}))
    parts.append(
        _event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                "usage": {"output_tokens": 3 * deltas},
            }
        )
    )
    parts.append(_event({"type": "message_stop"}))
    return parts


class _Body(httpx.AsyncByteStream):
    """A streamed response body that records how far it was read and whether it was closed."""

    def __init__(self, parts: list[bytes], error: Exception | None = None) -> None:
        self.parts = parts
        self.error = error
        self.sent = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            self.sent += 1
            yield part
            await asyncio.sleep(0)
        if self.error is not None:
            raise self.error

    async def aclose(self) -> None:
        self.closed = True


def _error_body(kind: str, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
    }


Handler = Callable[[httpx.Request], httpx.Response]


def _run(handler: Handler, body: Callable[[AnthropicClient], Awaitable[Any]], **options: Any) -> Any:
    """Run ``body`` with a client whose requests ``handler`` answers; check the client stays the caller's."""

    async def main() -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            client = AnthropicClient(MODEL, api_key=KEY, base_url=BASE, http_client=http, **options)
            try:
                return await body(client)
            finally:
                await client.aclose()
                assert not http.is_closed  # the caller owns the injected client

    return asyncio.run(main())


def _request(*messages: ChatMessage, **fields: Any) -> ChatRequest:
    return ChatRequest(
        messages=messages or (ChatMessage("user", "What is the capital of France?"),), **fields
    )


async def _collect(stream: AnthropicStream) -> list[ChatChunk]:
    try:
        return [chunk async for chunk in stream]
    finally:
        await stream.aclose()


def _json_reply(body: dict[str, Any], seen: list[httpx.Request] | None = None) -> Handler:
    def reply(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(200, json=body, headers={"request-id": "req_1"})

    return reply


# -- non-streaming ----------------------------------------------------------------------------


def test_chat_returns_text_usage_and_sends_a_messages_request() -> None:
    seen: list[httpx.Request] = []

    async def body(client: AnthropicClient) -> ChatResult:
        assert isinstance(client, LLMClient)
        return await client.chat(
            _request(
                ChatMessage("system", "You are brief."),
                ChatMessage("user", "What is the capital of France?"),
                stop=["\n\nHuman:"],
                temperature=0.0,
                seed=7,
            )
        )

    result = _run(_json_reply(TEXT_MESSAGE, seen), body)
    assert result.text == "Paris is the capital of France."
    assert result.finish_reason == "stop" and result.tool_calls == ()
    assert result.model == "claude-sonnet-4-5-20250929" and result.backend == "anthropic"
    # prompt_tokens is the whole prompt: input + cache writes + cache reads; cached is the reads.
    assert result.usage == Usage(prompt_tokens=21 + 5 + 1800, completion_tokens=9, cached_tokens=1800)
    assert result.ttft_ms is not None and result.ttft_ms > 0

    (request,) = seen  # no hidden SDK retries
    assert request.method == "POST" and str(request.url) == f"{BASE}/v1/messages"
    # SDK 2 sends the key as a bearer token, earlier ones as x-api-key.
    sent_key = request.headers.get("x-api-key") or request.headers["authorization"].removeprefix("Bearer ")
    assert sent_key == KEY and "anthropic-version" in request.headers
    assert json.loads(request.content) == {
        "model": MODEL,
        "max_tokens": 1024,  # the client's default: the Messages API requires one
        "system": "You are brief.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}
        ],
        "stop_sequences": ["\n\nHuman:"],
        "temperature": 0.0,  # seed has no Messages API counterpart and is not sent
    }


def test_sampling_can_be_left_out_and_max_tokens_comes_from_the_request() -> None:
    seen: list[httpx.Request] = []

    async def body(client: AnthropicClient) -> ChatResult:
        return await client.chat(_request(temperature=0.2, top_p=0.9, max_tokens=5, model="claude-haiku-4-5"))

    _run(_json_reply(TEXT_MESSAGE, seen), body, send_sampling=False, max_tokens=64)
    sent = json.loads(seen[0].content)
    assert "temperature" not in sent and "top_p" not in sent
    assert sent["max_tokens"] == 5 and sent["model"] == "claude-haiku-4-5"


def test_a_json_schema_is_sent_as_structured_output_and_its_json_text_returned() -> None:
    seen: list[httpx.Request] = []
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    answer = {**TEXT_MESSAGE, "content": [{"type": "text", "text": '{"city": "Paris"}'}]}

    async def body(client: AnthropicClient) -> ChatResult:
        return await client.chat(_request(json_schema=schema))

    result = _run(_json_reply(answer, seen), body)
    sent = json.loads(seen[0].content)
    assert sent["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert "tools" not in sent and json.loads(result.text) == {"city": "Paris"}


@pytest.mark.parametrize(
    ("choice", "name", "expected"),
    [
        ("auto", None, None),
        ("required", None, {"type": "any"}),
        ("auto", "weather", {"type": "tool", "name": "weather"}),
    ],
)
def test_tool_choice_is_sent_in_the_messages_shape(choice: str, name: str | None, expected: object) -> None:
    seen: list[httpx.Request] = []
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}

    async def body(client: AnthropicClient) -> ChatResult:
        return await client.chat(_request(tools=[tool], tool_choice=choice, tool_name=name))

    _run(_json_reply(TOOL_USE_MESSAGE, seen), body)
    assert json.loads(seen[0].content).get("tool_choice") == expected


def test_conversation_with_tools_is_translated_to_the_messages_shape() -> None:
    seen: list[httpx.Request] = []
    weather: dict[str, Any] = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city.",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string"}},
                "required": ["location"],
            },
        },
    }
    call = ToolCall("toolu_01A09q90qw90lq917835lq9", "get_weather", '{"location": "Paris, France"}')
    request = _request(
        ChatMessage("system", "You are a weather bot."),
        ChatMessage("user", "Weather in Paris?"),
        ChatMessage("user", "And be brief."),
        ChatMessage("assistant", tool_calls=[call]),  # only tool calls: no text block
        ChatMessage("tool", "15 degrees, sunny", tool_call_id=call.id),
        ChatMessage("system", "Answer in French."),
        ChatMessage("user", "Thanks!"),
        tools=[weather, {"type": "function", "function": {"name": "now"}}],
    )

    _run(_json_reply(TEXT_MESSAGE, seen), lambda client: client.chat(request))
    sent = json.loads(seen[0].content)
    assert sent["system"] == "You are a weather bot.\n\nAnswer in French."
    assert sent["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather in Paris?"},
                {"type": "text", "text": "And be brief."},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_01A09q90qw90lq917835lq9",
                    "name": "get_weather",
                    "input": {"location": "Paris, France"},
                }
            ],
        },
        {
            "role": "user",  # the tool result and the next user message are one user turn
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
                    "content": "15 degrees, sunny",
                },
                {"type": "text", "text": "Thanks!"},
            ],
        },
    ]
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather of a city.",
            "input_schema": weather["function"]["parameters"],
        },
        {"name": "now", "input_schema": {"type": "object"}},
    ]


def test_tool_results_lead_their_user_turn() -> None:
    seen: list[httpx.Request] = []
    call = ToolCall("toolu_1", "now")
    request = _request(
        ChatMessage("user", "What time is it?"),
        ChatMessage("assistant", "Let me look.", tool_calls=[call]),
        ChatMessage("user", "Quickly, please."),  # between the call and its result
        ChatMessage("tool", "", tool_call_id="toolu_1"),
    )

    _run(_json_reply(TEXT_MESSAGE, seen), lambda client: client.chat(request))
    assistant, user = json.loads(seen[0].content)["messages"][1:]
    assert assistant["content"] == [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}},
    ]
    assert user["content"] == [  # the API refuses text before the results in a user turn
        {"type": "tool_result", "tool_use_id": "toolu_1"},
        {"type": "text", "text": "Quickly, please."},
    ]


def test_tool_use_answer_becomes_openai_tool_calls() -> None:
    result = _run(_json_reply(TOOL_USE_MESSAGE), lambda client: client.chat(_request()))
    assert result.finish_reason == "tool_calls"
    assert result.text == "I'll check the weather in Paris."
    (call,) = result.tool_calls
    assert (call.id, call.name) == ("toolu_01A09q90qw90lq917835lq9", "get_weather")
    assert json.loads(call.arguments) == {"location": "Paris, France", "unit": "celsius"}
    assert call.to_openai() == {
        "id": "toolu_01A09q90qw90lq917835lq9",
        "type": "function",
        "function": {"name": "get_weather", "arguments": call.arguments},
    }
    assert ToolCall.from_openai(call.to_openai()) == call
    assert result.usage == Usage(384, 58, 0)


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ],
)
def test_stop_reasons_map_to_finish_reasons(stop_reason: str, finish_reason: str) -> None:
    body = {**TEXT_MESSAGE, "stop_reason": stop_reason}
    result = _run(_json_reply(body), lambda client: client.chat(_request()))
    assert result.finish_reason == finish_reason


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ((ChatMessage("tool", "15 degrees"),), "messages[0].tool_call_id"),
        (
            (
                ChatMessage("user", "hi"),
                ChatMessage("assistant", tool_calls=[ToolCall("t1", "f", "{not json")]),
            ),
            "messages[1].tool_calls[0].function.arguments",
        ),
        ((ChatMessage("user", "hi", tool_calls=[ToolCall("t1", "f")]),), "messages[0].tool_calls"),
        ((ChatMessage("user", "  "),), "messages[0].content"),
        ((ChatMessage("system", "You are brief."),), "messages"),
    ],
)
def test_untranslatable_requests_are_refused_before_sending(
    messages: tuple[ChatMessage, ...], field: str
) -> None:
    seen: list[httpx.Request] = []

    async def body(client: AnthropicClient) -> None:
        with pytest.raises(InvalidInputError) as info:
            await client.chat(_request(*messages))
        assert info.value.details["field"] == field
        stream = client.stream(_request(*messages))
        with pytest.raises(InvalidInputError):
            await _collect(stream)
        assert stream.usage == Usage()

    _run(_json_reply(TEXT_MESSAGE, seen), body)
    assert not seen


def test_tools_must_be_openai_function_tools() -> None:
    async def body(client: AnthropicClient) -> None:
        with pytest.raises(InvalidInputError) as info:
            await client.chat(
                _request(tools=[{"type": "function", "function": {"name": "ok"}}, {"name": "bare"}])
            )
        assert info.value.details["field"] == "tools[1]"

    _run(_json_reply(TEXT_MESSAGE), body)


# -- streaming --------------------------------------------------------------------------------


def test_stream_yields_text_then_usage_from_the_api() -> None:
    seen: list[httpx.Request] = []

    def reply(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers=SSE, content=TEXT_STREAM)

    async def body(client: AnthropicClient) -> tuple[list[ChatChunk], AnthropicStream]:
        stream = client.stream(_request())
        return await _collect(stream), stream

    chunks, stream = _run(reply, body)
    *deltas, final = chunks
    assert [chunk.delta for chunk in deltas] == ["Hello", " there, how can I help?"]
    assert final.finish_reason == "stop"
    assert final.usage == stream.usage == Usage(prompt_tokens=125, completion_tokens=15, cached_tokens=100)
    assert final.extra["usage_estimated"] is False and not stream.usage_estimated
    assert final.extra["model"] == "claude-sonnet-4-5-20250929" and final.extra["backend"] == "anthropic"
    assert isinstance(final.extra["ttft_ms"], float) and final.extra["ttft_ms"] > 0
    assert json.loads(seen[0].content)["stream"] is True


def test_stream_of_a_tool_call_yields_openai_tool_call_deltas() -> None:
    async def body(client: AnthropicClient) -> list[ChatChunk]:
        return await _collect(client.stream(_request()))

    chunks = _run(lambda request: httpx.Response(200, headers=SSE, content=TOOL_STREAM), body)
    *pieces, final = chunks
    text = "".join(chunk.delta for chunk in pieces)
    calls = [delta for chunk in pieces for delta in chunk.tool_calls]
    assert text == "Okay, let's check the weather for San Francisco, CA:"
    assert calls[0] == ToolCallDelta(0, id="toolu_01T1x1fJ34qAmk2tNTrN7Up6", name="get_weather")
    assert all(delta.index == 0 and delta.id is None for delta in calls[1:])
    assert json.loads("".join(delta.arguments for delta in calls)) == {
        "location": "San Francisco, CA",
        "unit": "fahrenheit",
    }
    assert final.finish_reason == "tool_calls"
    assert final.usage == Usage(472, 89, 0)


def test_early_close_settles_usage_and_closes_the_response() -> None:
    parts = _long_stream(deltas=50)
    response_body = _Body(parts)

    async def body(client: AnthropicClient) -> AnthropicStream:
        stream = client.stream(_request())
        try:
            received = 0
            async for chunk in stream:
                assert chunk.delta.startswith("word")
                received += 1
                if received == 3:
                    break
        finally:
            await stream.aclose()
        return stream

    stream = _run(lambda request: httpx.Response(200, headers=SSE, stream=response_body), body)
    assert response_body.closed and response_body.sent < len(parts) - 10  # the rest was never read
    # message_start's prompt usage is exact; output is estimated from 3 deltas of 8 characters.
    assert stream.usage == Usage(prompt_tokens=125, completion_tokens=6, cached_tokens=100)
    assert stream.usage_estimated and stream.finish_reason is None


def test_closing_a_stream_that_never_started_sends_nothing() -> None:
    seen: list[httpx.Request] = []

    async def body(client: AnthropicClient) -> AnthropicStream:
        stream = client.stream(_request())
        await stream.aclose()
        return stream

    stream = _run(_json_reply(TEXT_MESSAGE, seen), body)
    assert stream.usage == Usage() and not seen


@pytest.mark.parametrize(
    ("error", "match"),
    [
        (httpx.ReadTimeout("The read operation timed out"), "timed out"),
        (httpx.RemoteProtocolError("peer closed connection"), "dropped the connection"),
    ],
)
def test_transport_failure_mid_stream_is_retryable_and_keeps_usage(error: Exception, match: str) -> None:
    parts = _long_stream(deltas=10)[:5]  # message_start, block start, three deltas

    async def body(client: AnthropicClient) -> AnthropicStream:
        stream = client.stream(_request())
        received: list[ChatChunk] = []
        with pytest.raises(BackendError, match=match) as info:
            try:
                async for chunk in stream:
                    received.append(chunk)
            finally:
                await stream.aclose()
        assert len(received) == 3 and info.value.details["retryable"] is True
        return stream

    stream = _run(lambda request: httpx.Response(200, headers=SSE, stream=_Body(parts, error)), body)
    assert stream.usage == Usage(125, 6, 100) and stream.usage_estimated


def test_error_event_inside_a_stream_maps_by_its_type() -> None:
    parts = _long_stream(deltas=10)[:4]
    parts.append(
        b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n'
    )

    async def body(client: AnthropicClient) -> AnthropicStream:
        stream = client.stream(_request())
        with pytest.raises(BackendError, match="overloaded") as info:
            await _collect(stream)
        assert info.value.details == {
            "backend": "anthropic",
            "upstream_type": "overloaded_error",
            "retryable": True,
        }
        return stream

    stream = _run(lambda request: httpx.Response(200, headers=SSE, stream=_Body(parts)), body)
    assert stream.usage == Usage(125, 4, 100)  # two 8-character deltas: 16 characters / 4


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "error", "retryable"),
    [
        (429, "rate_limit_error", BackendError, True),
        (529, "overloaded_error", BackendError, True),
        (500, "api_error", BackendError, True),
        (503, "api_error", BackendError, True),
        (401, "authentication_error", BackendError, False),
        (403, "permission_error", BackendError, False),
        (404, "not_found_error", BackendError, False),
        (400, "invalid_request_error", InvalidInputError, None),
        (413, "request_too_large", InvalidInputError, None),
    ],
)
def test_status_errors_map_to_opsloop_errors(
    status: int, kind: str, error: type[Exception], retryable: bool | None
) -> None:
    seen: list[httpx.Request] = []

    def reply(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        headers = {"request-id": "req_011CSHoEeqs5C35K2UUqR7Fy", "retry-after": "0"}
        return httpx.Response(status, json=_error_body(kind, f"upstream said {status}"), headers=headers)

    async def body(client: AnthropicClient) -> None:
        for call in (client.chat(_request()), _collect(client.stream(_request()))):
            with pytest.raises(error) as info:
                await call
            raised = info.value
            assert isinstance(raised, BackendError | InvalidInputError)
            expected: dict[str, Any] = {
                "backend": "anthropic",
                "upstream_status": status,
                "upstream_type": kind,
                "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
            }
            if retryable is not None:
                expected["retryable"] = retryable
            assert raised.details == expected
            assert f"upstream said {status}" in raised.message
            assert KEY not in raised.message
            assert isinstance(raised.__cause__, Exception)
            if status == 529:
                assert "overloaded" in raised.message
            if status in (401, 403):
                assert "rejected the API key" in raised.message
        assert KEY not in repr(client)

    _run(reply, body)
    assert len(seen) == 2  # one chat, one stream: no hidden SDK retries, the router decides


@pytest.mark.parametrize(
    ("error", "match"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), "unreachable"),
        (httpx.ConnectTimeout("timed out"), "timed out"),
        (httpx.ReadTimeout("The read operation timed out"), "timed out"),
    ],
)
def test_connection_errors_and_timeouts_are_retryable(error: Exception, match: str) -> None:
    seen: list[httpx.Request] = []

    def reply(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        raise error

    async def body(client: AnthropicClient) -> None:
        with pytest.raises(BackendError, match=match) as info:
            await client.chat(_request())
        assert info.value.details == {"backend": "anthropic", "retryable": True}
        stream = client.stream(_request())
        with pytest.raises(BackendError, match=match):
            await _collect(stream)
        assert stream.usage == Usage()  # never reached the API: nothing to charge

    _run(reply, body)
    assert len(seen) == 2


def test_dead_backend_fails_at_once_through_the_sdks_own_client() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def main() -> None:
        client = AnthropicClient(MODEL, api_key=KEY, base_url=f"http://127.0.0.1:{port}", timeout=30.0)
        try:
            started = time.monotonic()
            with pytest.raises(BackendError, match="unreachable") as info:
                await client.chat(_request())
            assert time.monotonic() - started < 3.0  # refused at once: no SDK retries
            assert info.value.details["retryable"] is True
        finally:
            await client.aclose()

    asyncio.run(main())


def test_an_injected_httpx2_client_is_used_as_it_is() -> None:
    seen: list[httpx2.Request] = []

    def reply(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, headers=SSE, content=TEXT_STREAM)

    async def main() -> list[ChatChunk]:
        async with httpx2.AsyncClient(transport=httpx2.MockTransport(reply)) as http:
            client = AnthropicClient(MODEL, api_key=KEY, base_url=BASE, http_client=http)
            try:
                return await _collect(client.stream(_request()))
            finally:
                await client.aclose()
                assert not http.is_closed

    chunks = asyncio.run(main())
    assert "".join(chunk.delta for chunk in chunks) == "Hello there, how can I help?"
    assert len(seen) == 1


def test_settings_are_checked_and_the_key_stays_secret() -> None:
    with pytest.raises(ConfigError, match="api_key"):
        AnthropicClient(MODEL, api_key=None)
    with pytest.raises(InvalidInputError) as info:
        AnthropicClient(MODEL, api_key=KEY, max_tokens=0)
    assert info.value.details["field"] == "max_tokens"
    with pytest.raises(InvalidInputError):
        AnthropicClient(MODEL, api_key=KEY, base_url="anthropic.test")
    client = AnthropicClient(MODEL, api_key=KEY)
    assert client.base_url == "https://api.anthropic.com" and KEY not in repr(client)


def test_a_missing_sdk_is_a_backend_error_with_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "anthropic", None)  # import anthropic now raises ImportError

    async def main() -> None:
        client = AnthropicClient(MODEL, api_key=KEY)
        with pytest.raises(BackendError, match="pip install anthropic"):
            await client.chat(_request())
        stream = client.stream(_request())
        with pytest.raises(BackendError, match="pip install anthropic"):
            await _collect(stream)
        assert stream.usage == Usage()

    asyncio.run(main())
