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
# An agent's memory series keeps fewer: one a traffic agent, 256 agents would otherwise hold
# 8 MiB of them. 512 points still give its leak verdict a point every 8.4 minutes at 72 hours.
MAX_AGENT_POINTS = 512
_AGENT_SERIES = "agent_rss:"


@dataclass
class SoakSeries:
    """Per-window scalars of a run: one accumulator, add() per closed window. Bounded and
    allocated once: each series takes its whole capacity (MAX_POINTS 8-byte times and values;
    MAX_AGENT_POINTS for an agent's memory) when its first value comes, and once full, pairs
    of neighbours are averaged into one in place and later windows are averaged `stride` at
    a time. So a 72-hour soak keeps a point every 2 minutes, not a point a second, and the
    coordinator's memory for them does not grow after a series' first window: a long soak
    must not grow the coordinator it measures, nor make its leak verdict read its own series
    filling up (docs/scale.md)."""

    max_points: int = MAX_POINTS
    max_agent_points: int = MAX_AGENT_POINTS
    _t: dict[str, array] = field(default_factory=dict)  # name -> times, the whole capacity
    _v: dict[str, array] = field(default_factory=dict)  # name -> values, the whole capacity
    _n: dict[str, int] = field(default_factory=dict)  # name -> points stored
    _pending: dict[str, list[float]] = field(default_factory=dict)  # name -> [sum t, sum v, windows]
    _stride: dict[str, int] = field(default_factory=dict)  # windows per stored point

    @property
    def t_s(self) -> dict[str, array]:
        """Each series' times (copies of the points stored)."""
        return {name: ts[: self._n[name]] for name, ts in self._t.items()}

    @property
    def values(self) -> dict[str, array]:
        """Each series' values (copies of the points stored)."""
        return {name: vs[: self._n[name]] for name, vs in self._v.items()}

    def points(self, name: str) -> int:
        return self._n.get(name, 0)

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
        if name not in self._t:
            cap = max(2, self.max_agent_points if name.startswith(_AGENT_SERIES) else self.max_points)
            self._t[name], self._v[name], self._n[name] = array("d", bytes(8 * cap)), array("d", bytes(8 * cap)), 0
        ts, vs, n = self._t[name], self._v[name], self._n[name]
        ts[n], vs[n] = acc[0] / stride, acc[1] / stride
        acc[:] = [0.0, 0.0, 0]
        n += 1
        if n >= len(ts):
            n = _halve(ts, n)
            _halve(vs, len(vs))
            self._stride[name] = stride * 2
        self._n[name] = n

    def add(self, window: dict) -> None:
        t = float(window.get("end_s", window.get("index", 0) + 1))
        for name, (_, path) in _TREND_SERIES.items():
            self._put(name, t, _dig(window, path))
        self._put("coordinator_rss", t, _dig(window, ("coordinator", "rss_bytes")))
        for agent, r in (window.get("generator") or {}).items():
            label = agent if not r.get("incarnation") else f"{agent}#{r['incarnation']}"
            self._put(f"{_AGENT_SERIES}{label}", t, r.get("rss_bytes") or None)


def _halve(a: array, n: int) -> int:
    """The first `n` points of `a`, neighbouring pairs averaged, written back in place (an odd
    last point kept as it is); returns how many there are now."""
    half = n // 2
    for i in range(half):
        a[i] = (a[2 * i] + a[2 * i + 1]) / 2
    if n % 2:
        a[half] = a[n - 1]
        half += 1
    return half


def analyse(series: SoakSeries, *, time_scale: float = 1.0) -> dict:
    """Leak verdicts (target, coordinator, each agent) and trends of every series."""
    times, values = series.t_s, series.values  # copied once
    leaks: dict = {}
    for name in ("target_memory", "coordinator_rss"):
        if name in values:
            leaks["target" if name == "target_memory" else "coordinator"] = leak_verdict(
                list(times[name]), list(values[name]), time_scale=time_scale
            ).to_dict()
    agents = {
        n[len(_AGENT_SERIES) :]: leak_verdict(list(times[n]), list(values[n]), time_scale=time_scale).to_dict()
        for n in values
        if n.startswith(_AGENT_SERIES)
    }
    if agents:
        leaks["agents"] = agents
    trends = {
        name: trend(list(times[name]), list(values[name]), unit=unit, time_scale=time_scale).to_dict()
        for name, (unit, _) in _TREND_SERIES.items()
        if name in values
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
