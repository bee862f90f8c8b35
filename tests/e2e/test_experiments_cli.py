"""Canaries as a user runs them: start one with the CLI, and let `serve` decide.

A model's challenger wraps the champion and fails for renters (an MLflow pyfunc model in a
folder, registered with ``opsloop models register``); an LLM route's challenger is a route
whose backend is a dead loopback port. Under steady traffic the server's own decider rolls
each back: no caller sees a failed request, nothing moves, and ``experiments show`` says why.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from tests.e2e.server import Server, cli
from tests.integration.challengers import save_wrapper
from tests.integration.llama_server import free_port
from workflows.demo import FEATURE_NAMES, generate_credit_data


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Settings with the default route and ``broken``, a route no backend of which answers."""
    path = tmp_path_factory.mktemp("config") / "opsloop.yaml"
    dead = f"http://127.0.0.1:{free_port()}/v1"
    path.write_text(
        "llm_routes:\n"
        "  smollm2: [{name: local, kind: llamacpp, max_concurrency: 1}]\n"
        f"  broken: [{{name: gone, kind: openai, base_url: '{dead}', model: x, max_retries: 0}}]\n"
    )
    return str(path)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, config: str) -> Iterator[Server]:
    env = {"OPSLOOP_DRIFT_CHECK_SECONDS": "0", "OPSLOOP_CONFIG": config}
    server = Server(tmp_path_factory.mktemp("experiments") / "home", env=env)
    server.wait_for("/readyz", 200, seconds=180)
    yield server
    server.stop()


def _json(server: Server, *args: str) -> object:
    done = cli(server.home, *args, "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_failing_canary_is_rolled_back_by_the_server(server: Server, tmp_path: Path) -> None:
    # Both: an earlier test in this process may have pointed MLflow's registry elsewhere.
    mlflow.set_tracking_uri(f"sqlite:///{server.home / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{server.home / 'mlflow.db'}")
    folder = save_wrapper(
        "models:/credit-risk/1", tmp_path / "renters-fail", fail_when=("home_ownership", "rent")
    )
    registered = cli(server.home, "models", "register", "credit-risk", "--from", str(folder))
    assert registered.returncode == 0, registered.stderr
    admin = {"Authorization": f"Bearer {(server.home / 'admin.key').read_text().strip()}"}

    created = _json(
        server, "experiments", "create", "renters", "--model", "credit-risk", "--challenger", "2",
        "--steps", "20,50,100", "--min-samples", "100",
    )  # fmt: skip
    assert isinstance(created, dict) and created["status"] == "running" and created["kind"] == "canary"

    applicants = generate_credit_data(2000, seed=7)[list(FEATURE_NAMES)].to_dict(orient="records")
    statuses: Counter[int] = Counter()
    variants: Counter[str] = Counter()
    stop = threading.Event()

    def traffic() -> None:  # steady traffic, one unit per applicant, until the experiment ends
        for i in range(20_000):
            if stop.is_set():
                return
            applicant = {k: (v.item() if hasattr(v, "item") else v) for k, v in applicants[i % 2000].items()}
            response = server.http.post(
                "/predict/credit-risk",
                json={"instances": [applicant]},
                headers={**admin, "X-Opsloop-Unit": f"applicant-{i % 2000}"},
            )
            statuses[response.status_code] += 1
            if response.status_code == 200:
                variants[response.headers["X-Opsloop-Variant"]] += 1

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while (shown := server.http.get("/admin/experiments/renters", headers=admin).json())[
            "status"
        ] == "running":
            assert time.monotonic() < deadline, shown
            time.sleep(0.5)
    finally:
        stop.set()
        thread.join(timeout=60)

    assert shown["status"] == "rolled_back", shown
    assert set(statuses) == {200}, statuses  # the champion answered whatever the challenger failed
    assert variants["challenger"] > 0 and variants["champion"] > variants["challenger"]
    assert "error_rate" in shown["decision"]["reason"]

    report = _json(server, "experiments", "show", "renters")
    assert isinstance(report, dict)
    assert {"name", "kind", "target", "status", "step", "variants", "tests", "decision"} <= set(report)
    champion, challenger = report["variants"]
    assert (champion["name"], champion["version"], challenger["version"]) == ("champion", "1", "2")
    assert challenger["errors"] > 0 and champion["errors"] == 0
    assert any(t["kind"] == "guardrail" and t["status"] == "breach" for t in report["tests"])
    listed = _json(server, "experiments", "list")
    assert isinstance(listed, list) and listed[0]["name"] == "renters"

    assert server.http.get("/models/credit-risk", headers=admin).json()["champion"] == 1  # never moved
    assert server.metric('opsloop_experiment_decisions_total{action="rollback",experiment="renters"}') == 1
    audit = cli(server.home, "audit", "tail", "-n", "20")
    assert "experiment.rollback" in audit.stdout and "decider" in audit.stdout


def test_a_route_canary_started_from_the_cli_is_rolled_back_and_every_call_is_answered(
    server: Server, config: str
) -> None:
    created = _json(
        server, "--config", config, "experiments", "create", "dead-route", "--route", "smollm2",
        "--challenger-route", "broken", "--steps", "50,100",
    )  # fmt: skip
    assert isinstance(created, dict) and created["target"] == {"kind": "route", "name": "smollm2"}
    admin = {"Authorization": f"Bearer {(server.home / 'admin.key').read_text().strip()}"}
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + 120
    for i in range(2000):  # steady calls, one unit each, until the server's decider acts
        response = server.http.post(
            "/v1/chat/completions",
            json={"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
            headers={**admin, "X-Opsloop-Unit": f"user-{i}"},
        )
        statuses[response.status_code] += 1
        if i % 20 == 19:
            shown = server.http.get("/admin/experiments/dead-route", headers=admin).json()
            if shown["status"] != "running" or time.monotonic() > deadline:
                break
    assert shown["status"] == "rolled_back", shown
    assert set(statuses) == {200}, statuses  # the champion route answered what the challenger failed
    report = _json(server, "--config", config, "experiments", "show", "dead-route")
    assert isinstance(report, dict) and "error_rate" in report["decision"]["reason"]
    champion, challenger = report["variants"]
    assert challenger["requests"] == challenger["errors"] > 0 and champion["errors"] == 0
