"""The SVG pieces every chart in charts.py is built from: colours, the frame (plot area,
legend, marker band), axes, markers, reference lines, bands, clip paths.

Pure: values in, markup out; charts.py composes them into whole charts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

from horde.coordinator.report.chart_data import (
    Axis,
    Band,
    HLine,
    Marker,
    Series,
    _finite,
    _make_scale,
    _num,
    _Scale,
    _text_w,
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
