"""A bundle's windows as time-series points, and its whole-run histograms, for the HTML report.

The page's size grows with windows x endpoints, never with requests: time series have one
point per window, and when a run has more than ``max_points`` windows, consecutive windows
are merged into one point (their histograms merged, so quantiles stay exact); percentile
curves have a fixed number of points per decade of count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from horde.coordinator.bundle.schema import Stats as ScopeStats
from horde.coordinator.bundle.schema import Window
from horde.coordinator.bundle.store import Bundle
from horde.coordinator.measure.aggregate import Stats
from horde.coordinator.measure.histogram import Histogram

MAX_POINTS = 2000  # time-series points per chart; more windows are merged in groups
TOTAL = "total"  # display name of the all-endpoints scope (a key of its own, never an endpoint's)
CURVE_POINTS_PER_DECADE = 24


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


def number(v: Any) -> float | None:
    """A finite float, or None (a reading that is missing or not a number)."""
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


def endpoint_order(bundle: Bundle) -> list[str]:
    """Endpoint names in the scenario's order: from the summary, else the plan, else the scenario."""
    names: list[str] = []
    if bundle.summary is not None:
        names = list(bundle.summary.endpoints)
    if not names and bundle.manifest.plan is not None:
        names = list(bundle.manifest.plan.engines)
    if not names:
        reqs = bundle.manifest.scenario.get("requests") or []  # the scenario as run: open
        names = [str(r["name"]) for r in reqs if isinstance(r, dict) and r.get("name")]
    return [str(n) for n in names]


def _window_quantiles(d: ScopeStats) -> dict[str, float | None]:
    lat, svc = d.latency_ms, d.service_time_ms
    return {
        "p50": lat.p50,
        "p90": lat.p90,
        "p99": lat.p99,
        "max": lat.max,
        "svc_p50": svc.p50,
        "svc_p99": svc.p99,
        "svc_max": svc.max,
    }


def build_timeline(bundle: Bundle, max_points: int = MAX_POINTS) -> Timeline:
    """Stream the bundle's windows into at most ``max_points`` points."""
    n_lines = bundle.window_count()
    group = max(1, math.ceil(n_lines / max_points))
    scopes = endpoint_order(bundle)
    seen_scopes = set(scopes)
    points: dict[int, _Point] = {}
    last_cpu: dict[str, tuple[int, float, float]] = {}  # agent -> (incarnation, cpu_s, t)
    agents: set[str] = set()
    for w in bundle.windows():
        g = w.index // group
        p = points.get(g)
        if p is None:
            p = points[g] = _Point(w.start_s, w.end_s)
        p.t0, p.t1 = min(p.t0, w.start_s), max(p.t1, w.end_s)
        for scope, d in [*w.endpoints.items(), (TOTAL, w.total)]:
            if scope != TOTAL and scope not in seen_scopes:
                seen_scopes.add(scope)
                scopes.append(scope)
            p.requests[scope] = p.requests.get(scope, 0) + d.requests
            p.errors[scope] = p.errors.get(scope, 0) + d.errors
            if group == 1:
                p.quantiles[scope] = _window_quantiles(d)
        for cls, n in w.total.errors_by_class.items():
            if cls != "ok":
                p.classes[cls] = p.classes.get(cls, 0) + n
        _fold_generator(p, w, agents, last_cpu)
        _fold_resources(p, w)
    if group > 1 and points:
        _merged_quantiles(bundle, points, group)
    ordered = [points[g] for g in sorted(points)]
    return Timeline(group=group, points=ordered, scopes=scopes, agents=sorted(agents, key=agent_key))


def _fold_generator(p: _Point, w: Window, agents: set[str], last_cpu: dict[str, tuple[int, float, float]]) -> None:
    """The agents' readings of a window (agents/samples.py GeneratorReadings: an open map)."""
    gen = w.generator
    if not gen:
        return
    t1 = w.end_s

    def total(key: str) -> float:
        return sum(float(r.get(key) or 0) for r in gen.values())

    in_flight, users = total("in_flight"), total("users")
    lag = max(float(r.get("loop_lag_max_ns") or 0) for r in gen.values()) / 1e6
    p.in_flight = in_flight if p.in_flight is None else max(p.in_flight, in_flight)
    p.users = users if p.users is None else max(p.users, users)
    p.level = total("level")  # the latest planned level in the group
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


def _fold_resources(p: _Point, w: Window) -> None:
    """Target, node and coordinator readings of a window (peaks; node CPU averaged)."""
    for name, reading in w.target.items():
        v = number(reading)
        if v is not None:
            p.target[name] = _peak(p.target.get(name), v)
    coord = number(w.coordinator.get("rss_bytes"))
    if coord is not None:
        p.coordinator_rss_mb = _peak(p.coordinator_rss_mb, coord / 2**20)
    for node, r in w.nodes.items():
        cpu = number(r.cpu_fraction)
        if cpu is not None:
            p.node_cpu.setdefault(node, []).append(cpu)
        mem = number(r.mem_used_bytes)
        if mem is not None:
            p.node_mem_mb[node] = _peak(p.node_mem_mb.get(node), mem / 2**20)


def agent_key(a: str) -> tuple[int, str]:
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


def ms_or_none(ns: int | None) -> float | None:
    return None if ns is None else ns / 1e6


def _stats_quantiles(s: Stats) -> dict[str, float | None]:
    lat = s.latency.quantiles((0.5, 0.9, 0.99))
    svc = s.service_time.quantiles((0.5, 0.99))
    return {
        "p50": ms_or_none(lat[0.5]),
        "p90": ms_or_none(lat[0.9]),
        "p99": ms_or_none(lat[0.99]),
        "max": ms_or_none(s.latency.max_ns),
        "svc_p50": ms_or_none(svc[0.5]),
        "svc_p99": ms_or_none(svc[0.99]),
        "svc_max": ms_or_none(s.service_time.max_ns),
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
    ys: list[float | None] = [ms_or_none(values[q]) for q in qs]
    if h.count > 1:
        xs.append(1 - 1 / h.count)
        ys.append(ms_or_none(h.max_ns))
    return xs, ys
