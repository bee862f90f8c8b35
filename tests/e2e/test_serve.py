"""`opsloop serve` and the CLI as a user runs them: real processes on loopback."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import OPSLOOP, Server, cli, environment, free_port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    server = Server(tmp_path / "home")
    yield server
    if server.proc.poll() is None:
        server.stop()


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_serve_boots_prints_admin_key_and_gets_ready(server: Server) -> None:
    admin_key_path = server.home / "admin.key"
    assert any(str(admin_key_path) in line for line in server.output)
    assert admin_key_path.stat().st_mode & 0o777 == 0o600
    ready = server.wait_for("/readyz", 200).json()
    assert ready == {
        "ready": True,
        "degraded": False,
        "components": {"store": "ready", "registry": "ready", "models": "ready"},
        "pending": [],
        "why": {},
    }
    assert "opsloop_http_requests_total" in server.http.get("/metrics").text
    assert server.http.get("/admin/audit").status_code == 401
    admin = _auth(admin_key_path.read_text().strip())
    assert server.http.get("/admin/audit", headers=admin).status_code == 200
    assert server.stop() == 0


def test_cli_works_while_the_server_runs(server: Server) -> None:
    admin = _auth((server.home / "admin.key").read_text().strip())
    created_over_http: list[str] = []

    def create_over_http() -> None:
        for i in range(15):
            response = server.http.post("/admin/keys", json={"tenant": "web", "role": "user"}, headers=admin)
            assert response.status_code == 201, response.text
            created_over_http.append(response.json()["id"])
            time.sleep(0.01 * (i % 3))

    writer = threading.Thread(target=create_over_http)
    writer.start()
    cli_keys = []
    for _ in range(3):
        result = cli(server.home, "keys", "create", "--tenant", "acme", "--role", "operator", "--name", "ops")
        assert result.returncode == 0, result.stderr
        cli_keys.append(result.stdout.strip())
    writer.join(timeout=120)

    listed = server.http.get("/admin/keys", headers=admin).json()
    assert len(created_over_http) == 15
    assert {k["tenant"] for k in listed} == {"default", "web", "acme"}
    assert len(listed) == 1 + 15 + 3

    operator = _auth(cli_keys[0])
    assert server.http.get("/admin/keys", headers=operator).status_code == 403
    key_id = cli_keys[0].split("_")[1]
    revoked = cli(server.home, "keys", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    deadline = time.monotonic() + 10  # the server trusts a verified key for key_cache_seconds
    while server.http.get("/admin/keys", headers=operator).status_code != 401:
        assert time.monotonic() < deadline, "revoked key still accepted"
        time.sleep(0.2)

    tail = cli(server.home, "audit", "tail", "--json", "-n", "100")
    # The demo model's bootstrap (model.* entries) may land at any point in between.
    actions = [json.loads(line)["action"] for line in tail.stdout.splitlines()]
    key_actions = [action for action in actions if action.startswith("key.")]
    assert key_actions.count("key.create") == 1 + 15 + 3
    assert key_actions[-1] == "key.revoke"

    table = cli(server.home, "keys", "list", "--tenant", "acme")
    assert table.returncode == 0 and table.stdout.count("operator") == 2


def test_two_workers_share_metrics(tmp_path: Path) -> None:
    server = Server(tmp_path / "home", "--workers", "2")
    try:
        for _ in range(20):
            server.http.get("/healthz", headers={"Connection": "close"})
        text = server.http.get("/metrics").text
        match = re.search(
            r'opsloop_http_requests_total\{method="GET",route="/healthz",status="200"\} (\S+)', text
        )
        assert match is not None and float(match.group(1)) >= 20
    finally:
        assert server.stop() == 0


def test_every_worker_answers_rag_on_the_embedded_store(tmp_path: Path) -> None:
    """The supervisor holds Qdrant Edge and serves it to the workers: no worker answers 409."""
    server = Server(tmp_path / "home", "--workers", "2")
    try:
        admin = _auth((server.home / "admin.key").read_text().strip())
        note = ("zebra.md", b"Zebra maintenance happens on Tuesdays in the north paddock.\n")
        upload = server.http.post(
            "/collections/zoo/documents", files=[("files", note)], headers=admin, timeout=120
        )
        assert upload.status_code == 200, upload.text

        def ask(_: int) -> httpx.Response:
            # A connection of its own each: the kernel hands it to whichever worker accepts first.
            with httpx.Client(base_url=server.url, timeout=60, headers=admin) as client:
                question = {"question": "when is zebra maintenance?", "collection": "zoo", "generate": False}
                return client.post("/query", json=question)

        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(ask, range(24)))
        assert [a.status_code for a in answers] == [200] * 24, [
            a.text for a in answers if a.status_code != 200
        ]
        assert {a.json()["sources"][0]["source"] for a in answers} == {"zebra.md"}
        # The CLI finds the store held by the server and goes through it, whichever worker answers.
        listed = cli(server.home, "query", "zebra maintenance", "--collection", "zoo", "--format", "json")
        assert listed.returncode == 0, listed.stderr
    finally:
        assert server.stop() == 0
    assert not (server.home / "qdrant" / "store.sock").exists()


def test_a_second_server_on_the_same_home_refuses_and_names_the_settings(server: Server) -> None:
    second = cli(server.home, "serve", "--port", str(free_port()))
    assert second.returncode == 1
    message = " ".join(second.stderr.split())
    assert f"pid {server.proc.pid}, {server.url}" in message
    for setting in ("OPSLOOP_HOME", "OPSLOOP_DATABASE_URL", "OPSLOOP_VECTOR_STORE=qdrant", "--workers N"):
        assert setting in message
    assert server.http.get("/healthz").status_code == 200  # the first one serves on
    assert server.stop() == 0
    # Its claim ends with it: the same home serves again.
    again = Server(server.home)
    assert again.stop() == 0


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["serve"],
        *[["keys", *sub] for sub in ([], ["create"], ["list"], ["revoke"])],
        *[["audit", *sub] for sub in ([], ["tail"])],
        *[["models", *sub] for sub in ([], ["train"], ["register"], ["list"], ["versions"])],
        *[["models", sub] for sub in ("promote", "rollback")],
        *[["drift", *sub] for sub in ([], ["compare"], ["report"])],
    ],
)
def test_every_command_has_help(tmp_path: Path, command: list[str]) -> None:
    result = cli(tmp_path, *command, "--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout and len(result.stdout.splitlines()) > 5


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    bad_role = cli(tmp_path, "keys", "create", "--tenant", "acme", "--role", "root")
    assert bad_role.returncode == 1 and "unknown role 'root'" in bad_role.stderr
    unknown = cli(tmp_path, "keys", "revoke", "nosuchkey")
    assert unknown.returncode == 1 and "no key with id 'nosuchkey'" in unknown.stderr
    env_error = subprocess.run(
        [OPSLOOP, "keys", "list"],
        env={**environment(tmp_path), "OPSLOOP_DATABASE_URL": "nosuchdb://x"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert env_error.returncode == 1 and "database URL" in env_error.stderr
