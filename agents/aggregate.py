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

The work is a few numpy passes over the flush's record buffer (~0.1 us a request, measured
by bench/cpu_per_request.py); the per-request hot path stays one ``struct.pack_into``.
Pure: no clock, no I/O.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from horde.agents.histogram import group_histograms
from horde.agents.samples import (
    ERROR_MASK,
    GENERATOR_QUEUED,
    GROUP_DTYPE,
    N_ERROR_CLASSES,
    SAMPLE_DTYPE,
    WINDOW_NS,
    Aggregate,
    ErrorClass,
    send_bins,
)
from horde.agents.spec import Stage

SAMPLES_ENV = "HORDE_SAMPLES"  # "raw": agents send every sample (debugging); unset or "aggregated": the default
_OTHER = int(ErrorClass.OTHER)


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
    times does not fit in 64 bits (send that batch raw)."""
    if samples.dtype != SAMPLE_DTYPE:
        raise TypeError(f"samples must have SAMPLE_DTYPE, got {samples.dtype}")
    n_s = len(stage_ends)
    end = samples["end_ns"]
    intended = samples["intended_ns"]
    sent = samples["sent_ns"]
    first_bin, sends = send_bins(sent)
    if len(samples) == 0:
        empty = group_histograms(np.empty(0, np.int64), np.empty(0, np.int64), 0)
        return Aggregate(window_ns, np.empty(0, GROUP_DTYPE), empty, empty, empty, None, first_bin, sends)
    window = np.maximum(end // window_ns, 0)
    stage = np.minimum(np.searchsorted(stage_ends, intended, side="right"), n_s - 1)
    endpoint = samples["endpoint"].astype(np.int64)
    n_e = int(endpoint.max()) + 1
    w_min = int(window.min())
    n_windows = int(window.max()) - w_min + 1
    key = ((window - w_min) * n_e + endpoint) * n_s + stage
    n_keys = n_windows * n_e * n_s
    if n_keys <= 4 * len(samples) + 4096:
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
    error = np.minimum(flags & ERROR_MASK, _OTHER).astype(np.int64)
    queued = (flags & GENERATOR_QUEUED) != 0
    groups = np.zeros(n_groups, dtype=GROUP_DTYPE)
    groups["window"] = present // (n_s * n_e) + w_min
    groups["endpoint"] = (present // n_s) % n_e
    groups["stage"] = present % n_s
    groups["requests"] = requests
    groups["errors"] = np.bincount(group * N_ERROR_CLASSES + error, minlength=n_groups * N_ERROR_CLASSES).reshape(
        n_groups, N_ERROR_CLASSES
    )
    nbytes = np.zeros(n_groups, dtype=np.uint64)
    np.add.at(nbytes, group, samples["bytes"].astype(np.uint64))
    groups["bytes"] = nbytes

    latency = end - intended
    unqueued = None
    if bool(queued.any()):
        groups["generator_queued"] = np.bincount(group[queued], minlength=n_groups)
        unqueued = group_histograms(np.where(queued, end - sent, latency), group, n_groups)
    return Aggregate(
        window_ns=window_ns,
        groups=groups,
        latency=group_histograms(latency, group, n_groups),
        service_time=group_histograms(end - sent, group, n_groups),
        send_lag=group_histograms(sent - intended, group, n_groups),
        latency_unqueued=unqueued,
        sends_first_bin=first_bin,
        sends=sends,
    )
