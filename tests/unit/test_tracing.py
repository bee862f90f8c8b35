"""The tracer: spans nest through the context, finished traces reach the exporter, failures stay inside."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref

import pytest

from opsloop import tracing
from opsloop.llm.protocol import ChatMessage
from opsloop.tracing import Tracer, TraceRecord, jsonable


class Collected:
    """An exporter that keeps what it is given (and can be told to fail or to wait)."""

    def __init__(self) -> None:
        self.traces: list[TraceRecord] = []
        self.batches = 0
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()

    def export(self, traces: list[TraceRecord]) -> None:
        self.gate.wait(10)
        if self.fail:
            raise RuntimeError("the store is down")
        self.traces.extend(traces)
        self.batches += 1


def names(trace: TraceRecord) -> list[str]:
    return [span["name"] for span in trace["spans"]]


def test_spans_recorded_inside_a_trace_nest_under_it_in_start_order() -> None:
    collected = Collected()
    tracer = Tracer(collected)
    with tracer.trace("query", "CHAIN", request_id="r1", tenant="acme", inputs={"q": "hi"}) as root:
        with tracing.span("retrieve", "RETRIEVER") as retrieve, tracing.span("embed", "EMBEDDING"):
            pass
        nested = tracer.start("chat.completions", "CHAT_MODEL", request_id="other", tenant="acme")
        nested.end({"content": "hello"})
        root.end({"answer": "hello"})
    assert tracer.flush()
    (trace,) = collected.traces
    assert trace["request_id"] == "r1" and trace["tenant"] == "acme"
    assert names(trace) == ["query", "retrieve", "embed", "chat.completions"]
    query, retrieved, embed, chat = trace["spans"]
    assert retrieve.name == "retrieve" and root.name == "query"
    assert (query["parent"], retrieved["parent"], embed["parent"], chat["parent"]) == (None, 0, 1, 0)
    assert all(s["end_ns"] >= s["start_ns"] for s in trace["spans"])
    assert query["inputs"] == {"q": "hi"} and query["outputs"] == {"answer": "hello"}
    assert chat["outputs"] == {"content": "hello"}


def test_outside_a_trace_a_span_records_nothing_and_a_disabled_tracer_exports_nothing() -> None:
    with tracing.span("embed", "EMBEDDING") as detached:
        detached.set(model="x")
    assert not detached.recording and tracing.current_span() is None
    collected = Collected()
    off = Tracer(None)
    with off.trace("query", "CHAIN", request_id="r", tenant="t") as root:
        assert not root.recording
    assert not off.enabled and collected.traces == []


def test_an_exception_marks_its_span_and_the_trace_failed_and_goes_on() -> None:
    collected = Collected()
    tracer = Tracer(collected)
    with (
        pytest.raises(ValueError, match="bad"),
        tracer.trace("query", "CHAIN", request_id="r", tenant="t"),
        tracing.span("retrieve", "RETRIEVER"),
    ):
        raise ValueError("bad")
    tracer.flush()
    (trace,) = collected.traces
    assert [span["error"] for span in trace["spans"]] == ["ValueError: bad", "ValueError: bad"]


def test_spans_in_worker_threads_and_tasks_join_the_trace_that_started_them() -> None:
    collected = Collected()
    tracer = Tracer(collected)

    def work() -> None:
        with tracing.span("in a thread", "TOOL"):
            pass

    async def main() -> None:
        with tracer.trace("agent.run", "AGENT", request_id="r", tenant="t"):
            await asyncio.to_thread(work)
            await asyncio.gather(asyncio.create_task(asyncio.to_thread(work)))

    asyncio.run(main())
    tracer.flush()
    (trace,) = collected.traces
    assert names(trace) == ["agent.run", "in a thread", "in a thread"]
    assert [span["parent"] for span in trace["spans"]] == [None, 0, 0]


def test_a_full_queue_drops_traces_and_a_failing_exporter_is_counted_not_raised() -> None:
    collected = Collected()
    collected.gate.clear()  # the exporter holds the first trace: the queue (1) then fills
    dropped: list[int] = []
    failed: list[int] = []
    tracer = Tracer(collected, max_pending=1, on_dropped=lambda: dropped.append(1), on_failed=failed.append)
    for n in range(4):
        tracer.start("chat.completions", "CHAT_MODEL", request_id=str(n), tenant="t").end()
    collected.fail = True
    collected.gate.set()
    assert tracer.flush()
    assert len(dropped) >= 2 and sum(failed) == 4 - len(dropped)
    tracer.close()
    tracer.start("after close", "CHAIN", request_id="x", tenant="t").end()  # nothing queued, no error
    assert not tracer.enabled


def test_traces_finished_close_together_share_a_batch_and_a_flush_does_not_wait_for_more() -> None:
    collected = Collected()
    tracer = Tracer(collected, max_wait_s=60.0)
    for n in range(5):
        tracer.start("query", "CHAIN", request_id=str(n), tenant="t").end()
    started = time.monotonic()
    assert tracer.flush(30)
    assert time.monotonic() - started < 10  # the flush cut the minute's wait short
    assert [t["request_id"] for t in collected.traces] == [str(n) for n in range(5)]
    assert collected.batches == 1


class Payload:
    """Inputs that can be watched through a weak reference."""


def test_exported_and_dropped_traces_are_freed_without_the_garbage_collector() -> None:
    collected = Collected()
    collected.gate.clear()  # the exporter holds the first trace, so the queue (1) fills
    dropped: list[int] = []
    tracer = Tracer(collected, max_pending=1, on_dropped=lambda: dropped.append(1))
    watched: list[weakref.ref[Payload]] = []
    gc.disable()  # a trace left as a reference cycle would now stay
    try:
        for n in range(4):
            payload = Payload()
            watched.append(weakref.ref(payload))
            with (
                tracer.trace("query", "CHAIN", request_id=str(n), tenant="t"),
                tracing.span("retrieve", "RETRIEVER", inputs=payload),
            ):
                pass
            del payload
        collected.gate.set()
        assert tracer.flush()
        assert "0" in [t["request_id"] for t in collected.traces] and len(dropped) >= 2
        assert [ref() for ref in watched] == [None] * 4
    finally:
        gc.enable()
        tracer.close()


def test_jsonable_drops_a_dataclass_s_unset_fields_and_keeps_plain_values() -> None:
    message = ChatMessage(role="assistant", content="")
    assert jsonable({"m": [message], "n": 1.5, "s": {3}}) == {
        "m": [{"role": "assistant", "content": ""}],
        "n": 1.5,
        "s": [3],
    }
