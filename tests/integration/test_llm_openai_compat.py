"""OpenAICompatClient against a real OpenAI-compatible server (llama.cpp's) on loopback.

The server (``llama_server_url``, from tests/integration/llama_server.py) needs
llama-cpp-python's ``server`` extra; without it the server tests skip locally and fail in
CI. Error mapping is tested against a scripted server on loopback
(``tests/integration/scripted_server.py``).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from opsloop.errors import BackendError, InvalidInputError
from opsloop.llm.openai_compat import OpenAICompatClient
from opsloop.llm.protocol import ChatChunk, ChatMessage, ChatRequest, LLMClient, ToolCall
from tests.integration.llama_server import MODEL, free_port
from tests.integration.scripted_server import scripted_server


def _request(question: str, max_tokens: int = 12) -> ChatRequest:
    return ChatRequest(
        messages=[ChatMessage("user", question)], max_tokens=max_tokens, temperature=0.0, seed=7
    )


def test_chat_through_a_real_server(llama_server_url: str) -> None:
    async def run() -> None:
        client = OpenAICompatClient(llama_server_url, api_key="sk-test", model=MODEL, name="vllm")
        assert isinstance(client, LLMClient)
        try:
            result = await client.chat(_request("What is the capital of France?"))
        finally:
            await client.aclose()
        assert result.text.strip() and result.backend == "vllm"
        assert result.finish_reason in ("stop", "length")
        assert result.usage.prompt_tokens > 0 and 0 < result.usage.completion_tokens <= 12

    asyncio.run(run())


def test_stream_through_a_real_server(llama_server_url: str) -> None:
    async def run() -> tuple[list[ChatChunk], str]:
        client = OpenAICompatClient(llama_server_url, model=MODEL)
        try:
            whole = await client.chat(_request("Write a story about a cat."))
            return [
                chunk async for chunk in client.stream(_request("Write a story about a cat."))
            ], whole.text
        finally:
            await client.aclose()

    chunks, whole = asyncio.run(run())
    *deltas, final = chunks
    text = "".join(chunk.delta for chunk in deltas)
    assert text and text == whole
    assert final.finish_reason == "length" and final.usage is not None
    assert final.usage.completion_tokens > 0 and final.usage.prompt_tokens > 0


def test_early_stop_keeps_counted_usage(llama_server_url: str) -> None:
    async def run() -> None:
        client = OpenAICompatClient(llama_server_url, model=MODEL)
        stream = client.stream(_request("Write a long story about a dragon.", max_tokens=24))
        try:
            seen = 0
            async for _ in stream:
                seen += 1
                if seen == 2:
                    break
        finally:
            await stream.aclose()
            await client.aclose()
        assert stream.usage is not None and stream.usage.completion_tokens == 2
        assert stream.usage_estimated

    asyncio.run(run())


def test_dead_backend_is_a_retryable_backend_error_quickly() -> None:
    client = OpenAICompatClient(f"http://127.0.0.1:{free_port()}/v1", model=MODEL, timeout=30.0)
    with pytest.raises(BackendError, match="unreachable") as info:
        asyncio.run(client.chat(_request("hi")))
    assert info.value.details["retryable"] is True
    assert "127.0.0.1" not in str(info.value.to_dict())  # clients see the backend's name, not where it is

    async def stream() -> None:
        async for _ in client.stream(_request("hi")):
            pass

    started = time.monotonic()
    with pytest.raises(BackendError, match="unreachable"):
        asyncio.run(stream())
    assert time.monotonic() - started < 3.0  # refused at once: no SDK retries, no waiting for the timeout
    asyncio.run(client.aclose())  # the pool of the second loop; the first went with its loop


@pytest.mark.parametrize(
    ("status", "error", "retryable"),
    [
        (429, BackendError, True),
        (500, BackendError, True),
        (503, BackendError, True),
        (401, BackendError, False),
    ],
)
def test_status_errors_map_to_backend_errors(status: int, error: type[Exception], retryable: bool) -> None:
    seen: list[httpx.Request] = []

    def reply(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json={"error": {"message": f"upstream said {status}"}})

    async def run() -> None:
        async with scripted_server(reply) as root:
            client = OpenAICompatClient(f"{root}/v1", api_key="sk-secret", model=MODEL)
            with pytest.raises(error) as info:
                await client.chat(_request("hi"))
            await client.aclose()
        assert isinstance(info.value, BackendError)
        assert info.value.details == {
            "backend": "openai",
            "upstream_status": status,
            "retryable": retryable,
        }
        assert f"upstream said {status}" in info.value.message
        assert "sk-secret" not in info.value.message and "sk-secret" not in repr(client)

    asyncio.run(run())
    assert len(seen) == 1  # no hidden SDK retries: the router decides
    assert seen[0].headers["authorization"] == "Bearer sk-secret"


def test_bad_request_maps_to_invalid_input() -> None:
    def reply(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"message": "max_tokens is too large"}})

    async def run() -> None:
        async with scripted_server(reply) as root:
            client = OpenAICompatClient(f"{root}/v1", model=MODEL)
            with pytest.raises(InvalidInputError, match="max_tokens is too large") as info:
                await client.chat(_request("hi"))
            with pytest.raises(InvalidInputError, match="max_tokens is too large"):
                async for _ in client.stream(_request("hi")):
                    pass
            await client.aclose()
        assert info.value.details["upstream_status"] == 400
        assert isinstance(info.value.__cause__, Exception)

    asyncio.run(run())


def test_cached_tokens_and_usage_from_the_server() -> None:
    body = {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 1,
            "total_tokens": 11,
            "prompt_tokens_details": {"cached_tokens": 8},
        },
    }

    async def run() -> None:
        async with scripted_server(lambda request: httpx.Response(200, json=body)) as root:
            client = OpenAICompatClient(f"{root}/v1", model=MODEL)
            result = await client.chat(_request("hi"))
            await client.aclose()
        assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.cached_tokens) == (
            10,
            1,
            8,
        )

    asyncio.run(run())


@pytest.mark.parametrize(
    ("choice", "name", "expected"),
    [
        ("auto", None, None),
        ("required", None, "required"),
        ("auto", "weather", {"type": "function", "function": {"name": "weather"}}),
    ],
)
def test_tool_choice_is_sent_as_openai_takes_it(choice: str, name: str | None, expected: object) -> None:
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    asked = ChatRequest([ChatMessage("user", "hi")], tools=[tool], tool_choice=choice, tool_name=name)  # type: ignore[arg-type]
    assert _sent(asked)[0].get("tool_choice") == expected


def _sent(*requests: ChatRequest, **options: Any) -> list[dict[str, Any]]:
    """The bodies a client built with ``options`` sends for ``requests``, each answered "ok"."""
    sent: list[dict[str, Any]] = []
    body = {
        "id": "x", "object": "chat.completion", "created": 0, "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    }  # fmt: skip

    def reply(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json=body)

    async def run() -> None:
        async with scripted_server(reply) as root:
            client = OpenAICompatClient(f"{root}/v1", model=MODEL, **options)
            for request in requests:
                await client.chat(request)
            await client.aclose()

    asyncio.run(run())
    return sent


def test_tools_pass_through_both_ways() -> None:
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    call = ToolCall("call_1", "weather", '{"city": "Oslo"}')
    sent: list[dict[str, object]] = []
    body = {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": [call.to_openai()]},
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    pieces = [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": ""}},
        {"index": 0, "function": {"arguments": '{"city": "Oslo"}'}},
    ]
    events = [
        {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
         "choices": [{"index": 0, "delta": {"tool_calls": [piece]}, "finish_reason": None}]}
        for piece in pieces
    ]  # fmt: skip
    stream = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"

    def reply(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        if sent[-1].get("stream"):
            return httpx.Response(200, text=stream, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=body)

    conversation = [
        ChatMessage("user", "Weather in Oslo?"),
        ChatMessage("assistant", tool_calls=[call]),
        ChatMessage("tool", '{"celsius": 3}', tool_call_id="call_1"),
    ]

    async def run() -> None:
        async with scripted_server(reply) as root:
            client = OpenAICompatClient(f"{root}/v1", model=MODEL)
            result = await client.chat(ChatRequest(conversation, tools=[tool]))
            assert result.tool_calls == (call,) and result.finish_reason == "tool_calls"
            chunks = [chunk async for chunk in client.stream(ChatRequest(conversation, tools=[tool]))]
            await client.aclose()
        deltas = [d for chunk in chunks for d in chunk.tool_calls]
        assert (deltas[0].id, deltas[0].name) == ("call_1", "weather")
        assert "".join(d.arguments for d in deltas) == call.arguments

    asyncio.run(run())
    assert sent[0]["tools"] == [tool]
    assistant, result_message = sent[0]["messages"][1:]  # type: ignore[index]
    assert assistant == {"role": "assistant", "content": None, "tool_calls": [call.to_openai()]}
    assert result_message == {"role": "tool", "content": '{"celsius": 3}', "tool_call_id": "call_1"}


OBJECT = {"type": "object"}


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (
            "json_schema",
            {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}},
        ),
        ("json_object", {"type": "json_object", "schema": OBJECT}),
    ],
)
def test_a_json_schema_is_sent_as_the_server_expects(mode: str, expected: dict[str, object]) -> None:
    hi = [ChatMessage("user", "hi")]
    named = ChatRequest(hi, json_schema=OBJECT, json_schema_name="city", json_schema_strict=True)
    sent = _sent(ChatRequest(hi, json_schema=OBJECT), ChatRequest(hi), named, structured_output=mode)
    assert sent[0]["response_format"] == expected and "response_format" not in sent[1]
    if mode == "json_schema":  # the client's name and strict pass through to the server
        spec = {"name": "city", "schema": OBJECT, "strict": True}
        assert sent[2]["response_format"] == {"type": "json_schema", "json_schema": spec}


def test_a_frequency_penalty_is_sent_only_when_set() -> None:
    hi = [ChatMessage("user", "hi")]
    sent = _sent(ChatRequest(hi, frequency_penalty=0.5), ChatRequest(hi))
    assert sent[0]["frequency_penalty"] == 0.5 and "frequency_penalty" not in sent[1]
