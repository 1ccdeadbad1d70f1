"""Is something changing over the run? Leak and trend verdicts from per-window series. Pure.

The series are compact (a few floats per window), so a long soak keeps them all without
keeping its windows. Times are real seconds since the run start; `time_scale` (simulated
seconds per real second, from the scenario's time compression) turns slopes into change
per *simulated* hour.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Any

from horde.coordinator.analysis.trends import leak_verdict, trend

_TREND_SERIES = {
    # name: (unit, where in a window dict)
    "target_memory": ("bytes", ("target", "target_memory")),
    "target_cpu": ("cores", ("target", "target_cpu")),
    "target_connections": ("connections", ("target", "target_connections")),
    "target_fds": ("fds", ("target", "target_fds")),
    "error_rate": ("fraction", ("total", "error_rate")),
    "latency_p99_ms": ("ms", ("total", "latency_ms", "p99")),
    "latency_p50_ms": ("ms", ("total", "latency_ms", "p50")),
    "rps": ("req/s", ("total", "requests")),
}


def _dig(d: Any, path: tuple[str, ...]) -> float | None:
    for k in path:
        d = d.get(k) if isinstance(d, dict) else None
        if d is None:
            return None
    return d if isinstance(d, (int, float)) and not isinstance(d, bool) else None


MAX_POINTS = 2048  # per series; Theil-Sen compares every pair (2 M pairs, ~16 MB at the end, at most)


@dataclass
class SoakSeries:
    """Per-window scalars of a run: one accumulator, add() per closed window. Stored as
    array('d') (8 bytes a value) and bounded: once a series holds MAX_POINTS points, pairs
    of neighbours are averaged into one and later windows are averaged `stride` at a time,
    so a 72-hour soak keeps at most MAX_POINTS points a series (one every 2 minutes), not a
    point a second. A long soak must not grow the coordinator it measures."""

    t_s: dict[str, array] = field(default_factory=dict)
    values: dict[str, array] = field(default_factory=dict)
    max_points: int = MAX_POINTS
    _pending: dict[str, list[float]] = field(default_factory=dict)  # name -> [sum t, sum v, windows]
    _stride: dict[str, int] = field(default_factory=dict)  # windows per stored point

    def _put(self, name: str, t: float, v: float | None) -> None:
        if v is None:
            return
        acc = self._pending.setdefault(name, [0.0, 0.0, 0])
        acc[0] += t
        acc[1] += float(v)
        acc[2] += 1
        stride = self._stride.get(name, 1)
        if acc[2] < stride:
            return
        ts, vs = self.t_s.setdefault(name, array("d")), self.values.setdefault(name, array("d"))
        ts.append(acc[0] / stride)
        vs.append(acc[1] / stride)
        acc[:] = [0.0, 0.0, 0]
        if len(ts) >= self.max_points:
            self.t_s[name], self.values[name] = _halved(ts), _halved(vs)
            self._stride[name] = stride * 2

    def add(self, window: dict) -> None:
        t = float(window.get("end_s", window.get("index", 0) + 1))
        for name, (_, path) in _TREND_SERIES.items():
            self._put(name, t, _dig(window, path))
        self._put("coordinator_rss", t, _dig(window, ("coordinator", "rss_bytes")))
        for agent, r in (window.get("generator") or {}).items():
            label = agent if not r.get("incarnation") else f"{agent}#{r['incarnation']}"
            self._put(f"agent_rss:{label}", t, r.get("rss_bytes") or None)


def _halved(a: array) -> array:
    """Neighbouring pairs averaged (an odd last point kept as it is)."""
    out = array("d", ((a[i] + a[i + 1]) / 2 for i in range(0, len(a) - 1, 2)))
    if len(a) % 2:
        out.append(a[-1])
    return out


def analyse(series: SoakSeries, *, time_scale: float = 1.0) -> dict:
    """Leak verdicts (target, coordinator, each agent) and trends of every series."""
    leaks: dict = {}
    for name in ("target_memory", "coordinator_rss"):
        if name in series.values:
            leaks["target" if name == "target_memory" else "coordinator"] = leak_verdict(
                list(series.t_s[name]), list(series.values[name]), time_scale=time_scale
            ).to_dict()
    agents = {
        n.split(":", 1)[1]: leak_verdict(list(series.t_s[n]), list(series.values[n]), time_scale=time_scale).to_dict()
        for n in series.values
        if n.startswith("agent_rss:")
    }
    if agents:
        leaks["agents"] = agents
    trends = {
        name: trend(list(series.t_s[name]), list(series.values[name]), unit=unit, time_scale=time_scale).to_dict()
        for name, (unit, _) in _TREND_SERIES.items()
        if name in series.values
    }
    # The verdict that fails a soak is the target's. horde's own processes are judged too and
    # reported (`self_leak`): in an uncompressed run of a few minutes their warm-up growth
    # (allocator, Ray buffers) can still read as a slope, so it informs rather than fails.
    own = [leaks.get("coordinator", {}).get("verdict")] + [v["verdict"] for v in agents.values()]
    return {
        "time_scale": time_scale,
        "leak_found": leaks.get("target", {}).get("verdict") == "leak",
        "self_leak": "leak" in own,
        "leaks": leaks,
        "trends": trends,
    }
