"""``opsloop eval run`` while ``opsloop serve`` holds the store: the server runs it, the CLI reports it.

The server ingests the bundled docs at start; every run is retrieval-only on the first five
golden questions, so no model writes an answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from evals.dataset import load_dataset
from tests.e2e.server import Server, cli

GOLDEN = Path(__file__).resolve().parents[2] / "evals" / "datasets" / "docs_golden.jsonl"
RUN = ("eval", "run", "--dataset", str(GOLDEN), "--collection", "docs", "--no-generate", "--limit", "5")
HANDED_OFF = "the server runs this eval"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("evalhandoff")
    env = {
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


def _admin(server: Server) -> dict[str, str]:
    return {"Authorization": f"Bearer {(server.home / 'admin.key').read_text().strip()}"}


def _eval_posts(server: Server) -> float:
    """Requests the server has had on ``POST /admin/evals/runs``, whatever their status."""
    prefix = 'opsloop_http_requests_total{method="POST",route="/admin/evals/runs",'
    lines = server.http.get("/metrics").text.splitlines()
    return sum(float(line.rpartition(" ")[2]) for line in lines if line.startswith(prefix))


def test_eval_run_goes_through_the_server_and_is_tracked_like_a_local_run(server: Server) -> None:
    done = cli(server.home, *RUN, "--format", "json")
    assert done.returncode == 0, done.stderr
    assert HANDED_OFF in done.stderr
    body = json.loads(done.stdout)
    assert body["samples"] == 5 and body["dataset"] == "docs_golden" and "gate" not in body
    assert body["summaries"]["hit_rate"]["mean"] > 0.5 and body["summaries"]["hit_rate"]["scored"] == 5
    assert body["params"]["prompt"] == "none" and body["params"]["tenant"] == "default"

    listed = json.loads(cli(server.home, "eval", "list", "--format", "json").stdout)
    assert body["run_id"] in [run["run_id"] for run in listed]
    shown = cli(server.home, "eval", "show", body["run_id"], "--format", "json")
    assert shown.returncode == 0, shown.stderr
    run = json.loads(shown.stdout)
    assert run["status"] == "FINISHED" and len(run["samples"]) == 5
    # The data set's hash is the one a local run of these five questions computes.
    expected = load_dataset(GOLDEN).subset(limit=5)
    assert run["params"]["dataset"] == "docs_golden" and run["params"]["dataset_sha256"] == expected.sha256
    # The server audited the run as the CLI's caller, in its tenant.
    audit = server.http.get(
        "/admin/audit", params={"target": f"eval-run:{body['run_id']}"}, headers=_admin(server)
    )
    (entry,) = audit.json()
    assert entry["action"] == "eval.run" and entry["actor"].startswith("cli") and entry["tenant"] == "default"


def test_a_baseline_is_gated_in_the_server_and_printed_as_a_table(server: Server) -> None:
    done = cli(server.home, *RUN, "--baseline", "production")
    assert done.returncode == 0, done.stderr
    assert HANDED_OFF in done.stderr
    assert "retrieval only, top_k" in done.stdout and "hit_rate" in done.stdout
    assert "gate against production" in done.stdout and "gate passed" in done.stdout


def test_a_bad_dataset_line_is_reported_before_any_request(server: Server, tmp_path: Path) -> None:
    first = GOLDEN.read_text(encoding="utf-8").splitlines()[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(first + '\n{"question": "Where is the reference?"}\n', encoding="utf-8")
    before = _eval_posts(server)
    done = cli(server.home, "eval", "run", "--dataset", str(bad), "--collection", "docs", "--no-generate")
    assert done.returncode == 1
    stderr = " ".join(done.stderr.split())  # rich wraps long lines
    assert "line 2: field 'reference' must be a non-empty string" in stderr
    assert HANDED_OFF not in done.stderr and _eval_posts(server) == before


def test_the_servers_errors_reach_the_cli(server: Server) -> None:
    done = cli(server.home, *RUN[:5], "nope", *RUN[6:])
    assert done.returncode == 1 and HANDED_OFF in done.stderr and "nope" in done.stderr


def test_the_route_checks_the_items_it_is_sent(server: Server) -> None:
    item = json.loads(GOLDEN.read_text(encoding="utf-8").splitlines()[0])
    body = {
        "collection": "docs",
        "generate": False,
        "dataset": {"name": "x", "items": [item, {"question": "?"}]},
    }
    bad = server.http.post("/admin/evals/runs", json=body, headers=_admin(server))
    assert bad.status_code == 422 and "line 2: field 'reference'" in bad.json()["error"]["message"]
    body["dataset"] = {"name": "x", "items": [item], "sha256": "0" * 64}
    mismatch = server.http.post("/admin/evals/runs", json=body, headers=_admin(server))
    assert mismatch.status_code == 422 and mismatch.json()["error"]["details"]["field"] == "dataset.sha256"
    body["dataset"] = {"name": "x", "items": [item]}
    escaping = server.http.post("/admin/evals/runs", json={**body, "resume": "../x"}, headers=_admin(server))
    assert escaping.status_code == 422


def test_a_run_started_without_waiting_shows_its_progress_then_its_result(server: Server) -> None:
    items = [json.loads(line) for line in GOLDEN.read_text(encoding="utf-8").splitlines()[:3]]
    body = {"collection": "docs", "generate": False, "dataset": {"name": "golden3", "items": items}}
    started = server.http.post(
        "/admin/evals/runs", params={"wait": "false"}, json=body, headers=_admin(server)
    )
    assert started.status_code == 202, started.text
    task = started.json()
    assert task["state"] == "running" and (task["samples"], task["total"]) == (3, 3)
    assert started.headers["location"] == f"/admin/evals/tasks/{task['id']}"
    seen = []
    deadline = time.monotonic() + 120
    while task["state"] == "running":
        assert time.monotonic() < deadline, task
        time.sleep(0.2)
        task = server.http.get(started.headers["location"], headers=_admin(server)).json()
        seen.append((task["stage"], task["done"], task["total"]))
    assert task["state"] == "finished" and task["error"] is None, task
    assert seen[-1] == ("eval", 3, 3) and all(0 <= done <= 3 for _, done, _ in seen)
    assert task["result"]["samples"] == 3 and task["result"]["summaries"]["hit_rate"]["scored"] == 3
    listed = server.http.get("/admin/evals/tasks", headers=_admin(server)).json()
    assert task["id"] in [t["id"] for t in listed]
    missing = server.http.get("/admin/evals/tasks/nosuchtask", headers=_admin(server))
    assert missing.status_code == 404
