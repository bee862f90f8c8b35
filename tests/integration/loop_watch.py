"""Catch whatever blocks a running app's event loop for longer than a threshold, and name it.

The loop ticks a heartbeat every few milliseconds; a watchdog thread checks it. When the
heartbeat is older than the threshold, the loop is stuck in one callback (a synchronous MLflow,
database or model call made from an ``async def``, say): the watchdog takes the loop thread's
stack right then, so the report names the blocking call, and records how long the stall lasted.

A call to MLflow's store is caught however short it is: the watchdog looks at the loop thread's
stack at every tick, and a frame of MLflow's tracking or registry client or store there is
recorded once per calling stack (as a stall of about the time it was seen for; a call shorter
than a tick may slip between two looks). On a warm SQLite
store such a call takes 50-80 ms, under the threshold, yet it is what must not run on the loop:
against a remote tracking server it waits for the network.

Two pauses are not a callback's, and are left out, as asyncio's slow-callback check leaves
them out: the loop waiting in its selector for a core or the GIL that other threads hold (the
stack ends in ``selectors.py``), and the time the garbage collector ran during the stall
(``gc.callbacks``), which pauses every thread wherever it happens to be.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

from fastapi.testclient import TestClient

__all__ = ["Stall", "loop_stalls"]

_TICK_S = 0.005
_INNERMOST = 4
_PROJECT = ("opsloop", "rag", "evals", "agents", "serving", "workflows")
# MLflow's tracking and registry clients and its stores: each call reads or writes the store.
# (A model's own predict may run through MLflow's pyfunc code on the loop: that is the model.)
_NEVER_ON_THE_LOOP = ("/mlflow/tracking/", "/mlflow/store/")


@dataclass
class Stall:
    """One time the loop did not tick for ``seconds``; ``stack``: where its thread was."""

    seconds: float
    stack: str

    def __str__(self) -> str:
        return f"blocked {self.seconds * 1000:.0f} ms in:\n{self.stack}"


class _Collections:
    """The intervals the garbage collector ran in, from ``gc.callbacks``."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.monotonic()
        else:
            self.spans.append((self._started, time.monotonic()))

    def within(self, start: float, end: float) -> float:
        """Seconds of collection between ``start`` and ``end``."""
        return sum(max(0.0, min(b, end) - max(a, start)) for a, b in self.spans)


def _idle(frame: FrameType | None) -> bool:
    """The loop thread waits in its selector: no callback is running."""
    return frame is not None and frame.f_code.co_filename.endswith("selectors.py")


def _in_mlflow(frame: FrameType | None) -> bool:
    while frame is not None:
        if any(part in frame.f_code.co_filename for part in _NEVER_ON_THE_LOOP):
            return True
        frame = frame.f_back
    return False


def _where(frame: FrameType) -> str:
    """The project's own frames of a stack (who made the call), then its innermost frames."""
    frames = traceback.format_stack(frame)
    return "".join([*_ours(frames[:-_INNERMOST]), "  ...\n", *frames[-_INNERMOST:]])


def _ours(frames: list[str]) -> list[str]:
    return [f for f in frames if any(f"/{package}/" in f for package in _PROJECT)]


@contextmanager
def loop_stalls(client: TestClient, threshold_s: float = 0.1) -> Iterator[list[Stall]]:
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

    collections = _Collections()
    mlflow_calls: dict[str, int] = {}  # who called MLflow on the loop: ticks it was seen at

    def watchdog() -> None:
        stack: str | None = None
        since = 0.0
        while not stop.wait(_TICK_S):
            last = beat[0]
            frame = sys._current_frames().get(loop_thread)
            if _in_mlflow(frame):
                assert frame is not None
                caller = "".join(_ours(traceback.format_stack(frame)))
                mlflow_calls[caller] = mlflow_calls.get(caller, 0) + 1
            if stack is None and time.monotonic() - last > threshold_s:
                stack = "" if frame is None or _idle(frame) else _where(frame)
                since = last
            elif stack is not None and last != since:  # it ticked again
                record(since, last, stack)
                stack = None
        if stack is not None:
            record(since, time.monotonic(), stack)
        stalls.extend(
            Stall(ticks * _TICK_S, f"{caller}  ... (in MLflow)\n") for caller, ticks in mlflow_calls.items()
        )

    def record(start: float, end: float, stack: str) -> None:
        blocked = end - start - collections.within(start, end)
        if stack and blocked > threshold_s:
            stalls.append(Stall(blocked, stack))

    ticking = asyncio.run_coroutine_threadsafe(heartbeat(), loop)
    watching = threading.Thread(target=watchdog, name="loop-watchdog", daemon=True)
    gc.callbacks.append(collections)
    watching.start()
    try:
        yield stalls
    finally:
        stop.set()
        watching.join(timeout=5)
        gc.callbacks.remove(collections)
        ticking.result(timeout=5)
