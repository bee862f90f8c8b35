"""``opsloop serve``'s HTTP protocol (serving.http_protocol): one write per turn, nothing held back.

A real uvicorn server on loopback runs a small Starlette app with it; a raw socket reads what
comes back, so pipelining, streaming and ``Connection: close`` are seen as a client sees them.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from serving.http_protocol import CoalescingTransport, HttpProtocol
from tests.e2e.server import uvicorn_thread

release = threading.Event()  # the streamed response's last chunk waits for it


async def _json(request: Request) -> Response:
    return JSONResponse({"n": int(request.query_params.get("n", "0"))})


async def _stream(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"first;"
        while not release.is_set():
            await asyncio.sleep(0.01)
        yield b"last"

    return StreamingResponse(chunks(), media_type="text/plain")


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    app = Starlette(routes=[Route("/json", _json), Route("/stream", _stream)])
    with uvicorn_thread(app, http=HttpProtocol) as port:
        yield port


def _read_until(conn: socket.socket, marker: bytes, seconds: float = 5) -> bytes:
    conn.settimeout(seconds)
    data = b""
    while marker not in data:
        piece = conn.recv(65536)
        if not piece:
            break
        data += piece
    return data


def test_pipelined_requests_are_answered_whole_and_in_order(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"".join(f"GET /json?n={n} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for n in range(3)))
        data = _read_until(conn, b'{"n":2}')
    assert data.count(b"HTTP/1.1 200 OK") == 3
    assert data.index(b'{"n":0}') < data.index(b'{"n":1}') < data.index(b'{"n":2}')


def test_a_streamed_chunk_is_sent_before_the_response_ends(port: int) -> None:
    release.clear()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        first = _read_until(conn, b"first;")
        assert b"first;" in first and b"last" not in first
        release.set()
        assert b"last" in _read_until(conn, b"0\r\n\r\n")


def test_connection_close_sends_the_response_then_closes(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET /json?n=7 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        conn.settimeout(5)
        data = b""
        while piece := conn.recv(65536):
            data += piece
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b'{"n":7}')


class _Recording(asyncio.Transport):
    """Stands in for the socket's transport: records what reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_the_writes_of_one_turn_reach_the_socket_as_one() -> None:
    async def scenario() -> tuple[list[bytes], list[bytes], bool]:
        inner = _Recording()
        transport = CoalescingTransport(inner, asyncio.get_running_loop())
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        transport.write(b"body")
        assert inner.writes == []  # kept until the turn ends
        await asyncio.sleep(0)
        after_turn = list(inner.writes)
        transport.write(b"bye")
        transport.close()  # sends what is kept first
        await asyncio.sleep(0)  # the scheduled send finds nothing left
        return after_turn, inner.writes, inner.closed

    after_turn, writes, closed = asyncio.run(scenario())
    assert after_turn == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    assert writes == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"bye"] and closed
