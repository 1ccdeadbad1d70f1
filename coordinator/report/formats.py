"""How the HTML report writes numbers, durations and times (also its Jinja filters)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

NO_VALUE = "–"


def fmt_ms(v: float | None) -> str:
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
        return NO_VALUE
    if v < 1:
        return f"{v:.3f}"
    if v < 10:
        return f"{v:.2f}"
    if v < 100:
        return f"{v:.1f}"
    return f"{v:,.0f}"


def fmt_int(v: Any) -> str:
    try:
        return f"{int(v):,}"
    except (TypeError, ValueError):
        return NO_VALUE


def fmt_rate(v: Any) -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return NO_VALUE
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_pct(r: Any) -> str:
    try:
        r = float(r)
    except (TypeError, ValueError):
        return NO_VALUE
    if r == 0:
        return "0%"
    if r < 1e-4:
        return "<0.01%"
    return f"{100 * r:.2f}%"


def fmt_duration(s: Any) -> str:
    try:
        s = float(s)
    except (TypeError, ValueError):
        return NO_VALUE
    if s < 120:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s"


def fmt_time(iso: Any) -> str:
    if not iso:
        return NO_VALUE
    try:
        return datetime.fromisoformat(str(iso)).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    except ValueError:
        return str(iso)


def fmt_value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def text(v: Any) -> str:
    """A value as the page shows it: None as nothing."""
    return "" if v is None else str(v)


def latency_unit(values: Iterable[float | None]) -> tuple[float, str]:
    """(divisor from ms, unit) so a latency axis reads in round numbers."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    top = max(vals) if vals else 1.0
    if top >= 5000:
        return 1000.0, "s"
    if top < 1:
        return 0.001, "µs"
    return 1.0, "ms"


def scaled(vals: Sequence[float | None], div: float) -> list[float | None]:
    return [None if v is None else v / div for v in vals]


def wants_log(vals: Iterable[float | None]) -> bool:
    pos = [v for v in vals if v is not None and v > 0 and math.isfinite(v)]
    return bool(pos) and max(pos) / min(pos) > 50


FILTERS = {
    "ms": fmt_ms,
    "int": fmt_int,
    "rate": fmt_rate,
    "pct": fmt_pct,
    "duration": fmt_duration,
    "time": fmt_time,
    "text": text,
}
