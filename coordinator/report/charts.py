"""Inline SVG charts for the HTML report: small pure functions, values in, markup out.

Every chart is one ``<svg class="chart">`` that needs nothing outside itself (presentation
attributes inline, system fonts), so a report stays a single offline file. Drawn data
carries ``class="data"``; a chart with nothing to draw says so in text and carries
``data-nodata="1"`` (the report's browser test tells the two apart from a broken chart).

The markup grows with the number of points handed in, never with anything else: callers
downsample long series before they get here. Coordinates are rounded to 0.1 px.

Axes: linear with round ticks (1, 2, 2.5, 5 x 10^k), logarithmic (decades, with 2 and 5
between them when the range is short), elapsed time (s, min or h by span), or explicit
ticks (the percentile curve's "99%" / "99.9%" positions).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

from horde.coordinator.report.chart_data import (  # noqa: F401  (the input types and tick helpers are charts' API too)
    _CHAR_W,
    Axis,
    Band,
    HLine,
    Layer,
    Marker,
    Series,
    _finite,
    _make_scale,
    _num,
    _percentile_label,
    _Scale,
    _text_w,
    fmt_number,
    linear_ticks,
    log_ticks,
    nice_step,
    percentile_x,
    time_unit,
)

FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
TEXT = "#1f2937"
MUTED = "#6b7280"
GRID = "#e5e7eb"
AXIS = "#9ca3af"
BAND_OPACITY = 0.22  # a shaded interval: the lines over it stay readable

# Tableau 10: distinct, print-safe, readable on white.
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
MARKER_COLORS = {
    "stage": "#9ca3af",
    "warning": "#d97706",
    "critical": "#dc2626",
    "lost": "#7c3aed",
    "restored": "#15803d",
}

_LEGEND_ROW_H = 16
_BAND_ROW_H = 13


@dataclass
class _Frame:
    width: int
    height: int
    left: float
    top: float
    right: float
    bottom: float
    x: _Scale
    y: _Scale
    legend: list[tuple[int, str]] = field(default_factory=list)  # rendered legend pieces


def _legend_rows(items: Sequence[tuple[str, str, str]], width: float) -> list[list[tuple[str, str, str, float]]]:
    """Lay legend items (name, color, style) out in rows; each gets its x offset."""
    rows: list[list[tuple[str, str, str, float]]] = [[]]
    x = 0.0
    for name, color, style in items:
        w = 22 + _text_w(name) + 14
        if x + w > width and rows[-1]:
            rows.append([])
            x = 0.0
        rows[-1].append((name, color, style, x))
        x += w
    return rows if rows[0] else []


def _swatch(x: float, y: float, color: str, style: str) -> str:
    if style == "band":
        return (
            f'<rect x="{_num(x)}" y="{_num(y - 5)}" width="14" height="10" rx="2" '
            f'fill="{color}" fill-opacity="{BAND_OPACITY}"/>'
        )
    if style == "area":
        return (
            f'<rect x="{_num(x)}" y="{_num(y - 5)}" width="14" height="10" rx="2" fill="{color}" fill-opacity="0.85"/>'
        )
    dash = ' stroke-dasharray="4 3"' if style == "dash" else ""
    return (
        f'<line x1="{_num(x)}" y1="{_num(y)}" x2="{_num(x + 16)}" '
        f'y2="{_num(y)}" stroke="{color}" stroke-width="2.2"{dash}/>'
    )


def _open_svg(width: int, height: int, title: str, extra: str = "") -> list[str]:
    return [
        (
            f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" role="img" '
            f'font-family="{escape(FONT)}" font-size="11" fill="{TEXT}"{extra}>'
        ),
        f"<title>{escape(title)}</title>",
    ]


def _marker_band(markers: Sequence[Marker], x: _Scale) -> tuple[list[tuple[Marker, float, int]], int]:
    """Greedy label placement in up to two rows (stages first, then alerts by time); a
    label that fits nowhere is left to the line's hover text. Returns (marker, px, row or
    -1) and the number of rows used."""
    placed: list[tuple[Marker, float, int]] = []
    taken: list[list[tuple[float, float]]] = [[], []]
    used = 0
    for m in sorted(markers, key=lambda m: (m.kind != "stage", m.x)):
        if not _finite(m.x) or not (x.lo <= m.x <= x.hi):
            continue
        px = x(m.x)
        a, b = px, px + _text_w(m.label, 10) + 8
        row = -1
        if m.label and b <= x.p1 + 40:
            for r in range(2):
                if all(b <= lo or a >= hi for lo, hi in taken[r]):
                    row = r
                    taken[r].append((a, b))
                    used = max(used, r + 1)
                    break
        placed.append((m, px, row))
    return placed, used


def _frame(
    *,
    width: int,
    height: int,
    x_axis: Axis,
    y_axis: Axis,
    xs: list[float],
    ys: list[float],
    legend: Sequence[tuple[str, str, str]],
    markers: Sequence[Marker],
) -> tuple[_Frame, list[str], list[tuple[Marker, float, int]], int]:
    left, right = 58.0, width - 18.0
    rows = _legend_rows(legend, right - left)
    top0 = 8 + len(rows) * _LEGEND_ROW_H
    x = _make_scale(x_axis, xs, left, right)
    placed, band_rows = _marker_band(markers, x)
    top = top0 + (band_rows * _BAND_ROW_H + 4 if band_rows else 4)
    bottom = height - 38.0
    y = _make_scale(y_axis, ys, bottom, top)
    parts: list[str] = []
    for r, row in enumerate(rows):
        ly = 8 + r * _LEGEND_ROW_H + 8
        for name, color, style, off in row:
            parts.append(_swatch(left + off, ly, color, style))
            parts.append(f'<text x="{_num(left + off + 21)}" y="{_num(ly + 4)}">{escape(name)}</text>')
    return _Frame(width, height, left, top, right, bottom, x, y), parts, placed, top0


def _axes(f: _Frame) -> list[str]:
    out = [
        (
            f'<rect x="{_num(f.left)}" y="{_num(f.top)}" width="{_num(f.right - f.left)}" '
            f'height="{_num(f.bottom - f.top)}" fill="#ffffff" stroke="none"/>'
        )
    ]
    for v, label in f.y.ticks:
        py = f.y(v)
        if py < f.top - 0.5 or py > f.bottom + 0.5:
            continue
        out.append(
            f'<line x1="{_num(f.left)}" y1="{_num(py)}" x2="{_num(f.right)}" '
            f'y2="{_num(py)}" stroke="{GRID}" stroke-width="1"/>'
        )
        out.append(
            f'<text x="{_num(f.left - 6)}" y="{_num(py + 3.5)}" text-anchor="end" fill="{MUTED}">{escape(label)}</text>'
        )
    for v, label in f.x.ticks:
        px = f.x(v)
        if px < f.left - 0.5 or px > f.right + 0.5:
            continue
        out.append(
            f'<line x1="{_num(px)}" y1="{_num(f.top)}" x2="{_num(px)}" '
            f'y2="{_num(f.bottom)}" stroke="{GRID}" stroke-width="1" stroke-opacity="0.6"/>'
        )
        out.append(
            f'<line x1="{_num(px)}" y1="{_num(f.bottom)}" x2="{_num(px)}" y2="{_num(f.bottom + 4)}" stroke="{AXIS}"/>'
        )
        out.append(
            f'<text x="{_num(px)}" y="{_num(f.bottom + 16)}" text-anchor="middle" fill="{MUTED}">{escape(label)}</text>'
        )
    out.append(
        f'<line x1="{_num(f.left)}" y1="{_num(f.bottom)}" x2="{_num(f.right)}" y2="{_num(f.bottom)}" stroke="{AXIS}"/>'
    )
    out.append(
        f'<line x1="{_num(f.left)}" y1="{_num(f.top)}" x2="{_num(f.left)}" y2="{_num(f.bottom)}" stroke="{AXIS}"/>'
    )
    if f.x.label:
        out.append(
            f'<text x="{_num((f.left + f.right) / 2)}" y="{_num(f.height - 6)}" '
            f'text-anchor="middle" fill="{MUTED}">{escape(f.x.label)}</text>'
        )
    if f.y.label:
        cy = (f.top + f.bottom) / 2
        out.append(
            f'<text transform="translate(14 {_num(cy)}) rotate(-90)" '
            f'text-anchor="middle" fill="{MUTED}">{escape(f.y.label)}</text>'
        )
    return out


def _markers(f: _Frame, placed: list[tuple[Marker, float, int]], band_top: float) -> list[str]:
    out = []
    for m, px, row in placed:
        color = MARKER_COLORS.get(m.kind, MARKER_COLORS["warning"])
        dash = ' stroke-dasharray="4 3"' if m.kind == "stage" else ""
        hover = escape(m.detail or m.label)
        if px > f.left + 0.5:  # the left axis already marks a boundary at the start
            out.append(
                f'<line class="marker" x1="{_num(px)}" y1="{_num(f.top)}" x2="{_num(px)}" y2="{_num(f.bottom)}" '
                f'stroke="{color}" stroke-width="{1 if m.kind == "stage" else 1.4}"{dash}><title>{hover}</title></line>'
            )
        if row >= 0:
            ty = band_top + row * _BAND_ROW_H + 10
            weight = "" if m.kind == "stage" else ' font-weight="600"'
            out.append(
                f'<text x="{_num(px + 3)}" y="{_num(ty)}" font-size="10" '
                f'fill="{color if m.kind != "stage" else MUTED}"{weight}>'
                f"{escape(m.label)}<title>{hover}</title></text>"
            )
    return out


def _hlines(f: _Frame, hlines: Sequence[HLine]) -> list[str]:
    out = []
    for h in hlines:
        if not _finite(h.y):
            continue
        py = f.y(h.y)
        if py < f.top - 0.5 or py > f.bottom + 0.5:
            continue
        out.append(
            f'<line x1="{_num(f.left)}" y1="{_num(py)}" x2="{_num(f.right)}" '
            f'y2="{_num(py)}" stroke="{h.color}" stroke-width="1" stroke-dasharray="6 3"/>'
        )
        out.append(
            f'<text x="{_num(f.right - 4)}" y="{_num(py - 4)}" text-anchor="end" '
            f'font-size="10" fill="{h.color}">{escape(h.label)}</text>'
        )
    return out


def _polyline_segments(s: Series, f: _Frame) -> tuple[list[str], list[tuple[float, float]]]:
    """Path data per unbroken run of points, and the isolated points."""
    segments: list[str] = []
    dots: list[tuple[float, float]] = []
    run: list[tuple[float, float]] = []

    def flush() -> None:
        if len(run) == 1:
            dots.append(run[0])
        elif run:
            segments.append("M" + "L".join(f"{_num(px)},{_num(py)}" for px, py in run))
        run.clear()

    for xv, yv in zip(s.x, s.y):
        if not (_finite(xv) and _finite(yv)) or (f.y.log and yv <= 0) or (f.x.log and xv <= 0):
            flush()
            continue
        run.append((f.x(float(xv)), f.y(float(yv))))
    flush()
    return segments, dots


def _xy(s: Series) -> str:
    """A series' points as data: "x,y x,y ..." (finite points only, 10 significant digits)."""
    return " ".join(f"{float(x):.10g},{float(y):.10g}" for x, y in zip(s.x, s.y) if _finite(x) and _finite(y))


def _bands(f: _Frame, bands: Sequence[Band]) -> list[str]:
    out = []
    for b in bands:
        xs = [float(v) for v in b.x if _finite(v)]
        if len(xs) < 2 or not xs[-1] > xs[0]:
            continue
        if b.lo and b.hi and len(b.lo) == len(b.x) == len(b.hi):
            upper = [(f.x(float(x)), f.y(float(y))) for x, y in zip(b.x, b.hi)]
            lower = [(f.x(float(x)), f.y(float(y))) for x, y in zip(b.x, b.lo)]
            pts = upper + lower[::-1]
        else:
            x0, x1 = f.x(xs[0]), f.x(xs[-1])
            pts = [(x0, f.top), (x1, f.top), (x1, f.bottom), (x0, f.bottom)]
        d = "M" + "L".join(f"{_num(px)},{_num(py)}" for px, py in pts) + "Z"
        out.append(
            f'<path class="band" d="{d}" fill="{b.color}" fill-opacity="{BAND_OPACITY}" stroke="none" '
            f'data-from-s="{xs[0]:.10g}" data-to-s="{xs[-1]:.10g}"><title>{escape(b.detail or b.name)}</title></path>'
        )
    return out


def no_data(title: str, message: str = "no data", *, width: int = 640, height: int = 120) -> str:
    """A placeholder chart that says why there is nothing to draw."""
    parts = _open_svg(width, height, title, ' data-nodata="1"')
    parts.append(
        f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" rx="6" fill="#f9fafb" stroke="{GRID}"/>'
    )
    parts.append(
        f'<text x="{width / 2:g}" y="{height / 2 + 4:g}" text-anchor="middle" '
        f'fill="{MUTED}" font-size="13">{escape(message)}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _clip(uid: str, f: _Frame) -> str:
    return (
        f'<clipPath id="{uid}"><rect x="{_num(f.left)}" y="{_num(f.top - 2)}" '
        f'width="{_num(f.right - f.left)}" height="{_num(f.bottom - f.top + 4)}"/></clipPath>'
    )


_CLIP_ID = "@@clip@@"


def _finish(body: list[str]) -> str:
    """Join the markup and give its clip path an id derived from the content: unique for
    distinct charts on one page, and two identical charts share identical geometry."""
    text = "".join(body)
    uid = "clip-" + hashlib.blake2s(text.encode(), digest_size=6).hexdigest()
    return text.replace(_CLIP_ID, uid)


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_axis: Axis,
    y_axis: Axis,
    markers: Sequence[Marker] = (),
    hlines: Sequence[HLine] = (),
    bands: Sequence[Band] = (),
    width: int = 640,
    height: int = 280,
    empty_message: str = "no data",
) -> str:
    """Lines (several series, optional log y), with markers, reference lines and shaded
    intervals (bands, under the lines)."""
    xs = [float(v) for s in series for v, w in zip(s.x, s.y) if _finite(v) and _finite(w)]
    ys = [float(w) for s in series for w in s.y if _finite(w)]
    if y_axis.log:
        ys = [v for v in ys if v > 0]
    if not xs or not ys:
        return no_data(title, empty_message, width=width)
    ys_dom = ys + [h.y for h in hlines if _finite(h.y) and (not y_axis.log or h.y > 0)]
    if x_axis.lo is not None:
        xs.append(x_axis.lo)
    if x_axis.hi is not None:
        xs.append(x_axis.hi)
    legend = [(s.name, s.color, "dash" if s.dash else "line") for s in series if s.name]
    legend += list({(b.name, b.color, "band"): None for b in bands if b.name})
    f, parts, placed, band_top = _frame(
        width=width, height=height, x_axis=x_axis, y_axis=y_axis, xs=xs, ys=ys_dom, legend=legend, markers=markers
    )
    body = _open_svg(width, height, title) + parts + _axes(f)
    uid = _CLIP_ID
    body.append(f"<defs>{_clip(uid, f)}</defs>")
    body += _hlines(f, hlines)
    body.append(f'<g clip-path="url(#{uid})" fill="none" stroke-linejoin="round" stroke-linecap="round">')
    body += _bands(f, bands)
    for s in sorted(series, key=lambda s: s.z):
        segments, dots = _polyline_segments(s, f)
        dash = ' stroke-dasharray="5 3"' if s.dash else ""
        name = escape(s.name)
        for i, d in enumerate(segments):
            values = f' data-xy="{_xy(s)}"' if s.values and i == 0 else ""
            body.append(
                f'<path class="data" d="{d}" stroke="{s.color}" '
                f'stroke-width="{s.width:g}"{dash}{values}><title>{name}</title></path>'
            )
        for px, py in dots:
            body.append(
                f'<circle class="data" cx="{_num(px)}" cy="{_num(py)}" r="2.2" '
                f'fill="{s.color}" stroke="none"><title>{name}</title></circle>'
            )
    body.append("</g>")
    body += _markers(f, placed, band_top)
    body.append("</svg>")
    return _finish(body)


def stacked_chart(
    x: Sequence[float],
    dx: Sequence[float],
    layers: Sequence[Layer],
    *,
    title: str,
    x_axis: Axis,
    y_axis: Axis,
    markers: Sequence[Marker] = (),
    width: int = 640,
    height: int = 240,
    empty_message: str = "no data",
    zero_message: str = "none",
) -> str:
    """Stacked steps (bars without gaps): layer i of slot k spans [x[k], x[k] + dx[k]).
    Layers that are zero everywhere are left out; all zero draws the baseline and says
    ``zero_message``."""
    n = len(x)
    if n == 0:
        return no_data(title, empty_message, width=width)
    shown = [layer for layer in layers if any(_finite(v) and v > 0 for v in layer.values)]
    ends = [float(a) + float(b) for a, b in zip(x, dx)]
    totals = [0.0] * n
    for layer in shown:
        for k, v in enumerate(layer.values):
            if _finite(v):
                totals[k] += float(v)
    xs = [float(v) for v in x] + ends
    if x_axis.lo is not None:
        xs.append(x_axis.lo)
    legend = [(layer.name, layer.color, "area") for layer in shown]
    f, parts, placed, band_top = _frame(
        width=width,
        height=height,
        x_axis=x_axis,
        y_axis=y_axis,
        xs=xs,
        ys=totals + [0.0],
        legend=legend,
        markers=markers,
    )
    body = _open_svg(width, height, title) + parts + _axes(f)
    uid = _CLIP_ID
    body.append(f'<defs>{_clip(uid, f)}</defs><g clip-path="url(#{uid})">')
    base = [0.0] * n
    for layer in shown:
        top = [b + (float(v) if _finite(v) else 0.0) for b, v in zip(base, layer.values)]
        upper = []
        lower = []
        for k in range(n):
            x0, x1 = f.x(float(x[k])), f.x(ends[k])
            upper += [(x0, f.y(top[k])), (x1, f.y(top[k]))]
            lower += [(x0, f.y(base[k])), (x1, f.y(base[k]))]
        pts = upper + lower[::-1]
        d = "M" + "L".join(f"{_num(px)},{_num(py)}" for px, py in pts) + "Z"
        body.append(
            f'<path class="data" d="{d}" fill="{layer.color}" fill-opacity="0.85" '
            f'stroke="{layer.color}" stroke-width="0.6"><title>{escape(layer.name)}</title></path>'
        )
        base = top
    if not shown:
        y0 = f.y(0.0)
        body.append(
            f'<path class="data" d="M{_num(f.x(float(x[0])))},{_num(y0)}L{_num(f.x(ends[-1]))},{_num(y0)}" '
            f'stroke="#59a14f" stroke-width="2" fill="none"/>'
        )
        body.append(
            f'<text x="{_num((f.left + f.right) / 2)}" y="{_num((f.top + f.bottom) / 2)}" '
            f'text-anchor="middle" fill="{MUTED}" font-size="13">{escape(zero_message)}</text>'
        )
    body.append("</g>")
    body += _markers(f, placed, band_top)
    body.append("</svg>")
    return _finish(body)


# -- percentile curve ----------------------------------------------------------------------


def percentile_chart(
    curves: Sequence[Series],
    *,
    title: str,
    y_axis: Axis,
    width: int = 640,
    height: int = 300,
    empty_message: str = "no data",
) -> str:
    """Latency by percentile, HdrHistogram style: each curve's ``x`` holds quantiles in
    [0, 1) (plotted at 1 / (1 - q), log scale), ``y`` the value at that quantile."""
    mapped = [Series(c.name, [percentile_x(q) for q in c.x], list(c.y), c.color, c.dash, c.width, c.z) for c in curves]
    xs = [v for c in mapped for v in c.x if _finite(v)]
    if not xs:
        return no_data(title, empty_message, width=width)
    top = max(max(xs), 10.0)
    decades = max(1, math.ceil(math.log10(top) - 1e-9))
    ticks = [(10.0**d, _percentile_label(10.0**d)) for d in range(decades + 1)]
    # End at the next decade unless the data stops well short of it.
    hi = min(10.0**decades, top * 1.6)
    x_axis = Axis(label="percentile", log=True, lo=1.0, hi=hi, ticks=ticks)
    return line_chart(
        mapped, title=title, x_axis=x_axis, y_axis=y_axis, width=width, height=height, empty_message=empty_message
    )
