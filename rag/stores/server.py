"""A Qdrant server (or cluster) through ``qdrant-client``: the scale-out vector store.

Each collection has a named dense vector ``dense`` (cosine) and, unless created without
one, a named sparse vector ``sparse`` with the IDF modifier, so the server weights BM25
term frequencies by inverse document frequency at query time, as Qdrant Edge does.

qdrant-client's errors are translated here: HTTP 404 (or local mode's "Collection ... not
found") into ``NotFoundError``, transport failures and every other server refusal into
``BackendError``. Input is checked before any request, so a refusal the server still
makes is not the caller's fault as far as this layer can tell.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, cast

import numpy as np
from pydantic import SecretStr
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ApiException, UnexpectedResponse

from opsloop.errors import BackendError, ConflictError, InvalidInputError, NotFoundError, OpsloopError
from rag.stores import _checks
from rag.stores.protocol import FilterValue, Hit, Point, SparseVector

__all__ = ["QdrantServerStore"]

DENSE = "dense"
SPARSE = "sparse"
_BATCH = 256  # points per upsert request: about 1 MB of JSON at 384 dimensions
_PAGE = 1024  # points per scroll page


class QdrantServerStore:
    """Collections on a Qdrant server, reached over HTTP with ``qdrant-client``.

    The client is created on first use, so constructing the store does no I/O. Pass
    ``client`` to use an existing ``QdrantClient`` instead (its owner closes it; the tests
    pass ``QdrantClient(location=":memory:")``).

    Args:
        url: Server URL, e.g. ``http://qdrant:6333``.
        api_key: API key sent with every request, if the server wants one.
        timeout: Seconds each request may take.
        client: An existing client to use instead of ``url``/``api_key``/``timeout``.
        replication_factor: Copies of each shard a new collection keeps on a distributed
            cluster; 2 or more keeps a collection whole while one peer is down.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: SecretStr | str | None = None,
        timeout: int = 10,
        client: QdrantClient | None = None,
        replication_factor: int = 1,
    ) -> None:
        if client is None and not url:
            raise InvalidInputError("QdrantServerStore needs a url or a client", field="url")
        if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1:
            raise InvalidInputError(
                "timeout must be a positive number of seconds", field="timeout", value=timeout
            )
        self.url = url
        self.timeout = timeout
        self.replication_factor = replication_factor
        self._api_key = SecretStr(api_key) if isinstance(api_key, str) else api_key
        self._client = client
        self._owns_client = client is None
        self._shapes: dict[str, tuple[int, bool]] = {}  # name -> (dimension, sparse), as read
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> QdrantServerStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- collections -----------------------------------------------------------------

    def create_collection(
        self, name: str, dimension: int, *, sparse: bool = True, keyword_fields: Sequence[str] = ()
    ) -> None:
        """Create a collection, or do nothing if one of the same shape exists (else ``ConflictError``).

        ``keyword_fields`` get a payload index (added to an existing collection too).
        """
        _checks.check_name(name)
        _checks.check_dimension(dimension)
        fields = _checks.check_fields(keyword_fields)
        client = self._connected()
        with self._errors(f"create collection {name!r}", name):
            exists = client.collection_exists(name)
        if not exists:
            try:
                with self._errors(f"create collection {name!r}", name):
                    client.create_collection(
                        name,
                        vectors_config={DENSE: qm.VectorParams(size=dimension, distance=qm.Distance.COSINE)},
                        sparse_vectors_config=(
                            {SPARSE: qm.SparseVectorParams(modifier=qm.Modifier.IDF)} if sparse else None
                        ),
                        replication_factor=self.replication_factor,
                    )
                self._shapes[name] = (dimension, sparse)
                self._index_fields(name, fields)
                return
            except BackendError:
                # Another client may have created it between the two calls; judge what is there.
                if not self._exists(name):
                    raise
        existing_dimension, existing_sparse = self._shape(name, refresh=True)
        if existing_dimension != dimension:
            raise ConflictError(
                f"collection {name!r} exists with dimension {existing_dimension}, not {dimension}",
                field="dimension",
                collection=name,
                existing=existing_dimension,
                requested=dimension,
            )
        if existing_sparse != sparse:
            raise ConflictError(
                f"collection {name!r} exists {'with' if existing_sparse else 'without'} sparse vectors",
                field="sparse",
                collection=name,
                existing=existing_sparse,
                requested=sparse,
            )
        self._index_fields(name, fields)

    def collections(self) -> list[str]:
        """Names of all collections on the server, sorted."""
        client = self._connected()
        with self._errors("list collections", None):
            return sorted(c.name for c in client.get_collections().collections)

    def drop_collection(self, name: str) -> None:
        """Delete a collection and all its points."""
        _checks.check_name(name)
        client = self._connected()
        with self._errors(f"delete collection {name!r}", name):
            deleted = client.delete_collection(name)
        self._shapes.pop(name, None)
        if not deleted:
            raise NotFoundError(f"collection {name!r} not found", collection=name)

    # -- points ----------------------------------------------------------------------

    def upsert(self, name: str, points: Sequence[Point]) -> None:
        """Insert points, replacing any with the same id (the last one wins within a call)."""
        dimension, has_sparse = self._shape(name)
        unique = _checks.dedupe_points(points)
        client = self._connected()
        for start in range(0, len(unique), _BATCH):
            batch = [
                _to_struct(p, dimension, has_sparse, start + i)
                for i, p in enumerate(unique[start : start + _BATCH])
            ]
            with self._errors(f"upsert into {name!r}", name):
                client.upsert(name, batch, wait=True)

    def delete(self, name: str, ids: Sequence[str]) -> None:
        """Delete points by id; unknown ids are ignored."""
        self._shape(name)
        checked = _checks.check_ids(ids)
        if checked:
            with self._errors(f"remove points from {name!r}", name):
                self._connected().delete(name, qm.PointIdsList(points=list(checked)), wait=True)

    def delete_where(self, name: str, field: str, value: FilterValue) -> None:
        """Delete every point whose payload ``field`` matches ``value``."""
        self._shape(name)
        flt = _match(*_checks.condition(field, value))
        with self._errors(f"remove points from {name!r}", name):
            self._connected().delete(name, qm.FilterSelector(filter=flt), wait=True)

    def ids_where(self, name: str, field: str, value: FilterValue) -> set[str]:
        """Ids of every point whose payload ``field`` matches ``value``."""
        self._shape(name)
        flt = _match(*_checks.condition(field, value))
        client = self._connected()
        ids: set[str] = set()
        offset: Any = None
        while True:
            with self._errors(f"scroll {name!r}", name):
                records, offset = client.scroll(
                    name,
                    scroll_filter=flt,
                    limit=_PAGE,
                    offset=offset,
                    with_payload=False,
                    with_vectors=False,
                )
            ids.update(str(r.id) for r in records)
            if offset is None:
                return ids

    def count(self, name: str) -> int:
        """Exact number of points in the collection."""
        self._shape(name)
        with self._errors(f"count {name!r}", name):
            return self._connected().count(name, exact=True).count

    def get(self, name: str, ids: Sequence[str]) -> list[Point]:
        """The points with these ids, in the order asked; unknown ids are left out."""
        self._shape(name)
        checked = _checks.check_ids(ids)
        if not checked:
            return []
        with self._errors(f"retrieve from {name!r}", name):
            records = self._connected().retrieve(name, list(checked), with_payload=True, with_vectors=True)
        by_id = {str(r.id): r for r in records}
        return [_from_record(by_id[i]) for i in checked if i in by_id]

    def payloads(self, name: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The payloads of these points, by id, without their vectors; unknown ids are left out."""
        self._shape(name)
        checked = _checks.check_ids(ids)
        if not checked:
            return {}
        with self._errors(f"retrieve from {name!r}", name):
            records = self._connected().retrieve(name, list(checked), with_payload=True, with_vectors=False)
        return {str(r.id): dict(r.payload or {}) for r in records}

    def dense_scores(
        self, name: str, vector: np.ndarray | Sequence[float], ids: Sequence[str]
    ) -> dict[str, float]:
        """See :class:`~rag.stores.VectorStore`: a dense query restricted to ``ids``."""
        dimension, _ = self._shape(name)
        query = _checks.dense_list(vector, dimension, "vector")
        checked = _checks.check_ids(ids)
        if not checked:
            return {}
        restricted = qm.Filter(must=[qm.HasIdCondition(has_id=list(checked))])
        with self._errors(f"search {name!r}", name):
            response = self._connected().query_points(
                name,
                query=query,
                using=DENSE,
                limit=len(checked),
                query_filter=restricted,
                with_payload=False,
            )
        return {str(p.id): float(p.score) for p in response.points}

    # -- search ----------------------------------------------------------------------

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
        """The ``limit`` points nearest by cosine similarity, best first, at least ``score_threshold``."""
        dimension, _ = self._shape(name)
        query = _checks.dense_list(vector, dimension, "vector")
        limit = _checks.check_limit(limit)
        flt = _filter(_checks.check_filter(filter))
        threshold = _checks.check_threshold(score_threshold)
        with self._errors(f"search {name!r}", name):
            response = self._connected().query_points(
                name,
                query=query,
                using=DENSE,
                limit=limit,
                query_filter=flt,
                score_threshold=threshold,
                with_payload=with_payload,
            )
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]

    def search_sparse(
        self,
        name: str,
        sparse: SparseVector,
        *,
        limit: int = 10,
        filter: Mapping[str, FilterValue] | None = None,
        with_payload: bool = True,
    ) -> list[Hit]:
        """The ``limit`` best points by IDF-weighted sparse dot product, best first."""
        _, has_sparse = self._shape(name)
        if not isinstance(sparse, SparseVector):
            raise InvalidInputError(
                "sparse must be a SparseVector", field="sparse", type=type(sparse).__name__
            )
        if not has_sparse:
            raise InvalidInputError(
                f"collection {name!r} was created without sparse vectors", field="sparse", collection=name
            )
        limit = _checks.check_limit(limit)
        flt = _filter(_checks.check_filter(filter))
        if not sparse.indices:
            return []
        query = qm.SparseVector(indices=list(sparse.indices), values=list(sparse.values))
        with self._errors(f"search {name!r}", name):
            response = self._connected().query_points(
                name,
                query=query,
                using=SPARSE,
                limit=limit,
                query_filter=flt,
                with_payload=with_payload,
            )
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]

    # -- lifecycle -------------------------------------------------------------------

    def unindexed(self, name: str) -> int:
        """0 for an existing collection: the server indexes in the background, by itself."""
        self._shape(name)
        return 0

    def optimize(self, name: str) -> None:
        """Nothing to do beyond checking the collection: the server optimizes in the background."""
        self._shape(name)

    def close(self) -> None:
        """Close the client if this store created it; later calls raise. Calling it twice is harmless."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None and self._owns_client:
            with self._errors("close the client", None):
                client.close()

    def _connected(self) -> QdrantClient:
        with self._lock:
            if self._closed:
                raise OpsloopError("this QdrantServerStore is closed")
            if self._client is None:
                api_key = self._api_key.get_secret_value() if self._api_key is not None else None
                self._client = QdrantClient(url=self.url, api_key=api_key, timeout=self.timeout)
            return self._client

    def _index_fields(self, name: str, fields: list[str]) -> None:
        # Qdrant accepts re-creating an index with the same schema, so this stays idempotent.
        client = self._connected()
        for field in fields:
            with self._errors(f"index field {field!r} of {name!r}", name):
                client.create_payload_index(
                    name, field_name=field, field_schema=qm.PayloadSchemaType.KEYWORD, wait=True
                )

    def _exists(self, name: str) -> bool:
        with self._errors(f"look up collection {name!r}", name):
            return self._connected().collection_exists(name)

    def _shape(self, name: str, *, refresh: bool = False) -> tuple[int, bool]:
        """The collection's (dimension, has sparse), read once and cached; ``NotFoundError`` if none."""
        _checks.check_name(name)
        client = self._connected()
        if not refresh and name in self._shapes:
            return self._shapes[name]
        with self._errors(f"read collection {name!r}", name):
            params = client.get_collection(name).config.params
        dense = params.vectors.get(DENSE) if isinstance(params.vectors, dict) else None
        if dense is None:
            raise ConflictError(
                f"collection {name!r} exists but has no named vector {DENSE!r}: not made by opsloop",
                collection=name,
            )
        shape = (dense.size, SPARSE in (params.sparse_vectors or {}))
        self._shapes[name] = shape
        return shape

    @contextmanager
    def _errors(self, action: str, name: str | None) -> Iterator[None]:
        """Translate qdrant-client's errors; a missing collection also leaves the shape cache."""
        try:
            yield
        except OpsloopError:
            raise
        except UnexpectedResponse as exc:
            if exc.status_code == 404 and name is not None:
                self._shapes.pop(name, None)
                raise NotFoundError(f"collection {name!r} not found", collection=name) from exc
            raise BackendError(
                f"Qdrant refused to {action}: HTTP {exc.status_code} {exc.content!r}",
                status_code=exc.status_code,
            ) from exc
        except ApiException as exc:  # transport failures and timeouts (ResponseHandlingException)
            # Not the server's URL: this error can reach API clients.
            raise BackendError(f"Qdrant unreachable while trying to {action}: {type(exc).__name__}") from exc
        except ValueError as exc:
            # qdrant-client's local mode (``location=":memory:"`` or ``path=``) raises ValueError
            # where a server answers 404 or 400.
            if name is not None and str(exc) == f"Collection {name} not found":
                self._shapes.pop(name, None)
                raise NotFoundError(f"collection {name!r} not found", collection=name) from exc
            raise BackendError(f"Qdrant refused to {action}: {exc}") from exc


def _to_struct(point: Point, dimension: int, has_sparse: bool, index: int) -> qm.PointStruct:
    vectors: dict[str, Any] = {
        DENSE: _checks.dense_list(point.vector, dimension, "vector", id=point.id, index=index)
    }
    if point.sparse is not None:
        if not has_sparse:
            raise InvalidInputError(
                "collection was created without sparse vectors", field="sparse", id=point.id, index=index
            )
        vectors[SPARSE] = qm.SparseVector(
            indices=list(point.sparse.indices), values=list(point.sparse.values)
        )
    return qm.PointStruct(id=point.id, vector=vectors, payload=point.payload)


def _from_record(record: qm.Record) -> Point:
    vectors = record.vector
    if not isinstance(vectors, dict) or DENSE not in vectors:
        raise BackendError(f"Qdrant returned point {record.id} without its {DENSE!r} vector")
    dense = vectors[DENSE]
    sparse = vectors.get(SPARSE)
    return Point(
        id=str(record.id),
        vector=list(dense),  # type: ignore[arg-type]
        sparse=SparseVector(sparse.indices, sparse.values) if isinstance(sparse, qm.SparseVector) else None,
        payload=dict(record.payload or {}),
    )


def _match(key: str, value: _checks.Scalar | tuple[str, ...] | tuple[int, ...]) -> qm.Filter:
    return qm.Filter(must=[_condition(key, value)])


def _condition(key: str, value: _checks.Scalar | tuple[str, ...] | tuple[int, ...]) -> qm.FieldCondition:
    if isinstance(value, tuple):
        # Condition tuples are all-str or all-int (checked); MatchAny wants a list.
        return qm.FieldCondition(key=key, match=qm.MatchAny(any=cast("list[str] | list[int]", list(value))))
    return qm.FieldCondition(key=key, match=qm.MatchValue(value=value))


def _filter(conditions: list[_checks.Condition]) -> qm.Filter | None:
    if not conditions:
        return None
    must: list[qm.Condition] = [_condition(key, value) for key, value in conditions]
    return qm.Filter(must=must)
