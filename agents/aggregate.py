"""An agent's records, aggregated at flush time: what it sends instead of every sample.

Per (window, endpoint, stage) group: requests, generator-queued requests, error classes,
bytes, and histograms of latency, service time and send lag in the coordinator's bucket
layout (agents/histogram.py), so that merging them is exact; plus the sends per 100 ms.
A sample's window is chosen by when it ended (``end_ns // WINDOW_NS``), its stage by when
it was meant to be sent (the stage that planned it), exactly as the coordinator does with
raw samples (coordinator/measure/aggregate.py). When any request of the flush was held
back by the agent's own slots (generator queueing), a fourth histogram holds the latency
with that wait taken out (from the send instead of the intended time, for those requests):
the summary compares its percentiles with the latency's.

The work runs on the agent's event loop at every flush, so it is kept short: a flush of the
usual size takes agents/aggregate_fast.py's path, a fixed number of numpy calls (~0.15 ms
at 200 records, ~5 ms at 40,000: bench/agent_batch.py); anything else takes the general path
below, with the same result byte for byte. The per-request hot path stays one
``struct.pack_into``. Pure: no clock, no I/O.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from horde.agents.aggregate_fast import aggregate_fast
from horde.agents.histogram import CHUNK, GroupedHistogramBuilder, group_histograms
from horde.agents.samples import (
    ERROR_MASK,
    GENERATOR_QUEUED,
    GROUP_DTYPE,
    N_ERROR_CLASSES,
    SAMPLE_DTYPE,
    WINDOW_NS,
    Aggregate,
    known_classes,
    send_bins,
)
from horde.agents.spec import Stage

SAMPLES_ENV = "HORDE_SAMPLES"  # "raw": agents send every sample (debugging); unset or "aggregated": the default


def raw_samples_requested(environ: dict[str, str] | None = None) -> bool:
    """True when the agent's environment asks for raw samples (HORDE_SAMPLES=raw)."""
    env = os.environ if environ is None else environ
    return env.get(SAMPLES_ENV, "").strip().lower() == "raw"


def stage_ends_ns(stages: Sequence[Stage]) -> np.ndarray:
    """Cumulative stage ends in ns of run time, as the plan computes them (coordinator/plan.py)."""
    ends = []
    acc = 0.0
    for s in stages:
        acc += s.duration_s
        ends.append(int(round(acc * 1e9)))
    return np.asarray(ends or [0], dtype=np.int64)


def aggregate_records(samples: np.ndarray, stage_ends: np.ndarray, window_ns: int = WINDOW_NS) -> Aggregate:
    """SAMPLE_DTYPE records -> their Aggregate. Raises OverflowError when a group's sum of
    times does not fit in 64 bits (send that batch raw).

    A flush of the usual size takes the short path (agents/aggregate_fast.py: one pass of a
    few dozen numpy calls whatever the number of groups); a flush it does not cover (empty,
    over FAST_MAX_RECORDS, a time beyond the histograms' range or sums that float64 would
    not add exactly) takes the general path. Both give the same Aggregate, byte for byte.
    """
    if samples.dtype != SAMPLE_DTYPE:
        raise TypeError(f"samples must have SAMPLE_DTYPE, got {samples.dtype}")
    fast = aggregate_fast(samples, stage_ends, window_ns)
    return fast if fast is not None else aggregate_general(samples, stage_ends, window_ns)


def aggregate_general(samples: np.ndarray, stage_ends: np.ndarray, window_ns: int = WINDOW_NS) -> Aggregate:
    """The general path: any records. Two passes of CHUNK records: the group keys, then the
    histograms (temporaries that fit in cache are ~3x faster)."""
    if samples.dtype != SAMPLE_DTYPE:
        raise TypeError(f"samples must have SAMPLE_DTYPE, got {samples.dtype}")
    n = len(samples)
    first_bin, sends = send_bins(samples["sent_ns"])
    if n == 0:
        empty = group_histograms(np.empty(0, np.int64), np.empty(0, np.int64), 0)
        return Aggregate(window_ns, np.empty(0, GROUP_DTYPE), empty, empty, empty, None, first_bin, sends)
    n_s = len(stage_ends)
    n_e = int(samples["endpoint"].max()) + 1
    w_min = max(int(samples["end_ns"].min()) // window_ns, 0)
    key = np.empty(n, dtype=np.int64)
    for a in range(0, n, CHUNK):
        c = samples[a : a + CHUNK]
        window = np.maximum(c["end_ns"] // window_ns, 0) - w_min
        stage = np.minimum(np.searchsorted(stage_ends, c["intended_ns"], side="right"), n_s - 1)
        key[a : a + CHUNK] = (window * n_e + c["endpoint"]) * n_s + stage
    n_keys = (int(key.max()) // (n_e * n_s) + 1) * n_e * n_s
    if n_keys <= 4 * n + 4096:
        # Few possible keys (a flush spans a window or two): a counting pass and a lookup
        # table group in O(n), no sort.
        per_key = np.bincount(key, minlength=n_keys)
        present = np.flatnonzero(per_key)
        lookup = np.empty(n_keys, dtype=np.int64)
        lookup[present] = np.arange(len(present))
        group = lookup[key]
        requests = per_key[present]
    else:
        present, group, requests = np.unique(key, return_inverse=True, return_counts=True)
        group = group.ravel()
    n_groups = len(present)

    flags = samples["error"]
    queued = (flags & GENERATOR_QUEUED) != 0
    any_queued = bool(queued.any())
    groups = np.zeros(n_groups, dtype=GROUP_DTYPE)
    groups["window"] = present // (n_s * n_e) + w_min
    groups["endpoint"] = (present // n_s) % n_e
    groups["stage"] = present % n_s
    groups["requests"] = requests
    error = known_classes(flags & ERROR_MASK).astype(np.int64)
    groups["errors"] = np.bincount(group * N_ERROR_CLASSES + error, minlength=n_groups * N_ERROR_CLASSES).reshape(
        n_groups, N_ERROR_CLASSES
    )
    nbytes = np.zeros(n_groups, dtype=np.uint64)
    np.add.at(nbytes, group, samples["bytes"].astype(np.uint64))
    groups["bytes"] = nbytes
    if any_queued:
        groups["generator_queued"] = np.bincount(group[queued], minlength=n_groups)

    latency = GroupedHistogramBuilder(n_groups, n)
    service = GroupedHistogramBuilder(n_groups, n)
    lag = GroupedHistogramBuilder(n_groups, n)
    unqueued = GroupedHistogramBuilder(n_groups, n) if any_queued else None
    for a in range(0, n, CHUNK):
        c = samples[a : a + CHUNK]
        g = group[a : a + CHUNK]
        end, intended, sent = c["end_ns"], c["intended_ns"], c["sent_ns"]
        lat = end - intended
        svc = end - sent
        latency.add(lat, g)
        service.add(svc, g)
        lag.add(sent - intended, g)
        if unqueued is not None:
            unqueued.add(np.where(queued[a : a + CHUNK], svc, lat), g)
    return Aggregate(
        window_ns=window_ns,
        groups=groups,
        latency=latency.finish(),
        service_time=service.finish(),
        send_lag=lag.finish(),
        latency_unqueued=None if unqueued is None else unqueued.finish(),
        sends_first_bin=first_bin,
        sends=sends,
    )
