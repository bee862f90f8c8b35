"""Catch whatever blocks a running app's event loop for longer than a threshold, and name it.

The loop ticks a heartbeat every few milliseconds; a watchdog thread checks it. When the
heartbeat is older than the threshold, the loop is stuck in one callback (a synchronous MLflow,
database or model call made from an ``async def``, say): the watchdog takes the loop thread's
stack right then, so the report names the blocking call, and records how long the stall lasted.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

from fastapi.testclient import TestClient

__all__ = ["Stall", "slow_callbacks"]

_TICK_S = 0.005
_INNERMOST = 4
_PROJECT = ("opsloop", "rag", "evals", "agents", "serving", "workflows")


@dataclass
class Stall:
    """One time the loop did not tick for ``seconds``; ``stack``: where its thread was."""

    seconds: float
    stack: str

    def __str__(self) -> str:
        return f"blocked {self.seconds * 1000:.0f} ms in:\n{self.stack}"


def _where(frame: FrameType) -> str:
    """The project's own frames of a stack (who made the call), then its innermost frames."""
    frames = traceback.format_stack(frame)
    ours = [f for f in frames[:-_INNERMOST] if any(f"/{package}/" in f for package in _PROJECT)]
    return "".join([*ours, "  ...\n", *frames[-_INNERMOST:]])


@contextmanager
def slow_callbacks(client: TestClient, threshold_s: float = 0.1) -> Iterator[list[Stall]]:
    """Yield the stalls of ``client``'s event loop over ``threshold_s``, filled as they end."""
    portal = client.portal
    assert portal is not None, "use the TestClient as a context manager"
    loop: asyncio.AbstractEventLoop = portal.call(asyncio.get_running_loop)
    loop_thread: int = portal.call(threading.get_ident)
    beat = [time.monotonic()]
    stop = threading.Event()
    stalls: list[Stall] = []

    async def heartbeat() -> None:
        while not stop.is_set():
            beat[0] = time.monotonic()
            await asyncio.sleep(_TICK_S)

    def watchdog() -> None:
        stack: str | None = None
        since = 0.0
        while not stop.wait(_TICK_S):
            last = beat[0]
            if stack is None and time.monotonic() - last > threshold_s:
                frame = sys._current_frames().get(loop_thread)
                stack = _where(frame) if frame is not None else "?"
                since = last
            elif stack is not None and last != since:  # it ticked again
                stalls.append(Stall(last - since, stack))
                stack = None
        if stack is not None:
            stalls.append(Stall(time.monotonic() - since, stack))

    ticking = asyncio.run_coroutine_threadsafe(heartbeat(), loop)
    watching = threading.Thread(target=watchdog, name="loop-watchdog", daemon=True)
    watching.start()
    try:
        yield stalls
    finally:
        stop.set()
        watching.join(timeout=5)
        ticking.result(timeout=5)
