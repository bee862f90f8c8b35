"""Pure parts of the cost ledger and the gateway: prices, durations, OpenAI request shapes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from opsloop.durations import parse_duration
from opsloop.errors import InvalidInputError
from opsloop.llm.ledger import cost_usd
from opsloop.llm.protocol import ChatChunk, ToolCallDelta, Usage
from opsloop.llm.routes import BackendSpec
from serving.openai_schemas import ChatCompletionRequest, EmbeddingRequest, chunk_body, embedding_body


def _spec(**prices: float) -> BackendSpec:
    return BackendSpec(name="b", kind="openai", base_url="http://x/v1", model="m", **prices)


def test_api_prices_charge_cached_tokens_at_the_cached_price_only() -> None:
    spec = _spec(input_per_mtok=3.0, output_per_mtok=15.0, cached_per_mtok=0.3)
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=200_000, cached_tokens=400_000)
    # 600k uncached at $3/M, 400k cached at $0.30/M, 200k out at $15/M
    assert cost_usd(spec, usage, latency_ms=5_000) == pytest.approx(1.8 + 0.12 + 3.0)


def test_api_prices_without_a_cached_price_charge_cached_tokens_as_input() -> None:
    spec = _spec(input_per_mtok=2.0, output_per_mtok=8.0)
    usage = Usage(prompt_tokens=500_000, completion_tokens=0, cached_tokens=500_000)
    assert cost_usd(spec, usage, 1.0) == pytest.approx(1.0)
    # a backend reporting more cached than prompt tokens is not paid for the difference
    assert cost_usd(_spec(input_per_mtok=2.0, cached_per_mtok=1.0), Usage(100, 0, 300), 1.0) == pytest.approx(
        100 * 1.0 / 1e6
    )


def test_only_an_output_price_charges_output_only() -> None:
    assert cost_usd(_spec(output_per_mtok=10.0), Usage(1000, 1000), 1.0) == pytest.approx(0.01)


def test_self_hosted_per_token_and_gpu_hour_pricing() -> None:
    per_token = BackendSpec(name="l", kind="llamacpp", cost_per_token=2e-6)
    assert cost_usd(per_token, Usage(30, 10, cached_tokens=30), 999.0) == pytest.approx(80e-6)
    gpu = _spec(gpu_hour_usd=3.6)
    assert cost_usd(gpu, Usage(10, 10), latency_ms=1_000) == pytest.approx(0.001)  # one second of $3.60/h
    assert cost_usd(gpu, Usage(10, 10), latency_ms=-5) == 0.0


def test_the_first_pricing_set_wins_and_none_is_free() -> None:
    both = _spec(input_per_mtok=1.0, cost_per_token=1.0, gpu_hour_usd=100.0)
    assert cost_usd(both, Usage(1_000_000, 0), 3_600_000) == pytest.approx(1.0)
    assert cost_usd(_spec(), Usage(10**6, 10**6), 10**6) == 0.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("24h", timedelta(hours=24)),
        (" 7d ", timedelta(days=7)),
        ("2W", timedelta(weeks=2)),
        ("1 h", timedelta(hours=1)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "0h", "24", "h", "1.5h", "-1d", "1y", "yesterday", "1h30m"])
def test_bad_durations_name_the_field(text: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_duration(text, field="--since")
    assert caught.value.details["field"] == "--since"
    assert "--since must look like 30m, 24h or 7d" in caught.value.message


def _body(**fields: Any) -> dict[str, Any]:
    return {"model": "chat", "messages": [{"role": "user", "content": "hi"}], **fields}


def test_request_maps_to_the_protocol() -> None:
    body = ChatCompletionRequest.model_validate(
        _body(
            messages=[
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ],
            max_tokens=50,
            max_completion_tokens=20,
            stop="END",
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        )
    )
    request = body.to_request()
    assert [m.role for m in request.messages] == ["system", "user", "assistant", "tool"]
    assert request.messages[1].content == "a\nb"
    assert request.messages[2].tool_calls[0].name == "f" and request.messages[3].tool_call_id == "c1"
    assert request.max_tokens == 20 and list(request.stop) == ["END"]
    assert request.tools == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    ]
    assert (
        ChatCompletionRequest.model_validate(_body(tools=body.tools, tool_choice="none")).to_request().tools
        == []
    )


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"n": 2}, "n"),
        ({"frequency_penalty": 0.1}, "frequency_penalty"),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"tool_choice": "required"}, "tool_choice"),
    ],
)
def test_bad_requests_name_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate(_body(**fields))
    assert field in str(caught.value)


def test_chunks_are_openais_shape() -> None:
    first = chunk_body("id1", 7, "chat", ChatChunk(delta="Hel"), first=True, include_usage=True)
    assert first["object"] == "chat.completion.chunk" and first["usage"] is None
    assert first["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": "Hel"},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    last = chunk_body("id1", 7, "chat", ChatChunk(finish_reason="length"))
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "length"
    assert "usage" not in last
    usage = chunk_body("id1", 7, "chat", None, usage=Usage(5, 3, 2))
    assert usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 3,
        "total_tokens": 8,
        "prompt_tokens_details": {"cached_tokens": 2},
    }
    tool = chunk_body("id1", 7, "chat", ChatChunk(tool_calls=[ToolCallDelta(0, "c1", "f", '{"a"')]))
    assert tool["choices"][0]["delta"]["tool_calls"] == [
        {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a"'}}
    ]


def test_base64_embeddings_decode_to_the_vectors() -> None:
    import base64

    vectors = np.array([[0.5, -0.25, 1.0]], dtype=np.float32)
    body = embedding_body(vectors, "m", 3, "base64")
    decoded = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(decoded, vectors[0])
    assert embedding_body(vectors, "m", 3, "float")["data"][0]["embedding"] == [0.5, -0.25, 1.0]
    assert EmbeddingRequest(model="m", input="one").texts == ["one"]
    with pytest.raises(ValidationError):
        EmbeddingRequest.model_validate({"model": "m", "input": [[1, 2, 3]]})  # token arrays
