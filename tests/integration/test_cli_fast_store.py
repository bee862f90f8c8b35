"""The key and audit commands answer the same whether they build Settings or not, on SQLite and PostgreSQL.

Through the ``opsloop`` CLI as a subprocess: in an environment without ``OPSLOOP_`` variables
but the store's, the commands open the store from ``StoreSettings.from_environment``; one more
variable (here ``OPSLOOP_TRACING``) makes them build the whole Settings. Both ways work on one
store and must print the same.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.e2e.server import OPSLOOP, clean_environment

READS = [
    ["keys", "list"],
    ["keys", "list", "--all", "--json"],
    ["keys", "list", "--tenant", "acme", "--all"],
    ["audit", "tail", "-n", "5"],
    ["audit", "tail", "--json"],
    ["audit", "tail", "--action", "key.revoke", "--tenant", "acme"],
]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def quick_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """An environment in which the commands skip Settings: the store's variables only."""
    env = {**clean_environment(), "OPSLOOP_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    if request.param == "postgres":
        env["OPSLOOP_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    return env


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([OPSLOOP, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def test_both_ways_share_the_store_and_print_the_same(quick_env: dict[str, str]) -> None:
    full_env = {**quick_env, "OPSLOOP_TRACING": "false"}
    created = _run(quick_env, "keys", "create", "--tenant", "acme", "--role", "user", "--name", "quick")
    assert created.returncode == 0, created.stderr
    key_id = created.stdout.strip().split("_")[1]
    assert _run(full_env, "keys", "create", "--tenant", "beta", "--role", "admin").returncode == 0
    assert _run(full_env, "keys", "revoke", key_id).returncode == 0
    again = _run(quick_env, "keys", "revoke", key_id)
    assert again.returncode == 1 and f"key '{key_id}' is already revoked" in again.stderr

    for args in READS:
        quick, full = _run(quick_env, *args), _run(full_env, *args)
        assert quick.returncode == full.returncode == 0, (args, quick.stderr, full.stderr)
        assert quick.stdout == full.stdout, args
        assert quick.stderr == full.stderr == "", args
    listed = _run(quick_env, "keys", "list", "--all", "--json").stdout
    assert listed.count('"tenant": "acme"') == 1 and listed.count('"tenant": "beta"') == 1
    assert _run(quick_env, "audit", "tail", "--json").stdout.count('"action": "key.') == 3


def test_a_bad_database_url_is_named_either_way(quick_env: dict[str, str]) -> None:
    for env in (quick_env, {**quick_env, "OPSLOOP_TRACING": "false"}):
        done = _run({**env, "OPSLOOP_DATABASE_URL": "nosuchdb://x"}, "keys", "list")
        assert done.returncode == 1 and "cannot use database URL" in done.stderr
