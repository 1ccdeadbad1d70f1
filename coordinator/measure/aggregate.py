"""Sample batches -> per-window, per-endpoint and per-stage statistics.

A sample's window is chosen by when it completed (``end_ns // window_ns``), its stage by
when it was meant to be sent (the stage that planned it). Agents group their records so
before they send (agents/aggregate.py: an ``Aggregate`` per batch); a raw batch
(HORDE_SAMPLES=raw) is grouped here with numpy the same way. Every (window, endpoint,
stage) group lands in two accumulators: the window's per-endpoint ``Stats`` and the
cumulative (endpoint, stage) ``Stats``; the two paths give the same figures, bucket for
bucket (tests/coordinator/measure/test_aggregated_batches.py). Beside them, per (endpoint,
stage), the latency with the generator-queue wait taken out (``generator_queueing``).
Closed windows are kept in sparse form, so memory grows with windows x endpoints, never
with requests.

Pure: no clock, no I/O. The caller decides when windows close (``close_until`` with the
agents' low watermark, ``close_all`` at the end of the run).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from horde.agents.samples import (
    ERROR_MASK,
    GENERATOR_QUEUED,
    SAMPLE_DTYPE,
    Aggregate,
    Batch,
    ErrorClass,
    known_classes,
)
from horde.coordinator.measure.blocks import BlockPool, StatsBlock, select_groups
from horde.coordinator.measure.histogram import Histogram, histograms_by_group
from horde.coordinator.measure.sliding import SlidingSum
from horde.coordinator.measure.stats import DEFAULT_QUANTILES, N_ERROR_CLASSES, Stats, quantile_key
from horde.coordinator.measure.window import ClosedWindow, Window, fold_readings, merged_stats

__all__ = ["DEFAULT_QUANTILES", "N_ERROR_CLASSES", "Aggregator", "Stats", "Window", "quantile_key"]


_CHUNK = 1 << 18  # samples per vectorised pass (keeps int64 group sums exact)
WINDOWS_PER_BLOCK = 4  # open windows that share one StatsBlock


class Aggregator:
    """Folds batches into windows (by completion time) and stages (by intended time).

    ``keep_windows`` bounds how many closed windows stay stored (None: all of them);
    a late sample for a window already dropped still counts in the cumulative stats.
    ``sliding``: the spans (in windows) ``recent`` is asked for on every window, such as the
    alert rules' 10: each is kept as a running sum (measure/sliding.py) instead of re-merged.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        stage_ends_ns: Sequence[int],
        stage_names: Sequence[str],
        window_ns: int = 1_000_000_000,
        keep_windows: int | None = None,
        not_in_total: Sequence[str] = (),
        sliding: Sequence[int] = (),
    ) -> None:
        """`not_in_total`: endpoints that are not HTTP requests of their own (a flow's whole-flow
        entry, whose steps are counted already): kept per endpoint, left out of totals."""
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        if len(stage_ends_ns) != len(stage_names) or not stage_names:
            raise ValueError("stage_ends_ns and stage_names must be non-empty and of equal length")
        ends = np.asarray(stage_ends_ns, dtype=np.int64)
        if np.any(np.diff(ends) < 0) or ends[0] < 0:
            raise ValueError("stage_ends_ns must be cumulative (non-decreasing, from 0)")
        if window_ns <= 0:
            raise ValueError("window_ns must be positive")
        if len(set(endpoints)) != len(endpoints) or len(set(stage_names)) != len(stage_names):
            raise ValueError("endpoint and stage names must be unique")
        self.endpoints: tuple[str, ...] = tuple(endpoints)
        self._in_total = [i for i, e in enumerate(self.endpoints) if e not in set(not_in_total)]
        self._in_total_set = set(self._in_total)
        self.stage_names: tuple[str, ...] = tuple(stage_names)
        self.window_ns = int(window_ns)
        self.keep_windows = keep_windows
        self._stage_ends = ends
        self._n_endpoints = len(self.endpoints)
        self._n_stages = len(self.stage_names)
        self._window_s = self.window_ns / 1e9
        # cumulative[e][s]
        # cumulative[e][s]: rows e * n_stages + s of one block (coordinator/measure/blocks.py)
        n_s = self._n_stages
        self._cum = StatsBlock(self._n_endpoints * n_s, 0.0, extra=("latency_unqueued",))
        self._cumulative = [[self._cum.stats(e * n_s + s) for s in range(n_s)] for e in range(self._n_endpoints)]
        # Latency with the generator-queue wait taken out, and the requests that waited, per (e, s).
        self._unqueued = [
            [self._cum.histogram("latency_unqueued", e * n_s + s) for s in range(n_s)] for e in range(self._n_endpoints)
        ]
        self._generator_queued = np.zeros((len(self.endpoints), len(self.stage_names)), dtype=np.int64)
        # Open windows' endpoint stats: WINDOWS_PER_BLOCK consecutive windows share one block
        # (window w, endpoint e at row (w % WINDOWS_PER_BLOCK) * endpoints + e), so an agent's
        # batch, whose groups span a window or two, lands in one add per block, not one per window.
        self._open_blocks: dict[int, StatsBlock] = {}  # w // WINDOWS_PER_BLOCK -> its block
        self._pool = BlockPool()  # blocks of closed windows, reused once no window reads them
        self._open_readings: dict[int, dict[int, dict[str, Any]]] = {}  # window -> agent -> readings
        self._closed: dict[int, ClosedWindow] = {}
        self._next_close = 0  # every window below this index has been closed
        self._last_data_window = -1  # highest window index with a sample
        self._watermarks: dict[int, int] = {}
        self._final: set[int] = set()
        self.late_samples = 0
        if keep_windows is not None and any(n > keep_windows for n in sliding):
            raise ValueError("a sliding span longer than keep_windows: the window leaving it would be gone")
        self._sliding = {n: SlidingSum(n, self._n_endpoints, self._in_total) for n in sorted(set(sliding))}

    # -- ingest ------------------------------------------------------------------------

    def add(self, batch: Batch) -> None:
        agent = batch.agent
        samples = batch.samples
        if samples.dtype != SAMPLE_DTYPE:
            raise TypeError(f"agent {agent} batch {batch.seq}: samples dtype {samples.dtype} is not SAMPLE_DTYPE")
        if len(samples) and int(samples["endpoint"].max()) >= self._n_endpoints:
            bad = int(samples["endpoint"].max())
            raise ValueError(
                f"agent {agent} batch {batch.seq}: endpoint index {bad} but only {self._n_endpoints} endpoints"
            )
        self._watermarks[agent] = max(self._watermarks.get(agent, batch.watermark_ns), batch.watermark_ns)
        if batch.final:
            self._final.add(agent)
        self._add_readings(batch)
        if batch.agg is not None:
            self._add_aggregate(batch.agg, agent, batch.seq)
        for start in range(0, len(samples), _CHUNK):
            self._add_samples(samples[start : start + _CHUNK])

    def _add_readings(self, batch: Batch) -> None:
        # A watermark on a window boundary closes the window before it: the readings
        # describe the interval that ends there.
        index = max(0, (batch.watermark_ns - 1) // self.window_ns)
        if index < self._next_close:
            stored = self._closed.get(index)
            if stored is not None:
                stored.generator[batch.agent] = fold_readings(stored.generator.get(batch.agent), batch)
            return
        per_agent = self._open_readings.setdefault(index, {})
        per_agent[batch.agent] = fold_readings(per_agent.get(batch.agent), batch)

    def _add_samples(self, samples: np.ndarray) -> None:
        if len(samples) == 0:
            return
        n_e, n_s = self._n_endpoints, self._n_stages
        end = samples["end_ns"]
        intended = samples["intended_ns"]
        sent = samples["sent_ns"]
        window = np.maximum(end // self.window_ns, 0)
        stage = np.minimum(np.searchsorted(self._stage_ends, intended, side="right"), n_s - 1)
        w_min = int(window.min())
        n_windows = int(window.max()) - w_min + 1
        key = ((window - w_min) * n_e + samples["endpoint"]) * n_s + stage
        n_keys = n_windows * n_e * n_s
        if n_keys <= 4 * len(samples) + 4096:
            # Few possible keys (the usual batch spans a window or two): a counting pass
            # and a lookup table group in O(n), no sort.
            present = np.flatnonzero(np.bincount(key, minlength=n_keys))
            lookup = np.empty(n_keys, dtype=np.int64)
            lookup[present] = np.arange(len(present))
            group = lookup[key]
        else:
            present, group = np.unique(key, return_inverse=True)
            group = group.ravel()
        n_groups = len(present)

        latency_ns = end - intended
        latency = histograms_by_group(latency_ns, group, n_groups)
        service = histograms_by_group(end - sent, group, n_groups)
        lag = histograms_by_group(sent - intended, group, n_groups)
        flags = samples["error"]
        error = known_classes(flags & ERROR_MASK).astype(np.int64)
        by_class = np.bincount(group * N_ERROR_CLASSES + error, minlength=n_groups * N_ERROR_CLASSES)
        by_class = by_class.reshape(n_groups, N_ERROR_CLASSES)
        nbytes = np.zeros(n_groups, dtype=np.int64)
        np.add.at(nbytes, group, samples["bytes"].astype(np.int64))
        queued = (flags & GENERATOR_QUEUED) != 0
        unqueued = latency
        queued_per_group = np.zeros(n_groups, dtype=np.int64)
        if bool(queued.any()):
            queued_per_group = np.bincount(group[queued], minlength=n_groups)
            unqueued = histograms_by_group(np.where(queued, end - sent, latency_ns), group, n_groups)

        for g, k in enumerate(present.tolist()):
            s_idx = k % n_s
            e_idx = (k // n_s) % n_e
            w_idx = k // (n_s * n_e) + w_min
            part = Stats(self._window_s)
            part.requests = latency[g].count
            part.errors_by_class = by_class[g].copy()
            part.errors = part.requests - int(by_class[g, ErrorClass.OK])
            part.bytes = int(nbytes[g])
            part.latency, part.service_time, part.send_lag = latency[g], service[g], lag[g]
            self._unqueued[e_idx][s_idx].merge(unqueued[g])
            self._generator_queued[e_idx, s_idx] += int(queued_per_group[g])
            self._cumulative[e_idx][s_idx].merge(part)  # copies, never keeps, part's arrays
            self._fold_window(w_idx, e_idx, part)

    def _fold_window(self, w_idx: int, e_idx: int, part: Stats) -> None:
        """One group's stats into its window (open, or a closed one as a late part); `part` may be kept."""
        if w_idx > self._last_data_window:
            self._last_data_window = w_idx
        if w_idx >= self._next_close:
            self._window_block(w_idx).stats(self._window_row(w_idx, e_idx)).merge(part)
        else:
            self.late_samples += part.requests
            stored = self._closed.get(w_idx)
            if stored is not None:
                old = stored.stats.get(e_idx)
                merged = Stats.from_sparse(old) if old is not None else Stats(self._window_s)
                stored.stats[e_idx] = merged.merge(part).to_sparse()
                if self._sliding:
                    late = part.to_sparse()
                    for n, sums in self._sliding.items():
                        if w_idx >= self._next_close - n:  # still in that span
                            sums.add(w_idx, e_idx, late)

    def _window_block(self, w_idx: int) -> StatsBlock:
        key = w_idx // WINDOWS_PER_BLOCK
        block = self._open_blocks.get(key)
        if block is None:
            block = self._open_blocks[key] = self._pool.take(WINDOWS_PER_BLOCK * self._n_endpoints, self._window_s)
        return block

    def _window_row(self, w_idx: Any, e_idx: Any) -> Any:
        """The row of (window, endpoint) in its window block (ints or arrays)."""
        return (w_idx % WINDOWS_PER_BLOCK) * self._n_endpoints + e_idx

    def _add_aggregate(self, agg: Aggregate, agent: int, seq: int) -> None:
        """An agent's aggregated batch: its groups' buckets are added with one np.add.at per
        histogram kind into the cumulative (endpoint, stage) block and into each open
        window's endpoint block; groups of windows already closed are late."""
        groups = agg.groups
        if len(groups) == 0:
            return
        endpoints = groups["endpoint"].astype(np.int64)
        stages = groups["stage"].astype(np.int64)
        if int(endpoints.max()) >= self._n_endpoints or int(stages.max()) >= self._n_stages:
            raise ValueError(
                f"agent {agent} batch {seq}: a group's endpoint or stage index is beyond this run's "
                f"{self._n_endpoints} endpoints and {self._n_stages} stages"
            )
        windows = groups["window"].astype(np.int64)
        self._cum.add_aggregate(
            agg, endpoints * self._n_stages + stages, extra={"latency_unqueued": "latency_unqueued"}
        )
        np.add.at(self._generator_queued, (endpoints, stages), groups["generator_queued"].astype(np.int64))
        w_lo, w_hi = int(windows.min()), int(windows.max())
        self._last_data_window = max(self._last_data_window, w_hi)
        if w_lo >= self._next_close and w_lo // WINDOWS_PER_BLOCK == w_hi // WINDOWS_PER_BLOCK:
            # The usual batch: every group in open windows of one block, added at once.
            self._window_block(w_lo).add_aggregate(agg, self._window_row(windows, endpoints))
            return
        for w_idx in np.unique(windows).tolist():
            mask = windows == w_idx
            part = agg if bool(mask.all()) else select_groups(agg, mask)
            if w_idx >= self._next_close:
                self._window_block(w_idx).add_aggregate(
                    part, self._window_row(w_idx, part.groups["endpoint"].astype(np.int64))
                )
            else:  # late: one endpoint's stats at a time into the stored window
                for e_idx in np.unique(part.groups["endpoint"]).tolist():
                    late = StatsBlock(1, self._window_s)
                    mine = part.groups["endpoint"] == e_idx
                    late.add_aggregate(select_groups(part, mine), np.zeros(int(mine.sum()), dtype=np.int64))
                    late.sync()
                    self._fold_window(w_idx, e_idx, late.stats(0))

    # -- windows -----------------------------------------------------------------------

    def close_until(self, watermark_ns: int) -> list[Window]:
        """Close, in index order, every window ending at or before ``watermark_ns`` that
        is still open, empty windows included (from window 0 on)."""
        upto = watermark_ns // self.window_ns  # windows [.., upto) end at or before it
        closed: list[Window] = []
        for index in range(self._next_close, upto):
            key, slot = divmod(index, WINDOWS_PER_BLOCK)
            # A block's last window takes it to the pool, for reuse once no closed window reads it.
            block = self._open_blocks.pop(key, None) if slot == WINDOWS_PER_BLOCK - 1 else self._open_blocks.get(key)
            per_endpoint: dict[int, Stats] = {}
            if block is not None:
                block.sync()
                base = slot * self._n_endpoints
                per_endpoint = {
                    row - base: st for row, st in block.stats_by_row.items() if base <= row < base + self._n_endpoints
                }
            generator = self._open_readings.pop(index, {})
            window = self._make_window(index, per_endpoint, generator)
            stored = self._closed[index] = ClosedWindow(
                stats={e: s.to_sparse() for e, s in per_endpoint.items()}, generator=generator
            )
            window.sparse = {self.endpoints[e]: stored.stats[e] for e in sorted(stored.stats)}
            if block is not None:
                block.finalize(slot * self._n_endpoints, stored.stats)
                if slot == WINDOWS_PER_BLOCK - 1:
                    self._pool.give(block)
            self._slide(index, stored)
            closed.append(window)
        self._next_close = max(self._next_close, upto)
        if self.keep_windows is not None:
            for index in [i for i in self._closed if i < self._next_close - self.keep_windows]:
                del self._closed[index]
        return closed

    def _slide(self, index: int, stored: ClosedWindow) -> None:
        """Window `index` closed: it enters each running sum, the window n before it leaves."""
        for n, sums in self._sliding.items():
            leaving = self._closed.get(index - n)
            if leaving is not None:
                sums.remove_window(leaving.stats)
            sums.start_window(index)
            sums.add_window(index, stored.stats)

    def close_all(self) -> list[Window]:
        """Close every window that holds samples or readings (end of run)."""
        return self.close_until(self._end_of_data_ns())

    def _end_of_data_ns(self) -> int:
        pending = [w for w in [self._last_data_window, *self._open_readings] if w >= self._next_close]
        return (max(pending) + 1) * self.window_ns if pending else 0

    def close_each(self, watermark_ns: int | None = None) -> Iterator[Window]:
        """close_until(watermark_ns) (None: close_all) one window at a time: each window is
        closed only once the caller has taken the one before, so what the caller reads then
        (``recent``, ``snapshot``) covers the windows up to that one, however many close at
        once (an agent that flushes every 2 s lets two windows close together)."""
        upto = (self._end_of_data_ns() if watermark_ns is None else watermark_ns) // self.window_ns
        while self._next_close < upto:
            yield from self.close_until((self._next_close + 1) * self.window_ns)

    def _make_window(self, index: int, per_endpoint: dict[int, Stats], generator: dict[int, dict[str, Any]]) -> Window:
        by_endpoint = {self.endpoints[e]: per_endpoint[e] for e in sorted(per_endpoint)}
        return Window(
            index=index,
            start_ns=index * self.window_ns,
            end_ns=(index + 1) * self.window_ns,
            by_endpoint=by_endpoint,
            total=merged_stats((st for e, st in per_endpoint.items() if e in self._in_total_set), self._window_s),
            generator=generator,
        )

    def closed_window(self, index: int) -> Window | None:
        """A stored closed window, rebuilt (late samples included); None if unknown."""
        stored = self._closed.get(index)
        if stored is None:
            return None
        per_endpoint = {e: Stats.from_sparse(d) for e, d in stored.stats.items()}
        return self._make_window(index, per_endpoint, stored.generator)

    @property
    def closed_windows(self) -> int:
        """How many windows have been closed (the next one to close has this index)."""
        return self._next_close

    # -- reading -----------------------------------------------------------------------

    def _endpoint_index(self, endpoint: str | None) -> list[int]:
        if endpoint is None:
            return list(self._in_total)
        try:
            return [self.endpoints.index(endpoint)]
        except ValueError:
            raise KeyError(f"unknown endpoint {endpoint!r}") from None

    def snapshot(self, endpoint: str | None = None, stage: str | None = None) -> Stats:
        """Cumulative stats of a scope. duration_s: a stage's planned duration for a stage
        scope, else 0 .. end of the last window with samples (at least one window)."""
        self._cum.sync()
        endpoints = self._endpoint_index(endpoint)
        if stage is None:
            stages = list(range(self._n_stages))
            windows = max(self._last_data_window + 1, 1)
            duration_s = windows * self._window_s
        else:
            try:
                s = self.stage_names.index(stage)
            except ValueError:
                raise KeyError(f"unknown stage {stage!r}") from None
            stages = [s]
            begin = int(self._stage_ends[s - 1]) if s else 0
            duration_s = (int(self._stage_ends[s]) - begin) / 1e9
        return merged_stats((self._cumulative[e][s] for e in endpoints for s in stages), duration_s)

    def generator_queueing(self, endpoint: str | None = None, stage: str | None = None) -> tuple[int, Histogram]:
        """(requests of the scope that waited for a free slot of their own agent, the scope's
        latency with that wait taken out: from the send instead of the intended time)."""
        self._cum.sync()
        endpoints = self._endpoint_index(endpoint)
        stages = list(range(self._n_stages)) if stage is None else [self.stage_names.index(stage)]
        out = Histogram()
        for e in endpoints:
            for s in stages:
                out.merge(self._unqueued[e][s])
        return int(self._generator_queued[np.ix_(endpoints, stages)].sum()), out

    def recent(self, n_windows: int, endpoint: str | None = None, exact: bool = False) -> Stats:
        """Merged stats of the last ``n_windows`` closed windows (sliding evaluation);
        duration_s covers those windows (fewer when fewer have closed). From the running sum
        when ``n_windows`` is one of ``sliding``, unless `exact` asks for the re-merge."""
        if n_windows <= 0:
            raise ValueError("n_windows must be positive")
        first = max(0, self._next_close - n_windows)
        endpoints = self._endpoint_index(endpoint)
        sums = None if exact else self._sliding.get(n_windows)
        if sums is not None:
            row = sums.total_row if endpoint is None else endpoints[0]
            return sums.stats(row, (self._next_close - first) * self._window_s)
        parts: list[Stats] = []
        for index in range(first, self._next_close):
            stored = self._closed.get(index)
            if stored is None:
                continue
            parts.extend(Stats.from_sparse(stored.stats[e]) for e in endpoints if e in stored.stats)
        return merged_stats(parts, (self._next_close - first) * self._window_s)

    @property
    def agents_seen(self) -> frozenset[int]:
        return frozenset(self._watermarks)

    @property
    def final_agents(self) -> frozenset[int]:
        return frozenset(self._final)

    @property
    def watermarks(self) -> dict[int, int]:
        """Per agent, the highest batch watermark seen."""
        return dict(self._watermarks)

    def low_watermark_ns(self, expected_agents: Iterable[int] | None = None) -> int | None:
        """The watermark every still-sending agent has passed: the minimum over agents
        that have not sent their final batch (an expected agent not heard from yet counts
        as 0). None when every agent is final (close_all then)."""
        agents = self._watermarks.keys() if expected_agents is None else expected_agents
        live = [self._watermarks.get(a, 0) for a in agents if a not in self._final]
        return min(live) if live else None
