"""Argument checks shared by the vector stores, so both reject bad input the same way.

Each check raises ``InvalidInputError`` naming the field and the bad value, and returns
the value in the plain form the engines take.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from opsloop.errors import InvalidInputError
from rag.stores.protocol import FilterValue, Point, Scalar, canonical_id

# Collection names become directory names for Qdrant Edge: keep them portable and unable
# to escape the store's directory ("..", "/", a leading dot).
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
MAX_DIMENSION = 65_536  # Qdrant's own limit on dense vector size
MAX_LIMIT = 10_000

Condition = tuple[str, Scalar | tuple[str, ...] | tuple[int, ...]]
"""A payload key and the value it must equal, or the tuple of values it may equal."""


def check_name(name: object) -> str:
    """A valid collection name: 1-64 of ``[A-Za-z0-9_-]``, not starting with ``-``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInputError(
            "collection name must be 1-64 letters, digits, '_' or '-', not starting with '-'",
            field="name",
            value=repr(name),
        )
    return name


def check_dimension(dimension: object) -> int:
    """A dense vector size in ``[1, 65536]``."""
    if isinstance(dimension, bool) or not isinstance(dimension, int) or not 1 <= dimension <= MAX_DIMENSION:
        raise InvalidInputError(
            f"dimension must be an integer in [1, {MAX_DIMENSION}]", field="dimension", value=repr(dimension)
        )
    return dimension


def check_limit(limit: object) -> int:
    """A result count in ``[1, 10000]``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidInputError(
            f"limit must be an integer in [1, {MAX_LIMIT}]", field="limit", value=repr(limit)
        )
    return limit


def check_threshold(score_threshold: float | None) -> float | None:
    """A finite score threshold, or None."""
    if score_threshold is None:
        return None
    if isinstance(score_threshold, bool) or not isinstance(score_threshold, int | float):
        raise InvalidInputError(
            "score_threshold must be a number", field="score_threshold", value=repr(score_threshold)
        )
    if not math.isfinite(score_threshold):
        raise InvalidInputError(
            "score_threshold must be finite", field="score_threshold", value=score_threshold
        )
    return float(score_threshold)


def check_ids(ids: Sequence[str]) -> list[str]:
    """Canonical UUID strings, duplicates dropped, order kept."""
    if isinstance(ids, str):
        raise InvalidInputError("ids must be a list of UUID strings, not one string", field="ids", value=ids)
    return list(dict.fromkeys(canonical_id(value, "ids") for value in ids))


def dense_list(
    vector: np.ndarray | Sequence[float], dimension: int, field: str, **context: object
) -> list[float]:
    """The vector as a list of ``dimension`` finite floats."""
    array = np.asarray(vector, dtype=np.float32)
    if array.ndim != 1 or array.shape[0] != dimension:
        raise InvalidInputError(
            f"{field} must have {dimension} dimensions",
            field=field,
            expected=dimension,
            got=list(array.shape),
            **context,
        )
    if not np.isfinite(array).all():
        raise InvalidInputError(f"{field} holds NaN or infinity", field=field, **context)
    return array.tolist()


def dedupe_points(points: Sequence[Point]) -> list[Point]:
    """The points with one per id, the last one winning, as an upsert of them all would leave."""
    if isinstance(points, Point):
        raise InvalidInputError("points must be a list of Point", field="points")
    by_id: dict[str, Point] = {}
    for i, point in enumerate(points):
        if not isinstance(point, Point):
            raise InvalidInputError(
                "points must be Point objects", field=f"points[{i}]", type=type(point).__name__
            )
        by_id.pop(point.id, None)  # move a repeated id to its last position
        by_id[point.id] = point
    return list(by_id.values())


def check_filter(filter: Mapping[str, FilterValue] | None) -> list[Condition]:
    """Conditions that must all hold: equality, or any-of for a list of strings or integers."""
    if filter is None:
        return []
    if not isinstance(filter, Mapping):
        raise InvalidInputError("filter must be a dict of payload key to value", field="filter")
    return [condition(key, value) for key, value in filter.items()]


def condition(key: object, value: object) -> Condition:
    """One checked filter condition."""
    if not isinstance(key, str) or not key:
        raise InvalidInputError("filter keys must be non-empty strings", field="filter", key=repr(key))
    field = f"filter.{key}"
    if isinstance(value, str | bool | int):
        return key, value
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        items = tuple(value)
        if items and all(isinstance(item, str) for item in items):
            return key, tuple(str(item) for item in items)
        if items and all(isinstance(item, int) and not isinstance(item, bool) for item in items):
            return key, tuple(int(item) for item in items)
        raise InvalidInputError(
            "an any-of filter needs a non-empty list of only strings or only integers",
            field=field,
            value=repr(value),
        )
    raise InvalidInputError(
        "filter values must be a string, integer, boolean or a list of them",
        field=field,
        value=repr(value),
    )


def check_fields(fields: Sequence[str]) -> list[str]:
    """Payload field names to index: non-empty strings, duplicates dropped."""
    if isinstance(fields, str):
        raise InvalidInputError(
            "keyword_fields must be a list of names", field="keyword_fields", value=fields
        )
    for field in fields:
        if not isinstance(field, str) or not field:
            raise InvalidInputError(
                "keyword_fields must be non-empty strings", field="keyword_fields", value=repr(field)
            )
    return list(dict.fromkeys(fields))
