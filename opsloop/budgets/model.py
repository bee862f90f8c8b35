"""What a budget is: its kinds and units, its UTC windows, and the 429 error it raises."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from opsloop.errors import InvalidInputError, RateLimitedError

__all__ = [
    "DEFAULT_SOFT_RATIO",
    "KINDS",
    "Budget",
    "BudgetExceededError",
    "Period",
    "Unit",
    "Window",
    "validate",
    "window_of",
]

Period = Literal["minute", "day", "month"]
Unit = Literal["usd", "tokens", "requests"]

KINDS: dict[str, tuple[Period, Unit]] = {
    "daily_usd": ("day", "usd"),
    "daily_tokens": ("day", "tokens"),
    "monthly_usd": ("month", "usd"),
    "monthly_tokens": ("month", "tokens"),
    "rpm": ("minute", "requests"),
    "tpm": ("minute", "tokens"),
}
"""Every budget kind: its window and unit."""

DEFAULT_SOFT_RATIO = 0.8
_PERIOD_TEXT = {"minute": "this minute", "day": "today (UTC)", "month": "this month (UTC)"}
_UNIT_TEXT = {"usd": "USD", "tokens": "tokens", "requests": "requests"}


@dataclass(frozen=True)
class Window:
    """One counting window: ``[start, end)`` in UTC; ``end`` is when the budget resets."""

    id: str
    start: datetime
    end: datetime


_latest: dict[str, Window] = {}
"""The window each period was last asked for: every request of a minute is in the same one."""


def window_of(period: Period, now: datetime) -> Window:
    """The window of ``period`` that contains ``now`` (any zone; computed in UTC)."""
    latest = _latest.get(period)
    if latest is not None and now.tzinfo is not None and latest.start <= now < latest.end:
        return latest  # a third of a budget check's time went into computing it again
    window = _window_of(period, now)
    _latest[period] = window
    return window


def _window_of(period: Period, now: datetime) -> Window:
    now = now.astimezone(UTC)
    if period == "minute":
        start = now.replace(second=0, microsecond=0)
        return Window(start.strftime("%Y%m%d%H%M"), start, start + timedelta(minutes=1))
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return Window(start.strftime("%Y%m%d"), start, start + timedelta(days=1))
    if period == "month":
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else start.replace(month=start.month + 1)
        )
        return Window(start.strftime("%Y%m"), start, end)
    raise ValueError(f"unknown period {period!r}")


@dataclass(frozen=True)
class Budget:
    """A limit of one kind on a tenant (``key_id`` None) or on one of its keys."""

    tenant: str
    key_id: str | None
    kind: str
    limit: float
    soft_ratio: float = DEFAULT_SOFT_RATIO
    updated_at: datetime | None = None
    updated_by: str = ""

    @property
    def name(self) -> str:
        """How metrics and messages name it: the kind, or ``<kind>@<key id>`` for a key's budget."""
        return self.kind if self.key_id is None else f"{self.kind}@{self.key_id}"

    @property
    def period(self) -> Period:
        """The window it is counted in."""
        return KINDS[self.kind][0]

    @property
    def unit(self) -> Unit:
        """What it counts."""
        return KINDS[self.kind][1]

    @property
    def is_spend(self) -> bool:
        """Daily and monthly budgets (exported as ``opsloop_budget_spent_ratio``), not rate limits."""
        return self.period != "minute"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as the API and the audit log show it."""
        return {
            "tenant": self.tenant,
            "key_id": self.key_id,
            "kind": self.kind,
            "limit": self.limit,
            "soft_ratio": self.soft_ratio,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "updated_by": self.updated_by,
        }


def _fmt(value: float, unit: Unit) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".") if unit == "usd" else f"{value:.0f}"


class BudgetExceededError(RateLimitedError):
    """A budget or rate limit is used up; the message names it, its use, and when it resets."""

    def __init__(self, budget: Budget, used: float, window: Window, now: datetime) -> None:
        retry_after_s = max(1, math.ceil((window.end - now).total_seconds()))
        what = "rate limit" if budget.period == "minute" else "budget"
        scope = (
            f"key {budget.key_id} of tenant {budget.tenant}" if budget.key_id else f"tenant {budget.tenant}"
        )
        message = (
            f"{what} {budget.kind} of {scope} is used up: {_fmt(used, budget.unit)} of "
            f"{_fmt(budget.limit, budget.unit)} {_UNIT_TEXT[budget.unit]} {_PERIOD_TEXT[budget.period]}; "
            f"it resets at {window.end.isoformat()} (in {retry_after_s} s)"
        )
        super().__init__(
            message,
            tenant=budget.tenant,
            key_id=budget.key_id,
            budget=budget.name,
            kind=budget.kind,
            limit=budget.limit,
            used=used,
            unit=budget.unit,
            resets_at=window.end.isoformat(),
            retry_after_s=retry_after_s,
        )
        self.budget = budget


def validate(kind: str, limit: float, soft_ratio: float | None = None) -> None:
    """Raise InvalidInputError naming the field if ``kind``, ``limit`` or ``soft_ratio`` is wrong."""
    if kind not in KINDS:
        raise InvalidInputError(
            f"unknown budget kind {kind!r}; use one of {', '.join(KINDS)}", field="kind", value=kind
        )
    if not math.isfinite(limit) or limit <= 0:
        raise InvalidInputError(
            f"limit of {kind} must be a positive number, got {limit!r}", field="limit", value=limit
        )
    unit = KINDS[kind][1]
    if unit != "usd" and limit != int(limit):
        raise InvalidInputError(
            f"limit of {kind} must be a whole number of {unit}, got {limit!r}", field="limit", value=limit
        )
    if soft_ratio is not None and not 0 < soft_ratio <= 1:
        raise InvalidInputError(
            f"soft_ratio must be above 0 and at most 1, got {soft_ratio!r}",
            field="soft_ratio",
            value=soft_ratio,
        )
