"""A very small SVG chart helper for the HTML report: histograms and line charts as self-contained ``<svg>`` text.

How this works: data coordinates are mapped linearly (or by log2 on the x axis) into a fixed plot box inside
the image's margins; axes get "nice" ticks (steps of 1, 2 or 5 times a power of ten). Every string that lands in
the SVG is escaped. No dependencies, no scripts, no external assets.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["Series", "fmt_number", "histogram", "histogram_chart", "line_chart", "nice_ticks", "tick_labels"]

WIDTH = 640
HEIGHT = 300
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 20, 36, 52
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_FONT = 'font-family="sans-serif" font-size="12"'


@dataclass(frozen=True, kw_only=True, slots=True)
class Series:
    """One line of a line chart: ``(x, y)`` points, drawn in x order."""

    name: str
    points: tuple[tuple[float, float], ...]


def fmt_number(value: float) -> str:
    """Short human text for an axis label: ``1,200``, ``3.5``, ``0.012``, ``0``."""
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    text = f"{value:.3g}"
    return text if "e" not in text else f"{value:.2e}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` evenly spaced round values covering ``lo..hi`` (the first <= lo, the last >= hi)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"tick range must be finite, got {lo}..{hi}")
    if hi < lo:
        lo, hi = hi, lo
    if hi - lo <= 1e-300:  # one value (or a span floats cannot divide): centre it
        pad = abs(lo) * 0.5 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    return [float(f"{k * step:.12g}") for k in range(first, last + 1)]  # no 0.30000000000000004 labels


def tick_labels(ticks: Sequence[float]) -> list[str]:
    """Labels for evenly spaced ticks, all with the same number of decimals: as many as the step needs, so no two
    ticks share a label and none is rounded to a value it is not (``2.010, 2.015, 2.020``, not ``2.01, 2.02, 2.02``).
    """
    if len(ticks) < 2:
        return [fmt_number(t) for t in ticks]
    step = min(abs(b - a) for a, b in itertools.pairwise(ticks)) or 1.0
    for decimals in range(13):
        labels = [f"{t:,.{decimals}f}" for t in ticks]
        if all(abs(float(label.replace(",", "")) - t) <= step * 1e-6 for label, t in zip(labels, ticks, strict=True)):
            return ["0" if float(label.replace(",", "")) == 0 else label for label in labels]
    return [fmt_number(t) for t in ticks]


def histogram(values: Sequence[float], bins: int | None = None) -> list[tuple[float, float, int]]:
    """``(low, high, count)`` per bin over ``min..max`` (``sqrt(n)`` bins, 1..30, unless given); max goes last."""
    if not values:
        return []
    n_bins = bins if bins is not None else min(30, max(1, math.ceil(math.sqrt(len(values)))))
    if n_bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    lo, hi = min(values), max(values)
    if hi == lo:
        pad = abs(lo) * 0.05 or 0.001
        return [(lo - pad, hi + pad, len(values))]
    width = (hi - lo) / n_bins
    counts = [0] * n_bins
    for v in values:
        counts[min(n_bins - 1, int((v - lo) / width))] += 1
    edges = [lo + k * width for k in range(n_bins)] + [hi]
    return [(edges[k], edges[k + 1], c) for k, c in enumerate(counts)]


class _Canvas:
    """Accumulates SVG elements for one chart with a data -> pixel mapping."""

    def __init__(self, title: str, x_label: str, y_label: str) -> None:
        self.title = title
        self.parts: list[str] = [
            f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" {_FONT} font-weight="bold">{escape(title)}</text>',
            f'<text x="{_LEFT + (WIDTH - _LEFT - _RIGHT) / 2}" y="{HEIGHT - 10}" text-anchor="middle" {_FONT}>'
            f"{escape(x_label)}</text>",
            f'<text x="14" y="{_TOP + (HEIGHT - _TOP - _BOTTOM) / 2}" text-anchor="middle" {_FONT} '
            f'transform="rotate(-90 14 {_TOP + (HEIGHT - _TOP - _BOTTOM) / 2})">{escape(y_label)}</text>',
        ]
        self.x0, self.x1, self.y0, self.y1 = 0.0, 1.0, 0.0, 1.0

    def set_range(self, x0: float, x1: float, y0: float, y1: float) -> None:
        self.x0, self.x1 = (x0, x1) if x1 > x0 else (x0 - 0.5, x0 + 0.5)
        self.y0, self.y1 = (y0, y1) if y1 > y0 else (y0 - 0.5, y0 + 0.5)

    def px(self, x: float) -> float:
        return _LEFT + (x - self.x0) / (self.x1 - self.x0) * (WIDTH - _LEFT - _RIGHT)

    def py(self, y: float) -> float:
        return HEIGHT - _BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (HEIGHT - _TOP - _BOTTOM)

    def axes(self, x_ticks: Sequence[tuple[float, str]], y_ticks: Sequence[tuple[float, str]]) -> None:
        bottom, top = HEIGHT - _BOTTOM, _TOP
        for y, label in y_ticks:
            py = self.py(y)
            self.parts.append(
                f'<line x1="{_LEFT}" y1="{py:.1f}" x2="{WIDTH - _RIGHT}" y2="{py:.1f}" stroke="#e5e5e5"/>'
                f'<text x="{_LEFT - 6}" y="{py + 4:.1f}" text-anchor="end" {_FONT}>{escape(label)}</text>'
            )
        for x, label in x_ticks:
            px = self.px(x)
            self.parts.append(
                f'<line x1="{px:.1f}" y1="{bottom}" x2="{px:.1f}" y2="{bottom + 5}" stroke="#333"/>'
                f'<text x="{px:.1f}" y="{bottom + 18}" text-anchor="middle" {_FONT}>{escape(label)}</text>'
            )
        self.parts.append(
            f'<polyline points="{_LEFT},{top} {_LEFT},{bottom} {WIDTH - _RIGHT},{bottom}" fill="none" stroke="#333"/>'
        )

    def render(self) -> str:
        body = "".join(self.parts)
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" '
            f'width="{WIDTH}" height="{HEIGHT}" role="img"><title>{escape(self.title)}</title>{body}</svg>'
        )


def _no_data(canvas: _Canvas) -> str:
    canvas.parts.append(
        f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" {_FONT} fill="#777">no data</text>'
    )
    return canvas.render()


def _ticks(lo: float, hi: float) -> list[tuple[float, str]]:
    ticks = nice_ticks(lo, hi)
    return list(zip(ticks, tick_labels(ticks), strict=True))


def histogram_chart(
    values: Sequence[float], *, title: str, x_label: str, y_label: str = "devices", bins: int | None = None
) -> str:
    """An SVG histogram of ``values`` (an image saying "no data" when there are none)."""
    canvas = _Canvas(title, x_label, y_label)
    counts = histogram(values, bins)
    if not counts:
        return _no_data(canvas)
    x_ticks = _ticks(counts[0][0], counts[-1][1])
    y_ticks = _ticks(0, max(c for _, _, c in counts))
    canvas.set_range(x_ticks[0][0], x_ticks[-1][0], 0, y_ticks[-1][0])
    canvas.axes(x_ticks, y_ticks)
    width = counts[0][1] - counts[0][0]  # bin edges with the decimals their width needs: 2.01173-2.01442
    decimals = max(0, 2 - math.floor(math.log10(width))) if width > 0 else 3
    edges = [f"{edge:,.{decimals}f}" for edge in [lo for lo, _, _ in counts] + [counts[-1][1]]]
    for k, (lo, hi, count) in enumerate(counts):
        if not count:
            continue
        x, y = canvas.px(lo), canvas.py(count)
        w = max(1.0, canvas.px(hi) - x - 1)
        canvas.parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{canvas.py(0) - y:.1f}" fill="{_COLORS[0]}">'
            f"<title>{escape(edges[k])}-{escape(edges[k + 1])}: {count}</title></rect>"
        )
    return canvas.render()


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    log2_x: bool = False,
    x_tick_format: Callable[[float], str] = fmt_number,
    y_from_zero: bool = True,
) -> str:
    """An SVG line chart with markers and a legend (for more than one series).

    With ``log2_x`` the x axis is logarithmic and ticks sit at the data's own x values (e.g. block sizes);
    x values must then be > 0.
    """
    canvas = _Canvas(title, x_label, y_label)
    drawn = [s for s in series if s.points]
    if not drawn:
        return _no_data(canvas)
    xs = [x for s in drawn for x, _ in s.points]
    ys = [y for s in drawn for _, y in s.points]
    if log2_x and min(xs) <= 0:
        raise ValueError("log2_x needs x values > 0")
    tx: Callable[[float], float] = math.log2 if log2_x else float
    if log2_x:
        x_ticks = [(tx(x), x_tick_format(x)) for x in sorted(set(xs))]
        lo, hi = x_ticks[0][0], x_ticks[-1][0]
        pad = (hi - lo) * 0.05 or 0.5
        x_range = (lo - pad, hi + pad)
    else:
        x_ticks = (
            _ticks(min(xs), max(xs))
            if x_tick_format is fmt_number
            else [(t, x_tick_format(t)) for t in nice_ticks(min(xs), max(xs))]
        )
        x_range = (x_ticks[0][0], x_ticks[-1][0])
    y_ticks = _ticks(min(0.0, *ys) if y_from_zero else min(ys), max(ys))
    canvas.set_range(*x_range, y_ticks[0][0], y_ticks[-1][0])
    canvas.axes(x_ticks, y_ticks)
    for k, s in enumerate(drawn):
        color = _COLORS[k % len(_COLORS)]
        pts = sorted((canvas.px(tx(x)), canvas.py(y), x, y) for x, y in s.points)
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in pts)
        canvas.parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for px, py, x, y in pts if len(pts) <= 60 else ():  # markers only on short series
            canvas.parts.append(
                f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{color}">'
                f"<title>{escape(s.name)}: {escape(x_tick_format(x))}, {escape(fmt_number(y))}</title></circle>"
            )
        if len(drawn) > 1:
            ly = _TOP + 4 + 16 * k
            canvas.parts.append(
                f'<rect x="{WIDTH - _RIGHT - 150}" y="{ly}" width="10" height="10" fill="{color}"/>'
                f'<text x="{WIDTH - _RIGHT - 135}" y="{ly + 9}" {_FONT}>{escape(s.name)}</text>'
            )
    return canvas.render()
