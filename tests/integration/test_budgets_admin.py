"""Setting budgets: `/admin/budgets` in the real app, `opsloop budgets` as a process, and the 429 shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from opsloop.audit import AuditFilter, AuditLog
from opsloop.auth import Role
from opsloop.budgets import Budget, BudgetExceededError, window_of
from opsloop.db import Database
from opsloop.settings import Settings, load_settings
from serving.app import create_app
from serving.errors import install_error_handlers
from tests.e2e.server import cli


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    return create_app(load_settings(home=tmp_path / "home", bootstrap_demo=False, bootstrap_docs=False))


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def admin(app: FastAPI, client: TestClient) -> dict[str, str]:
    settings: Settings = app.state.platform.settings
    return {"Authorization": f"Bearer {settings.admin_key_path.read_text().strip()}"}


def test_admin_sets_lists_and_deletes_budgets(
    app: FastAPI, client: TestClient, admin: dict[str, str]
) -> None:
    key = app.state.platform.keys.create("acme", Role.USER, actor="test").info.id
    put = client.put(
        "/admin/budgets", json={"tenant": "acme", "kind": "daily_usd", "limit": 5}, headers=admin
    )
    assert put.status_code == 200, put.text
    assert put.json()["limit"] == 5 and put.json()["soft_ratio"] == 0.8
    body = {"tenant": "acme", "key_id": key, "kind": "rpm", "limit": 60, "soft_ratio": 0.9}
    assert client.put("/admin/budgets", json=body, headers=admin).status_code == 200

    listed = client.get("/admin/budgets", params={"tenant": "acme"}, headers=admin).json()
    assert [(b["key_id"], b["kind"], b["limit"], b["soft_ratio"]) for b in listed] == [
        (None, "daily_usd", 5.0, 0.8),
        (key, "rpm", 60.0, 0.9),
    ]
    gone = client.delete(
        "/admin/budgets", params={"tenant": "acme", "kind": "rpm", "key_id": key}, headers=admin
    )
    assert gone.status_code == 200 and gone.json()["kind"] == "rpm"
    again = client.delete(
        "/admin/budgets", params={"tenant": "acme", "kind": "rpm", "key_id": key}, headers=admin
    )
    assert again.status_code == 404 and again.json()["error"]["type"] == "not_found"

    audit = client.get("/admin/audit", params={"tenant": "acme"}, headers=admin).json()
    actions = [(e["action"], e["target"]) for e in audit if e["action"].startswith("budget.")]
    assert actions == [
        ("budget.delete", f"budget:acme/rpm@{key}"),
        ("budget.set", f"budget:acme/rpm@{key}"),
        ("budget.set", "budget:acme/daily_usd"),
    ]
    assert all(e["request_id"] for e in audit if e["action"].startswith("budget."))


def test_bad_budgets_get_422_naming_the_field(client: TestClient, admin: dict[str, str]) -> None:
    for body, field in [
        ({"tenant": "acme", "kind": "weekly_usd", "limit": 5}, "kind"),
        ({"tenant": "acme", "kind": "rpm", "limit": -1}, "limit"),
        ({"tenant": "acme", "kind": "tpm", "limit": 1.5}, "limit"),
        ({"tenant": "acme", "kind": "rpm", "limit": 5, "key_id": "nosuchkey"}, "key_id"),
    ]:
        response = client.put("/admin/budgets", json=body, headers=admin)
        assert response.status_code in (404, 422), response.text
        error = response.json()["error"]
        named = error["details"].get("field") or [e["field"] for e in error["details"]["errors"]]
        assert field in named, error


def test_budgets_need_the_admin_role(app: FastAPI, client: TestClient) -> None:
    operator = app.state.platform.keys.create("acme", Role.OPERATOR, actor="test").secret.get_secret_value()
    headers = {"Authorization": f"Bearer {operator}"}
    assert client.get("/admin/budgets", headers=headers).status_code == 403
    put = client.put("/admin/budgets", json={"tenant": "acme", "kind": "rpm", "limit": 5}, headers=headers)
    assert put.status_code == 403
    assert client.get("/admin/budgets").status_code == 401


def test_an_exceeded_budget_is_a_429_with_retry_after() -> None:
    now = datetime.now(UTC)
    error = BudgetExceededError(Budget("acme", None, "rpm", 60), 60, window_of("minute", now), now)
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/spend")
    async def spend() -> None:
        raise error

    response = TestClient(app).get("/spend")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == str(error.details["retry_after_s"])
    assert response.json()["error"] == {
        "type": "rate_limited",
        "message": error.message,
        "details": error.details,
    }


def test_the_cli_sets_lists_and_deletes_budgets(tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = cli(home, "budgets", "set", "--tenant", "acme", "--daily-usd", "2.5", "--rpm", "60")
    assert done.returncode == 0, done.stderr
    assert "set daily_usd of tenant acme to 2.5" in done.stderr

    listed = cli(home, "budgets", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["tenant"], r["kind"], r["limit"]) for r in rows] == [
        ("acme", "daily_usd", 2.5),
        ("acme", "rpm", 60),
    ]
    assert all(r["updated_by"].startswith("cli") for r in rows)

    bad = cli(home, "budgets", "set", "--tenant", "acme", "--tpm", "0")
    assert bad.returncode == 1 and "limit of tpm must be a positive number" in bad.stderr
    nothing = cli(home, "budgets", "set", "--tenant", "acme")
    assert nothing.returncode == 2 and "--daily-usd" in nothing.stderr

    deleted = cli(home, "budgets", "delete", "--tenant", "acme", "--kind", "rpm")
    assert deleted.returncode == 0, deleted.stderr

    db = Database(f"sqlite:///{home / 'opsloop.db'}").start()
    try:
        events = AuditLog(db).query(AuditFilter(tenant="acme"))
    finally:
        db.close()
    assert [(e.action, e.target) for e in reversed(events)] == [
        ("budget.set", "budget:acme/daily_usd"),
        ("budget.set", "budget:acme/rpm"),
        ("budget.delete", "budget:acme/rpm"),
    ]
