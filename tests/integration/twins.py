"""The scale-out twins on loopback: PostgreSQL databases, Redis, `mlflow server`, `opsloop serve`, Prometheus.

Each process starts in a session of its own (``start_new_session``), writes its output to a log
file that failures quote, and is stopped through its process group, children included (MLflow's
server runs uvicorn as a child). Every wait is bounded. A service that is missing (PostgreSQL,
Redis, the prometheus binary) skips the tests that need it locally and fails them in CI, as
``tests/conftest.py`` does for PostgreSQL and ``tests/unit/test_alert_rules.py`` for promtool.

``tests/integration/conftest.py`` starts one MLflow server per session (``mlflow_server``).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import OperationalError

from tests.conftest import POSTGRES_URL
from tests.e2e.server import clean_environment
from tests.integration.llama_server import free_port

__all__ = [
    "CHEAP_ENV",
    "OPSLOOP",
    "REDIS_URL",
    "MlflowServer",
    "OpsloopServer",
    "Process",
    "dead_route",
    "executable",
    "mlflow_server",
    "opsloop",
    "opsloop_env",
    "postgres_database",
    "redis_client",
    "replicas",
    "unavailable",
]

BIN = Path(sys.executable).parent
OPSLOOP = str(BIN / "opsloop")
REDIS_URL = os.environ.get("OPSLOOP_TEST_REDIS", "redis://127.0.0.1:6379/0")

CHEAP_ENV = {
    "OPSLOOP_BOOTSTRAP_DOCS": "false",  # ingesting the bundled docs loads the embedder
    "OPSLOOP_BOOTSTRAP_DEMO": "false",  # the tests train or register what they serve
    "OPSLOOP_LOG_LEVEL": "warning",
}
"""Settings that keep an `opsloop serve` cheap to start: no RAG ingestion, no demo training."""


def unavailable(reason: str) -> NoReturn:
    """Skip for a missing service or tool; fail in CI, so CI never passes by not running a test."""
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(reason)
    pytest.skip(reason)


def executable(name: str, hint: str) -> str:
    """The ``name`` beside this interpreter (``./dev setup`` links tools there), else on PATH."""
    beside = BIN / name
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which(name)
    if found is None:
        unavailable(f"{name} not found: {hint}")
    return found


class Process:
    """A command in a process group of its own, its output in ``log``."""

    def __init__(self, command: Sequence[str], *, env: Mapping[str, str], cwd: Path, log: Path) -> None:
        self.command = list(command)
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.command,
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self, tail: int = 6000) -> str:
        """The last ``tail`` characters the process wrote."""
        return self.log.read_text(errors="replace")[-tail:]

    def wait_http(
        self, url: str, *, seconds: float, ok: Callable[[httpx.Response], bool] | None = None
    ) -> httpx.Response:
        """Poll ``url`` until ``ok`` (default: status 200); fails on timeout or when the process exits."""
        accept = ok or (lambda response: response.status_code == 200)
        deadline = time.monotonic() + seconds
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.command[0]} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                response = httpx.get(url, timeout=2.0)
                if accept(response):
                    return response
                last = f"{response.status_code} {response.text[:300]}"
            except httpx.TransportError as exc:
                last = repr(exc)
            time.sleep(0.25)
        pytest.fail(f"{url} not ready within {seconds:.0f} s (last: {last}):\n{self.output()}")

    def stop(self, grace_s: float = 20.0) -> int:
        """SIGTERM to the group, SIGKILL to whatever is left after ``grace_s``; the leader's exit status."""
        _signal_group(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        deadline = time.monotonic() + grace_s  # children the leader did not wait for
        while _signal_group(self.proc.pid, 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        _signal_group(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to process group ``pgid``; False when nothing of the group is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A URL of a new, empty PostgreSQL database, dropped afterwards (a process may not share one)."""
    engine = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        engine.dispose()
        unavailable(f"PostgreSQL unreachable: {exc.orig}")
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:  # FORCE: a connection a killed server left behind
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@contextmanager
def redis_client() -> Iterator[Any]:
    """A client of the test Redis (``OPSLOOP_TEST_REDIS``), closed afterwards."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        unavailable(f"Redis unreachable at {REDIS_URL}: {exc}")
    try:
        yield client
    finally:
        client.close()


def opsloop_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of an opsloop process on ``home``: cheap settings (``CHEAP_ENV``), then ``extra``."""
    return {**clean_environment(), **CHEAP_ENV, "OPSLOOP_HOME": str(home), **(extra or {})}


def opsloop(
    home: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run one ``opsloop`` command on ``home``, in its parent folder; the caller checks the exit status."""
    home.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [OPSLOOP, *args],
        env=opsloop_env(home, env),
        cwd=home.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@functools.cache
def _refusing_socket() -> socket.socket:
    """A loopback socket that is bound but never listens: connections to its port are refused.

    Cached, so it stays open while this process runs and no server started later (a Prometheus
    on a free port, say) can take the port.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def dead_route(name: str = "chat") -> str:
    """``OPSLOOP_LLM_ROUTES`` with one OpenAI-compatible backend on a loopback port that refuses.

    Every call through it is admitted (budgets and rate limits count it), then fails fast with a
    502: a real route answering 5xx, with no model to load.
    """
    backend = {
        "name": "down",
        "kind": "openai",
        "base_url": f"http://127.0.0.1:{_refusing_socket().getsockname()[1]}/v1",
        "model": "none",
        "max_retries": 0,
        "timeout_s": 5,
    }
    return json.dumps({name: [backend]})


@dataclass(frozen=True)
class MlflowServer:
    """A running MLflow tracking server: its URL, and where its proxied artifacts land on disk."""

    url: str
    artifacts: Path

    @property
    def env(self) -> dict[str, str]:
        """Settings that point opsloop at this server, artifacts uploaded through it."""
        # mlflow-artifacts:/ is the server's artifact proxy, as an object store behind it would be
        # reached: clients need no shared filesystem (file:// would work only on this machine).
        return {
            "OPSLOOP_MLFLOW_TRACKING_URI": self.url,
            "OPSLOOP_MLFLOW_ARTIFACT_ROOT": "mlflow-artifacts:/opsloop",
        }


@contextmanager
def mlflow_server(root: Path, startup_s: float = 90.0) -> Iterator[MlflowServer]:
    """``mlflow server`` on a fresh PostgreSQL database, serving artifacts from ``root/artifacts``."""
    mlflow = str(BIN / "mlflow")
    with postgres_database("mlflow") as database:
        port = free_port()
        artifacts = root / "artifacts"
        command = [mlflow, "server", "--backend-store-uri", database, "--host", "127.0.0.1"]
        command += ["--port", str(port), "--workers", "1", "--artifacts-destination", str(artifacts)]
        env = clean_environment()
        # MLflow 3 starts a job runner with seven huey consumer processes (for its own GenAI jobs,
        # which opsloop does not use); without them the server starts in half the time.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        server = Process(command, env=env, cwd=root, log=root / "mlflow-server.log")
        try:
            url = f"http://127.0.0.1:{port}"
            server.wait_http(f"{url}/health", seconds=startup_s)
            yield MlflowServer(url, artifacts)
        finally:
            server.stop()


class OpsloopServer:
    """A running ``opsloop serve`` on loopback; ``http`` is a client of it."""

    def __init__(self, home: Path, env: Mapping[str, str] | None = None) -> None:
        self.home = home
        home.parent.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.process = Process(
            [OPSLOOP, "serve", "--port", str(port)],
            env=opsloop_env(home, env),
            cwd=home.parent,
            log=home.parent / f"{home.name}-serve.log",
        )
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def wait_ready(self, seconds: float = 180) -> None:
        """Until ``/readyz`` answers 200 (store, registry and models started)."""
        self.process.wait_http(f"{self.url}/readyz", seconds=seconds)

    def stop(self) -> int:
        """Stop the server (its process group); its exit status."""
        self.http.close()
        return self.process.stop()


@contextmanager
def replicas(root: Path, env: Mapping[str, str], count: int = 2) -> Iterator[list[OpsloopServer]]:
    """``count`` ``opsloop serve`` processes started together, homes ``root/replica-N``, ready.

    They share whatever ``env`` points them at (database, Redis, MLflow); starting them at once
    is the case of a deployment rolled out with several replicas.
    """
    with ExitStack() as stack:
        servers = []
        for index in range(count):
            server = OpsloopServer(root / f"replica-{index}" / "home", env)
            stack.callback(server.stop)
            servers.append(server)
        for server in servers:
            server.wait_ready()
        yield servers
