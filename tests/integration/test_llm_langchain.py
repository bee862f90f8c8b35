"""Backends with ``client: langchain``: LangChain's ChatAnthropic against Messages API replies.

A loopback HTTP server (``scripted_server``) answers with real Messages API bodies, so
ChatAnthropic and the anthropic SDK under it do everything they do against the API: the test
reads what they put on the wire (LangChain's user agent, tools in Anthropic's shape) and the
:class:`~opsloop.llm.protocol.ChatResult` the client makes of the answer. A dead loopback port
gives the gateway's retryable backend error, and the router's real client factory falls back
from a dead LangChain backend to a live one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter, ValidationError

from opsloop.errors import BackendError, InvalidInputError
from opsloop.llm.langchain_client import LangChainClient
from opsloop.llm.protocol import (
    ChatChunk,
    ChatMessage,
    ChatRequest,
    LLMClient,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from opsloop.llm.router import build_router
from opsloop.llm.routes import BackendSpec, RouteTable, create_client
from tests.integration.llama_server import free_port
from tests.integration.scripted_server import Reply, scripted_server
from tests.integration.test_llm_anthropic import TEXT_MESSAGE, TOOL_USE_MESSAGE

MODEL = "claude-sonnet-4-5"
KEY = "sk-ant-api03-secret"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}


def _event(data: dict[str, Any]) -> bytes:
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()


# A tool call as the API streams it today: message_delta repeats the (cumulative) input counts.
_TOOL_EVENTS: list[dict[str, Any]] = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_014p7gG3wDgGV9EUtLvnow3U",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 472, "output_tokens": 2},
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking."}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "content_block_start",
        "index": 1,
        "content_block": {
            "type": "tool_use",
            "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "name": "get_weather",
            "input": {},
        },
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": '{"location":'},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": ' "Paris"}'},
    },
    {"type": "content_block_stop", "index": 1},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"input_tokens": 472, "cache_read_input_tokens": 0, "output_tokens": 89},
    },
    {"type": "message_stop"},
]
TOOL_STREAM = b"".join(_event(event) for event in _TOOL_EVENTS)


def _error_body(kind: str, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
    }


def _served(reply: Reply, use: Callable[[LangChainClient], Awaitable[Any]]) -> Any:
    """Run ``use`` with a LangChain Anthropic client of a loopback server that answers ``reply``."""

    async def main() -> Any:
        async with scripted_server(reply) as root:
            client = LangChainClient("anthropic", model=MODEL, base_url=root, api_key=KEY, name="claude-lc")
            try:
                return await asyncio.wait_for(use(client), timeout=30)
            finally:
                await client.aclose()

    return asyncio.run(main())


def _answer(body: dict[str, Any], seen: list[httpx.Request], **headers: str) -> Reply:
    def reply(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=body, headers={"request-id": "req_1", **headers})

    return reply


def test_a_text_reply_through_chat_anthropic() -> None:
    seen: list[httpx.Request] = []
    request = ChatRequest(
        messages=[
            ChatMessage("system", "You are brief."),
            ChatMessage("user", "What is the capital of France?"),
        ],
        max_tokens=50,
        temperature=0.0,
        stop=["\n\nHuman:"],
    )
    result = _served(_answer(TEXT_MESSAGE, seen), lambda client: client.chat(request))
    assert result.text == "Paris is the capital of France." and result.tool_calls == ()
    assert result.finish_reason == "stop" and result.backend == "claude-lc"
    assert result.model == "claude-sonnet-4-5-20250929"
    # The whole prompt (input + cache writes + cache reads), as the native client counts it.
    assert result.usage == Usage(prompt_tokens=21 + 5 + 1800, completion_tokens=9, cached_tokens=1800)

    (sent,) = seen  # no retries of the SDK's own
    assert sent.url.path == "/v1/messages"
    assert sent.headers["user-agent"].startswith("langchain-anthropic/")
    assert KEY in (
        sent.headers.get("x-api-key", ""),
        sent.headers.get("authorization", "").removeprefix("Bearer "),
    )
    body = json.loads(sent.content)
    assert body["model"] == MODEL and body["max_tokens"] == 50 and body["temperature"] == 0.0
    assert body["system"] == "You are brief." and body["stop_sequences"] == ["\n\nHuman:"]
    assert body["messages"] == [{"role": "user", "content": "What is the capital of France?"}]


def test_tools_go_out_in_anthropic_shape_and_tool_use_comes_back_as_tool_calls() -> None:
    seen: list[httpx.Request] = []
    earlier = ToolCall("toolu_earlier", "get_weather", '{"location": "Lyon"}')
    request = ChatRequest(
        messages=[
            ChatMessage("user", "Weather in Lyon?"),
            ChatMessage("assistant", "", tool_calls=[earlier]),
            ChatMessage("tool", "12 C, rain", tool_call_id="toolu_earlier"),
            ChatMessage("user", "And in Paris?"),
        ],
        tools=[WEATHER],
        tool_name="get_weather",
    )
    result = _served(_answer(TOOL_USE_MESSAGE, seen), lambda client: client.chat(request))
    assert result.finish_reason == "tool_calls" and result.text == "I'll check the weather in Paris."
    (call,) = result.tool_calls
    assert (call.id, call.name) == ("toolu_01A09q90qw90lq917835lq9", "get_weather")
    assert json.loads(call.arguments) == {"location": "Paris, France", "unit": "celsius"}
    assert result.usage == Usage(prompt_tokens=384, completion_tokens=58)

    body = json.loads(seen[0].content)
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather of a city",
            "input_schema": WEATHER["function"]["parameters"],  # type: ignore[index]
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assistant, answered = body["messages"][1:3]
    assert assistant["role"] == "assistant"
    assert {
        "type": "tool_use",
        "id": "toolu_earlier",
        "name": "get_weather",
        "input": {"location": "Lyon"},
    } in (assistant["content"])
    assert answered["role"] == "user"
    assert answered["content"][0]["type"] == "tool_result"
    assert answered["content"][0]["tool_use_id"] == "toolu_earlier"


def test_a_streamed_tool_call_arrives_in_pieces_with_the_api_usage() -> None:
    def reply(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["stream"] is True
        return httpx.Response(200, content=TOOL_STREAM, headers={"content-type": "text/event-stream"})

    async def use(client: LangChainClient) -> tuple[list[ChatChunk], Usage | None]:
        stream = client.stream(
            ChatRequest(messages=[ChatMessage("user", "Weather in Paris?")], tools=[WEATHER])
        )
        try:
            return [chunk async for chunk in stream], stream.usage
        finally:
            await stream.aclose()

    chunks, usage = _served(reply, use)
    *pieces, final = chunks
    assert "".join(c.delta for c in pieces) == "Checking."
    deltas: list[ToolCallDelta] = [d for c in pieces for d in c.tool_calls]
    assert {d.index for d in deltas} == {0}  # content block 1 is the answer's first call
    assert [(d.id, d.name) for d in deltas if d.id] == [("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather")]
    assert json.loads("".join(d.arguments for d in deltas)) == {"location": "Paris"}
    assert final.finish_reason == "tool_calls" and final.extra["usage_estimated"] is False
    assert final.usage == usage == Usage(prompt_tokens=472, completion_tokens=89)


def test_an_error_event_inside_a_stream_is_a_retryable_backend_error() -> None:
    overloaded = _error_body("overloaded_error", "Overloaded")
    body = _event(_TOOL_EVENTS[0]) + f"event: error\ndata: {json.dumps(overloaded)}\n\n".encode()

    def reply(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    async def use(client: LangChainClient) -> Usage | None:
        stream = client.stream(ChatRequest(messages=[ChatMessage("user", "hi")]))
        try:
            async for _ in stream:
                pass
        finally:
            await stream.aclose()
        return stream.usage

    with pytest.raises(BackendError) as info:
        _served(reply, use)
    assert info.value.details["retryable"] is True
    assert info.value.details["upstream_type"] == "overloaded_error"
    assert "mid-stream overloaded_error" in info.value.message


@pytest.mark.parametrize(
    ("status", "kind", "error", "retryable"),
    [
        (529, "overloaded_error", BackendError, True),
        (429, "rate_limit_error", BackendError, True),
        (401, "authentication_error", BackendError, False),
        (400, "invalid_request_error", InvalidInputError, None),
    ],
)
def test_error_statuses_become_the_gateways_errors(
    status: int, kind: str, error: type[Exception], retryable: bool | None
) -> None:
    calls: list[httpx.Request] = []

    def reply(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(status, json=_error_body(kind, f"said {status}"))

    async def use(client: LangChainClient) -> None:
        await client.chat(ChatRequest(messages=[ChatMessage("user", "hi")]))

    with pytest.raises(error) as info:
        _served(reply, use)
    assert len(calls) == 1  # no SDK retries: the router decides
    details = info.value.details  # type: ignore[attr-defined]
    assert details["upstream_status"] == status and details["upstream_type"] == kind
    assert details.get("retryable") is retryable and f"said {status}" in str(info.value)


def test_a_dead_port_is_a_retryable_backend_error() -> None:
    port = free_port()
    client = LangChainClient(
        "anthropic", model=MODEL, base_url=f"http://127.0.0.1:{port}", api_key=KEY, name="dead", timeout=5
    )
    with pytest.raises(BackendError) as info:
        asyncio.run(
            asyncio.wait_for(client.chat(ChatRequest(messages=[ChatMessage("user", "hi")])), timeout=30)
        )
    assert info.value.details == {"backend": "dead", "retryable": True}
    assert "unreachable" in info.value.message and str(port) not in info.value.message


def test_a_langchain_route_falls_back_from_a_dead_backend_to_a_live_one() -> None:
    seen: list[httpx.Request] = []

    async def main() -> Any:
        async with scripted_server(_answer(TEXT_MESSAGE, seen)) as root:
            anthropic = {
                "kind": "anthropic",
                "client": "langchain",
                "model": MODEL,
                "api_key": KEY,
                "max_retries": 0,
            }
            routes = TypeAdapter(RouteTable).validate_python(
                {
                    "claude": [
                        {
                            **anthropic,
                            "name": "dead",
                            "base_url": f"http://127.0.0.1:{free_port()}",
                            "timeout_s": 5,
                        },
                        {**anthropic, "name": "live", "base_url": root},
                    ]
                }
            )
            router = build_router(routes)  # the real factory: create_client
            try:
                request = ChatRequest(messages=[ChatMessage("user", "What is the capital of France?")])
                return await asyncio.wait_for(router.chat("claude", request), timeout=30)
            finally:
                await router.aclose()

    routed = asyncio.run(main())
    assert routed.result.text == "Paris is the capital of France." and routed.result.backend == "live"
    assert routed.outcome.backend == "live" and routed.outcome.fallbacks == 1
    assert [a.backend for a in routed.outcome.attempts] == ["dead", "live"]
    assert seen[0].headers["user-agent"].startswith("langchain-anthropic/")


def test_client_langchain_is_for_remote_backends_and_makes_a_langchain_client() -> None:
    with pytest.raises(ValidationError) as info:
        BackendSpec.model_validate({"name": "local", "kind": "llamacpp", "client": "langchain"})
    error = info.value.errors()[0]
    assert error["loc"] == ("client",) and "openai and anthropic backends, not llamacpp" in error["msg"]
    vllm = {"name": "vllm", "kind": "openai", "base_url": "http://vllm:8000/v1", "model": "qwen"}
    assert BackendSpec.model_validate(vllm).client == "native"
    client = create_client(BackendSpec.model_validate({**vllm, "client": "langchain"}))
    assert isinstance(client, LangChainClient) and isinstance(client, LLMClient)
    assert (client.kind, client.name, client.model) == ("openai", "vllm", "qwen")
    with pytest.raises(InvalidInputError, match="json_schema"):
        asyncio.run(
            client.chat(ChatRequest(messages=[ChatMessage("user", "hi")], json_schema={"type": "object"}))
        )
