"""Two ``opsloop serve`` replicas on one PostgreSQL, one Redis and one MLflow server agree.

Started together on loopback, each with a home of its own, they create one first admin key
between them and both accept it; they serve the same champion and follow a promotion and a
rollback made once by the CLI; a rate limit set once is enforced over the requests of both; and
the drift checks both schedule every second run once a second between them (``opsloop.job_runs``).
The LLM route points at a closed loopback port: requests are admitted (and counted), then fail
fast with a 502, so no model is loaded.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.integration.demo_inputs import APPLICANT
from tests.integration.twins import (
    REDIS_URL,
    MlflowServer,
    OpsloopServer,
    dead_route,
    opsloop,
    postgres_database,
    redis_client,
    replicas,
)

pytestmark = pytest.mark.postgres

MODEL = "credit-risk"
POLL_SECONDS = 0.5
REPLICA_ENV = {
    "OPSLOOP_MODEL_POLL_SECONDS": str(POLL_SECONDS),
    "OPSLOOP_BUDGET_CACHE_SECONDS": "0",  # a budget set on one replica applies on the other at once
    "OPSLOOP_DRIFT_CHECK_SECONDS": "1",  # each replica schedules them; each fire runs in one
}
"""What the replicas of this module run with besides the shared state; a test that needs other
settings (a short OPSLOOP_DRIFT_CHECK_SECONDS, a scheduler) starts its own pair with
``replicas(root, {**shared_env, **REPLICA_ENV, ...})``."""


@pytest.fixture(scope="module")
def shared_env(mlflow_server: MlflowServer) -> Iterator[dict[str, str]]:
    """The settings that make processes replicas of one deployment: a fresh database, Redis, MLflow."""
    with redis_client(), postgres_database("replicas") as database:
        yield {
            "OPSLOOP_DATABASE_URL": database,
            "OPSLOOP_REDIS_URL": REDIS_URL,
            "OPSLOOP_LLM_ROUTES": dead_route("chat"),
            **mlflow_server.env,
        }


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("replicas")


def _cli(root: Path, env: dict[str, str], *args: str) -> str:
    """One CLI command on the shared state (from a home of its own), which must succeed."""
    done = opsloop(root / "cli" / "home", *args, env=env)
    assert done.returncode == 0, f"opsloop {' '.join(args)}:\n{done.stderr[-3000:]}"
    return done.stderr


@pytest.fixture(scope="module")
def servers(root: Path, shared_env: dict[str, str]) -> Iterator[list[OpsloopServer]]:
    """Two replicas, started at once after the demo model was trained and made champion by the CLI."""
    _cli(root, shared_env, "models", "train", "--demo", "--rows", "300")
    with replicas(root, {**shared_env, **REPLICA_ENV}) as started:
        yield started


@pytest.fixture(scope="module")
def admin(servers: list[OpsloopServer]) -> dict[str, str]:
    """Headers of the first admin key, read from whichever home it was written to."""
    files = [server.home / "admin.key" for server in servers if (server.home / "admin.key").exists()]
    assert len(files) == 1, f"first admin key written {len(files)} times"
    return {"Authorization": f"Bearer {files[0].read_text().strip()}"}


def _served_version(server: OpsloopServer, headers: dict[str, str]) -> str:
    response = server.http.post(f"/predict/{MODEL}", json={"instances": [APPLICANT]}, headers=headers)
    assert response.status_code == 200, response.text
    return str(response.json()["version"])


def _wait_served(servers: list[OpsloopServer], headers: dict[str, str], version: str) -> float:
    """Seconds until every replica serves ``version``; fails after 20 poll intervals."""
    start = time.monotonic()
    deadline = start + 20 * POLL_SECONDS
    while (served := [_served_version(s, headers) for s in servers]) != [version] * len(servers):
        assert time.monotonic() < deadline, f"replicas serve {served}, not {version}"
        time.sleep(POLL_SECONDS / 5)
    return time.monotonic() - start


def test_one_first_admin_key_is_created_and_both_replicas_accept_it(
    servers: list[OpsloopServer], admin: dict[str, str]
) -> None:
    for server in servers:
        keys = server.http.get("/admin/keys", headers=admin)
        assert keys.status_code == 200, keys.text
        admins = [key for key in keys.json() if key["role"] == "admin"]
        assert [(key["tenant"], key["name"]) for key in admins] == [("default", "first admin")]


def test_both_replicas_follow_one_promotion_and_one_rollback(
    root: Path, shared_env: dict[str, str], servers: list[OpsloopServer], admin: dict[str, str]
) -> None:
    champion = _served_version(servers[0], admin)
    assert _served_version(servers[1], admin) == champion

    _cli(root, shared_env, "models", "train", "--demo", "--rows", "300", "--seed", "1", "--no-promote")
    challenger = str(int(champion) + 1)
    assert [_served_version(s, admin) for s in servers] == [champion, champion]  # registered, not served

    _cli(root, shared_env, "models", "promote", MODEL, challenger)
    _wait_served(servers, admin, challenger)
    # Rollback reads the audit trail the promotion left in the shared database.
    _cli(root, shared_env, "models", "rollback", MODEL)
    _wait_served(servers, admin, champion)


@pytest.fixture
def tenant() -> Iterator[str]:
    """A tenant of this test's own; its counters are deleted from Redis afterwards."""
    name = f"r{uuid.uuid4().hex[:10]}"
    yield name
    with redis_client() as client:  # the enforcer's keys: opsloop:budget:{tenant}:...
        keys = list(client.scan_iter(match=f"opsloop:budget:{{{name}}}:*", count=1000))
        if keys:
            client.delete(*keys)


def test_a_rate_limit_set_once_holds_across_both_replicas(
    servers: list[OpsloopServer], admin: dict[str, str], tenant: str
) -> None:
    first, second = servers
    created = first.http.post("/admin/keys", json={"tenant": tenant, "role": "user"}, headers=admin)
    assert created.status_code == 201, created.text
    user = {"Authorization": f"Bearer {created.json()['key']}"}
    limit = 4
    budget = {"tenant": tenant, "kind": "rpm", "limit": limit}
    assert second.http.put("/admin/budgets", json=budget, headers=admin).status_code == 200

    if datetime.now(UTC).second >= 55:  # the rpm window is the UTC minute: stay inside one
        time.sleep(61 - datetime.now(UTC).second)
    hello = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    answers: list[httpx.Response] = []
    for i in range(2 * limit):  # alternate between the replicas
        answers.append(servers[i % 2].http.post("/v1/chat/completions", json=hello, headers=user))
    # Admitted requests reach the (closed) backend: 502. Each replica admitted only two itself.
    assert [a.status_code for a in answers] == [502] * limit + [429] * limit, [a.text for a in answers]
    refused = answers[-1].json()["error"]  # the second replica's
    assert refused["type"] == "rate_limited" and f"rate limit rpm of tenant {tenant} " in refused["message"]
    assert int(answers[-1].headers["retry-after"]) > 0


def test_a_scheduled_job_runs_once_per_fire_across_both(
    servers: list[OpsloopServer], admin: dict[str, str], shared_env: dict[str, str], root: Path
) -> None:
    """Both replicas schedule the drift checks every second; each second's check runs in one of them."""
    for server in servers:  # traffic to compare, so each check stores its result
        _served_version(server, admin)
    engine = create_engine(shared_env["OPSLOOP_DATABASE_URL"])
    runs_query = text("SELECT slot, holder, status FROM job_runs WHERE job = 'drift-checks' ORDER BY slot")
    try:
        deadline = time.monotonic() + 60
        with engine.connect() as conn:
            first = conn.execute(text("SELECT count(*) FROM drift_checks")).scalar_one()
        while True:
            time.sleep(1)
            with engine.connect() as conn:
                runs = conn.execute(runs_query).all()
                checks = conn.execute(text("SELECT count(*) FROM drift_checks")).scalar_one() - first
            finished = [run for run in runs if run.status == "ok"]
            if checks >= 6 or time.monotonic() > deadline:
                break
    finally:
        engine.dispose()
    assert checks >= 6, f"{checks} drift checks stored in a minute"
    slots = [run.slot for run in runs]
    assert len(slots) == len(set(slots))
    # The checks since `first` were all claimed runs, never a second run of the same second:
    # twice as many checks as runs would mean each replica ran every fire.
    assert checks <= len(runs)
    assert len(finished) >= len(runs) - 2  # at most the fires in flight right now
    assert {run.holder.rsplit(":", 1)[1] for run in runs} <= {str(s.process.proc.pid) for s in servers}
    done = opsloop(root / "cli" / "home", "jobs", "list", "--format", "json", env=shared_env)
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert [job["job"] for job in listed["jobs"]] == ["drift-checks"]
    # A replica may have claimed another second since `runs` was read: the holder is one of the two.
    holder = listed["jobs"][0]["last_run"]["holder"]
    assert holder.rsplit(":", 1)[1] in {str(s.process.proc.pid) for s in servers}
