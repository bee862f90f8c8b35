"""Traces in MLflow: one per ``/query``, gateway call and agent run, found by request id with MLflow's client.

Real parts: the app and its lifespan, the bundled docs ingested at start-up into Qdrant Edge,
MiniLM, SmolLM2 in llama.cpp through the gateway, the offline chat planner, and MLflow's tracing
on the embedded SQLite store, read back with ``mlflow.search_traces`` as a user would. The OTLP
export runs in a child process (MLflow builds its tracer provider once per process) against a
collector on loopback that decodes what it is sent with OpenTelemetry's own protobuf classes.
"""

from __future__ import annotations

import http.server
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import mlflow
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from mlflow.entities import Trace

from opsloop.auth import system_principal
from opsloop.settings import load_settings
from opsloop.trace_export import ExportConfig, ProcessExporter
from opsloop.tracing import Tracer, TraceRecord
from serving.app import create_app
from serving.platform import Platform, bundled_docs
from tests.integration.ready import wait_ready

QUESTION = "How do I revoke an API key?"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Platform, dict[str, str]]]:
    docs = tmp_path_factory.mktemp("docs")
    shutil.copy(bundled_docs() / "auth.md", docs / "auth.md")
    home = tmp_path_factory.mktemp("home")
    settings = load_settings(
        home=home,
        bootstrap_demo=False,
        bootstrap_docs=True,
        docs_path=docs,
        drift_check_seconds=0,
        tracing=True,
    )
    app: FastAPI = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client, 300)
        key = settings.admin_key_path.read_text().strip()
        yield client, app.state.platform, {"Authorization": f"Bearer {key}"}


def traces_of(platform: Platform, request_id: str) -> list[Trace]:
    """What a user's MLflow client lists for ``request_id`` in the traces experiment."""
    assert platform.tracer.flush(30)
    mlflow.set_tracking_uri(platform.settings.tracking_uri)
    experiment = mlflow.get_experiment_by_name(platform.settings.tracing_experiment)
    assert experiment is not None
    found: list[Trace] = mlflow.search_traces(
        locations=[experiment.experiment_id],
        filter_string=f"tag.`opsloop.request_id` = '{request_id}'",
        return_type="list",
    )
    return found


def spans_by_name(trace: Trace) -> dict[str, Any]:
    return {span.name: span for span in trace.data.spans}


def test_a_query_is_one_trace_with_retrieve_embed_prompt_and_generate_spans_linked_to_its_request_id(
    served: tuple[TestClient, Platform, dict[str, str]],
) -> None:
    client, platform, auth = served
    response = client.post("/query", json={"question": QUESTION, "collection": "docs"}, headers=auth)
    assert response.status_code == 200, response.text
    request_id = response.headers["x-request-id"]
    assert response.json()["request_id"] == request_id

    (trace,) = traces_of(platform, request_id)
    assert trace.info.tags["opsloop.tenant"] == "default" and trace.info.tags["mlflow.traceName"] == "query"
    assert trace.info.request_preview and QUESTION in trace.info.request_preview
    spans = spans_by_name(trace)
    assert {"query", "retrieve", "embed", "search", "prompt", "generate", "local"} <= set(spans)
    root = spans["query"]
    assert root.parent_id is None and root.inputs["question"] == QUESTION
    assert root.outputs["answer"] == response.json()["answer"]
    assert spans["retrieve"].parent_id == root.span_id
    assert spans["embed"].parent_id == spans["search"].parent_id == spans["retrieve"].span_id
    assert spans["retrieve"].outputs[0]["metadata"]["source"] == "auth.md"
    generate = spans["generate"]
    assert generate.parent_id == root.span_id and generate.span_type == "CHAT_MODEL"
    usage = generate.attributes["mlflow.chat.tokenUsage"]
    assert (
        usage["input_tokens"] > 0 and usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    )
    assert generate.attributes["opsloop.cost_usd"] == 0.0  # the embedded model is free
    assert QUESTION in generate.inputs["messages"][0]["content"]
    assert spans["local"].parent_id == generate.span_id  # the backend that answered
    for span in trace.data.spans:  # every span lies within the query's time
        assert root.start_time_ns <= span.start_time_ns <= span.end_time_ns <= root.end_time_ns


def test_gateway_calls_streamed_or_not_are_traces_of_their_own(
    served: tuple[TestClient, Platform, dict[str, str]],
) -> None:
    client, platform, auth = served
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
    plain = client.post("/v1/chat/completions", json=body, headers=auth)
    assert plain.status_code == 200, plain.text
    with client.stream(
        "POST", "/v1/chat/completions", json=body | {"stream": True}, headers=auth
    ) as streamed:
        assert streamed.status_code == 200
        streamed.read()

    (trace,) = traces_of(platform, plain.headers["x-request-id"])
    root = trace.data.spans[0]
    assert root.name == "chat.completions" and root.parent_id is None
    assert root.outputs["content"] == plain.json()["choices"][0]["message"]["content"]
    assert (
        root.attributes["mlflow.chat.tokenUsage"]["output_tokens"]
        == plain.json()["usage"]["completion_tokens"]
    )
    assert root.attributes["route"] == "smollm2" and root.attributes["streamed"] is False

    (stream_trace,) = traces_of(platform, streamed.headers["x-request-id"])
    streamed_root = stream_trace.data.spans[0]
    assert streamed_root.attributes["streamed"] is True and streamed_root.outputs["content"]


def test_a_failed_call_is_a_failed_trace_and_a_broken_trace_store_fails_no_request(
    served: tuple[TestClient, Platform, dict[str, str]],
) -> None:
    client, platform, auth = served
    missing = client.post("/query", json={"question": QUESTION, "collection": "nowhere"}, headers=auth)
    assert missing.status_code == 404
    (failed,) = traces_of(platform, missing.headers["x-request-id"])
    assert failed.info.state == "ERROR"
    assert "no collection 'nowhere'" in failed.data.spans[0].status.description

    class Broken:
        def export(self, traces: list[TraceRecord]) -> None:
            raise OSError("the trace store is full")

    exporter, platform.tracer.exporter = platform.tracer.exporter, Broken()
    failures = platform.metrics.trace_export_failures._value.get()
    try:
        answered = client.post("/query", json={"question": QUESTION, "collection": "docs"}, headers=auth)
        assert answered.status_code == 200, answered.text
        platform.tracer.flush(30)
    finally:
        platform.tracer.exporter = exporter
    assert platform.metrics.trace_export_failures._value.get() == failures + 1
    assert traces_of(platform, answered.headers["x-request-id"]) == []
    metrics = client.get("/metrics").text
    assert "opsloop_trace_export_failures_total" in metrics


def test_an_agent_run_is_a_trace_with_a_span_per_tool_call(
    served: tuple[TestClient, Platform, dict[str, str]],
) -> None:
    client, platform, auth = served
    reply = client.post("/chat", json={"message": "why did LLM spend go up this week?"}, headers=auth)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    (trace,) = traces_of(platform, body["thread_id"])
    spans = trace.data.spans
    assert spans[0].name == "agent.run" and spans[0].span_type == "AGENT"
    assert spans[0].outputs["status"] == body["status"]
    tools = [span.name for span in spans if span.span_type == "TOOL"]
    assert tools == [f"tool {step['tool']}" for step in body["plan"]["steps"] if step["status"] != "skipped"]


class _Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP collector: keeps the span names of every export request it is sent."""

    names: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        request = ExportTraceServiceRequest()
        request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.names.extend(span.name for span in scope.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


def test_an_otlp_endpoint_sends_the_spans_to_a_collector_as_well(tmp_path: Path) -> None:
    _Collector.names = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    exporter = ProcessExporter(ExportConfig(uri, "otlp-traces", otlp_endpoint=endpoint))
    tracer = Tracer(exporter)
    try:
        with tracer.trace("query", "CHAIN", request_id="otlp-1", tenant="default") as root:
            root.child("retrieve", "RETRIEVER").end()
        assert tracer.flush(120)
    finally:
        tracer.close()
        server.shutdown()
    assert sorted(_Collector.names) == ["query", "retrieve"]
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name("otlp-traces")
    assert experiment is not None
    assert len(mlflow.search_traces(locations=[experiment.experiment_id], return_type="list")) == 1


def test_the_exporting_child_is_started_again_after_it_dies(tmp_path: Path) -> None:
    failed: list[int] = []
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exporter = ProcessExporter(ExportConfig(uri, "restarts"), on_failed=failed.append)
    tracer = Tracer(exporter)
    try:
        tracer.start("first", "CHAIN", request_id="1", tenant="t").end()
        assert tracer.flush(120)
        child = exporter._child
        assert child is not None
        child.kill()
        child.wait()
        time.sleep(5.5)  # past the restart guard
        tracer.start("second", "CHAIN", request_id="2", tenant="t").end()
        assert tracer.flush(120)
    finally:
        tracer.close()
    assert exporter._child is None and child.returncode != 0
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name("restarts")
    assert experiment is not None
    found = mlflow.search_traces(locations=[experiment.experiment_id], return_type="list")
    assert sorted(t.info.tags["opsloop.request_id"] for t in found) == ["1", "2"]
    assert failed == []  # the child died between batches: nothing was lost


EMAIL, CARD = "jane.doe@example.com", "4111 1111 1111 1111"


def test_an_email_and_a_card_number_in_a_question_are_in_no_table_and_no_trace(
    served: tuple[TestClient, Platform, dict[str, str]],
) -> None:
    client, platform, auth = served
    question = f"My card {CARD} was charged twice, write to {EMAIL}. How do I revoke an API key?"
    response = client.post("/query", json={"question": question, "collection": "docs"}, headers=auth)
    assert response.status_code == 200, response.text
    request_id = response.headers["x-request-id"]
    (trace,) = traces_of(platform, request_id)
    platform.queries.flush()
    platform.ledger.flush()

    (logged,) = [
        q for q in platform.queries.recent(system_principal("default")) if q.request_id == request_id
    ]
    assert "<EMAIL_ADDRESS_1>" in logged.question and "<CREDIT_CARD_1>" in logged.question
    assert "How do I revoke an API key?" in logged.question  # the rest of the question is kept
    assert trace.data.spans[0].inputs["question"] == logged.question
    prompt = next(s for s in trace.data.spans if s.name == "generate").inputs["messages"][0]["content"]
    assert "<EMAIL_ADDRESS_1>" in prompt

    # Nowhere in either database, in any table or column, in any form the values were written.
    card_digits = CARD.replace(" ", "")
    for database in (platform.settings.home / "opsloop.db", platform.settings.home / "mlflow.db"):
        with sqlite3.connect(database) as connection:
            dump = "\n".join(connection.iterdump())
        for secret in (EMAIL, CARD, card_digits):
            assert secret not in dump, f"{secret} found in {database.name}"
