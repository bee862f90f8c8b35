"""Sticky assignment: a unit's variant is a pure function of (experiment salt, unit id).

No state is shared, so every ``serve`` process (and the CLI, and a restarted server) puts a
unit in the same variant. The unit is the ``X-Opsloop-Unit`` header when the client sends
one, else the API key's id, else the request id (:func:`unit_id`).

The position of a unit is the first 8 bytes of ``blake2b(salt, unit)`` read as an integer in
``[0, 2^64)``; each variant owns a slice of that range in the order the weights list them, of
a size proportional to its weight. Python's ``hash()`` would not do: it is salted per process.
Each experiment has its own salt, so a unit's variants in two experiments are independent.

With two variants, raising one's weight only moves units *into* it (its slice grows at the
end the other's shrinks from), so a canary ramping 5% -> 25% keeps every unit that already
saw the challenger on it. With three or more, a change of weights may move units between
the others.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from bisect import bisect_right
from collections.abc import Mapping
from functools import lru_cache

from opsloop.errors import InvalidInputError

__all__ = ["MAX_UNIT_LENGTH", "UNIT_HEADER", "assign", "position", "unit_id"]

UNIT_HEADER = "X-Opsloop-Unit"
MAX_UNIT_LENGTH = 256
"""Longest unit id accepted from a client (a user or session id, not a document)."""

_SPAN = 1 << 64


def position(salt: str, unit: str) -> int:
    """The unit's place in ``[0, 2^64)`` for this experiment: uniform, stable across processes."""
    # The salt's length keeps (salt, unit) pairs apart that concatenate alike: ("a", "bc"), ("ab", "c").
    key = f"{len(salt)}:{salt}{unit}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


@lru_cache(maxsize=1024)
def _bounds(weights: tuple[tuple[str, float], ...]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Variant names and the upper ends of their slices of ``[0, 2^64)``, checked once per weights."""
    if not weights:
        raise InvalidInputError("an experiment needs at least one variant", field="weights")
    names = tuple(name for name, _ in weights)
    if len(set(names)) < len(names):
        raise InvalidInputError(f"variant names repeat: {list(names)}", field="weights")
    for name, weight in weights:
        if not isinstance(weight, numbers.Real) or not (math.isfinite(weight) and weight >= 0):
            raise InvalidInputError(
                f"weight of {name!r} is {weight!r}: use a finite number >= 0", field="weights"
            )
    total = math.fsum(w for _, w in weights)
    if total <= 0:
        raise InvalidInputError(
            "the weights add up to 0: at least one variant needs traffic", field="weights"
        )
    ends, running = [], 0.0
    for _, weight in weights:
        running += weight
        ends.append(min(_SPAN, round(running / total * _SPAN)))
    ends[-1] = _SPAN  # no gap at the top from rounding
    return names, tuple(ends)


def assign(salt: str, unit: str, weights: Mapping[str, float]) -> str:
    """The variant that answers ``unit``, in proportion to ``weights`` (any non-negative scale).

    A variant of weight 0 gets no unit. Deterministic: the same salt, unit and weights give
    the same variant in any process, on any machine.

    Raises:
        InvalidInputError: The unit is empty, or the weights are empty, negative, not finite
            or all 0.
    """
    if not unit:
        raise InvalidInputError("the unit id is empty", field="unit")
    names, ends = _bounds(tuple(weights.items()))
    return names[bisect_right(ends, position(salt, unit))]


def unit_id(header: str | None, key_id: str | None, request_id: str) -> str:
    """The unit a request belongs to: the ``X-Opsloop-Unit`` header, else the key's id, else the request id.

    A header of only spaces counts as not sent.

    Raises:
        InvalidInputError: The header is longer than ``MAX_UNIT_LENGTH``, or no id is given.
    """
    if header is not None and header.strip():
        unit = header.strip()
        if len(unit) > MAX_UNIT_LENGTH:
            raise InvalidInputError(
                f"{UNIT_HEADER} is {len(unit)} characters long; at most {MAX_UNIT_LENGTH}",
                field=UNIT_HEADER,
            )
        return unit
    if key_id:
        return key_id
    if request_id:
        return request_id
    raise InvalidInputError("a request needs a unit: none of header, key id or request id", field="unit")
