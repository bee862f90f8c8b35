"""What the console's pages show, computed from what the services return: no I/O here.

Formatting filters for the templates, and the few summaries a page needs that no service
returns as such (a request rate over the last minutes, per-variant series over time).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

__all__ = ["activity", "number", "over_time", "when"]


def when(value: Any) -> str:
    """A time as ``YYYY-MM-DD HH:MM:SS UTC`` (datetimes, ISO strings, epoch seconds or ms)."""
    if value is None or value == "":
        return ""
    if isinstance(value, int | float):
        seconds = value / 1000 if value > 1e11 else value
        value = datetime.fromtimestamp(seconds, UTC)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def number(value: Any, digits: int = 3) -> str:
    """A number for people: ``-`` for none, thousands separated, at most ``digits`` decimals."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, int) or (float(value).is_integer() and abs(value) >= 1000):
        return f"{int(value):,}"
    return f"{value:,.{digits}f}".rstrip("0").rstrip(".") or "0"


def activity(latencies_ms: Sequence[float], minutes: float) -> dict[str, float | None]:
    """Requests per minute and latency percentiles of the requests of the last ``minutes``."""
    values = np.asarray(latencies_ms, dtype=float)
    return {
        "requests": int(values.size),
        "per_minute": values.size / minutes,
        "p50_ms": float(np.percentile(values, 50)) if values.size else None,
        "p99_ms": float(np.percentile(values, 99)) if values.size else None,
    }


def over_time(
    at: Sequence[float] | np.ndarray,
    values: Sequence[float] | np.ndarray | None,
    stat: Literal["count", "mean", "p50", "p99"],
    *,
    buckets: int = 24,
    span: tuple[float, float] | None = None,
) -> list[tuple[float, float]]:
    """A statistic of samples per time bucket: ``(bucket middle in epoch seconds, value)``.

    Empty buckets are left out.

    Args:
        at: Each sample's time in epoch seconds.
        values: Each sample's value (not needed to ``count``).
        stat: What to take per bucket: the count, or the mean or a percentile of ``values``.
        buckets: Equal spans from the first sample to the last.
        span: The first and last time instead, so that series of several variants share buckets.
    """
    times = np.asarray(at, dtype=float)
    if times.size == 0:
        return []
    start, end = span or (float(times.min()), float(times.max()))
    width = (end - start) / buckets or 1.0
    index = np.minimum(((times - start) / width).astype(int), buckets - 1)
    data = np.asarray(values if values is not None else np.zeros(times.size), dtype=float)
    points = []
    for b in np.unique(index):
        chosen = data[index == b]
        middle = start + (b + 0.5) * width
        if stat == "count":
            points.append((middle, float(chosen.size)))
        elif stat == "mean":
            points.append((middle, float(chosen.mean())))
        else:
            points.append((middle, float(np.percentile(chosen, 50 if stat == "p50" else 99))))
    return points
