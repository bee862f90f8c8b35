"""SmolLM2 through llama.cpp in-process: chat, stream, bounded queue, early stop with usage."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest

from opsloop.errors import BackendError, InvalidInputError, OverloadedError
from opsloop.llm.llamacpp import LlamaCppClient
from opsloop.llm.protocol import ChatChunk, ChatMessage, ChatRequest, ChatResult, LLMClient


def _request(question: str, max_tokens: int = 16) -> ChatRequest:
    return ChatRequest(
        messages=[ChatMessage("system", "You are brief."), ChatMessage("user", question)],
        max_tokens=max_tokens,
        temperature=0.0,
        seed=7,
    )


@pytest.fixture(scope="module")
def client() -> Iterator[LlamaCppClient]:
    # One thread: the test machine is shared, and llama.cpp's spinning threads fight each other.
    llm = LlamaCppClient(threads=1, max_queue=16)
    llm.warm_up()
    yield llm
    asyncio.run(llm.aclose())


def test_chat_returns_text_usage_and_finish_reason(client: LlamaCppClient) -> None:
    assert isinstance(client, LLMClient)
    result = asyncio.run(client.chat(_request("What is the capital of France?")))
    assert result.text.strip()
    assert result.finish_reason in ("stop", "length")
    assert result.usage.prompt_tokens > 0 and 0 < result.usage.completion_tokens <= 16
    assert result.backend == "llamacpp" and result.model.startswith("SmolLM2-135M-Instruct")
    assert result.ttft_ms is not None and result.ttft_ms > 0


def test_stream_matches_chat_and_ends_with_usage(client: LlamaCppClient) -> None:
    request = _request("Write a story about a cat.", max_tokens=12)

    async def run() -> tuple[ChatResult, list[ChatChunk]]:
        whole = await client.chat(request)
        chunks = [chunk async for chunk in client.stream(request)]
        return whole, chunks

    whole, chunks = asyncio.run(run())
    *deltas, final = chunks
    text = "".join(chunk.delta for chunk in deltas)
    assert text and text == whole.text
    assert all(chunk.usage is None for chunk in deltas)
    assert final.delta == "" and final.finish_reason == whole.finish_reason == "length"
    # llama.cpp sends streams no usage; ours is counted and agrees with the non-streamed call.
    assert final.usage == whole.usage
    assert final.usage is not None and final.usage.completion_tokens == 12
    assert isinstance(final.extra["ttft_ms"], float)


def test_concurrent_chats_all_succeed(client: LlamaCppClient) -> None:
    async def run() -> list[ChatResult]:
        return await asyncio.gather(*(client.chat(_request(f"Say the number {i}.", 4)) for i in range(8)))

    results = asyncio.run(run())
    assert len(results) == 8
    assert all(r.text and r.usage.completion_tokens > 0 for r in results)
    assert client.waiting == 0


def test_a_full_queue_is_refused_with_a_retryable_backend_error(client: LlamaCppClient) -> None:
    small = LlamaCppClient(client.model_path, max_queue=1, threads=1)
    small._llm = client._load()  # share the loaded weights; only the queue differs

    async def run() -> list[ChatResult | BaseException]:
        calls = [small.chat(_request(f"Name a color {i}.", 2)) for i in range(6)]
        return await asyncio.gather(*calls, return_exceptions=True)

    try:
        outcomes = asyncio.run(run())
    finally:
        small._executor.shutdown()
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    done = [o for o in outcomes if isinstance(o, ChatResult)]
    # one runs, one waits, the other four are refused at once
    assert len(done) == 2 and len(refused) == 4
    assert all(isinstance(e, OverloadedError) and isinstance(e, BackendError) for e in refused)
    assert all(e.status == 503 and e.details["retryable"] for e in refused if isinstance(e, OverloadedError))
    assert small.waiting == 0


def test_early_stop_stops_generation_and_keeps_usage(client: LlamaCppClient) -> None:
    request = _request("Write a long story about a dragon.", max_tokens=24)

    async def run() -> tuple[list[ChatChunk], object]:
        stream = client.stream(request)
        seen: list[ChatChunk] = []
        try:
            async for chunk in stream:
                seen.append(chunk)
                if len(seen) == 2:
                    break  # the client went away
        finally:
            await stream.aclose()
        return seen, stream

    seen, stream = asyncio.run(run())
    assert len(seen) == 2 and all(chunk.delta for chunk in seen)
    assert stream.cancelled  # type: ignore[attr-defined]
    usage = stream.usage  # type: ignore[attr-defined]
    assert usage is not None and usage.prompt_tokens > 0
    # generation stopped between tokens, well before max_tokens
    assert 2 <= usage.completion_tokens < 24
    assert client.waiting == 0


def test_backends_satisfy_the_protocol() -> None:
    from opsloop.llm import LLMClient
    from opsloop.llm.openai_compat import OpenAICompatClient

    assert isinstance(LlamaCppClient(), LLMClient)
    assert isinstance(OpenAICompatClient("http://127.0.0.1:9", model="m"), LLMClient)


def test_a_frequency_penalty_reaches_the_model(client: LlamaCppClient) -> None:
    def request(penalty: float | None) -> ChatRequest:
        question = "List the numbers from one to ten, then again, then again."
        return replace(_request(question, max_tokens=24), frequency_penalty=penalty)

    plain = asyncio.run(client.chat(request(None)))
    penalised = asyncio.run(client.chat(request(2.0)))
    # At temperature 0 with one seed the answer is fixed; the penalty alone changes it.
    assert asyncio.run(client.chat(request(None))).text == plain.text
    assert penalised.text != plain.text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's own nice value is Linux's")
def test_generation_runs_below_the_servers_cpu_priority() -> None:
    """The worker runs 7 steps below this thread; llama.cpp's compute threads, started from it, inherit it."""
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    client = LlamaCppClient(nice=7)
    try:
        asyncio.run(client.chat(_request("Say hi.", max_tokens=2)))
        workers = list(client._executor._threads)
        assert workers
        assert {os.getpriority(os.PRIO_PROCESS, t.native_id or 0) for t in workers} == {min(own + 7, 19)}
    finally:
        asyncio.run(client.aclose())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_IDLE is Linux's")
def test_idle_generation_runs_under_sched_idle_and_so_do_llama_cpps_threads() -> None:
    """The default: the worker and every thread llama.cpp started from it generate only on idle CPU."""
    client = LlamaCppClient(nice="idle", threads=2)
    try:
        asyncio.run(client.chat(_request("Say hi.", max_tokens=2)))
        worker = next(iter(client._executor._threads)).native_id or 0
        assert os.sched_getscheduler(worker) == os.SCHED_IDLE
        # Only the worker was put under SCHED_IDLE: any other thread under it, it started.
        idle = [t for t in map(int, os.listdir("/proc/self/task")) if _policy(t) == os.SCHED_IDLE]
        assert len(idle) >= 2, idle  # the worker and llama.cpp's second compute thread
    finally:
        asyncio.run(client.aclose())


def _policy(thread: int) -> int | None:
    try:
        return os.sched_getscheduler(thread)
    except ProcessLookupError:  # ended since the listing
        return None


TICKET = {
    "type": "object",
    "properties": {
        "priority": {"type": "integer"},
        "team": {"type": "string", "pattern": "^(billing|infra|ml)$"},
        "summary": {"type": "string", "maxLength": 60},
    },
    "required": ["priority", "team", "summary"],
}


def test_a_json_schema_answer_is_json_a_strict_parser_reads(client: LlamaCppClient) -> None:
    # This question made llama-cpp-python's own grammar put a raw newline inside "summary".
    question = "Triage this ticket as JSON: 'The GPU nodes are down since 3am, training jobs fail.'"
    asked = ChatRequest([ChatMessage("user", question)], max_tokens=96, temperature=0.0, json_schema=TICKET)
    answer = json.loads(asyncio.run(client.chat(asked)).text)
    assert answer["team"] in {"billing", "infra", "ml"} and len(answer["summary"]) <= 60


def test_a_schema_the_grammar_cannot_take_is_refused_as_bad_input(client: LlamaCppClient) -> None:
    unanchored = {"type": "object", "properties": {"code": {"type": "string", "pattern": "[A-Z]+"}}}
    with pytest.raises(InvalidInputError, match=r"cannot compile the JSON schema.*start with"):
        asyncio.run(client.chat(replace(_request("Hi"), json_schema=unanchored)))
