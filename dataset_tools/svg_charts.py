"""Inline SVG charts for the HTML pages (``bokeh report``, ``bokeh eval``): line charts and stacked bars with
labelled axes and the legend in its own band below the axes, so it never covers data.

Charts keep their pixel size (``width`` / ``height`` attributes): labels stay readable at any page width, and a
narrow page scrolls the chart's container instead of shrinking its text."""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Optional, Sequence

FONT_PX = 13
#: Margins around the plot area: room for tick labels and the rotated y label (left), ticks and the x label (bottom).
LEFT, RIGHT, TOP, BOTTOM = 70, 18, 14, 50
_LEGEND_ROW = 20
_CHAR_PX = 7.2  # average width of a character at FONT_PX, to wrap the legend


@dataclass
class Series:
    """One line of a line chart: ``ys[i]`` at ``xs[i]``; None or a non-finite value leaves a gap."""

    name: str
    xs: Sequence[float]
    ys: Sequence[Optional[float]]
    colour: str
    dashed: bool = False


@dataclass
class Guide:
    """A horizontal line across the plot (a target or threshold), named in the legend."""

    name: str
    y: float
    colour: str = "#777"


@dataclass
class Stack:
    """One layer of a stacked bar chart: a count per bar."""

    name: str
    values: Sequence[float]
    colour: str


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 times a power of ten) covering [lo, hi] with about ``count`` ticks."""
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(count, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw - 1e-12 * power)
    first = math.floor(lo / step + 1e-9) * step
    ticks, value = [], first
    while value < hi - 1e-9 * step:
        ticks.append(value)
        value = first + len(ticks) * step
    ticks.append(value)
    return [round(t, 12) for t in ticks]


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks 1, 2 and 5 times powers of ten from just below ``lo`` to just above ``hi`` (both > 0); only the
    powers of ten when the range spans more than two decades. At least two: an axis needs a span."""
    if lo <= 0 or hi <= 0:
        raise ValueError(f"a log axis needs positive values, got {lo} and {hi}")
    lo, hi = min(lo, hi), max(lo, hi)
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    powers = [10.0 ** e for e in range(first, last + 1)]
    if len(powers) > 3:
        return powers
    fine = [m * p for p in powers for m in (1, 2, 5)]
    below = max([t for t in fine if t <= lo], default=fine[0])
    above = min([t for t in fine if t >= hi], default=fine[-1])
    ticks = [t for t in fine if below <= t <= above]
    if len(ticks) == 1:  # lo == hi on a tick: the next one up (fine always holds one above a single value)
        ticks.append(next(t for t in fine if t > ticks[0]))
    return ticks


def tick_label(value: float) -> str:
    """A tick value without needless digits: 0.2, 5, 1000, 1e+05."""
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.0e}"
    return f"{value:.6g}"


class _Frame:
    """The axes of one chart: data -> pixel mapping, axis lines, ticks, axis labels and the legend band."""

    def __init__(self, width: int, height: int, x_range: tuple[float, float], y_ticks: list[float], log_y: bool,
                 legend_rows: int) -> None:
        self.width, self.log_y = width, log_y
        self.legend_top = height
        self.height = height + legend_rows * _LEGEND_ROW + (6 if legend_rows else 0)
        self.x0, self.x1 = LEFT, width - RIGHT
        self.y0, self.y1 = height - BOTTOM, TOP  # pixel y of the lowest and highest tick
        self.x_range, self.y_ticks = x_range, y_ticks

    def x(self, value: float) -> float:
        lo, hi = self.x_range
        return self.x0 + (value - lo) / (hi - lo) * (self.x1 - self.x0)

    def y(self, value: float) -> float:
        lo, hi = self.y_ticks[0], self.y_ticks[-1]
        if self.log_y:
            value, lo, hi = math.log10(value), math.log10(lo), math.log10(hi)
        return self.y0 - (value - lo) / (hi - lo) * (self.y0 - self.y1)

    def axes(self, x_ticks: Sequence[float], x_label: str, y_label: str, x_tick_labels: Optional[Sequence[str]] = None) -> list[str]:
        parts = [f'<line x1="{self.x0}" y1="{self.y0}" x2="{self.x1}" y2="{self.y0}" stroke="#444"/>',
                 f'<line x1="{self.x0}" y1="{self.y0}" x2="{self.x0}" y2="{self.y1}" stroke="#444"/>']
        for t in self.y_ticks:
            y = self.y(t)
            parts.append(f'<line x1="{self.x0}" y1="{y:.1f}" x2="{self.x1}" y2="{y:.1f}" stroke="#e6e6e6"/>')
            parts.append(f'<text x="{self.x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{tick_label(t)}</text>')
        labels = x_tick_labels or [tick_label(t) for t in x_ticks]
        for t, text in zip(x_ticks, labels):
            x = self.x(t)
            parts.append(f'<line x1="{x:.1f}" y1="{self.y0}" x2="{x:.1f}" y2="{self.y0 + 5}" stroke="#444"/>')
            parts.append(f'<text x="{x:.1f}" y="{self.y0 + 19}" text-anchor="middle">{html.escape(text)}</text>')
        middle_x, middle_y = (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2
        parts.append(f'<text class="axis-label" x="{middle_x:.1f}" y="{self.y0 + 40}" text-anchor="middle">{html.escape(x_label)}</text>')
        parts.append(f'<text class="axis-label" transform="translate(16 {middle_y:.1f}) rotate(-90)" text-anchor="middle">'
                     f'{html.escape(y_label)}</text>')
        return parts

    def legend(self, entries: Sequence[tuple[str, str, str]]) -> list[str]:
        """Entries (name, colour, kind: 'line' | 'dash' | 'box'), laid out left to right in rows below the axes."""
        parts = ['<g class="legend">']
        for (name, colour, kind), (x, row) in zip(entries, legend_layout([e[0] for e in entries], self.width)):
            y = self.legend_top + 6 + row * _LEGEND_ROW
            if kind == "box":
                parts.append(f'<rect x="{x:.1f}" y="{y + 2}" width="22" height="11" fill="{colour}"/>')
            else:
                dash = ' stroke-dasharray="6 4"' if kind == "dash" else ""
                parts.append(f'<line x1="{x:.1f}" y1="{y + 8}" x2="{x + 22:.1f}" y2="{y + 8}" stroke="{colour}" stroke-width="2.5"{dash}/>')
            parts.append(f'<text x="{x + 28:.1f}" y="{y + 12}">{html.escape(name)}</text>')
        return parts + ["</g>"]

    def svg(self, parts: Sequence[str], title: str) -> str:
        return (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
                f'viewBox="0 0 {self.width} {self.height}" font-size="{FONT_PX}" font-family="system-ui,sans-serif" '
                f'role="img" aria-label="{html.escape(title)}"><title>{html.escape(title)}</title>{"".join(parts)}</svg>')


def legend_layout(names: Sequence[str], width: int) -> list[tuple[float, int]]:
    """(x, row) of each legend entry: left to right from the plot's left edge, a new row when one would pass ``width``."""
    places, x, row = [], float(LEFT), 0
    for name in names:
        item = 30 + len(name) * _CHAR_PX + 18
        if x + item > width and x > LEFT:
            x, row = float(LEFT), row + 1
        places.append((x, row))
        x += item
    return places


def legend_rows(names: Sequence[str], width: int) -> int:
    """How many rows the legend of ``names`` takes in a chart ``width`` px wide."""
    return legend_layout(names, width)[-1][1] + 1 if names else 0


def plottable(y: Optional[float], log_y: bool) -> bool:
    """Whether ``y`` has a place on the axis: a finite number, and above 0 on a log axis."""
    return y is not None and math.isfinite(y) and (y > 0 or not log_y)


def line_chart(series: Sequence[Series], *, title: str, x_label: str, y_label: str, log_y: bool = False,
               guides: Sequence[Guide] = (), width: int = 460, height: int = 300) -> str:
    """Lines with a dot at each value (its number in a tooltip); y axis linear or log10; ``guides`` as dashed lines;
    no value at all: a chart saying so."""
    values = [y for s in series for y in s.ys if plottable(y, log_y)]
    xs = [x for s in series for x in s.xs]
    drawn_guides = [g for g in guides if plottable(g.y, log_y)]
    values_and_guides = values + [g.y for g in drawn_guides]
    if not values or not xs:
        frame = _Frame(width, 80, (0.0, 1.0), [0.0, 1.0], False, 0)
        return frame.svg([f'<text x="{LEFT}" y="40">{html.escape(title)}: no values to plot</text>'], title)
    lo, hi = min(values_and_guides), max(values_and_guides)
    y_ticks = log_ticks(lo, hi) if log_y else nice_ticks(lo, hi)
    x_ticks = sorted(set(xs))
    x_range = (x_ticks[0], x_ticks[-1]) if x_ticks[-1] > x_ticks[0] else (x_ticks[0] - 1, x_ticks[0] + 1)
    entries = [(s.name, s.colour, "dash" if s.dashed else "line") for s in series] + [(g.name, g.colour, "dash") for g in guides]
    frame = _Frame(width, height, x_range, y_ticks, log_y, legend_rows([e[0] for e in entries], width))
    parts = frame.axes(x_ticks, x_label, y_label)
    for g in drawn_guides:
        y = frame.y(g.y)
        parts.append(f'<line x1="{frame.x0}" y1="{y:.1f}" x2="{frame.x1}" y2="{y:.1f}" stroke="{g.colour}" '
                     f'stroke-width="1.5" stroke-dasharray="3 3"/>')
    for s in series:
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        run: list[str] = []
        points = list(zip(s.xs, s.ys)) + [(None, None)]
        for x, y in points:
            if not plottable(y, log_y):
                if len(run) > 1:
                    parts.append(f'<polyline class="data" points="{" ".join(run)}" fill="none" stroke="{s.colour}" stroke-width="2.5"{dash}/>')
                run = []
                continue
            px, py = frame.x(x), frame.y(y)
            run.append(f"{px:.1f},{py:.1f}")
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{s.colour}"><title>{html.escape(s.name)}, '
                         f'{html.escape(x_label.split(" (")[0])} {x:g}: {y:.4g}</title></circle>')
    return frame.svg(parts + frame.legend(entries), title)


def bar_chart(lefts: Sequence[float], stacks: Sequence[Stack], *, title: str, x_label: str, y_label: str,
              x_ticks: Sequence[float], bar_names: Sequence[str], x_tick_labels: Optional[Sequence[str]] = None,
              width: int = 900, height: int = 300) -> str:
    """Stacked bars, bar i spanning [lefts[i], lefts[i] + 1) on the x axis; a tooltip per segment names its bar
    (``bar_names[i]``), layer and count."""
    totals = [sum(s.values[i] for s in stacks) for i in range(len(lefts))]
    y_ticks = nice_ticks(0.0, max(totals + [1.0]))
    if y_ticks[-1] >= 5:
        y_ticks = [t for t in y_ticks if float(t).is_integer()] or y_ticks
    entries = [(s.name, s.colour, "box") for s in stacks]
    frame = _Frame(width, height, (lefts[0], lefts[-1] + 1), y_ticks, False, legend_rows([e[0] for e in entries], width))
    parts = frame.axes(x_ticks, x_label, y_label, x_tick_labels)
    for i, left in enumerate(lefts):
        x, bar_width, base = frame.x(left) + 1, frame.x(left + 1) - frame.x(left) - 2, 0.0
        for s in stacks:
            value = s.values[i]
            if value > 0:
                top, bottom = frame.y(base + value), frame.y(base)
                parts.append(f'<rect class="bar" x="{x:.1f}" y="{top:.1f}" width="{bar_width:.1f}" height="{bottom - top:.1f}" '
                             f'fill="{s.colour}"><title>{html.escape(bar_names[i])}: {value:g} {html.escape(s.name)}</title></rect>')
            base += value
    return frame.svg(parts + frame.legend(entries), title)
