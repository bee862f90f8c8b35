"""Secrets and state stay private: settings errors, client-facing messages, file modes, the admin key.

Through what a user touches: the ``opsloop`` CLI as a subprocess, and the app through TestClient.
One test injects a failure into the first start (the same ``ensure_admin_key`` serve runs).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from opsloop.audit import AuditLog
from opsloop.auth import Role
from opsloop.settings import load_settings
from serving.app import create_app
from serving.platform import Platform
from tests.e2e.server import OPSLOOP, environment

SECRET = "sk-live-DO-NOT-PRINT-0123456789"


def _opsloop(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OPSLOOP, *args],
        env={**environment(home), "COLUMNS": "500", **(env or {})},  # rich wraps at the terminal width
        capture_output=True,
        text=True,
        timeout=300,
        cwd=home.parent,
    )


def test_a_settings_error_names_the_setting_but_never_prints_a_secret(tmp_path: Path) -> None:
    backend = {
        "name": "vllm",
        "kind": "openai",
        "model": "m",
        "base_url": "http://vllm:8000/v1",
        "api_key": SECRET,
        "max_concurrency": "lots",  # the bad field, next to the key
    }
    routes = json.dumps({"chat": {"backends": [backend]}})
    done = _opsloop(tmp_path / "home", "keys", "list", env={"OPSLOOP_LLM_ROUTES": routes})
    assert done.returncode == 1
    assert "OPSLOOP_LLM_ROUTES.chat.backends.0.max_concurrency" in done.stderr
    assert "valid integer" in done.stderr and "'lots'" in done.stderr  # a harmless value is still shown
    assert SECRET not in done.stderr + done.stdout

    # A misspelled secret setting is an unknown one: named, its value not shown.
    config = tmp_path / "opsloop.yaml"
    config.write_text(f"qdrant_api_kee: {SECRET}\nport: 99999\n")
    done = _opsloop(tmp_path / "home", "--config", str(config), "keys", "list")
    assert done.returncode == 1
    assert "OPSLOOP_QDRANT_API_KEE" in done.stderr and "OPSLOOP_PORT" in done.stderr
    assert "99999" in done.stderr
    assert SECRET not in done.stderr + done.stdout


def test_home_is_owner_only_and_so_are_its_databases(tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = _opsloop(home, "models", "list")  # opens both opsloop's database and MLflow's
    assert done.returncode == 0, done.stderr
    assert home.stat().st_mode & 0o777 == 0o700
    databases = [p for p in home.iterdir() if p.name.startswith(("opsloop.db", "mlflow.db"))]
    assert {"opsloop.db", "mlflow.db"} <= {p.name for p in databases}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in databases} == {p.name: "0o600" for p in databases}
    assert (home / "mlflow.db").stat().st_size > 0  # MLflow made its tables in the file made for it


def test_a_stale_admin_key_file_stops_serve_before_anything_is_stored(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    stale = home / "admin.key"
    stale.write_text("olk_0123456789ab_an-earlier-homes-key\n")
    done = _opsloop(home, "serve", "--port", "1")
    assert done.returncode == 1
    assert f"{stale} exists, but the key store has no keys" in done.stderr
    assert "Move or delete" in done.stderr and "Traceback" not in done.stderr
    assert stale.read_text() == "olk_0123456789ab_an-earlier-homes-key\n"
    listed = _opsloop(home, "keys", "list", "--json")
    assert listed.returncode == 0 and listed.stdout == ""


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    platform = Platform.build(load_settings(home=tmp_path / "home", bootstrap_docs=False)).start_store()
    yield platform
    platform.close()


def test_the_first_admin_key_survives_a_failed_key_file_write(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = platform.settings.admin_key_path
    real_open = os.open

    def full_disk(file: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
        if Path(file) == path:
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_open(file, flags, mode, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(os, "open", full_disk)
        with pytest.raises(OSError, match="No space left"):
            platform.ensure_admin_key()
    assert platform.keys.list() == []  # nothing stored whose secret was never written

    assert platform.ensure_admin_key() == path  # the next start creates it as if first
    principal = platform.keys.authenticate(path.read_text().strip())
    assert principal.role == Role.ADMIN and path.stat().st_mode & 0o777 == 0o600


def test_a_failed_store_of_the_first_admin_key_removes_its_file(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the audit log is down")

    with monkeypatch.context() as patched:
        patched.setattr(AuditLog, "record", broken)
        with pytest.raises(RuntimeError, match="audit log is down"):
            platform.ensure_admin_key()
    assert not platform.settings.admin_key_path.exists() and platform.keys.list() == []
    assert platform.ensure_admin_key() == platform.settings.admin_key_path


def test_an_unknown_eval_run_is_named_by_id_not_by_the_servers_folder(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = load_settings(home=home, bootstrap_demo=False, bootstrap_docs=False, drift_check_seconds=0)
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        platform: Platform = app.state.platform
        key = platform.keys.create("acme", Role.OPERATOR, actor="test").secret.get_secret_value()
        headers = {"Authorization": f"Bearer {key}"}
        upload = [("files", ("keys.md", b"# Keys\n\nRotate keys every 90 days.\n"))]
        assert client.post("/collections/book/documents", files=upload, headers=headers).status_code == 200
        items = [{"question": "How often?", "reference": "90 days", "reference_sources": ["keys.md"]}]
        body = {
            "dataset": {"name": "keys", "items": items},
            "collection": "book",
            "generate": False,
            "resume": "0123456789abcdef",
        }
        response = client.post("/admin/evals/runs", json=body, headers=headers)
    assert response.status_code == 404, response.text
    text = response.text
    assert "0123456789abcdef" in text
    assert str(home) not in text and str(tmp_path) not in text
