"""The ragas judge adapter: JSON extraction, retries, timeouts and per-sample tallies.

The judge here is a scripted ``LLMClient`` (the seam the adapter is written against); the real
judge over a loopback llama.cpp server is exercised in tests/integration/test_eval_runs.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from pydantic import BaseModel

from evals.calls import JudgeError, JudgeTally, current_tally
from evals.judge import JudgeLLM, parse_json
from evals.scoring import select_metrics
from opsloop.errors import BackendError, InvalidInputError, OpsloopError
from opsloop.llm.protocol import ChatRequest, ChatResult, MeteredStream, Usage


class Verdict(BaseModel):
    statements: list[str]


class Scripted:
    """Answers each chat with the next scripted text (or raises it, or sleeps for a float)."""

    name = "scripted"

    def __init__(self, script: Sequence[str | OpsloopError | float]) -> None:
        self.script = list(script)
        self.requests: list[ChatRequest] = []

    async def chat(self, request: ChatRequest) -> ChatResult:
        self.requests.append(request)
        step = self.script.pop(0)
        if isinstance(step, OpsloopError):
            raise step
        if isinstance(step, float):
            await asyncio.sleep(step)
            step = "{}"
        return ChatResult(step, "stop", Usage(10, 5), "m", "backend-a")

    def stream(self, request: ChatRequest) -> MeteredStream:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


def test_parse_json_finds_the_object_in_chatter_and_fences() -> None:
    assert parse_json('Sure! {"statements": ["a"]} hope that helps', Verdict).statements == ["a"]
    assert parse_json('```json\n{"statements": ["b"]}\n```', Verdict).statements == ["b"]
    assert parse_json('{"x": 1} then {"statements": []}', Verdict).statements == []
    with pytest.raises(ValueError, match="does not match Verdict"):
        parse_json('{"statements": "no list"}', Verdict)
    with pytest.raises(ValueError, match="no JSON object"):
        parse_json("I cannot do that", Verdict)


def _run(judge: JudgeLLM) -> tuple[Verdict | JudgeError, JudgeTally]:
    tally = JudgeTally()

    async def main() -> Verdict:
        current_tally.set(tally)
        return await judge.agenerate("prompt", Verdict)

    try:
        return asyncio.run(main()), tally
    except JudgeError as exc:
        return exc, tally


def test_unparsable_output_is_retried_with_temperature_then_parsed() -> None:
    client = Scripted(["no json here", '{"statements": ["ok"]}'])
    judge = JudgeLLM(client, retries=2, cost=lambda backend, usage, ms: 0.001 * usage.total_tokens)
    result, tally = _run(judge)
    assert isinstance(result, Verdict) and result.statements == ["ok"]
    assert [r.temperature for r in client.requests] == [0.0, 0.4]
    assert (tally.calls, tally.retries, tally.prompt_tokens, tally.completion_tokens) == (2, 1, 20, 10)
    assert tally.cost_usd == pytest.approx(0.03)


def test_failures_after_the_retries_raise_with_the_last_reason() -> None:
    result, tally = _run(JudgeLLM(Scripted(["x", "y", "z"]), retries=2))
    assert isinstance(result, JudgeError) and result.reason == "unparsable" and result.attempts == 3
    assert tally.calls == 3
    down = BackendError("down", retryable=True)
    result, _ = _run(JudgeLLM(Scripted([down, down]), retries=1))
    assert isinstance(result, JudgeError) and result.reason == "backend_error"
    result, tally = _run(JudgeLLM(Scripted([0.5, 0.5]), retries=1, timeout_s=0.05))
    assert isinstance(result, JudgeError) and result.reason == "timeout"
    assert "0.05 s" in str(result)


def test_a_refused_request_is_not_retried() -> None:
    client = Scripted([InvalidInputError("prompt too long for the context"), '{"statements": []}'])
    result, tally = _run(JudgeLLM(client, retries=3))
    assert isinstance(result, JudgeError) and result.reason == "rejected"
    assert tally.calls == 1


def test_metric_selection() -> None:
    assert "faithfulness" not in select_metrics(generate=True, judge=False)
    assert select_metrics(generate=False, judge=True) == (
        "hit_rate",
        "mrr",
        "non_llm_context_precision_with_reference",
        "non_llm_context_recall",
    )
    assert select_metrics(generate=True, judge=True, only=["mrr", "latency_ms", "faithfulness"]) == (
        "mrr",
        "faithfulness",
    )
    with pytest.raises(InvalidInputError, match="needs a judge route"):
        select_metrics(generate=True, judge=False, only=["faithfulness"])
    with pytest.raises(InvalidInputError, match="needs generated answers"):
        select_metrics(generate=False, judge=False, only=["rouge_score"])
    with pytest.raises(InvalidInputError, match="unknown metric"):
        select_metrics(generate=True, judge=False, only=["accuracy"])
