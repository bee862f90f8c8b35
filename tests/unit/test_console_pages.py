"""The console's charts and formatting: escaped text, honest empty states, bucketed series."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from serving.console import charts
from serving.console.pages import activity, number, over_time, when


def test_text_in_a_chart_is_escaped() -> None:
    hostile = "<script>alert(1)</script>"
    drawn = str(charts.bars([hostile, "b"], {hostile: [0.5, 0.5]}, hostile))
    assert "<script>" not in drawn
    assert "&lt;script&gt;" in drawn
    lines = str(charts.lines({hostile: [(0, 1.0), (1, 2.0)]}, hostile, marks=[(0.5, hostile)]))
    assert "<script>" not in lines


def test_an_empty_chart_says_so_instead_of_drawing_axes() -> None:
    assert "no data yet" in str(charts.lines({"a": []}, "latency"))
    assert "no data yet" in str(charts.bars([], {}, "shares"))
    assert "no data yet" in str(charts.lines({"a": [(0, float("nan"))]}, "latency"))


def test_lines_draw_a_point_per_value_and_a_marker_per_change() -> None:
    drawn = str(charts.lines({"x": [(0, 1.0), (1, 3.0), (2, 2.0)]}, "t", marks=[(1, "change")]))
    assert drawn.count("<circle") == 3
    assert drawn.count('class="mark"') == 1
    assert "<title>x: 3</title>" in drawn


def test_over_time_counts_and_summarises_each_bucket() -> None:
    at = np.array([0.0, 1.0, 2.0, 98.0, 99.0, 100.0])
    values = np.array([1.0, 2.0, 3.0, 10.0, 20.0, 30.0])
    counts = over_time(at, None, "count", buckets=2)
    assert [c for _, c in counts] == [3.0, 3.0]
    means = over_time(at, values, "mean", buckets=2)
    assert [m for _, m in means] == [2.0, 20.0]
    assert over_time([], None, "count") == []
    assert len(over_time(at, values, "p99", buckets=10)) == 2  # empty buckets are left out


def test_activity_is_a_rate_and_percentiles_or_none() -> None:
    assert activity([], 5) == {"requests": 0, "per_minute": 0.0, "p50_ms": None, "p99_ms": None}
    busy = activity([1.0] * 99 + [100.0], 5)
    assert busy["per_minute"] == 20.0 and busy["p50_ms"] == 1.0


def test_numbers_and_times_read_the_same_everywhere() -> None:
    assert number(None) == "-"
    assert number(1234567) == "1,234,567"
    assert number(0.123456, 3) == "0.123"
    assert number(2.0) == "2"
    assert number(float("nan")) == "NaN"
    moment = datetime(2026, 12, 7, 8, 30, tzinfo=UTC)
    assert (
        when(moment)
        == when(moment.isoformat())
        == when(moment.timestamp() * 1000)
        == "2026-12-07 08:30:00 UTC"
    )
    assert when(None) == ""


def test_series_of_several_variants_can_share_their_buckets() -> None:
    early = over_time([0.0, 1.0], None, "count", buckets=4, span=(0.0, 100.0))
    late = over_time([99.0, 100.0], None, "count", buckets=4, span=(0.0, 100.0))
    assert [x for x, _ in early] == [12.5] and [x for x, _ in late] == [87.5]
