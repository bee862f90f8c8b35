"""Where finished traces go: MLflow's tracking store (and an OTLP collector), from a child process.

:class:`MLflowExporter` writes a batch of traces with one ``log_spans`` call of MLflow's tracing
client, in one transaction, the way MLflow's own server stores what it is sent over OTLP. That
still costs about 3 ms of CPU per trace in batches of 100 here (15 ms one at a time, 30 ms
through MLflow's live-span API), far too much to run beside the event loop, whose requests
would wait for the GIL. :class:`ProcessExporter` therefore runs it in ``python -m
opsloop.trace_export``: the server's tracer thread writes each batch as one JSON line to the
child's stdin, and the child answers each with a line of counts. A child that dies is started
again on the next batch; what it had not written is counted as failed.

Redaction (``redact``) runs where the exporter runs: in the child, off the server's CPU.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from opsloop.tracing import TraceRecord

__all__ = ["ExportConfig", "MLflowExporter", "ProcessExporter", "Redact", "main"]

log = logging.getLogger(__name__)

Redact = Callable[[str, str, str], str]
"""``redact(text, tenant, operation)``: ``text`` with its PII replaced (``operation``: the root span)."""

_RESTART_AFTER_S = 5.0  # a child that keeps dying is not restarted in a loop
_NICENESS = 10


@dataclass(frozen=True)
class ExportConfig:
    """What the exporting child needs, as JSON: the store, the experiment, OTLP, the privacy rules."""

    tracking_uri: str
    experiment: str
    artifact_root: str | None = None
    otlp_endpoint: str | None = None
    privacy: dict[str, Any] | None = field(default=None)
    """``opsloop.privacy.PrivacyPolicies`` as JSON; None: traces are stored as recorded."""


class MLflowExporter:
    """Writes batches of traces to MLflow's tracing, in ``config.experiment`` (created when missing).

    Each trace is tagged ``opsloop.request_id`` and ``opsloop.tenant``:
    ``mlflow.search_traces(filter_string="tag.`opsloop.request_id` = '...'")`` finds it.
    """

    def __init__(self, config: ExportConfig, *, redact: Redact | None = None) -> None:
        self.config = config
        self.redact = redact
        self._experiment_id: str | None = None
        self._client: Any = None
        self._otlp: Any = None

    def export(self, traces: list[TraceRecord]) -> None:
        """Write ``traces`` in one transaction (and send them to the OTLP collector, if one is set)."""
        if self._client is None:
            self._setup()
        if self.redact is not None:
            traces = [_redacted(trace, self.redact) for trace in traces]
        spans = [span for trace in traces for span in _mlflow_spans(trace)]
        self._client.log_spans(self._experiment_id, spans)
        if self._otlp is not None:
            # MLflow's spans wrap OpenTelemetry's; the collector gets the same spans, ids and times.
            result = self._otlp.export([span._span for span in spans])
            if result.name != "SUCCESS":
                log.warning(
                    "the OTLP collector at %s refused %d spans", self.config.otlp_endpoint, len(spans)
                )

    def _setup(self) -> None:
        import mlflow
        from mlflow.tracing.client import TracingClient

        config = self.config
        client = mlflow.MlflowClient(config.tracking_uri)
        found = client.get_experiment_by_name(config.experiment)
        if found is None:
            try:
                self._experiment_id = client.create_experiment(
                    config.experiment, artifact_location=config.artifact_root
                )
            except mlflow.exceptions.MlflowException:  # another process created it first
                found = client.get_experiment_by_name(config.experiment)
                if found is None:
                    raise
        if found is not None:
            self._experiment_id = found.experiment_id
        if config.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self._otlp = OTLPSpanExporter(endpoint=config.otlp_endpoint, timeout=10)
        self._client = TracingClient(config.tracking_uri)


def _mlflow_spans(trace: TraceRecord) -> list[Any]:
    """The spans of ``trace`` as MLflow span entities (MLflow's span JSON, attribute values JSON-encoded)."""
    from mlflow.entities import Span
    from mlflow.tracing.constant import SpanAttributeKey, TraceTagKey

    trace_id = "tr-" + secrets.token_hex(16)
    records = trace["spans"]
    span_ids = [secrets.token_hex(8) for _ in records]
    spans = []
    for n, recorded in enumerate(records):
        attributes = dict(recorded["attributes"] or {})
        usage = attributes.pop("usage", None)
        cost = attributes.get("cost_usd")
        values: dict[str, Any] = {
            SpanAttributeKey.REQUEST_ID: trace_id,
            SpanAttributeKey.SPAN_TYPE: recorded["kind"],
            SpanAttributeKey.INPUTS: recorded["inputs"],
            SpanAttributeKey.OUTPUTS: recorded["outputs"],
            SpanAttributeKey.CHAT_USAGE: usage,
            SpanAttributeKey.LLM_COST: None if cost is None else {"total_cost": cost},
            SpanAttributeKey.MODEL: attributes.get("model") or None,
            **{f"opsloop.{key}" if key == "cost_usd" else key: value for key, value in attributes.items()},
        }
        if recorded["parent"] is None:
            prefix = SpanAttributeKey.TRACE_TAG_PREFIX
            values[prefix + TraceTagKey.TRACE_NAME] = recorded["name"]
            values[prefix + "opsloop.request_id"] = trace["request_id"]
            values[prefix + "opsloop.tenant"] = trace["tenant"]
        error = recorded["error"]
        parent = recorded["parent"]
        spans.append(
            Span.from_dict(
                {
                    "trace_id": trace_id,
                    "span_id": span_ids[n],
                    "parent_span_id": None if parent is None else span_ids[parent],
                    "name": recorded["name"],
                    "start_time_unix_nano": recorded["start_ns"],
                    "end_time_unix_nano": recorded["end_ns"],
                    "events": [],
                    "status": {"code": "ERROR" if error else "OK", "message": error or ""},
                    "attributes": {
                        key: json.dumps(value) for key, value in values.items() if value is not None
                    },
                }
            )
        )
    return spans


def _redacted(trace: TraceRecord, redact: Redact) -> TraceRecord:
    tenant, operation = trace["tenant"], trace["spans"][0]["name"]

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return redact(value, tenant, operation)
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, list):
            return [clean(item) for item in value]
        return value

    spans = [
        span
        | {"inputs": clean(span["inputs"]), "outputs": clean(span["outputs"]), "error": clean(span["error"])}
        for span in trace["spans"]
    ]
    return trace | {"spans": spans}


class ProcessExporter:
    """Runs an :class:`MLflowExporter` of ``config`` in a child process (see the module docs).

    Args:
        config: what the child exports to.
        max_in_flight: traces sent and not yet answered before new batches are dropped.
        on_dropped: called once per trace dropped because the child is that far behind.
        on_failed: called with the number of traces the child failed to write (or lost).
    """

    def __init__(
        self,
        config: ExportConfig,
        *,
        max_in_flight: int = 2000,
        on_dropped: Callable[[], None] = lambda: None,
        on_failed: Callable[[int], None] = lambda count: None,
    ) -> None:
        self.config = config
        self.max_in_flight = max_in_flight
        self._on_dropped = on_dropped
        self._on_failed = on_failed
        self._child: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._lock = threading.Lock()
        self._answered = threading.Condition()
        self._sent = 0
        self._done = 0

    def export(self, traces: list[TraceRecord]) -> None:
        """Send ``traces`` to the child (started on first use); drop them when it is too far behind."""
        if self._sent - self._done + len(traces) > self.max_in_flight:
            for _ in traces:
                self._on_dropped()
            return
        line = json.dumps(traces, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            child = self._running()
            if child is None or child.stdin is None:
                self._on_failed(len(traces))
                return
            with self._answered:
                self._sent += len(traces)
            try:
                child.stdin.write(line)
                child.stdin.flush()
            except OSError:  # the child died; its reader counts what it had not answered
                log.warning("the trace exporter process is gone; %d traces lost", len(traces))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the child answered every batch sent (or ``timeout``); True if it did."""
        deadline = time.monotonic() + timeout
        with self._answered:
            while self._done < self._sent:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._answered.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Tell the child there is no more (it exits once it has written what it was sent).

        Waits up to ``timeout`` for it to exit; a child still writing then is left to finish.
        """
        with self._lock:
            child, self._child = self._child, None
        if child is None:
            return
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            log.info("the trace exporter process %d is still writing; it exits when done", child.pid)

    def _running(self) -> subprocess.Popen[bytes] | None:
        child = self._child
        if child is not None and child.poll() is None:
            return child
        if child is not None and time.monotonic() - self._started_at < _RESTART_AFTER_S:
            return None
        env = dict(os.environ)
        env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        self._child = child = subprocess.Popen(
            [sys.executable, "-m", "opsloop.trace_export", json.dumps(asdict(self.config))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self._started_at = time.monotonic()
        assert child.stdout is not None  # noqa: S101 (Popen's contract with stdout=PIPE)
        threading.Thread(
            target=self._read, args=(child.stdout,), name="trace-export-answers", daemon=True
        ).start()
        return child

    def _read(self, answers: IO[bytes]) -> None:
        for line in answers:
            try:
                counts = json.loads(line)
            except ValueError:
                continue
            if counts.get("failed"):
                self._on_failed(int(counts["failed"]))
            with self._answered:
                self._done += int(counts.get("done", 0))
                self._answered.notify_all()
        with self._answered:  # the child ended: what it never answered is lost
            lost = self._sent - self._done
            self._done = self._sent
            self._answered.notify_all()
        if lost:
            self._on_failed(lost)


def main(argv: list[str] | None = None) -> int:
    """The exporting child: read batches of traces from stdin, write them, answer with counts."""
    args = sys.argv[1:] if argv is None else argv
    # Background work: under contention for the CPU, the server's requests come first.
    os.nice(_NICENESS)
    logging.basicConfig(level=logging.WARNING, format="opsloop.trace_export: %(levelname)s %(message)s")
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines would outlive a CLI run
    config = ExportConfig(**json.loads(args[0]))
    redact = None
    if config.privacy is not None:
        from opsloop.privacy import trace_redactor

        redact = trace_redactor(config.privacy)
    exporter = MLflowExporter(config, redact=redact)
    for line in sys.stdin.buffer:
        traces = json.loads(line)
        failed = 0
        try:
            exporter.export(traces)
        except Exception:
            log.warning("could not write %d traces to MLflow", len(traces), exc_info=True)
            failed = len(traces)
        try:
            sys.stdout.write(json.dumps({"done": len(traces), "failed": failed}) + "\n")
            sys.stdout.flush()
        except OSError:  # the parent is gone (a CLI run that returned): write the rest all the same
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
