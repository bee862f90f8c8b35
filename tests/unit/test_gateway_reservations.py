"""What a gateway call reserves against budgets before it runs: its worst case, bounded by the windows."""

from __future__ import annotations

from typing import Any

import pytest

from opsloop.llm.gateway import estimated_prompt_tokens, worst_case
from opsloop.llm.protocol import ChatMessage, ChatRequest
from opsloop.llm.routes import RouteConfig

QUESTION = ChatRequest([ChatMessage("user", "x" * 300)], max_tokens=100)  # 300 // 3 + 8 = 108 prompt tokens


def _route(*backends: dict[str, Any], queue_timeout_s: float = 0.0) -> RouteConfig:
    return RouteConfig.model_validate({"backends": list(backends), "queue_timeout_s": queue_timeout_s})


def _api(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "kind": "openai", "base_url": "http://x/v1", "model": "m", **fields}


def test_the_prompt_estimate_counts_messages_tools_and_schemas() -> None:
    assert estimated_prompt_tokens(QUESTION) == 108
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with_tools = ChatRequest(QUESTION.messages, tools=[tool], json_schema={"type": "object"})
    assert estimated_prompt_tokens(with_tools) > 108


def test_the_whole_max_tokens_is_reserved_at_the_backends_prices() -> None:
    route = _route(_api("a", input_per_mtok=2.0, output_per_mtok=10.0))
    tokens, usd = worst_case(route, QUESTION)
    assert tokens == 208
    assert usd == pytest.approx((108 * 2.0 + 100 * 10.0) / 1e6)


def test_with_fallbacks_the_dearest_backend_is_reserved() -> None:
    cheap = _api("cheap", cost_per_token=1e-6)
    dear = _api("dear", input_per_mtok=3.0, output_per_mtok=15.0)
    free = {"name": "local", "kind": "llamacpp"}
    tokens, usd = worst_case(_route(cheap, dear, free), QUESTION)
    assert tokens == 208
    assert usd == pytest.approx((108 * 3.0 + 100 * 15.0) / 1e6)


def test_a_reservation_holds_no_more_than_the_backends_window() -> None:
    huge = ChatRequest([ChatMessage("user", "x" * 30_000)], max_tokens=4096)  # 10_008 estimated
    llama = {"name": "local", "kind": "llamacpp", "n_ctx": 2048, "cost_per_token": 1e-6}
    tokens, usd = worst_case(_route(llama), huge)
    assert tokens == 2048
    assert usd == pytest.approx(2048e-6)
    # Filled with the dearer kind first: output here, so a short prompt, a long answer.
    dear_output = _api("o", context_tokens=1000, input_per_mtok=1.0, output_per_mtok=100.0)
    assert worst_case(_route(dear_output), huge)[1] == pytest.approx(1000 * 100.0 / 1e6)
    dear_input = _api("i", context_tokens=1000, input_per_mtok=100.0, output_per_mtok=1.0)
    assert worst_case(_route(dear_input), huge)[1] == pytest.approx(1000 * 100.0 / 1e6)


def test_gpu_hour_pricing_reserves_the_attempts_time() -> None:
    gpu = _api("gpu", gpu_hour_usd=3.6, timeout_s=10, max_retries=2, backoff_s=0.5, backoff_max_s=1.0)
    # 5 s queue + 3 attempts of 10 s + 2 backoffs of at most 1 s = 37 s at $0.001 a second
    assert worst_case(_route(gpu, queue_timeout_s=5), QUESTION)[1] == pytest.approx(0.037)


def test_free_routes_reserve_no_dollars() -> None:
    assert worst_case(_route({"name": "local", "kind": "llamacpp"}), QUESTION) == (208, 0.0)
