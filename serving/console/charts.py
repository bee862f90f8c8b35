"""Charts as inline SVG, drawn on the server: no chart library, no script, nothing fetched.

Each function returns markup for one ``<svg>`` (marked safe for Jinja: every text in it is
escaped here). Axes carry their range, series their names in a legend, and every mark a
``<title>`` so a pointer over it shows the value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

from markupsafe import Markup

__all__ = ["bars", "lines"]

WIDTH, HEIGHT = 640, 220
_PAD_LEFT, _PAD_RIGHT, _PAD_TOP, _PAD_BOTTOM = 56, 12, 12, 40
COLOURS = (
    "#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2",
    "#be185d", "#4d7c0f", "#7c3aed", "#b45309", "#0f766e", "#64748b",
)  # fmt: skip


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.3g}"
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _safe(markup: str) -> Markup:
    """Mark built SVG safe: every text placed in it went through ``escape`` first."""
    return Markup(markup)  # noqa: S704 (escaped piecewise above)


def _empty(label: str) -> Markup:
    return Markup('<p class="empty">{}: no data yet.</p>').format(label)


def _frame(body: list[str], label: str, legend: Sequence[str]) -> Markup:
    keys = "".join(
        f'<span class="key"><i style="background:{COLOURS[i % len(COLOURS)]}"></i>{escape(name)}</span>'
        for i, name in enumerate(legend)
    )
    svg = (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)}"'
        f' preserveAspectRatio="xMidYMid meet">{"".join(body)}</svg>'
    )
    return _safe(f'<figure class="chart">{svg}<figcaption>{escape(label)}{keys}</figcaption></figure>')


def _y_axis(low: float, high: float) -> tuple[list[str], float, float]:
    if high <= low:
        high = low + 1.0
    inner = HEIGHT - _PAD_TOP - _PAD_BOTTOM
    parts = [
        f'<line class="axis" x1="{_PAD_LEFT}" y1="{_PAD_TOP}" x2="{_PAD_LEFT}" y2="{HEIGHT - _PAD_BOTTOM}"/>',
        f'<line class="axis" x1="{_PAD_LEFT}" y1="{HEIGHT - _PAD_BOTTOM}" x2="{WIDTH - _PAD_RIGHT}"'
        f' y2="{HEIGHT - _PAD_BOTTOM}"/>',
    ]
    for fraction in (0.0, 0.5, 1.0):
        y = HEIGHT - _PAD_BOTTOM - fraction * inner
        parts.append(
            f'<text class="tick" x="{_PAD_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(_number(low + fraction * (high - low)))}</text>"
        )
    return parts, low, high


def _y(value: float, low: float, high: float) -> float:
    return HEIGHT - _PAD_BOTTOM - (value - low) / (high - low) * (HEIGHT - _PAD_TOP - _PAD_BOTTOM)


def lines(
    series: Mapping[str, Sequence[tuple[float, float]]],
    label: str,
    *,
    x_labels: tuple[str, str] = ("", ""),
    marks: Sequence[tuple[float, str]] = (),
) -> Markup:
    """Line series of ``(x, y)`` points (x as numbers, e.g. epoch seconds), on shared axes.

    Args:
        series: Name to points; points with a NaN or None y are skipped.
        label: The caption (and the chart's accessible name).
        x_labels: Text under the first and the last x (e.g. the times).
        marks: Vertical markers ``(x, text)``, e.g. detected change points.
    """
    points = {
        name: [(float(x), float(y)) for x, y in values if y is not None and not math.isnan(float(y))]
        for name, values in series.items()
    }
    every = [p for values in points.values() for p in values]
    if not every:
        return _empty(label)
    xs = [x for x, _ in every] + [x for x, _ in marks]
    ys = [y for _, y in every]
    body, low, high = _y_axis(min(0.0, min(ys)), max(ys))
    x0, x1 = min(xs), max(xs)
    span = x1 - x0 or 1.0
    inner = WIDTH - _PAD_LEFT - _PAD_RIGHT

    def x_of(x: float) -> float:
        return _PAD_LEFT + (x - x0) / span * inner

    for x, text in marks:
        body.append(
            f'<line class="mark" x1="{x_of(x):.1f}" y1="{_PAD_TOP}" x2="{x_of(x):.1f}"'
            f' y2="{HEIGHT - _PAD_BOTTOM}">'
            f"<title>{escape(text)}</title></line>"
        )
    for i, (name, values) in enumerate(points.items()):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{x_of(x):.1f},{_y(y, low, high):.1f}" for x, y in values)
        body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        for x, y in values:
            body.append(
                f'<circle cx="{x_of(x):.1f}" cy="{_y(y, low, high):.1f}" r="2.5" fill="{colour}">'
                f"<title>{escape(name)}: {escape(_number(y))}</title></circle>"
            )
    bottom = HEIGHT - _PAD_BOTTOM + 16
    body.append(f'<text class="tick" x="{_PAD_LEFT}" y="{bottom}">{escape(x_labels[0])}</text>')
    body.append(
        f'<text class="tick" x="{WIDTH - _PAD_RIGHT}" y="{bottom}" text-anchor="end">'
        f"{escape(x_labels[1])}</text>"
    )
    return _frame(body, label, list(points))


def bars(categories: Sequence[str], series: Mapping[str, Sequence[float]], label: str) -> Markup:
    """Grouped bars: one group per category, one bar per series (e.g. reference and current shares)."""
    if not categories or not series:
        return _empty(label)
    values = [v for vs in series.values() for v in vs]
    body, low, high = _y_axis(0.0, max(values) if values else 1.0)
    inner = WIDTH - _PAD_LEFT - _PAD_RIGHT
    group = inner / len(categories)
    width = group * 0.8 / len(series)
    for c, category in enumerate(categories):
        left = _PAD_LEFT + c * group + group * 0.1
        for s, (name, shares) in enumerate(series.items()):
            value = float(shares[c]) if c < len(shares) else 0.0
            top = _y(value, low, high)
            body.append(
                f'<rect x="{left + s * width:.1f}" y="{top:.1f}" width="{max(width - 1, 1):.1f}"'
                f' height="{HEIGHT - _PAD_BOTTOM - top:.1f}" fill="{COLOURS[s % len(COLOURS)]}">'
                f"<title>{escape(category)} {escape(name)}: {escape(_number(value))}</title></rect>"
            )
        if c % math.ceil(len(categories) / 6) == 0:  # at most six labels: they would overlap
            body.append(
                f'<text class="tick" x="{left + group * 0.4:.1f}" y="{HEIGHT - _PAD_BOTTOM + 14}"'
                f' text-anchor="middle">{escape(category[:14])}</text>'
            )
    return _frame(body, label, list(series))
