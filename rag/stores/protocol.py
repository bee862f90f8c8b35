"""The vector-store seam: the point and hit types, and the Protocol every backend implements.

A collection holds points with one dense vector (cosine distance) and, optionally, one
sparse vector (BM25-style term weights, scored with IDF). Both backends, Qdrant Edge
in-process and a Qdrant server, pass the same contract suite
(``tests/integration/test_vector_stores.py``).

Errors every implementation raises (from :mod:`opsloop.errors`): ``NotFoundError`` for an
unknown collection, ``ConflictError`` when an existing collection has another shape,
``InvalidInputError`` naming the field for bad input, ``BackendError`` when the engine
itself fails.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

import numpy as np

from opsloop.errors import InvalidInputError

__all__ = ["FilterValue", "Hit", "Point", "SparseVector", "VectorStore"]

Scalar: TypeAlias = str | int | bool
FilterValue: TypeAlias = Scalar | Sequence[str] | Sequence[int]
"""One value (equality) or a non-empty list of strings or of integers (any of them)."""

_MAX_SPARSE_INDEX = 2**32 - 1


@dataclass(frozen=True, slots=True)
class SparseVector:
    """Non-zero term weights: ``indices[i]`` has weight ``values[i]``; indices are unique.

    An empty vector is allowed (a chunk with no terms); it matches nothing.
    """

    indices: Sequence[int]
    values: Sequence[float]

    def __post_init__(self) -> None:
        indices = tuple(int(i) for i in self.indices)
        values = tuple(float(v) for v in self.values)
        if len(indices) != len(values):
            raise InvalidInputError(
                "sparse vector needs as many values as indices",
                field="sparse",
                indices=len(indices),
                values=len(values),
            )
        if len(set(indices)) != len(indices):
            raise InvalidInputError("sparse vector indices must be unique", field="sparse.indices")
        if any(i < 0 or i > _MAX_SPARSE_INDEX for i in indices):
            raise InvalidInputError(
                "sparse vector indices must be in [0, 2**32)", field="sparse.indices", value=indices
            )
        if not all(math.isfinite(v) for v in values):
            raise InvalidInputError("sparse vector values must be finite", field="sparse.values")
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "values", values)


# eq=False: a numpy ``vector`` makes the generated ``==`` raise "truth value is ambiguous";
# compare ids and fields explicitly instead.
@dataclass(frozen=True, slots=True, eq=False)
class Point:
    """One stored item: a UUID id, a dense vector, an optional sparse vector and a JSON payload.

    The id is normalised to the canonical lowercase UUID string. Vectors read back from a
    store are unit length (cosine collections store them normalised).
    """

    id: str
    vector: np.ndarray | list[float]
    sparse: SparseVector | None = None
    payload: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", canonical_id(self.id))
        dense = np.asarray(self.vector, dtype=np.float64)
        if dense.ndim != 1 or dense.size == 0:
            raise InvalidInputError(
                "vector must be a non-empty 1-D list of floats",
                field="vector",
                id=self.id,
                shape=dense.shape,
            )
        if not np.isfinite(dense).all():
            raise InvalidInputError("vector holds NaN or infinity", field="vector", id=self.id)
        if not dense.any():
            raise InvalidInputError(
                "vector is all zeros: it has no direction for cosine", field="vector", id=self.id
            )
        check_payload(self.payload, "payload")


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result, best first; ``score`` is cosine similarity or sparse dot product."""

    id: str
    score: float
    payload: dict[str, Any]


class VectorStore(Protocol):
    """Collections of points searchable by dense (cosine) and sparse (IDF dot) vectors.

    Filters are equality on payload keys: ``{"source": "a.md"}``; a list value means any
    of its values: ``{"source": ["a.md", "b.md"]}``. Several keys must all match.
    """

    def create_collection(
        self, name: str, dimension: int, *, sparse: bool = True, keyword_fields: Sequence[str] = ()
    ) -> None:
        """Create a collection, or do nothing if one of the same shape exists (else ``ConflictError``).

        ``keyword_fields`` get a payload index (added to an existing collection too): filters
        on them stay fast at scale, e.g. ``source`` or ``tenant``.
        """
        ...

    def collections(self) -> list[str]:
        """Names of all collections, sorted."""
        ...

    def drop_collection(self, name: str) -> None:
        """Delete a collection and all its points."""
        ...

    def upsert(self, name: str, points: Sequence[Point]) -> None:
        """Insert points, replacing any with the same id (the last one wins within a call)."""
        ...

    def delete(self, name: str, ids: Sequence[str]) -> None:
        """Delete points by id; unknown ids are ignored."""
        ...

    def delete_where(self, name: str, field: str, value: FilterValue) -> None:
        """Delete every point whose payload ``field`` matches ``value``."""
        ...

    def ids_where(self, name: str, field: str, value: FilterValue) -> set[str]:
        """Ids of every point whose payload ``field`` matches ``value``."""
        ...

    def count(self, name: str) -> int:
        """Exact number of points in the collection."""
        ...

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
        """The ``limit`` points nearest by cosine similarity, best first, at least ``score_threshold``.

        ``with_payload=False`` leaves each hit's payload empty: reading payloads back is most of
        a search's time in Qdrant Edge, so a caller that keeps a few hits reads theirs with
        :meth:`payloads`.
        """
        ...

    def search_sparse(
        self,
        name: str,
        sparse: SparseVector,
        *,
        limit: int = 10,
        filter: Mapping[str, FilterValue] | None = None,
        with_payload: bool = True,
    ) -> list[Hit]:
        """The ``limit`` best points by IDF-weighted sparse dot product, best first (zero scores left out).

        ``with_payload``: as for :meth:`search_dense`.
        """
        ...

    def get(self, name: str, ids: Sequence[str]) -> list[Point]:
        """The points with these ids, in the order asked; unknown ids are left out."""
        ...

    def payloads(self, name: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The payloads of these points, by id, without their vectors; unknown ids are left out."""
        ...

    def dense_scores(
        self, name: str, vector: np.ndarray | Sequence[float], ids: Sequence[str]
    ) -> dict[str, float]:
        """The cosine similarity of ``vector`` to each of these points, by id; unknown ids are left out.

        What a dense search would score them, without reading their vectors and payloads back.
        """
        ...

    def optimize(self, name: str) -> None:
        """Build search indexes now, after a bulk load (a no-op where the engine does it by itself)."""
        ...

    def unindexed(self, name: str) -> int:
        """Points that dense searches scan one by one until :meth:`optimize`.

        0 where the engine indexes by itself.
        """
        ...

    def close(self) -> None:
        """Release the backend; later calls raise. Calling it twice is harmless."""
        ...


def canonical_id(value: object, field: str = "id") -> str:
    """The canonical string of a UUID, or ``InvalidInputError`` naming ``field``."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str):
        raise InvalidInputError("point id must be a UUID string", field=field, value=repr(value))
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise InvalidInputError("point id must be a UUID string", field=field, value=value) from exc


def check_payload(value: object, path: str) -> None:
    """Raise ``InvalidInputError`` unless ``value`` is a JSON object of JSON values.

    Both engines reject NaN and non-JSON types, but with untyped or engine-specific errors;
    checking here names the offending key.
    """
    if not isinstance(value, dict):
        raise InvalidInputError("payload must be a dict", field=path, type=type(value).__name__)
    _check_json(value, path)


def _check_json(value: object, path: str) -> None:
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInputError("payload numbers must be finite", field=path, value=repr(value))
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInputError("payload keys must be strings", field=path, key=repr(key))
            _check_json(item, f"{path}.{key}")
        return
    raise InvalidInputError(
        "payload values must be JSON (str, int, float, bool, None, list, dict)",
        field=path,
        type=type(value).__name__,
    )
