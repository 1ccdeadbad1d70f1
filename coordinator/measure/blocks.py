"""Stats of many scopes whose bucket counts and error classes are rows of shared matrices.

The aggregator keeps its cumulative (endpoint, stage) stats in one block and each open
window's endpoint stats in another. An agent's aggregated batch then lands with one
scatter-add per histogram kind for all of its groups (``add_aggregate``), instead of a
numpy call per group: the coordinator's cost per batch follows its groups' buckets, not
numpy's per-call overhead. The ``Stats`` of a row is an ordinary ``Stats`` whose histogram
counts and error classes are views of the block's rows, so every reader and ``merge`` work
on it unchanged. The matrices are ``np.zeros`` (calloc): rows never written take no memory.

Pure: no clock, no I/O.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from horde.agents.histogram import COUNTS_LEN
from horde.agents.samples import Aggregate
from horde.coordinator.measure.histogram import GroupColumns, Histogram
from horde.coordinator.measure.stats import N_ERROR_CLASSES, Stats

KINDS = ("latency", "service_time", "send_lag")


_SYNC_SUM_NS = 1 << 61  # pending sums are written out before they could pass int64
_NO_MIN = np.iinfo(np.int64).max  # a pending minimum with no value yet
_MAX_RUNS = 16  # more ascending runs than this: one ufunc.at is cheaper than a fancy update a run


def scatter(op: np.ufunc, dst: np.ndarray, ix: np.ndarray, values: np.ndarray) -> None:
    """``op.at(dst, ix, values)``, done as a plain fancy update per strictly ascending run
    of `ix` (a run's indices are distinct, so the update is exact). A batch's groups come
    ordered by (window, endpoint, stage), so its bucket indices into a block are one run
    (a window block, one stage) or one run per window (the cumulative block), for each
    histogram kind in turn: ``ufunc.at``
    cost 1.4 ms for 50,000 buckets, the fancy update 0.19 ms."""
    if len(ix) == 0:
        return
    cuts = (np.flatnonzero(ix[1:] <= ix[:-1]) + 1).tolist()
    if len(cuts) >= _MAX_RUNS:
        op.at(dst, ix, values)
        return
    for lo, hi in zip([0, *cuts], [*cuts, len(ix)]):
        run = ix[lo:hi]
        dst[run] = op(dst[run], values[lo:hi])


class StatsBlock:
    """`rows` scopes of `duration_s`; ``extra`` names further histograms kept per row
    (``histogram(name, row)``), such as the latency with the generator-queue wait taken out.

    An aggregated batch's bucket counts land in the rows at once; its per-group figures
    (requests, errors, bytes; each histogram's count, overflow, clamped, min, max, sum)
    wait in pending int64 arrays until ``sync()`` writes them into the rows' Stats as exact
    Python ints. Whoever reads a row's Stats calls ``sync()`` first (the aggregator does).
    """

    def __init__(self, rows: int, duration_s: float, extra: tuple[str, ...] = ()) -> None:
        self.rows = rows
        self.duration_s = duration_s
        self._names = (*KINDS, *extra)
        self._index = {k: i for i, k in enumerate(self._names)}
        # One array for every histogram's counts (name, row, bucket): a batch's buckets of all
        # kinds land with one scatter, their flat indices ascending kind after kind.
        self._all = np.zeros((len(self._names), rows, COUNTS_LEN), dtype=np.int64)
        self._errors = np.zeros((rows, N_ERROR_CLASSES), dtype=np.int64)
        self.stats_by_row: dict[int, Stats] = {}
        self._extra: dict[str, dict[int, Histogram]] = {k: {} for k in extra}
        # pending figures, one matrix each: per row requests, errors, bytes, then per histogram
        # count, overflow, clamped, sum (columns 3 + 4 i ...); per row and histogram min, max
        self._p_add = np.zeros((rows, 3 + 4 * len(self._names)), dtype=np.int64)
        self._sum_cols = [3 + 4 * i + 3 for i in range(len(self._names))]
        self._p_min = np.full((rows, len(self._names)), _NO_MIN, dtype=np.int64)
        self._p_max = np.full((rows, len(self._names)), -1, dtype=np.int64)
        self._pending_rows: set[int] = set()
        self._final: dict[str, list[np.ndarray]] = {k: [] for k in self._names}  # reset() zeroes these
        self._final_rows: list[int] = []

    def _counts(self, name: str) -> np.ndarray:
        return self._all[self._index[name]]

    def stats(self, row: int) -> Stats:
        s = self.stats_by_row.get(row)
        if s is None:
            s = Stats(self.duration_s)
            s.errors_by_class = self._errors[row]
            for kind in KINDS:
                getattr(s, kind)._counts = self._all[self._index[kind], row]
            self.stats_by_row[row] = s
        return s

    def histogram(self, name: str, row: int) -> Histogram:
        h = self._extra[name].get(row)
        if h is None:
            h = self._extra[name][row] = Histogram()
            h._counts = self._all[self._index[name], row]
        return h

    def sync(self) -> None:
        """Write the pending figures into the rows' Stats and histograms."""
        if not self._pending_rows:
            return
        rows = sorted(self._pending_rows)
        adds = self._p_add[rows].tolist()
        lows = self._p_min[rows].tolist()
        highs = self._p_max[rows].tolist()
        for row, a, lo, hi in zip(rows, adds, lows, highs):
            s = self.stats(row)
            s.requests += a[0]
            s.errors += a[1]
            s.bytes += a[2]
            for i, name in enumerate(self._names):
                count, overflow, clamped, total = a[3 + 4 * i : 7 + 4 * i]
                if count == 0:
                    continue
                h = getattr(s, name) if name in KINDS else self.histogram(name, row)
                h.add_figures(count, overflow, clamped, lo[i], hi[i], total)
        self._p_add[rows] = 0
        self._p_min[rows] = _NO_MIN
        self._p_max[rows] = -1
        self._pending_rows.clear()

    # -- reuse (docs/scale.md "Window blocks reused") ---------------------------------------

    def finalize(self, base: int, sparse_by_offset: dict[int, dict[str, Any]]) -> None:
        """Rows ``base + e`` are final (their window closed; nothing adds to them again) with
        the non-zero buckets of ``sparse_by_offset[e]`` (``Stats.to_sparse()``): noted, so
        that ``reset`` zeroes exactly those, not whole rows."""
        for e, d in sparse_by_offset.items():
            row = base + e
            self._final_rows.append(row)
            for kind in KINDS:
                idx = np.frombuffer(d[kind]["idx"], dtype="<u4")
                if len(idx):
                    self._final[kind].append(idx.astype(np.int64) + row * COUNTS_LEN)

    def retire(self) -> None:
        """Its windows are closed: it forgets its rows' Stats (the windows handed out keep theirs)."""
        self.sync()
        self.stats_by_row = {}
        self._extra = {k: {} for k in self._extra}

    def reusable(self) -> bool:
        """No view of its rows is alive any more: every Stats or histogram of a closed window
        read from it is gone. Each numpy view holds a reference to the array it views, so the
        arrays' reference counts say it, against a control array referenced once as each of
        them is (by its attribute): counted the same way, so whatever the interpreter adds
        for the counting itself cancels out."""
        if self.stats_by_row:
            return False
        control = np.empty(0)
        control_refs, *refs = [sys.getrefcount(a) for a in (control, self._all, self._errors)]
        return all(n <= control_refs for n in refs)

    def reset(self) -> None:
        """Zero what its closed windows wrote (``finalize``), for the next windows to reuse
        its pages: a fresh block faults in a page per bucket range it is written at."""
        for kind, parts in self._final.items():
            if parts:
                self._counts(kind).reshape(-1)[np.concatenate(parts)] = 0
            parts.clear()
        self._errors[self._final_rows] = 0
        self._final_rows.clear()

    def add_aggregate(self, agg: Aggregate, group_rows: np.ndarray, extra: dict[str, str] | None = None) -> None:
        """Add the groups of `agg` (group g into row group_rows[g]; rows may repeat).
        `extra` maps an extra histogram of this block to the aggregate's kind it takes."""
        group_rows = np.asarray(group_rows, dtype=np.int64)
        groups = agg.groups
        requests = groups["requests"].astype(np.int64)
        errors = groups["errors"].astype(np.int64)
        sources = {k: getattr(agg, k) for k in KINDS}
        for name, kind in (extra or {}).items():
            sources[name] = getattr(agg, kind) if getattr(agg, kind) is not None else agg.latency
        adds = np.zeros((len(group_rows), self._p_add.shape[1]), dtype=np.int64)
        adds[:, 0] = requests
        adds[:, 1] = requests - errors[:, 0]
        adds[:, 2] = groups["bytes"]
        top = max(int(g.scalars["sum"].max()) for g in sources.values())
        if top >= _SYNC_SUM_NS or int(self._p_add[:, self._sum_cols].max()) >= _SYNC_SUM_NS - top:
            self.sync()
            if top >= _SYNC_SUM_NS:  # one group's sum alone is that large: figures one by one
                self._add_figures_now(sources, group_rows)
                self._add_buckets(sources, group_rows, errors)
                self._pending_rows.update(group_rows.tolist())
                scatter(np.add, self._p_add, group_rows, adds)
                return
        self._add_buckets(sources, group_rows, errors)
        lows = np.full((len(group_rows), len(self._names)), _NO_MIN, dtype=np.int64)
        highs = np.full((len(group_rows), len(self._names)), -1, dtype=np.int64)
        for i, name in enumerate(self._names):
            grouped = sources.get(name)
            if grouped is None:
                continue
            sc = grouped.scalars
            for j, field in enumerate(("count", "overflow", "clamped", "sum")):
                adds[:, 3 + 4 * i + j] = sc[field]
            lows[:, i] = sc["min"]
            highs[:, i] = sc["max"]
        scatter(np.add, self._p_add, group_rows, adds)
        scatter(np.minimum, self._p_min, group_rows, lows)
        scatter(np.maximum, self._p_max, group_rows, highs)
        self._pending_rows.update(group_rows.tolist())

    def _add_buckets(self, sources: dict, group_rows: np.ndarray, errors: np.ndarray) -> None:
        scatter(np.add, self._errors, group_rows, errors)
        at, values = [], []
        for i, name in enumerate(self._names):
            grouped = sources.get(name)
            if grouped is not None and len(grouped.idx):
                bucket_rows = np.repeat(group_rows, np.diff(grouped.offsets))
                at.append((i * self.rows + bucket_rows) * COUNTS_LEN + grouped.idx)
                values.append(grouped.cnt.astype(np.int64))
        if at:
            scatter(np.add, self._all.reshape(-1), np.concatenate(at), np.concatenate(values))

    def _add_figures_now(self, sources: dict, group_rows: np.ndarray) -> None:
        rows = group_rows.tolist()
        for name, grouped in sources.items():
            cols = GroupColumns(grouped, with_buckets=False)
            for g, row in enumerate(rows):
                h = getattr(self.stats(row), name) if name in KINDS else self.histogram(name, row)
                cols.add_figures(h, g)


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


class BlockPool:
    """Window blocks of closed windows, kept to be reused once nothing reads them.

    At 1,000 endpoints x stages a window's block is ~40 MB of dense rows per histogram kind,
    written sparsely: a fresh one (mmap'd, as every allocation over 128 KiB in horde's
    processes) cost the coordinator a page fault per bucket range each batch touched.
    """

    def __init__(self, keep: int = 1) -> None:
        self.keep = keep
        self._retired: list[StatsBlock] = []
        self.reused = 0

    def give(self, block: StatsBlock) -> None:
        block.retire()
        self._retired.append(block)
        del self._retired[: max(0, len(self._retired) - self.keep)]

    def take(self, rows: int, duration_s: float) -> StatsBlock:
        for i, block in enumerate(self._retired):
            if block.rows == rows and block.duration_s == duration_s and block.reusable():
                del self._retired[i]
                block.reset()
                self.reused += 1
                return block
        return StatsBlock(rows, duration_s)
