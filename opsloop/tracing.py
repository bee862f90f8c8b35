"""Traces of what opsloop does, one per request, exported to MLflow's tracing off the request path.

A request records its spans here as plain objects (a few microseconds each). When its root
span ends, the finished trace goes on a bounded queue; the tracer's thread turns queued traces
into JSON-able records and hands them, in batches, to an exporter
(:mod:`opsloop.trace_export`: MLflow, in a child process by default). A trace costs the
request almost nothing and a slow or broken store never fails it: a trace that does not fit
the queue is dropped and counted, an export that fails is logged and counted.

Spans nest through a context variable: an operation that starts a trace inside another's (the
gateway call of a ``/query``) becomes a span of the outer trace. :func:`span` records a child
of whatever span is current, and does nothing outside a trace.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

__all__ = ["Exporter", "Span", "TraceRecord", "Tracer", "current_span", "jsonable", "record", "span"]

log = logging.getLogger(__name__)

_current: contextvars.ContextVar[Span | None] = contextvars.ContextVar("opsloop_span", default=None)


@dataclasses.dataclass(eq=False, slots=True)
class Span:
    """One timed step of a traced request; set ``outputs`` and ``attributes`` before it ends.

    ``kind`` is an MLflow span type (``CHAIN``, ``RETRIEVER``, ``EMBEDDING``, ``CHAT_MODEL``,
    ``TOOL``, ``AGENT``, ...). A root span (no ``parent``) is its trace: it also holds the
    trace's ``request_id``, ``tenant`` and every span recorded under it, in start order.
    """

    name: str
    kind: str
    start_ns: int
    parent: Span | None = None
    inputs: Any = None
    outputs: Any = None
    attributes: dict[str, Any] = dataclasses.field(default_factory=dict)
    end_ns: int | None = None
    error: str | None = None
    request_id: str = ""
    tenant: str = ""
    spans: list[Span] = dataclasses.field(default_factory=list)
    tracer: Tracer | None = None

    @property
    def recording(self) -> bool:
        """False outside a trace: then what the span would record need not be built."""
        return True

    @property
    def root(self) -> Span:
        """The span whose trace this one belongs to."""
        span = self
        while span.parent is not None:
            span = span.parent
        return span

    def child(
        self, name: str, kind: str, *, start_ns: int | None = None, inputs: Any = None, **attributes: Any
    ) -> Span:
        """Start a span under this one (ended by :meth:`end`)."""
        started = time.time_ns() if start_ns is None else start_ns
        span = Span(name, kind, started, self, inputs, attributes=attributes)
        self.root.spans.append(span)
        return span

    def set(self, **attributes: Any) -> None:
        """Add attributes (a model name, a count) to the span."""
        self.attributes.update(attributes)

    def end(
        self, outputs: Any = None, *, error: BaseException | str | None = None, end_ns: int | None = None
    ) -> None:
        """End the span; ending a trace's root hands the trace to its tracer's exporter."""
        if self.end_ns is not None:
            return
        if outputs is not None:
            self.outputs = outputs
        if error is not None:
            self.error = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self.end_ns = time.time_ns() if end_ns is None else end_ns
        if self.parent is None and self.tracer is not None:
            self.tracer.submit(self)


class _Detached(Span):
    """What :func:`span` yields outside a trace: recorded nowhere, so shared (never assign to it)."""

    @property
    def recording(self) -> bool:
        return False

    def set(self, **attributes: Any) -> None:
        return None

    def child(
        self, name: str, kind: str, *, start_ns: int | None = None, inputs: Any = None, **attributes: Any
    ) -> Span:
        return self

    def end(
        self, outputs: Any = None, *, error: BaseException | str | None = None, end_ns: int | None = None
    ) -> None:
        return None


_DETACHED = _Detached("detached", "UNKNOWN", 0)


def current_span() -> Span | None:
    """The span the running code is inside, if a trace is being recorded."""
    return _current.get()


@contextmanager
def span(name: str, kind: str, *, inputs: Any = None, **attributes: Any) -> Iterator[Span]:
    """Record a child of the current span around a block (a no-op outside a trace).

    An exception leaving the block marks the span failed and goes on.
    """
    parent = _current.get()
    if parent is None:
        yield _DETACHED
        return
    with _entered(parent.child(name, kind, inputs=inputs, **attributes)) as child:
        yield child


@contextmanager
def _entered(current: Span) -> Iterator[Span]:
    """``current`` made the current span around a block, and ended after it (failed if it raised)."""
    token = _current.set(current)
    try:
        yield current
    except BaseException as exc:
        current.end(error=exc)
        raise
    finally:
        _current.reset(token)
        current.end()


TraceRecord = dict[str, Any]
"""A finished trace as JSON: ``request_id``, ``tenant`` and ``spans`` (the root first), each span
with ``name``, ``kind``, ``start_ns``, ``end_ns``, ``parent`` (an index into ``spans``, None for
the root), ``inputs``, ``outputs``, ``attributes`` and ``error``."""


class Exporter(Protocol):
    """Writes batches of finished traces somewhere (:mod:`opsloop.trace_export`)."""

    def export(self, traces: list[TraceRecord]) -> None:
        """Write ``traces``; raise if they were not written."""
        ...


def record(root: Span) -> TraceRecord:
    """The trace of ``root`` as JSON-able data (see :data:`TraceRecord`)."""
    spans = [root, *root.spans]
    index = {id(recorded): n for n, recorded in enumerate(spans)}
    return {
        "request_id": root.request_id,
        "tenant": root.tenant,
        "spans": [
            {
                "name": recorded.name,
                "kind": recorded.kind,
                "start_ns": recorded.start_ns,
                "end_ns": recorded.end_ns or recorded.start_ns,
                "parent": None if recorded.parent is None else index.get(id(recorded.parent), 0),
                "inputs": jsonable(recorded.inputs),
                "outputs": jsonable(recorded.outputs),
                "attributes": jsonable(recorded.attributes),
                "error": recorded.error,
            }
            for recorded in spans
        ],
    }


class Tracer:
    """Starts traces and hands the finished ones to ``exporter`` on its own thread, in batches.

    Args:
        exporter: where finished traces go; None: tracing is off and nothing is recorded.
        max_pending: finished traces waiting for the exporter before new ones are dropped.
        max_batch: most traces handed to the exporter at once.
        max_wait_s: how often the queued traces are handed over, as one batch (MLflow writes a
            batch of 100 traces for a fifth of the CPU of 100 single ones).
        on_dropped: called once per trace dropped for a full queue (a metric).
        on_failed: called with the number of traces an export failed to write (a metric).
    """

    def __init__(
        self,
        exporter: Exporter | None,
        *,
        max_pending: int = 1000,
        max_batch: int = 200,
        max_wait_s: float = 1.0,
        on_dropped: Callable[[], None] = lambda: None,
        on_failed: Callable[[int], None] = lambda count: None,
    ) -> None:
        self.exporter = exporter
        self.max_batch = max_batch
        self.max_wait_s = max(max_wait_s, 0.01)
        self._hurry = threading.Event()
        self._pending: queue.Queue[Span | None] = queue.Queue(max_pending)
        self._on_dropped = on_dropped
        self._on_failed = on_failed
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False

    @property
    def enabled(self) -> bool:
        """Whether traces are recorded and exported."""
        return self.exporter is not None and not self._closed

    def start(
        self,
        name: str,
        kind: str,
        *,
        request_id: str,
        tenant: str,
        inputs: Any = None,
        start_ns: int | None = None,
        **attributes: Any,
    ) -> Span:
        """Start a span for an operation: a new trace, or a child of the current span if there is one.

        It is not made current (see :meth:`trace`); end it with :meth:`Span.end`.
        """
        parent = _current.get()
        if parent is not None:
            return parent.child(name, kind, start_ns=start_ns, inputs=inputs, **attributes)
        if not self.enabled:
            return _DETACHED
        return Span(
            name, kind, time.time_ns() if start_ns is None else start_ns, None, inputs, attributes=attributes,
            request_id=request_id, tenant=tenant, tracer=self,
        )  # fmt: skip

    @contextmanager
    def trace(
        self, name: str, kind: str, *, request_id: str, tenant: str, inputs: Any = None, **attributes: Any
    ) -> Iterator[Span]:
        """:meth:`start` a span around a block and make it current for the spans recorded inside."""
        started = self.start(name, kind, request_id=request_id, tenant=tenant, inputs=inputs, **attributes)
        if not started.recording:
            yield started
            return
        with _entered(started):
            yield started

    def submit(self, root: Span) -> None:
        """Queue a finished trace for export; drop it (counted) when the queue is full."""
        if not self.enabled:
            return
        self._ensure_thread()
        try:
            self._pending.put_nowait(root)
        except queue.Full:
            _release(root)
            self._on_dropped()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued trace is exported (or ``timeout``); True if they all were."""
        deadline = time.monotonic() + timeout
        self._hurry.set()
        while self._pending.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        self._hurry.clear()
        flush = getattr(self.exporter, "flush", None)
        exported = flush(max(0.0, deadline - time.monotonic())) if flush is not None else True
        return not self._pending.unfinished_tasks and exported is not False

    def close(self, timeout: float = 10.0, *, wait: bool = True) -> None:
        """Hand what is queued to the exporter, stop the thread and close the exporter.

        ``wait``: also wait (up to ``timeout``) until the exporter has written it; False for a
        short-lived process, whose exporter (a child process) finishes on its own.
        """
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        self._hurry.set()
        while self._pending.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        if wait:
            self.flush(max(0.0, deadline - time.monotonic()))
        self._closed = True
        thread = self._thread
        if thread is not None:
            self._hurry.set()
            self._pending.put(None)
            thread.join(max(0.0, deadline - time.monotonic()))
        close = getattr(self.exporter, "close", None)
        if close is not None:
            close(max(0.0, deadline - time.monotonic()) if wait else 0.0)

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="opsloop-tracer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        # It wakes once a batch period (or when flushed), not per trace: a request's put on the
        # queue wakes no thread and costs it no switch.
        while True:
            if not self._pending.qsize():
                self._hurry.wait(self.max_wait_s)
            batch: list[Span | None] = []
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._pending.get_nowait())
                except queue.Empty:
                    break
            if not batch:
                if self._hurry.is_set():  # a flush is waiting for the exporter, not for the queue
                    time.sleep(0.01)
                continue
            roots = [root for root in batch if root is not None]
            try:
                records = [record(root) for root in roots]
                for root in roots:
                    _release(root)
                if records and self.exporter is not None:
                    self.exporter.export(records)
            except Exception:  # a trace is never worth more than the request it describes
                log.warning("could not export %d traces", len(roots), exc_info=True)
                self._on_failed(len(roots))
            finally:
                for _ in batch:
                    self._pending.task_done()
            if len(roots) < len(batch):  # close()'s sentinel
                return


def _release(root: Span) -> None:
    """Forget a finished trace's spans, which point back at ``root``: freed by reference counting.

    Left as a cycle, every trace would wait for the garbage collector instead (about ten
    objects a request), and the collections that find it stall the event loop.
    """
    root.spans = []


def jsonable(value: Any) -> Any:
    """``value`` as JSON types: dataclasses (without their unset fields) and pydantic models as dicts."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value))
        return {name: jsonable(v) for name, v in fields if v is not None and v != ()}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return jsonable(dump(mode="json"))
    return str(value)
