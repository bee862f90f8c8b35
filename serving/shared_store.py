"""The embedded vector store under ``opsloop serve --workers N``: the supervisor holds it, workers share it.

Qdrant Edge opens in one process only. With several workers, the supervising ``serve``
process (uvicorn's, which answers no request itself) takes the store lock, opens the store
and serves it on a Unix socket (:mod:`rag.stores.shared`); every worker's RAG service uses a
:class:`~rag.stores.shared.SocketStore` to it, so every worker answers every RAG route.

The lock file names the server (its URL and a token) as a one-process server's does, so the
CLI hands its RAG work to the server over HTTP. The token is the supervisor's and reaches the
workers in their environment, so whichever worker the kernel gives the CLI's connection to
accepts it. The same token is the socket's key.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from opsloop.settings import Settings
from rag.stores.shared import SocketStore
from serving.local import local_url

__all__ = ["SOCKET_ENV", "TOKEN_ENV", "serve_embedded_store", "server_token", "worker_store"]

SOCKET_ENV = "OPSLOOP_SHARED_STORE_SOCKET"
TOKEN_ENV = "OPSLOOP_SERVER_TOKEN"  # noqa: S105 - the variable's name, not a secret


@contextmanager
def serve_embedded_store(settings: Settings) -> Iterator[dict[str, str]]:
    """Hold and serve the embedded store while the block runs; yields the workers' environment.

    Raises:
        ConflictError: Another process (a CLI run) holds the store.
    """
    from rag.service import StoreLock
    from rag.stores import EdgeStore
    from rag.stores.shared import StoreServer

    token = secrets.token_urlsafe(32)
    directory = settings.home / "qdrant"
    lock = StoreLock(directory, {"url": local_url(settings), "token": token})
    store = EdgeStore(directory)
    server = StoreServer(store, directory / "store.sock", token.encode())
    try:
        yield {SOCKET_ENV: str(server.path), TOKEN_ENV: token}
    finally:
        server.close()
        store.close()
        lock.release()


def server_token() -> str:
    """This server's token: the supervisor's under several workers, else a new one."""
    return os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(32)


def worker_store() -> SocketStore | None:
    """The supervisor's shared store, in a worker of ``serve --workers N``; None elsewhere."""
    path, token = os.environ.get(SOCKET_ENV), os.environ.get(TOKEN_ENV)
    if not path or not token:
        return None
    return SocketStore(Path(path), token.encode())
