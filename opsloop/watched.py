"""A value read from a slow source once, then kept fresh by a thread of its own.

For what a request needs on every call but that changes rarely and by another process's
hand: a registry alias, say. Reading it per request costs the request a round trip to the
store (12-26 ms for the ``rag-answer@production`` prompt on the embedded MLflow registry);
reading it here costs a dictionary lookup, and a move made anywhere shows within
``poll_seconds``, as the model runtime's watcher does for champions.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Watched"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class Watched(Generic[T]):
    """``load()``'s latest answer; re-read every ``poll_seconds`` once first asked for.

    The first :meth:`get` reads on the caller's thread and raises what ``load`` raises; after
    that, a failed re-read keeps the last good value (logged once until a read succeeds).
    """

    def __init__(self, load: Callable[[], T], poll_seconds: float, *, name: str) -> None:
        self._load = load
        self._poll_seconds = poll_seconds
        self._name = name
        self._value: T | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def get(self) -> T:
        """The value: read now on the first call, then whatever the watcher read last."""
        value = self._value
        if value is not None:
            return value
        with self._lock:
            if self._value is None:
                self._value = self._load()
                self._stop.clear()
                self._thread = threading.Thread(target=self._watch, name=self._name, daemon=True)
                self._thread.start()
            return self._value

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            try:
                self._value = self._load()
            except Exception as exc:  # keep serving the last good value; the store may come back
                if not self._failing:
                    log.warning("%s could not re-read its value (keeping the last one): %s", self._name, exc)
                self._failing = True
            else:
                self._failing = False

    def close(self) -> None:
        """Stop watching (the value stays readable; a later :meth:`get` does not restart it)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=30)
