"""Qdrant Edge in-process: the embedded default vector store, one Edge shard per collection.

Layout under the store's directory (opsloop passes ``$OPSLOOP_HOME/qdrant``)::

    <root>/<collection>/collection.json   {"format": 1, "dimension": 384, "sparse": true,
                                           "shard": "shard-<hex>"}  (absent: "shard")
    <root>/<collection>/shard-<hex>/      the Edge shard: edge_config.json, segments/, wal/

A collection is built in a hidden temporary directory and renamed into place, so it either
exists whole or not at all. Edge shards keep a write-ahead log, so an update is durable
once ``upsert``/``delete`` returns, even if the process dies without ``close``. An open
shard holds a lock on its WAL: one store instance (one process) per directory.

Optimizing builds the new shard beside the live one: a copy is optimized by a child process
(the engine holds the GIL for the whole build, which would stop every thread of this one,
an event loop included), updates made meanwhile are replayed on it, and the manifest is
pointed at it. Queries and updates keep going on the live shard and wait only for the
replay and the swap.

qdrant-edge 0.9.0 is beta and raises bare ``Exception`` for every engine error, and accepts
some bad input silently (NaN vectors, repeated sparse indices); both stores therefore check
input themselves (``_checks``) and translate whatever the engine still raises into
``BackendError``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import numpy as np
import qdrant_edge as qe

from opsloop.errors import BackendError, ConflictError, InvalidInputError, NotFoundError, OpsloopError
from rag.stores import _checks
from rag.stores.protocol import FilterValue, Hit, Point, SparseVector

__all__ = ["EdgeStore"]

DENSE = "dense"
SPARSE = "sparse"
_MANIFEST = "collection.json"
_SHARD = "shard"  # a collection's first shard; optimized ones are "shard-<hex>"
_OPTIMIZER = Path(__file__).with_name("_edge_optimize.py")
_FORMAT = 1
_BATCH = 1024  # points per update operation: bounds the memory of one conversion
_PAGE = 1024  # points per scroll page


@dataclass(slots=True)
class _Collection:
    shard: qe.EdgeShard
    dimension: int
    sparse: bool
    directory: Path
    shard_dir: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held by every call on ``shard``: the swap after an optimization replaces it."""
    optimizing: threading.Lock = field(default_factory=threading.Lock)
    journal: list[qe.UpdateOperation] | None = None
    """Updates since an optimization copied the shard, replayed on the copy before the swap."""

    @contextmanager
    def use(self, action: str) -> Iterator[qe.EdgeShard]:
        """The live shard, held for one engine call; engine errors become ``BackendError``."""
        with self.lock, _engine(action):
            yield self.shard

    def update(self, operation: qe.UpdateOperation, action: str) -> None:
        with self.use(action) as shard:
            shard.update(operation)
            if self.journal is not None:
                self.journal.append(operation)


class EdgeStore:
    """Collections as Qdrant Edge shards on local disk.

    Shards open on first use and stay open until :meth:`close`. Safe to share between
    threads of one process.

    Args:
        root: Directory holding one sub-directory per collection; created when needed.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._open: dict[str, _Collection] = {}
        self._lock = threading.RLock()
        self._closed = False
        self._builds: set[subprocess.Popen[str]] = set()  # optimizing children, killed by close()

    def __enter__(self) -> EdgeStore:
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
        with self._lock:
            self._check_open()
            if (self.root / name / _MANIFEST).is_file():
                existing = self._collection(name)
                _check_same_shape(name, existing.dimension, existing.sparse, dimension, sparse)
                for operation in _field_indexes(fields):
                    existing.update(operation, f"index fields of {name!r}")
                return
            self.root.mkdir(parents=True, exist_ok=True)
            staging = self.root / f".new-{name}-{uuid.uuid4().hex}"
            try:
                with _engine(f"create collection {name!r}"):
                    shard = qe.EdgeShard.create(str(staging / _SHARD), _config(dimension, sparse))
                try:
                    for operation in _field_indexes(fields):
                        with _engine(f"index fields of {name!r}"):
                            shard.update(operation)
                finally:
                    with _engine(f"create collection {name!r}"):
                        shard.close()
                _write_manifest(staging, dimension, sparse, _SHARD)
                os.rename(staging, self.root / name)
            except OSError as exc:
                raise BackendError(f"cannot create collection {name!r} under {self.root}: {exc}") from exc
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    def collections(self) -> list[str]:
        """Names of all collections, sorted."""
        self._check_open()
        if not self.root.is_dir():
            return []
        return sorted(
            p.parent.name for p in self.root.glob(f"*/{_MANIFEST}") if not p.parent.name.startswith(".")
        )

    def drop_collection(self, name: str) -> None:
        """Delete a collection and its directory."""
        _checks.check_name(name)
        with self._lock:
            self._check_open()
            if not (self.root / name / _MANIFEST).is_file():
                raise NotFoundError(f"collection {name!r} not found", collection=name)
            opened = self._open.pop(name, None)
            if opened is not None:
                with opened.use(f"close collection {name!r}") as shard:
                    shard.close()
            # Rename first so that a crash half-way through the delete leaves no half collection.
            doomed = self.root / f".drop-{name}-{uuid.uuid4().hex}"
            try:
                os.rename(self.root / name, doomed)
                shutil.rmtree(doomed)
            except OSError as exc:
                raise BackendError(f"cannot delete collection {name!r}: {exc}") from exc

    # -- points ----------------------------------------------------------------------

    def upsert(self, name: str, points: Sequence[Point]) -> None:
        """Insert points, replacing any with the same id (the last one wins within a call)."""
        coll = self._collection(name)
        unique = _checks.dedupe_points(points)
        for start in range(0, len(unique), _BATCH):
            batch = [_to_edge(p, coll, start + i) for i, p in enumerate(unique[start : start + _BATCH])]
            coll.update(qe.UpdateOperation.upsert_points(batch), f"upsert into {name!r}")

    def delete(self, name: str, ids: Sequence[str]) -> None:
        """Delete points by id; unknown ids are ignored."""
        coll = self._collection(name)
        checked = _checks.check_ids(ids)
        if checked:
            coll.update(qe.UpdateOperation.delete_points(list(checked)), f"remove points from {name!r}")

    def delete_where(self, name: str, field: str, value: FilterValue) -> None:
        """Delete every point whose payload ``field`` matches ``value``."""
        coll = self._collection(name)
        flt = _match(*_checks.condition(field, value))
        coll.update(qe.UpdateOperation.delete_points_by_filter(flt), f"remove points from {name!r}")

    def ids_where(self, name: str, field: str, value: FilterValue) -> set[str]:
        """Ids of every point whose payload ``field`` matches ``value``."""
        coll = self._collection(name)
        flt = _match(*_checks.condition(field, value))
        ids: set[str] = set()
        offset: Any = None
        while True:
            request = qe.ScrollRequest(
                offset=offset, limit=_PAGE, filter=flt, with_payload=False, with_vector=False
            )
            with coll.use(f"scroll {name!r}") as shard:
                records, offset = shard.scroll(request)
            ids.update(str(r.id) for r in records)
            if offset is None:
                return ids

    def count(self, name: str) -> int:
        """Exact number of points in the collection."""
        coll = self._collection(name)
        with coll.use(f"count {name!r}") as shard:
            return shard.count(qe.CountRequest(exact=True))

    def get(self, name: str, ids: Sequence[str]) -> list[Point]:
        """The points with these ids, in the order asked; unknown ids are left out."""
        coll = self._collection(name)
        checked = _checks.check_ids(ids)
        if not checked:
            return []
        with coll.use(f"retrieve from {name!r}") as shard:
            records = shard.retrieve(list(checked), with_payload=True, with_vector=True)
        by_id = {str(r.id): r for r in records}
        return [_from_edge(by_id[i]) for i in checked if i in by_id]

    def payloads(self, name: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The payloads of these points, by id, without their vectors; unknown ids are left out."""
        coll = self._collection(name)
        checked = _checks.check_ids(ids)
        if not checked:
            return {}
        with coll.use(f"retrieve from {name!r}") as shard:
            records = shard.retrieve(list(checked), with_payload=True, with_vector=False)
        return {str(r.id): dict(r.payload or {}) for r in records}

    def dense_scores(
        self, name: str, vector: np.ndarray | Sequence[float], ids: Sequence[str]
    ) -> dict[str, float]:
        """See :class:`~rag.stores.VectorStore`: a dense query restricted to ``ids``."""
        coll = self._collection(name)
        checked = _checks.check_ids(ids)
        if not checked:
            return {}
        request = qe.QueryRequest(
            limit=len(checked),
            query=qe.Query.Nearest(_checks.dense_list(vector, coll.dimension, "vector"), using=DENSE),
            filter=qe.Filter(must=[qe.HasIdCondition(set(checked))]),
            with_payload=False,
        )
        with coll.use(f"search {name!r}") as shard:
            scored = shard.query(request)
        return {str(p.id): float(p.score) for p in scored}

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
        coll = self._collection(name)
        query = qe.Query.Nearest(_checks.dense_list(vector, coll.dimension, "vector"), using=DENSE)
        request = qe.QueryRequest(
            limit=_checks.check_limit(limit),
            query=query,
            filter=_filter(_checks.check_filter(filter)),
            score_threshold=_checks.check_threshold(score_threshold),
            with_payload=with_payload,
        )
        with coll.use(f"search {name!r}") as shard:
            scored = shard.query(request)
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in scored]

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
        coll = self._collection(name)
        _check_sparse_query(name, coll.sparse, sparse)
        request = qe.QueryRequest(
            limit=_checks.check_limit(limit),
            query=qe.Query.Nearest(qe.SparseVector(list(sparse.indices), list(sparse.values)), using=SPARSE),
            filter=_filter(_checks.check_filter(filter)),
            with_payload=with_payload,
        )
        if not sparse.indices:
            return []
        with coll.use(f"search {name!r}") as shard:
            scored = shard.query(request)
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in scored]

    # -- lifecycle -------------------------------------------------------------------

    def optimize(self, name: str) -> None:
        """Merge segments and build the HNSW index now, returning when the index serves.

        Edge runs no background optimizer: until this is called, points sit in appendable
        segments that every search scans exactly (brute force), which grows linearly
        with the collection. Call it after a bulk load, not after every upsert: it costs
        seconds per ten thousand points. The index is built on a copy in a child process
        (see the module's docstring), so searches and updates go on meanwhile; two calls
        for one collection take turns.
        """
        coll = self._collection(name)
        with coll.optimizing:
            _remove_unused_shards(coll)
            staged = f"{_SHARD}-{uuid.uuid4().hex}"
            try:
                with coll.use(f"copy {name!r} to optimize it") as shard:
                    shard.flush()
                    shutil.copytree(coll.directory / coll.shard_dir, coll.directory / staged)
                    coll.journal = []
                self._build(coll.directory / staged, name)
                with _engine(f"open the optimized copy of {name!r}"):
                    optimized = qe.EdgeShard.load(str(coll.directory / staged))
                self._swap(name, coll, optimized, staged)
            except BaseException:
                coll.journal = None
                shutil.rmtree(coll.directory / staged, ignore_errors=True)
                raise

    def unindexed(self, name: str) -> int:
        """Points whose dense vectors have no HNSW index, so that dense searches scan them one by one.

        Written since the last :meth:`optimize`, mostly; the optimizer also leaves segments
        under its indexing threshold (about 6,500 384-d vectors) unindexed on purpose, where a
        scan is as fast. Sparse vectors are always indexed; counted as one per point.
        """
        coll = self._collection(name)
        with coll.use(f"describe {name!r}") as shard:
            info = shard.info()
        sparse_indexed = info.points_count if coll.sparse else 0
        return info.points_count - min(max(info.indexed_vectors_count - sparse_indexed, 0), info.points_count)

    def _build(self, shard_dir: Path, name: str) -> None:
        """Build the index of the shard in ``shard_dir`` in a child process (:meth:`close` kills it)."""
        with self._lock:
            self._check_open()
            child = subprocess.Popen(
                [sys.executable, str(_OPTIMIZER), str(shard_dir)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            self._builds.add(child)
        try:
            _, errors = child.communicate()
        finally:
            with self._lock:
                self._builds.discard(child)
        if child.returncode != 0:
            reason = (errors.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
            raise BackendError(f"Qdrant Edge failed to optimize {name!r}: {reason}", collection=name)

    def _swap(self, name: str, coll: _Collection, optimized: qe.EdgeShard, staged: str) -> None:
        """Replay the updates made during the build on ``optimized`` and serve it from now on."""
        with coll.use(f"swap in the optimized {name!r}") as live:
            try:
                for operation in coll.journal or ():
                    optimized.update(operation)
                if self._open.get(name) is not coll:
                    raise NotFoundError(
                        f"collection {name!r} was dropped while it was optimized", collection=name
                    )
                _write_manifest(coll.directory, coll.dimension, coll.sparse, staged)
            except BaseException:
                optimized.close()
                raise
            coll.shard, coll.shard_dir, coll.journal = optimized, staged, None
            live.close()
        _remove_unused_shards(coll)

    def close(self) -> None:
        """Close every open shard and stop index builds; later calls raise. Calling it twice is harmless."""
        with self._lock:
            self._closed = True
            for child in self._builds:
                child.kill()  # the optimize() waiting for it fails and removes its copy
            opened, self._open = self._open, {}
            failures = []
            for name, coll in opened.items():
                try:
                    with coll.use(f"close collection {name!r}") as shard:
                        shard.close()
                except BackendError as exc:
                    failures.append(exc)
            if failures:
                raise failures[0]

    def _check_open(self) -> None:
        if self._closed:
            raise OpsloopError("this EdgeStore is closed")

    def _collection(self, name: str) -> _Collection:
        _checks.check_name(name)
        with self._lock:
            self._check_open()
            coll = self._open.get(name)
            if coll is not None:
                return coll
            directory = self.root / name
            try:
                manifest = json.loads((directory / _MANIFEST).read_text(encoding="utf-8"))
            except FileNotFoundError as exc:
                raise NotFoundError(f"collection {name!r} not found", collection=name) from exc
            except (OSError, ValueError) as exc:
                raise BackendError(f"cannot read {directory / _MANIFEST}: {exc}") from exc
            if manifest.get("format") != _FORMAT:
                raise BackendError(f"collection {name!r} has unknown format {manifest.get('format')!r}")
            shard_dir = str(manifest.get("shard", _SHARD))
            dimension, sparse = int(manifest["dimension"]), bool(manifest["sparse"])
            # A lock on the WAL makes a second opener fail here ("WouldBlock"). The config is
            # rewritten, so a collection made by an earlier version optimizes to today's.
            with _engine(f"open collection {name!r} (is another process using {directory}?)"):
                shard = qe.EdgeShard.load(str(directory / shard_dir), _config(dimension, sparse))
            coll = _Collection(shard, dimension, sparse, directory, shard_dir)
            self._open[name] = coll
            return coll


@contextmanager
def _engine(action: str) -> Iterator[None]:
    """Translate qdrant-edge's errors into ``BackendError``.

    qdrant-edge 0.9.0 raises bare ``Exception`` for everything ("Service runtime error:
    ...", "Vector dimension error: ..."), so nothing narrower can be caught; input is
    checked before it gets here, so what is left is the engine failing.
    """
    try:
        yield
    except OpsloopError:
        raise
    except Exception as exc:
        raise BackendError(f"Qdrant Edge failed to {action}: {exc}") from exc


def _field_indexes(fields: list[str]) -> list[qe.UpdateOperation]:
    # Creating an index that exists is a no-op in Edge, so no need to diff against info().
    return [qe.UpdateOperation.create_field_index(f, qe.PayloadSchemaType.Keyword) for f in fields]


def _write_manifest(directory: Path, dimension: int, sparse: bool, shard_dir: str) -> None:
    """Write ``collection.json`` whole or not at all (it names the shard in use)."""
    manifest = {"format": _FORMAT, "dimension": dimension, "sparse": sparse, "shard": shard_dir}
    partial = directory / f".{_MANIFEST}.{uuid.uuid4().hex}"
    try:
        partial.write_text(json.dumps(manifest), encoding="utf-8")
        os.replace(partial, directory / _MANIFEST)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise BackendError(f"cannot write {directory / _MANIFEST}: {exc}") from exc


def _remove_unused_shards(coll: _Collection) -> None:
    """Delete shards the manifest no longer names: swapped out, or left by a killed optimization."""
    for path in coll.directory.glob(f"{_SHARD}*"):
        if path.name != coll.shard_dir:
            shutil.rmtree(path, ignore_errors=True)


def _config(dimension: int, sparse: bool) -> qe.EdgeConfig:
    # Payloads of optimized segments are "cold" by default: read from disk and parsed on each
    # search, 0.39 ms for five at 20k points against 0.03 ms cached (and 80% of a hybrid
    # retrieval at 100k). Cached keeps them in the page cache; it applies to the segments the
    # next optimization writes, so collections made before it catch up then.
    return qe.EdgeConfig(
        vectors={DENSE: qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine)},
        sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)} if sparse else None,
        payload_memory=qe.Memory.Cached,
    )


def _check_same_shape(
    name: str, dimension: int, sparse: bool, want_dimension: int, want_sparse: bool
) -> None:
    if dimension != want_dimension:
        raise ConflictError(
            f"collection {name!r} exists with dimension {dimension}, not {want_dimension}",
            field="dimension",
            collection=name,
            existing=dimension,
            requested=want_dimension,
        )
    if sparse != want_sparse:
        raise ConflictError(
            f"collection {name!r} exists {'with' if sparse else 'without'} sparse vectors",
            field="sparse",
            collection=name,
            existing=sparse,
            requested=want_sparse,
        )


def _check_sparse_query(name: str, has_sparse: bool, sparse: SparseVector) -> None:
    if not isinstance(sparse, SparseVector):
        raise InvalidInputError("sparse must be a SparseVector", field="sparse", type=type(sparse).__name__)
    if not has_sparse:
        raise InvalidInputError(
            f"collection {name!r} was created without sparse vectors", field="sparse", collection=name
        )


def _to_edge(point: Point, coll: _Collection, index: int) -> qe.Point:
    vectors: dict[str, Any] = {
        DENSE: _checks.dense_list(point.vector, coll.dimension, "vector", id=point.id, index=index)
    }
    if point.sparse is not None:
        if not coll.sparse:
            raise InvalidInputError(
                "collection was created without sparse vectors", field="sparse", id=point.id, index=index
            )
        vectors[SPARSE] = qe.SparseVector(list(point.sparse.indices), list(point.sparse.values))
    return qe.Point(point.id, vectors, point.payload)


def _from_edge(record: qe.Record) -> Point:
    vectors = record.vector
    dense = vectors.get(DENSE) if isinstance(vectors, dict) else None
    if not isinstance(dense, list):
        raise BackendError(f"Qdrant Edge returned point {record.id} without its {DENSE!r} vector")
    sparse = vectors.get(SPARSE) if isinstance(vectors, dict) else None
    return Point(
        id=str(record.id),
        vector=[float(x) for x in dense],  # type: ignore[arg-type]
        sparse=SparseVector(sparse.indices, sparse.values) if isinstance(sparse, qe.SparseVector) else None,
        payload=dict(record.payload or {}),
    )


def _match(key: str, value: _checks.Scalar | tuple[str, ...] | tuple[int, ...]) -> qe.Filter:
    return qe.Filter(must=[_condition(key, value)])


def _condition(key: str, value: _checks.Scalar | tuple[str, ...] | tuple[int, ...]) -> qe.FieldCondition:
    if isinstance(value, tuple):
        # Condition tuples are all-str or all-int (checked); MatchAny wants a list.
        return qe.FieldCondition(key=key, match=qe.MatchAny(cast("list[str] | list[int]", list(value))))
    return qe.FieldCondition(key=key, match=qe.MatchValue(value))


def _filter(conditions: list[_checks.Condition]) -> qe.Filter | None:
    if not conditions:
        return None
    return qe.Filter(must=[_condition(key, value) for key, value in conditions])
