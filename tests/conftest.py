"""Shared fixtures: settings on a temporary home, and databases for the store's contract."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from opsloop.db import Database
from opsloop.settings import Settings, load_settings

# LangGraph reads it when it is imported: chat checkpoints must hold plain JSON-able values only.
os.environ.setdefault("LANGGRAPH_STRICT_MSGPACK", "true")
# Each traced platform starts an exporting process (MLflow and Presidio imports: seconds of CPU
# per test module on 2 cores). The tests about traces turn tracing on (tracing=True).
os.environ.setdefault("OPSLOOP_TRACING", "false")

POSTGRES_URL = os.environ.get("OPSLOOP_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True, scope="module")
def _restore_mlflow_environment() -> Iterator[None]:
    """mlflow.set_tracking_uri exports MLFLOW_*_URI; keep one module's store out of the next."""
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings whose state lives in a fresh temporary home."""
    return load_settings(home=tmp_path / "home")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL into a schema of its own on the PostgreSQL server, dropped afterwards.

    Skipped when the server is unreachable, except in CI, where that is a failure.
    """
    engine = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        with engine.connect() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    except OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL unreachable: {exc.orig}")
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with engine.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated, started Database on SQLite and, in a second run, on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    db = Database(url).start()
    db.upgrade()
    yield db
    db.close()
