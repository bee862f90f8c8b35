"""`opsloop config check` against real components: what answers is ok, what does not is named.

PostgreSQL and Redis are this machine's; the MLflow server and an OpenAI-compatible LLM server
(llama.cpp's, as vLLM stands in for) run on loopback. A component that is down is a closed
loopback port.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from opsloop.settings import load_settings
from serving.config_check import Check, check_all
from tests.e2e.server import environment, free_port
from tests.integration import twins

OPSLOOP = str(Path(sys.executable).with_name("opsloop"))
REDIS_URL = os.environ.get("OPSLOOP_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _by_component(checks: list[Check]) -> dict[str, Check]:
    return {check.component: check for check in checks}


def test_every_twin_that_answers_is_ok(
    tmp_path: Path, postgres_url: str, mlflow_server: twins.MlflowServer, llama_server_url: str
) -> None:
    routes = {"chat": [{"name": "vllm", "kind": "openai", "base_url": llama_server_url, "model": "smol"}]}
    settings = load_settings(
        home=tmp_path / "home",
        database_url=postgres_url,
        redis_url=REDIS_URL,
        mlflow_tracking_uri=mlflow_server.url,
        llm_routes=routes,
    )
    checks = _by_component(check_all(settings, timeout=10))
    assert {name: check.status for name, check in checks.items()} == {
        "database": "ok",
        "mlflow": "ok",
        "artifacts": "skipped",  # the MLflow server's own root
        "vector store": "ok",  # Qdrant Edge under home, not created yet
        "redis": "ok",
        "embedder": "ok",
        "llm chat/vllm": "ok",
    }
    assert checks["database"].detail == "postgresql, not migrated yet (opsloop serve migrates it)"
    assert checks["redis"].detail.startswith("Redis ")


def test_the_cli_names_each_component_that_is_down_and_its_setting(tmp_path: Path, postgres_url: str) -> None:
    closed = f"127.0.0.1:{free_port()}"
    env = {
        **environment(tmp_path / "home"),
        "OPSLOOP_DATABASE_URL": postgres_url,
        "OPSLOOP_REDIS_URL": f"redis://:hunter2@{closed}/0",
        "OPSLOOP_MLFLOW_TRACKING_URI": f"http://{closed}",
        "OPSLOOP_VECTOR_STORE": "qdrant",
        "OPSLOOP_QDRANT_URL": f"http://{closed}",
        "OPSLOOP_LLM_ROUTES": json.dumps(
            {"chat": [{"name": "vllm", "kind": "openai", "base_url": f"http://{closed}/v1", "model": "m"}]}
        ),
    }
    done = subprocess.run(
        [OPSLOOP, "config", "check", "--timeout", "2", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is False
    checks = {c["component"]: c for c in report["checks"]}
    down = {name: c["setting"] for name, c in checks.items() if c["status"] == "down"}
    assert down == {
        "mlflow": "OPSLOOP_MLFLOW_TRACKING_URI",
        "vector store": "OPSLOOP_QDRANT_URL",
        "redis": "OPSLOOP_REDIS_URL",
        "llm chat/vllm": "OPSLOOP_LLM_ROUTES",
    }
    assert checks["database"]["status"] == "ok"
    assert "hunter2" not in done.stdout + done.stderr
    assert checks["redis"]["target"] == f"redis://:***@{closed}/0"

    table = subprocess.run(
        [OPSLOOP, "config", "check", "--timeout", "2"], env=env, capture_output=True, text=True, timeout=60
    )
    assert table.returncode == 1
    message = " ".join(table.stderr.split())
    assert f"redis is down: check OPSLOOP_REDIS_URL (redis://:***@{closed}/0)" in message
    assert f"mlflow is down: check OPSLOOP_MLFLOW_TRACKING_URI (http://{closed})" in message


def test_config_show_hides_every_secret(tmp_path: Path) -> None:
    env = {
        **environment(tmp_path / "home"),
        "OPSLOOP_DATABASE_URL": "postgresql+psycopg://opsloop:db-secret@127.0.0.1:5432/test",
        "OPSLOOP_REDIS_URL": "redis://:redis-secret@127.0.0.1:6379/0",
        "OPSLOOP_LLM_ROUTES": json.dumps(
            {"chat": [{"name": "claude", "kind": "anthropic", "model": "m", "api_key": "sk-ant-secret"}]}
        ),
    }
    done = subprocess.run(
        [OPSLOOP, "config", "show"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "secret" not in done.stdout
    shown = json.loads(done.stdout)
    assert shown["database_url"] == "postgresql+psycopg://opsloop:***@127.0.0.1:5432/test"
    assert shown["redis_url"] == "**********"
