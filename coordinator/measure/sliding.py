"""The last n closed windows' stats per endpoint and in total, kept as a running sum.

Alert rules and sliding thresholds read the merged stats of the last n windows every time
a window closes. Re-merging n windows of every endpoint from their stored sparse form each
second cost 80% of a window's work at 200 endpoints (docs/scale.md). Here the sum is kept
incrementally instead: a closing window is added, the window leaving the span is
subtracted (from its stored sparse form, late parts included), and a late part for a
window still in the span is added as it arrives. Counts, errors, bytes and each
histogram's buckets, count, overflow, clamped and sum are exact under subtraction; a
minimum or maximum is not, so each window of the span keeps its own (one slot per window
of the span, n slots) and the span's is taken over the slots. The result equals the
re-merge (``Aggregator.recent(..., exact=True)``), figure for figure
(tests/coordinator/measure/test_sliding.py).

Pure: no clock, no I/O. The Aggregator (measure/aggregate.py) drives it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from horde.agents.histogram import COUNTS_LEN
from horde.coordinator.measure.histogram import Histogram
from horde.coordinator.measure.stats import N_ERROR_CLASSES, Stats

KINDS = ("latency", "service_time", "send_lag")
_NONE_MIN = np.iinfo(np.int64).max  # an empty slot's min and max: no value yet
_NONE_MAX = -1


class SlidingSum:
    """Stats of the last `n_windows` closed windows: one row per endpoint, a last row for the total.

    `in_total`: the endpoint rows that also count in the total row.
    """

    def __init__(self, n_windows: int, n_endpoints: int, in_total: Iterable[int]) -> None:
        if n_windows <= 0:
            raise ValueError("n_windows must be positive")
        self.n_windows = n_windows
        self.total_row = n_endpoints
        rows = n_endpoints + 1
        self._in_total = frozenset(in_total)
        self._counts = {k: np.zeros((rows, COUNTS_LEN), dtype=np.int64) for k in KINDS}
        self._errors = np.zeros((rows, N_ERROR_CLASSES), dtype=np.int64)
        # Exact Python ints per row: requests, errors, bytes; per kind count, overflow, clamped, sum.
        self._scope = [[0, 0, 0] for _ in range(rows)]
        self._hist = {k: [[0, 0, 0, 0] for _ in range(rows)] for k in KINDS}
        # Per window slot (window index % n_windows), per row and kind: that window's min and max.
        self._min = np.full((n_windows, rows, len(KINDS)), _NONE_MIN, dtype=np.int64)
        self._max = np.full((n_windows, rows, len(KINDS)), _NONE_MAX, dtype=np.int64)

    def start_window(self, index: int) -> None:
        """Window `index` enters the span: its slot forgets the window that held it."""
        slot = index % self.n_windows
        self._min[slot] = _NONE_MIN
        self._max[slot] = _NONE_MAX

    def add(self, index: int, endpoint: int, sparse: dict[str, Any]) -> None:
        """An endpoint's stats (``Stats.to_sparse()`` form) of window `index`, in the span."""
        self._apply(endpoint, sparse, 1, index % self.n_windows)

    def remove(self, endpoint: int, sparse: dict[str, Any]) -> None:
        """An endpoint's stats of the window leaving the span (its slot is reused by start_window)."""
        self._apply(endpoint, sparse, -1, None)

    def add_window(self, index: int, by_endpoint: dict[int, dict[str, Any]]) -> None:
        """Every endpoint's stats of window `index` at once (``add`` for each, vectorised)."""
        self._apply_window(by_endpoint, 1, index % self.n_windows)

    def remove_window(self, by_endpoint: dict[int, dict[str, Any]]) -> None:
        """Every endpoint's stats of the window leaving the span at once."""
        self._apply_window(by_endpoint, -1, None)

    def _apply_window(self, by_endpoint: dict[int, dict[str, Any]], sign: int, slot: int | None) -> None:
        """One window's endpoints (distinct rows): one fancy add per histogram kind for their
        rows and one bincount for the total row, instead of numpy calls per endpoint (at 1,000
        endpoints x stages the per-endpoint way cost ~60 ms a window)."""
        if not by_endpoint:
            return
        rows = list(by_endpoint)
        ds = list(by_endpoint.values())
        total = [e in self._in_total for e in rows]
        in_total = np.array(total, dtype=bool)
        tot_scope = [0, 0, 0]
        for e, d, t in zip(rows, ds, total):
            figures = (int(d["requests"]), int(d["errors"]), int(d["bytes"]))
            scope = self._scope[e]
            for i, v in enumerate(figures):
                scope[i] += sign * v
                if t:
                    tot_scope[i] += sign * v
        for i, v in enumerate(tot_scope):
            self._scope[self.total_row][i] += v
        by_class = np.zeros((len(rows), N_ERROR_CLASSES), dtype=np.int64)
        for j, d in enumerate(ds):
            c = d["errors_by_class"]
            by_class[j, : len(c)] = c
        self._errors[rows] += sign * by_class
        self._errors[self.total_row] += sign * by_class[in_total].sum(axis=0)
        for k, kind in enumerate(KINDS):
            self._apply_kind(k, kind, rows, [d[kind] for d in ds], total, sign, slot)

    def _apply_kind(
        self,
        k: int,
        kind: str,
        rows: list[int],
        hs: list[dict[str, Any]],
        total: list[bool],
        sign: int,
        slot: int | None,
    ) -> None:
        idx = [np.frombuffer(h["idx"], dtype="<u4") for h in hs]
        cnt = [np.frombuffer(h["cnt"], dtype="<i8") for h in hs]
        sizes = [len(i) for i in idx]
        if sum(sizes):
            flat_idx = np.concatenate(idx).astype(np.intp)
            flat_cnt = np.concatenate(cnt)
            owner = np.repeat(np.arange(len(rows)), sizes)
            counts = self._counts[kind]
            # distinct (row, bucket) pairs: a fancy add is exact
            counts.reshape(-1)[np.asarray(rows, dtype=np.intp)[owner] * COUNTS_LEN + flat_idx] += sign * flat_cnt
            mine = np.asarray(total)[owner]
            if mine.any():  # the total row: buckets repeat across endpoints, so summed first
                at, values = flat_idx[mine], flat_cnt[mine]
                if int(values.sum()) < 1 << 53:  # float64 weights: exact below 2**53
                    summed = np.bincount(at, weights=values, minlength=COUNTS_LEN).astype(np.int64)
                    counts[self.total_row] += sign * summed
                else:
                    np.add.at(counts[self.total_row], at, sign * values)
        tot = [0, 0, 0, 0]
        lo, hi = _NONE_MIN, _NONE_MAX  # the total row's, over the window's endpoints in it
        for e, h, t in zip(rows, hs, total):
            if not h["count"]:
                continue
            figures = (int(h["count"]), int(h["overflow"]), int(h["clamped"]), int(h["sum"]))
            fig = self._hist[kind][e]
            for i, v in enumerate(figures):
                fig[i] += sign * v
                if t:
                    tot[i] += sign * v
            if slot is not None:
                m, x = int(h["min"]), int(h["max"])
                self._min[slot, e, k] = min(int(self._min[slot, e, k]), m)
                self._max[slot, e, k] = max(int(self._max[slot, e, k]), x)
                if t:
                    lo, hi = min(lo, m), max(hi, x)
        fig = self._hist[kind][self.total_row]
        for i, v in enumerate(tot):
            fig[i] += v
        if slot is not None and hi != _NONE_MAX:
            r = self.total_row
            self._min[slot, r, k] = min(int(self._min[slot, r, k]), lo)
            self._max[slot, r, k] = max(int(self._max[slot, r, k]), hi)

    def _apply(self, endpoint: int, d: dict[str, Any], sign: int, slot: int | None) -> None:
        rows = (endpoint, self.total_row) if endpoint in self._in_total else (endpoint,)
        by_class = np.asarray(d["errors_by_class"], dtype=np.int64)
        for row in rows:
            scope = self._scope[row]
            scope[0] += sign * int(d["requests"])
            scope[1] += sign * int(d["errors"])
            scope[2] += sign * int(d["bytes"])
            self._errors[row, : len(by_class)] += sign * by_class
        for k, kind in enumerate(KINDS):
            h = d[kind]
            if not h["count"]:
                continue
            idx = np.frombuffer(h["idx"], dtype="<u4").astype(np.intp)
            cnt = np.frombuffer(h["cnt"], dtype="<i8")
            figures = (int(h["count"]), int(h["overflow"]), int(h["clamped"]), int(h["sum"]))
            for row in rows:
                if len(idx):
                    counts = self._counts[kind][row]
                    if sign > 0:
                        counts[idx] += cnt  # distinct indices: a fancy add is exact
                    else:
                        counts[idx] -= cnt
                fig = self._hist[kind][row]
                for i, v in enumerate(figures):
                    fig[i] += sign * v
                if slot is not None:
                    self._min[slot, row, k] = min(int(self._min[slot, row, k]), int(h["min"]))
                    self._max[slot, row, k] = max(int(self._max[slot, row, k]), int(h["max"]))

    def stats(self, row: int, duration_s: float) -> Stats:
        """The span's stats of a row (an endpoint index, or ``total_row``): a copy."""
        s = Stats(duration_s)
        s.requests, s.errors, s.bytes = self._scope[row]
        s.errors_by_class = self._errors[row].copy()
        lows = self._min[:, row, :].min(axis=0).tolist()
        highs = self._max[:, row, :].max(axis=0).tolist()
        for k, kind in enumerate(KINDS):
            count, overflow, clamped, total = self._hist[kind][row]
            if not count:
                continue
            h: Histogram = getattr(s, kind)
            if count > overflow:
                h._counts = self._counts[kind][row].copy()
            h.count, h.overflow, h.clamped, h.sum_ns = count, overflow, clamped, total
            h.min_ns, h.max_ns = lows[k], highs[k]
        return s
