"""Target (and node) resource readings over a run: per-window values, pure.

Readings come from a sampler (coordinator/run/target_probe.py) as cumulative counters and
gauges; this module turns them into per-window series (memory in bytes, CPU as a fraction
of one core, open connections, file descriptors) and their statistics for thresholds,
alerts and the bundle.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass

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


class _Columns:
    """Per-window float columns (NaN = no reading): 8 bytes a window a series, so a long run's
    series stay small (a dict per window grew the coordinator by tens of MB an hour)."""

    def __init__(self) -> None:
        self.cols: dict[str, array] = {}

    def put_max(self, name: str, w: int, v: float) -> None:
        col = self.cols.setdefault(name, array("d"))
        if len(col) <= w:
            col.extend([math.nan] * (w + 1 - len(col)))
        old = col[w]
        col[w] = v if math.isnan(old) else max(old, v)

    def get(self, name: str, w: int) -> float | None:
        col = self.cols.get(name)
        if col is None or w >= len(col) or math.isnan(col[w]):
            return None
        return col[w]

    def values(self, name: str, first: int | None, last: int | None) -> np.ndarray:
        col = self.cols.get(name)
        if col is None:
            return np.zeros(0)
        v = np.frombuffer(col, dtype=float) if len(col) else np.zeros(0)
        lo = 0 if first is None else max(0, first)
        hi = len(v) if last is None else min(len(v), last + 1)
        v = v[lo:hi]
        return v[~np.isnan(v)].copy()


class ResourceSeries:
    """Per-window target resources. A window keeps its peak gauges and its CPU rate."""

    def __init__(self, window_s: float = 1.0) -> None:
        self.window_s = window_s
        self._cols = _Columns()
        self._last: Reading | None = None
        self.scrapes = 0
        self.failures = 0

    def add(self, r: Reading) -> None:
        self.scrapes += 1
        w = int(r.t_s // self.window_s) if r.t_s >= 0 else 0
        gauges = ((TARGET_MEMORY, r.rss_bytes), (TARGET_CONNECTIONS, r.open_connections), (TARGET_FDS, r.open_fds))
        for name, v in gauges:
            if v is not None:
                self._cols.put_max(name, w, float(v))
        last = self._last
        if (
            last is not None
            and r.cpu_seconds_total is not None
            and last.cpu_seconds_total is not None
            and r.t_s > last.t_s
        ):
            rate = max(0.0, (r.cpu_seconds_total - last.cpu_seconds_total) / (r.t_s - last.t_s))
            self._cols.put_max(TARGET_CPU, w, rate)
        self._last = r

    def failed(self) -> None:
        self.failures += 1

    def window(self, index: int) -> dict[str, float]:
        out = {}
        for name in RESOURCE_SERIES:
            v = self._cols.get(name, index)
            if v is not None:
                out[name] = v
        return out

    def values(self, series: str, first: int | None = None, last: int | None = None) -> np.ndarray:
        """The series' per-window values for windows first..last inclusive (None: open end)."""
        return self._cols.values(series, first, last)

    def summary(self) -> dict:
        out: dict = {"scrapes": self.scrapes, "failures": self.failures}
        for s in RESOURCE_SERIES:
            v = self.values(s)
            if len(v):
                out[s] = {
                    "max": float(v.max()),
                    "mean": float(v.mean()),
                    "min": float(v.min()),
                    "last": float(v[-1]),
                    "windows": int(len(v)),
                }
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
        if quantile is None:
            raise ValueError("the quantile aggregate needs its quantile")
        return float(np.quantile(values, quantile, method="inverted_cdf"))
    raise ValueError(f"unknown aggregate {how!r}")


NODE_CPU_SATURATED = 0.90


_NODE_KEYS = (
    "cpu_fraction",
    "cpus",
    "mem_used_bytes",
    "mem_total_bytes",
    "net_sent_bytes_per_s",
    "net_recv_bytes_per_s",
    "tcp_connections",
)


class _RecentColumns:
    """Per-window float columns kept for the last `keep` windows only, and for the windows
    before them, per column, the count, sum and maximum of their values: what the node
    summary reads. So a node's readings take the same room at minute 2 and at hour 72 (an
    array per column grew by 8 bytes a window: 14.5 MB a node over a 72-hour soak)."""

    def __init__(self, names: tuple[str, ...], keep: int) -> None:
        self._col = {name: i for i, name in enumerate(names)}
        self._vals = np.full((keep, len(names)), np.nan)
        self._win = np.full(keep, -1, dtype=np.int64)  # the window each row holds
        self._done = np.zeros((3, len(names)))  # count, sum, max of the windows let go
        self._done[2] = -np.inf

    def _row(self, w: int) -> int | None:
        r = w % len(self._win)
        if self._win[r] == w:
            return r
        if self._win[r] > w:
            return None  # older than every window kept: too late to count
        if self._win[r] >= 0:  # the window this row held is final: into the totals
            v = self._vals[r]
            seen = ~np.isnan(v)
            self._done[0, seen] += 1
            self._done[1, seen] += v[seen]
            self._done[2, seen] = np.maximum(self._done[2, seen], v[seen])
        self._vals[r] = np.nan
        self._win[r] = w
        return r

    def put_max(self, name: str, w: int, v: float) -> None:
        r = self._row(w)
        if r is None:
            return
        c = self._col[name]
        old = self._vals[r, c]
        self._vals[r, c] = v if math.isnan(old) else max(old, v)

    def get(self, name: str, w: int) -> float | None:
        r = w % len(self._win)
        if self._win[r] != w:
            return None
        v = self._vals[r, self._col[name]]
        return None if math.isnan(v) else float(v)

    def stats(self, name: str) -> tuple[int, float, float]:
        """(windows with a value, their sum, their maximum) over the whole run."""
        c = self._col[name]
        kept = self._vals[self._win >= 0, c]
        kept = kept[~np.isnan(kept)]
        count = int(self._done[0, c]) + len(kept)
        peak = max(float(self._done[2, c]), float(kept.max()) if len(kept) else -math.inf)
        return count, float(self._done[1, c] + kept.sum()), peak


class NodeSeries:
    """Per-node readings per window (one monitor per node): the recent windows, for the
    window records, and running totals, for the summary. `keep` windows: more than a window
    closes late (its reading then still lands), and a row a window for each of 7 figures."""

    KEEP_WINDOWS = 64

    def __init__(self, window_s: float = 1.0) -> None:
        self.window_s = window_s
        self._nodes: dict[str, _RecentColumns] = {}

    def add(self, node: str, reading: dict[str, float]) -> None:
        t = reading.get("t_s", 0.0)
        w = int(t // self.window_s) if t >= 0 else 0
        cols = self._nodes.get(node)
        if cols is None:
            cols = self._nodes[node] = _RecentColumns(_NODE_KEYS, self.KEEP_WINDOWS)
        for k in _NODE_KEYS:
            if k in reading:
                cols.put_max(k, w, float(reading[k]))

    def window(self, index: int) -> dict[str, dict[str, float]]:
        out = {}
        for node, cols in self._nodes.items():
            r = {k: v for k in _NODE_KEYS if (v := cols.get(k, index)) is not None}
            if r:
                out[node[:12]] = r
        return out

    def summary(self, agent_nodes: dict[str, list[str]]) -> dict:
        """Per node: peaks and means; `saturated` names nodes whose CPU averaged over 90%."""
        out: dict = {"nodes": {}, "saturated": []}
        for node, cols in self._nodes.items():
            windows, cpu_sum, cpu_max = cols.stats("cpu_fraction")
            if not windows:
                continue

            def peak(k: str, cols: _RecentColumns = cols) -> float:  # this node's columns, bound now
                n, _, top = cols.stats(k)
                return top if n else 0.0

            cpu_mean = cpu_sum / windows
            out["nodes"][node] = {
                "cpu_mean": round(cpu_mean, 3),
                "cpu_max": round(cpu_max, 3),
                "mem_peak_mb": round(peak("mem_used_bytes") / 1e6, 1),
                "net_tx_peak_mb_s": round(peak("net_sent_bytes_per_s") / 1e6, 3),
                "net_rx_peak_mb_s": round(peak("net_recv_bytes_per_s") / 1e6, 3),
                "tcp_connections_max": int(peak("tcp_connections")),
                "agents": agent_nodes.get(node, []),
                "windows": windows,
            }
            if cpu_mean > NODE_CPU_SATURATED:
                out["saturated"].append(node)
        return out
