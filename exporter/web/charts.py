"""Line charts as inline SVG, drawn on the server: no JavaScript, nothing fetched by the browser.

A chart is lines over a time axis (unix seconds, labelled in UTC), with marks on it: vertical
lines where the weights changed, shaded spans where incidents were open. NaN breaks a line.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["Line", "Mark", "Span", "line_chart"]

WIDTH = 640
HEIGHT = 150
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 8, 22, 20


@dataclass(frozen=True, slots=True)
class Line:
    label: str
    color: str
    points: Sequence[tuple[float, float]]  # (unix seconds, value); NaN: no value
    dashed: bool = False


@dataclass(frozen=True, slots=True)
class Mark:
    """A moment on the time axis: a weight change."""

    at: float
    label: str  # short, drawn at the top ("aws 25%")
    title: str  # the tooltip


@dataclass(frozen=True, slots=True)
class Span:
    """A stretch of the time axis: an incident, from its start to its resolution (None: open)."""

    start: float
    end: float | None
    title: str
    color: str = "#c62828"


def _nice_max(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above `value` (a readable axis top)."""
    if not value > 0 or math.isinf(value):
        return 1.0
    exp = math.floor(math.log10(value))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        top = m * 10.0**exp
        if top >= value * 0.999999:
            return top
    return 10.0 ** (exp + 1)


def _hhmm(t: float) -> str:
    return time.strftime("%H:%M", time.gmtime(t))


def _time_ticks(start: float, end: float) -> list[float]:
    span = end - start
    step = next((s for s in (300, 600, 900, 1800, 3600, 7200) if span / s <= 6), 10800)
    first = math.ceil(start / step) * step
    return [first + i * step for i in range(int((end - first) // step) + 1)]


def line_chart(
    title: str,
    lines: Sequence[Line],
    *,
    start: float,
    end: float,
    fmt: Callable[[float], str],
    marks: Sequence[Mark] = (),
    spans: Sequence[Span] = (),
    top: float | None = None,
    floor: float = 0.0,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> str:
    """One chart as an `<svg>` element; `fmt` labels the value axis, `top` fixes its maximum
    (else the data's, rounded up, and at least `floor`)."""
    end = max(end, start + 60)
    plot_w = width - _LEFT - _RIGHT
    plot_h = height - _TOP - _BOTTOM
    values = [v for line in lines for t, v in line.points if start <= t <= end and v == v]
    ymax = top if top is not None else _nice_max(max([floor, *values]))

    def x(t: float) -> float:
        return _LEFT + (min(max(t, start), end) - start) / (end - start) * plot_w

    def y(v: float) -> float:
        return _TOP + plot_h - min(max(v, 0.0), ymax) / ymax * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" '
        'stroke="#ddd"/>',
    ]
    for span in spans:
        x0, x1 = x(span.start), x(span.end if span.end is not None else end)
        if (span.end is not None and span.end < start) or span.start > end:
            continue
        parts.append(
            f'<rect class="incident" x="{x0:.1f}" y="{_TOP}" width="{max(x1 - x0, 1.5):.1f}" '
            f'height="{plot_h}" fill="{span.color}" fill-opacity="0.15">'
            f"<title>{escape(span.title)}</title></rect>"
        )
    for frac in (0.0, 0.5, 1.0):
        v = ymax * frac
        yy = y(v)
        parts.append(
            f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{yy:.1f}" y2="{yy:.1f}" '
            'stroke="#e4e4e4"/>'
            f'<text x="{_LEFT - 4}" y="{yy + 4:.1f}" text-anchor="end" font-size="10" '
            f'fill="#666">{escape(fmt(v))}</text>'
        )
    for t in _time_ticks(start, end):
        xx = x(t)
        parts.append(
            f'<text x="{xx:.1f}" y="{height - 6}" text-anchor="middle" font-size="10" '
            f'fill="#666">{_hhmm(t)}</text>'
        )
    for line in lines:
        d = _path(line.points, start, end, x, y)
        if d:
            dash = ' stroke-dasharray="4 3"' if line.dashed else ""
            parts.append(
                f'<path d="{d}" fill="none" stroke="{line.color}" stroke-width="1.5"{dash}>'
                f"<title>{escape(line.label)}</title></path>"
            )
    for mark in marks:
        if not start <= mark.at <= end:
            continue
        xx = x(mark.at)
        parts.append(
            f'<g class="step"><line x1="{xx:.1f}" x2="{xx:.1f}" y1="{_TOP - 4}" '
            f'y2="{_TOP + plot_h}" stroke="#1565c0" stroke-dasharray="2 2"/>'
            f'<text x="{xx + 2:.1f}" y="{_TOP - 6}" font-size="10" fill="#1565c0">'
            f"{escape(mark.label)}</text><title>{escape(mark.title)}</title></g>"
        )
    # the legend, top left, above the plot
    lx = _LEFT
    for line in lines:
        dash = ' stroke-dasharray="4 3"' if line.dashed else ""
        parts.append(
            f'<line x1="{lx}" x2="{lx + 14}" y1="9" y2="9" stroke="{line.color}" '
            f'stroke-width="2"{dash}/><text x="{lx + 17}" y="12" font-size="10" fill="#333">'
            f"{escape(line.label)}</text>"
        )
        lx += 24 + 6 * len(line.label)
    parts.append("</svg>")
    return "".join(parts)


def _path(
    points: Sequence[tuple[float, float]],
    start: float,
    end: float,
    x: Callable[[float], float],
    y: Callable[[float], float],
) -> str:
    """An SVG path through the points in [start, end]; a NaN or a gap of over 3 minutes breaks it."""
    out: list[str] = []
    prev: float | None = None
    for t, v in points:
        if not start <= t <= end or v != v:
            prev = None
            continue
        command = "L" if prev is not None and t - prev <= 180 else "M"
        out.append(f"{command}{x(t):.1f} {y(v):.1f}")
        prev = t
    # a lone point draws nothing as a path: give it a short stroke
    if len(out) == 1:
        out.append("h2")
    return " ".join(out)
