"""Chat threads on PostgreSQL: with the state store there, checkpoints go there too and survive a restart."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from opsloop.auth import Role
from opsloop.settings import load_settings
from serving.app import create_app
from tests.integration.ready import wait_ready
from workflows.demo import train_demo

pytestmark = pytest.mark.postgres

MODEL = "credit-risk"


def test_a_thread_waits_in_postgres_across_a_restart(tmp_path: Path, postgres_url: str) -> None:
    settings = load_settings(home=tmp_path / "home", database_url=postgres_url, bootstrap_docs=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client)
        platform = client.app.state.platform  # type: ignore[attr-defined]
        version = train_demo(platform.registry, rows=500, alias=None).version
        key = platform.keys.create("default", Role.OPERATOR, actor="test").secret.get_secret_value()
        headers = {"Authorization": f"Bearer {key}"}
        asked = client.post(
            "/chat", json={"message": f"promote credit-risk version {version}"}, headers=headers
        )
        assert asked.json()["status"] == "pending_approval", asked.text
    engine = create_engine(postgres_url)
    with engine.connect() as conn:  # the thread is in PostgreSQL, not in a file of the home
        stored = conn.execute(
            text("SELECT count(*) FROM checkpoints WHERE thread_id = :t"), {"t": asked.json()["thread_id"]}
        ).scalar_one()
    engine.dispose()
    assert stored > 0
    assert not (tmp_path / "home" / "checkpoints.sqlite").exists()
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client)
        done = client.post(
            f"/chat/{asked.json()['thread_id']}/approve", json={"approve": True}, headers=headers
        )
        assert done.json()["status"] == "done", done.text
        # the console lists the thread from the PostgreSQL checkpoints, for its own tenant
        client.cookies.set("opsloop_console", key, domain="testserver.local", path="/ui")
        assert asked.json()["thread_id"] in client.get("/ui/chat").text
        registry = client.app.state.platform.registry  # type: ignore[attr-defined]
        assert registry.get_alias(MODEL, "champion").version == version
