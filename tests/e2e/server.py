"""Helpers for end-to-end tests: `opsloop serve` and CLI processes on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

OPSLOOP = str(Path(sys.executable).with_name("opsloop"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def uvicorn_thread(
    app: Any, *, port: int | None = None, start_s: float = 30, **options: Any
) -> Iterator[int]:
    """``app`` served by uvicorn on loopback from a thread, for the block: its port.

    ``port``: default a free one. ``options`` go to ``uvicorn.Config``. The server is stopped
    when the block ends.
    """
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_s
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def clean_environment() -> dict[str, str]:
    """This process's environment without other tests' MLflow and opsloop settings.

    PYTEST_CURRENT_TEST goes too: MLflow turns on test-only checks when it sees it, and the
    processes under test should run as they do for a user.
    """
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "OPSLOOP_")) and k != "PYTEST_CURRENT_TEST"
    }


def environment(home: Path) -> dict[str, str]:
    """:func:`clean_environment`, pointed at ``home``."""
    env = clean_environment()
    # Ingesting the bundled docs at start loads the embedder, and tracing starts an exporting
    # process: only the tests about them want that.
    return {**env, "OPSLOOP_HOME": str(home), "OPSLOOP_BOOTSTRAP_DOCS": "false", "OPSLOOP_TRACING": "false"}


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = environment(home)
    return subprocess.run([OPSLOOP, *args], env=env, capture_output=True, text=True, timeout=120)


class Server:
    """A running `opsloop serve` process."""

    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        env = {**environment(home), **(env or {})}
        self.proc = subprocess.Popen(
            [OPSLOOP, "serve", "--port", port, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        self.http = httpx.Client(base_url=self.url, timeout=30)
        self.wait_for("/healthz", 200)

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def wait_for(self, path: str, status: int, seconds: float = 90) -> httpx.Response:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "".join(self.output)
            try:
                response = self.http.get(path)
                if response.status_code == status:
                    return response
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{path} never answered {status}:\n{''.join(self.output)}")

    def metric(self, sample: str) -> float:
        """The value of one sample line of /metrics, such as ``x_total{a="b"}``; 0 when absent."""
        for line in self.http.get("/metrics").text.splitlines():
            name, _, value = line.rpartition(" ")
            if name == sample:
                return float(value)
        return 0.0

    def stop(self) -> int:
        self.http.close()
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=30)
