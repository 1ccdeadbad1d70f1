"""`horde monitor`'s rolling window, pure: one endpoint's probes per interval, the window's
statistics (aggregate.Stats over the intervals it keeps), their views for the snapshot and
the Prometheus exposition, and the target's figures from one scrape.

No clock: every time is handed in (wall-clock seconds).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from horde.agents.samples import ERROR_LABELS
from horde.coordinator.measure.aggregate import Stats

# Rolling latency quantiles: (exposition label, snapshot label).
ROLLING_QUANTILES = (("0.5", "p50"), ("0.9", "p90"), ("0.95", "p95"), ("0.99", "p99"))
# Target figures, as the history, resources.py and the alert rules spell them.
TARGET_KEYS = ("target_memory", "target_cpu", "target_connections", "target_fds")


class ProbeInterval:
    """One endpoint's probes in one interval: a few raw values (probes are one per interval
    per endpoint), so a rolling window costs bytes, not a histogram per interval."""

    __slots__ = ("duration_s", "latencies_ns", "error_classes", "errors", "last_status", "last_error")

    def __init__(self, duration_s: float) -> None:
        self.duration_s = duration_s
        self.latencies_ns: list[int] = []
        self.error_classes: list[int] = []
        self.errors = 0
        self.last_status = 0
        self.last_error = 0

    def add(self, latency_ns: int, status: int, error: int) -> None:
        self.latencies_ns.append(latency_ns)
        self.error_classes.append(error)
        self.errors += error != 0
        self.last_status, self.last_error = status, error

    def view(self) -> dict[str, Any] | None:
        """The interval as the snapshot's `current` shows it (None: no probe ended in it)."""
        if not self.latencies_ns:
            return None
        return {
            "latency_s": self.mean_latency_s(),
            "status": self.last_status,
            "error": ERROR_LABELS[self.last_error] if self.last_error else None,
            "requests": len(self.latencies_ns),
            "errors": self.errors,
        }

    def mean_latency_s(self) -> float:
        return sum(self.latencies_ns) / len(self.latencies_ns) / 1e9


def window_stats(intervals: Iterable[ProbeInterval], duration_s: float | None = None) -> Stats:
    """aggregate.Stats of a rolling window (latency histogram from horde.coordinator.measure.histogram)."""
    intervals = list(intervals)
    s = Stats(duration_s if duration_s is not None else sum(iv.duration_s for iv in intervals))
    latencies = [v for iv in intervals for v in iv.latencies_ns]
    classes = [c for iv in intervals for c in iv.error_classes]
    s.requests = len(latencies)
    if latencies:
        s.latency.record_many(np.asarray(latencies, dtype=np.int64))
        by_class = np.bincount(np.asarray(classes, dtype=np.int64), minlength=len(s.errors_by_class))
        s.errors_by_class += by_class[: len(s.errors_by_class)]
        s.errors = int(s.requests - by_class[0])
    return s


def stats_view(s: Stats) -> dict[str, Any]:
    """Rolling statistics of one scope, seconds and fractions."""
    out: dict[str, Any] = {
        "probes": s.requests,
        "errors": s.errors,
        "error_rate": s.errors / s.requests if s.requests else None,
        "rate_per_s": s.requests / s.duration_s if s.duration_s > 0 else None,
        "errors_by_class": {ERROR_LABELS[i]: int(n) for i, n in enumerate(s.errors_by_class.tolist()) if n},
    }
    h = s.latency
    if h.count:
        latency: dict[str, float | None] = dict(_quantiles_s(s))
        for key, ns in (("mean", h.mean_ns()), ("stdev", h.stdev_ns()), ("min", h.min_ns), ("max", h.max_ns)):
            latency[key] = None if ns is None else ns / 1e9
        out["latency_s"] = latency
    return out


def _quantiles_s(s: Stats, label_by: str = "snapshot") -> dict[str, float]:
    """The window's rolling latency quantiles in seconds, labelled as the snapshot ("p50")
    or the exposition ("0.5") spells them; a quantile without a value is left out."""
    values = s.latency.quantiles([float(q) for q, _ in ROLLING_QUANTILES])
    out: dict[str, float] = {}
    for q, label in ROLLING_QUANTILES:
        ns = values[float(q)]
        if ns is not None:
            out[q if label_by == "exposition" else label] = ns / 1e9
    return out


def series_view(points: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """Mean, deviation, range and rate of change of a gauge over the window."""
    ys = [v for _, v in points]
    n = len(ys)
    mean = sum(ys) / n
    stdev = math.sqrt(sum((y - mean) ** 2 for y in ys) / n)
    span = points[-1][0] - points[0][0]
    return {
        "last": ys[-1],
        "mean": mean,
        "stdev": stdev,
        "min": min(ys),
        "max": max(ys),
        "n": n,
        "change_per_s": (ys[-1] - ys[0]) / span if span > 0 else None,
    }


def target_series_view(rolling: Iterable[tuple[float, Mapping[str, float]]]) -> dict[str, Any]:
    """series_view of each target figure over the window's (wall s, figures) readings."""
    rolling = list(rolling)
    out: dict[str, Any] = {}
    for key in TARGET_KEYS:
        points = [(t, v[key]) for t, v in rolling if key in v]
        if points:
            out[key] = series_view(points)
    return out


def exposition_view(
    names: Sequence[str],
    windows: Sequence[Stats],
    probes_total: Sequence[int],
    errors_total: Sequence[int],
    target_now: Mapping[str, float],
    alerts_active: Mapping[str, int],
) -> dict[str, Any]:
    """The view the monitor's exposition collector renders (coordinator/run/exposition.py)."""
    latency: dict[str, dict[str, float]] = {}
    error_rate: dict[str, float] = {}
    for name, window in zip(names, windows):
        if window.latency.count:
            latency[name] = _quantiles_s(window, label_by="exposition")
        if window.requests:
            error_rate[name] = window.errors / window.requests
    return {
        "latency": latency,
        "error_rate": error_rate,
        "probes": dict(zip(names, probes_total)),
        "probe_errors": dict(zip(names, errors_total)),
        "target": {
            k: v
            for k, v in (
                ("memory_bytes", target_now.get("target_memory")),
                ("cpu_ratio", target_now.get("target_cpu")),
                ("open_connections", target_now.get("target_connections")),
            )
            if v is not None
        },
        "alerts_active": dict(alerts_active),
    }


def target_figures(
    gauges: Mapping[str, float], t_wall_s: float, last_cpu: tuple[float, float] | None
) -> tuple[dict[str, float], tuple[float, float] | None]:
    """The target's figures from one scrape's process gauges (target_probe.process_gauges),
    and the CPU reading to rate the next one against: CPU is a rate between two scrapes, so
    the first scrape has none (nor one after a counter reset)."""
    now: dict[str, float] = {}
    for key, gauge in (
        ("target_memory", "memory_bytes"),
        ("target_fds", "open_fds"),
        ("target_connections", "open_connections"),
    ):
        if gauge in gauges:
            now[key] = gauges[gauge]
    cpu = gauges.get("cpu_seconds_total")
    if cpu is None:
        return now, last_cpu
    if last_cpu is not None and t_wall_s > last_cpu[0] and cpu >= last_cpu[1]:
        now["target_cpu"] = (cpu - last_cpu[1]) / (t_wall_s - last_cpu[0])
    return now, (t_wall_s, cpu)
