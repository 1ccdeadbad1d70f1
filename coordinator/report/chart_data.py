"""What the report's SVG charts are drawn from: the series, layers, markers, reference lines
and axes a caller describes, the scale a chart maps an axis with, and round tick values
(linear, logarithmic, elapsed time, percentile). Pure: numbers in, numbers and labels out;
charts.py turns them into markup.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeGuard

_CHAR_W = 6.1  # mean glyph advance of an 11 px sans-serif label, for layout estimates


@dataclass(frozen=True)
class Series:
    """One line. ``None`` or NaN in ``y`` breaks the line; an isolated point is a dot."""

    name: str
    x: Sequence[float]
    y: Sequence[float | None]
    color: str
    dash: bool = False
    width: float = 1.6
    z: int = 0  # drawing order (higher on top); the legend keeps the given order
    values: bool = False  # also write the points as data (``data-xy``): what was drawn, for a reader or a test


@dataclass(frozen=True)
class Band:
    """A shaded interval of the x axis, [x[0], x[-1]]: between ``lo`` and ``hi`` at each x
    (a polygon), or the plot's full height when both are empty. ``detail`` is hover text."""

    name: str
    x: Sequence[float]
    lo: Sequence[float] = ()
    hi: Sequence[float] = ()
    color: str = "#e15759"
    detail: str = ""


@dataclass(frozen=True)
class Layer:
    """One band of a stacked step chart: ``values[i]`` spans ``[x[i], x[i] + dx[i])``."""

    name: str
    values: Sequence[float]
    color: str


@dataclass(frozen=True)
class Marker:
    """A vertical line on the x axis with a label in the band above the plot.
    kind: stage | warning | critical | lost | restored (colour and dash)."""

    x: float
    label: str
    kind: str = "stage"
    detail: str = ""  # hover text


@dataclass(frozen=True)
class HLine:
    """A horizontal reference line (a threshold, a saturation level)."""

    y: float
    label: str
    color: str = "#dc2626"


@dataclass(frozen=True)
class Axis:
    label: str = ""
    log: bool = False
    time: bool = False  # values are seconds; ticks in s, min or h
    lo: float | None = None  # domain bounds; None = from the data (linear y starts at 0)
    hi: float | None = None
    ticks: Sequence[tuple[float, str]] | None = None  # explicit (value, label) ticks
    zero: bool = True  # a linear axis without ``lo`` includes 0
    integer: bool = False  # counts: ticks no finer than 1
    headroom: float = 0.05  # a linear axis without ``hi`` reaches this far above the data


@dataclass
class _Scale:
    lo: float
    hi: float
    p0: float  # pixel of lo
    p1: float  # pixel of hi
    log: bool
    ticks: list[tuple[float, str]] = field(default_factory=list)
    label: str = ""

    def __call__(self, v: float) -> float:
        if self.log:
            v = math.log10(max(v, self.lo))
            lo, hi = math.log10(self.lo), math.log10(self.hi)
        else:
            lo, hi = self.lo, self.hi
        frac = (v - lo) / (hi - lo) if hi > lo else 0.5
        return self.p0 + frac * (self.p1 - self.p0)


# -- ticks -------------------------------------------------------------------------------


def nice_step(raw: float, allowed: Sequence[float] = (1, 2, 2.5, 5)) -> float:
    """The smallest allowed x 10^k step at least ``raw`` (raw > 0)."""
    if not raw > 0 or not math.isfinite(raw):
        return 1.0
    mag = 10 ** math.floor(math.log10(raw))
    for m in (*allowed, 10):
        if m * mag >= raw * (1 - 1e-9):
            return m * mag
    return 10 * mag


def linear_ticks(
    lo: float, hi: float, target: int = 5, allowed: Sequence[float] = (1, 2, 2.5, 5)
) -> tuple[list[float], float, float]:
    """Round ticks covering [lo, hi]; returns (ticks, domain_lo, domain_hi) snapped to ticks."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi <= lo:
        hi = lo + (abs(lo) if lo else 1.0)
    step = nice_step((hi - lo) / max(target, 1), allowed)
    start = math.floor(lo / step + 1e-9) * step
    stop = math.ceil(hi / step - 1e-9) * step
    n = int(round((stop - start) / step))
    ticks = [_clean(start + i * step, step) for i in range(n + 1)]
    return ticks, ticks[0], ticks[-1]


def log_ticks(lo: float, hi: float, max_ticks: int = 12) -> tuple[list[float], float, float]:
    """Decade ticks, with 2 and 5 between them when that makes at most ``max_ticks``."""
    lo = max(lo, 1e-12)
    hi = max(hi, lo * 1.0001)
    d0 = math.floor(math.log10(lo) + 1e-9)
    d1 = math.ceil(math.log10(hi) - 1e-9)
    if d1 <= d0:
        d1 = d0 + 1
    mults = (1, 2, 5) if 3 * (d1 - d0) + 1 <= max_ticks else (1,)
    ticks = []
    for d in range(d0, d1 + 1):
        for m in mults:
            v = m * 10.0**d
            if v <= 10.0**d1 * (1 + 1e-9):
                ticks.append(_clean(v, 10.0 ** min(d, 0)))
    # Tighten the domain to the nearest 1-2-5 values around the data.
    dom_lo = max(t for t in ticks if t <= lo * (1 + 1e-9)) if any(t <= lo * (1 + 1e-9) for t in ticks) else ticks[0]
    dom_hi = min(t for t in ticks if t >= hi * (1 - 1e-9)) if any(t >= hi * (1 - 1e-9) for t in ticks) else ticks[-1]
    ticks = [t for t in ticks if dom_lo <= t <= dom_hi]
    return ticks, dom_lo, dom_hi


def _clean(v: float, step: float) -> float:
    decimals = max(0, -math.floor(math.log10(step)) + 1) if step > 0 else 0
    return round(v, decimals) + 0.0


def fmt_number(v: float) -> str:
    """Compact tick label: 0.25, 5, 1,500 -> 1.5k, 2,000,000 -> 2M."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e9:
        return _trim(v / 1e9) + "G"
    if a >= 1e6:
        return _trim(v / 1e6) + "M"
    if a >= 1e4:
        return _trim(v / 1e3) + "k"
    return _trim(v)


def _trim(v: float) -> str:
    s = f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    if "e" in s:
        s = f"{v:.6f}".rstrip("0").rstrip(".")
    return s


def time_unit(span_s: float) -> tuple[float, str]:
    """(seconds per unit, unit) that gives readable elapsed-time ticks for a span."""
    if span_s <= 300:
        return 1.0, "s"
    if span_s <= 5 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


def _finite(v: float | None) -> TypeGuard[float]:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _num(v: float) -> str:
    s = f"{v:.1f}"
    return s[:-2] if s.endswith(".0") else s


def _text_w(s: str, size: float = 11) -> float:
    return len(s) * _CHAR_W * size / 11


def _make_scale(axis: Axis, values: list[float], p0: float, p1: float) -> _Scale:
    if axis.log:
        pos = [v for v in values if v > 0]
        lo = axis.lo if axis.lo is not None else (min(pos) if pos else 1.0)
        hi = axis.hi if axis.hi is not None else (max(pos) if pos else 10.0)
        ticks, dlo, dhi = log_ticks(lo, hi, max_ticks=max(2, int(abs(p1 - p0) // 22)))
        if axis.lo is not None:
            dlo = axis.lo
        if axis.hi is not None:
            dhi = axis.hi
        if axis.ticks is not None:
            tick_labels = [(v, t) for v, t in axis.ticks if dlo * (1 - 1e-9) <= v <= dhi * (1 + 1e-9)]
        else:
            tick_labels = [(t, fmt_number(t)) for t in ticks]
        return _Scale(dlo, dhi, p0, p1, True, tick_labels, axis.label)
    lo = min(values) if values else 0.0
    hi = max(values) if values else 1.0
    if axis.zero and axis.lo is None:
        lo = min(lo, 0.0)
        hi = max(hi, 0.0)
    if axis.lo is not None:
        lo = axis.lo
    if axis.hi is not None:
        hi = axis.hi
    label = axis.label
    if axis.time:
        per_unit, unit = time_unit(hi - lo)
        ticks, tlo, thi = linear_ticks(lo / per_unit, hi / per_unit, target=8, allowed=(1, 2, 5))
        label = f"{axis.label} ({unit})" if axis.label else unit
        tick_labels = [
            (t * per_unit, fmt_number(t)) for t in ticks if lo / per_unit - 1e-9 <= t <= hi / per_unit + 1e-9
        ]
        return _Scale(lo, hi if hi > lo else lo + 1, p0, p1, False, tick_labels, label)
    if axis.ticks is not None:
        return _Scale(lo, hi if hi > lo else lo + 1, p0, p1, False, list(axis.ticks), label)
    if axis.hi is None and hi > lo:
        hi += (hi - lo) * axis.headroom
    if axis.integer:
        hi = max(hi, lo + 4)
    ticks, tlo, thi = linear_ticks(lo, hi, allowed=(1, 2, 5) if axis.integer else (1, 2, 2.5, 5))
    if axis.lo is not None:
        tlo = lo
    if axis.hi is not None:
        thi = hi
    tick_labels = [(t, fmt_number(t)) for t in ticks if tlo - 1e-9 <= t <= thi + 1e-9]
    return _Scale(tlo, thi, p0, p1, False, tick_labels, label)


# -- the percentile curve's x axis -----------------------------------------------------


def percentile_x(q: float) -> float:
    """HdrHistogram plot position of quantile q: 1 / (1 - q) (log axis)."""
    return 1.0 / (1.0 - q) if q < 1 else math.inf


def _percentile_label(x: float) -> str:
    if x <= 1:
        return "0%"
    q = 100 * (1 - 1 / x)
    return f"{q:.10f}".rstrip("0").rstrip(".") + "%"
