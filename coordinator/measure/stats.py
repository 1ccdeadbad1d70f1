"""Counts and histograms of one scope: an endpoint, a stage, a window, or all.

Pure: no clock, no I/O. Split from coordinator/measure/aggregate.py (which re-exports it),
whose Aggregator fills these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from horde.agents.samples import ERROR_LABELS, ERROR_MASK, SAMPLE_DTYPE, ErrorClass, known_classes
from horde.coordinator.measure.histogram import Histogram

N_ERROR_CLASSES = len(ErrorClass)
DEFAULT_QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)


def quantile_key(q: float) -> str:
    """0.5 -> "p50", 0.999 -> "p99.9"."""
    return f"p{round(q * 100, 6):g}"


def _ms(ns: float | int | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 3)


def _histogram_ms(
    h: Histogram, quantiles: Sequence[float], values: dict[float, int | None] | None = None
) -> dict[str, Any]:
    values = h.quantiles(quantiles) if values is None else values
    out: dict[str, Any] = {quantile_key(q): _ms(values[q]) for q in quantiles}
    out["max"] = _ms(h.max_ns)
    out["min"] = _ms(h.min_ns)
    out["mean"] = _ms(h.mean_ns())
    out["overflow"] = h.overflow  # values above the trackable range: counted, never dropped
    return out


class Stats:
    """Counts and histograms of one scope (an endpoint, a stage, a window, or all).

    ``merge`` combines scopes that cover the same span of time (endpoints of one window):
    ``duration_s`` becomes the larger of the two. Whoever merges consecutive spans sets
    ``duration_s`` for the result (``Aggregator.recent`` and ``snapshot`` do).
    """

    __slots__ = ("requests", "errors", "errors_by_class", "bytes", "latency", "service_time", "send_lag", "duration_s")
    __hash__ = None  # type: ignore[assignment]  # mutable, compared by content

    def __init__(self, duration_s: float = 0.0) -> None:
        self.requests = 0
        self.errors = 0  # samples whose error class is not OK
        self.errors_by_class = np.zeros(N_ERROR_CLASSES, dtype=np.int64)
        self.bytes = 0
        self.latency = Histogram()  # end - intended: coordinated-omission corrected
        self.service_time = Histogram()  # end - sent
        self.send_lag = Histogram()  # sent - intended: how late the generator sent
        self.duration_s = float(duration_s)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def add_samples(self, samples: np.ndarray) -> None:
        """Fold SAMPLE_DTYPE records in (vectorised)."""
        if samples.dtype != SAMPLE_DTYPE:
            raise TypeError(f"samples must have SAMPLE_DTYPE, got {samples.dtype}")
        if len(samples) == 0:
            return
        end = samples["end_ns"]
        intended = samples["intended_ns"]
        sent = samples["sent_ns"]
        self.latency.record_many(end - intended)
        self.service_time.record_many(end - sent)
        self.send_lag.record_many(sent - intended)
        by_class = np.bincount(known_classes(samples["error"] & ERROR_MASK), minlength=N_ERROR_CLASSES)
        self.errors_by_class += by_class
        self.requests += len(samples)
        self.errors += len(samples) - int(by_class[ErrorClass.OK])
        self.bytes += int(samples["bytes"].sum(dtype=np.uint64))

    def merge(self, other: Stats) -> Stats:
        self.requests += other.requests
        self.errors += other.errors
        self.errors_by_class += other.errors_by_class
        self.bytes += other.bytes
        self.latency.merge(other.latency)
        self.service_time.merge(other.service_time)
        self.send_lag.merge(other.send_lag)
        self.duration_s = max(self.duration_s, other.duration_s)
        return self

    def copy(self) -> Stats:
        s = Stats(self.duration_s)
        return s.merge(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Stats):
            return NotImplemented
        return (
            self.requests == other.requests
            and self.errors == other.errors
            and bool(np.array_equal(self.errors_by_class, other.errors_by_class))
            and self.bytes == other.bytes
            and self.duration_s == other.duration_s
            and self.latency == other.latency
            and self.service_time == other.service_time
            and self.send_lag == other.send_lag
        )

    def __repr__(self) -> str:
        return f"Stats(requests={self.requests}, errors={self.errors}, duration_s={self.duration_s})"

    def to_dict(
        self, quantiles: Sequence[float] = DEFAULT_QUANTILES, values: dict[str, dict[float, int | None]] | None = None
    ) -> dict[str, Any]:
        """JSON-ready snapshot; the keys thresholds and reports read. Times in ms (3
        decimals), None where there is no sample. `values`: each histogram's quantiles
        (by kind), already found (measure/quantiles.py finds a window's all at once)."""
        v = values or {}
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "rps": round(self.rps, 3),
            "duration_s": self.duration_s,
            "bytes": self.bytes,
            "errors_by_class": {ERROR_LABELS[i]: int(n) for i, n in enumerate(self.errors_by_class.tolist()) if n},
            "latency_ms": _histogram_ms(self.latency, quantiles, v.get("latency")),
            "service_time_ms": _histogram_ms(self.service_time, quantiles, v.get("service_time")),
            "send_lag_ms": _histogram_ms(self.send_lag, quantiles, v.get("send_lag")),
        }

    def to_sparse(self) -> dict[str, Any]:
        """msgpack-friendly storage form; ``from_sparse`` restores it exactly."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "errors_by_class": self.errors_by_class.tolist(),
            "bytes": self.bytes,
            "duration_s": self.duration_s,
            "latency": self.latency.to_sparse(),
            "service_time": self.service_time.to_sparse(),
            "send_lag": self.send_lag.to_sparse(),
        }

    @classmethod
    def from_sparse(cls, d: dict[str, Any]) -> Stats:
        s = cls(d["duration_s"])
        by_class = list(d["errors_by_class"])
        if len(by_class) > N_ERROR_CLASSES:
            raise ValueError(f"{len(by_class)} error classes, this version knows {N_ERROR_CLASSES}")
        s.errors_by_class[: len(by_class)] = by_class
        s.requests = int(d["requests"])
        s.errors = int(d["errors"])
        s.bytes = int(d["bytes"])
        s.latency = Histogram.from_sparse(d["latency"])
        s.service_time = Histogram.from_sparse(d["service_time"])
        s.send_lag = Histogram.from_sparse(d["send_lag"])
        return s
