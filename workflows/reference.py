"""Reference profiles: what a model version's inputs looked like when it was trained.

A profile is plain JSON, stored with the version in the registry
(``Registry.log_reference`` / ``Registry.reference``); drift checks
(:mod:`workflows.drift_monitor`) compare live traffic with its ``sample``, so they never read
the training set. Its shape::

    {"rows": int,
     "features": {name: {"kind", "count", "missing", ...}},
     "predictions": {"mean", "histogram"},      # only when the training predictions are known
     "sample": {name: [value, ...]}}

Numeric features get count, missing, mean, std, min, max, quantiles and a histogram over up
to 10 quantile-based bins (``edges``/``counts``, numpy's convention: bins are half-open except
the last). Categorical features get counts and frequencies of every declared category and of
any other value seen.

:func:`build_profile` is the pure part; :func:`profile_for_signature` first checks that the
data fit a model's MLflow input signature, for references handed in by a user.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from opsloop.errors import InvalidInputError

__all__ = ["Column", "build_profile", "columns_from_signature", "profile_for_signature"]

_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
_PROBABILITY_BINS = np.linspace(0.0, 1.0, 11)
_NUMERIC_TYPES = {"long", "integer", "double", "float"}
_CATEGORICAL_TYPES = {"string", "boolean"}


@dataclass(frozen=True)
class Column:
    """One profiled input column.

    Attributes:
        name: Column name.
        kind: ``numeric`` or ``categorical``; drift checks pick their tests by it.
        categories: Values a categorical column may take, counted even when absent; others
            seen in the data are counted too.
    """

    name: str
    kind: Literal["numeric", "categorical"]
    categories: tuple[str, ...] = ()


def columns_from_signature(signature: Sequence[tuple[str, str]]) -> list[Column]:
    """The profiled columns of an MLflow input signature, given as ``(name, type)`` pairs.

    Numbers are numeric, strings and booleans categorical. ``datetime`` and ``binary``
    columns are left out: none of the drift tests applies to them, and their values are
    not JSON.
    """
    columns = []
    for name, dtype in signature:
        if dtype in _NUMERIC_TYPES:
            columns.append(Column(name, "numeric"))
        elif dtype in _CATEGORICAL_TYPES:
            columns.append(Column(name, "categorical"))
    return columns


def build_profile(
    frame: pd.DataFrame,
    columns: Sequence[Column],
    probabilities: Any = None,
    *,
    sample_rows: int = 5000,
    seed: int = 0,
) -> dict[str, Any]:
    """Summarise ``columns`` of ``frame`` (and the predicted probabilities, if given).

    Args:
        frame: At least the profiled columns.
        columns: What to profile, in order.
        probabilities: P(positive class) per row, or a ``predict_proba`` array (column 1 is
            used); None leaves ``predictions`` out.
        sample_rows: How many rows (drawn without replacement) to keep as ``sample``, so
            tests such as Kolmogorov-Smirnov can run later without the training set.
        seed: Seed of that draw.

    Returns:
        The profile described in the module docstring, JSON-serialisable.

    Raises:
        InvalidInputError: No columns, a column missing or without values, no rows, or not
            one probability per row.
    """
    names = [column.name for column in columns]
    if not names:
        raise InvalidInputError("nothing to profile: no numeric or categorical columns", field="columns")
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise InvalidInputError(f"frame lacks feature columns {missing}", field="frame", missing=missing)
    if len(frame) == 0:
        raise InvalidInputError("the frame has no rows", field="frame")
    profile: dict[str, Any] = {
        "rows": len(frame),
        "features": {column.name: _feature(frame[column.name], column) for column in columns},
    }
    if probabilities is not None:
        profile["predictions"] = _predictions(probabilities, len(frame))
    keep = np.random.default_rng(seed).permutation(len(frame))[:sample_rows]
    profile["sample"] = {name: frame[name].iloc[keep].tolist() for name in names}
    return profile


def profile_for_signature(
    frame: pd.DataFrame, signature: Sequence[tuple[str, str]], *, what: str = "the reference data"
) -> dict[str, Any]:
    """Check ``frame`` against a model's input signature, then profile it.

    Columns the model does not take (a label, an id) are ignored.

    Args:
        frame: Rows of the model's inputs, e.g. its training set.
        signature: The model's ``(column, MLflow type)`` pairs (``Registry.signature_columns``).
        what: How error messages name ``frame``.

    Raises:
        InvalidInputError: No rows, a signature column missing, text where the signature
            says number, or a column without values.
    """
    if len(frame) == 0:
        raise InvalidInputError(f"{what} has no rows", field="reference")
    missing = [name for name, _ in signature if name not in frame.columns]
    if missing:
        raise InvalidInputError(
            f"{what} lacks the model's input columns {missing}", field="reference", missing=missing
        )
    columns = columns_from_signature(signature)
    types = dict(signature)
    for column in columns:
        values = frame[column.name]
        if column.kind == "numeric" and not (
            pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        ):
            raise InvalidInputError(
                f"column {column.name!r} of {what} holds {values.dtype} values; "
                f"the model takes {types[column.name]}",
                field=column.name,
            )
    return build_profile(frame, columns)


def _feature(column: pd.Series, spec: Column) -> dict[str, Any]:
    present = column.dropna()
    if present.empty:
        raise InvalidInputError(f"feature {spec.name!r} has no values", field=spec.name)
    entry: dict[str, Any] = {"kind": spec.kind, "count": len(present), "missing": len(column) - len(present)}
    if spec.kind == "numeric":
        values = present.to_numpy(dtype=float)
        edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, 11)))
        edges = edges if len(edges) > 1 else np.array([edges[0], edges[0]])  # constant column
        counts, _ = np.histogram(values, bins=edges)
        quantiles = np.quantile(values, _QUANTILES)
        return entry | {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "min": float(values.min()),
            "max": float(values.max()),
            "quantiles": {str(q): float(v) for q, v in zip(_QUANTILES, quantiles, strict=True)},
            "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        }
    seen = present.astype(str).value_counts()
    counts_by = {c: int(seen.get(c, 0)) for c in spec.categories}
    counts_by |= {str(c): int(n) for c, n in seen.items() if c not in counts_by}
    return entry | {"counts": counts_by, "frequencies": {c: n / len(present) for c, n in counts_by.items()}}


def _predictions(probabilities: Any, rows: int) -> dict[str, Any]:
    proba = np.asarray(probabilities, dtype=float)
    proba = proba[:, 1] if proba.ndim == 2 else proba
    if proba.shape != (rows,):
        raise InvalidInputError(
            f"need one probability per row: {rows} rows, shape {proba.shape}", field="probabilities"
        )
    counts, _ = np.histogram(proba, bins=_PROBABILITY_BINS)
    return {
        "mean": float(proba.mean()),
        "histogram": {"edges": np.round(_PROBABILITY_BINS, 1).tolist(), "counts": counts.tolist()},
    }
