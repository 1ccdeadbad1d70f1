"""A bundle as one self-contained HTML page: facts, verdicts, tables and inline SVG charts.

``render_html(bundle)`` reads only the bundle (manifest, summary, windows, histograms,
alerts) and returns the page; ``write_html(path)`` puts it into the bundle as
``report.html``. ``render_compare_html(a, b)`` overlays two runs. Nothing is fetched: no
scripts, fonts or styles from anywhere, so the page opens offline and in a mail client.

The page's size grows with windows x endpoints, never with requests: time series have
one point per window, and when a run has more than ``MAX_POINTS`` windows, consecutive
windows are merged into one point (their histograms merged, so quantiles stay exact);
percentile curves have a fixed number of points per decade of count.

A bundle of a run that did not finish (no summary, missing files, no windows, no
requests) still renders: what is missing is said where it would have been.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any


from horde.agents.samples import ERROR_LABELS
from horde.coordinator.report import charts
from horde.coordinator.measure.aggregate import Stats
from horde.coordinator.bundle.store import INCOMPLETE_SUFFIX, Bundle, read_bundle
from horde.coordinator.report.charts import Axis, HLine, Layer, Marker, Series
from horde.coordinator.measure.histogram import Histogram

MAX_POINTS = 2000  # time-series points per chart; more windows are merged in groups
REPORT_FILE = "report.html"
TOTAL = "total"  # display name of the all-endpoints scope (a key of its own, never an endpoint's)
CURVE_POINTS_PER_DECADE = 24

QUANTILE_COLORS = {"p50": "#59a14f", "p90": "#4e79a7", "p99": "#f28e2b", "max": "#e15759"}
SERVICE_COLOR = "#6b7280"
RUN_COLORS = ("#4e79a7", "#f28e2b")  # compare: run A, run B
ERROR_COLORS = {
    "connect": "#b07aa1", "timeout": "#f28e2b", "reset": "#9c755f", "http_4xx": "#edc948",
    "http_5xx": "#e15759", "unexpected_status": "#ff9da7", "protocol": "#76b7b2",
    "too_large": "#4e79a7", "other": "#bab0ac",
}
CPU_SATURATED_PCT = 90  # horde.coordinator.measure.health.CPU_SATURATED, as the chart draws it
TABLE_QUANTILES = ("p50", "p90", "p95", "p99", "p99.9", "max")


# -- reading the bundle -----------------------------------------------------------------------


@dataclass
class _Point:
    """Accumulates the windows merged into one time-series point."""

    t0: float
    t1: float
    requests: dict[str, int] = field(default_factory=dict)  # scope -> n (TOTAL key = all)
    errors: dict[str, int] = field(default_factory=dict)
    classes: dict[str, int] = field(default_factory=dict)
    quantiles: dict[str, dict[str, float | None]] = field(default_factory=dict)  # scope -> name -> ms
    in_flight: float | None = None
    users: float | None = None
    level: float | None = None
    cpu: dict[str, list[float]] = field(default_factory=dict)  # agent -> per-window fractions
    rss_mb: dict[str, float] = field(default_factory=dict)
    loop_lag_ms: float | None = None
    coordinator_rss_mb: float | None = None
    target: dict[str, float] = field(default_factory=dict)  # resource series -> peak in the point
    node_cpu: dict[str, list[float]] = field(default_factory=dict)  # node -> per-window CPU fractions
    node_mem_mb: dict[str, float] = field(default_factory=dict)


def _peak(old: float | None, new: float) -> float:
    return new if old is None else max(old, new)


def _number(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


@dataclass
class Timeline:
    """Per-point series of a bundle (one point = ``group`` consecutive windows)."""

    group: int
    points: list[_Point]
    scopes: list[str]  # endpoint names in plan order (TOTAL not included)
    agents: list[str]

    @property
    def t(self) -> list[float]:
        return [p.t0 for p in self.points]

    @property
    def span(self) -> list[float]:
        return [max(p.t1 - p.t0, 1e-9) for p in self.points]

    @property
    def mid(self) -> list[float]:
        return [(p.t0 + p.t1) / 2 for p in self.points]

    def rate(self, scope: str, what: str = "requests") -> list[float]:
        src = [getattr(p, what).get(scope, 0) for p in self.points]
        return [n / s for n, s in zip(src, self.span)]

    def quantile(self, scope: str, name: str) -> list[float | None]:
        return [p.quantiles.get(scope, {}).get(name) for p in self.points]


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _endpoint_order(bundle: Bundle) -> list[str]:
    names: list[str] = []
    if bundle.summary and isinstance(bundle.summary.get("endpoints"), dict):
        names = list(bundle.summary["endpoints"])
    if not names:
        engines = (bundle.manifest.get("plan") or {}).get("engines")
        if isinstance(engines, dict):
            names = list(engines)
    if not names:
        reqs = (bundle.manifest.get("scenario") or {}).get("requests") or []
        names = [r.get("name") for r in reqs if isinstance(r, dict) and r.get("name")]
    return [str(n) for n in names]


def _window_quantiles(d: dict[str, Any]) -> dict[str, float | None]:
    lat = d.get("latency_ms") or {}
    svc = d.get("service_time_ms") or {}
    out = {q: lat.get(q) for q in ("p50", "p90", "p99", "max")}
    out.update({"svc_" + q: svc.get(q) for q in ("p50", "p99", "max")})
    return out


def build_timeline(bundle: Bundle, max_points: int | None = None) -> Timeline:
    """Stream the bundle's windows into at most ``max_points`` (default MAX_POINTS) points."""
    max_points = max_points or MAX_POINTS
    n_lines = _count_lines(bundle.path / "windows.jsonl")
    group = max(1, math.ceil(n_lines / max_points))
    scopes = _endpoint_order(bundle)
    seen_scopes = set(scopes)
    points: dict[int, _Point] = {}
    last_cpu: dict[str, tuple[int, float, float]] = {}  # agent -> (incarnation, cpu_s, t)
    agents: set[str] = set()
    for w in bundle.windows():
        try:
            index = int(w["index"])
            t0 = float(w.get("start_s", index))
            t1 = float(w.get("end_s", t0 + 1.0))
        except (KeyError, TypeError, ValueError):
            continue
        g = index // group
        p = points.get(g)
        if p is None:
            p = points[g] = _Point(t0, t1)
        p.t0, p.t1 = min(p.t0, t0), max(p.t1, t1)
        scoped = dict(w.get("endpoints") or {})
        scoped[TOTAL] = w.get("total") or {}
        for scope, d in scoped.items():
            if not isinstance(d, dict):
                continue
            if scope != TOTAL and scope not in seen_scopes:
                seen_scopes.add(scope)
                scopes.append(scope)
            p.requests[scope] = p.requests.get(scope, 0) + int(d.get("requests") or 0)
            p.errors[scope] = p.errors.get(scope, 0) + int(d.get("errors") or 0)
            if group == 1:
                p.quantiles[scope] = _window_quantiles(d)
        for cls, n in ((w.get("total") or {}).get("errors_by_class") or {}).items():
            if cls != "ok":
                p.classes[cls] = p.classes.get(cls, 0) + int(n)
        gen = w.get("generator") or {}
        if gen:
            in_flight = sum(float(r.get("in_flight") or 0) for r in gen.values())
            users = sum(float(r.get("users") or 0) for r in gen.values())
            level = sum(float(r.get("level") or 0) for r in gen.values())
            lag = max(float(r.get("loop_lag_max_ns") or 0) for r in gen.values()) / 1e6
            p.in_flight = in_flight if p.in_flight is None else max(p.in_flight, in_flight)
            p.users = users if p.users is None else max(p.users, users)
            p.level = level  # the latest planned level in the group
            p.loop_lag_ms = lag if p.loop_lag_ms is None else max(p.loop_lag_ms, lag)
            for agent, r in gen.items():
                agents.add(agent)
                p.rss_mb[agent] = float(r.get("rss_bytes") or 0) / 2**20
                inc, cpu = int(r.get("incarnation") or 0), float(r.get("cpu_s") or 0.0)
                prev = last_cpu.get(agent)
                frac = None
                if prev is not None and prev[0] == inc and cpu >= prev[1] and t1 > prev[2]:
                    frac = (cpu - prev[1]) / (t1 - prev[2])
                elif prev is None and inc == 0 and t1 > 0:
                    frac = cpu / t1  # cpu_s counts from the agent's run start, ~ the common start
                last_cpu[agent] = (inc, cpu, t1)
                if frac is not None:
                    p.cpu.setdefault(agent, []).append(frac)
        _fold_resources(p, w)
    if group > 1 and points:
        _merged_quantiles(bundle, points, group)
    ordered = [points[g] for g in sorted(points)]
    return Timeline(group=group, points=ordered, scopes=scopes, agents=sorted(agents, key=_agent_key))


def _fold_resources(p: _Point, w: dict) -> None:
    """Target, node and coordinator readings of a window (peaks; node CPU averaged)."""
    for name, v in (w.get("target") or {}).items():
        v = _number(v)
        if v is not None:
            p.target[name] = _peak(p.target.get(name), v)
    coord = _number((w.get("coordinator") or {}).get("rss_bytes"))
    if coord is not None:
        p.coordinator_rss_mb = _peak(p.coordinator_rss_mb, coord / 2**20)
    for node, r in (w.get("nodes") or {}).items():
        if not isinstance(r, dict):
            continue
        cpu = _number(r.get("cpu_fraction"))
        if cpu is not None:
            p.node_cpu.setdefault(str(node), []).append(cpu)
        mem = _number(r.get("mem_used_bytes"))
        if mem is not None:
            p.node_mem_mb[str(node)] = _peak(p.node_mem_mb.get(str(node)), mem / 2**20)


def _agent_key(a: str) -> tuple[int, str]:
    return (int(a), a) if a.isdigit() else (1 << 30, a)


def _merged_quantiles(bundle: Bundle, points: dict[int, _Point], group: int) -> None:
    """Exact quantiles of merged windows: merge each group's histograms, then read them."""
    current: int | None = None
    acc: dict[str, Stats] = {}

    def flush() -> None:
        if current is None or current not in points:
            return
        total = Stats()
        for s in acc.values():
            total.merge(s)
        for scope, s in [*acc.items(), (TOTAL, total)]:
            points[current].quantiles[scope] = _stats_quantiles(s)

    for item in bundle.window_histograms():
        try:
            g = int(item["index"]) // group
        except (KeyError, TypeError, ValueError):
            continue
        if g != current:
            flush()
            current, acc = g, {}
        for scope, sparse in (item.get("endpoints") or {}).items():
            try:
                s = Stats.from_sparse(sparse)
            except (KeyError, TypeError, ValueError):
                continue
            if scope in acc:
                acc[scope].merge(s)
            else:
                acc[scope] = s
    flush()


def _ms_or_none(ns: int | None) -> float | None:
    return None if ns is None else ns / 1e6


def _stats_quantiles(s: Stats) -> dict[str, float | None]:
    lat = s.latency.quantiles((0.5, 0.9, 0.99))
    svc = s.service_time.quantiles((0.5, 0.99))
    return {
        "p50": _ms_or_none(lat[0.5]), "p90": _ms_or_none(lat[0.9]), "p99": _ms_or_none(lat[0.99]),
        "max": _ms_or_none(s.latency.max_ns),
        "svc_p50": _ms_or_none(svc[0.5]), "svc_p99": _ms_or_none(svc[0.99]),
        "svc_max": _ms_or_none(s.service_time.max_ns),
    }


def cumulative_stats(bundle: Bundle) -> dict[str, Stats]:
    """Whole-run stats per endpoint and TOTAL: from histograms.msgpack (stage = None), or,
    for a bundle without it, merged from the per-window histograms."""
    out: dict[str, Stats] = {}
    try:
        entries = bundle.histograms()
    except Exception:  # a torn or foreign file: fall back to the windows
        entries = []
    for e in entries:
        if not isinstance(e, dict) or e.get("stage") is not None:
            continue
        try:
            s = Stats.from_sparse(e["stats"])
        except (KeyError, TypeError, ValueError):
            continue
        out[TOTAL if e.get("endpoint") is None else str(e["endpoint"])] = s
    if out:
        return out
    total = Stats()
    n = 0
    for item in bundle.window_histograms():
        n += 1
        for scope, sparse in (item.get("endpoints") or {}).items():
            try:
                s = Stats.from_sparse(sparse)
            except (KeyError, TypeError, ValueError):
                continue
            total.merge(s)
            if scope in out:
                out[scope].merge(s)
            else:
                out[scope] = s.copy()
    if n:
        total.duration_s = float(n)
        for s in out.values():
            s.duration_s = float(n)
        out[TOTAL] = total
    return out


def percentile_points(h: Histogram) -> tuple[list[float], list[float | None]]:
    """(quantiles, values in ms) for a percentile curve: CURVE_POINTS_PER_DECADE points
    per decade of 1 / (1 - q) up to the count, then the maximum at q = 1 - 1/count."""
    if not h.count:
        return [], []
    decades = math.log10(max(h.count, 1))
    steps = max(1, int(decades * CURVE_POINTS_PER_DECADE))
    qs = [1 - 10 ** (-k / CURVE_POINTS_PER_DECADE) for k in range(steps + 1)]
    qs = [q for q in qs if q < 1 - 1 / max(h.count, 2)] or [0.0]
    values = h.quantiles(qs)
    xs = list(qs)
    ys: list[float | None] = [_ms_or_none(values[q]) for q in qs]
    if h.count > 1:
        xs.append(1 - 1 / h.count)
        ys.append(_ms_or_none(h.max_ns))
    return xs, ys


# -- formatting ---------------------------------------------------------------------------


def _e(v: Any) -> str:
    return escape("" if v is None else str(v))


def fmt_ms(v: float | None) -> str:
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "–"
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
        return "–"


def fmt_rate(v: Any) -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "–"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_pct(r: Any) -> str:
    try:
        r = float(r)
    except (TypeError, ValueError):
        return "–"
    if r == 0:
        return "0%"
    if r < 1e-4:
        return "<0.01%"
    return f"{100 * r:.2f}%"


def fmt_duration(s: Any) -> str:
    try:
        s = float(s)
    except (TypeError, ValueError):
        return "–"
    if s < 120:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s"


def fmt_time(iso: Any) -> str:
    if not iso:
        return "–"
    try:
        return datetime.fromisoformat(str(iso)).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    except ValueError:
        return str(iso)


def _latency_unit(values: Iterable[float | None]) -> tuple[float, str]:
    """(divisor from ms, unit) so a latency axis reads in round numbers."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    top = max(vals) if vals else 1.0
    if top >= 5000:
        return 1000.0, "s"
    if top < 1:
        return 0.001, "µs"
    return 1.0, "ms"


def _scaled(vals: Sequence[float | None], div: float) -> list[float | None]:
    return [None if v is None else v / div for v in vals]


def _wants_log(vals: Iterable[float | None]) -> bool:
    pos = [v for v in vals if v is not None and v > 0 and math.isfinite(v)]
    return bool(pos) and max(pos) / min(pos) > 50


# -- markers ---------------------------------------------------------------------------------


def stage_markers(manifest: dict) -> list[Marker]:
    stages = (manifest.get("plan") or {}).get("stages") or []
    out, start = [], 0.0
    for st in stages:
        if not isinstance(st, dict):
            continue
        out.append(Marker(start, str(st.get("name", "")), "stage", f"stage {st.get('name', '')} from {start:g} s"))
        try:
            start = float(st.get("end_s", start))
        except (TypeError, ValueError):
            pass
    return out


def _alert_kind(a: dict) -> str:
    """Marker / badge style: lost, restored, critical or warning."""
    kind = str(a.get("kind", ""))
    if kind == "agent_lost":
        return "lost"
    if kind == "agent_restored":
        return "restored"
    if kind == "abort" or str(a.get("level") or a.get("severity") or "") == "critical":
        return "critical"
    return "warning"


def _fmt_value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _alert_text(a: dict) -> tuple[str, str]:
    """(short label, full detail) of an alert line."""
    kind = str(a.get("kind", "alert"))
    agent = a.get("agent")
    if kind == "agent_lost":
        label = f"agent {agent} lost"
        detail = f"agent {agent} (incarnation {a.get('incarnation')}) lost: {a.get('reason', '')} {a.get('detail', '')}".strip()
        if a.get("node"):
            detail += f"; node {str(a['node'])[:12]}"
        if a.get("replaced") is True:
            detail += f"; replaced by incarnation {a.get('replacement_incarnation')}"
            if a.get("replaced_at_s") is not None:
                detail += f" at {_fmt_value(a['replaced_at_s'])} s"
        elif a.get("replaced") is False:
            detail += "; not replaced"
    elif kind == "agent_restored":
        label = f"agent {agent} restored"
        detail = f"agent {agent} sending again (incarnation {a.get('incarnation')})"
    elif kind == "abort":
        label = "abort"
        detail = f"abort: {a.get('reason') or a.get('rule') or ''}"
    elif kind == "bad_batch":
        label = "bad batch"
        detail = f"agent {agent}: undecodable batch: {a.get('detail', '')}"
    else:
        level = str(a.get("level") or a.get("severity") or kind)
        name = a.get("text") or a.get("rule") or a.get("name") or a.get("expr") or kind
        label = f"{level} {a.get('rule') or ''}".strip()
        parts = [f"{level}:", str(name)]
        if a.get("event"):
            parts.append(f"({a['event']})")
        if a.get("endpoint"):
            parts.append(f"[{a['endpoint']}]")
        if a.get("peak") is not None:
            parts.append(f"peak {_fmt_value(a['peak'])}")
        reason = a.get("reason") or a.get("message") or a.get("detail")
        if reason:
            parts.append(str(reason))
        detail = " ".join(parts)
    return label, detail


def _read_alerts(bundle: Bundle) -> list[dict]:
    """alerts.jsonl, line by line: a torn or foreign line is skipped, not fatal. An alert
    engine event ({"event", "t_s", "alert"}) is flattened into its alert."""
    p = bundle.path / "alerts.jsonl"
    out: list[dict] = []
    if not p.exists():
        return out
    for line in p.read_text(errors="replace").splitlines():
        try:
            a = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(a, dict):
            continue
        if isinstance(a.get("alert"), dict):
            flat = dict(a["alert"])
            flat["event"] = a.get("event")
            if flat.get("at_s") is None:
                flat["at_s"] = a.get("t_s")
            a = flat
        out.append(a)
    return out


def _alerts(bundle: Bundle) -> list[dict]:
    alerts = _read_alerts(bundle)
    if not any(a.get("kind") == "agent_lost" for a in alerts) and bundle.summary:
        for lost in bundle.summary.get("lost_agents") or []:
            if isinstance(lost, dict):
                alerts.append({"kind": "agent_lost", **lost})
    return alerts


def _at(a: dict) -> float | None:
    at = a.get("at_s")
    return float(at) if isinstance(at, (int, float)) and math.isfinite(at) else None


def alert_markers(alerts: Sequence[dict]) -> list[Marker]:
    """Markers for alerts as they began (a resolution is listed in the table, not marked)."""
    out = []
    for a in alerts:
        at = _at(a)
        if at is None or a.get("event") == "resolved":
            continue
        label, detail = _alert_text(a)
        out.append(Marker(at, label, _alert_kind(a), f"{at:.1f} s: {detail}"))
    return out


# -- charts of one run --------------------------------------------------------------------


def _time_axis(tl: Timeline) -> Axis:
    hi = max((p.t1 for p in tl.points), default=1.0)
    return Axis(label="elapsed", time=True, lo=0.0, hi=hi)


def _downsample_note(tl: Timeline) -> str:
    return f" Each point merges {tl.group} windows." if tl.group > 1 else ""


def throughput_chart(tl: Timeline, markers: Sequence[Marker], open_model: bool, width: int = 1160) -> str:
    title = "Throughput"
    if not tl.points:
        return charts.no_data(title, "no windows in this bundle", width=width)
    series = [Series("total rps", tl.mid, tl.rate(TOTAL), "#1f2937", width=2.2)]
    if open_model and any(p.level for p in tl.points):
        # the level is read at flush time: the end of the point's span
        series.append(Series("planned rate", [p.t1 for p in tl.points], [p.level for p in tl.points], "#9ca3af", dash=True, width=1.6))
    if len(tl.scopes) > 1:
        for i, name in enumerate(tl.scopes[: len(charts.PALETTE)]):
            series.append(Series(name, tl.mid, tl.rate(name), charts.PALETTE[i % len(charts.PALETTE)], width=1.2))
    return charts.line_chart(series, title=title, x_axis=_time_axis(tl), y_axis=Axis("requests per second"),
                             markers=markers, width=width, height=300)


def errors_chart(tl: Timeline, markers: Sequence[Marker], width: int = 1160) -> str:
    title = "Errors by class"
    if not tl.points:
        return charts.no_data(title, "no windows in this bundle", width=width)
    classes = [c for c in ERROR_LABELS if c != "ok"]
    classes += sorted({c for p in tl.points for c in p.classes} - set(classes))
    layers = [
        Layer(c, [p.classes.get(c, 0) / s for p, s in zip(tl.points, tl.span)], ERROR_COLORS.get(c, "#bab0ac"))
        for c in classes
    ]
    return charts.stacked_chart(tl.t, tl.span, layers, title=title, x_axis=_time_axis(tl),
                                y_axis=Axis("errors per second"), markers=markers, width=width,
                                height=220, zero_message="no errors")


def latency_time_chart(tl: Timeline, scope: str, markers: Sequence[Marker], width: int = 570, height: int = 260) -> str:
    title = f"Latency over time: {scope}"
    if not tl.points:
        return charts.no_data(title, "no windows in this bundle", width=width)
    qs = {q: tl.quantile(scope, q) for q in ("p50", "p90", "p99", "max")}
    svc = tl.quantile(scope, "svc_p99")
    allv = [v for vals in qs.values() for v in vals] + svc
    div, unit = _latency_unit(allv)
    log = _wants_log(allv)
    series = [Series(q, tl.mid, _scaled(vals, div), QUANTILE_COLORS[q], width=1.8 if q == "p99" else 1.4,
                     z={"max": -2, "p99": 1}.get(q, 0))
              for q, vals in qs.items()]
    series.append(Series("service p99", tl.mid, _scaled(svc, div), SERVICE_COLOR, dash=True, width=1.3, z=-1))
    y = Axis(f"latency ({unit}{', log' if log else ''})", log=log)
    return charts.line_chart(series, title=title, x_axis=_time_axis(tl), y_axis=y, markers=markers,
                             width=width, height=height, empty_message=f"no requests completed for {scope}")


def percentile_curve_chart(curves: Sequence[tuple[str, Histogram, str, bool]], title: str, width: int = 570, height: int = 300) -> str:
    """curves: (name, histogram, colour, dashed)."""
    series = []
    for name, h, color, dash in curves:
        qs, vals = percentile_points(h)
        if qs:
            series.append(Series(name, qs, vals, color, dash=dash, width=1.8))
    allv = [v for s in series for v in s.y]
    div, unit = _latency_unit(allv)
    log = _wants_log(allv)
    series = [Series(s.name, s.x, _scaled(list(s.y), div), s.color, s.dash, s.width) for s in series]
    return charts.percentile_chart(series, title=title, y_axis=Axis(f"latency ({unit}{', log' if log else ''})", log=log),
                                   width=width, height=height, empty_message="no requests completed")


def load_chart(tl: Timeline, markers: Sequence[Marker], closed_model: bool, width: int = 570) -> str:
    title = "Active users and requests in flight" if closed_model else "Requests in flight"
    pts = [p for p in tl.points if p.in_flight is not None]
    if not pts:
        return charts.no_data(title, "no generator readings in this bundle", width=width)
    mid = [(p.t0 + p.t1) / 2 for p in pts]
    series = [Series("in flight (peak)", mid, [p.in_flight for p in pts], "#4e79a7", width=1.8)]
    if closed_model or any(p.users for p in pts):
        series.insert(0, Series("active users", mid, [p.users for p in pts], "#59a14f", width=1.8))
        series.append(Series("planned users", [p.t1 for p in pts], [p.level for p in pts], "#9ca3af", dash=True))
    return charts.line_chart(series, title=title, x_axis=_time_axis(tl), y_axis=Axis("count", integer=True),
                             markers=markers, width=width, height=260)


def _per_key_series(tl: Timeline, keys: Sequence[str], values_of, *, noun: str) -> list[Series]:
    """One line per key (agent, node) when there are a few; else their mean and maximum."""
    pts, mid = tl.points, tl.mid
    if len(keys) <= 6:
        return [Series(f"{noun} {k}", mid, [values_of(p, k) for p in pts], charts.PALETTE[i % len(charts.PALETTE)], width=1.6)
                for i, k in enumerate(keys)]
    mean, top = [], []
    for p in pts:
        vals = [v for v in (values_of(p, k) for k in keys) if v is not None]
        mean.append(sum(vals) / len(vals) if vals else None)
        top.append(max(vals) if vals else None)
    return [Series(f"mean of {len(keys)} {noun}s", mid, mean, "#4e79a7", width=1.8),
            Series(f"highest {noun}", mid, top, "#e15759", width=1.4)]


def _mean(vals: Sequence[float] | None) -> float | None:
    return sum(vals) / len(vals) if vals else None


def cpu_chart(tl: Timeline, markers: Sequence[Marker], width: int = 570) -> str:
    title = "Generator CPU"
    if not any(p.cpu for p in tl.points):
        return charts.no_data(title, "no generator CPU readings in this bundle", width=width)

    def cpu(p: _Point, a: str) -> float | None:
        m = _mean(p.cpu.get(a))
        return None if m is None else 100 * m

    series = _per_key_series(tl, tl.agents, cpu, noun="agent")
    return charts.line_chart(series, title=title, x_axis=_time_axis(tl), y_axis=Axis("CPU (% of one core)"),
                             markers=markers, hlines=[HLine(CPU_SATURATED_PCT, "saturation 90%")], width=width, height=260)


def rss_chart(tl: Timeline, markers: Sequence[Marker], width: int = 570) -> str:
    title = "Generator memory"
    if not any(p.rss_mb for p in tl.points):
        return charts.no_data(title, "no generator memory readings in this bundle", width=width)
    series = _per_key_series(tl, tl.agents, lambda p, a: p.rss_mb.get(a), noun="agent")
    if any(p.coordinator_rss_mb is not None for p in tl.points):
        series.append(Series("coordinator", tl.mid, [p.coordinator_rss_mb for p in tl.points], "#6b7280", dash=True))
    return charts.line_chart(series, title=title, x_axis=_time_axis(tl), y_axis=Axis("RSS (MiB)"),
                             markers=markers, width=width, height=260)


def node_cpu_chart(tl: Timeline, markers: Sequence[Marker], width: int = 570) -> str:
    title = "Node CPU"
    nodes = sorted({n for p in tl.points for n in p.node_cpu})
    if not nodes:
        return charts.no_data(title, "no node readings in this bundle", width=width)

    def cpu(p: _Point, n: str) -> float | None:
        m = _mean(p.node_cpu.get(n))
        return None if m is None else 100 * m

    series = _per_key_series(tl, nodes, cpu, noun="node")
    return charts.line_chart(series, title=title, x_axis=_time_axis(tl), y_axis=Axis("CPU (% of all cores)", hi=100),
                             markers=markers, hlines=[HLine(CPU_SATURATED_PCT, "saturation 90%")], width=width, height=260)


TARGET_SERIES = {  # resource series -> (label, scale, unit axis)
    "target_cpu": ("CPU", 100.0, "CPU (% of one core)"),
    "target_memory": ("RSS", 1 / 2**20, "memory (MiB)"),
    "target_connections": ("open connections", 1.0, "count"),
    "target_fds": ("open file descriptors", 1.0, "count"),
}


def target_figures(tl: Timeline, markers: Sequence[Marker]) -> str:
    """The target's own resources, as scraped from its /metrics (or read from its PID)."""
    title = "Target resources"
    if not any(p.target for p in tl.points):
        return _figure(charts.no_data(title, "no target resource readings (the target exposed no /metrics and no PID)",
                                      width=1160), title, wide=True)

    def series(name: str, color: str) -> Series:
        label, scale, _ = TARGET_SERIES[name]
        vals = [None if p.target.get(name) is None else p.target[name] * scale for p in tl.points]
        return Series(label, tl.mid, vals, color, width=1.8)

    cpu = charts.line_chart([series("target_cpu", "#4e79a7")], title="Target CPU", x_axis=_time_axis(tl),
                            y_axis=Axis(TARGET_SERIES["target_cpu"][2]), markers=markers, width=570, height=240,
                            empty_message="no target CPU readings")
    mem = charts.line_chart([series("target_memory", "#59a14f")], title="Target memory", x_axis=_time_axis(tl),
                            y_axis=Axis(TARGET_SERIES["target_memory"][2]), markers=markers, width=570, height=240,
                            empty_message="no target memory readings")
    conns = charts.line_chart([series("target_connections", "#f28e2b"), series("target_fds", "#b07aa1")],
                              title="Target connections and file descriptors", x_axis=_time_axis(tl),
                              y_axis=Axis("count", integer=True), markers=markers, width=570, height=240,
                              empty_message="no target connection readings")
    return ('<div class="grid">'
            + _figure(cpu, "Target CPU", "CPU seconds per second, peak per point.")
            + _figure(mem, "Target memory", "resident set size, peak per point.")
            + _figure(conns, "Target connections", "open connections and file descriptors, peak per point.")
            + "</div>")


# -- tables -----------------------------------------------------------------------------


def _stats_row(name: str, s: dict, *, strong: bool = False) -> str:
    lat = s.get("latency_ms") or {}
    svc = s.get("service_time_ms") or {}
    err = s.get("error_rate") or 0
    err_cls = ' class="bad"' if err and err > 0 else ""
    cells = [
        f'<th scope="row">{_e(name)}</th>',
        f'<td>{fmt_int(s.get("requests"))}</td>',
        f'<td>{fmt_rate(s.get("rps"))}</td>',
        f"<td{err_cls}>{fmt_pct(err)}</td>",
    ]
    cells += [f'<td class="{"grp " if i == 0 else ""}lat">{fmt_ms(lat.get(q))}</td>' for i, q in enumerate(TABLE_QUANTILES)]
    cells += [f'<td class="{"grp " if i == 0 else ""}svc">{fmt_ms(svc.get(q))}</td>' for i, q in enumerate(TABLE_QUANTILES)]
    return f'<tr{" class=total" if strong else ""}>' + "".join(cells) + "</tr>"


def _stats_head(first: str) -> str:
    qn = len(TABLE_QUANTILES)
    return (
        "<thead><tr>"
        f'<th rowspan="2" class="left">{_e(first)}</th><th rowspan="2">requests</th><th rowspan="2">rps</th><th rowspan="2">errors</th>'
        f'<th colspan="{qn}" class="grp lat">latency, ms <span class="sub">(from intended send)</span></th>'
        f'<th colspan="{qn}" class="grp svc">service time, ms <span class="sub">(from actual send)</span></th>'
        "</tr><tr>"
        + "".join(f'<th class="{"grp " if i == 0 else ""}lat">{q}</th>' for i, q in enumerate(TABLE_QUANTILES))
        + "".join(f'<th class="{"grp " if i == 0 else ""}svc">{q}</th>' for i, q in enumerate(TABLE_QUANTILES))
        + "</tr></thead>"
    )


def endpoint_table(endpoints: dict[str, dict], total: dict | None) -> str:
    rows = [_stats_row(name, s) for name, s in endpoints.items() if isinstance(s, dict)]
    if total:
        rows.append(_stats_row("all endpoints", total, strong=True))
    if not rows:
        return '<p class="muted">No requests were recorded.</p>'
    return f'<div class="scroll"><table class="num">{_stats_head("endpoint")}<tbody>{"".join(rows)}</tbody></table></div>'


def stage_table(stages: dict[str, dict]) -> str:
    if not stages:
        return '<p class="muted">No per-stage figures (the run did not finish).</p>'
    rows = [_stats_row(name, st.get("total") or {}) for name, st in stages.items() if isinstance(st, dict)]
    parts = [f'<div class="scroll"><table class="num">{_stats_head("stage")}<tbody>{"".join(rows)}</tbody></table></div>']
    for name, st in stages.items():
        eps = (st or {}).get("endpoints") or {}
        if eps:
            parts.append(
                f"<details><summary>Stage {_e(name)} by endpoint</summary>"
                f'<div class="scroll"><table class="num">{_stats_head("endpoint")}<tbody>'
                + "".join(_stats_row(e, s) for e, s in eps.items() if isinstance(s, dict))
                + "</tbody></table></div></details>"
            )
    return "".join(parts)


def threshold_table(thresholds: Sequence[dict] | None, finished: bool) -> str:
    if not thresholds:
        if not finished:
            return '<p class="muted">Thresholds were not evaluated: the run did not finish.</p>'
        return '<p class="muted">The scenario sets no thresholds.</p>'
    rows = []
    for t in thresholds:
        ok = bool(t.get("ok"))
        scope = ", ".join(f"{k} {t[k]}" for k in ("endpoint", "stage") if t.get(k)) or "all"
        rows.append(
            f'<tr><td><span class="badge {"pass" if ok else "fail"}">{"PASS" if ok else "FAIL"}</span></td>'
            f'<td class="mono">{_e(t.get("expr"))}</td><td>{_e(scope)}</td>'
            f'<td class="mono">{_e(t.get("observed_text", t.get("observed")))}</td>'
            f'<td>{"abort" if t.get("abort") else ""}</td></tr>'
        )
    return ('<table class="list"><thead><tr><th>verdict</th><th>threshold</th><th>scope</th><th>observed</th><th></th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def alerts_table(alerts: Sequence[dict]) -> str:
    if not alerts:
        return '<p class="muted">No alerts and no lost agents.</p>'
    rows = []
    for a in sorted(alerts, key=lambda a: (_at(a) is None, _at(a) or 0.0)):
        at = _at(a)
        _, detail = _alert_text(a)
        kind = str(a.get("kind", "alert"))
        if kind == "alert" and a.get("level"):
            kind = str(a["level"])
        rows.append(
            f'<tr><td class="mono">{"–" if at is None else f"{at:.1f} s"}</td>'
            f'<td><span class="badge {_alert_kind(a)}">{_e(kind.replace("_", " "))}</span></td><td>{_e(detail)}</td></tr>'
        )
    return ('<table class="list"><thead><tr><th>at</th><th>kind</th><th>detail</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def errors_table(total: dict | None) -> str:
    classes = {k: v for k, v in ((total or {}).get("errors_by_class") or {}).items() if k != "ok"}
    if not classes:
        return ""
    n = max(int((total or {}).get("requests") or 0), 1)
    rows = "".join(
        f'<tr><th scope="row"><span class="sw" style="background:{ERROR_COLORS.get(k, "#bab0ac")}"></span>{_e(k)}</th>'
        f"<td>{fmt_int(v)}</td><td>{fmt_pct(int(v) / n)}</td></tr>"
        for k, v in sorted(classes.items(), key=lambda kv: -int(kv[1]))
    )
    return f'<table class="num narrow"><thead><tr><th class="left">error class</th><th>requests</th><th>share</th></tr></thead><tbody>{rows}</tbody></table>'


def generator_table(gen: dict | None) -> str:
    agents = (gen or {}).get("agents") or {}
    if not agents:
        return ""
    rows = []
    for idx, a in sorted(agents.items(), key=lambda kv: _agent_key(str(kv[0]))):
        frac = a.get("cpu_fraction")
        hot = ' class="bad"' if isinstance(frac, (int, float)) and frac * 100 > CPU_SATURATED_PCT else ""
        rows.append(
            f'<tr><th scope="row">agent {_e(idx)}</th><td>{_e(a.get("cpu_s"))}</td>'
            f'<td{hot}>{fmt_pct(frac) if frac is not None else "–"}</td><td>{_e(a.get("peak_rss_mb"))}</td>'
            f'<td>{fmt_ms(a.get("loop_lag_max_ms"))}</td><td>{fmt_int(a.get("late_sends"))}</td>'
            f'<td>{fmt_ms(a.get("send_lag_max_ms"))}</td><td>{fmt_int(a.get("interrupted"))}</td>'
            f'<td>{fmt_int(a.get("unsent"))}</td><td class="left">{_e(", ".join(a.get("engines") or []))}</td></tr>'
        )
    return ('<div class="scroll"><table class="num"><thead><tr><th class="left">agent</th><th>CPU s</th><th>CPU of a core</th>'
            "<th>peak RSS MiB</th><th>loop lag max ms</th><th>late sends</th><th>send lag max ms</th>"
            '<th>interrupted</th><th>unsent</th><th class="left">engines</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def nodes_table(nodes: dict | None) -> str:
    per_node = (nodes or {}).get("nodes") or {}
    if not per_node:
        return ""
    saturated = set((nodes or {}).get("saturated") or [])
    rows = []
    for node, n in per_node.items():
        if not isinstance(n, dict):
            continue
        hot = ' class="bad"' if node in saturated else ""
        rows.append(
            f'<tr><th scope="row" class="mono">{_e(str(node)[:12])}</th><td{hot}>{fmt_pct(n.get("cpu_mean"))}</td>'
            f'<td>{fmt_pct(n.get("cpu_max"))}</td><td>{_e(n.get("mem_peak_mb"))}</td><td>{_e(n.get("net_tx_peak_mb_s"))}</td>'
            f'<td>{_e(n.get("net_rx_peak_mb_s"))}</td><td>{fmt_int(n.get("tcp_connections_max"))}</td>'
            f'<td class="left">{_e(", ".join(map(str, n.get("agents") or [])) or "–")}</td></tr>'
        )
    return ('<div class="scroll"><table class="num"><thead><tr><th class="left">node</th><th>CPU mean</th><th>CPU max</th>'
            "<th>memory peak MB</th><th>net tx peak MB/s</th><th>net rx peak MB/s</th><th>TCP connections max</th>"
            f'<th class="left">agents</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


def target_table(res: dict | None) -> str:
    if not res:
        return ""
    rows = []
    for name, (label, scale, unit) in TARGET_SERIES.items():
        v = res.get(name)
        if not isinstance(v, dict):
            continue

        def f(x: Any, scale: float = scale) -> str:
            x = _number(x)
            return "–" if x is None else fmt_rate(x * scale)

        rows.append(f'<tr><th scope="row">{_e(label)}</th><td class="left muted">{_e(unit)}</td><td>{f(v.get("min"))}</td>'
                    f'<td>{f(v.get("mean"))}</td><td>{f(v.get("max"))}</td><td>{f(v.get("last"))}</td>'
                    f'<td>{fmt_int(v.get("windows"))}</td></tr>')
    note = f'<p class="muted">{fmt_int(res.get("scrapes"))} readings, {fmt_int(res.get("failures"))} failed.</p>'
    if not rows:
        return note
    return ('<div class="scroll"><table class="num"><thead><tr><th class="left">target</th><th class="left">unit</th>'
            "<th>min</th><th>mean</th><th>max</th><th>last</th><th>windows</th></tr></thead>"
            f'<tbody>{"".join(rows)}</tbody></table></div>' + note)


def _facts(pairs: Sequence[tuple[str, str]]) -> str:
    """(label, already-escaped HTML value) pairs as a definition grid."""
    return '<dl class="facts">' + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


_OUTCOME_CLASS = {"passed": "pass", "thresholds_failed": "fail", "aborted": "fail", "error": "fail",
                  "interrupted": "warning", "running": "warning"}


def _outcome_of(bundle: Bundle) -> str:
    """The manifest's outcome; a killed coordinator's bundle still says "running"."""
    o = str(bundle.manifest.get("outcome") or "unknown")
    if o == "running" and bundle.path.name.endswith(INCOMPLETE_SUFFIX):
        return "did not finish"
    return o


def _outcome_badge(outcome: Any) -> str:
    o = str(outcome or "unknown")
    return f'<span class="badge {_OUTCOME_CLASS.get(o, "warning")}">{_e(o.replace("_", " "))}</span>'


def run_facts(bundle: Bundle) -> str:
    m, s = bundle.manifest, bundle.summary or {}
    scenario = m.get("scenario") or {}
    workload = scenario.get("workload") or {}
    cluster = m.get("cluster") or {}
    plan = m.get("plan") or {}
    target = m.get("target") or {}
    versions = m.get("versions") or {}
    gen = s.get("generator") or {}
    agents = m.get("agents") or []
    hosts = sorted({str(a.get("host")) for a in agents if isinstance(a, dict) and a.get("host")})
    nodes = cluster.get("nodes") or []
    stages = plan.get("stages") or []
    if gen:
        if gen.get("saturated"):
            sat = '<span class="badge fail">saturated</span> ' + _e("; ".join(gen.get("reasons") or []))
        else:
            sat = '<span class="badge pass">kept up</span>'
        cpu = gen.get("cpu_us_per_request")
        sat += f' <span class="muted">{_e(cpu)} µs CPU per request</span>' if cpu is not None else ""
    else:
        sat = '<span class="muted">unknown (no summary)</span>'
    pairs = [
        ("scenario", f"<b>{_e(scenario.get('name', '?'))}</b>"
         + (f' <span class="muted">{_e(scenario.get("description"))}</span>' if scenario.get("description") else "")),
        ("scenario file", f'<span class="mono">{_e(m.get("scenario_file", "–"))}</span>'),
        ("target", f'<span class="mono">{_e(target.get("url", "–"))}</span>'
         + (' <span class="muted">(embedded automaton)</span>' if target.get("embedded") else "")),
        ("outcome", _outcome_badge(_outcome_of(bundle))
         + (f' <span class="muted">{_e(m.get("stop_reason"))}</span>' if m.get("stop_reason") else "")),
        ("bundle", ('<span class="badge pass">complete</span>' if bundle.complete
                    else '<span class="badge warning">incomplete</span>') + f' <span class="mono muted">{_e(bundle.path.name)}</span>'),
        ("started", _e(fmt_time(m.get("started")))),
        ("ended", _e(fmt_time(m.get("ended")))),
        ("wall duration", _e(fmt_duration(m.get("duration_s")))),
        ("planned duration", _e(fmt_duration(plan.get("duration_s")))),
        ("workload", _e(" · ".join(str(x) for x in (
            f"{workload.get('model', '?')} model",
            workload.get("arrivals") if workload.get("model") == "open" else None,
            f"{len(stages)} stage(s): " + ", ".join(str(st.get("name")) for st in stages if isinstance(st, dict)),
        ) if x))),
        ("cluster", _e(f"{cluster.get('kind', '?')} Ray, {fmt_rate(cluster.get('cpus')) if cluster.get('cpus') is not None else '?'} CPUs, "
                       f"{len(nodes)} node(s)") + (f' <span class="mono muted">{_e(cluster.get("address"))}</span>' if cluster.get("address") else "")),
        ("agents", _e(f"{plan.get('agents', len(agents)) or len(agents)} agent(s), {plan.get('cpus_per_agent', '?')} CPU each"
                      + (f" on {', '.join(hosts)}" if hosts else ""))),
        ("engines", _e(", ".join(sorted(set((plan.get("engines") or {}).values()))) or "–")),
        ("generator", sat),
        ("late / interrupted / unsent", _e(f"{fmt_int(gen.get('late_sends'))} / {fmt_int(gen.get('interrupted'))} / {fmt_int(gen.get('unsent'))}") if gen else "–"),
        ("late samples", _e(fmt_int(s.get("late_samples"))) if "late_samples" in s else "–"),
        ("versions", _e(" · ".join(f"{k} {v}" for k, v in (("horde", m.get("horde_version")), *((k, versions.get(k)) for k in ("python", "ray", "aiohttp", "numpy"))) if v))),
        ("platform", f'<span class="mono">{_e(versions.get("platform", "–"))}</span>'),
    ]
    return _facts(pairs)


def _headline(total: dict | None, duration_s: Any, gen: dict) -> str:
    total = total or {}
    lat = total.get("latency_ms") or {}
    err = total.get("error_rate") or 0
    if gen:
        generator = ("saturated", "bad") if gen.get("saturated") else ("kept up", "")
    else:
        generator = ("unknown", "")
    cards = [  # (label, value, unit, bad)
        ("requests", fmt_int(total.get("requests")), "", False),
        ("throughput", fmt_rate(total.get("rps")), "req/s", False),
        ("errors", fmt_pct(err), "", bool(err)),
        ("p50 latency", fmt_ms(lat.get("p50")), "ms", False),
        ("p99 latency", fmt_ms(lat.get("p99")), "ms", False),
        ("max latency", fmt_ms(lat.get("max")), "ms", False),
        ("duration", fmt_duration(duration_s), "", False),
        ("generator", generator[0], "", bool(generator[1])),
    ]
    out = []
    for label, value, unit, bad in cards:
        unit_html = f'<span class="unit">{_e(unit)}</span>' if unit else ""
        out.append(f'<div class="card{" bad" if bad else ""}"><div class="label">{_e(label)}</div>'
                   f'<div class="value">{_e(value)}{unit_html}</div></div>')
    return '<div class="cards">' + "".join(out) + "</div>"


# -- page -------------------------------------------------------------------------------

CSS = """
:root{--fg:#1f2937;--muted:#6b7280;--line:#e5e7eb;--bg:#f6f7f9;--card:#fff;--pass:#15803d;--fail:#b91c1c;--warn:#b45309;--accent:#4e79a7}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;-webkit-font-smoothing:antialiased}
main{max-width:1240px;margin:0 auto;padding:24px 28px 48px}
header.top{display:flex;flex-wrap:wrap;align-items:baseline;gap:12px;margin-bottom:4px}
h1{font-size:22px;margin:0;font-weight:650;letter-spacing:-.01em}
h2{font-size:16px;margin:32px 0 10px;font-weight:650;padding-bottom:6px;border-bottom:1px solid var(--line)}
h3{font-size:13px;margin:0 0 6px;font-weight:600;color:var(--fg)}
p{margin:6px 0}
.muted{color:var(--muted)}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;font-size:12.5px}
.sub{font-weight:400;color:var(--muted)}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;letter-spacing:.02em;vertical-align:1px;border:1px solid transparent}
.badge.pass{background:#dcfce7;color:var(--pass);border-color:#bbf7d0}
.badge.fail,.badge.critical{background:#fee2e2;color:var(--fail);border-color:#fecaca}
.badge.warning{background:#fef3c7;color:var(--warn);border-color:#fde68a}
.badge.lost{background:#ede9fe;color:#6d28d9;border-color:#ddd6fe}
.badge.restored{background:#dcfce7;color:var(--pass);border-color:#bbf7d0}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(130px,1fr));gap:10px;margin:16px 0 8px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 12px}
.card .label{font-size:11.5px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
.card .value{font-size:20px;font-weight:650;font-variant-numeric:tabular-nums;margin-top:2px}
.card .unit{font-size:12px;font-weight:500;color:var(--muted);margin-left:4px}
.card.bad .value{color:var(--fail)}
.panel{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:14px 16px}
dl.facts{display:grid;grid-template-columns:max-content 1fr max-content 1fr;gap:6px 18px;margin:0}
dl.facts dt{color:var(--muted);white-space:nowrap}
dl.facts dd{margin:0;min-width:0;overflow-wrap:anywhere}
@media (max-width:900px){dl.facts{grid-template-columns:max-content 1fr}}
table{border-collapse:collapse;background:var(--card);font-variant-numeric:tabular-nums}
.scroll{margin-top:12px;overflow-x:auto;border:1px solid var(--line);border-radius:8px;background:var(--card)}
table.num,table.list{width:100%}
table.narrow{width:auto;min-width:320px;border:1px solid var(--line);border-radius:8px}
th,td{padding:5px 9px;border-bottom:1px solid var(--line);white-space:nowrap}
table.num td{text-align:right}
table.num th{text-align:right}
table.num th.left,table.num td.left,table.num tbody th{text-align:left}
thead th{font-size:12px;font-weight:600;color:var(--muted);background:#fafafa}
tbody th{font-weight:600}
tr.total th,tr.total td{font-weight:650;border-top:2px solid #d1d5db;background:#fafafa}
td.bad{color:var(--fail);font-weight:600}
.grp{border-left:1px solid var(--line)}
th.lat{color:#1d4e89}th.svc{color:#4b5563}
table.list{border:1px solid var(--line)}
table.list th{text-align:left}
table.list td{white-space:normal}
details{margin:8px 0}
summary{cursor:pointer;color:var(--accent);font-weight:500;margin:6px 0}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:14px}
@media (max-width:1000px){.grid{grid-template-columns:1fr}}
figure{margin:0;background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 12px 6px}
figure.wide{margin-bottom:14px}
figcaption{font-size:13px;font-weight:600;margin:0 0 2px}
figcaption .sub{font-size:12px;font-weight:400}
svg.chart{display:block;width:100%;height:auto;max-width:100%}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px;vertical-align:0}
.notice{background:#fffbeb;border:1px solid #fde68a;color:#92400e;border-radius:8px;padding:10px 14px;margin:12px 0}
footer{margin-top:36px;color:var(--muted);font-size:12px;border-top:1px solid var(--line);padding-top:12px}
.delta-up{color:var(--fail)}.delta-down{color:var(--pass)}
"""


def _figure(svg: str, caption: str, note: str = "", wide: bool = False) -> str:
    sub = f' <span class="sub">{_e(note)}</span>' if note else ""
    return f'<figure{" class=wide" if wide else ""}><figcaption>{_e(caption)}{sub}</figcaption>{svg}</figure>'


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def render_html(bundle: Bundle) -> str:
    """The bundle's report page (a self-contained HTML document)."""
    m, s = bundle.manifest, bundle.summary
    scenario = m.get("scenario") or {}
    name = str(scenario.get("name", "?"))
    model = str((scenario.get("workload") or {}).get("model", "open"))
    tl = build_timeline(bundle)
    alerts = _alerts(bundle)
    markers = stage_markers(m) + alert_markers(alerts)
    cumulative = cumulative_stats(bundle)

    if s is not None:
        total = s.get("total")
        endpoints = s.get("endpoints") or {}
        stages = s.get("stages") or {}
        duration = s.get("duration_s")
    else:
        total = cumulative[TOTAL].to_dict() if TOTAL in cumulative else None
        endpoints = {k: v.to_dict() for k, v in cumulative.items() if k != TOTAL}
        stages = {}
        duration = total.get("duration_s") if total else None

    out = []
    out.append('<header class="top">'
               f"<h1>horde · {_e(name)}</h1>{_outcome_badge(_outcome_of(bundle))}"
               + ("" if bundle.complete else ' <span class="badge warning">incomplete bundle</span>')
               + f'<span class="muted">{_e(fmt_time(m.get("started")))}</span></header>')
    out.append(f'<div class="muted mono">{_e((m.get("target") or {}).get("url", ""))}</div>')
    if s is None:
        out.append('<div class="notice">This run did not finish: there is no summary. The figures below are merged '
                   f"from the {fmt_int(len(tl.points) * tl.group)} windows the bundle received; per-stage figures and "
                   "threshold verdicts are not available.</div>")
    gen = (s or {}).get("generator") or {}
    if gen.get("saturated"):
        out.append('<div class="notice"><b>The load generator saturated</b>: '
                   + _e("; ".join(gen.get("reasons") or []))
                   + ". Latency figures may include the generator's own delay.</div>")
    out.append(_headline(total, duration, gen))

    out.append("<h2>Thresholds</h2>" + threshold_table((s or {}).get("thresholds"), s is not None))
    out.append("<h2>Alerts and lost agents</h2>" + alerts_table(alerts))
    out.append("<h2>Run</h2><div class=\"panel\">" + run_facts(bundle) + "</div>")

    note = _downsample_note(tl)
    out.append("<h2>Throughput and errors</h2>")
    out.append(_figure(throughput_chart(tl, markers, model == "open"), "Throughput",
                       "completed requests per second, by endpoint; planned rate dashed." + note, wide=True))
    out.append(_figure(errors_chart(tl, markers), "Errors by class", "failed requests per second, stacked." + note, wide=True))
    out.append(errors_table(total))

    out.append("<h2>Latency</h2>")
    out.append(_figure(latency_time_chart(tl, TOTAL, markers, width=1160, height=300), "All endpoints: latency over time",
                       "per window; latency from the intended send time (coordinated omission corrected), service time from the actual send." + note,
                       wide=True))
    curves = []
    tot = cumulative.get(TOTAL)
    if tot is not None:
        curves = [("latency (corrected)", tot.latency, "#4e79a7", False),
                  ("service time (uncorrected)", tot.service_time, "#f28e2b", True)]
    per_ep = [(ep, cumulative[ep].latency, charts.PALETTE[i % len(charts.PALETTE)], False)
              for i, ep in enumerate(tl.scopes) if ep in cumulative]
    out.append('<div class="grid">'
               + _figure(percentile_curve_chart(curves, "Latency by percentile: corrected vs uncorrected"),
                         "Latency by percentile", "whole run; corrected (from intended send) vs uncorrected (service time).")
               + _figure(percentile_curve_chart(per_ep, "Latency by percentile per endpoint"),
                         "Latency by percentile per endpoint", "whole run, corrected latency.")
               + "</div>")
    if tl.scopes and tl.points:
        out.append("<h3 style=\"margin-top:16px\">Per endpoint</h3><div class=\"grid\">")
        for ep in tl.scopes:
            out.append(_figure(latency_time_chart(tl, ep, markers), ep))
        out.append("</div>")

    out.append("<h2>Endpoints</h2>" + endpoint_table(endpoints, total))
    out.append("<h2>Stages</h2>" + stage_table(stages))

    out.append("<h2>Load and generator</h2><div class=\"grid\">")
    out.append(_figure(load_chart(tl, markers, model == "closed"),
                       "Active users and in flight" if model == "closed" else "Requests in flight",
                       "sum over agents, peak per point."))
    out.append(_figure(cpu_chart(tl, markers), "Generator CPU", "per agent, share of one core (its event loop is one thread)."))
    out.append(_figure(rss_chart(tl, markers), "Generator memory", "resident set size per agent."))
    lag_pts = [p for p in tl.points if p.loop_lag_ms is not None]
    lag_svg = charts.line_chart(
        [Series("event-loop lag (max)", [(p.t0 + p.t1) / 2 for p in lag_pts], [p.loop_lag_ms for p in lag_pts], "#b07aa1", width=1.6)],
        title="Generator event-loop lag", x_axis=_time_axis(tl), y_axis=Axis("lag (ms)"), markers=markers,
        width=570, height=260, empty_message="no generator readings in this bundle")
    out.append(_figure(lag_svg, "Generator event-loop lag", "worst wake-up delay of any agent's loop."))
    if any(p.node_cpu for p in tl.points):
        out.append(_figure(node_cpu_chart(tl, markers), "Node CPU", "per Ray node, share of all its cores."))
    out.append("</div>")
    out.append(generator_table(gen))
    out.append(nodes_table((s or {}).get("nodes")))

    out.append("<h2>Target</h2>" + target_figures(tl, markers))
    out.append(target_table((s or {}).get("target_resources")))
    out.append(
        "<footer>Generated by horde "
        f"{_e(m.get('horde_version', ''))} from bundle <span class=\"mono\">{_e(bundle.path.name)}</span>. "
        "Times are elapsed from the run's common start instant. A request counts in the window in which it completed and "
        "in the stage that planned it. Quantiles come from HdrHistogram-layout histograms (within 1/128 of the exact value); "
        "every figure can be recomputed from the bundle.</footer>"
    )
    return _page(f"horde report: {name}", "".join(out))


def write_html(bundle_path: str | Path) -> Path:
    """Render the bundle at ``bundle_path`` into its ``report.html``; returns that path."""
    bundle = read_bundle(bundle_path)
    out = bundle.path / REPORT_FILE
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render_html(bundle), encoding="utf-8")
    tmp.replace(out)
    return out


# -- comparison ----------------------------------------------------------------------------


def _run_label(b: Bundle) -> str:
    m = b.manifest
    return f"{(m.get('scenario') or {}).get('name', '?')} @ {fmt_time(m.get('started'))}"


def _delta(a: Any, b: Any, *, higher_is_worse: bool = True) -> str:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not math.isfinite(a) or not math.isfinite(b):
        return "<td>–</td>"
    if a == 0:
        return "<td>–</td>" if b == 0 else '<td class="delta-up">new</td>'
    d = (b - a) / abs(a)
    cls = ""
    if abs(d) >= 0.05:
        worse = (d > 0) == higher_is_worse
        cls = ' class="delta-up"' if worse else ' class="delta-down"'
    return f"<td{cls}>{d * 100:+.1f}%</td>"


def _compare_endpoint_table(ea: dict[str, dict], eb: dict[str, dict], ta: dict | None, tb: dict | None,
                            first: str = "endpoint", total_label: str = "all endpoints") -> str:
    names = list(ea) + [n for n in eb if n not in ea]
    rows_src = [(n, ea.get(n) or {}, eb.get(n) or {}) for n in names]
    rows_src.append((total_label, ta or {}, tb or {}))
    head = (f'<thead><tr><th rowspan="2" class="left">{_e(first)}</th>'
            '<th colspan="3" class="grp">rps</th><th colspan="2" class="grp">errors</th>'
            + "".join(f'<th colspan="3" class="grp lat">{q} latency, ms</th>' for q in ("p50", "p99", "p99.9", "max"))
            + "</tr><tr>"
            + '<th class="grp">A</th><th>B</th><th>Δ</th><th class="grp">A</th><th>B</th>'
            + '<th class="grp">A</th><th>B</th><th>Δ</th>' * 4 + "</tr></thead>")
    rows = []
    for i, (n, a, b) in enumerate(rows_src):
        la, lb = a.get("latency_ms") or {}, b.get("latency_ms") or {}
        cells = [f'<th scope="row">{_e(n)}</th>',
                 f'<td class="grp">{fmt_rate(a.get("rps"))}</td><td>{fmt_rate(b.get("rps"))}</td>',
                 _delta(a.get("rps"), b.get("rps"), higher_is_worse=False),
                 f'<td class="grp">{fmt_pct(a.get("error_rate"))}</td><td>{fmt_pct(b.get("error_rate"))}</td>']
        for q in ("p50", "p99", "p99.9", "max"):
            cells.append(f'<td class="grp">{fmt_ms(la.get(q))}</td><td>{fmt_ms(lb.get(q))}</td>')
            cells.append(_delta(la.get(q), lb.get(q)))
        cls = ' class="total"' if i == len(rows_src) - 1 else ""
        rows.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table class="num">{head}<tbody>{"".join(rows)}</tbody></table></div>'


def _summary_parts(b: Bundle, cumulative: dict[str, Stats]) -> tuple[dict | None, dict[str, dict], dict[str, dict]]:
    if b.summary is not None:
        return b.summary.get("total"), b.summary.get("endpoints") or {}, b.summary.get("stages") or {}
    total = cumulative[TOTAL].to_dict() if TOTAL in cumulative else None
    return total, {k: v.to_dict() for k, v in cumulative.items() if k != TOTAL}, {}


_VERDICT_CLASS = {"regression": "fail", "improvement": "pass", "no change": "", "insufficient data": "warning"}


def _metric_value(metric: str, v: Any) -> str:
    if not isinstance(v, (int, float)):
        return "–"
    if metric.startswith("latency"):
        return fmt_ms(v) + " ms"
    if metric == "error_rate":
        return fmt_pct(v)
    return fmt_rate(v) + ("/s" if metric == "throughput" else "")


def _effect(m: dict) -> str:
    eff, kind = m.get("effect"), m.get("effect_kind")
    if not isinstance(eff, (int, float)) or not math.isfinite(eff):
        return "–"
    text = f"×{eff:.3f}" if kind == "ratio" else f"{100 * eff:+.2f} pp"
    ci = m.get("ci")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(c, (int, float)) and math.isfinite(c) for c in ci):
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]" if kind == "ratio" else f" [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]"
    return text


def verdict_section(comparison: dict) -> str:
    """The statistical comparison (horde.coordinator.analysis.compare.compare_bundles output), if given."""
    parts = []
    for key, cls, title in (("regressions", "fail", "Regressions"), ("improvements", "pass", "Improvements")):
        items = comparison.get(key) or []
        if items:
            parts.append(f'<p><span class="badge {cls}">{_e(title)}</span> ' + _e("; ".join(map(str, items))) + "</p>")
    if not parts:
        parts.append('<p><span class="badge pass">no significant change</span></p>')
    for w in comparison.get("warnings") or []:
        parts.append(f'<div class="notice">{_e(w)}</div>')
    rows = []
    for scope in comparison.get("scopes") or []:
        if not isinstance(scope, dict) or scope.get("stage") is not None:
            continue  # endpoint x stage detail stays in the JSON; the page shows total and endpoints
        for name, m in (scope.get("metrics") or {}).items():
            if not isinstance(m, dict):
                continue
            v = str(m.get("verdict", ""))
            p = m.get("p_value")
            rows.append(
                f'<tr><th scope="row">{_e(scope.get("label"))}</th><td class="left">{_e(name)}</td>'
                f'<td>{_e(_metric_value(name, m.get("base")))}</td><td>{_e(_metric_value(name, m.get("candidate")))}</td>'
                f'<td>{_e(_effect(m))}</td><td>{"–" if not isinstance(p, (int, float)) else f"{p:.2g}"}</td>'
                f'<td class="left"><span class="badge {_VERDICT_CLASS.get(v, "")}">{_e(v)}</span></td></tr>'
            )
    settings = comparison.get("settings") or {}
    if rows:
        parts.append('<div class="scroll"><table class="num"><thead><tr><th class="left">scope</th><th class="left">metric</th>'
                     "<th>A</th><th>B</th><th>effect [interval]</th><th>p</th><th class=\"left\">verdict</th></tr></thead>"
                     f'<tbody>{"".join(rows)}</tbody></table></div>')
    if settings:
        parts.append(f'<p class="muted">alpha {_e(settings.get("alpha"))}, smallest effect that counts '
                     f'{_e(settings.get("min_effect"))}; per-stage detail in the comparison JSON.</p>')
    return "".join(parts)


def render_compare_html(a: Bundle, b: Bundle, comparison: dict | None = None) -> str:
    """Two runs overlaid: A (blue, the baseline) against B (orange). ``comparison``, the
    output of ``horde.coordinator.analysis.compare.compare_bundles(a, b)``, adds its verdicts."""
    tla, tlb = build_timeline(a), build_timeline(b)
    ca, cb = cumulative_stats(a), cumulative_stats(b)
    ta, ea, sa = _summary_parts(a, ca)
    tb, eb, sb = _summary_parts(b, cb)
    ca_col, cb_col = RUN_COLORS
    hi = max([p.t1 for p in tla.points] + [p.t1 for p in tlb.points] + [1.0])
    x_axis = Axis(label="elapsed", time=True, lo=0.0, hi=hi)
    markers = stage_markers(a.manifest)

    out = ["<header class=\"top\"><h1>horde comparison</h1></header>"]
    facts = []
    for label, bb, color, tot in (("A (baseline)", a, ca_col, ta), ("B", b, cb_col, tb)):
        lat = (tot or {}).get("latency_ms") or {}
        facts.append(
            f'<tr><th scope="row"><span class="sw" style="background:{color}"></span>{_e(label)}</th>'
            f'<td class="left">{_e(_run_label(bb))}</td><td>{_outcome_badge(_outcome_of(bb))}'
            + ("" if bb.complete else ' <span class="badge warning">incomplete</span>')
            + f'</td><td>{fmt_int((tot or {}).get("requests"))}</td><td>{fmt_rate((tot or {}).get("rps"))}</td>'
            f'<td>{fmt_pct((tot or {}).get("error_rate"))}</td><td>{fmt_ms(lat.get("p50"))}</td><td>{fmt_ms(lat.get("p99"))}</td>'
            f'<td>{fmt_ms(lat.get("max"))}</td><td class="left mono">{_e(bb.path.name)}</td></tr>'
        )
    out.append('<div class="scroll" style="margin-top:14px"><table class="num"><thead><tr><th class="left">run</th><th class="left">scenario</th>'
               "<th>outcome</th><th>requests</th><th>rps</th><th>errors</th><th>p50 ms</th><th>p99 ms</th><th>max ms</th>"
               f'<th class="left">bundle</th></tr></thead><tbody>{"".join(facts)}</tbody></table></div>')

    if comparison:
        out.append("<h2>Verdict</h2>" + verdict_section(comparison))
    out.append("<h2>Latency over time</h2>")
    lat_series, allv = [], []
    for tag, tl, color in (("A", tla, ca_col), ("B", tlb, cb_col)):
        for q, dash, w in (("p99", False, 1.9), ("p50", True, 1.4)):
            vals = tl.quantile(TOTAL, q)
            allv += vals
            lat_series.append(Series(f"{tag} {q}", tl.mid, vals, color, dash=dash, width=w))
    div, unit = _latency_unit(allv)
    log = _wants_log(allv)
    lat_series = [Series(s.name, s.x, _scaled(list(s.y), div), s.color, s.dash, s.width) for s in lat_series]
    out.append(_figure(charts.line_chart(lat_series, title="Latency over time, A vs B", x_axis=x_axis,
                                         y_axis=Axis(f"latency ({unit}{', log' if log else ''})", log=log),
                                         markers=markers, width=1160, height=300),
                       "All endpoints: p99 (solid) and p50 (dashed)", "stage boundaries of A.", wide=True))
    thr = [Series("A rps", tla.mid, tla.rate(TOTAL), ca_col, width=1.8), Series("B rps", tlb.mid, tlb.rate(TOTAL), cb_col, width=1.8)]
    out.append(_figure(charts.line_chart(thr, title="Throughput, A vs B", x_axis=x_axis, y_axis=Axis("requests per second"),
                                         markers=markers, width=1160, height=240), "Throughput", wide=True))

    curves = []
    for tag, c, color in (("A", ca, ca_col), ("B", cb, cb_col)):
        if TOTAL in c:
            curves.append((f"{tag} latency", c[TOTAL].latency, color, False))
            curves.append((f"{tag} service time", c[TOTAL].service_time, color, True))
    out.append("<h2>Latency distribution</h2>")
    out.append(_figure(percentile_curve_chart(curves, "Latency by percentile, A vs B", width=1160, height=320),
                       "Latency by percentile", "corrected latency solid, uncorrected service time dashed.", wide=True))

    out.append("<h2>Endpoints</h2>" + _compare_endpoint_table(ea, eb, ta, tb))
    common = [n for n in sa if n in sb]
    if common:
        out.append("<h2>Stages</h2>" + _compare_endpoint_table(
            {n: (sa[n] or {}).get("total") or {} for n in common}, {n: (sb[n] or {}).get("total") or {} for n in common}, ta, tb,
            first="stage", total_label="whole run"))
    out.append("<footer>Δ is B relative to A; red marks a change of 5% or more for the worse, green for the better. "
               "Times are elapsed from each run's own start instant.</footer>")
    return _page(f"horde comparison: {_run_label(a)} vs {_run_label(b)}", "".join(out))
