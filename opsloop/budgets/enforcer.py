"""Admission against budgets on the gateway's hot path: reserve before a call, settle after it.

A reservation holds the call's estimated tokens and cost on the counters until settle
replaces them with what the call spent. Soft thresholds and the spent-ratio gauge of token and
USD budgets are therefore judged at settle, when the call's own share is real; requests are
exact at once and judged at reserve.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from opsloop.audit import AuditLog
from opsloop.budgets.counters import Counters, Slot
from opsloop.budgets.model import Budget, BudgetExceededError, Window, window_of
from opsloop.errors import ConflictError, InvalidInputError, OpsloopError
from opsloop.tables import utcnow
from opsloop.telemetry import BudgetMetrics

__all__ = ["BudgetEnforcer", "BudgetSource", "BudgetUsage", "Reservation", "SoftLimitCrossing"]

log = logging.getLogger("opsloop.budgets")

_GRACE_S = 60  # counters outlive their window a little, for readers whose clock is behind
_MAX_EST_TOKENS = 2**53  # beyond it a float counter no longer counts single tokens


History = Callable[[str, str | None, datetime], Mapping[str, float]]
"""What a tenant (or one key: the second argument) used since a time, by unit name."""


class BudgetSource(Protocol):
    """Where the enforcer reads budgets from (the store, or a fixed list)."""

    def applicable(self, tenant: str, key_id: str | None) -> Sequence[Budget]:
        """The budgets a request of ``tenant`` with key ``key_id`` must fit; cheap, called per request."""

    def list(self, *, tenant: str | None = None) -> list[Budget]:
        """Every budget (of one tenant)."""


@dataclass(frozen=True)
class _Charge:
    """One budget as one request counts against it: the window, its counter, what was reserved."""

    budget: Budget
    window: Window
    slot: Slot
    reserved: float


@dataclass
class Reservation:
    """What :meth:`BudgetEnforcer.reserve` admitted; hand it to :meth:`BudgetEnforcer.settle` once."""

    tenant: str
    key_id: str | None
    est_tokens: int
    charges: tuple[_Charge, ...]
    settled: bool = field(default=False, compare=False)
    est_usd: float = 0.0


@dataclass(frozen=True)
class BudgetUsage:
    """How much of a budget its current window has used."""

    budget: Budget
    used: float
    ratio: float
    resets_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            **self.budget.to_dict(),
            "used": self.used,
            "ratio": self.ratio,
            "resets_at": self.resets_at.isoformat(),
        }


@dataclass(frozen=True)
class SoftLimitCrossing:
    """A budget passed its soft threshold in a window (reported once per budget and window)."""

    budget: Budget
    used: float
    ratio: float
    window: Window


class BudgetEnforcer:
    """Admits or refuses requests against their budgets; records their spend.

    Args:
        budgets: Where budgets come from; its ``applicable`` is called on every request.
        counters: The counters (in-process or Redis); started by :meth:`start`.
        audit: Where ``budget.soft_limit`` events are recorded (None: not recorded).
        metrics: The budget metrics to update (None: none).
        on_soft_limit: Called once per budget and window when its soft threshold is crossed.
        key_prefix: Prefix of every counter key; processes sharing budgets share it.
        clock: The current time (timezone-aware).
        history: What a tenant (or one of its keys) used since a time, by unit (``requests``,
            ``tokens``, ``usd``): the ledger's ``Ledger.spent``. A counter this process has not
            used yet in its window starts from it, so a budget set at noon counts the morning's
            spend, and a restart forgets nothing. None: counters start from zero.
    """

    def __init__(
        self,
        budgets: BudgetSource,
        counters: Counters,
        *,
        audit: AuditLog | None = None,
        metrics: BudgetMetrics | None = None,
        on_soft_limit: Callable[[SoftLimitCrossing], None] | None = None,
        key_prefix: str = "opsloop:budget:",
        clock: Callable[[], datetime] = utcnow,
        history: History | None = None,
    ) -> None:
        self._budgets = budgets
        self._counters = counters
        self._audit = audit
        self._metrics = metrics
        self._on_soft_limit = on_soft_limit
        self._prefix = key_prefix
        self._clock = clock
        self._fired: dict[str, datetime] = {}  # soft-limit flags known set, to their window's end
        self._fired_lock = threading.Lock()
        self._exported: set[tuple[str, str]] = set()
        self._history = history
        self._seeded: dict[str, datetime] = {}  # counters started from the history, to their window's end

    def start(self) -> BudgetEnforcer:
        """Start the counters; returns self."""
        self._counters.start()
        return self

    def close(self) -> None:
        """Close the counters."""
        self._counters.close()

    def _charge(self, budget: Budget, now: datetime, est_tokens: int, est_usd: float) -> _Charge:
        window = window_of(budget.period, now)
        scope = budget.key_id or "*"
        key = f"{self._prefix}{{{budget.tenant}}}:{scope}:{budget.kind}:{window.id}"
        slot = Slot(key, budget.limit, _ttl(window, now))
        reserved = {"requests": 1.0, "tokens": float(est_tokens), "usd": est_usd}[budget.unit]
        return _Charge(budget, window, slot, reserved)

    def reserve(
        self, tenant: str, key_id: str | None, est_tokens: int = 0, est_usd: float = 0.0
    ) -> Reservation:
        """Admit one request of ``tenant`` (with key ``key_id``), reserving its estimated spend.

        ``est_tokens`` and ``est_usd`` are what the request may use at most; :meth:`settle`
        replaces them with what it did use.

        Raises:
            BudgetExceededError: A budget of the tenant or key is used up (429).
            InvalidInputError: An estimate is negative, not finite, or too large to count.
            BackendError: The counters or the store failed.
        """
        if not 0 <= est_tokens <= _MAX_EST_TOKENS:
            raise InvalidInputError(
                f"est_tokens must be between 0 and {_MAX_EST_TOKENS}",
                field="est_tokens",
                limit=_MAX_EST_TOKENS,
            )
        if not (math.isfinite(est_usd) and est_usd >= 0):
            raise InvalidInputError(f"est_usd must be 0 or more, got {est_usd!r}", field="est_usd")
        budgets = self._budgets.applicable(tenant, key_id)
        if not budgets:
            return Reservation(tenant, key_id, est_tokens, (), est_usd=est_usd)
        now = self._clock()
        charges = tuple(self._charge(b, now, est_tokens, est_usd) for b in budgets)
        self._seed(charges)
        admission = self._counters.reserve([c.slot for c in charges], [c.reserved for c in charges])
        if admission.blocked is not None:
            blocked = charges[admission.blocked]
            if self._metrics is not None:
                self._metrics.rejected.labels(self._metrics.tenant(tenant), blocked.budget.name).inc()
            raise BudgetExceededError(blocked.budget, admission.blocked_value, blocked.window, now)
        # Only requests are counted exactly here; token and USD counters hold estimates until
        # settle, and a warning or gauge read from an estimate would report spend that never was.
        counted = [
            (c, v) for c, v in zip(charges, admission.values, strict=True) if c.budget.unit == "requests"
        ]
        self._observe([c for c, _ in counted], [v for _, v in counted], now)
        return Reservation(tenant, key_id, est_tokens, charges, est_usd=est_usd)

    def _seed(self, charges: Sequence[_Charge]) -> None:
        """Start the counters this process has not used in their window from the history."""
        if self._history is None:
            return
        for charge in charges:
            key = charge.slot.key
            if key in self._seeded:
                continue
            budget = charge.budget
            spent = self._history(budget.tenant, budget.key_id, charge.window.start)
            self._counters.seed(charge.slot, spent[budget.unit])  # a counter already kept stays
            if len(self._seeded) > 10_000:  # minute windows come and go: forget the ended ones
                now = self._clock()
                self._seeded = {k: end for k, end in self._seeded.items() if end > now}
            self._seeded[key] = charge.window.end

    def settle(self, reservation: Reservation, tokens: int, cost_usd: float) -> None:
        """Record what an admitted request spent (0 and 0.0 if it failed before spending).

        Tokens and cost replace the reservation's estimates in the windows it was made in; a
        request that runs past a window's end is counted in the window it started in.

        Raises:
            ConflictError: The reservation was settled before.
        """
        if reservation.settled:
            raise ConflictError("this reservation is already settled")
        if tokens < 0 or cost_usd < 0 or not math.isfinite(cost_usd):
            raise InvalidInputError(f"tokens and cost_usd must be 0 or more, got {tokens}, {cost_usd}")
        reservation.settled = True
        now = self._clock()
        charges: list[_Charge] = []
        amounts: list[float] = []
        for charge in reservation.charges:
            unit = charge.budget.unit
            if unit == "requests":
                continue
            # Added also when the estimate was exact (0): the soft threshold is judged here.
            spent = float(tokens) if unit == "tokens" else cost_usd
            charges.append(_Charge(charge.budget, charge.window, _retimed(charge, now), charge.reserved))
            amounts.append(spent - charge.reserved)
        if charges:
            self._observe(charges, self._counters.add([c.slot for c in charges], amounts), now)

    def _observe(self, charges: Sequence[_Charge], values: Sequence[float], now: datetime) -> None:
        """Update the spent-ratio gauge and report soft-threshold crossings."""
        for charge, used in zip(charges, values, strict=True):
            budget = charge.budget
            ratio = used / budget.limit
            if self._metrics is not None and budget.is_spend:
                self._metrics.spent_ratio.labels(self._metrics.tenant(budget.tenant), budget.name).set(ratio)
                self._exported.add((budget.tenant, budget.name))
            if ratio < budget.soft_ratio:
                continue
            # The shared flag decides which process reports; the local set saves asking again.
            flag = f"{charge.slot.key}:soft"
            with self._fired_lock:
                if flag in self._fired:
                    continue
            first = self._counters.first(flag, charge.slot.ttl_s)
            with self._fired_lock:
                if len(self._fired) > 10_000:
                    self._fired = {k: end for k, end in self._fired.items() if end > now}
                self._fired[flag] = charge.window.end
            if first:
                self._soft_limit(SoftLimitCrossing(budget, used, ratio, charge.window))

    def _soft_limit(self, crossing: SoftLimitCrossing) -> None:
        budget = crossing.budget
        log.warning(
            "tenant %s: budget %s at %.0f%% (soft threshold %.0f%%)",
            budget.tenant, budget.name, 100 * crossing.ratio, 100 * budget.soft_ratio,
        )  # fmt: skip
        if self._metrics is not None:
            self._metrics.soft_limit.labels(self._metrics.tenant(budget.tenant), budget.name).inc()
        if self._audit is not None:
            try:
                self._audit.append(
                    actor="system",
                    tenant=budget.tenant,
                    action="budget.soft_limit",
                    target=f"budget:{budget.tenant}/{budget.name}",
                    after={
                        **budget.to_dict(),
                        "used": crossing.used,
                        "ratio": crossing.ratio,
                        "window_start": crossing.window.start.isoformat(),
                        "resets_at": crossing.window.end.isoformat(),
                    },
                )
            except OpsloopError:  # the request was served; losing the audit row must not fail it
                log.exception("recording the soft-limit event of %s/%s failed", budget.tenant, budget.name)
        if self._on_soft_limit is not None:
            self._on_soft_limit(crossing)

    def usage(self, budgets: Sequence[Budget]) -> list[BudgetUsage]:
        """The current window's use of each of ``budgets``, from the (shared) counters."""
        now = self._clock()
        charges = [self._charge(b, now, 0, 0.0) for b in budgets]
        values = self._counters.values([c.slot for c in charges])
        return [
            BudgetUsage(c.budget, used, used / c.budget.limit, c.window.end)
            for c, used in zip(charges, values, strict=True)
        ]

    def spent_ratio(self) -> dict[tuple[str, str], float]:
        """``spent / limit`` of every daily and monthly budget, by (tenant, budget name)."""
        spend = [b for b in self._budgets.list() if b.is_spend]
        return {(u.budget.tenant, u.budget.name): u.ratio for u in self.usage(spend)}

    def refresh_metrics(self) -> None:
        """Set ``opsloop_budget_spent_ratio`` of every spend budget, drop deleted ones; call once a minute."""
        if self._metrics is None:
            return
        tenant_label = self._metrics.tenant
        ratios = {(tenant_label(tenant), name): ratio for (tenant, name), ratio in self.spent_ratio().items()}
        gauge = self._metrics.spent_ratio
        for labels in self._exported - ratios.keys():
            gauge.remove(*labels)
            self._exported.discard(labels)
        for labels, ratio in ratios.items():
            gauge.labels(*labels).set(ratio)
            self._exported.add(labels)


def _ttl(window: Window, now: datetime) -> int:
    return max(1, math.ceil((window.end - now).total_seconds())) + _GRACE_S


def _retimed(charge: _Charge, now: datetime) -> Slot:
    return Slot(charge.slot.key, charge.slot.limit, _ttl(charge.window, now))
