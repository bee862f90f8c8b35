"""Shared counters behind budgets and rate limits: one process (in memory) or many (Redis).

A counter is a float under a string key that lives until its window ends (``ttl_s``). The
budget enforcer (:mod:`opsloop.budgets.enforcer`) names one counter per budget and window, and asks for
three things: an atomic *check-and-reserve* over several counters (admit only if every counter
is below its limit, then add each reservation), plain increments, and a set-once flag.

- :class:`InProcessCounters` keeps them in a dict under a lock. They are per process and start
  from zero when the process starts; with several gateway processes each counts alone.
- :class:`RedisCounters` keeps them in Redis, shared by every process that uses the same key
  prefix. Check-and-reserve is one Lua script (atomic in Redis), so no two processes can both
  take the last unit of a limit. Keys carry a ``{tenant}`` hash tag, so one reservation's keys
  share a Redis Cluster slot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import SecretStr

from opsloop.errors import BackendError, ConfigError

__all__ = ["Admission", "Counters", "InProcessCounters", "RedisCounters", "Slot"]


@dataclass(frozen=True)
class Slot:
    """One counter: its key, the limit admission checks against, and how long it lives."""

    key: str
    limit: float
    ttl_s: int


@dataclass(frozen=True)
class Admission:
    """What check-and-reserve decided.

    Attributes:
        blocked: Index of the first slot already at or over its limit; None when admitted.
        blocked_value: That slot's value (0.0 when admitted).
        values: When admitted, every slot's value after the reservation; empty when blocked.
    """

    blocked: int | None
    blocked_value: float
    values: tuple[float, ...]


class Counters(Protocol):
    """Windowed counters; every method is safe to call from many threads."""

    def start(self) -> None:
        """Open connections (if any)."""

    def close(self) -> None:
        """Release connections (if any)."""

    def reserve(self, slots: Sequence[Slot], amounts: Sequence[float]) -> Admission:
        """Atomically: if every slot's value is below its limit, add ``amounts`` to them."""

    def add(self, slots: Sequence[Slot], amounts: Sequence[float]) -> tuple[float, ...]:
        """Add ``amounts`` (which may be negative) and return the new values."""

    def values(self, slots: Sequence[Slot]) -> tuple[float, ...]:
        """The current values (0.0 for a counter never written or expired)."""

    def first(self, key: str, ttl_s: int) -> bool:
        """True for the first caller that sets flag ``key`` while it lives, False afterwards."""

    def seed(self, slot: Slot, value: float) -> None:
        """Set the slot's counter to ``value`` unless it already has one (a fresh window)."""


class InProcessCounters:
    """Counters in this process's memory, under one lock; lost when the process ends."""

    _PRUNE_EVERY = 4096  # writes between sweeps of expired counters

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._data: dict[str, tuple[float, float]] = {}  # key -> (value, expires at)
        self._writes = 0

    def start(self) -> None:
        """Nothing to open."""

    def close(self) -> None:
        """Nothing to release."""

    def _get(self, key: str, now: float) -> float:
        entry = self._data.get(key)
        return entry[0] if entry is not None and entry[1] > now else 0.0

    def _put(self, key: str, value: float, expires_at: float) -> None:
        self._data[key] = (value, expires_at)
        self._writes += 1
        if self._writes % self._PRUNE_EVERY == 0:
            now = self._clock()
            for stale in [k for k, (_, at) in self._data.items() if at <= now]:
                del self._data[stale]

    def _add(self, slots: Sequence[Slot], amounts: Sequence[float], now: float) -> tuple[float, ...]:
        out = []
        for slot, amount in zip(slots, amounts, strict=True):
            value = self._get(slot.key, now) + amount
            if amount:
                self._put(slot.key, value, now + slot.ttl_s)
            out.append(value)
        return tuple(out)

    def reserve(self, slots: Sequence[Slot], amounts: Sequence[float]) -> Admission:
        """Check every slot, then reserve on all of them, under the lock."""
        with self._lock:
            now = self._clock()
            for index, slot in enumerate(slots):
                value = self._get(slot.key, now)
                if value >= slot.limit:
                    return Admission(index, value, ())
            return Admission(None, 0.0, self._add(slots, amounts, now))

    def add(self, slots: Sequence[Slot], amounts: Sequence[float]) -> tuple[float, ...]:
        """Add under the lock."""
        with self._lock:
            return self._add(slots, amounts, self._clock())

    def values(self, slots: Sequence[Slot]) -> tuple[float, ...]:
        """Read under the lock."""
        with self._lock:
            now = self._clock()
            return tuple(self._get(slot.key, now) for slot in slots)

    def first(self, key: str, ttl_s: int) -> bool:
        """Set the flag unless it is set."""
        with self._lock:
            now = self._clock()
            if self._get(key, now):
                return False
            self._put(key, 1.0, now + ttl_s)
            return True

    def seed(self, slot: Slot, value: float) -> None:
        """Set the counter unless it lives already."""
        with self._lock:
            now = self._clock()
            entry = self._data.get(slot.key)
            if (entry is None or entry[1] <= now) and value:
                self._put(slot.key, value, now + slot.ttl_s)


# KEYS: the counters. ARGV: limit, amount and ttl of each, in KEYS order. Returns {i, value} with
# the 1-based index of the first counter at its limit, or {0, value1, value2, ...} once reserved.
# Values travel as strings: Redis truncates Lua numbers in replies to integers.
_RESERVE = """
local n = #KEYS
for i = 1, n do
  local value = tonumber(redis.call('GET', KEYS[i]) or '0')
  if value >= tonumber(ARGV[3 * i - 2]) then
    return {i, tostring(value)}
  end
end
local out = {0}
for i = 1, n do
  local amount = ARGV[3 * i - 1]
  if tonumber(amount) ~= 0 then
    out[i + 1] = redis.call('INCRBYFLOAT', KEYS[i], amount)
    redis.call('EXPIRE', KEYS[i], ARGV[3 * i])
  else
    out[i + 1] = redis.call('GET', KEYS[i]) or '0'
  end
end
return out
"""


class RedisCounters:
    """Counters in Redis, shared by every process with the same URL (and key prefix, set by the enforcer).

    Args:
        url: ``redis://[user:password@]host:port/db`` (``rediss://`` for TLS); kept secret.
        timeout_s: Socket timeout of each command; a slow Redis fails the request, not hangs it.
    """

    def __init__(self, url: str | SecretStr, *, timeout_s: float = 2.0) -> None:
        self._url = url if isinstance(url, SecretStr) else SecretStr(url)
        self._timeout_s = timeout_s
        self._client: Any = None
        self._reserve: Any = None

    def start(self) -> None:
        """Connect (lazily, in redis-py's pool) and register the reservation script."""
        if self._client is not None:
            return
        import redis

        try:
            self._client = redis.Redis.from_url(
                self._url.get_secret_value(),
                socket_timeout=self._timeout_s,
                socket_connect_timeout=self._timeout_s,
            )
        except ValueError as exc:  # the message names the scheme, never the password
            raise ConfigError(f"invalid Redis URL: {exc}", setting="redis_url") from exc
        self._reserve = self._client.register_script(_RESERVE)

    def close(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            self._client.close()
            self._client = None
            self._reserve = None

    @property
    def client(self) -> Any:
        """The started ``redis.Redis`` client."""
        if self._client is None:
            raise RuntimeError("RedisCounters.start() was not called")
        return self._client

    def _call(self, what: str, run: Callable[[], Any]) -> Any:
        import redis

        try:
            return run()
        except redis.RedisError as exc:
            raise BackendError(f"budget counters in Redis failed to {what}: {exc}", backend="redis") from exc

    def reserve(self, slots: Sequence[Slot], amounts: Sequence[float]) -> Admission:
        """Run the check-and-reserve script (one round trip, atomic in Redis)."""
        client = self.client
        argv: list[str] = []
        for slot, amount in zip(slots, amounts, strict=True):
            argv += [repr(float(slot.limit)), repr(float(amount)), str(max(1, slot.ttl_s))]
        reply = self._call(
            "reserve", lambda: self._reserve(keys=[s.key for s in slots], args=argv, client=client)
        )
        if int(reply[0]):
            return Admission(int(reply[0]) - 1, float(reply[1]), ())
        return Admission(None, 0.0, tuple(float(v) for v in reply[1:]))

    def add(self, slots: Sequence[Slot], amounts: Sequence[float]) -> tuple[float, ...]:
        """INCRBYFLOAT and EXPIRE each counter, pipelined in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for slot, amount in zip(slots, amounts, strict=True):
            pipe.incrbyfloat(slot.key, float(amount))
            pipe.expire(slot.key, max(1, slot.ttl_s))
        replies = self._call("add", pipe.execute)
        return tuple(float(v) for v in replies[0::2])

    def values(self, slots: Sequence[Slot]) -> tuple[float, ...]:
        """MGET the counters."""
        if not slots:
            return ()
        client = self.client
        replies = self._call("read", lambda: client.mget([s.key for s in slots]))
        return tuple(float(v) if v is not None else 0.0 for v in replies)

    def first(self, key: str, ttl_s: int) -> bool:
        """SET NX EX: exactly one process wins."""
        client = self.client
        return bool(self._call("set a flag", lambda: client.set(key, 1, nx=True, ex=max(1, ttl_s))))

    def seed(self, slot: Slot, value: float) -> None:
        """SET NX EX: a counter another process already keeps is left alone."""
        if value:
            client = self.client
            ttl = max(1, slot.ttl_s)
            self._call("seed a counter", lambda: client.set(slot.key, repr(value), nx=True, ex=ttl))
