"""An HTTP server on loopback that answers with whatever a test's function says.

For the failures a real model server will not produce on demand (HTTP 429, 500, 401, a
given usage block, a tool call): the client under test speaks real HTTP to a real socket,
and the test writes its answers as ``httpx`` objects, ``reply(request) -> httpx.Response``
(or a coroutine of one), the way it would describe them anyway.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
from aiohttp import web

__all__ = ["Reply", "scripted_server"]

Reply = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]
_HOP_BY_HOP = frozenset({"content-length", "transfer-encoding", "content-encoding", "connection"})


@asynccontextmanager
async def scripted_server(reply: Reply) -> AsyncIterator[str]:
    """Serve ``reply`` on a free port of 127.0.0.1 in this event loop; yield its root URL."""

    async def handle(request: web.Request) -> web.Response:
        asked = httpx.Request(
            request.method, str(request.url), headers=request.headers.items(), content=await request.read()
        )
        answer = reply(asked)
        if inspect.isawaitable(answer):
            answer = await answer
        headers = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
        return web.Response(status=answer.status_code, body=answer.read(), headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
