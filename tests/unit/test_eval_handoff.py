"""What the CLI and the server exchange for ``eval run``: a data set's items, reports, the HTTP calls."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from evals.dataset import DatasetError, dataset_from_items, load_dataset
from evals.gate import GateReport, MetricComparison
from evals.results import MetricSummary
from evals.schedule import JobStatus
from opsloop.errors import BackendError, NotFoundError
from serving.cli.remote import ServerRag
from serving.routers.evals import EvalRunPublic

GOLDEN = Path(__file__).resolve().parents[2] / "evals" / "datasets" / "docs_golden.jsonl"


def test_items_sent_as_parsed_keep_the_data_sets_hash() -> None:
    local = load_dataset(GOLDEN).subset(limit=7)
    sent = json.loads(json.dumps([item.to_dict() for item in local.items]))
    received = dataset_from_items(sent, name=local.name, path=local.path)
    assert received.sha256 == local.sha256
    # the items are the same; only their line numbers are now their positions
    assert received.items == tuple(replace(item, line=n) for n, item in enumerate(local.items, start=1))


def test_a_bad_item_is_named_by_its_number() -> None:
    with pytest.raises(DatasetError, match=r"line 2: field 'reference'"):
        dataset_from_items(
            [{"question": "a?", "reference": "b", "reference_sources": ["x.md"]}, {}], name="x"
        )


SUMMARY = MetricSummary("hit_rate", 0.8, 0.6, 1.0, 5, 1, 0, 0, {"pipeline_error": 1})
REPORT = GateReport(
    [MetricComparison("mrr", 5, 0.5, 0.7, -0.2, -0.3, -0.1, True, 0.0, "regressed")], 0.95, 5, 0, 1
)
RUN = EvalRunPublic.model_validate(
    {
        "run_id": "abc",
        "dataset": "docs_golden",
        "samples": 5,
        "resumed_samples": 0,
        "seconds": 1.25,
        "params": {"prompt": "1", "top_k": 3},
        "summaries": {"hit_rate": SUMMARY},
        "gate": {"baseline_run": "base", **REPORT.to_dict()},
        "cost_usd": 0.0,
        "baseline_ran": False,
    }
)


def test_a_run_survives_json_with_its_summaries_and_gate() -> None:
    back = EvalRunPublic.model_validate_json(RUN.model_dump_json())
    assert back == RUN
    assert back.summaries["hit_rate"] == SUMMARY
    assert back.gate is not None and back.gate.report() == REPORT and not back.gate.passed
    assert back.gate.regressions == ["mrr"]


def _server(handler: httpx.MockTransport) -> ServerRag:
    return ServerRag("http://opsloop.test", "token", tenant="default", actor="cli:test", transport=handler)


def _task(state: str = "running", done: int = 0, **more: Any) -> dict[str, Any]:
    """A task as ``GET /admin/evals/tasks/{id}`` answers it."""
    return {
        "id": "t1", "state": state, "tenant": "default", "actor": "cli:test", "dataset": "docs_golden",
        "samples": 5, "stage": "eval", "done": done, "total": 5, "notices": [],
        "started_at": "2026-12-01T10:00:00Z", "seconds": 1.0, **more,
    }  # fmt: skip


def test_run_eval_starts_the_run_polls_its_progress_and_returns_the_run_as_a_local_run_does() -> None:
    seen: list[httpx.Request] = []
    polls = iter([_task(done=2), _task(done=4), _task("finished", 5, result=RUN.model_dump(mode="json"))])

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            return httpx.Response(202, json=_task())
        return httpx.Response(200, json=next(polls))

    shown: list[tuple[str, int, int]] = []
    with _server(httpx.MockTransport(handle)) as server:
        done = server.run_eval(
            {"collection": "docs"},
            timeout=60,
            poll_seconds=0.01,
            progress=lambda task: shown.append((task.state, task.done, task.total)),
        )
    assert done == RUN
    assert seen[0].url.path == "/admin/evals/runs" and seen[0].url.params["wait"] == "false"
    assert json.loads(seen[0].content) == {"collection": "docs"}
    assert [r.url.path for r in seen[1:]] == ["/admin/evals/tasks/t1"] * 3
    assert shown == [("running", 0, 5), ("running", 2, 5), ("running", 4, 5), ("finished", 5, 5)]


def test_trigger_eval_returns_the_jobs_status() -> None:
    status = {"name": "nightly", "cron": "0 3 * * *", "next_run": "2026-12-02T03:00:00Z", "last_run": None}
    status |= {"last_outcome": "ok", "last_run_id": "abc", "last_error": None, "running": False}

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/admin/evals/jobs/nightly/trigger"
        return httpx.Response(200, json=status)

    with _server(httpx.MockTransport(handle)) as server:
        ran = server.trigger_eval("nightly")
    assert isinstance(ran, JobStatus) and (ran.last_outcome, ran.last_run_id) == ("ok", "abc")
    assert ran.next_run is not None and ran.next_run.hour == 3


def test_run_eval_says_the_server_goes_on_after_the_timeout_and_passes_its_errors() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        return httpx.Response(202 if request.method == "POST" else 200, json=_task())

    with _server(httpx.MockTransport(slow)) as server, pytest.raises(BackendError, match="--timeout") as err:
        server.run_eval({}, timeout=0.05, poll_seconds=0.01)
    assert err.value.details["task"] == "t1"

    def refused(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"message": "no collection nope", "details": {}}})

    with _server(httpx.MockTransport(refused)) as server, pytest.raises(NotFoundError, match="nope"):
        server.run_eval({}, timeout=5)

    error = {"type": "not_found", "message": "no prompt version 9", "details": {"version": 9}, "status": 404}

    def failed(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(202, json=_task())
        return httpx.Response(200, json=_task("failed", error=error))

    with _server(httpx.MockTransport(failed)) as server, pytest.raises(NotFoundError, match="version 9"):
        server.run_eval({}, timeout=5, poll_seconds=0.01)
