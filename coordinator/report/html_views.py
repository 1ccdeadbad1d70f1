"""What the HTML report's templates show, as plain values: rows, facts, cards, badges.

Everything here reads the bundle through its models (bundle/schema.py) and returns plain
data; the templates (templates/*.html) decide the markup and escape every value. A "bit" is
a `(css class, text)` pair the templates render as one span ("" = plain text, "b" = bold).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from horde.coordinator.bundle.schema import (
    AlertRecord,
    Generator,
    Nodes,
    Summary,
    TargetResources,
    ThresholdResult,
)
from horde.coordinator.bundle.schema import (
    Stats as ScopeStats,
)
from horde.coordinator.bundle.store import INCOMPLETE_SUFFIX, Bundle
from horde.coordinator.measure.aggregate import Stats
from horde.coordinator.report.figures import (
    CPU_SATURATED_PCT,
    ERROR_COLORS,
    TARGET_SERIES,
    alert_at,
    alert_kind,
    alert_text,
)
from horde.coordinator.report.formats import fmt_duration, fmt_int, fmt_ms, fmt_pct, fmt_rate, fmt_time, text
from horde.coordinator.report.timeline import TOTAL, agent_key, number
from horde.coordinator.scenario.redact import redact_url

TABLE_QUANTILES = ("p50", "p90", "p95", "p99", "p99.9", "max")
Bit = tuple[str, str]  # (css class, text)

_OUTCOME_CLASS = {
    "passed": "pass",
    "thresholds_failed": "fail",
    "aborted": "fail",
    "error": "fail",
    "interrupted": "warning",
    "running": "warning",
}


def outcome_of(bundle: Bundle) -> str:
    """The manifest's outcome; a killed coordinator's bundle still says "running"."""
    o = bundle.manifest.outcome or "unknown"
    if o == "running" and bundle.path.name.endswith(INCOMPLETE_SUFFIX):
        return "did not finish"
    return o


def outcome_badge(outcome: str) -> Bit:
    return (f"badge {_OUTCOME_CLASS.get(outcome, 'warning')}", outcome.replace("_", " "))


def generator_of(s: Summary | None) -> Generator | None:
    """The generator verdict, None when the bundle has none (no summary, or a hand-made one)."""
    return s.generator if s is not None and "generator" in s.model_fields_set else None


# -- scope figures --------------------------------------------------------------------------


@dataclass
class Figures:
    """Whole-run figures of a bundle: its summary's, or merged from its histograms."""

    total: ScopeStats | None
    endpoints: dict[str, ScopeStats]
    stages: dict[str, Any]  # stage name -> schema.StageStats
    duration_s: float | None


def figures_of(bundle: Bundle, cumulative: dict[str, Stats]) -> Figures:
    s = bundle.summary
    if s is not None:
        return Figures(s.total, s.endpoints, s.stages, s.duration_s)
    total = ScopeStats.model_validate(cumulative[TOTAL].to_dict()) if TOTAL in cumulative else None
    endpoints = {k: ScopeStats.model_validate(v.to_dict()) for k, v in cumulative.items() if k != TOTAL}
    return Figures(total, endpoints, {}, total.duration_s if total else None)


def stats_row(name: str, s: ScopeStats, *, strong: bool = False) -> dict[str, Any]:
    lat, svc = s.latency_ms, s.service_time_ms
    return {
        "name": name,
        "strong": strong,
        "requests": fmt_int(s.requests),
        "rps": fmt_rate(s.rps),
        "errors": fmt_pct(s.error_rate),
        "errors_bad": s.error_rate > 0,
        "lat": [fmt_ms(lat[q]) for q in TABLE_QUANTILES],
        "svc": [fmt_ms(svc[q]) for q in TABLE_QUANTILES],
    }


def endpoint_rows(endpoints: dict[str, ScopeStats], total: ScopeStats | None) -> list[dict[str, Any]]:
    rows = [stats_row(name, s) for name, s in endpoints.items()]
    if total is not None:
        rows.append(stats_row("all endpoints", total, strong=True))
    return rows


def stage_view(stages: dict[str, Any]) -> dict[str, Any]:
    return {
        "rows": [stats_row(name, st.total) for name, st in stages.items()],
        "details": [
            {"name": name, "rows": [stats_row(e, s) for e, s in st.endpoints.items()]}
            for name, st in stages.items()
            if st.endpoints
        ],
    }


def threshold_rows(thresholds: list[ThresholdResult]) -> list[dict[str, Any]]:
    rows = []
    for t in thresholds:
        scope = ", ".join(f"{k} {v}" for k, v in (("endpoint", t.endpoint), ("stage", t.stage)) if v) or "all"
        rows.append(
            {
                "ok": t.ok,
                "expr": t.expr,
                "scope": scope,
                "observed": t.observed_text if "observed_text" in t.model_fields_set else text(t.observed),
                "abort": t.abort,
            }
        )
    return rows


def alert_rows(alerts: list[AlertRecord]) -> list[dict[str, Any]]:
    rows = []
    for a in sorted(alerts, key=lambda a: (alert_at(a) is None, alert_at(a) or 0.0)):
        at = alert_at(a)
        kind: str = a.kind or "alert"
        if kind == "alert" and a.level:
            kind = a.level
        rows.append(
            {
                "at": "–" if at is None else f"{at:.1f} s",
                "badge": alert_kind(a),
                "kind": kind.replace("_", " "),
                "detail": alert_text(a)[1],
            }
        )
    return rows


def error_rows(total: ScopeStats | None) -> list[dict[str, Any]]:
    if total is None:
        return []
    classes = {k: v for k, v in total.errors_by_class.items() if k != "ok"}
    n = max(total.requests, 1)
    return [
        {"name": k, "color": ERROR_COLORS.get(k, "#bab0ac"), "count": fmt_int(v), "share": fmt_pct(v / n)}
        for k, v in sorted(classes.items(), key=lambda kv: -kv[1])
    ]


def generator_rows(gen: Generator | None) -> list[dict[str, Any]]:
    rows = []
    for idx, a in sorted((gen.agents if gen else {}).items(), key=lambda kv: agent_key(kv[0])):
        rows.append(
            {
                "agent": idx,
                "cpu_s": text(a.cpu_s),
                "cpu": fmt_pct(a.cpu_fraction),
                "hot": a.cpu_fraction * 100 > CPU_SATURATED_PCT,
                "rss": text(a.peak_rss_mb),
                "lag": fmt_ms(a.loop_lag_max_ms),
                "late": fmt_int(a.late_sends),
                "send_lag": fmt_ms(a.send_lag_max_ms),
                "interrupted": fmt_int(a.interrupted),
                "unsent": fmt_int(a.unsent),
                "engines": ", ".join(a.engines),
            }
        )
    return rows


def node_rows(nodes: Nodes | None) -> list[dict[str, Any]]:
    if nodes is None:
        return []
    saturated = set(nodes.saturated)
    return [
        {
            "node": node[:12],
            "hot": node in saturated,
            "cpu_mean": fmt_pct(n.cpu_mean),
            "cpu_max": fmt_pct(n.cpu_max),
            "mem": text(n.mem_peak_mb),
            "tx": text(n.net_tx_peak_mb_s),
            "rx": text(n.net_rx_peak_mb_s),
            "tcp": fmt_int(n.tcp_connections_max),
            "agents": ", ".join(n.agents) or "–",
        }
        for node, n in nodes.nodes.items()
    ]


def target_view(res: TargetResources | None) -> dict[str, Any] | None:
    if res is None:
        return None
    rows = []
    for name, (label, scale, unit) in TARGET_SERIES.items():
        v = getattr(res, name)
        if v is None:
            continue

        def f(x: float | None, scale: float = scale) -> str:
            x = number(x)
            return "–" if x is None else fmt_rate(x * scale)

        rows.append(
            {
                "label": label,
                "unit": unit,
                "min": f(v.min),
                "mean": f(v.mean),
                "max": f(v.max),
                "last": f(v.last),
                "windows": fmt_int(v.windows),
            }
        )
    return {"rows": rows, "scrapes": fmt_int(res.scrapes), "failures": fmt_int(res.failures)}


# -- the run's facts and headline ------------------------------------------------------------


def _generator_bits(gen: Generator | None) -> list[Bit]:
    if gen is None:
        return [("muted", "unknown (no summary)")]
    bits: list[Bit] = (
        [("badge fail", "saturated"), ("", "; ".join(gen.reasons))] if gen.saturated else [("badge pass", "kept up")]
    )
    if gen.cpu_us_per_request is not None:
        bits.append(("muted", f"{gen.cpu_us_per_request} µs CPU per request"))
    return bits


def run_facts(bundle: Bundle) -> list[tuple[str, list[Bit]]]:
    """(label, bits) pairs for the run's definition grid."""
    m, s = bundle.manifest, bundle.summary
    scenario, plan, cluster, versions = m.scenario, m.plan, m.cluster, m.versions
    workload = scenario.get("workload") or {}  # the scenario as run: open
    gen = generator_of(s)
    hosts = sorted({a.host for a in m.agents if a.host})
    stages = plan.stages if plan is not None else []

    def maybe(cls: str, v: Any) -> list[Bit]:
        return [(cls, str(v))] if v else []

    workload_text = " · ".join(
        str(x)
        for x in (
            f"{workload.get('model', '?')} model",
            workload.get("arrivals") if workload.get("model") == "open" else None,
            f"{len(stages)} stage(s): " + ", ".join(st.name for st in stages),
        )
        if x
    )
    cpus = fmt_rate(cluster.cpus) if "cpus" in cluster.model_fields_set else "?"
    n_agents = (plan.agents if plan is not None else len(m.agents)) or len(m.agents)
    per_agent = plan.cpus_per_agent if plan is not None else "?"
    engines = ", ".join(sorted(set(plan.engines.values()))) if plan is not None else ""
    late = f"{fmt_int(gen.late_sends)} / {fmt_int(gen.interrupted)} / {fmt_int(gen.unsent)}" if gen is not None else "–"
    version_text = " · ".join(
        f"{k} {v}"
        for k, v in (("horde", m.horde_version), *((k, versions.get(k)) for k in ("python", "ray", "aiohttp", "numpy")))
        if v
    )
    return [
        ("scenario", [("b", str(scenario.get("name", "?")))] + maybe("muted", scenario.get("description"))),
        ("scenario file", [("mono", m.scenario_file or "–")]),
        (
            "target",
            [("mono", redact_url(m.target.url) if m.target.url else "–")]  # an older bundle may hold credentials
            + ([("muted", "(embedded automaton)")] if m.target.embedded else []),
        ),
        ("outcome", [outcome_badge(outcome_of(bundle))] + maybe("muted", m.stop_reason)),
        (
            "bundle",
            [
                ("badge pass", "complete") if bundle.complete else ("badge warning", "incomplete"),
                ("mono muted", bundle.path.name),
            ],
        ),
        ("started", [("", fmt_time(m.started))]),
        ("ended", [("", fmt_time(m.ended))]),
        ("wall duration", [("", fmt_duration(m.duration_s))]),
        ("planned duration", [("", fmt_duration(plan.duration_s if plan is not None else None))]),
        ("workload", [("", workload_text)]),
        (
            "cluster",
            [("", f"{cluster.kind or '?'} Ray, {cpus} CPUs, {len(cluster.nodes)} node(s)")]
            + maybe("mono muted", cluster.address),
        ),
        ("agents", [("", f"{n_agents} agent(s), {per_agent} CPU each" + (f" on {', '.join(hosts)}" if hosts else ""))]),
        ("engines", [("", engines or "–")]),
        ("generator", _generator_bits(gen)),
        ("late / interrupted / unsent", [("", late)]),
        (
            "late samples",
            [("", fmt_int(s.late_samples) if s is not None and "late_samples" in s.model_fields_set else "–")],
        ),
        ("versions", [("", version_text)]),
        ("platform", [("mono", versions.get("platform", "–"))]),
    ]


def headline_cards(total: ScopeStats | None, duration_s: float | None, gen: Generator | None) -> list[dict[str, Any]]:
    total = total or ScopeStats()
    lat, err = total.latency_ms, total.error_rate
    generator = ("unknown", False) if gen is None else (("saturated", True) if gen.saturated else ("kept up", False))
    return [
        {"label": "requests", "value": fmt_int(total.requests), "unit": "", "bad": False},
        {"label": "throughput", "value": fmt_rate(total.rps), "unit": "req/s", "bad": False},
        {"label": "errors", "value": fmt_pct(err), "unit": "", "bad": bool(err)},
        {"label": "p50 latency", "value": fmt_ms(lat.p50), "unit": "ms", "bad": False},
        {"label": "p99 latency", "value": fmt_ms(lat.p99), "unit": "ms", "bad": False},
        {"label": "max latency", "value": fmt_ms(lat.max), "unit": "ms", "bad": False},
        {"label": "duration", "value": fmt_duration(duration_s), "unit": "", "bad": False},
        {"label": "generator", "value": generator[0], "unit": "", "bad": generator[1]},
    ]


# -- comparison ----------------------------------------------------------------------------


def run_label(b: Bundle) -> str:
    return f"{b.manifest.scenario_name or '?'} @ {fmt_time(b.manifest.started)}"


def delta(a: float | None, b: float | None, *, higher_is_worse: bool = True) -> tuple[str, str]:
    """(text, css class) of B relative to A."""
    if (
        not isinstance(a, (int, float))
        or not isinstance(b, (int, float))
        or not math.isfinite(a)
        or not math.isfinite(b)
    ):
        return "–", ""
    if a == 0:
        return ("–", "") if b == 0 else ("new", "delta-up")
    d = (b - a) / abs(a)
    cls = ""
    if abs(d) >= 0.05:
        cls = "delta-up" if (d > 0) == higher_is_worse else "delta-down"
    return f"{d * 100:+.1f}%", cls


COMPARE_QUANTILES = ("p50", "p99", "p99.9", "max")


def compare_rows(
    ea: dict[str, ScopeStats], eb: dict[str, ScopeStats], ta: ScopeStats | None, tb: ScopeStats | None, total_label: str
) -> list[dict[str, Any]]:
    names = list(ea) + [n for n in eb if n not in ea]
    src = [(n, ea.get(n), eb.get(n)) for n in names] + [(total_label, ta, tb)]
    rows = []
    for n, a, b in src:

        def q(s: ScopeStats | None, name: str) -> float | None:
            return None if s is None else s.latency_ms[name]

        ra, rb = (None if a is None else a.rps), (None if b is None else b.rps)
        rows.append(
            {
                "name": n,
                "rps": (fmt_rate(ra), fmt_rate(rb), delta(ra, rb, higher_is_worse=False)),
                "errors": (fmt_pct(None if a is None else a.error_rate), fmt_pct(None if b is None else b.error_rate)),
                "lat": [(fmt_ms(q(a, x)), fmt_ms(q(b, x)), delta(q(a, x), q(b, x))) for x in COMPARE_QUANTILES],
            }
        )
    return rows


def compare_run_row(label: str, bundle: Bundle, color: str, total: ScopeStats | None) -> dict[str, Any]:
    lat = total.latency_ms if total is not None else None
    return {
        "label": label,
        "color": color,
        "run": run_label(bundle),
        "outcome": outcome_badge(outcome_of(bundle)),
        "complete": bundle.complete,
        "bundle": bundle.path.name,
        "requests": fmt_int(None if total is None else total.requests),
        "rps": fmt_rate(None if total is None else total.rps),
        "errors": fmt_pct(None if total is None else total.error_rate),
        "p50": fmt_ms(lat.p50 if lat else None),
        "p99": fmt_ms(lat.p99 if lat else None),
        "max": fmt_ms(lat.max if lat else None),
    }


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
    out = f"×{eff:.3f}" if kind == "ratio" else f"{100 * eff:+.2f} pp"
    ci = m.get("ci")
    if (
        isinstance(ci, (list, tuple))
        and len(ci) == 2
        and all(isinstance(c, (int, float)) and math.isfinite(c) for c in ci)
    ):
        out += f" [{ci[0]:.3f}, {ci[1]:.3f}]" if kind == "ratio" else f" [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]"
    return out


def verdict_view(comparison: dict) -> dict[str, Any]:
    """The statistical comparison (analysis/compare.py compare_bundles output: a JSON-ready dict)."""
    lists = [
        {"cls": cls, "title": title, "text": "; ".join(map(str, comparison.get(key) or []))}
        for key, cls, title in (("regressions", "fail", "Regressions"), ("improvements", "pass", "Improvements"))
        if comparison.get(key)
    ]
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
                {
                    "scope": text(scope.get("label")),
                    "metric": name,
                    "base": _metric_value(name, m.get("base")),
                    "candidate": _metric_value(name, m.get("candidate")),
                    "effect": _effect(m),
                    "p": "–" if not isinstance(p, (int, float)) else f"{p:.2g}",
                    "verdict": v,
                    "cls": _VERDICT_CLASS.get(v, ""),
                }
            )
    settings = comparison.get("settings") or {}
    return {
        "lists": lists,
        "warnings": [str(w) for w in comparison.get("warnings") or []],
        "rows": rows,
        "settings": {"alpha": text(settings.get("alpha")), "min_effect": text(settings.get("min_effect"))}
        if settings
        else None,
    }
