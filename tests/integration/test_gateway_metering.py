"""The gateway's metering API on a real store: what other services call, with fake models.

:meth:`Gateway.meter_embedding` is how a service that embeds for a caller itself (RAG's
retrieval) is admitted by the caller's budgets and recorded; the embedding price and the
default completion limit are gateway settings not reachable over HTTP with their defaults.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from opsloop.audit import AuditLog
from opsloop.auth import Principal, Role
from opsloop.budgets import BudgetEnforcer, BudgetStore, InProcessCounters
from opsloop.db import Database
from opsloop.errors import BackendError, RateLimitedError
from opsloop.llm.gateway import EMBEDDING_MODEL, Gateway, TextEmbedder, TokenCounter
from opsloop.llm.ledger import Ledger, LLMCall
from opsloop.llm.protocol import ChatMessage, ChatRequest, ChatResult, LLMClient, MeteredStream, Usage
from opsloop.llm.routes import BackendSpec, RouteConfig
from opsloop.telemetry import Metrics

CALLER = Principal("k1", "acme", Role.USER)
PRICE = 50.0  # USD per million embedding tokens


class Backend:
    """A chat backend that answers at once and keeps the requests it got."""

    def __init__(self, spec: BackendSpec) -> None:
        self.name = spec.name
        self.requests: list[ChatRequest] = []

    async def chat(self, request: ChatRequest) -> ChatResult:
        self.requests.append(request)
        return ChatResult("hi", "stop", Usage(3, 1), "m", self.name)

    def stream(self, request: ChatRequest) -> MeteredStream:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


class Embedder:
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.ones((len(texts), 4), dtype=np.float32) / 2

    def count(self, text: str) -> int:
        return len(text.split()) + 2


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[Gateway, BudgetStore, list[Backend]]]:
    db = Database(f"sqlite:///{tmp_path / 'store.db'}").start()
    db.upgrade()
    budgets = BudgetStore(db, AuditLog(db), cache_seconds=0)
    enforcer = BudgetEnforcer(budgets, InProcessCounters()).start()
    made: list[Backend] = []

    def factory(spec: BackendSpec) -> LLMClient:
        made.append(Backend(spec))
        return made[-1]

    def embedding() -> tuple[TextEmbedder, TokenCounter]:
        return Embedder(), Embedder()

    routes = {"tiny": RouteConfig.model_validate([{"name": "local", "kind": "llamacpp", "n_ctx": 64}])}
    gateway = Gateway(
        routes,
        Ledger(db),
        Metrics().llm,
        enforcer,
        default_max_tokens=512,
        factory=factory,
        embedding=embedding,
        embedding_per_mtok=PRICE,
    )
    yield gateway, budgets, made
    asyncio.run(gateway.aclose())
    db.close()


def _rows(gateway: Gateway) -> list[LLMCall]:
    return list(reversed(gateway.ledger.calls(tenant="acme")))


def test_a_service_meters_an_embedding_it_did_itself(
    parts: tuple[Gateway, BudgetStore, list[Backend]],
) -> None:
    gateway, budgets, _ = parts
    budget = budgets.set("acme", "daily_tokens", 1000, actor="t")
    with gateway.meter_embedding(CALLER, ["what is drift?"], request_id="q1") as meter:
        assert meter.estimated_tokens == 14 // 3 + 2  # reserved before the work
        meter.prompt_tokens = 7
    (row,) = _rows(gateway)
    assert (row.request_id, row.route, row.model, row.backend) == (
        "q1",
        EMBEDDING_MODEL,
        EMBEDDING_MODEL,
        EMBEDDING_MODEL,
    )
    assert (row.prompt_tokens, row.completion_tokens, row.outcome) == (7, 0, "ok")
    assert row.cost_usd == pytest.approx(7 * PRICE / 1e6)
    assert gateway.enforcer.usage([budget])[0].used == 7


def test_a_failed_or_refused_embedding_is_recorded_and_gives_its_reservation_back(
    parts: tuple[Gateway, BudgetStore, list[Backend]],
) -> None:
    gateway, budgets, _ = parts
    budget = budgets.set("acme", "daily_tokens", 1000, actor="t")
    with pytest.raises(BackendError), gateway.meter_embedding(CALLER, ["q"], request_id="q1"):
        raise BackendError("the embedder failed")
    assert gateway.enforcer.usage([budget])[0].used == 0
    with gateway.meter_embedding(CALLER, ["q"], request_id="q2") as meter:
        meter.prompt_tokens = 1000  # the whole budget
    ran = []
    with pytest.raises(RateLimitedError), gateway.meter_embedding(CALLER, ["q"], request_id="q3"):
        ran.append(True)
    assert ran == []  # refused before the block
    assert [(r.request_id, r.outcome, r.error_type) for r in _rows(gateway)] == [
        ("q1", "error", "backend_error"),
        ("q2", "ok", None),
        ("q3", "error", "rate_limited"),
    ]


def test_embed_charges_the_tokenizers_count_at_the_price(
    parts: tuple[Gateway, BudgetStore, list[Backend]],
) -> None:
    gateway, _, _ = parts
    result = asyncio.run(
        gateway.embed(CALLER, "ALL-MINILM-L6-V2", ["two words", "three more words"], request_id="e1")
    )
    assert result.prompt_tokens == 4 + 5
    (row,) = _rows(gateway)
    assert (row.route, row.prompt_tokens, row.cost_usd) == (
        EMBEDDING_MODEL,
        9,
        pytest.approx(9 * PRICE / 1e6),
    )


def test_the_default_completion_limit_is_cut_to_the_routes_window(
    parts: tuple[Gateway, BudgetStore, list[Backend]],
) -> None:
    gateway, _, made = parts
    request = ChatRequest([ChatMessage("user", "hi")])
    asyncio.run(gateway.chat(CALLER, "tiny", request, request_id="c1"))
    assert made[0].requests[0].max_tokens == 64  # not the 512 default: n_ctx is 64
