"""PostgreSQL going away: serve refuses to start with the reason, a running one answers 502.

A running server names the database in its 502 instead of answering a bare 500.

A TCP proxy of the test's own stands between the server and PostgreSQL, so the database can be
"taken down" (the proxy closed) without touching the machine's server.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.twins import OpsloopServer, opsloop

pytestmark = pytest.mark.postgres


class Proxy:
    """Forwards loopback connections to PostgreSQL until :meth:`close` cuts them all."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                return
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.closed = True
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    proxy = Proxy(("127.0.0.1", 5432))
    yield proxy
    proxy.close()


def _url(postgres_url: str, port: int) -> str:
    return postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{port}")


def test_serve_refuses_to_start_without_its_database_and_says_why(tmp_path: Path, postgres_url: str) -> None:
    closed = socket.create_server(("127.0.0.1", 0))  # bound, never accepting: refused at once
    port = closed.getsockname()[1]
    closed.close()
    done = opsloop(
        tmp_path / "home", "serve", env={"OPSLOOP_DATABASE_URL": _url(postgres_url, port)}, timeout=60
    )
    assert done.returncode == 1
    said = " ".join(done.stderr.split())
    assert "Traceback" not in said
    assert f"127.0.0.1:{port}" in said and "does not answer" in said and "OPSLOOP_DATABASE_URL" in said


def test_a_running_server_answers_502_naming_the_database_once_it_is_gone(
    tmp_path: Path, postgres_url: str, proxy: Proxy
) -> None:
    assert "127.0.0.1:5432" in postgres_url
    server = OpsloopServer(
        tmp_path / "home",
        {"OPSLOOP_DATABASE_URL": _url(postgres_url, proxy.port), "OPSLOOP_KEY_CACHE_SECONDS": "0"},
    )
    try:
        server.wait_ready()
        admin = {"Authorization": f"Bearer {(server.home / 'admin.key').read_text().strip()}"}
        assert server.http.get("/admin/audit", headers=admin).status_code == 200
        proxy.close()
        time.sleep(0.2)
        answer = server.http.get("/admin/audit", headers=admin, timeout=60)
        assert answer.status_code == 502, answer.text
        error = answer.json()["error"]
        assert error["type"] == "backend_error"
        assert error["message"].startswith("the database does not answer")
        assert server.http.get("/healthz").status_code == 200
    finally:
        server.stop()
