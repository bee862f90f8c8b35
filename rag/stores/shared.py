"""One embedded store, several processes: the holder serves it over a Unix socket to the others.

A Qdrant Edge shard opens in one process only, so ``opsloop serve --workers N`` on the embedded
defaults would leave every worker but one answering RAG requests with 409. Instead the
supervising ``serve`` process opens the :class:`~rag.stores.EdgeStore` and a
:class:`StoreServer` serves it on ``$OPSLOOP_HOME/qdrant/store.sock``; each worker talks to it
through a :class:`SocketStore`, which implements the same :class:`~rag.stores.VectorStore`
protocol, so the retriever and the ingestor do not know the difference. Embedding, chunking
and answering stay in the workers; only store calls (a vector or a batch of points each) cross.

The socket is the owner's only (0600) and every connection proves it knows the server's key
(``multiprocessing.connection``'s HMAC challenge) before a call is read, because calls travel
pickled. A worker keeps one connection per thread, so concurrent requests do not queue behind
each other; the server answers each connection on a thread of its own, and ``EdgeStore`` is
safe to share between threads. Errors cross as the opsloop error they were (type, message,
details); anything else the engine raises arrives as a ``BackendError``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

import numpy as np

from opsloop import errors
from opsloop.errors import BackendError, OpsloopError
from rag.stores.protocol import FilterValue, Hit, Point, SparseVector, VectorStore

__all__ = ["SocketStore", "StoreServer"]

log = logging.getLogger("opsloop.rag.shared_store")

_METHODS = frozenset(
    {
        "create_collection",
        "collections",
        "drop_collection",
        "upsert",
        "delete",
        "delete_where",
        "ids_where",
        "count",
        "search_dense",
        "search_sparse",
        "get",
        "payloads",
        "dense_scores",
        "optimize",
        "unindexed",
    }
)
"""What a worker may call; ``close`` is the holder's alone."""


class StoreServer:
    """Serves ``store`` on the Unix socket ``path`` to processes that know ``authkey``."""

    def __init__(self, store: VectorStore, path: Path, authkey: bytes) -> None:
        self._store = store
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a server that was killed
        old_umask = os.umask(0o177)  # the socket is created 0600, never briefly open to others
        try:
            self._listener = Listener(str(path), family="AF_UNIX", authkey=authkey)
        finally:
            os.umask(old_umask)
        self._closed = False
        threading.Thread(target=self._accept, name="store-server", daemon=True).start()

    def close(self) -> None:
        """Stop accepting calls and remove the socket (the store itself stays open)."""
        self._closed = True
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn = self._listener.accept()
            except Exception:  # closed, or a failed challenge (AuthenticationError) and the like
                if self._closed:
                    return
                log.warning("refused a connection to the shared vector store", exc_info=True)
                continue
            threading.Thread(target=self._serve, args=(conn,), name="store-call", daemon=True).start()

    def _serve(self, conn: Connection) -> None:
        with conn:
            while True:
                try:
                    method, args, kwargs = conn.recv()
                except (EOFError, OSError):
                    return  # the worker closed it, or exited
                conn.send(self._call(method, args, kwargs))

    def _call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        if method not in _METHODS:
            return ("error", "BadRequestError", f"the shared vector store has no call {method!r}", {})
        try:
            return ("ok", getattr(self._store, method)(*args, **kwargs))
        except OpsloopError as exc:
            return ("error", type(exc).__name__, exc.message, exc.details)
        except Exception as exc:  # the engine's bare errors: the worker answers 502
            log.exception("shared vector store call %s failed", method)
            return ("error", "BackendError", f"the vector store failed: {exc}", {})


class SocketStore:
    """A :class:`~rag.stores.VectorStore` whose calls go to a :class:`StoreServer` (module docs)."""

    def __init__(self, path: Path, authkey: bytes) -> None:
        self.path = path
        self._authkey = authkey
        self._local = threading.local()
        self._connections: list[Connection] = []
        self._lock = threading.Lock()

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        conn = self._connection()
        try:
            conn.send((method, args, kwargs))
            reply = conn.recv()
        except (EOFError, OSError) as exc:
            self._local.conn = None  # a later call reconnects (the holder may have restarted)
            raise BackendError(
                f"the process that holds the vector store does not answer ({self.path.name}): {exc}"
            ) from exc
        if reply[0] == "ok":
            return reply[1]
        _, kind, message, details = reply
        error = getattr(errors, kind, None)
        if not (isinstance(error, type) and issubclass(error, OpsloopError)):
            error = BackendError
        raise error(message, **details)

    def _connection(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = Client(str(self.path), family="AF_UNIX", authkey=self._authkey)
            except (OSError, EOFError) as exc:
                raise BackendError(f"cannot reach the process that holds the vector store: {exc}") from exc
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def create_collection(
        self, name: str, dimension: int, *, sparse: bool = True, keyword_fields: Sequence[str] = ()
    ) -> None:
        """See :class:`~rag.stores.VectorStore`."""
        self._call("create_collection", name, dimension, sparse=sparse, keyword_fields=tuple(keyword_fields))

    def collections(self) -> list[str]:
        """See :class:`~rag.stores.VectorStore`."""
        return list(self._call("collections"))

    def drop_collection(self, name: str) -> None:
        """See :class:`~rag.stores.VectorStore`."""
        self._call("drop_collection", name)

    def upsert(self, name: str, points: Sequence[Point]) -> None:
        """See :class:`~rag.stores.VectorStore`."""
        self._call("upsert", name, list(points))

    def delete(self, name: str, ids: Sequence[str]) -> None:
        """See :class:`~rag.stores.VectorStore`."""
        self._call("delete", name, list(ids))

    def delete_where(self, name: str, field: str, value: FilterValue) -> None:
        """See :class:`~rag.stores.VectorStore`."""
        self._call("delete_where", name, field, value)

    def ids_where(self, name: str, field: str, value: FilterValue) -> set[str]:
        """See :class:`~rag.stores.VectorStore`."""
        return set(self._call("ids_where", name, field, value))

    def count(self, name: str) -> int:
        """See :class:`~rag.stores.VectorStore`."""
        return int(self._call("count", name))

    def search_dense(
        self,
        name: str,
        vector: np.ndarray | Sequence[float],
        *,
        limit: int = 10,
        filter: Mapping[str, FilterValue] | None = None,
        score_threshold: float | None = None,
        with_payload: bool = True,
    ) -> list[Hit]:
        """See :class:`~rag.stores.VectorStore`."""
        filters = None if filter is None else dict(filter)
        return list(
            self._call(
                "search_dense",
                name,
                vector,
                limit=limit,
                filter=filters,
                score_threshold=score_threshold,
                with_payload=with_payload,
            )
        )

    def search_sparse(
        self,
        name: str,
        sparse: SparseVector,
        *,
        limit: int = 10,
        filter: Mapping[str, FilterValue] | None = None,
        with_payload: bool = True,
    ) -> list[Hit]:
        """See :class:`~rag.stores.VectorStore`."""
        filters = None if filter is None else dict(filter)
        return list(
            self._call("search_sparse", name, sparse, limit=limit, filter=filters, with_payload=with_payload)
        )

    def get(self, name: str, ids: Sequence[str]) -> list[Point]:
        """See :class:`~rag.stores.VectorStore`."""
        return list(self._call("get", name, list(ids)))

    def payloads(self, name: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """See :class:`~rag.stores.VectorStore`."""
        return dict(self._call("payloads", name, list(ids)))

    def dense_scores(
        self, name: str, vector: np.ndarray | Sequence[float], ids: Sequence[str]
    ) -> dict[str, float]:
        """See :class:`~rag.stores.VectorStore`."""
        return dict(self._call("dense_scores", name, vector, list(ids)))

    def optimize(self, name: str) -> None:
        """See :class:`~rag.stores.VectorStore`."""
        self._call("optimize", name)

    def unindexed(self, name: str) -> int:
        """See :class:`~rag.stores.VectorStore`."""
        return int(self._call("unindexed", name))

    def close(self) -> None:
        """Close this process's connections (the holder keeps the store open)."""
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
