"""Scheduled evals on a real ``opsloop serve``: configured in YAML, listed, triggered through the server.

The job runs retrieval-only on a few golden questions against the bundled docs (ingested at
start), so it needs no generation; the CLI's trigger goes to the server that holds the store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.server import Server, cli

GOLDEN = Path(__file__).resolve().parents[2] / "evals" / "datasets" / "docs_golden.jsonl"
JOB = {
    "name": "docs-nightly",
    "cron": "0 3 * * *",
    "dataset": str(GOLDEN),
    "collection": "docs",
    "generate": False,
    "limit": 5,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("evals")
    config = root / "opsloop.yaml"
    config.write_text(yaml.safe_dump({"eval_jobs": [JOB]}))
    env = {
        "OPSLOOP_CONFIG": str(config),
        "OPSLOOP_BOOTSTRAP_DEMO": "false",
        "OPSLOOP_BOOTSTRAP_DOCS": "true",
        "OPSLOOP_DRIFT_CHECK_SECONDS": "0",
    }
    server = Server(root / "home", env=env)
    try:
        server.wait_for("/readyz", 200, seconds=180)
        yield server
    finally:
        assert server.stop() == 0, "".join(server.output)


def _cli(server: Server, *args: str) -> dict[str, object] | list[dict[str, object]]:
    done = cli(server.home, "--config", str(server.home.parent / "opsloop.yaml"), *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_jobs_are_listed_with_their_next_run(server: Server) -> None:
    (job,) = _cli(server, "eval", "schedule", "list", "--format", "json")
    assert isinstance(job, dict) and job["name"] == "docs-nightly" and "T03:00:00" in str(job["next_run"])


def test_trigger_runs_the_job_in_the_server_and_exports_its_scores(server: Server) -> None:
    ran = _cli(server, "eval", "schedule", "trigger", "docs-nightly", "--format", "json")
    assert isinstance(ran, dict) and ran["outcome"] == "ok" and ran["run_id"]
    admin = {"Authorization": f"Bearer {(server.home / 'admin.key').read_text().strip()}"}
    (status,) = server.http.get("/admin/evals/jobs", headers=admin).json()
    assert status["last_outcome"] == "ok" and status["last_run_id"] == ran["run_id"]
    assert server.metric('opsloop_eval_score{eval_job="docs-nightly",metric="hit_rate"}') > 0.5
    assert server.metric('opsloop_eval_last_success_timestamp_seconds{eval_job="docs-nightly"}') > 0
    missing = server.http.post("/admin/evals/jobs/nope/trigger", headers=admin)
    assert missing.status_code == 404 and "docs-nightly" in missing.json()["error"]["message"]


def test_a_bad_job_stops_serve_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"eval_jobs": [{**JOB, "cron": "every night"}]}))
    done = cli(tmp_path / "home", "--config", str(config), "serve")
    assert done.returncode == 1
    assert "eval_jobs[0]" in done.stderr and "cron" in done.stderr
