"""The ledger against the real store: batched writes, then reports grouped and windowed."""

from __future__ import annotations

from datetime import timedelta

import pytest

from opsloop.auth import Principal, Role, system_principal
from opsloop.db import Database
from opsloop.errors import ForbiddenError, InvalidInputError
from opsloop.llm.ledger import Ledger, LLMCall, Outcome
from opsloop.tables import utcnow

ADMIN = system_principal("default")


def _call(
    tenant: str, route: str, latency_ms: float, *, outcome: Outcome = "ok", age_h: float = 0, **kw: object
) -> LLMCall:
    fields: dict[str, object] = {
        "request_id": f"r-{tenant}-{route}-{latency_ms}",
        "tenant": tenant,
        "key_id": f"k-{tenant}",
        "route": route,
        "backend": "local",
        "model": "m",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cached_tokens": 2,
        "ttft_ms": 1.0,
        "latency_ms": latency_ms,
        "cost_usd": 0.5,
        "streamed": True,
        "outcome": outcome,
        "at": utcnow() - timedelta(hours=age_h),
        **kw,
    }
    return LLMCall(**fields)  # type: ignore[arg-type]


def test_report_groups_windows_and_filters(database: Database) -> None:
    ledger = Ledger(database).start()
    try:
        for latency in (100, 200, 300, 400):
            ledger.record(_call("acme", "chat", latency))
        ledger.record(_call("acme", "small", 50, outcome="disconnected", cost_usd=0.25))
        ledger.record(
            _call("globex", "chat", 1000, outcome="error", error_type="backend_error", cost_usd=0.0)
        )
        ledger.record(_call("globex", "chat", 10, age_h=48))  # outside a 24h window
        by_tenant = ledger.report(ADMIN, "tenant", timedelta(hours=24))
        assert [(r.group, r.calls, r.errors, r.disconnected) for r in by_tenant] == [
            ("acme", 5, 0, 1),
            ("globex", 1, 1, 0),
        ]
        acme = by_tenant[0]
        assert (acme.prompt_tokens, acme.completion_tokens, acme.cached_tokens) == (50, 25, 10)
        assert acme.cost_usd == pytest.approx(2.25)
        assert (acme.p50_latency_ms, acme.p95_latency_ms) == (200, 400)  # nearest rank of 50,100,...,400

        routes = ledger.report(ADMIN, "route", timedelta(days=3), tenant="globex")
        assert [(r.group, r.calls) for r in routes] == [("chat", 2)]
        assert [r.group for r in ledger.report(ADMIN, "key", timedelta(hours=1), "acme")] == ["k-acme"]
        assert ledger.report(ADMIN, "model", timedelta(hours=1), "nobody") == []
        with pytest.raises(InvalidInputError):
            ledger.report(ADMIN, "colour", timedelta(hours=1))  # type: ignore[arg-type]

        operator = Principal("k-acme", "acme", Role.OPERATOR)
        assert [r.group for r in ledger.report(operator, "tenant", timedelta(hours=24))] == ["acme"]
        with pytest.raises(ForbiddenError, match="another tenant's costs"):
            ledger.report(operator, "tenant", timedelta(hours=24), tenant="globex")

        newest = ledger.calls(tenant="globex")
        assert [c.outcome for c in newest] == ["ok", "error"] and newest[1].error_type == "backend_error"
    finally:
        ledger.close()


def test_calls_an_experiment_made_are_reported_by_variant(database: Database) -> None:
    ledger = Ledger(database).start()
    try:
        ledger.record(_call("acme", "chat", 100, experiment="brief", variant="champion"))
        ledger.record(_call("acme", "chat", 300, experiment="brief", variant="challenger", cost_usd=1.5))
        ledger.record(_call("acme", "chat", 200, experiment="brief", variant="challenger", cost_usd=1.5))
        ledger.record(_call("acme", "chat", 50))  # no experiment routed it
        rows = ledger.report(ADMIN, "variant", timedelta(hours=1))
        assert [(r.group, r.calls, r.cost_usd, r.p95_latency_ms) for r in rows] == [
            ("brief:challenger", 2, 3.0, 300),
            ("", 1, pytest.approx(0.5), 50),
            ("brief:champion", 1, pytest.approx(0.5), 100),
        ]
        newest = ledger.calls(tenant="acme", limit=2)
        assert [(c.experiment, c.variant) for c in newest] == [(None, None), ("brief", "challenger")]
    finally:
        ledger.close()


def test_spent_counts_what_budgets_count(database: Database) -> None:
    ledger = Ledger(database).start()
    try:
        ledger.record(_call("acme", "chat", 100))
        ledger.record(_call("acme", "chat", 200, key_id="k-other"))
        ledger.record(_call("acme", "chat", 300, age_h=30))  # before the window
        refused = _call("acme", "chat", 1, outcome="error", error_type="rate_limited", cost_usd=0.0)
        ledger.record(refused)  # refused by a budget: no request of its rpm
        ledger.record(_call("globex", "chat", 100))
        ledger.flush()
        since = utcnow() - timedelta(hours=24)
        assert ledger.spent("acme", None, since) == {"requests": 2.0, "tokens": 30.0, "usd": 1.0}
        assert ledger.spent("acme", "k-acme", since) == {"requests": 1.0, "tokens": 15.0, "usd": 0.5}
        assert ledger.spent("nobody", None, since) == {"requests": 0.0, "tokens": 0.0, "usd": 0.0}
    finally:
        ledger.close()
