"""The HTTP/1.1 protocol ``opsloop serve`` runs: uvicorn's (httptools), each response in one write.

uvicorn writes a response's status line and headers as soon as the app starts the response,
then its body, each with its own ``send`` system call. On loopback, and wherever the client
waits for the answer, each call also wakes the client: for a chat completion that was two
system calls and two wake-ups where one would do (at 16 connections of ``bench/gateway`` the
server's CPU per request fell by 10-30% once they were one). :class:`HttpProtocol` hands
uvicorn a transport that keeps what is written during one turn of the event loop and sends it
as one write at the end of that turn. Nothing waits longer than that turn: a streamed
response's chunks still go out as each is produced, and closing the connection sends what is
kept first.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["HttpProtocol"]


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a :class:`CoalescingTransport` (``uvicorn.run(http=...)``)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Serve the connection, writing through a :class:`CoalescingTransport`."""
        # Duck-typed: it answers for the transport it wraps, whose protocol stays this one.
        super().connection_made(cast(asyncio.Transport, CoalescingTransport(transport, self.loop)))


class CoalescingTransport:
    """``transport``, with the writes of one turn of ``loop`` sent as one.

    Everything but :meth:`write` and :meth:`close` is the wrapped transport's own.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._kept: list[bytes] = []

    def write(self, data: bytes) -> None:
        """Keep ``data``; the first write of a turn schedules the send at its end."""
        if not self._kept:
            self._loop.call_soon(self.flush)
        self._kept.append(data)

    def flush(self) -> None:
        """Send what is kept, as one write; dropped when the connection is already closing."""
        kept, self._kept = self._kept, []
        if kept and not self._transport.is_closing():
            self._transport.write(kept[0] if len(kept) == 1 else b"".join(kept))

    def close(self) -> None:
        """Send what is kept, then close."""
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
