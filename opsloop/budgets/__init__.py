"""Budgets and rate limits per tenant and per key, and their enforcement on the LLM gateway's hot path.

Kinds, each counted in a fixed UTC window that resets at its end:

    kind            counts                  window
    daily_usd       spend in USD            UTC day
    daily_tokens    tokens                  UTC day
    monthly_usd     spend in USD            UTC calendar month
    monthly_tokens  tokens                  UTC calendar month
    rpm             requests                UTC minute
    tpm             tokens                  UTC minute

A tenant's budgets apply to all its keys together; a key's budgets apply to that key alone;
a request must fit both. The gateway calls :meth:`BudgetEnforcer.reserve` before calling the
model and :meth:`BudgetEnforcer.settle` with the actual tokens and cost afterwards (also after
a failure, with what was spent, so that the reservation is given back).

Admission is check-and-reserve, atomic over all of a request's counters:

- ``rpm`` counts the request at reserve time and admits while fewer than ``limit`` were
  admitted in the minute, so exactly ``limit`` requests get through (across processes too,
  with Redis counters).
- Token budgets add the caller's ``est_tokens`` and USD budgets its ``est_usd`` at reserve
  time; settle replaces them with what was spent. Either admits while the counted use is
  below the limit, so the overshoot is bounded by what the requests already in flight spend
  beyond their reservation: with upper-bound estimates (the gateway's: the whole
  ``max_tokens`` at the route's dearest backend) a budget ends less than one request over its
  limit; with estimates of 0 it ends at most the in-flight requests' spend over.
- Soft thresholds (and the spent-ratio gauge) of token and USD budgets are judged at settle,
  not on estimates, so a reservation that is never spent does not warn.

Fixed windows allow up to twice a per-minute limit across a minute boundary, the usual
trade for O(1) state. Budget rows are cached per tenant for ``cache_seconds``, so the hot path
makes no database query; a change made by another process applies within that time.

Counters are pluggable (:mod:`opsloop.budgets.counters`): in-process counters are per process;
Redis counters are shared by every gateway process and survive restarts of the gateway. Either
way a counter that a process has not used yet in its window starts from the ledger's calls of
that window (``history``), so a budget set at noon counts the morning, and a restart forgets
nothing.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opsloop.budgets.counters import Admission, Counters, InProcessCounters, RedisCounters, Slot
    from opsloop.budgets.enforcer import (
        BudgetEnforcer,
        BudgetSource,
        BudgetUsage,
        Reservation,
        SoftLimitCrossing,
    )
    from opsloop.budgets.model import (
        DEFAULT_SOFT_RATIO,
        KINDS,
        Budget,
        BudgetExceededError,
        Window,
        validate,
        window_of,
    )
    from opsloop.budgets.store import BudgetStore

# Loaded on first use (PEP 562), as in ``opsloop/__init__.py``: ``opsloop budgets --help``
# reads KINDS from the light ``model`` module without loading the store (SQLAlchemy).
_EXPORTS = {
    "opsloop.budgets.counters": ("Admission", "Counters", "InProcessCounters", "RedisCounters", "Slot"),
    "opsloop.budgets.enforcer": (
        "BudgetEnforcer",
        "BudgetSource",
        "BudgetUsage",
        "Reservation",
        "SoftLimitCrossing",
    ),
    "opsloop.budgets.model": (
        "DEFAULT_SOFT_RATIO",
        "KINDS",
        "Budget",
        "BudgetExceededError",
        "Window",
        "validate",
        "window_of",
    ),
    "opsloop.budgets.store": ("BudgetStore",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "DEFAULT_SOFT_RATIO",
    "KINDS",
    "Admission",
    "Budget",
    "BudgetEnforcer",
    "BudgetExceededError",
    "BudgetSource",
    "BudgetStore",
    "BudgetUsage",
    "Counters",
    "InProcessCounters",
    "RedisCounters",
    "Reservation",
    "Slot",
    "SoftLimitCrossing",
    "Window",
    "validate",
    "window_of",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'opsloop.budgets' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
