"""ASGI middleware in front of every route: request ids, body limits and HTTP metrics.

Written as plain ASGI (not ``BaseHTTPMiddleware``) because it sits on the hot path of
every prediction and chat completion.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opsloop.errors import PayloadTooLargeError
from opsloop.telemetry import Metrics

__all__ = ["RequestMiddleware"]

_UNMATCHED = "<unmatched>"


class RequestMiddleware:
    """Gives each request its own ``X-Request-ID``, refuses oversized bodies (413), records metrics."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        # The server's own id keys the prediction log, the ledger and the audit log: a client's
        # X-Request-ID need not be unique (feedback for one id would label every row with it),
        # so it is only echoed back as X-Correlation-ID.
        request_id = os.urandom(16).hex()  # as random as uuid4().hex, without building a UUID
        echoed = [(b"x-request-id", request_id.encode())]
        correlation = headers.get(b"x-request-id", b"")[:64]
        if correlation:
            echoed.append((b"x-correlation-id", correlation))
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *echoed]
            await send(message)

        started = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            too_large = self._too_large(headers)
            if too_large is None:
                receive, too_large = await self._limit_unsized_body(headers, receive)
            if too_large is not None:
                await _send_error(send_with_id, too_large)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            label = getattr(route, "path", _UNMATCHED)
            method = scope["method"]
            self.metrics.requests.labels(label, method, str(status)).inc()
            self.metrics.latency.labels(label, method).observe(time.perf_counter() - started)

    def _too_large(self, headers: dict[bytes, bytes]) -> PayloadTooLargeError | None:
        length = headers.get(b"content-length")
        if length is None or not length.isdigit() or int(length) <= self.max_body_bytes:
            return None
        return self._error(int(length))

    def _error(self, size: int) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"request body of {size} bytes exceeds the limit of {self.max_body_bytes} bytes",
            limit=self.max_body_bytes,
        )

    async def _limit_unsized_body(
        self, headers: dict[bytes, bytes], receive: Receive
    ) -> tuple[Receive, PayloadTooLargeError | None]:
        """Read a chunked body up front (rare) so its size is known before any route runs."""
        if b"content-length" in headers or b"transfer-encoding" not in headers:
            return receive, None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                return receive, self._error(size)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay, None


async def _send_error(send: Send, error: PayloadTooLargeError) -> None:
    body: Any = json.dumps(error.to_dict()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
