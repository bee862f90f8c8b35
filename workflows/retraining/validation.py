"""Validating training data before a retrain: is this frame fit to train a model on?

Two layers, both pure:

- a pandera schema (:func:`build_schema`) derived from the model's MLflow input signature and
  its reference profile (:mod:`workflows.reference`) checks every feature cell: its type,
  for numbers a plausible range, for categories a known value. The range is the reference's
  ``[min, max]`` widened by its width on each side, and never below 0 where the reference
  had no negative values: drifted data legitimately moves, and this only catches values that
  cannot be right (a negative age, an income of 10^12). Feature columns are nullable, since
  missing values are measured separately; the label must be present in every row.
- dataset-level checks (:func:`validate`): enough rows, few missing values per column, few
  duplicate rows, at least two label classes with a minority that is not vanishingly rare,
  and the quality score, the share of feature cells that are present and pass their
  column's checks, at or above a threshold.

Each check passes or fails with its observed number, its limit and a sentence for the user;
the report passes only when every check does. A column absent from the frame is a failed
check, not an exception, so one report lists everything that is wrong at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa

from opsloop.errors import InvalidInputError

__all__ = ["Check", "ColumnQuality", "ValidationReport", "build_schema", "validate"]

_NUMERIC_TYPES = {"long", "integer", "double", "float"}
_INTEGER_TYPES = {"long", "integer"}
_CATEGORICAL_TYPES = {"string", "boolean"}
# MLflow types with no value check here (as in workflows.reference): only presence and missing values.
_UNCHECKED_TYPES = {"datetime", "binary"}
_EXAMPLES = 3  # failing values quoted per column


@dataclass(frozen=True)
class Check:
    """One dataset-level check.

    Attributes:
        name: What was checked: ``rows``, ``column``, ``label``, ``missing``, ``duplicates``,
            ``label_balance`` or ``quality``.
        passed: Whether the data meet the limit.
        observed: The number measured (a share in [0, 1], a count) or a short word.
        limit: The limit, as a reader would write it (``">= 100 rows"``, ``"<= 5.0%"``).
        message: A sentence for the user, with the numbers.
        column: The column concerned, for per-column checks.
    """

    name: str
    passed: bool
    observed: float | int | str
    limit: str
    message: str
    column: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the check as a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class ColumnQuality:
    """How the cells of one feature column fared (detail behind the quality score, not a check).

    Attributes:
        name: Column name.
        dtype: The model's MLflow type for it.
        missing: Cells without a value (the whole column when it is absent).
        invalid: Present cells that fail at least one of the column's checks.
        failures: Failing cells per check (``type``, ``range``, ``category``); a cell can fail two.
        examples: A few failing values, as text.
    """

    name: str
    dtype: str
    missing: int
    invalid: int
    failures: Mapping[str, int]
    examples: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return the column's counts as a JSON-ready dict."""
        return {
            "name": self.name,
            "dtype": self.dtype,
            "missing": self.missing,
            "invalid": self.invalid,
            "failures": dict(self.failures),
            "examples": list(self.examples),
        }


@dataclass(frozen=True)
class ValidationReport:
    """The verdict on a training frame.

    Attributes:
        rows: Rows in the frame.
        score: Share of feature cells (rows x feature columns) present and passing their checks.
        threshold: The score the data needed.
        checks: Every check, failed or passed; passing per-column missing checks are folded
            into one.
        columns: Per feature column, its missing and failing cells (an addition to the
            checks, for finding what lowered the score).
    """

    rows: int
    score: float
    threshold: float
    checks: tuple[Check, ...]
    columns: tuple[ColumnQuality, ...] = ()

    @property
    def passed(self) -> bool:
        """Every check passed."""
        return all(check.passed for check in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        """The failed checks, in report order."""
        return tuple(check for check in self.checks if not check.passed)

    def to_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-ready dict (``checks`` and ``failures`` as lists of dicts)."""
        return {
            "rows": self.rows,
            "score": self.score,
            "threshold": self.threshold,
            "passed": self.passed,
            "checks": [check.to_dict() for check in self.checks],
            "failures": [check.to_dict() for check in self.failures],
            "columns": [column.to_dict() for column in self.columns],
        }

    def summary(self) -> str:
        """One line: the verdict, the score and the failed checks by name."""
        head = f"quality {self.score:.1%} (threshold {self.threshold:.1%}) over {self.rows} rows"
        if self.passed:
            return f"passed: {head}, {len(self.checks)} checks"
        failed = ", ".join(_label(check) for check in self.failures)
        return f"failed: {head}; {len(self.failures)} of {len(self.checks)} checks failed: {failed}"


def build_schema(
    signature: Sequence[tuple[str, str]], profile: Mapping[str, Any], label: str | None
) -> pa.DataFrameSchema:
    """A pandera schema of the model's inputs and label, from its signature and reference profile.

    Numeric columns (``long``, ``integer``, ``double``, ``float``) check that each value is a
    number (a whole one for ``long``/``integer``; ``3.0`` is fine, since pandas turns integer
    columns with a gap into floats) within the widened reference range. ``string`` and
    ``boolean`` columns check the value's type and that it is one of the reference's
    categories (the keys of its ``counts``). A feature the profile lacks gets the type check
    only; ``datetime`` and ``binary`` columns get none. Feature columns are nullable; every
    column is required, so lazy validation reports absent ones as ``column_in_dataframe``.

    Args:
        signature: The model's ``(column, MLflow type)`` pairs.
        profile: The model version's reference profile (``{"features": {name: {...}}}``).
        label: The label column: required, no missing values, any type; None for unlabelled
            rows (a model's live inputs).

    Returns:
        The schema; its column checks are named ``type``, ``range`` and ``category``.

    Raises:
        InvalidInputError: An empty signature, an unknown MLflow type, or the label among
            the features.
    """
    if not signature:
        raise InvalidInputError("the signature has no columns to validate", field="signature")
    features = profile.get("features") or {}
    columns: dict[str, pa.Column] = {}
    for name, dtype in signature:
        if name == label:
            raise InvalidInputError(
                f"the label {label!r} is also a model input in the signature", field="label", value=label
            )
        if dtype not in _NUMERIC_TYPES | _CATEGORICAL_TYPES | _UNCHECKED_TYPES:
            raise InvalidInputError(
                f"column {name!r} has MLflow type {dtype!r}; expected one of "
                f"{sorted(_NUMERIC_TYPES | _CATEGORICAL_TYPES | _UNCHECKED_TYPES)}",
                field="signature",
                value=dtype,
            )
        columns[name] = pa.Column(checks=_checks(dtype, features.get(name)), nullable=True, required=True)
    if label is not None:
        columns[label] = pa.Column(nullable=False, required=True)
    return pa.DataFrameSchema(columns, strict=False)


def validate(
    frame: pd.DataFrame,
    signature: Sequence[tuple[str, str]],
    profile: Mapping[str, Any],
    label: str | None,
    *,
    threshold: float = 0.95,
    max_missing: float = 0.05,
    max_duplicates: float = 0.05,
    min_rows: int = 100,
    min_minority_share: float = 0.02,
) -> ValidationReport:
    """Validate a training frame against the model's schema and the dataset-level limits.

    Args:
        frame: Training rows: the signature's columns and the label (others are ignored).
        signature: The model's ``(column, MLflow type)`` pairs.
        profile: The model version's reference profile.
        label: The label column; None for unlabelled rows (no label or balance check).
        threshold: The quality score the data need, in [0, 1].
        max_missing: Most share of missing values a feature column may have.
        max_duplicates: Most share of rows that repeat an earlier row (features and label).
        min_rows: Fewest rows to train on.
        min_minority_share: Smallest share of labelled rows the rarest class may have.

    Returns:
        The report; ``passed`` is True only if every check passed.

    Raises:
        InvalidInputError: A limit out of range, or a bad signature (see :func:`build_schema`).
    """
    for field, value in (
        ("threshold", threshold),
        ("max_missing", max_missing),
        ("max_duplicates", max_duplicates),
        ("min_minority_share", min_minority_share),
    ):
        if not 0.0 <= value <= 1.0:
            raise InvalidInputError(
                f"{field} must be a share in [0, 1], got {value}", field=field, value=value
            )
    if min_rows < 0:
        raise InvalidInputError(f"min_rows must be >= 0, got {min_rows}", field="min_rows", value=min_rows)
    schema = build_schema(signature, profile, label)
    # Failure cases carry the row's index label; positions make them unique per cell.
    data = frame.reset_index(drop=True)
    failures = _failure_cases(schema, data)
    rows = len(data)
    types = dict(signature)
    absent = set(failures.loc[failures["check"] == "column_in_dataframe", "failure_case"].astype(str))
    columns = tuple(_column_quality(name, types[name], data, failures, absent) for name in types)

    cells = rows * len(columns)
    bad = sum(c.missing + c.invalid for c in columns)
    score = (cells - bad) / cells if cells else 0.0
    checks = [_rows_check(rows, min_rows)]
    checks += [_absent_check(name, types[name]) for name in types if name in absent]
    checks += _missing_checks([c for c in columns if c.name not in absent], rows, max_missing)
    labels = [] if label is None else [label]
    checks.append(_duplicates_check(data, [*(n for n in types if n not in absent), *labels], max_duplicates))
    if label is not None:
        checks.append(_label_check(data, label, failures))
        if label not in absent:
            checks.append(_balance_check(data[label], min_minority_share))
    checks.append(_quality_check(score, threshold, cells, columns))
    return ValidationReport(
        rows=rows, score=score, threshold=threshold, checks=tuple(checks), columns=columns
    )


# --- the schema's column checks -------------------------------------------------------------


def _checks(dtype: str, reference: Mapping[str, Any] | None) -> list[pa.Check]:
    if dtype in _NUMERIC_TYPES:
        whole = dtype in _INTEGER_TYPES
        checks = [pa.Check(lambda s: _numbers(s, whole=whole).notna(), name="type")]
        if reference is not None and reference.get("min") is not None and reference.get("max") is not None:
            low, high = _bounds(float(reference["min"]), float(reference["max"]))
            checks.append(pa.Check(_in_range(low, high, whole=whole), name="range"))
        return checks
    if dtype in _CATEGORICAL_TYPES:
        kind: type = bool if dtype == "boolean" else str
        checks = [pa.Check(lambda s: _of_type(s, kind), name="type")]
        if reference is not None and reference.get("counts"):
            allowed = frozenset(str(category) for category in reference["counts"])
            checks.append(pa.Check(lambda s: s.astype(str).isin(allowed), name="category"))
        return checks
    return []


def _bounds(low: float, high: float) -> tuple[float, float]:
    """The reference range widened by its width each side, floored at 0 for non-negative data."""
    # A constant reference column has width 0, which would reject any other value at all;
    # widen by its magnitude (or 1) instead.
    width = high - low if high > low else max(abs(low), 1.0)
    lower = low - width
    if low >= 0:
        lower = max(lower, 0.0)
    return lower, high + width


def _numbers(series: pd.Series, *, whole: bool) -> pd.Series:
    """Each value as a float where it is a real number (a whole one if ``whole``), else NaN.

    Text that looks like a number (``"42"``) is not one: the model's input would be text.
    """
    if pd.api.types.is_bool_dtype(series):
        values = pd.Series(np.nan, index=series.index)
    elif pd.api.types.is_numeric_dtype(series):
        values = series.astype(float)
    else:
        values = (
            series.astype(object)
            .map(
                lambda v: (
                    float(v)
                    if isinstance(v, int | float | np.number) and not isinstance(v, bool | np.bool_)
                    else np.nan
                )
            )
            .astype(float)
        )
    if whole:
        # inf is not whole either; it fails here rather than slipping through as a range failure
        values = values.where(np.isfinite(values) & (np.floor(values) == values))
    return values


def _in_range(low: float, high: float, *, whole: bool) -> Callable[[pd.Series], pd.Series]:
    def check(series: pd.Series) -> pd.Series:
        values = _numbers(series, whole=whole)
        # Values that are not numbers fail the type check; failing them here too would
        # report one bad cell twice.
        return values.isna() | ((values >= low) & (values <= high))

    return check


def _of_type(series: pd.Series, kind: type) -> pd.Series:
    if kind is str and pd.api.types.is_string_dtype(series) and not pd.api.types.is_object_dtype(series):
        return pd.Series(True, index=series.index)  # a pandas string column holds only text
    if kind is bool and pd.api.types.is_bool_dtype(series):
        return pd.Series(True, index=series.index)
    kinds: tuple[type, ...] = (bool, np.bool_) if kind is bool else (str,)
    return series.astype(object).map(lambda v: isinstance(v, kinds)).astype(bool)


def _failure_cases(schema: pa.DataFrameSchema, data: pd.DataFrame) -> pd.DataFrame:
    try:
        schema.validate(data, lazy=True)
    except pa.errors.SchemaErrors as exc:
        return exc.failure_cases
    return pd.DataFrame(columns=["schema_context", "column", "check", "failure_case", "index"])


# --- the dataset-level checks ---------------------------------------------------------------


def _column_quality(
    name: str, dtype: str, data: pd.DataFrame, failures: pd.DataFrame, absent: set[str]
) -> ColumnQuality:
    if name in absent:
        return ColumnQuality(name, dtype, missing=len(data), invalid=0, failures={})
    cases = failures[(failures["column"] == name) & failures["index"].notna()]
    per_check = {str(check): int(n) for check, n in cases.groupby("check")["index"].nunique().items()}
    examples = tuple(dict.fromkeys(_example(v) for v in cases["failure_case"]))[:_EXAMPLES]
    return ColumnQuality(
        name,
        dtype,
        missing=int(data[name].isna().sum()),
        invalid=int(cases["index"].nunique()),
        failures=per_check,
        examples=examples,
    )


def _rows_check(rows: int, min_rows: int) -> Check:
    passed = rows >= min_rows
    if rows == 0:
        message = f"rows: the frame is empty; retraining needs at least {min_rows} rows"
    elif passed:
        message = f"rows: {rows} rows, at least {min_rows} needed"
    else:
        message = f"rows: only {rows} rows, retraining needs at least {min_rows}"
    return Check("rows", passed, rows, f">= {min_rows}", message)


def _absent_check(name: str, dtype: str) -> Check:
    message = f"{name}: the column is missing from the data; the model takes it as {dtype}"
    return Check("column", False, "absent", "present", message, column=name)


def _missing_checks(columns: Sequence[ColumnQuality], rows: int, max_missing: float) -> list[Check]:
    limit = f"<= {max_missing:.1%}"
    rates = {c.name: c.missing / rows if rows else 0.0 for c in columns}
    checks = [
        Check(
            "missing",
            False,
            rate,
            limit,
            f"{name}: {rate:.1%} missing ({_count(name, columns)} of {rows} rows), "
            f"the limit is {max_missing:.1%}",
            column=name,
        )
        for name, rate in rates.items()
        if rate > max_missing
    ]
    if not checks:  # fold the passing columns into one check
        worst = max(rates, key=lambda n: rates[n], default=None)
        detail = f" (most: {worst} {rates[worst]:.1%})" if worst is not None and rates[worst] > 0 else ""
        checks.append(
            Check(
                "missing",
                True,
                rates[worst] if worst is not None else 0.0,
                limit,
                f"missing values: every column is at most {max_missing:.1%} missing{detail}",
            )
        )
    return checks


def _count(name: str, columns: Sequence[ColumnQuality]) -> int:
    return next(c.missing for c in columns if c.name == name)


def _duplicates_check(data: pd.DataFrame, names: Sequence[str], max_duplicates: float) -> Check:
    present = [n for n in names if n in data.columns]
    rows = len(data)
    repeated = int(data.duplicated(subset=present).sum()) if rows and present else 0
    share = repeated / rows if rows else 0.0
    passed = share <= max_duplicates
    message = (
        f"duplicates: {repeated} rows ({share:.1%}) repeat an earlier row, the limit is {max_duplicates:.1%}"
    )
    return Check("duplicates", passed, share, f"<= {max_duplicates:.1%}", message)


def _label_check(data: pd.DataFrame, label: str, failures: pd.DataFrame) -> Check:
    if label not in data.columns:
        message = f"label: the label column {label!r} is missing from the data"
        return Check("label", False, "absent", "present, no missing values", message, column=label)
    unlabelled = failures[(failures["column"] == label) & (failures["check"] == "not_nullable")]
    count = int(unlabelled["index"].nunique())
    rows = len(data)
    if count:
        message = (
            f"label: {count} of {rows} rows ({count / rows:.1%}) have no {label!r}; "
            "every training row needs one"
        )
    else:
        message = f"label: every row has a {label!r}"
    return Check("label", count == 0, count, "0 missing", message, column=label)


def _balance_check(labels: pd.Series, min_share: float) -> Check:
    counts = labels.dropna().value_counts()
    total = int(counts.sum())
    limit = f">= 2 classes, minority >= {min_share:.1%}"
    if total == 0:
        return Check("label_balance", False, 0.0, limit, "label balance: no labelled rows")
    if len(counts) < 2:
        message = (
            f"label balance: every labelled row is class {_show(counts.index[0])} ({total} rows); "
            "retraining needs at least 2 classes"
        )
        return Check("label_balance", False, 0.0, limit, message, column=str(labels.name))
    rarest = counts.index[-1]
    share = int(counts.iloc[-1]) / total
    passed = share >= min_share
    shares = ", ".join(f"{_show(c)} {n / total:.1%}" for c, n in counts.items())
    tail = "" if passed else f"; the rarest, class {_show(rarest)}, is below {min_share:.1%}"
    message = f"label balance: {len(counts)} classes over {total} rows ({shares}){tail}"
    return Check("label_balance", passed, share, limit, message, column=str(labels.name))


def _quality_check(score: float, threshold: float, cells: int, columns: Sequence[ColumnQuality]) -> Check:
    limit = f">= {threshold:.1%}"
    if cells == 0:
        return Check("quality", False, 0.0, limit, "quality: no feature cells to score")
    passed = score >= threshold
    head = (
        f"quality: {score:.1%} of {cells} feature cells are present and valid, "
        f"the threshold is {threshold:.1%}"
    )
    worst = sorted((c for c in columns if c.missing + c.invalid), key=lambda c: -(c.missing + c.invalid))
    if passed or not worst:
        return Check("quality", passed, score, limit, head)
    rows = cells // len(columns)
    parts = [_column_detail(c, rows) for c in worst[:_EXAMPLES]]
    return Check("quality", passed, score, limit, f"{head}; worst: {'; '.join(parts)}")


def _column_detail(column: ColumnQuality, rows: int) -> str:
    parts = []
    if column.missing:
        parts.append(f"{column.missing / rows:.1%} missing")
    for check, n in column.failures.items():
        parts.append(f"{n} {_CHECK_WORDS.get(check, check)}")
    examples = f" (e.g. {', '.join(column.examples)})" if column.examples else ""
    return f"{column.name} {', '.join(parts)}{examples}"


_CHECK_WORDS = {
    "type": "values of the wrong type",
    "range": "values out of range",
    "category": "values outside the known categories",
}


def _example(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)  # quotes show that text is text


def _show(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))  # a float label column from a gap: class 1.0 reads as 1
    return str(value)


def _label(check: Check) -> str:
    return (
        f"{check.name}({check.column})"
        if check.column and check.name in {"missing", "column"}
        else check.name
    )
