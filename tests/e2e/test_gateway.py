"""The LLM gateway end to end: the official ``openai`` SDK against a real ``opsloop serve``.

The server runs SmolLM2 in-process (llama.cpp) behind routes from a YAML config file, one of
which starts with an OpenAI-compatible backend on a dead loopback port. Completions are kept
to a few tokens: the model runs at 10-20 tokens/s on two shared cores. Ledger rows are read
back by request id (the ``X-Request-ID`` of each response) after ``GET /admin/costs``, which
flushes the server's ledger writer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import yaml
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from opsloop.db import Database
from opsloop.llm.ledger import Ledger, LLMCall
from rag.chunking import HFTokenizer
from tests.e2e.server import Server, cli, free_port

PRICE = 1e-6  # USD per token of the local backend, so costs are visible
LOCAL = {"name": "local", "kind": "llamacpp", "max_concurrency": 1, "cost_per_token": PRICE, "threads": 2}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _config(path: Path) -> Path:
    dead = {
        "name": "dead",
        "kind": "openai",
        "base_url": f"http://127.0.0.1:{free_port()}/v1",
        "model": "smollm2",
        "max_retries": 0,
        "timeout_s": 5,
    }
    routes = {
        "smollm2": {"backends": [LOCAL], "queue_timeout_s": 60},
        "resilient": {"backends": [dead, LOCAL], "queue_timeout_s": 60},
        "abandoned": {"backends": [LOCAL], "queue_timeout_s": 60},
    }
    path.write_text(yaml.safe_dump({"llm_routes": routes, "llm_default_max_tokens": 16}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("gateway")
    env = {
        "OPSLOOP_CONFIG": str(_config(root / "opsloop.yaml")),
        "OPSLOOP_BOOTSTRAP_DEMO": "false",
        "OPSLOOP_DRIFT_CHECK_SECONDS": "0",
    }
    server = Server(root / "home", env=env)
    try:
        yield server
    finally:
        assert server.stop() == 0, "".join(server.output)


@pytest.fixture(scope="module")
def admin_key(server: Server) -> str:
    return (server.home / "admin.key").read_text().strip()


@pytest.fixture(scope="module")
def client(server: Server, admin_key: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=admin_key, max_retries=0, timeout=120) as sdk:
        yield sdk


def _calls(server: Server, admin_key: str) -> dict[str, LLMCall]:
    """Every ledger row by request id, after the server flushed its writer."""
    flushed = server.http.get("/admin/costs", headers={"Authorization": f"Bearer {admin_key}"})
    assert flushed.status_code == 200, flushed.text
    db = Database(f"sqlite:///{server.home / 'opsloop.db'}").start()
    try:
        return {call.request_id: call for call in Ledger(db).calls()}
    finally:
        db.close()


def _call(server: Server, admin_key: str, request_id: str, seconds: float = 10) -> LLMCall:
    deadline = time.monotonic() + seconds
    while True:
        found = _calls(server, admin_key).get(request_id)
        if found is not None or time.monotonic() > deadline:
            assert found is not None, f"no ledger row for request {request_id}"
            return found
        time.sleep(0.2)  # a disconnected stream is settled just after the client left


def test_models_lists_the_routes(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["smollm2", "resilient", "abandoned"]


def test_chat_completion_through_the_sdk(server: Server, admin_key: str, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="smollm2", messages=QUESTION, max_tokens=8, temperature=0, seed=1
    )
    completion = raw.parse()
    assert raw.headers["x-opsloop-backend"] == "local"
    assert raw.headers["x-opsloop-fallbacks"] == "0"
    assert completion.object == "chat.completion" and completion.model == "smollm2"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in {"stop", "length"}
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    call = _call(server, admin_key, raw.headers["x-request-id"])
    assert (call.route, call.backend, call.outcome, call.streamed) == ("smollm2", "local", "ok", False)
    assert call.model.startswith("SmolLM2")
    assert (call.prompt_tokens, call.completion_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    assert call.cost_usd == pytest.approx(usage.total_tokens * PRICE)
    assert call.tenant == "default" and call.key_id == admin_key.split("_")[1]
    assert call.latency_ms > 0 and call.ttft_ms is not None and call.ttft_ms <= call.latency_ms


def test_streamed_chat_completion_through_the_sdk(
    server: Server, admin_key: str, client: openai.OpenAI
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="smollm2",
        messages=QUESTION,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers["x-opsloop-backend"] == "local"
    chunks = list(raw.parse())
    assert all(c.object == "chat.completion.chunk" and c.model == "smollm2" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.prompt_tokens > 0 and 0 < last.usage.completion_tokens <= 8

    call = _call(server, admin_key, raw.headers["x-request-id"])
    assert (call.route, call.backend, call.outcome, call.streamed) == ("smollm2", "local", "ok", True)
    assert call.completion_tokens == last.usage.completion_tokens
    assert call.ttft_ms is not None and 0 < call.ttft_ms <= call.latency_ms
    assert call.cost_usd == pytest.approx(last.usage.total_tokens * PRICE)


def test_stream_without_usage_option_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=4, stream=True)
    )
    assert chunks[-1].choices[0].finish_reason is not None
    assert all(c.usage is None for c in chunks)


def test_unknown_model_is_the_sdks_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-17", messages=QUESTION, max_tokens=4)
    assert "smollm2" in str(caught.value)  # the message lists the models served


def test_bad_input_is_422_naming_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError, match="temperature"):
        client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=7)
    with pytest.raises(openai.UnprocessableEntityError, match="frequency_penalty"):
        client.chat.completions.create(model="smollm2", messages=QUESTION, frequency_penalty=0.5)


def test_dead_primary_falls_back_and_says_so(server: Server, admin_key: str, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="resilient", messages=QUESTION, max_tokens=4)
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-opsloop-backend"] == "local"
    assert raw.headers["x-opsloop-fallbacks"] == "1"
    assert _call(server, admin_key, raw.headers["x-request-id"]).backend == "local"
    assert (
        server.metric('opsloop_llm_fallbacks_total{from_backend="dead",route="resilient",to_backend="local"}')
        >= 1
    )
    assert server.metric('opsloop_llm_backend_errors_total{backend="dead",reason="backend_error"}') >= 1


def test_abandoned_stream_is_charged_for_what_was_generated(
    server: Server, admin_key: str, client: openai.OpenAI
) -> None:
    max_tokens = 200
    raw = client.chat.completions.with_raw_response.create(
        model="abandoned",
        messages=[{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}],
        max_tokens=max_tokens,
        stream=True,
    )
    stream = raw.parse()
    chunks = iter(stream)
    received = [next(chunks), next(chunks)]
    assert received[0].choices[0].delta.content is not None
    stream.close()  # the client goes away mid-stream

    call = _call(server, admin_key, raw.headers["x-request-id"])
    assert (call.route, call.outcome, call.streamed) == ("abandoned", "disconnected", True)
    assert 2 <= call.completion_tokens < max_tokens
    assert call.prompt_tokens > 0
    assert call.cost_usd == pytest.approx((call.prompt_tokens + call.completion_tokens) * PRICE)
    assert server.metric('opsloop_llm_requests_total{outcome="disconnected",route="abandoned"}') == 1


def test_embeddings_are_minilm_vectors(server: Server, admin_key: str, client: openai.OpenAI) -> None:
    texts = ["How do I rotate an API key?", "Steps to rotate API keys", "Bananas are yellow."]
    raw = client.embeddings.with_raw_response.create(model="all-MiniLM-L6-v2", input=texts)  # base64
    response = raw.parse()
    vectors = np.array([item.embedding for item in response.data])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated + 0.3
    tokenizer = HFTokenizer()
    assert response.usage.prompt_tokens == sum(tokenizer.count(t) for t in texts)
    call = _call(server, admin_key, raw.headers["x-request-id"])  # metered like a chat call
    assert (call.route, call.model, call.outcome) == ("all-MiniLM-L6-v2", "all-MiniLM-L6-v2", "ok")
    assert (call.prompt_tokens, call.completion_tokens) == (response.usage.prompt_tokens, 0)

    single = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts[0], encoding_format="float")
    assert len(single.data) == 1 and np.allclose(single.data[0].embedding, vectors[0], atol=1e-5)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="x")


def _key(server: Server, tenant: str, role: str) -> str:
    done = cli(server.home, "keys", "create", "--tenant", tenant, "--role", role)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_costs_are_reported_per_tenant(server: Server, admin_key: str) -> None:
    user, operator = _key(server, "acme", "user"), _key(server, "acme", "operator")
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=user, max_retries=0, timeout=120) as acme:
        acme.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=4)

    def report(key: str, **params: str) -> Any:
        return server.http.get("/admin/costs", params=params, headers={"Authorization": f"Bearer {key}"})

    mine = report(operator, by="key", since="1h")
    assert mine.status_code == 200, mine.text
    assert [row["group"] for row in mine.json()["rows"]] == [user.split("_")[1]]
    assert report(operator, by="tenant", tenant="default").status_code == 403
    assert report(user, by="tenant").status_code == 403  # the user role reads no reports
    assert report(admin_key, by="tenant", since="soon").status_code == 422

    everyone = report(admin_key, by="tenant", since="1h").json()["rows"]
    assert {row["group"] for row in everyone} == {"default", "acme"}
    assert all(row["cost_usd"] > 0 for row in everyone)


def test_costs_report_cli(server: Server, admin_key: str) -> None:
    _calls(server, admin_key)  # every call so far is written
    table = cli(server.home, "costs", "report", "--by", "route", "--since", "1h")
    assert table.returncode == 0, table.stderr
    for route in ("smollm2", "resilient", "abandoned", "gpt-17"):
        assert route in table.stdout

    done = cli(server.home, "costs", "report", "--by", "route", "--since", "1h", "--format", "json")
    assert done.returncode == 0, done.stderr
    rows = {row["group"]: row for row in json.loads(done.stdout)["rows"]}
    assert rows["abandoned"]["disconnected"] == 1
    assert rows["gpt-17"]["errors"] == 1 and rows["gpt-17"]["cost_usd"] == 0
    assert rows["smollm2"]["calls"] >= 3 and rows["smollm2"]["completion_tokens"] > 0
    assert rows["smollm2"]["p50_latency_ms"] <= rows["smollm2"]["p95_latency_ms"]

    acme = cli(server.home, "costs", "report", "--by", "tenant", "--tenant", "acme", "--format", "json")
    assert [row["group"] for row in json.loads(acme.stdout)["rows"]] == ["acme"]
    bad = cli(server.home, "costs", "report", "--since", "yesterday")
    assert bad.returncode == 1 and "--since must look like 30m, 24h or 7d" in bad.stderr


class Capital(BaseModel):
    """What the structured-output tests ask the model for; short strings keep the answer short."""

    city: str = Field(max_length=20)
    country: str = Field(max_length=20)


CAPITAL_SCHEMA = Capital.model_json_schema()
CAPITAL_QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in JSON."}]


def test_the_sdks_parse_helper_gets_an_instance_of_its_model(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model="smollm2", messages=CAPITAL_QUESTION, response_format=Capital, max_tokens=64, temperature=0
    )
    message = completion.choices[0].message
    assert isinstance(message.parsed, Capital) and message.parsed.city and message.refusal is None


def test_json_object_answers_are_json_objects_streamed_or_not(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model="smollm2",
        messages=CAPITAL_QUESTION,
        response_format={"type": "json_object"},
        max_tokens=64,
        temperature=0,
    )
    assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)
    chunks = client.chat.completions.create(
        model="smollm2",
        messages=CAPITAL_QUESTION,
        response_format={"type": "json_schema", "json_schema": {"name": "capital", "schema": CAPITAL_SCHEMA}},
        max_tokens=64,
        temperature=0,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert Capital.model_validate_json(text).city


def test_langchain_with_structured_output_gets_its_model(server: Server, admin_key: str) -> None:
    chat = ChatOpenAI(
        model="smollm2",
        base_url=f"{server.url}/v1",
        api_key=admin_key,
        max_tokens=64,
        temperature=0,
        max_retries=0,
    )
    capital = chat.with_structured_output(Capital, method="json_schema").invoke(
        CAPITAL_QUESTION[0]["content"]
    )
    assert isinstance(capital, Capital) and capital.city


def test_an_answer_cut_at_max_tokens_fails_instead_of_returning_broken_json(
    server: Server, admin_key: str, client: openai.OpenAI
) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "capital", "schema": CAPITAL_SCHEMA}}
    with pytest.raises(
        openai.APIStatusError, match="stopped at max_tokens before the JSON answer ended"
    ) as raised:
        client.chat.completions.create(
            model="smollm2", messages=CAPITAL_QUESTION, response_format=schema, max_tokens=3
        )
    assert raised.value.status_code == 502
    call = _call(server, admin_key, raised.value.response.headers["x-request-id"])
    assert call.completion_tokens == 3  # the tokens were generated and are charged
    stream = client.chat.completions.create(
        model="smollm2", messages=CAPITAL_QUESTION, response_format=schema, max_tokens=3, stream=True
    )
    with pytest.raises(openai.APIError, match="stopped at max_tokens"):
        list(stream)
    with pytest.raises(openai.UnprocessableEntityError, match="must describe an object"):
        client.chat.completions.create(
            model="smollm2",
            messages=CAPITAL_QUESTION,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "array"}},
            },
        )


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add_numbers",
        "description": "Add two numbers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        },
    },
}
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_the_embedded_model_calls_a_tool_and_reads_its_result(client: openai.OpenAI) -> None:
    asked = client.chat.completions.create(
        model="smollm2",
        messages=WEATHER_QUESTION,
        tools=[WEATHER, ADD],
        tool_choice="required",
        max_tokens=48,
    )
    choice = asked.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name in {"get_weather", "add_numbers"}
    assert isinstance(json.loads(call.function.arguments), dict) and call.id.startswith("call_")

    result = {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 18, "sky": "sunny"}'}
    answered = client.chat.completions.create(
        model="smollm2",
        messages=[*WEATHER_QUESTION, choice.message.model_dump(exclude_none=True), result],
        tools=[WEATHER, ADD],
        tool_choice="none",
        max_tokens=24,
    )
    assert answered.choices[0].message.content and not answered.choices[0].message.tool_calls


def test_a_named_tool_choice_is_the_function_called_streamed_or_not(client: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    asked = client.chat.completions.create(
        model="smollm2", messages=WEATHER_QUESTION, tools=[WEATHER, ADD], tool_choice=named, max_tokens=48
    )
    call = asked.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
    chunks = list(
        client.chat.completions.create(
            model="smollm2",
            messages=WEATHER_QUESTION,
            tools=[WEATHER, ADD],
            tool_choice=named,
            max_tokens=48,
            stream=True,
        )
    )
    pieces = [p for c in chunks if c.choices for p in c.choices[0].delta.tool_calls or ()]
    assert pieces[0].function.name == "get_weather" and pieces[0].id
    assert "city" in json.loads("".join(p.function.arguments or "" for p in pieces))
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_langchain_bind_tools_gets_tool_calls(server: Server, admin_key: str) -> None:
    chat = ChatOpenAI(
        model="smollm2",
        base_url=f"{server.url}/v1",
        api_key=admin_key,
        max_tokens=48,
        temperature=0,
        max_retries=0,
    )
    reply = chat.bind_tools([WEATHER, ADD], tool_choice="get_weather").invoke(WEATHER_QUESTION[0]["content"])
    assert reply.tool_calls and reply.tool_calls[0]["name"] == "get_weather"
    assert isinstance(reply.tool_calls[0]["args"].get("city"), str)


def test_a_tool_choice_that_cannot_be_honoured_is_422(client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError, match="not among the tools"):
        client.chat.completions.create(
            model="smollm2",
            messages=WEATHER_QUESTION,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "launch_rockets"}},
        )
    with pytest.raises(openai.UnprocessableEntityError, match="needs tools"):
        client.chat.completions.create(model="smollm2", messages=WEATHER_QUESTION, tool_choice="required")
