"""Validation of /predict instances against a model version's input signature.

Pure Python over the parsed JSON: each instance must have exactly the signature's
fields, each of the right type, finite, and, for categorical fields whose categories
are known, one of them. Errors name the instance index and the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from opsloop.errors import InvalidInputError

__all__ = ["FieldSpec", "InputSchema"]

_MAX_REPORTED = 20
_INTEGER_TYPES = {"long", "integer"}
_NUMBER_TYPES = {"double", "float"}


@dataclass(frozen=True)
class FieldSpec:
    """One input column: its name, MLflow type and, for categoricals, allowed values."""

    name: str
    type: str
    categories: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for GET /models/{model}."""
        spec: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.categories:
            spec["categories"] = list(self.categories)
        return spec

    def problem(self, value: Any) -> str | None:
        """Why ``value`` does not fit this field, or None if it does."""
        if self.type in _INTEGER_TYPES:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"expected an integer, got {type(value).__name__}"
            if not math.isfinite(value) or value != int(value):
                return f"expected an integer, got {value!r}"
        elif self.type in _NUMBER_TYPES:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"expected a number, got {type(value).__name__}"
            if not math.isfinite(value):
                return f"expected a finite number, got {value!r}"
        elif self.type == "string":
            if not isinstance(value, str):
                return f"expected a string, got {type(value).__name__}"
            if self.categories and value not in self.categories:
                return f"unknown category {value!r}; allowed: {', '.join(self.categories)}"
        elif self.type == "boolean" and not isinstance(value, bool):
            return f"expected true or false, got {type(value).__name__}"
        return None

    def example(self) -> Any:
        """A valid value, for the example instance."""
        if self.categories:
            return self.categories[0]
        return {"long": 1, "integer": 1, "double": 1.0, "float": 1.0, "boolean": False}.get(self.type, "")


@dataclass(frozen=True)
class InputSchema:
    """The ordered fields a model version takes."""

    fields: tuple[FieldSpec, ...]
    _by_name: dict[str, FieldSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {f.name: f for f in self.fields})

    @property
    def names(self) -> list[str]:
        """Field names in signature order."""
        return [f.name for f in self.fields]

    def example(self) -> dict[str, Any]:
        """One instance that passes validation."""
        return {f.name: f.example() for f in self.fields}

    def to_matrix(self, instances: list[Any], max_instances: int) -> np.ndarray:
        """Validate ``instances`` and return them as a 2-D object array in field order.

        Raises:
            InvalidInputError: naming every bad instance index and field (up to 20).
        """
        if not instances:
            raise InvalidInputError("instances must not be empty", field="instances")
        if len(instances) > max_instances:
            raise InvalidInputError(
                f"{len(instances)} instances exceed the limit of {max_instances} per request",
                field="instances",
                limit=max_instances,
            )
        problems: list[dict[str, Any]] = []
        matrix = np.empty((len(instances), len(self.fields)), dtype=object)
        for index, instance in enumerate(instances):
            if not isinstance(instance, dict):
                problems.append(_problem(index, None, f"expected an object, got {type(instance).__name__}"))
                continue
            missing = 0
            for column, spec in enumerate(self.fields):
                if spec.name not in instance:
                    problems.append(_problem(index, spec.name, "missing field"))
                    missing += 1
                    continue
                value = instance[spec.name]
                reason = spec.problem(value)
                if reason is not None:
                    problems.append(_problem(index, spec.name, reason))
                matrix[index, column] = value
            if len(instance) > len(self.fields) - missing:
                for name in instance:
                    if name not in self._by_name:
                        problems.append(_problem(index, name, "unknown field"))
            if len(problems) >= _MAX_REPORTED:
                break
        if problems:
            first = problems[0]
            raise InvalidInputError(
                f"{first['field']}: {first['message']}"
                + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""),
                errors=problems[:_MAX_REPORTED],
            )
        return matrix


def _problem(index: int, name: str | None, message: str) -> dict[str, Any]:
    where = f"instances[{index}]" + (f".{name}" if name is not None else "")
    return {"field": where, "index": index, "name": name, "message": message}
