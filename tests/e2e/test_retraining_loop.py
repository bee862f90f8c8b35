"""Retraining as a user meets it: `opsloop retrain` on a running server, and the loop closing alone.

Everything goes through public interfaces: traffic and labels through ``opsloop demo traffic``
(the HTTP API with a key), the run through ``opsloop retrain``, the result through MLflow's
own client, the audit log and ``/metrics``.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tests.e2e.server import OPSLOOP, Server, cli, environment

LOOP_DEADLINE_S = 600  # the goal: the loop closes within ten minutes on this machine


def _opsloop(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**environment(home), "COLUMNS": "400"}
    return subprocess.run([OPSLOOP, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _traffic(server: Server, *args: str) -> dict[str, Any]:
    done = _opsloop(server.home, "demo", "traffic", "--url", server.url, "--format", "json", *args)
    assert done.returncode == 0, done.stderr + done.stdout
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    env: dict[str, str] = getattr(request, "param", {})
    server = Server(tmp_path / "home", env=env)
    server.wait_for("/readyz", 200, seconds=180)
    yield server
    assert server.stop() == 0, "".join(server.output)


@pytest.mark.parametrize("server", [{"OPSLOOP_RETRAIN_TRIGGERS": "[]"}], indirect=True)
def test_a_manual_retrain_registers_a_challenger_mlflow_can_read(server: Server) -> None:
    _traffic(server, "--rows", "3000", "--shift", "--feedback", "--seed", "7")
    done = _opsloop(server.home, "retrain", "credit-risk", "--trials", "8", "--format", "json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "registered", result["reason"]
    assert result["version"] == 2 and result["parent_version"] == 1
    assert result["data"]["quality_score"] == 1.0 and result["data"]["hash"].startswith("sha256:")
    assert result["metrics"]["ci"][0] > 0 and result["metrics"]["challenger"] < result["metrics"]["champion"]
    assert result["experiment"] == "retrain-credit-risk-v2"
    assert "validate" in done.stderr and "trial 8/8" in done.stderr  # the steps as they went

    # The registry URI too: an earlier test in this process may have pointed MLflow's global one elsewhere.
    store = f"sqlite:///{server.home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    version = client.get_model_version("credit-risk", "2")
    assert {"data_hash", "parent_version", "code_version", "trigger", "training_run_id"} <= set(version.tags)
    assert version.tags["data_hash"] == result["data"]["hash"] and version.tags["trigger"] == "manual"
    card = Path(client.download_artifacts(version.tags["training_run_id"], "model_card.md", str(server.home)))
    text = card.read_text()
    assert "# Model card: credit-risk version 2" in text and result["data"]["hash"] in text
    # The server took the hand-off: the canary routes a share of the traffic to version 2.
    shown = cli(server.home, "experiments", "show", "retrain-credit-risk-v2", "--format", "json")
    assert json.loads(shown.stdout)["status"] == "running"
    assert server.metric('opsloop_retraining_runs_total{model="credit-risk",status="registered"}') == 1
    history = _opsloop(server.home, "retrain", "credit-risk", "--history", "--format", "json")
    runs = json.loads(history.stdout)
    assert [(r["status"], r["version"], r["trigger"]) for r in runs] == [("registered", 2, "manual")]


@pytest.mark.timeout(LOOP_DEADLINE_S + 300)  # the loop's own deadline, and the server's start and stop
def test_drift_retrains_and_the_canary_promotes_with_no_failed_request(tmp_path: Path) -> None:
    # The demo configuration: drift checks every 15 seconds, a minute's cool-down.
    env = {"OPSLOOP_DRIFT_CHECK_SECONDS": "15", "OPSLOOP_RETRAIN_COOLDOWN_SECONDS": "60"}
    server = Server(tmp_path / "home", env=env)
    try:
        server.wait_for("/readyz", 200, seconds=180)
        _traffic(server, "--rows", "500", "--feedback")
        started = time.monotonic()
        sent = failed = 0
        while time.monotonic() - started < LOOP_DEADLINE_S:
            report = _traffic(server, "--rows", "500", "--shift", "--feedback", "--rate", "100")
            sent, failed = sent + report["requests"], failed + report["failed"]
            # >= 2: a canary rolled back (a guardrail on a busy machine) is retrained after the
            # cool-down, and any retrained version that reaches champion closes the loop.
            if server.metric('opsloop_model_champion_version{model="credit-risk"}') >= 2:
                break
        elapsed = time.monotonic() - started
        print(f"first shifted request to promotion: {elapsed:.0f} s, {sent} requests, {failed} failed")
        assert server.metric('opsloop_model_champion_version{model="credit-risk"}') >= 2, "".join(
            server.output
        )
        assert failed == 0
        audit = cli(server.home, "audit", "tail", "-n", "200", "--json")
        entries = [json.loads(line) for line in audit.stdout.splitlines() if line.strip()]
        actions = [entry["action"] for entry in entries]
        for action in (
            "drift.detected",
            "retrain.start",
            "retrain.registered",
            "experiment.create",
            "model.promote",
        ):
            assert action in actions, actions
        start = next(entry for entry in entries if entry["action"] == "retrain.start")
        assert start["after"]["trigger"] in ("drift", "concept_drift") and start["actor"] == "system"
    finally:
        assert server.stop() == 0, "".join(server.output)
