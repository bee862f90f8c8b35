"""Budget windows, reset times, the 429 error, and enforcement on in-process counters (no store)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone

import pytest
from prometheus_client import CollectorRegistry

from opsloop.budgets import (
    Budget,
    BudgetEnforcer,
    BudgetExceededError,
    InProcessCounters,
    Slot,
    SoftLimitCrossing,
    validate,
    window_of,
)
from opsloop.errors import ConflictError, InvalidInputError, RateLimitedError
from opsloop.telemetry import BudgetMetrics


class FixedBudgets:
    """A budget source over a list (what the store returns, without a database)."""

    def __init__(self, *budgets: Budget) -> None:
        self.budgets = list(budgets)

    def applicable(self, tenant: str, key_id: str | None) -> Sequence[Budget]:
        return [b for b in self.budgets if b.tenant == tenant and b.key_id in (None, key_id)]

    def list(self, *, tenant: str | None = None) -> list[Budget]:
        return [b for b in self.budgets if tenant in (None, b.tenant)]


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _enforcer(
    *budgets: Budget, now: datetime, crossings: list[SoftLimitCrossing] | None = None
) -> tuple[BudgetEnforcer, Clock, BudgetMetrics]:
    clock = Clock(now)
    metrics = BudgetMetrics(CollectorRegistry())
    on_soft = crossings.append if crossings is not None else None
    enforcer = BudgetEnforcer(
        FixedBudgets(*budgets), InProcessCounters(), metrics=metrics, on_soft_limit=on_soft, clock=clock
    )
    return enforcer.start(), clock, metrics


def _sample(metrics: BudgetMetrics, name: str, **labels: str) -> float | None:
    for metric in (metrics.spent_ratio, metrics.soft_limit, metrics.rejected):
        for family in metric.collect():
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
    return None


@pytest.mark.parametrize(
    ("period", "now", "start", "end", "window_id"),
    [
        ("minute", "2025-03-04T05:06:59.999", "2025-03-04T05:06:00", "2025-03-04T05:07:00", "202503040506"),
        ("minute", "2025-12-31T23:59:30", "2025-12-31T23:59:00", "2026-01-01T00:00:00", "202512312359"),
        ("day", "2025-03-04T00:00:00", "2025-03-04T00:00:00", "2025-03-05T00:00:00", "20250304"),
        ("day", "2025-02-28T23:59:59", "2025-02-28T00:00:00", "2025-03-01T00:00:00", "20250228"),
        ("month", "2024-02-29T12:00:00", "2024-02-01T00:00:00", "2024-03-01T00:00:00", "202402"),
        ("month", "2025-12-15T08:00:00", "2025-12-01T00:00:00", "2026-01-01T00:00:00", "202512"),
        ("month", "2025-01-31T23:59:59", "2025-01-01T00:00:00", "2025-02-01T00:00:00", "202501"),
    ],
)
def test_windows_are_utc_minutes_days_and_calendar_months(
    period: str, now: str, start: str, end: str, window_id: str
) -> None:
    window = window_of(period, datetime.fromisoformat(now).replace(tzinfo=UTC))  # type: ignore[arg-type]
    assert window.start == datetime.fromisoformat(start).replace(tzinfo=UTC)
    assert window.end == datetime.fromisoformat(end).replace(tzinfo=UTC)
    assert window.id == window_id


def test_windows_of_another_zone_are_computed_in_utc() -> None:
    # 01:30 on 1 March in UTC+3 is still 28 February in UTC.
    now = datetime(2025, 3, 1, 1, 30, tzinfo=timezone(timedelta(hours=3)))
    assert window_of("day", now).id == "20250228"
    assert window_of("month", now).end == datetime(2025, 3, 1, tzinfo=UTC)


def test_the_error_names_budget_limit_use_and_reset() -> None:
    budget = Budget("acme", "k1", "daily_usd", 10.0)
    now = datetime(2025, 3, 4, 23, 0, 0, 500_000, tzinfo=UTC)
    error = BudgetExceededError(budget, 10.25, window_of("day", now), now)
    assert isinstance(error, RateLimitedError)
    assert (error.status, error.type) == (429, "rate_limited")
    assert error.message == (
        "budget daily_usd of key k1 of tenant acme is used up: 10.25 of 10 USD today (UTC); "
        "it resets at 2025-03-05T00:00:00+00:00 (in 3600 s)"
    )
    assert error.details == {
        "tenant": "acme",
        "key_id": "k1",
        "budget": "daily_usd@k1",
        "kind": "daily_usd",
        "limit": 10.0,
        "used": 10.25,
        "unit": "usd",
        "resets_at": "2025-03-05T00:00:00+00:00",
        "retry_after_s": 3600,
    }


def test_a_rate_limit_says_so_and_resets_within_the_minute() -> None:
    now = datetime(2025, 3, 4, 5, 6, 59, 900_000, tzinfo=UTC)
    error = BudgetExceededError(Budget("acme", None, "rpm", 60), 60, window_of("minute", now), now)
    assert error.message.startswith(
        "rate limit rpm of tenant acme is used up: 60 of 60 requests this minute;"
    )
    assert error.details["retry_after_s"] == 1


@pytest.mark.parametrize(
    ("kind", "limit", "soft", "field"),
    [
        ("weekly_usd", 1.0, None, "kind"),
        ("daily_usd", 0.0, None, "limit"),
        ("daily_usd", float("inf"), None, "limit"),
        ("tpm", 10.5, None, "limit"),
        ("rpm", -1, None, "limit"),
        ("daily_usd", 5.0, 1.5, "soft_ratio"),
        ("daily_usd", 5.0, 0.0, "soft_ratio"),
    ],
)
def test_validation_names_the_field(kind: str, limit: float, soft: float | None, field: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate(kind, limit, soft)
    assert caught.value.details["field"] == field


def test_rpm_admits_exactly_the_limit_then_refuses_until_the_next_minute() -> None:
    now = datetime(2025, 3, 4, 5, 6, 10, tzinfo=UTC)
    enforcer, clock, metrics = _enforcer(Budget("acme", None, "rpm", 3), now=now)
    for _ in range(3):
        enforcer.reserve("acme", "k1")
    with pytest.raises(BudgetExceededError) as caught:
        enforcer.reserve("acme", "k2")
    assert caught.value.details["retry_after_s"] == 50
    assert _sample(metrics, "opsloop_budget_rejected_total", tenant="acme", budget="rpm") == 1
    enforcer.reserve("other", "k9")  # another tenant has no budget
    clock.now = now + timedelta(seconds=50)
    enforcer.reserve("acme", "k1")


def test_tenant_and_key_budgets_both_apply() -> None:
    now = datetime(2025, 3, 4, 5, 6, 10, tzinfo=UTC)
    enforcer, _, _ = _enforcer(
        Budget("acme", None, "daily_tokens", 100), Budget("acme", "k1", "daily_tokens", 30), now=now
    )
    enforcer.settle(enforcer.reserve("acme", "k1"), 30, 0.0)
    with pytest.raises(BudgetExceededError) as caught:
        enforcer.reserve("acme", "k1")
    assert caught.value.details["budget"] == "daily_tokens@k1"
    enforcer.settle(enforcer.reserve("acme", "k2"), 70, 0.0)  # the tenant has 70 left
    with pytest.raises(BudgetExceededError) as caught:
        enforcer.reserve("acme", "k2")
    assert caught.value.details["budget"] == "daily_tokens"
    assert caught.value.details["used"] == 100


def test_a_refused_request_reserves_nothing_on_any_budget() -> None:
    now = datetime(2025, 3, 4, 5, 6, 10, tzinfo=UTC)
    rpm = Budget("acme", None, "rpm", 10)
    enforcer, _, _ = _enforcer(rpm, Budget("acme", "k1", "daily_usd", 1.0), now=now)
    enforcer.settle(enforcer.reserve("acme", "k1"), 0, 1.0)
    for _ in range(5):
        with pytest.raises(BudgetExceededError):
            enforcer.reserve("acme", "k1")
    assert enforcer.usage([rpm])[0].used == 1


def test_estimated_tokens_are_reserved_then_corrected() -> None:
    now = datetime(2025, 3, 4, 5, 6, 10, tzinfo=UTC)
    tpm = Budget("acme", None, "tpm", 1000)
    enforcer, _, _ = _enforcer(tpm, now=now)
    first = enforcer.reserve("acme", "k1", est_tokens=600)
    second = enforcer.reserve("acme", "k1", est_tokens=600)  # 600 < 1000: admitted
    assert enforcer.usage([tpm])[0].used == 1200
    with pytest.raises(BudgetExceededError):
        enforcer.reserve("acme", "k1", est_tokens=1)
    enforcer.settle(first, 100, 0.0)
    enforcer.settle(second, 0, 0.0)  # failed before generating: its reservation is given back
    assert enforcer.usage([tpm])[0].used == 100
    with pytest.raises(ConflictError):
        enforcer.settle(second, 0, 0.0)


def test_soft_threshold_fires_once_per_window() -> None:
    now = datetime(2025, 3, 4, 5, 6, 10, tzinfo=UTC)
    crossings: list[SoftLimitCrossing] = []
    budget = Budget("acme", None, "daily_usd", 10.0, soft_ratio=0.5)
    enforcer, clock, metrics = _enforcer(budget, now=now, crossings=crossings)
    for _ in range(4):
        enforcer.settle(enforcer.reserve("acme", "k1"), 10, 1.0)
    assert crossings == []
    for _ in range(5):  # 5, 6, 7, 8, 9 USD: crosses 50 % once
        enforcer.settle(enforcer.reserve("acme", "k1"), 10, 1.0)
    assert len(crossings) == 1
    assert crossings[0].used == pytest.approx(5.0)
    assert crossings[0].window.id == "20250304"
    assert _sample(metrics, "opsloop_budget_soft_limit_total", tenant="acme", budget="daily_usd") == 1
    assert _sample(metrics, "opsloop_budget_spent_ratio", tenant="acme", budget="daily_usd") == pytest.approx(
        0.9
    )

    clock.now = now + timedelta(days=1)  # a new day: counted from zero, and may warn again
    for _ in range(6):
        enforcer.settle(enforcer.reserve("acme", "k1"), 10, 1.0)
    assert [c.window.id for c in crossings] == ["20250304", "20250305"]


def test_spent_ratio_covers_spend_budgets_and_refresh_drops_deleted_ones() -> None:
    now = datetime(2025, 3, 4, 5, 6, 10, tzinfo=UTC)
    monthly = Budget("acme", None, "monthly_usd", 100.0)
    keyed = Budget("acme", "k1", "daily_tokens", 1000)
    enforcer, _, metrics = _enforcer(monthly, keyed, Budget("acme", None, "rpm", 100), now=now)
    enforcer.settle(enforcer.reserve("acme", "k1", est_tokens=50), 250, 25.0)
    assert enforcer.spent_ratio() == {("acme", "monthly_usd"): 0.25, ("acme", "daily_tokens@k1"): 0.25}
    enforcer.refresh_metrics()
    assert _sample(metrics, "opsloop_budget_spent_ratio", tenant="acme", budget="rpm") is None
    source = enforcer._budgets
    assert isinstance(source, FixedBudgets)
    source.budgets.remove(keyed)
    enforcer.refresh_metrics()
    assert _sample(metrics, "opsloop_budget_spent_ratio", tenant="acme", budget="daily_tokens@k1") is None
    assert _sample(metrics, "opsloop_budget_spent_ratio", tenant="acme", budget="monthly_usd") == 0.25


def test_counters_expire_with_their_window() -> None:
    ticks = [0.0]
    counters = InProcessCounters(clock=lambda: ticks[0])
    slot = Slot("k", 5, ttl_s=10)
    assert counters.add([slot], [3]) == (3,)
    assert counters.first("flag", 10) and not counters.first("flag", 10)
    ticks[0] = 10.0
    assert counters.values([slot]) == (0.0,)
    assert counters.first("flag", 10)


def test_counters_start_from_the_history_once_per_window() -> None:
    # The tenant spent 9.5 USD this morning, before its budget existed (or before a restart).
    now = datetime(2025, 3, 4, 12, 0, tzinfo=UTC)
    asked: list[tuple[str, str | None, datetime]] = []

    def history(tenant: str, key_id: str | None, since: datetime) -> dict[str, float]:
        asked.append((tenant, key_id, since))
        return {"requests": 40.0, "tokens": 12_000.0, "usd": 9.5}

    budgets = FixedBudgets(
        Budget("acme", None, "daily_usd", 10), Budget("acme", "k1", "daily_tokens", 12_500)
    )
    clock = Clock(now)
    enforcer = BudgetEnforcer(budgets, InProcessCounters(), clock=clock, history=history).start()
    reservation = enforcer.reserve("acme", "k1", est_tokens=100)
    assert set(asked) == {("acme", None, now.replace(hour=0)), ("acme", "k1", now.replace(hour=0))}
    enforcer.settle(reservation, tokens=600, cost_usd=0.6)  # 10.1 USD and 12,600 tokens today
    with pytest.raises(BudgetExceededError) as caught:
        enforcer.reserve("acme", "k1")
    assert caught.value.details["used"] == pytest.approx(10.1)
    assert len(asked) == 2  # the history is read once per counter and window, not per request
    clock.now = now + timedelta(days=1)  # a new day's counters: the history is read again
    enforcer.reserve("acme", "k1")  # (this fake history says 9.5 USD for any day: below 10)
    assert len(asked) == 4


def test_usd_reservations_admit_concurrent_calls_below_the_limit_then_settle_to_the_cost() -> None:
    now = datetime(2025, 3, 4, 5, 6, 10, tzinfo=UTC)
    daily = Budget("acme", None, "daily_usd", 1.0)
    enforcer, _, _ = _enforcer(daily, now=now)
    in_flight = [enforcer.reserve("acme", "k1", est_usd=0.4) for _ in range(3)]  # 0, 0.4, 0.8 < 1
    with pytest.raises(BudgetExceededError) as caught:
        enforcer.reserve("acme", "k2", est_usd=0.4)
    assert caught.value.details["used"] == pytest.approx(1.2)
    for reservation in in_flight:
        enforcer.settle(reservation, 10, 0.1)  # each cost less than its worst case
    assert enforcer.usage([daily])[0].used == pytest.approx(0.3)
    enforcer.settle(enforcer.reserve("acme", "k2", est_usd=0.4), 0, 0.0)  # failed: given back
    assert enforcer.usage([daily])[0].used == pytest.approx(0.3)


def test_an_estimate_alone_does_not_cross_the_soft_threshold() -> None:
    now = datetime(2025, 3, 4, 5, 6, 10, tzinfo=UTC)
    crossings: list[SoftLimitCrossing] = []
    tokens = Budget("acme", None, "daily_tokens", 1000, soft_ratio=0.5)
    usd = Budget("acme", None, "daily_usd", 1.0, soft_ratio=0.5)
    enforcer, _, metrics = _enforcer(tokens, usd, now=now, crossings=crossings)
    reservation = enforcer.reserve("acme", "k1", est_tokens=900, est_usd=0.9)
    assert crossings == []
    assert _sample(metrics, "opsloop_budget_spent_ratio", tenant="acme", budget="daily_tokens") is None
    enforcer.settle(reservation, 20, 0.02)
    assert crossings == []
    assert _sample(metrics, "opsloop_budget_spent_ratio", tenant="acme", budget="daily_usd") == pytest.approx(
        0.02
    )
    enforcer.settle(enforcer.reserve("acme", "k1", est_tokens=600, est_usd=0.6), 600, 0.6)  # spent: crosses
    assert sorted(c.budget.kind for c in crossings) == ["daily_tokens", "daily_usd"]


@pytest.mark.parametrize(
    ("est_tokens", "est_usd", "field"),
    [
        (-1, 0.0, "est_tokens"),
        (10**400, 0.0, "est_tokens"),
        (0, -0.5, "est_usd"),
        (0, float("nan"), "est_usd"),
    ],
)
def test_estimates_out_of_range_are_refused(est_tokens: int, est_usd: float, field: str) -> None:
    enforcer, _, _ = _enforcer(Budget("acme", None, "daily_tokens", 10), now=datetime(2025, 3, 4, tzinfo=UTC))
    with pytest.raises(InvalidInputError) as caught:
        enforcer.reserve("acme", "k1", est_tokens=est_tokens, est_usd=est_usd)
    assert caught.value.details["field"] == field
