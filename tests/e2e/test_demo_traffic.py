"""`opsloop demo traffic` as a user runs it, against a real `opsloop serve` on loopback.

The server bootstraps the demo credit-risk model on its first start; the command finds it
from the home's settings and admin key, sends rows and labels, and the labels are read back
through `opsloop drift concept`, which scores what reached the prediction log.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.server import OPSLOOP, Server, cli, environment, free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # Its own server, as test_models.py has: the label count below needs a log no other test
    # labels.
    server = Server(tmp_path_factory.mktemp("demo-traffic") / "home")
    server.wait_for("/readyz", 200, seconds=180)
    yield server
    server.stop()


def _traffic(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # Wide: rich wraps stderr at 80 columns when it is not a terminal, which would split messages.
    full_env = {**environment(home), "COLUMNS": "400", **(env or {})}
    return subprocess.run(
        [OPSLOOP, "demo", "traffic", *args], env=full_env, capture_output=True, text=True, timeout=120
    )


def test_rows_and_labels_reach_the_server_of_this_home(server: Server) -> None:
    # No --url and no --key: the port comes from the settings, the key from the home's admin.key.
    port = server.url.rsplit(":", 1)[1]
    args = ("--rows", "150", "--feedback", "--shift", "--units", "10", "--format", "json")
    done = _traffic(server.home, *args, env={"OPSLOOP_PORT": port})
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["url"] == server.url and report["shift"] is True and report["units"] == 10
    assert (report["requests"], report["instances"], report["ok"], report["failed"]) == (150, 150, 150, 0)
    assert report["failures"] == {} and report["first_error"] is None and report["stopped"] is None
    assert report["variants"] == [{"version": 1, "variant": "champion", "answers": 150}]
    assert report["feedback"]["attached"] == 150 and report["feedback"]["labels"] == 150
    assert report["feedback"]["unknown"] == 0 and report["feedback"]["rejected"] == 0
    assert isinstance(report["seed"], int)
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]

    concept = cli(server.home, "drift", "concept", "--model", "credit-risk", "--format", "json")
    assert concept.returncode == 0, concept.stderr
    assert json.loads(concept.stdout)["instances"] == 150


def test_url_key_and_batch_options(server: Server) -> None:
    created = cli(server.home, "keys", "create", "--tenant", "acme", "--role", "user")
    assert created.returncode == 0, created.stderr
    # Another home: nothing is read from it but settings, so --url and --key must carry the run.
    args = ("--url", server.url, "--key", created.stdout.strip(), "--rows", "20", "--batch", "7")
    done = _traffic(server.home.parent / "elsewhere", *args, "--seed", "5")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert f"sent 3 requests (20 instances, 7 a request, 1000 units) to credit-risk at {server.url}" in text
    assert "ok 3, failed 0" in text and "answered by version 1 (champion): 3" in text
    assert "pass --seed 5 to send the same rows" in text and "feedback" not in text

    refused = _traffic(server.home, "--url", server.url, "--key", "not-a-key", "--rows", "5")
    assert refused.returncode == 1
    assert f"the server at {server.url} refused the key given with --key" in refused.stderr


def test_an_unreachable_server_is_named(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    done = _traffic(tmp_path / "home", "--url", url, "--key", "any", "--rows", "5")
    assert done.returncode == 1 and done.stdout == ""
    assert f"no opsloop server answers at {url}" in done.stderr and "Traceback" not in done.stderr


def test_a_missing_key_file_is_named(tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = _traffic(home, "--rows", "5")
    assert done.returncode == 1 and done.stdout == ""
    assert f"no admin key at {home / 'admin.key'}" in done.stderr and "--key" in done.stderr
    assert "Traceback" not in done.stderr
