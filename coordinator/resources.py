"""Target (and node) resource readings over a run: per-window values, pure.

Readings come from a sampler (coordinator/target_probe.py) as cumulative counters and
gauges; this module turns them into per-window series (memory in bytes, CPU as a fraction
of one core, open connections, file descriptors) and their statistics for thresholds,
alerts and the bundle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Series names as thresholds and alert rules spell them.
TARGET_MEMORY = "target_memory"  # resident bytes
TARGET_CPU = "target_cpu"  # CPU seconds per second (1.0 = one core busy)
TARGET_CONNECTIONS = "target_connections"  # open connections the target reports
TARGET_FDS = "target_fds"  # open file descriptors
RESOURCE_SERIES = (TARGET_MEMORY, TARGET_CPU, TARGET_CONNECTIONS, TARGET_FDS)


@dataclass(frozen=True)
class Reading:
    """One scrape: gauges as they were, counters cumulative."""

    t_s: float  # seconds since the run's start instant
    rss_bytes: float | None = None
    cpu_seconds_total: float | None = None
    open_connections: float | None = None
    open_fds: float | None = None


@dataclass
class ResourceSeries:
    """Per-window target resources. A window keeps its peak gauges and its CPU rate."""

    window_s: float = 1.0
    _by_window: dict[int, dict[str, float]] = field(default_factory=dict)
    _last: Reading | None = None
    scrapes: int = 0
    failures: int = 0

    def add(self, r: Reading) -> None:
        self.scrapes += 1
        w = int(r.t_s // self.window_s) if r.t_s >= 0 else 0
        slot = self._by_window.setdefault(w, {})
        for name, v in ((TARGET_MEMORY, r.rss_bytes), (TARGET_CONNECTIONS, r.open_connections), (TARGET_FDS, r.open_fds)):
            if v is not None:
                slot[name] = max(slot.get(name, v), v)
        last = self._last
        if (
            last is not None
            and r.cpu_seconds_total is not None
            and last.cpu_seconds_total is not None
            and r.t_s > last.t_s
        ):
            rate = max(0.0, (r.cpu_seconds_total - last.cpu_seconds_total) / (r.t_s - last.t_s))
            slot[TARGET_CPU] = max(slot.get(TARGET_CPU, rate), rate)
        self._last = r

    def failed(self) -> None:
        self.failures += 1

    def window(self, index: int) -> dict[str, float]:
        return dict(self._by_window.get(index, {}))

    def values(self, series: str, first: int | None = None, last: int | None = None) -> np.ndarray:
        """The series' per-window values for windows first..last inclusive (None: open end)."""
        out = [
            v[series]
            for w, v in sorted(self._by_window.items())
            if series in v and (first is None or w >= first) and (last is None or w <= last)
        ]
        return np.asarray(out, dtype=float)

    def summary(self) -> dict:
        out: dict = {"scrapes": self.scrapes, "failures": self.failures}
        for s in RESOURCE_SERIES:
            v = self.values(s)
            if len(v):
                out[s] = {"max": float(v.max()), "mean": float(v.mean()), "min": float(v.min()),
                          "last": float(v[-1]), "windows": int(len(v))}
        return out


def aggregate(values: np.ndarray, how: str, quantile: float | None = None) -> float | None:
    if len(values) == 0:
        return None
    if how == "max":
        return float(values.max())
    if how == "min":
        return float(values.min())
    if how == "mean":
        return float(values.mean())
    if how == "quantile":
        return float(np.quantile(values, quantile, method="inverted_cdf"))
    raise ValueError(f"unknown aggregate {how!r}")


NODE_CPU_SATURATED = 0.90


@dataclass
class NodeSeries:
    """Per-node readings per window (one monitor per node)."""

    window_s: float = 1.0
    _by_window: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    hosts: dict[str, str] = field(default_factory=dict)

    def add(self, node: str, reading: dict[str, float]) -> None:
        t = reading.get("t_s", 0.0)
        w = int(t // self.window_s) if t >= 0 else 0
        self._by_window.setdefault(w, {})[node] = {k: v for k, v in reading.items() if k != "t_s"}

    def window(self, index: int) -> dict[str, dict[str, float]]:
        return {n[:12]: r for n, r in self._by_window.get(index, {}).items()}

    def summary(self, agent_nodes: dict[str, list[str]]) -> dict:
        """Per node: peaks and means; `saturated` names nodes whose CPU averaged over 90%."""
        nodes: dict[str, dict] = {}
        for by_node in self._by_window.values():
            for node, r in by_node.items():
                acc = nodes.setdefault(node, {"cpu": [], "mem": [], "tx": [], "rx": [], "tcp": []})
                acc["cpu"].append(r.get("cpu_fraction", 0.0))
                acc["mem"].append(r.get("mem_used_bytes", 0.0))
                acc["tx"].append(r.get("net_sent_bytes_per_s", 0.0))
                acc["rx"].append(r.get("net_recv_bytes_per_s", 0.0))
                acc["tcp"].append(r.get("tcp_connections", 0.0))
        out: dict = {"nodes": {}, "saturated": []}
        for node, acc in nodes.items():
            cpu = np.asarray(acc["cpu"])
            out["nodes"][node] = {
                "cpu_mean": round(float(cpu.mean()), 3),
                "cpu_max": round(float(cpu.max()), 3),
                "mem_peak_mb": round(max(acc["mem"]) / 1e6, 1),
                "net_tx_peak_mb_s": round(max(acc["tx"]) / 1e6, 3),
                "net_rx_peak_mb_s": round(max(acc["rx"]) / 1e6, 3),
                "tcp_connections_max": int(max(acc["tcp"])),
                "agents": agent_nodes.get(node, []),
                "windows": int(len(cpu)),
            }
            if cpu.mean() > NODE_CPU_SATURATED:
                out["saturated"].append(node)
        return out
