"""Values by key, each trusted for a while and read again ahead of its expiry off the caller's thread.

For what every request looks up but that changes rarely: an API key's row, a tenant's budgets.
A plain expiring cache makes one request in each period wait for the store, and that request
runs on the server's event loop, so every request behind it waits too (37 ms for a tenant's
budgets while an eval run was writing to the same SQLite file). Here a value asked for in the
second half of its life is read again on a thread of its own while the caller gets the value
it has, which is still within its time: a steady caller never waits, and nothing served is
older than ``ttl``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

__all__ = ["RefreshAhead"]

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class RefreshAhead(Generic[K, V]):
    """``load(key)``'s answers, each kept ``ttl`` seconds and refreshed in the background after ``ttl / 2``.

    ``load`` may return None for a key that has no value; None is returned but not kept, so
    the next call asks again. A read the caller waits for raises what ``load`` raises; after a
    background read fails (logged), the entry is not read ahead again and the first caller
    after its expiry reads it.
    """

    def __init__(
        self,
        load: Callable[[K], V | None],
        ttl: float,
        *,
        name: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._clock = clock
        self._ttl = ttl
        self._name = name
        self._entries: dict[K, tuple[float, V]] = {}
        self._refreshing: dict[K, object] = {}  # key -> token of the read under way
        self._lock = threading.Lock()
        # One thread for the reads ahead, started now: starting a thread from the event loop
        # makes the loop wait until the new thread is scheduled (10-48 ms under load).
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._reader.submit(lambda: None)

    def get(self, key: K) -> V | None:
        """The value of ``key``: the kept one while in its time, else read now on this thread."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and now - entry[0] < self._ttl:
                if now - entry[0] >= self._ttl / 2 and key not in self._refreshing:
                    token = self._refreshing[key] = object()
                    self._reader.submit(self._refresh, key, token)
                return entry[1]
        value = self._load(key)
        if value is not None:
            self.put(key, value, read_at=now)
        return value

    def last(self, key: K) -> V | None:
        """The kept value of ``key`` however old, or None: for a caller whose read just failed."""
        with self._lock:
            entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def put(self, key: K, value: V, *, read_at: float | None = None) -> None:
        """Keep ``value`` for ``key`` as read at ``read_at`` (now by default)."""
        with self._lock:
            self._entries[key] = (self._clock() if read_at is None else read_at, value)
            self._refreshing.pop(key, None)  # a read ahead still under way brings nothing newer

    def forget(self, key: K | None = None) -> None:
        """Drop ``key`` (every key when None), and whatever a read under way would bring back for it."""
        with self._lock:
            if key is None:
                self._entries.clear()
                self._refreshing.clear()
            else:
                self._entries.pop(key, None)
                self._refreshing.pop(key, None)

    def settle(self) -> None:
        """Wait until the reads ahead asked for so far have ended."""
        self._reader.submit(lambda: None).result()

    def _refresh(self, key: K, token: object) -> None:
        read_at = self._clock()
        try:
            value = self._load(key)
        except Exception as exc:  # the token stays: no more reads ahead until a caller reads it anew
            log.warning("%s: reading %r ahead of its expiry failed: %s", self._name, key, exc)
            return
        with self._lock:
            if self._refreshing.get(key) is not token:
                return  # forgotten meanwhile: what was read may be what was just changed
            del self._refreshing[key]
            if value is None:
                self._entries.pop(key, None)
            else:
                self._entries[key] = (read_at, value)
