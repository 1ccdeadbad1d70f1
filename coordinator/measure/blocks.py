"""Stats of many scopes whose bucket counts and error classes are rows of shared matrices.

The aggregator keeps its cumulative (endpoint, stage) stats in one block and each open
window's endpoint stats in another. An agent's aggregated batch then lands with one
``np.add.at`` per histogram kind for all of its groups (``add_aggregate``), instead of a
numpy call per group: the coordinator's cost per batch follows its groups' buckets, not
numpy's per-call overhead. The ``Stats`` of a row is an ordinary ``Stats`` whose histogram
counts and error classes are views of the block's rows, so every reader and ``merge`` work
on it unchanged. The matrices are ``np.zeros`` (calloc): rows never written take no memory.

Pure: no clock, no I/O.
"""

from __future__ import annotations

import numpy as np

from horde.agents.histogram import COUNTS_LEN
from horde.agents.samples import Aggregate
from horde.coordinator.measure.histogram import GroupColumns, Histogram
from horde.coordinator.measure.stats import N_ERROR_CLASSES, Stats

KINDS = ("latency", "service_time", "send_lag")


class StatsBlock:
    """`rows` scopes of `duration_s`; ``extra`` names further histograms kept per row
    (``histogram(name, row)``), such as the latency with the generator-queue wait taken out."""

    def __init__(self, rows: int, duration_s: float, extra: tuple[str, ...] = ()) -> None:
        self.rows = rows
        self.duration_s = duration_s
        self._counts = {k: np.zeros((rows, COUNTS_LEN), dtype=np.int64) for k in (*KINDS, *extra)}
        self._errors = np.zeros((rows, N_ERROR_CLASSES), dtype=np.int64)
        self.stats_by_row: dict[int, Stats] = {}
        self._extra: dict[str, dict[int, Histogram]] = {k: {} for k in extra}

    def stats(self, row: int) -> Stats:
        s = self.stats_by_row.get(row)
        if s is None:
            s = Stats(self.duration_s)
            s.errors_by_class = self._errors[row]
            for kind in KINDS:
                getattr(s, kind)._counts = self._counts[kind][row]
            self.stats_by_row[row] = s
        return s

    def histogram(self, name: str, row: int) -> Histogram:
        h = self._extra[name].get(row)
        if h is None:
            h = self._extra[name][row] = Histogram()
            h._counts = self._counts[name][row]
        return h

    def add_aggregate(self, agg: Aggregate, group_rows: np.ndarray, extra: dict[str, str] | None = None) -> None:
        """Add the groups of `agg` (group g into row group_rows[g]; rows may repeat).
        `extra` maps an extra histogram of this block to the aggregate's kind it takes."""
        group_rows = np.asarray(group_rows, dtype=np.int64)
        rows = group_rows.tolist()
        groups = agg.groups
        requests = groups["requests"].tolist()
        nbytes = groups["bytes"].tolist()
        errors = groups["errors"].astype(np.int64)
        np.add.at(self._errors, group_rows, errors)
        n_ok = errors[:, 0].tolist()
        for g, row in enumerate(rows):
            s = self.stats(row)
            s.requests += requests[g]
            s.errors += requests[g] - n_ok[g]
            s.bytes += nbytes[g]
        sources = {k: getattr(agg, k) for k in KINDS}
        for name, kind in (extra or {}).items():
            sources[name] = getattr(agg, kind) if getattr(agg, kind) is not None else agg.latency
        for name, grouped in sources.items():
            if len(grouped.idx):
                flat = self._counts[name].reshape(-1)
                bucket_rows = np.repeat(group_rows, np.diff(grouped.offsets))
                np.add.at(flat, bucket_rows * COUNTS_LEN + grouped.idx, grouped.cnt.astype(np.int64))
            cols = GroupColumns(grouped, with_buckets=False)
            if name in KINDS:
                for g, row in enumerate(rows):
                    cols.add_figures(getattr(self.stats_by_row[row], name), g)
            else:
                for g, row in enumerate(rows):
                    cols.add_figures(self.histogram(name, row), g)


def _select_grouped(grouped, mask: np.ndarray):
    from horde.agents.histogram import GroupedHistograms

    sizes = np.diff(grouped.offsets)
    keep = np.repeat(mask, sizes)
    offsets = np.concatenate([[0], np.cumsum(sizes[mask])]).astype(np.int64)
    return GroupedHistograms(grouped.scalars[mask], offsets, grouped.idx[keep], grouped.cnt[keep])


def select_groups(agg: Aggregate, mask: np.ndarray) -> Aggregate:
    """The groups of `agg` where `mask` is True (the sends are left as they are)."""
    unqueued = agg.latency_unqueued
    return Aggregate(
        window_ns=agg.window_ns,
        groups=agg.groups[mask],
        latency=_select_grouped(agg.latency, mask),
        service_time=_select_grouped(agg.service_time, mask),
        send_lag=_select_grouped(agg.send_lag, mask),
        latency_unqueued=None if unqueued is None else _select_grouped(unqueued, mask),
        sends_first_bin=agg.sends_first_bin,
        sends=agg.sends,
    )
