"""A bundle as one self-contained HTML page: facts, verdicts, tables and inline SVG charts.

``render_html(bundle)`` reads only the bundle (manifest, summary, windows, histograms,
alerts, through bundle/schema.py's models) and returns the page; ``write_html(path)`` puts it
into the bundle as ``report.html``. ``render_compare_html(a, b)`` overlays two runs. Nothing
is fetched: no scripts, fonts or styles from anywhere, so the page opens offline and in a
mail client.

The markup lives in templates/ (Jinja2, autoescaped: a scenario's names and an alert's text
reach the page escaped without a hand-written escape); html_views.py turns the bundle into
the plain values the templates show, figures.py draws the charts, timeline.py folds the
windows into time-series points (at most ``MAX_POINTS``).

A bundle of a run that did not finish (no summary, missing files, no windows, no
requests) still renders: what is missing is said where it would have been.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from horde.coordinator import files
from horde.coordinator.bundle.schema import AlertRecord
from horde.coordinator.bundle.store import Bundle, read_bundle
from horde.coordinator.measure.aggregate import Stats
from horde.coordinator.report import charts, timeline
from horde.coordinator.report import html_views as views
from horde.coordinator.report.charts import Axis, Series
from horde.coordinator.report.figures import (
    RUN_COLORS,
    Figure,
    alert_markers,
    cpu_chart,
    errors_chart,
    latency_time_chart,
    load_chart,
    loop_lag_chart,
    node_cpu_chart,
    percentile_curve_chart,
    rss_chart,
    stage_markers,
    target_figures,
    throughput_chart,
)
from horde.coordinator.report.formats import (  # noqa: F401  (re-exported: the report's number formats)
    FILTERS,
    fmt_duration,
    fmt_int,
    fmt_ms,
    fmt_pct,
    fmt_rate,
    fmt_time,
    latency_unit,
    scaled,
    wants_log,
)
from horde.coordinator.report.planned import loss_intervals, planned_points
from horde.coordinator.report.timeline import TOTAL, Timeline, cumulative_stats
from horde.coordinator.scenario.redact import redact_url

MAX_POINTS = timeline.MAX_POINTS  # time-series points per chart; more windows are merged in groups
REPORT_FILE = "report.html"

# PackageLoader finds templates/ inside the installed package (a wheel ships them as
# package data), wherever horde is installed; autoescape is on for every .html template.
_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("horde.coordinator.report", "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    trim_blocks=True,
    keep_trailing_newline=True,  # the page ends with a newline, as a text file does
    lstrip_blocks=True,
    undefined=jinja2.StrictUndefined,  # a name the view forgot is an error, not an empty cell
)
_ENV.filters.update(FILTERS)


def build_timeline(bundle: Bundle, max_points: int | None = None) -> Timeline:
    """The bundle's windows as at most ``max_points`` (default MAX_POINTS) time-series points."""
    return timeline.build_timeline(bundle, max_points or MAX_POINTS)


def _alerts(bundle: Bundle) -> list[AlertRecord]:
    """alerts.jsonl (Bundle.alerts: torn lines skipped, engine events flattened); a bundle
    whose alerts.jsonl lacks the agent losses gets them from the summary."""
    alerts = bundle.alerts()
    if not any(a.kind == "agent_lost" for a in alerts) and bundle.summary is not None:
        alerts += [
            lost if lost.kind else lost.model_copy(update={"kind": "agent_lost"}) for lost in bundle.summary.lost_agents
        ]
    return alerts


def _latency_figures(tl: Timeline, cumulative: dict[str, Stats], markers, note: str) -> dict[str, Any]:
    curves = []
    tot = cumulative.get(TOTAL)
    if tot is not None:
        curves = [
            ("latency (corrected)", tot.latency, "#4e79a7", False),
            ("service time (uncorrected)", tot.service_time, "#f28e2b", True),
        ]
    per_ep = [
        (ep, cumulative[ep].latency, charts.PALETTE[i % len(charts.PALETTE)], False)
        for i, ep in enumerate(tl.scopes)
        if ep in cumulative
    ]
    return {
        "latency_total": Figure(
            latency_time_chart(tl, TOTAL, markers, width=1160, height=300),
            "All endpoints: latency over time",
            "per window; latency from the intended send time (coordinated omission corrected), "
            "service time from the actual send." + note,
            wide=True,
        ),
        "percentile_figures": [
            Figure(
                percentile_curve_chart(curves, "Latency by percentile: corrected vs uncorrected"),
                "Latency by percentile",
                "whole run; corrected (from intended send) vs uncorrected (service time).",
            ),
            Figure(
                percentile_curve_chart(per_ep, "Latency by percentile per endpoint"),
                "Latency by percentile per endpoint",
                "whole run, corrected latency.",
            ),
        ],
        "endpoint_figures": [Figure(latency_time_chart(tl, ep, markers), ep) for ep in tl.scopes] if tl.points else [],
    }


def _generator_figures(tl: Timeline, markers, closed: bool) -> list[Figure]:
    out = [
        Figure(
            load_chart(tl, markers, closed),
            "Active users and in flight" if closed else "Requests in flight",
            "sum over agents, peak per point.",
        ),
        Figure(cpu_chart(tl, markers), "Generator CPU", "per agent, share of one core (its event loop is one thread)."),
        Figure(rss_chart(tl, markers), "Generator memory", "resident set size per agent."),
        Figure(loop_lag_chart(tl, markers), "Generator event-loop lag", "worst wake-up delay of any agent's loop."),
    ]
    if any(p.node_cpu for p in tl.points):
        out.append(Figure(node_cpu_chart(tl, markers), "Node CPU", "per Ray node, share of all its cores."))
    return out


def render_html(bundle: Bundle) -> str:
    """The bundle's report page (a self-contained HTML document)."""
    m, s = bundle.manifest, bundle.summary
    name = str(m.scenario.get("name", "?"))
    model = m.model or "open"
    tl = build_timeline(bundle)
    alerts = _alerts(bundle)
    markers = stage_markers(m) + alert_markers(alerts)
    cumulative = cumulative_stats(bundle)
    fig = views.figures_of(bundle, cumulative)
    gen = views.generator_of(s)
    note = f" Each point merges {tl.group} windows." if tl.group > 1 else ""
    context = {
        "title": f"horde report: {name}",
        "name": name,
        "outcome": views.outcome_badge(views.outcome_of(bundle)),
        "complete": bundle.complete,
        "started": fmt_time(m.started),
        "target_url": redact_url(m.target.url) if m.target.url else "",  # an older bundle may hold credentials
        "no_summary": s is None,
        "windows_received": fmt_int(len(tl.points) * tl.group),
        "saturated": "; ".join(gen.reasons) if gen is not None and gen.saturated else "",
        "cards": views.headline_cards(fig.total, fig.duration_s, gen),
        "thresholds": views.threshold_rows(s.thresholds if s is not None else []),
        "finished": s is not None,
        "alerts": views.alert_rows(alerts),
        "facts": views.run_facts(bundle),
        "throughput": Figure(
            throughput_chart(
                tl,
                markers,
                model == "open",
                planned=planned_points(m),
                losses=loss_intervals(alerts, max((p.t1 for p in tl.points), default=0.0)),
            ),
            "Throughput",
            "completed requests per second, by endpoint; planned rate dashed; "
            "shaded: a lost agent's share of the planned rate, from its loss to its restoration." + note,
            wide=True,
        ),
        "errors_figure": Figure(
            errors_chart(tl, markers), "Errors by class", "failed requests per second, stacked." + note, wide=True
        ),
        "error_classes": views.error_rows(fig.total),
        **_latency_figures(tl, cumulative, markers, note),
        "quantiles": views.TABLE_QUANTILES,
        "endpoint_rows": views.endpoint_rows(fig.endpoints, fig.total),
        "stages": views.stage_view(fig.stages),
        "generator_figures": _generator_figures(tl, markers, model == "closed"),
        "generator_rows": views.generator_rows(gen),
        "node_rows": views.node_rows(s.nodes if s is not None else None),
        "target_figures": target_figures(tl, markers),
        "target": views.target_view(s.target_resources if s is not None else None),
        "horde_version": m.horde_version or "",
        "bundle_name": bundle.path.name,
    }
    return _ENV.get_template("report.html").render(context)


def write_html(bundle_path: str | Path) -> Path:
    """Render the bundle at ``bundle_path`` into its ``report.html``; returns that path."""
    bundle = read_bundle(bundle_path)
    out = bundle.path / REPORT_FILE
    files.write_text(out, render_html(bundle))
    return out


# -- comparison ----------------------------------------------------------------------------


def _compare_figures(
    tla: Timeline, tlb: Timeline, ca: dict[str, Stats], cb: dict[str, Stats], markers
) -> dict[str, Figure]:
    ca_col, cb_col = RUN_COLORS
    hi = max([p.t1 for p in tla.points] + [p.t1 for p in tlb.points] + [1.0])
    x_axis = Axis(label="elapsed", time=True, lo=0.0, hi=hi)
    lat_series, allv = [], []
    for tag, tl, color in (("A", tla, ca_col), ("B", tlb, cb_col)):
        for q, dash, w in (("p99", False, 1.9), ("p50", True, 1.4)):
            vals = tl.quantile(TOTAL, q)
            allv += vals
            lat_series.append(Series(f"{tag} {q}", tl.mid, vals, color, dash=dash, width=w))
    div, unit = latency_unit(allv)
    log = wants_log(allv)
    lat_series = [Series(s.name, s.x, scaled(list(s.y), div), s.color, s.dash, s.width) for s in lat_series]
    latency = charts.line_chart(
        lat_series,
        title="Latency over time, A vs B",
        x_axis=x_axis,
        y_axis=Axis(f"latency ({unit}{', log' if log else ''})", log=log),
        markers=markers,
        width=1160,
        height=300,
    )
    thr = [
        Series("A rps", tla.mid, tla.rate(TOTAL), ca_col, width=1.8),
        Series("B rps", tlb.mid, tlb.rate(TOTAL), cb_col, width=1.8),
    ]
    throughput = charts.line_chart(
        thr,
        title="Throughput, A vs B",
        x_axis=x_axis,
        y_axis=Axis("requests per second"),
        markers=markers,
        width=1160,
        height=240,
    )
    curves = []
    for tag, c, color in (("A", ca, ca_col), ("B", cb, cb_col)):
        if TOTAL in c:
            curves.append((f"{tag} latency", c[TOTAL].latency, color, False))
            curves.append((f"{tag} service time", c[TOTAL].service_time, color, True))
    return {
        "latency": Figure(
            Markup(latency), "All endpoints: p99 (solid) and p50 (dashed)", "stage boundaries of A.", wide=True
        ),
        "throughput": Figure(Markup(throughput), "Throughput", wide=True),
        "distribution": Figure(
            percentile_curve_chart(curves, "Latency by percentile, A vs B", width=1160, height=320),
            "Latency by percentile",
            "corrected latency solid, uncorrected service time dashed.",
            wide=True,
        ),
    }


def render_compare_html(a: Bundle, b: Bundle, comparison: dict | None = None) -> str:
    """Two runs overlaid: A (blue, the baseline) against B (orange). ``comparison``, the
    output of ``horde.coordinator.analysis.compare.compare_bundles(a, b)``, adds its verdicts."""
    tla, tlb = build_timeline(a), build_timeline(b)
    ca, cb = cumulative_stats(a), cumulative_stats(b)
    fa, fb = views.figures_of(a, ca), views.figures_of(b, cb)
    common = [n for n in fa.stages if n in fb.stages]
    context = {
        "title": f"horde comparison: {views.run_label(a)} vs {views.run_label(b)}",
        "runs": [
            views.compare_run_row("A (baseline)", a, RUN_COLORS[0], fa.total),
            views.compare_run_row("B", b, RUN_COLORS[1], fb.total),
        ],
        "verdict": views.verdict_view(comparison) if comparison else None,
        **_compare_figures(tla, tlb, ca, cb, stage_markers(a.manifest)),
        "quantiles": views.COMPARE_QUANTILES,
        "endpoint_rows": views.compare_rows(fa.endpoints, fb.endpoints, fa.total, fb.total, "all endpoints"),
        "stage_rows": views.compare_rows(
            {n: fa.stages[n].total for n in common},
            {n: fb.stages[n].total for n in common},
            fa.total,
            fb.total,
            "whole run",
        )
        if common
        else [],
    }
    return _ENV.get_template("compare.html").render(context)
