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

import math
from collections.abc import Sequence
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
from horde.coordinator.report.chart_svg import (  # noqa: F401  (the colours and no_data are charts' API too)
    _CLIP_ID,
    AXIS,
    BAND_OPACITY,
    FONT,
    GRID,
    MARKER_COLORS,
    MUTED,
    PALETTE,
    TEXT,
    _axes,
    _bands,
    _clip,
    _finish,
    _frame,
    _hlines,
    _markers,
    _open_svg,
    _polyline_segments,
    _xy,
    no_data,
)


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
