"""The HTML report's charts (SVG from charts.py) and time-axis markers (stages, alerts).

Each chart function returns the SVG as ``Markup``: charts.py builds it with its own escaping,
so the templates insert it as it is; every other value reaches the page through Jinja's
autoescaping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup

from horde.agents.samples import ERROR_LABELS
from horde.coordinator.bundle.schema import AlertRecord, Manifest
from horde.coordinator.measure.histogram import Histogram
from horde.coordinator.report import charts
from horde.coordinator.report.charts import Axis, HLine, Layer, Marker, Series
from horde.coordinator.report.formats import fmt_value, latency_unit, scaled, wants_log
from horde.coordinator.report.planned import LossInterval, loss_bands
from horde.coordinator.report.timeline import TOTAL, Timeline, _Point, percentile_points

QUANTILE_COLORS = {"p50": "#59a14f", "p90": "#4e79a7", "p99": "#f28e2b", "max": "#e15759"}
SERVICE_COLOR = "#6b7280"
RUN_COLORS = ("#4e79a7", "#f28e2b")  # compare: run A, run B
ERROR_COLORS = {
    "connect": "#b07aa1",
    "timeout": "#f28e2b",
    "reset": "#9c755f",
    "http_4xx": "#edc948",
    "http_5xx": "#e15759",
    "unexpected_status": "#ff9da7",
    "protocol": "#76b7b2",
    "too_large": "#4e79a7",
    "other": "#bab0ac",
}
CPU_SATURATED_PCT = 90  # horde.coordinator.measure.health.CPU_SATURATED, as the chart draws it


@dataclass
class Figure:
    svg: Markup
    caption: str
    note: str = ""
    wide: bool = False


# -- markers ---------------------------------------------------------------------------------


def stage_markers(manifest: Manifest) -> list[Marker]:
    out, start = [], 0.0
    for st in manifest.plan.stages if manifest.plan is not None else []:
        out.append(Marker(start, st.name, "stage", f"stage {st.name} from {start:g} s"))
        start = st.end_s
    return out


def alert_kind(a: AlertRecord) -> str:
    """Marker / badge style: lost, restored, critical or warning."""
    if a.kind == "agent_lost":
        return "lost"
    if a.kind == "agent_restored":
        return "restored"
    if a.kind == "abort" or str(a.level or a.get("severity") or "") == "critical":
        return "critical"
    return "warning"


def alert_text(a: AlertRecord) -> tuple[str, str]:
    """(short label, full detail) of an alert line."""
    kind = a.kind or "alert"
    agent = a.agent
    if kind == "agent_lost":
        label = f"agent {agent} lost"
        detail = f"agent {agent} (incarnation {a.incarnation}) lost: {a.reason or ''} {a.detail or ''}".strip()
        if a.node:
            detail += f"; node {a.node[:12]}"
        if a.replaced is True:
            detail += f"; replaced by incarnation {a.replacement_incarnation}"
            if a.replaced_at_s is not None:
                detail += f" at {fmt_value(a.replaced_at_s)} s"
        elif a.replaced is False:
            detail += "; not replaced"
    elif kind == "agent_restored":
        label = f"agent {agent} restored"
        detail = f"agent {agent} sending again (incarnation {a.incarnation})"
    elif kind == "abort":
        label = "abort"
        detail = f"abort: {a.reason or a.rule or ''}"
    elif kind == "bad_batch":
        label = "bad batch"
        detail = f"agent {agent}: undecodable batch: {a.detail or ''}"
    else:
        # An alert rule's record (judge/alerts.py), or a foreign one: its open keys by name.
        level = str(a.level or a.get("severity") or kind)
        name = a.text or a.rule or a.get("name") or a.get("expr") or kind
        label = f"{level} {a.rule or ''}".strip()
        parts = [f"{level}:", str(name)]
        if a.event:
            parts.append(f"({a.event})")
        if a.endpoint:
            parts.append(f"[{a.endpoint}]")
        if a.peak is not None:
            parts.append(f"peak {fmt_value(a.peak)}")
        reason = a.reason or a.get("message") or a.detail
        if reason:
            parts.append(str(reason))
        detail = " ".join(parts)
    return label, detail


def alert_at(a: AlertRecord) -> float | None:
    return a.at_s if a.at_s is not None and math.isfinite(a.at_s) else None


def alert_markers(alerts: Sequence[AlertRecord]) -> list[Marker]:
    """Markers for alerts as they began (a resolution is listed in the table, not marked)."""
    out = []
    for a in alerts:
        at = alert_at(a)
        if at is None or a.event == "resolved":
            continue
        label, detail = alert_text(a)
        out.append(Marker(at, label, alert_kind(a), f"{at:.1f} s: {detail}"))
    return out


# -- charts of one run --------------------------------------------------------------------


def time_axis(tl: Timeline) -> Axis:
    hi = max((p.t1 for p in tl.points), default=1.0)
    return Axis(label="elapsed", time=True, lo=0.0, hi=hi)


def throughput_chart(
    tl: Timeline,
    markers: Sequence[Marker],
    open_model: bool,
    width: int = 1160,
    *,
    planned: tuple[list[float], list[float]] | None = None,
    losses: Sequence[LossInterval] = (),
) -> Markup:
    """Completed requests per second; for an open model the planned rate (``planned``:
    planned_points, from the scenario's stages) and each agent loss shaded against it."""
    title = "Throughput"
    if not tl.points:
        return Markup(charts.no_data(title, "no windows in this bundle", width=width))
    series = [Series("total rps", tl.mid, tl.rate(TOTAL), "#1f2937", width=2.2)]
    plan = planned if open_model else None
    if plan is not None:
        series.append(Series("planned rate", plan[0], plan[1], "#9ca3af", dash=True, width=1.6, values=True))
    elif open_model and any(p.level for p in tl.points):
        # a bundle without its stages: the agents' reported level, read at flush time (the
        # end of the point's span, so it trails the plan by up to a flush interval)
        series.append(
            Series(
                "planned rate", [p.t1 for p in tl.points], [p.level for p in tl.points], "#9ca3af", dash=True, width=1.6
            )
        )
    if len(tl.scopes) > 1:
        for i, name in enumerate(tl.scopes[: len(charts.PALETTE)]):
            series.append(Series(name, tl.mid, tl.rate(name), charts.PALETTE[i % len(charts.PALETTE)], width=1.2))
    return Markup(
        charts.line_chart(
            series,
            title=title,
            x_axis=time_axis(tl),
            y_axis=Axis("requests per second"),
            markers=markers,
            bands=loss_bands(losses, plan),
            width=width,
            height=300,
        )
    )


def errors_chart(tl: Timeline, markers: Sequence[Marker], width: int = 1160) -> Markup:
    title = "Errors by class"
    if not tl.points:
        return Markup(charts.no_data(title, "no windows in this bundle", width=width))
    classes = [c for c in ERROR_LABELS if c != "ok"]
    classes += sorted({c for p in tl.points for c in p.classes} - set(classes))
    layers = [
        Layer(c, [p.classes.get(c, 0) / s for p, s in zip(tl.points, tl.span)], ERROR_COLORS.get(c, "#bab0ac"))
        for c in classes
    ]
    return Markup(
        charts.stacked_chart(
            tl.t,
            tl.span,
            layers,
            title=title,
            x_axis=time_axis(tl),
            y_axis=Axis("errors per second"),
            markers=markers,
            width=width,
            height=220,
            zero_message="no errors",
        )
    )


def latency_time_chart(
    tl: Timeline, scope: str, markers: Sequence[Marker], width: int = 570, height: int = 260
) -> Markup:
    title = f"Latency over time: {scope}"
    if not tl.points:
        return Markup(charts.no_data(title, "no windows in this bundle", width=width))
    qs = {q: tl.quantile(scope, q) for q in ("p50", "p90", "p99", "max")}
    svc = tl.quantile(scope, "svc_p99")
    allv = [v for vals in qs.values() for v in vals] + svc
    div, unit = latency_unit(allv)
    log = wants_log(allv)
    series = [
        Series(
            q,
            tl.mid,
            scaled(vals, div),
            QUANTILE_COLORS[q],
            width=1.8 if q == "p99" else 1.4,
            z={"max": -2, "p99": 1}.get(q, 0),
        )
        for q, vals in qs.items()
    ]
    series.append(Series("service p99", tl.mid, scaled(svc, div), SERVICE_COLOR, dash=True, width=1.3, z=-1))
    y = Axis(f"latency ({unit}{', log' if log else ''})", log=log)
    return Markup(
        charts.line_chart(
            series,
            title=title,
            x_axis=time_axis(tl),
            y_axis=y,
            markers=markers,
            width=width,
            height=height,
            empty_message=f"no requests completed for {scope}",
        )
    )


def percentile_curve_chart(
    curves: Sequence[tuple[str, Histogram, str, bool]], title: str, width: int = 570, height: int = 300
) -> Markup:
    """curves: (name, histogram, colour, dashed)."""
    series = []
    for name, h, color, dash in curves:
        qs, vals = percentile_points(h)
        if qs:
            series.append(Series(name, qs, vals, color, dash=dash, width=1.8))
    allv = [v for s in series for v in s.y]
    div, unit = latency_unit(allv)
    log = wants_log(allv)
    series = [Series(s.name, s.x, scaled(list(s.y), div), s.color, s.dash, s.width) for s in series]
    return Markup(
        charts.percentile_chart(
            series,
            title=title,
            y_axis=Axis(f"latency ({unit}{', log' if log else ''})", log=log),
            width=width,
            height=height,
            empty_message="no requests completed",
        )
    )


def load_chart(tl: Timeline, markers: Sequence[Marker], closed_model: bool, width: int = 570) -> Markup:
    title = "Active users and requests in flight" if closed_model else "Requests in flight"
    pts = [p for p in tl.points if p.in_flight is not None]
    if not pts:
        return Markup(charts.no_data(title, "no generator readings in this bundle", width=width))
    mid = [(p.t0 + p.t1) / 2 for p in pts]
    series = [Series("in flight (peak)", mid, [p.in_flight for p in pts], "#4e79a7", width=1.8)]
    if closed_model or any(p.users for p in pts):
        series.insert(0, Series("active users", mid, [p.users for p in pts], "#59a14f", width=1.8))
        series.append(Series("planned users", [p.t1 for p in pts], [p.level for p in pts], "#9ca3af", dash=True))
    return Markup(
        charts.line_chart(
            series,
            title=title,
            x_axis=time_axis(tl),
            y_axis=Axis("count", integer=True),
            markers=markers,
            width=width,
            height=260,
        )
    )


def _per_key_series(tl: Timeline, keys: Sequence[str], values_of, *, noun: str) -> list[Series]:
    """One line per key (agent, node) when there are a few; else their mean and maximum."""
    pts, mid = tl.points, tl.mid
    if len(keys) <= 6:
        return [
            Series(
                f"{noun} {k}", mid, [values_of(p, k) for p in pts], charts.PALETTE[i % len(charts.PALETTE)], width=1.6
            )
            for i, k in enumerate(keys)
        ]
    mean, top = [], []
    for p in pts:
        vals = [v for v in (values_of(p, k) for k in keys) if v is not None]
        mean.append(sum(vals) / len(vals) if vals else None)
        top.append(max(vals) if vals else None)
    return [
        Series(f"mean of {len(keys)} {noun}s", mid, mean, "#4e79a7", width=1.8),
        Series(f"highest {noun}", mid, top, "#e15759", width=1.4),
    ]


def _mean(vals: Sequence[float] | None) -> float | None:
    return sum(vals) / len(vals) if vals else None


def cpu_chart(tl: Timeline, markers: Sequence[Marker], width: int = 570) -> Markup:
    title = "Generator CPU"
    if not any(p.cpu for p in tl.points):
        return Markup(charts.no_data(title, "no generator CPU readings in this bundle", width=width))

    def cpu(p: _Point, a: str) -> float | None:
        m = _mean(p.cpu.get(a))
        return None if m is None else 100 * m

    series = _per_key_series(tl, tl.agents, cpu, noun="agent")
    return Markup(
        charts.line_chart(
            series,
            title=title,
            x_axis=time_axis(tl),
            y_axis=Axis("CPU (% of one core)"),
            markers=markers,
            hlines=[HLine(CPU_SATURATED_PCT, "saturation 90%")],
            width=width,
            height=260,
        )
    )


def rss_chart(tl: Timeline, markers: Sequence[Marker], width: int = 570) -> Markup:
    title = "Generator memory"
    if not any(p.rss_mb for p in tl.points):
        return Markup(charts.no_data(title, "no generator memory readings in this bundle", width=width))
    series = _per_key_series(tl, tl.agents, lambda p, a: p.rss_mb.get(a), noun="agent")
    if any(p.coordinator_rss_mb is not None for p in tl.points):
        series.append(Series("coordinator", tl.mid, [p.coordinator_rss_mb for p in tl.points], "#6b7280", dash=True))
    return Markup(
        charts.line_chart(
            series,
            title=title,
            x_axis=time_axis(tl),
            y_axis=Axis("RSS (MiB)"),
            markers=markers,
            width=width,
            height=260,
        )
    )


def loop_lag_chart(tl: Timeline, markers: Sequence[Marker], width: int = 570) -> Markup:
    pts = [p for p in tl.points if p.loop_lag_ms is not None]
    return Markup(
        charts.line_chart(
            [
                Series(
                    "event-loop lag (max)",
                    [(p.t0 + p.t1) / 2 for p in pts],
                    [p.loop_lag_ms for p in pts],
                    "#b07aa1",
                    width=1.6,
                )
            ],
            title="Generator event-loop lag",
            x_axis=time_axis(tl),
            y_axis=Axis("lag (ms)"),
            markers=markers,
            width=width,
            height=260,
            empty_message="no generator readings in this bundle",
        )
    )


def node_cpu_chart(tl: Timeline, markers: Sequence[Marker], width: int = 570) -> Markup:
    title = "Node CPU"
    nodes = sorted({n for p in tl.points for n in p.node_cpu})
    if not nodes:
        return Markup(charts.no_data(title, "no node readings in this bundle", width=width))

    def cpu(p: _Point, n: str) -> float | None:
        m = _mean(p.node_cpu.get(n))
        return None if m is None else 100 * m

    series = _per_key_series(tl, nodes, cpu, noun="node")
    return Markup(
        charts.line_chart(
            series,
            title=title,
            x_axis=time_axis(tl),
            y_axis=Axis("CPU (% of all cores)", hi=100),
            markers=markers,
            hlines=[HLine(CPU_SATURATED_PCT, "saturation 90%")],
            width=width,
            height=260,
        )
    )


TARGET_SERIES = {  # resource series -> (label, scale, unit axis)
    "target_cpu": ("CPU", 100.0, "CPU (% of one core)"),
    "target_memory": ("RSS", 1 / 2**20, "memory (MiB)"),
    "target_connections": ("open connections", 1.0, "count"),
    "target_fds": ("open file descriptors", 1.0, "count"),
}


def target_figures(tl: Timeline, markers: Sequence[Marker]) -> list[Figure]:
    """The target's own resources, as scraped from its /metrics (or read from its PID): one
    wide no-data figure, or three for a grid."""
    title = "Target resources"
    if not any(p.target for p in tl.points):
        return [
            Figure(
                Markup(
                    charts.no_data(
                        title, "no target resource readings (the target exposed no /metrics and no PID)", width=1160
                    )
                ),
                title,
                wide=True,
            )
        ]

    def series(name: str, color: str) -> Series:
        label, scale, _ = TARGET_SERIES[name]
        vals = [None if p.target.get(name) is None else p.target[name] * scale for p in tl.points]
        return Series(label, tl.mid, vals, color, width=1.8)

    cpu = charts.line_chart(
        [series("target_cpu", "#4e79a7")],
        title="Target CPU",
        x_axis=time_axis(tl),
        y_axis=Axis(TARGET_SERIES["target_cpu"][2]),
        markers=markers,
        width=570,
        height=240,
        empty_message="no target CPU readings",
    )
    mem = charts.line_chart(
        [series("target_memory", "#59a14f")],
        title="Target memory",
        x_axis=time_axis(tl),
        y_axis=Axis(TARGET_SERIES["target_memory"][2]),
        markers=markers,
        width=570,
        height=240,
        empty_message="no target memory readings",
    )
    conns = charts.line_chart(
        [series("target_connections", "#f28e2b"), series("target_fds", "#b07aa1")],
        title="Target connections and file descriptors",
        x_axis=time_axis(tl),
        y_axis=Axis("count", integer=True),
        markers=markers,
        width=570,
        height=240,
        empty_message="no target connection readings",
    )
    return [
        Figure(Markup(cpu), "Target CPU", "CPU seconds per second, peak per point."),
        Figure(Markup(mem), "Target memory", "resident set size, peak per point."),
        Figure(Markup(conns), "Target connections", "open connections and file descriptors, peak per point."),
    ]
