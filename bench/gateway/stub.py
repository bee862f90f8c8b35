"""The benchmark's backend: a minimal OpenAI-compatible chat server that answers at once.

It is a fixture, not a model: ``POST .../chat/completions`` gets the same canned completion
(with ``usage``, so gateways have tokens to meter and price) whatever it asks, as one JSON
body, or, when the body sets ``"stream": true``, as server-sent events in OpenAI's chunk
format (with a usage chunk when ``stream_options.include_usage`` is set), then
``data: [DONE]``. ``GET /health`` and ``GET .../models`` answer too.

The HTTP/1.1 layer is a bare :class:`asyncio.Protocol` (on uvloop when it is installed):
keep-alive, ``Content-Length`` request bodies, pipelining, and no framework, so that a
request costs the backend tens of microseconds and whatever a gateway adds on top stands
out. Only the standard library (and uvloop, optionally) is imported, so the process starts
fast under any interpreter.

Run: ``python -m bench.gateway.stub --port 9000`` (binds 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from typing import Any

__all__ = ["COMPLETION_TEXT", "MODEL", "USAGE", "completion", "main", "serve"]

MODEL = "stub-model"
COMPLETION_TEXT = "The capital of France is Paris."
USAGE = {"prompt_tokens": 24, "completion_tokens": 8, "total_tokens": 32}
_STREAM_PIECES = ("The capital", " of France", " is Paris.")
_MAX_HEAD = 64 * 1024
_MAX_BODY = 16 * 1024 * 1024


def completion(created: int) -> dict[str, Any]:
    """The canned non-streamed answer, as OpenAI's ``chat.completion`` object."""
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": created,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": COMPLETION_TEXT},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": USAGE,
    }


def _chunk(created: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "created": created,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


def _stream_events(created: int, include_usage: bool) -> list[bytes]:
    chunks = [_chunk(created, {"role": "assistant", "content": ""}, None)]
    chunks += [_chunk(created, {"content": piece}, None) for piece in _STREAM_PIECES]
    chunks.append(_chunk(created, {}, "stop"))
    if include_usage:
        chunks.append(
            {
                "id": "chatcmpl-stub",
                "object": "chat.completion.chunk",
                "created": created,
                "model": MODEL,
                "choices": [],
                "usage": USAGE,
            }
        )
    events = [f"data: {json.dumps(c, separators=(',', ':'))}\n\n".encode() for c in chunks]
    events.append(b"data: [DONE]\n\n")
    return events


def _response(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


class _Canned:
    """Response bytes, rebuilt once a second so that ``created`` moves like a real server's."""

    def __init__(self) -> None:
        self._second = -1
        self.completion = b""

    def refresh(self) -> None:
        now = int(time.time())
        if now != self._second:
            self._second = now
            body = json.dumps(completion(now), separators=(",", ":")).encode()
            self.completion = _response("200 OK", body)


_MODELS = _response(
    "200 OK",
    json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}).encode(),
)
_HEALTH = _response("200 OK", b'{"status":"ok"}')
_NOT_FOUND = _response("404 Not Found", b'{"error":{"message":"not found","type":"not_found"}}')
_BAD = _response("400 Bad Request", b'{"error":{"message":"bad request","type":"invalid_request"}}')


class _Connection(asyncio.Protocol):
    """One keep-alive connection: parse requests off the buffer, answer each at once."""

    def __init__(self, canned: _Canned) -> None:
        self._canned = canned
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._transport is not None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > _MAX_HEAD:
                    self._fail()
                return
            head = bytes(self._buffer[:end]).decode("latin-1")
            lines = head.split("\r\n")
            length, close = 0, False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip() or 0)
                elif name == "transfer-encoding":  # chunked request bodies: no client here sends them
                    self._fail()
                    return
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            if length > _MAX_BODY:
                self._fail()
                return
            total = end + 4 + length
            if len(self._buffer) < total:
                return
            body = bytes(self._buffer[end + 4 : total])
            del self._buffer[:total]
            self._answer(lines[0], body)
            if close:
                self._transport.close()
                self._transport = None

    def _answer(self, request_line: str, body: bytes) -> None:
        assert self._transport is not None  # noqa: S101 - data_received checks it
        method, _, rest = request_line.partition(" ")
        path = rest.partition(" ")[0].partition("?")[0]
        if method == "POST" and path.endswith("/chat/completions"):
            self._canned.refresh()
            if b'"stream"' in body:
                try:
                    request = json.loads(body)
                except ValueError:
                    self._transport.write(_BAD)
                    return
                if request.get("stream"):
                    options = request.get("stream_options") or {}
                    self._stream(bool(options.get("include_usage")))
                    return
            self._transport.write(self._canned.completion)
        elif method == "GET" and path.endswith("/models"):
            self._transport.write(_MODELS)
        elif method == "GET" and path in ("/health", "/healthz", "/"):
            self._transport.write(_HEALTH)
        else:
            self._transport.write(_NOT_FOUND)

    def _stream(self, include_usage: bool) -> None:
        assert self._transport is not None  # noqa: S101 - _answer checks it
        parts = [
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
        ]
        for event in _stream_events(int(time.time()), include_usage):
            parts.append(b"%x\r\n%s\r\n" % (len(event), event))
        parts.append(b"0\r\n\r\n")
        self._transport.write(b"".join(parts))

    def _fail(self) -> None:
        if self._transport is not None:
            self._transport.write(_BAD)
            self._transport.close()
            self._transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def serve(host: str, port: int, ready: asyncio.Event | None = None) -> None:
    """Serve on ``host:port`` until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    canned = _Canned()
    server = await loop.create_server(
        lambda: _Connection(canned), host, port, backlog=1024, reuse_address=True
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if ready is not None:
        ready.set()
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve (on uvloop when it is installed)."""
    parser = argparse.ArgumentParser(prog="python -m bench.gateway.stub", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port))
    else:
        uvloop.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
