"""The model card of a retrained version: what it was trained on, how it was checked, how it compares.

A :class:`ModelCard` gathers what a reviewer needs to decide on a retrained model: why the
retrain ran (trigger and cause), the data (window, hash, manifest, row counts), the
validation report (:meth:`ValidationReport.to_dict`), the comparison with the champion
(:meth:`Comparison.to_dict`), the training parameters, the lineage, and known limits. It is
plain data: :meth:`ModelCard.to_dict` is stored as JSON with the version, and
:meth:`ModelCard.to_markdown` renders it for people. :func:`default_limits` words the limits
every retrain shares, with its own numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from opsloop.errors import InvalidInputError
from workflows.retraining.evaluation import LOWER_IS_BETTER

__all__ = ["ModelCard", "default_limits"]

# Validation checks whose observed value is a share, shown as a percentage like their limits.
_SHARE_CHECKS = frozenset({"missing", "duplicates", "label_balance", "quality"})


def default_limits(
    *,
    holdout_rows: int,
    window: str | Mapping[str, Any],
    min_slice_rows: int = 30,
    label_source: str = "/feedback",
    user_supplied_rows: int = 0,
) -> tuple[str, ...]:
    """The known limits every retrained model shares, worded with this retrain's numbers.

    Args:
        holdout_rows: Labelled rows the comparison was scored on.
        window: The data window (text, or a mapping with ``start`` and ``end``).
        min_slice_rows: Fewest rows a reported slice has.
        label_source: Where the labels came from.
        user_supplied_rows: Training rows a user handed in rather than drawn from production.

    Returns:
        One sentence per limit.
    """
    limits = [
        f"evaluated on {holdout_rows} holdout rows from {_window(window)}; "
        f"slices with fewer than {min_slice_rows} rows are not reported",
        f"labels come from {label_source} and may lag or be biased toward disputed predictions",
        "the holdout is the newest labelled rows, so it measures the recent world only",
    ]
    if user_supplied_rows:
        limits.append(
            f"{user_supplied_rows} training rows were supplied by a user, not drawn from production traffic"
        )
    return tuple(limits)


@dataclass(frozen=True)
class ModelCard:
    """Everything a reviewer reads before promoting a retrained version.

    Attributes:
        model: Registered model name.
        version: Registered version; None until it is registered.
        parent_version: The version it was retrained from (the champion), if any.
        trigger: What started the retrain (``drift``, ``schedule``, ``manual`` ...).
        cause: The trigger's evidence, e.g. the drift report's numbers.
        created_at: When the card was made, ISO 8601.
        training_run_id: The MLflow run that trained it.
        code_version: The code it was trained with (a git commit).
        data: ``window``, ``hash``, ``manifest``, ``rows`` (counts by split or source:
            train, holdout, reference, production, user-supplied ...) and ``weights``.
        validation: The training data's :meth:`ValidationReport.to_dict`.
        metrics: The :meth:`Comparison.to_dict` against the champion.
        params: Training parameters.
        trainer: The trainer function, ``module:function``.
        known_limits: Sentences on what the card does not vouch for.
    """

    model: str
    version: int | None
    parent_version: int | None
    trigger: str
    cause: dict[str, Any]
    created_at: str
    training_run_id: str
    code_version: str
    data: dict[str, Any]
    validation: dict[str, Any]
    metrics: dict[str, Any]
    params: dict[str, Any]
    trainer: str
    known_limits: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        try:
            datetime.fromisoformat(self.created_at)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(
                f"created_at {self.created_at!r} is not an ISO 8601 time",
                field="created_at",
                value=self.created_at,
            ) from exc

    def to_dict(self) -> dict[str, Any]:
        """Return the card as JSON-ready data (lists for tuples, None for non-finite numbers)."""
        return {
            "model": self.model,
            "version": self.version,
            "parent_version": self.parent_version,
            "trigger": self.trigger,
            "cause": _jsonable(self.cause),
            "created_at": self.created_at,
            "training_run_id": self.training_run_id,
            "code_version": self.code_version,
            "data": _jsonable(self.data),
            "validation": _jsonable(self.validation),
            "metrics": _jsonable(self.metrics),
            "params": _jsonable(self.params),
            "trainer": self.trainer,
            "known_limits": list(self.known_limits),
        }

    def to_markdown(self) -> str:
        """Render the card as Markdown: summary, data, validation, evaluation, parameters, lineage, limits."""
        version = f"version {self.version}" if self.version is not None else "version (not registered yet)"
        parts = [
            f"# Model card: {self.model} {version}",
            self._summary(),
            "## Data",
            self._data(),
            "## Validation",
            self._validation(),
            "## Evaluation",
            self._evaluation(),
            "## Parameters",
            _table(["parameter", "value"], [[k, _value(v)] for k, v in sorted(self.params.items())])
            if self.params
            else "No parameters recorded.",
            "## Lineage",
            self._lineage(),
            "## Known limits",
            "\n".join(f"- {limit}" for limit in self.known_limits) if self.known_limits else "None recorded.",
        ]
        return "\n\n".join(parts) + "\n"

    def _summary(self) -> str:
        m = self.metrics
        if not m.get("metric"):
            sentence = "No comparison with the champion was recorded."
        else:
            low, high = _ci(m)
            if m.get("better"):
                verdict = "better than"
            elif high is not None and high < 0:
                verdict = "worse than"
            else:
                verdict = "not clearly better than"
            sentence = (
                f"The challenger is {verdict} the champion on {m['metric']}: "
                f"{_metric(m.get('champion'))} -> {_metric(m.get('challenger'))} "
                f"({_signed(m.get('delta'))}, {_confidence(m)} CI {_signed(low)}..{_signed(high)}) "
                f"over {_value(m.get('holdout_rows'))} holdout rows."
            )
        v = self.validation
        if v:
            verdict = "passed" if v.get("passed") else "failed"
            sentence += (
                f" Its training data {verdict} validation "
                f"(quality {_percent(v.get('score'))}, threshold {_percent(v.get('threshold'))})."
            )
        return sentence

    def _data(self) -> str:
        d = self.data
        lines = [
            f"- Window: {_window(d.get('window'))}",
            f"- Hash: `{d.get('hash', 'unknown')}`",
            f"- Manifest: {_value(d.get('manifest'))}",
            f"- Weights: {_value(d.get('weights'))}",
        ]
        rows = d.get("rows") or {}
        table = _table(["rows", "count"], [[k, _value(n)] for k, n in rows.items()]) if rows else "No counts."
        return "\n".join(lines) + "\n\n" + table

    def _validation(self) -> str:
        v = self.validation
        if not v:
            return "No validation was recorded."
        verdict = "passed" if v.get("passed") else "failed"
        head = (
            f"Quality score {_percent(v.get('score'))} against a threshold of {_percent(v.get('threshold'))} "
            f"over {_value(v.get('rows'))} rows: {verdict}."
        )
        checks = [
            [
                c.get("name"),
                c.get("column") or "",
                "pass" if c.get("passed") else "FAIL",
                _percent(c.get("observed"))
                if c.get("name") in _SHARE_CHECKS and _is_number(c.get("observed"))
                else _value(c.get("observed")),
                c.get("limit", ""),
                c.get("message", ""),
            ]
            for c in v.get("checks", [])
        ]
        parts = [head, _table(["check", "column", "result", "observed", "limit", "detail"], checks)]
        flawed = [c for c in v.get("columns", []) if c.get("missing") or c.get("invalid")]
        if flawed:
            parts.append("Columns with missing or failing values:")
            parts.append(
                _table(
                    ["column", "type", "missing", "invalid", "failures", "examples"],
                    [
                        [
                            c.get("name"),
                            c.get("dtype"),
                            _value(c.get("missing")),
                            _value(c.get("invalid")),
                            _value(c.get("failures")),
                            ", ".join(c.get("examples", [])),
                        ]
                        for c in flawed
                    ],
                )
            )
        return "\n\n".join(parts)

    def _evaluation(self) -> str:
        m = self.metrics
        if not m.get("metric"):
            return "No comparison with the champion was recorded."
        low, high = _ci(m)
        direction = "lower" if m["metric"] in LOWER_IS_BETTER else "higher"
        lines = [
            f"- Metric: {m['metric']} ({direction} is better)",
            f"- Holdout: {_value(m.get('holdout_rows'))} rows",
            f"- Champion: {_metric(m.get('champion'))}",
            f"- Challenger: {_metric(m.get('challenger'))}",
            f"- Gain: {_signed(m.get('delta'))} (positive means the challenger is better), "
            f"{_confidence(m)} CI {_signed(low)}..{_signed(high)} "
            f"from {_value(m.get('resamples_used'))} paired bootstrap resamples",
            f"- Resamples where the challenger was not better: {_percent(m.get('share_not_better'))}",
            f"- Verdict: {'better' if m.get('better') else 'not better'}",
        ]
        slices = m.get("slices") or []
        table = (
            _table(
                ["feature", "value", "rows", "metric", "champion", "challenger", "gain"],
                [
                    [
                        s.get("feature"),
                        s.get("value"),
                        _value(s.get("rows")),
                        s.get("metric"),
                        _metric(s.get("champion")),
                        _metric(s.get("challenger")),
                        _signed(s.get("delta")),
                    ]
                    for s in slices
                ],
            )
            if slices
            else "No slices reported."
        )
        return "\n".join(lines) + "\n\nBy slice:\n\n" + table

    def _lineage(self) -> str:
        parent = str(self.parent_version) if self.parent_version is not None else "none"
        cause = _value(self.cause) if self.cause else "none recorded"
        return "\n".join(
            [
                f"- Parent version: {parent}",
                f"- Trigger: {self.trigger}",
                f"- Cause: {cause}",
                f"- Training run: `{self.training_run_id}`",
                f"- Code version: `{self.code_version}`",
                f"- Trainer: {self.trainer}",
                f"- Created at: {self.created_at}",
            ]
        )


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    # A '|' would end the cell and a newline the row.
    return str(value if value is not None else "").replace("|", "\\|").replace("\n", " ")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)


def _metric(value: Any) -> str:
    return f"{float(value):.4f}" if _is_number(value) and math.isfinite(float(value)) else "n/a"


def _signed(value: Any) -> str:
    return f"{float(value):+.4f}" if _is_number(value) and math.isfinite(float(value)) else "n/a"


def _percent(value: Any) -> str:
    return f"{float(value):.1%}" if _is_number(value) and math.isfinite(float(value)) else "n/a"


def _ci(metrics: Mapping[str, Any]) -> tuple[float | None, float | None]:
    ci = metrics.get("ci") or (None, None)
    return (ci[0], ci[1]) if len(ci) == 2 else (None, None)


def _confidence(metrics: Mapping[str, Any]) -> str:
    level: Any = metrics.get("confidence")
    return f"{float(level) * 100:g}%" if _is_number(level) else "?"


def _value(value: Any) -> str:
    """A compact rendering: 4 significant digits for floats, ``k: v`` for mappings."""
    if value is None:
        return "none"
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return f"{float(value):.4g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return ", ".join(_value(v) for v in value) or "none"
    return str(value)


def _window(window: Any) -> str:
    if isinstance(window, Mapping) and {"start", "end"} <= window.keys():
        return f"{window['start']} to {window['end']}"
    return _value(window) if window is not None else "unknown"


def _jsonable(value: Any) -> Any:
    """``value`` with tuples as lists, numpy scalars as Python ones, and NaN or infinity as None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; json.dumps would write an invalid token
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)  # a datetime, a Path: their text is what a reader wants
