"""What a starting server is doing: each component's state, what it waits for, and why it failed.

The Platform's start-up threads report here as they go (:class:`Startup`); ``/readyz`` reads
:meth:`Startup.snapshot`, and the log gets one line per component as it becomes ready, with
what it holds and how long it took, then ``ready in N s`` once every component is. Long steps
(the bundled docs' ingestion) log their progress every few seconds through :class:`Ticker`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from opsloop.errors import OpsloopError

if TYPE_CHECKING:
    from rag.ingest import IngestProgress

__all__ = [
    "ComponentState",
    "FileProgress",
    "Readiness",
    "Startup",
    "Ticker",
    "plural",
    "reason",
    "versions",
]

ComponentState = Literal["starting", "ready", "degraded", "failed"]

_REASON_CHARS = 300
"""A failure's reason in ``/readyz`` is cut to this length (the log has the whole exception)."""


def plural(count: int, noun: str) -> str:
    """``1 file``, ``2 files``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def versions(models: Mapping[str, int]) -> str:
    """``churn v3, credit-risk v1``: models with their versions, by name."""
    return ", ".join(f"{name} v{version}" for name, version in sorted(models.items()))


def reason(exc: BaseException) -> str:
    """Why a component failed, for ``/readyz``: an opsloop error's message, else the exception's."""
    return exc.message if isinstance(exc, OpsloopError) else f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class Readiness:
    """The components' states at one moment, what the starting ones wait for, and why any is not well."""

    components: dict[str, ComponentState]
    pending: list[str] = field(default_factory=list)
    """``"<component>: <what it is doing>"`` for each component still starting."""
    why: dict[str, Any] = field(default_factory=dict)
    """By component: why it failed (a message) or is degraded (its own details)."""

    @property
    def ready(self) -> bool:
        """Whether every component has started (``degraded`` counts as started)."""
        return bool(self.components) and all(s in ("ready", "degraded") for s in self.components.values())

    @property
    def degraded(self) -> bool:
        """Whether some component serves with a fault."""
        return any(state == "degraded" for state in self.components.values())


class Startup:
    """The components' start-up states, shared by the threads that start them (thread-safe).

    Args:
        log: Where each component's ready line and the final ``ready in N s`` go (INFO).
        clock: Seconds, monotonic (tests pass their own).
    """

    def __init__(self, log: logging.Logger, clock: Callable[[], float] = time.perf_counter) -> None:
        self._log = log
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[str, ComponentState] = {}
        self._doing: dict[str, str] = {}
        self._began: dict[str, float] = {}
        self._why: dict[str, str] = {}
        self._first: float | None = None
        self._complete = False
        self._announced = False

    def begin(self, name: str, doing: str | None = None) -> None:
        """``name`` starts now; ``doing`` says what it waits for (shown in ``pending``)."""
        with self._lock:
            now = self._clock()
            self._first = now if self._first is None else self._first
            self._states[name] = "starting"
            self._began[name] = now
            self._why.pop(name, None)
            self._doing.pop(name, None)
            if doing is not None:
                self._doing[name] = doing

    def doing(self, name: str, what: str) -> None:
        """What starting component ``name`` waits for now."""
        with self._lock:
            self._doing[name] = what

    def ready(self, name: str, summary: str | None = None) -> float:
        """``name`` has started: log ``<name> ready (<summary>) in N s``; returns those seconds.

        After :meth:`all_begun`, the last component to be ready also logs ``ready in N s``.
        """
        with self._lock:
            now = self._clock()
            seconds = now - self._began.get(name, now)
            self._states[name] = "ready"
            self._doing.pop(name, None)
        detail = f" ({summary})" if summary else ""
        self._log.info("%s ready%s in %.1f s", name, detail, seconds)
        self._announce()
        return seconds

    def all_begun(self) -> None:
        """Every component has begun: ``ready in N s`` is logged once all are ready (now, or later)."""
        with self._lock:
            self._complete = True
        self._announce()

    def _announce(self) -> None:
        with self._lock:
            now = self._clock()
            everything = all(s == "ready" for s in self._states.values())
            if not self._complete or not everything or self._announced or self._first is None:
                return
            self._announced = True
        self._log.info("ready in %.1f s", now - self._first)

    def failed(self, name: str, reason: str) -> None:
        """``name`` could not start; ``reason`` shows under ``why`` (the caller logs the exception)."""
        with self._lock:
            self._states[name] = "failed"
            self._doing.pop(name, None)
            self._why[name] = reason if len(reason) <= _REASON_CHARS else reason[: _REASON_CHARS - 3] + "..."

    def drop(self, name: str) -> None:
        """``name`` is not part of this server after all."""
        with self._lock:
            self._states.pop(name, None)
            self._doing.pop(name, None)
            self._began.pop(name, None)
            self._why.pop(name, None)
        self._announce()

    def state(self, name: str) -> ComponentState | None:
        """``name``'s state, or None when it is no component."""
        return self._states.get(name)

    def snapshot(self) -> Readiness:
        """Every component's state, what the starting ones wait for, and why any failed."""
        with self._lock:
            states = dict(self._states)
            pending = [
                f"{name}: {self._doing[name]}" if name in self._doing else name
                for name, state in states.items()
                if state == "starting"
            ]
            return Readiness(states, pending, dict(self._why))


class Ticker:
    """Logs ``<what>: done/total <unit>`` at most every ``every`` seconds while a long step runs.

    Args:
        log: Where the lines go (INFO).
        what: What the step is, e.g. ``docs``.
        every: Seconds between two lines (the first comes after ``every`` too: short steps log nothing).
        clock: Seconds, monotonic.
    """

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        *,
        every: float = 5.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._log = log
        self.what = what
        self.every = every
        self._clock = clock
        self.started = clock()
        self._last = self.started

    def tick(self, done: int, total: int, unit: str, extra: str = "") -> bool:
        """Log ``done`` of ``total`` if ``every`` seconds passed since the last line; whether it did."""
        now = self._clock()
        if now - self._last < self.every:
            return False
        self._last = now
        more = f", {extra}" if extra else ""
        seconds = now - self.started
        self._log.info("%s: %d/%d %s%s, %.0f s so far", self.what, done, total, unit, more, seconds)
        return True

    @property
    def seconds(self) -> float:
        """Seconds since the step began."""
        return self._clock() - self.started


class FileProgress:
    """An ingestion's progress callback (``rag.ingest.ProgressCallback``) for a starting component.

    ``pending`` shows ``<what> (done/total files)``; ``ticker`` logs the count every few seconds;
    ``chunks`` adds up the chunks each finished file has.
    """

    def __init__(self, startup: Startup, component: str, what: str, ticker: Ticker) -> None:
        self.startup = startup
        self.component = component
        self.what = what
        self.ticker = ticker
        self.chunks = 0

    def __call__(self, progress: IngestProgress) -> None:
        """One more file is done."""
        self.chunks += progress.chunks
        self.startup.doing(self.component, f"{self.what} ({progress.done}/{progress.total} files)")
        self.ticker.tick(progress.done, progress.total, "files", plural(self.chunks, "chunk"))
