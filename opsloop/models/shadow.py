"""Shadow traffic: a copy of a request for a challenger version, answered off the request path.

The caller's request is answered by the champion as always; :meth:`ShadowQueue.offer` only
puts a copy in a bounded queue and returns. One worker thread scores the copies with the
challenger and reports each as an :class:`~opsloop.traffic.Outcome` (whether it answered, how
fast, and whether it agreed with the champion). The shadow's answer is never returned to
anyone. A full queue drops the copy and counts it, so a slow shadow never slows the caller.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opsloop.errors import OpsloopError
from opsloop.models.runtime import ModelRuntime
from opsloop.traffic import CHALLENGER, Outcome

__all__ = ["ShadowCopy", "ShadowQueue"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShadowCopy:
    """One request copied for a shadow: its instances and what the champion answered."""

    experiment: str
    model: str
    version: int
    request_id: str
    instances: list[Any]
    champion_answers: list[Any]


class ShadowQueue:
    """A bounded queue of shadow copies and the thread that scores them.

    Args:
        runtime: Where the challenger versions are loaded.
        record: Where each copy's outcome goes (the experiments' traffic split).
        max_pending: Copies waiting before new ones are dropped.
        max_instances: Most instances in one request (as for /predict).
        on_dropped: Called with each dropped copy's experiment (a metric).
    """

    def __init__(
        self,
        runtime: ModelRuntime,
        record: Callable[[Outcome], None],
        *,
        max_pending: int = 1000,
        max_instances: int = 1000,
        on_dropped: Callable[[str], None] = lambda experiment: None,
    ) -> None:
        self._runtime = runtime
        self._record = record
        self._max_instances = max_instances
        self._on_dropped = on_dropped
        self._queue: queue.Queue[ShadowCopy | None] = queue.Queue(maxsize=max_pending)
        self._thread: threading.Thread | None = None

    def offer(self, copy: ShadowCopy) -> bool:
        """Queue a copy without waiting; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(copy)
        except queue.Full:
            self._on_dropped(copy.experiment)
            return False
        return True

    def start(self) -> ShadowQueue:
        """Start the worker thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="shadow-traffic", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while (copy := self._queue.get()) is not None:
            try:
                self._score(copy)
            except Exception:  # the worker must outlive any one copy, or shadowing stops for good
                log.exception("scoring a shadow copy of %s failed", copy.model)

    def _score(self, copy: ShadowCopy) -> None:
        challenger = self._runtime.challenger(copy.model, copy.version)
        if challenger is None:  # not loaded (yet): nothing to compare
            return
        started = time.perf_counter()
        try:
            answers, _ = challenger.predict(challenger.schema.to_matrix(copy.instances, self._max_instances))
        except Exception as exc:  # whatever the shadow raises is its failure, and no one else's
            error = exc.type if isinstance(exc, OpsloopError) else type(exc).__name__
            latency_ms = (time.perf_counter() - started) * 1000
            self._record(
                Outcome(copy.experiment, CHALLENGER, copy.request_id, False, latency_ms, error_type=error)
            )
            return
        latency_ms = (time.perf_counter() - started) * 1000
        agreed = [str(a) for a in answers] == [str(a) for a in copy.champion_answers]
        self._record(Outcome(copy.experiment, CHALLENGER, copy.request_id, True, latency_ms, agreed=agreed))

    def close(self) -> None:
        """Score what is queued, then stop the worker."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None
