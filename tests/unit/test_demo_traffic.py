"""``opsloop demo traffic``'s parts: JSON rows, pacing, percentiles, the send loop and its report.

The send loop runs against an ``httpx.MockTransport`` standing in for the server's two routes;
the command against a real server is in ``tests/e2e/test_demo_traffic.py``.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from opsloop.errors import InvalidInputError
from serving.demo_traffic import (
    CONCURRENCY,
    FEEDBACK_BATCH,
    GIVE_UP_AFTER,
    Pacer,
    Run,
    Tally,
    json_rows,
    percentile,
    report_lines,
    run_failed,
    send,
    summary,
)


def test_json_rows_hold_only_json_native_values() -> None:
    frame = pd.DataFrame(
        {
            "n": np.array([1, 2, 3], dtype="int64"),
            "x": np.array([0.5, np.nan, np.inf]),
            "s": pd.Series(["a", "b", None], dtype="str"),
            "maybe": pd.array([1, None, 3], dtype="Int64"),
            "flag": np.array([True, False, True]),
            "other": [1, 2, 3],
        }
    )
    rows = json_rows(frame, ["n", "x", "s", "maybe", "flag"])
    assert rows == [
        {"n": 1, "x": 0.5, "s": "a", "maybe": 1, "flag": True},
        {"n": 2, "x": None, "s": "b", "maybe": None, "flag": False},
        {"n": 3, "x": None, "s": None, "maybe": 3, "flag": True},
    ]
    assert [type(v) for v in rows[0].values()] == [int, float, str, int, bool]
    assert json.loads(json.dumps(rows, allow_nan=False)) == rows


def test_json_rows_name_a_column_without_a_json_form() -> None:
    frame = pd.DataFrame({"when": pd.to_datetime(["2026-01-01"])})
    with pytest.raises(InvalidInputError, match="column 'when' holds Timestamp") as caught:
        json_rows(frame, ["when"])
    assert caught.value.details["field"] == "when"


def test_json_rows_of_the_demo_data_match_its_declared_types() -> None:
    from workflows.demo import FEATURE_NAMES, FEATURES, LABEL, generate_credit_data

    frame = generate_credit_data(100, seed=3, shift=True)
    rows = json_rows(frame, [*FEATURE_NAMES, LABEL])
    python_types = {"long": int, "double": float, "string": str}
    for row in rows:
        assert list(row) == [*FEATURE_NAMES, LABEL]
        assert all(type(row[f.name]) is python_types[f.dtype] for f in FEATURES)
        assert row[LABEL] in (0, 1)


def test_pacer_without_a_rate_never_waits() -> None:
    pacer = Pacer(None)
    assert [pacer.delay(5.0) for _ in range(3)] == [0.0, 0.0, 0.0]


def test_pacer_spaces_starts_and_gives_no_burst_after_a_pause() -> None:
    pacer = Pacer(10)
    assert [round(pacer.delay(0.0), 9) for _ in range(3)] == [0.0, 0.1, 0.2]
    # The caller slept until 0.2 and then paused for 5 s: the next start goes now, the one
    # after it a full interval later, not at once to make up for the pause.
    assert pacer.delay(5.2) == 0.0
    assert pacer.delay(5.2) == pytest.approx(0.1)


@pytest.mark.parametrize("rate", [0.0, -1.0, float("inf"), float("nan")])
def test_pacer_refuses_a_rate_that_is_not_positive(rate: float) -> None:
    with pytest.raises(InvalidInputError, match="rate must be a positive number"):
        Pacer(rate)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert (
        percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0 and percentile(values, 100) == 100
    )
    assert percentile([7.0], 1) == 7.0 and percentile([], 50) is None
    with pytest.raises(InvalidInputError):
        percentile(values, 0)


class FakeServer:
    """The predict and feedback routes, as an opsloop server answers them, on a MockTransport.

    Instances whose ``n`` is in ``fail_503`` get an opsloop 503, in ``refuse`` no connection.
    """

    def __init__(
        self, *, fail_503: frozenset[int] = frozenset(), refuse: frozenset[int] = frozenset()
    ) -> None:
        self.fail_503, self.refuse = fail_503, refuse
        self.lock = threading.Lock()
        self.units: Counter[str] = Counter()
        self.predicted: dict[str, int] = {}  # request id -> instances
        self.feedback_sizes: list[int] = []
        self.labels: dict[str, list[Any]] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if request.url.path == "/predict/credit-risk":
            n = body["instances"][0]["n"]
            if n in self.refuse:
                raise httpx.ConnectError("connection refused", request=request)
            if n in self.fail_503:
                error = {"type": "backend_error", "message": "model not loaded", "details": {}}
                return httpx.Response(503, json={"error": error})
            with self.lock:
                self.units[request.headers["X-Opsloop-Unit"]] += 1
                request_id = f"r{n}"
                self.predicted[request_id] = len(body["instances"])
            variant = "canary" if n % 2 else "champion"
            answer = {"predictions": [0], "model": "credit-risk", "version": 2 - n % 2, "variant": variant}
            return httpx.Response(200, json={**answer, "request_id": request_id})
        assert request.url.path == "/feedback/credit-risk"
        with self.lock:
            self.feedback_sizes.append(len(body["feedback"]))
            attached: list[str] = []
            unknown: list[str] = []
            for item in body["feedback"]:
                known = item["request_id"] in self.predicted
                (attached if known else unknown).append(item["request_id"])
                self.labels[item["request_id"]] = item["labels"]
        return httpx.Response(200, json={"attached": attached, "unknown": unknown, "rejected": {}})


def _bodies(count: int, batch: int = 1) -> list[list[dict[str, Any]]]:
    return [[{"n": i} for _ in range(batch)] for i in range(count)]


def test_send_counts_answers_by_variant_and_sends_labels_in_batches_of_500() -> None:
    server = FakeServer()
    count = 2 * FEEDBACK_BATCH + 1
    labels = [[i % 2, 1] for i in range(count)]
    sleeps: list[float] = []
    with httpx.Client(transport=httpx.MockTransport(server), base_url="http://opsloop") as http:
        tally = send(
            http,
            "credit-risk",
            _bodies(count, batch=2),
            labels,
            units=7,
            pacer=Pacer(None),
            sleep=sleeps.append,
        )
    assert (tally.requests, tally.instances, tally.ok, tally.failed) == (count, 2 * count, count, 0)
    assert tally.served == {(1, "canary"): FEEDBACK_BATCH, (2, "champion"): FEEDBACK_BATCH + 1}
    assert len(tally.latencies) == count and len(sleeps) == count
    assert set(server.units) == {f"unit-{i}" for i in range(7)}
    assert server.units["unit-0"] == len(range(0, count, 7))
    assert sorted(server.feedback_sizes) == [1, FEEDBACK_BATCH, FEEDBACK_BATCH]
    assert server.labels == {f"r{i}": labels[i] for i in range(count)}
    assert tally.feedback is not None
    assert (tally.feedback.calls, tally.feedback.attached, tally.feedback.labels) == (3, count, 2 * count)
    assert tally.stopped is None


def test_send_counts_failures_by_kind_and_sends_labels_only_for_answers() -> None:
    server = FakeServer(fail_503=frozenset({3, 4}), refuse=frozenset({5}))
    with httpx.Client(transport=httpx.MockTransport(server), base_url="http://opsloop") as http:
        tally = send(http, "credit-risk", _bodies(10), [[1]] * 10, units=100, pacer=Pacer(None))
    assert (tally.ok, tally.failed) == (7, 3)
    assert tally.failures == {"HTTP 503": 2, "ConnectError": 1}
    # Which failure comes back first depends on the threads; each kind keeps its message.
    assert tally.first_error in ("HTTP 503: model not loaded", "ConnectError: connection refused")
    assert tally.feedback is not None and tally.feedback.attached == 7
    assert set(server.labels) == {f"r{i}" for i in range(10) if i not in (3, 4, 5)}


def test_send_stops_when_the_server_stops_answering() -> None:
    server = FakeServer(refuse=frozenset(range(1000)))
    with httpx.Client(transport=httpx.MockTransport(server), base_url="http://opsloop") as http:
        tally = send(http, "credit-risk", _bodies(1000), None, units=1, pacer=Pacer(None))
    assert tally.stopped is not None and f"{GIVE_UP_AFTER} requests in a row" in tally.stopped
    assert GIVE_UP_AFTER <= tally.requests < GIVE_UP_AFTER + 2 * CONCURRENCY
    assert tally.ok == 0 and tally.feedback is None


def test_summary_and_report_of_a_run_with_failures() -> None:
    tally = Tally(requests=4, instances=4, ok=3, latencies=[0.01, 0.02, 0.03])
    tally.failures["HTTP 503"] = 1
    tally.first_error = "HTTP 503: model not loaded"
    tally.served[(1, "champion")] = 3
    run = Run(
        "credit-risk",
        "http://127.0.0.1:8000",
        seed=42,
        shift=True,
        rows=4,
        batch=1,
        units=10,
        rate_limit=None,
    )
    report = summary(run, tally, elapsed=2.0)
    assert report["latency_ms"] == {"p50": 20.0, "p99": 30.0} and report["rate_rps"] == 2.0
    assert report["variants"] == [{"version": 1, "variant": "champion", "answers": 3}]
    assert report["failures"] == {"HTTP 503": 1} and report["feedback"] is None
    assert json.loads(json.dumps(report)) == report
    assert run_failed(report)
    text = "\n".join(report_lines(report))
    assert "failed 1" in text and "HTTP 503: model not loaded" in text and "--seed 42" in text
    assert "shift yes" in text


def test_a_run_whose_labels_did_not_all_attach_failed() -> None:
    tally = Tally(requests=2, instances=2, ok=2)
    tally.served[(1, "champion")] = 2
    run = Run("credit-risk", "http://x", seed=1, shift=False, rows=2, batch=1, units=1, rate_limit=5.0)
    report = summary(run, tally, elapsed=1.0)
    assert not run_failed(report | {"feedback": {"unknown": 0, "rejected": 0, "unsent": 0}})
    assert run_failed(report | {"feedback": {"unknown": 1, "rejected": 0, "unsent": 0}})
