"""Every metric a Grafana dashboard or an alert rule names is exported by a real ``opsloop serve``.

The server runs on loopback with its own OPSLOOP_HOME and the demo model. The test causes the
cheap events that create series (predictions, a bad request, feedback, drift checks, LLM calls
through a fallback and over a budget, an unknown model), scrapes ``GET /metrics`` and finds each
named metric with samples. The metrics that need a costly event are listed in NEEDS_AN_EVENT,
each with the end-to-end test that causes it; for those the scrape must at least declare them
(prometheus_client writes ``# HELP`` and ``# TYPE`` for a labelled metric with no series yet).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest

from tests.e2e.server import Server, free_port
from tests.unit.test_deploy_manifests import metrics_in_use

# Metrics whose first series needs an event this test does not cause, by what causes it.
NEEDS_AN_EVENT = {
    # A scheduled eval job's run over an ingested collection (tests/e2e/test_eval_schedule.py).
    "opsloop_eval_score": "eval run",
    "opsloop_eval_metric_failures": "eval run",
    "opsloop_eval_last_success_timestamp_seconds": "eval run",
    "opsloop_eval_runs_total": "eval run",
    "opsloop_eval_gate_passed": "eval run of a job with a baseline",
    # A running experiment needs a second model version (tests/e2e/test_experiments_cli.py).
    "opsloop_experiment_requests_total": "experiment",
    "opsloop_experiment_errors_total": "experiment",
    "opsloop_experiment_request_duration_seconds": "experiment",
    "opsloop_experiment_challenger_weight": "experiment",
    "opsloop_experiment_decisions_total": "experiment",
    "opsloop_experiment_shadow_dropped_total": "shadow experiment under overload",
    # The chat planner loads MiniLM first: about 20 s here (tests/e2e/test_chat_cli.py).
    "opsloop_chat_requests_total": "chat request",
    "opsloop_chat_approvals_total": "chat action approved or rejected",
    "opsloop_chat_tool_errors_total": "agent tool failing",
    # A retraining run that ended (tests/e2e/test_retraining_loop.py), read from the store.
    "opsloop_retraining_runs_total": "retraining run",
    "opsloop_retraining_running": "retraining run",
    "opsloop_retraining_last_run_timestamp_seconds": "retraining run",
    # A champion alias pointing at a version that cannot be loaded.
    "opsloop_model_load_failures_total": "broken model version",
}
_SERIES_SUFFIX = re.compile(r"_(bucket|count|sum)$")
SCRAPE_SECONDS = 60  # drift checks run every second once the models are up; CI's 2 cores are slow


def _llm_routes() -> str:
    """The default route, paid (a cost series), and one whose first backend refuses connections."""
    local = {"name": "local", "kind": "llamacpp", "max_concurrency": 1, "cost_per_token": 1e-6}
    dead = {
        "name": "dead",
        "kind": "openai",
        "base_url": f"http://127.0.0.1:{free_port()}/v1",
        "model": "none",
        "max_retries": 0,
    }
    return json.dumps({"smollm2": {"backends": [local]}, "flaky": {"backends": [dead, local]}})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "OPSLOOP_DRIFT_CHECK_SECONDS": "1",
        "OPSLOOP_DRIFT_MIN_ROWS": "5",  # the few predictions below get a verdict and scores
        "OPSLOOP_BUDGET_CACHE_SECONDS": "0",
        "OPSLOOP_LLM_ROUTES": _llm_routes(),
    }
    server = Server(tmp_path_factory.mktemp("dashboard-metrics") / "home", env=env)
    try:
        server.wait_for("/readyz", 200, seconds=300)
        yield server
    finally:
        assert server.stop() == 0, "".join(server.output)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _cause_events(server: Server) -> None:
    admin = _auth((server.home / "admin.key").read_text().strip())
    example = server.http.get("/models/credit-risk", headers=admin).json()["example"]
    body = {"instances": example["instances"] * 10}
    predicted = server.http.post("/predict/credit-risk", json=body, headers=admin)
    assert predicted.status_code == 200, predicted.text
    labels = [1] * len(predicted.json()["predictions"])
    feedback = {"feedback": [{"request_id": predicted.json()["request_id"], "labels": labels}]}
    assert server.http.post("/feedback/credit-risk", json=feedback, headers=admin).status_code == 200
    bad = server.http.post("/predict/credit-risk", json={"instances": [{"age": "old"}]}, headers=admin)
    assert bad.status_code == 422, bad.text

    created = server.http.post("/admin/keys", json={"tenant": "acme", "role": "user"}, headers=admin)
    acme = _auth(created.json()["key"])
    budget = {"tenant": "acme", "kind": "daily_tokens", "limit": 10}
    assert server.http.put("/admin/budgets", json=budget, headers=admin).status_code == 200
    chat = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    streamed = server.http.post("/v1/chat/completions", json={**chat, "stream": True}, headers=acme)
    assert streamed.status_code == 200, streamed.text  # admitted below the limit, then over it
    assert server.http.post("/v1/chat/completions", json=chat, headers=acme).status_code == 429
    fell_back = server.http.post("/v1/chat/completions", json={**chat, "model": "flaky"}, headers=admin)
    assert fell_back.status_code == 200, fell_back.text
    unknown = server.http.post("/v1/chat/completions", json={**chat, "model": "nope"}, headers=admin)
    assert unknown.status_code == 404


def _scrape(server: Server) -> tuple[set[str], set[str]]:
    """Metric names with samples (a histogram's by its own name), and those declared by ``# HELP``."""
    text = server.http.get("/metrics").text
    declared = set(re.findall(r"^# HELP (\S+)", text, re.M))
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    sampled = {_SERIES_SUFFIX.sub("", re.split(r"[{ ]", line, maxsplit=1)[0]) for line in samples}
    return sampled, declared


def test_every_metric_a_dashboard_or_rule_names_is_exported(server: Server) -> None:
    _cause_events(server)
    wanted = metrics_in_use() - set(NEEDS_AN_EVENT)
    deadline = time.monotonic() + SCRAPE_SECONDS
    sampled, declared = _scrape(server)
    while wanted - sampled and time.monotonic() < deadline:  # drift checks run in the background
        time.sleep(0.5)
        sampled, declared = _scrape(server)
    assert not wanted - sampled, f"named by a dashboard or rule, never exported: {sorted(wanted - sampled)}"
    undeclared = sorted(set(NEEDS_AN_EVENT) - declared)
    assert not undeclared, f"not even declared in /metrics: {undeclared}"


def test_the_allow_list_names_only_metrics_in_use() -> None:
    assert set(NEEDS_AN_EVENT) <= metrics_in_use(), "an allow-listed metric no dashboard or rule names"
