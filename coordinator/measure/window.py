"""A closed window as the aggregator hands it out, and what it keeps of it.

Split from coordinator/measure/aggregate.py (which re-exports ``Window``): the window's
record, the generator readings folded per window, and the merge of scopes.

Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from horde.agents.samples import Batch, GeneratorReadings
from horde.coordinator.measure.blocks import KINDS
from horde.coordinator.measure.quantiles import sparse_quantiles
from horde.coordinator.measure.stats import DEFAULT_QUANTILES, Stats


def merged_stats(parts: Iterable[Stats], duration_s: float) -> Stats:
    out = Stats(duration_s)
    for p in parts:
        out.merge(p)
    out.duration_s = duration_s
    return out


# Per-window generator readings: which fields combine how across the batches of a window.
_READINGS_MAX = ("loop_lag_max_ns", "send_lag_max_ns")
_READINGS_SUM = ("late_sends", "interrupted", "unsent", "generator_queued_sends")
_READINGS_LAST = ("cpu_s", "rss_bytes", "loop_lag_mean_ns", "in_flight", "users", "level")


def fold_readings(old: dict[str, Any] | None, batch: Batch) -> dict[str, Any]:
    r: GeneratorReadings = batch.readings
    order = (batch.incarnation, batch.seq)
    if old is None:
        new = {k: getattr(r, k) for k in _READINGS_MAX + _READINGS_SUM + _READINGS_LAST}
        new.update(batches=1, incarnation=batch.incarnation, seq=batch.seq)
        return new
    for k in _READINGS_MAX:
        old[k] = max(old[k], getattr(r, k))
    for k in _READINGS_SUM:
        old[k] += getattr(r, k)
    old["batches"] += 1
    if order >= (old["incarnation"], old["seq"]):  # batches may arrive out of order
        for k in _READINGS_LAST:
            old[k] = getattr(r, k)
        old["incarnation"], old["seq"] = order
    return old


@dataclass
class Window:
    index: int
    start_ns: int
    end_ns: int
    by_endpoint: dict[str, Stats]  # endpoints with samples in this window
    total: Stats
    generator: dict[int, dict[str, Any]] = field(default_factory=dict)  # agent -> readings
    # by_endpoint in Stats.to_sparse() form, as the aggregator stored it at close (None: not made)
    sparse: dict[str, dict[str, Any]] | None = None

    def to_dict(self, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> dict[str, Any]:
        return {
            "index": self.index,
            "start_s": self.start_ns / 1e9,
            "end_s": self.end_ns / 1e9,
            "total": self.total.to_dict(quantiles),
            "endpoints": self._endpoint_dicts(quantiles),
            "generator": {str(agent): dict(r) for agent, r in sorted(self.generator.items())},
        }

    def _endpoint_dicts(self, quantiles: Sequence[float]) -> dict[str, dict[str, Any]]:
        """Each endpoint's record; with the stored sparse form, all their quantiles in one pass."""
        names = list(self.by_endpoint)
        if self.sparse is None or len(names) < 2 or any(n not in self.sparse for n in names):
            return {name: s.to_dict(quantiles) for name, s in self.by_endpoint.items()}
        found = {k: sparse_quantiles([self.sparse[n][k] for n in names], quantiles) for k in KINDS}
        return {n: self.by_endpoint[n].to_dict(quantiles, {k: found[k][i] for k in KINDS}) for i, n in enumerate(names)}


@dataclass
class ClosedWindow:
    stats: dict[int, dict[str, Any]]  # endpoint index -> Stats.to_sparse()
    generator: dict[int, dict[str, Any]]
