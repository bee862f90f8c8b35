"""Nothing blocks the server's event loop: an eval run, a drift check, a promotion, an ingestion.

One real app (the demo model as champion, the bundled auth doc ingested, a scheduled eval job)
watched by ``tests/integration/loop_watch.py``: a heartbeat on its loop and a watchdog thread,
so a stall over 100 ms fails the test with the stack of the call that held the loop, and so
does any call to MLflow's client or store seen on the loop, however short. A synchronous
MLflow, database or model call made from an ``async def`` is what this catches: while it runs,
no other request is answered.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from opsloop.settings import load_settings
from serving.app import create_app
from serving.platform import Platform, bundled_docs, cli_principal
from tests.integration.challengers import save_wrapper
from tests.integration.loop_watch import Stall, loop_stalls
from workflows.demo import FEATURE_NAMES, generate_credit_data
from workflows.registration import register

MODEL = "credit-risk"
GOLDEN = Path(__file__).parents[2] / "evals" / "datasets" / "docs_golden.jsonl"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    docs = tmp_path_factory.mktemp("docs")
    shutil.copy(bundled_docs() / "auth.md", docs / "auth.md")
    settings = load_settings(
        home=tmp_path_factory.mktemp("loop") / "home",
        bootstrap_docs=True,
        docs_path=docs,
        drift_check_seconds=3600,  # the test runs the check itself, as the scheduler would
        experiment_decide_seconds=0,
        experiment_poll_seconds=0.1,
        eval_jobs=[
            {
                "name": "nightly",
                "cron": "0 3 * * *",
                "dataset": str(GOLDEN),
                "collection": "docs",
                "max_answer_tokens": 8,
                "limit": 4,
            },
        ],
    )
    return create_app(settings)


@pytest.fixture(scope="module")
def docs_ready(client: TestClient, platform: Platform) -> None:
    deadline = time.monotonic() + 300
    while platform.components.get("rag") == "starting" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert platform.components.get("rag") == "ready", platform.components


def _applicants(count: int) -> list[dict[str, Any]]:
    frame = generate_credit_data(max(count, 100), seed=7)[list(FEATURE_NAMES)].head(count)
    return frame.to_dict(orient="records")  # native int, float, str


@pytest.fixture
def loop(client: TestClient) -> Iterator[list[Stall]]:
    with loop_stalls(client, threshold_s=0.1) as stalls:
        yield stalls
    assert not stalls, "the event loop was blocked:\n" + "\n".join(map(str, stalls))


def test_an_eval_run(
    client: TestClient, operator: dict[str, str], docs_ready: None, loop: list[Stall]
) -> None:
    triggered = client.post("/admin/evals/jobs/nightly/trigger", headers=operator)
    assert triggered.status_code == 200, triggered.text
    assert triggered.json()["last_outcome"] in {"ok", "gate_failed"}, triggered.json()


def test_a_drift_check(
    client: TestClient, platform: Platform, operator: dict[str, str], loop: list[Stall]
) -> None:
    answered = client.post(f"/predict/{MODEL}", json={"instances": _applicants(50)}, headers=operator)
    assert answered.status_code == 200, answered.text
    platform.predictions.flush()
    check = platform.periodic_jobs(lambda: [MODEL])["drift-checks"]
    assert client.portal is not None
    client.portal.call(check.work)  # as the scheduler fires it, on the server's loop


def test_an_ingestion(
    client: TestClient, operator: dict[str, str], docs_ready: None, loop: list[Stall]
) -> None:
    text = "\n\n".join(
        f"Runbook step {i}: restart the worker pool and check the queue depth." for i in range(200)
    )
    uploaded = client.post(
        "/collections/runbooks/documents",
        files=[("files", ("runbook.md", text.encode(), "text/markdown"))],
        headers=operator,
    )
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["chunks_written"] > 0, uploaded.json()


def test_a_promotion(
    client: TestClient, platform: Platform, operator: dict[str, str], tmp_path: Path, loop: list[Stall]
) -> None:
    champion = platform.registry.get_alias(MODEL, "champion").version
    folder = save_wrapper(f"models:/{MODEL}/{champion}", tmp_path / "challenger")
    version = register(cli_principal(), platform.registry, platform.audit, MODEL, str(folder)).version.version
    created = client.post(
        "/admin/experiments",
        json={"name": "loop-canary", "kind": "canary", "model": MODEL, "challenger": str(version)},
        headers=operator,
    )
    assert created.status_code == 201, created.text
    promoted = client.post("/admin/experiments/loop-canary/promote", headers=operator)
    assert promoted.status_code == 200, promoted.text
    deadline = time.monotonic() + 60
    while True:  # the champion swaps while requests keep coming
        answered = client.post(f"/predict/{MODEL}", json={"instances": _applicants(1)}, headers=operator)
        assert answered.status_code == 200, answered.text
        if answered.json()["version"] == version:
            break
        assert time.monotonic() < deadline, "the promoted version never answered"
        time.sleep(0.05)


def _hold_the_loop() -> None:
    time.sleep(0.25)  # what a synchronous MLflow or database call does to the loop it runs on


def test_the_watch_names_a_call_that_holds_the_loop(client: TestClient) -> None:
    assert client.portal is not None
    with loop_stalls(client) as stalls:
        client.portal.call(_hold_the_loop)  # a plain function: it runs on the loop's own thread
    assert len(stalls) == 1, stalls
    assert stalls[0].seconds >= 0.2 and "_hold_the_loop" in stalls[0].stack, stalls[0]


def test_the_watch_names_a_short_mlflow_call_on_the_loop(client: TestClient, platform: Platform) -> None:
    """Under the threshold, yet named: on a remote tracking server it would wait for the network."""
    assert client.portal is not None
    platform.registry.get_alias(MODEL, "champion")  # warm: the calls below take milliseconds
    with loop_stalls(client) as stalls:
        for _ in range(20):  # seen by a watchdog that looks every 5 ms
            client.portal.call(platform.registry.get_alias, MODEL, "champion")
    named = [stall for stall in stalls if "(in MLflow)" in stall.stack]
    assert named and "opsloop/registry.py" in named[0].stack, stalls  # the project's caller
