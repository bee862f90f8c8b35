"""Sends an httpx2-based SDK's requests through an injected ``httpx.AsyncClient``.

The ``anthropic`` SDK (1.0 on) speaks only ``httpx2`` and refuses ``httpx`` clients, while
opsloop injects ``httpx`` clients into every outbound seam (one connection pool per
process, ``httpx.MockTransport`` or a loopback server in tests). :func:`httpx2_client`
keeps that seam: the SDK gets an ``httpx2.AsyncClient`` whose transport hands each request
to the ``httpx`` client. Responses stream back undecoded (httpx2 decodes them, as it
negotiated the encoding), and httpx transport errors become the httpx2 errors of the same
name, which the SDK translates into its own connection and timeout errors.

This module imports ``httpx2``; import it only once the SDK that needs it has loaded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import httpx2

__all__ = ["HttpxTransport", "httpx2_client"]


def httpx2_client(client: httpx.AsyncClient) -> httpx2.AsyncClient:
    """Return an ``httpx2.AsyncClient`` that sends through ``client``.

    Closing the returned client leaves ``client`` open: its owner closes it.
    """
    return httpx2.AsyncClient(transport=HttpxTransport(client))


class HttpxTransport(httpx2.AsyncBaseTransport):
    """An httpx2 transport that forwards every request to an ``httpx.AsyncClient``."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """Send ``request`` through the httpx client and stream its response back."""
        timeout = request.extensions.get("timeout")
        outgoing = self._client.build_request(
            request.method,
            str(request.url),
            headers=request.headers.raw,
            content=await request.aread(),
            timeout=httpx.Timeout(**timeout) if isinstance(timeout, dict) else httpx.USE_CLIENT_DEFAULT,
        )
        try:
            response = await self._client.send(outgoing, stream=True)
        except httpx.TransportError as exc:
            raise _translated(exc, request) from exc
        extensions = {"http_version": response.extensions.get("http_version", b"HTTP/1.1")}
        if response.is_stream_consumed:
            # Already read, so already decoded: a transport (MockTransport) that built its reply
            # from content. Hand over the bytes without the encoding they no longer have.
            headers = [(k, v) for k, v in response.headers.raw if k.lower() != b"content-encoding"]
            return httpx2.Response(
                response.status_code, headers=headers, content=response.content, extensions=extensions
            )
        return httpx2.Response(
            response.status_code,
            headers=response.headers.raw,
            stream=_Body(response, request),
            extensions=extensions,
        )

    async def aclose(self) -> None:
        """Leave the httpx client open: it belongs to whoever injected it."""


class _Body(httpx2.AsyncByteStream):
    """The httpx response's raw bytes, with its transport errors translated."""

    def __init__(self, response: httpx.Response, request: httpx2.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.TransportError as exc:
            raise _translated(exc, self._request) from exc

    async def aclose(self) -> None:
        """Close the httpx response (and so the connection's stream)."""
        await self._response.aclose()


def _translated(exc: httpx.TransportError, request: httpx2.Request) -> httpx2.TransportError:
    kind = getattr(httpx2, type(exc).__name__, None)
    if not (isinstance(kind, type) and issubclass(kind, httpx2.TransportError)):
        kind = httpx2.TimeoutException if isinstance(exc, httpx.TimeoutException) else httpx2.TransportError
    return kind(str(exc) or type(exc).__name__, request=request)
