"""The short path of a flush's aggregation (agents/aggregate.py): the same Aggregate, cheaper.

The general path builds each histogram kind in a dense array of groups x 4,992 counts and
scans it for the non-zero buckets: at 200 records a flush over 3 endpoints that fixed cost
was ~0.6 ms, over 50 endpoints ~6 ms, on the agent's event loop (bench/agent_batch.py).
Here every figure comes from a fixed number of numpy calls over the flush's records, all
kinds at once:

- the three or four kinds' values in one (kinds, n) array, their bucket indices in one call;
- the buckets counted over keys (kind, group, bucket - the kind's lowest bucket in the
  flush): by a bincount when that key space is small next to the values, else by a sort;
- sums of times by a float64 bincount, exact because every partial sum stays below 2**53
  (checked: the largest value times the records); bytes likewise (n * 2**32 < 2**53);
- min and max by ``np.minimum.at`` / ``np.maximum.at`` over the flat (kind, group) index.

It returns None for what it does not cover (no records, more than FAST_MAX_RECORDS, a
value beyond the histograms' range, sums that might reach 2**53): the general path then.
Pure: no clock, no I/O.
"""

from __future__ import annotations

import numpy as np

from horde.agents.histogram import (
    CHUNK,
    COUNTS_LEN,
    GROUP_HIST_DTYPE,
    HIGHEST_TRACKABLE_NS,
    GroupedHistogramBuilder,
    GroupedHistograms,
    counts_index,
)
from horde.agents.samples import (
    ERROR_MASK,
    GENERATOR_QUEUED,
    GROUP_DTYPE,
    N_ERROR_CLASSES,
    Aggregate,
    known_classes,
    send_bins,
)

FAST_MAX_RECORDS = 1 << 20  # bytes sums stay exact in float64: 2**20 * 2**32 < 2**53
_F64_EXACT = 1 << 53
_I64_MAX = np.iinfo(np.int64).max
# Buckets are counted by a bincount over the key space when it is at most this many times
# the values counted (zeroing and scanning it is then cheaper than sorting the keys).
_DENSE_PER_VALUE = 4
SORTED_MAX_RECORDS = 4096  # up to this, one sort of all kinds' values (see _histograms_sorted)
_SORT_VALUE_BITS = 45  # HIGHEST_TRACKABLE_NS < 2**45: (kind, group) sorts above a value
_SORT_VALUE_MASK = (1 << _SORT_VALUE_BITS) - 1
_SORT_KG_BITS = 63 - _SORT_VALUE_BITS
_VALUE_CHUNK = 4096  # records per pass over the values: (kinds x this) int64 temporaries stay in cache


def aggregate_fast(samples: np.ndarray, stage_ends: np.ndarray, window_ns: int) -> Aggregate | None:
    """SAMPLE_DTYPE records -> their Aggregate, or None when the general path must do it."""
    n = len(samples)
    if n == 0 or n > FAST_MAX_RECORDS:
        return None
    flags = samples["error"]
    queued = (flags & GENERATOR_QUEUED) != 0
    any_queued = bool(queued.any())
    group, present, requests, w_min, n_e, n_s = _group_keys(samples, stage_ends, window_ns)
    q = queued if any_queued else None
    path = histogram_path(n, len(present))
    hists: list[GroupedHistograms] | None
    if path == "dense":
        hists = _histograms_dense(samples, q, group, len(present))
    elif path == "sorted":
        hists = _histograms_sorted(samples, q, group, len(present))
    else:
        hists = _histograms(samples, q, group, len(present), requests)
    if hists is None:
        return None
    n_groups = len(present)
    groups = np.zeros(n_groups, dtype=GROUP_DTYPE)
    groups["window"] = present // (n_s * n_e) + w_min
    groups["endpoint"] = (present // n_s) % n_e
    groups["stage"] = present % n_s
    groups["requests"] = requests
    error_bits = flags & ERROR_MASK
    if error_bits.any():
        error = known_classes(error_bits).astype(np.int64)
        error += group * N_ERROR_CLASSES
        groups["errors"] = np.bincount(error, minlength=n_groups * N_ERROR_CLASSES).reshape(n_groups, N_ERROR_CLASSES)
    else:
        groups["errors"][:, 0] = requests
    # float64 adds these exactly: at most 2**20 values below 2**32.
    groups["bytes"] = np.bincount(group, weights=samples["bytes"], minlength=n_groups).astype(np.uint64)
    if any_queued:
        groups["generator_queued"] = np.bincount(group[queued], minlength=n_groups)
    first_bin, sends = send_bins(samples["sent_ns"])
    return Aggregate(
        window_ns=window_ns,
        groups=groups,
        latency=hists[0],
        service_time=hists[1],
        send_lag=hists[2],
        latency_unqueued=hists[3] if any_queued else None,
        sends_first_bin=first_bin,
        sends=sends,
    )


def histogram_path(n: int, n_groups: int) -> str:
    """How the histograms of `n` records in `n_groups` groups are counted: "dense" (many
    records into few groups: the general path's dense counts array per kind), "sorted" (a
    small flush: one sort) or "compact" (bucket keys over the flush's range of buckets)."""
    if n_groups * COUNTS_LEN <= n:
        return "dense"
    return "sorted" if n <= SORTED_MAX_RECORDS else "compact"


def _group_keys(
    samples: np.ndarray, stage_ends: np.ndarray, window_ns: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int, int]:
    """(group of each record, the present keys ascending, requests per group, w_min, n_e, n_s),
    as the general path groups them (aggregate.py)."""
    n = len(samples)
    endpoint = samples["endpoint"]
    end = samples["end_ns"]
    n_s = len(stage_ends)
    n_e = int(endpoint.max()) + 1
    w_min = max(int(end.min()) // window_ns, 0)
    key = np.empty(n, dtype=np.int64)
    for a in range(0, n, CHUNK):
        k = key[a : a + CHUNK]
        np.floor_divide(end[a : a + CHUNK], window_ns, out=k)
        np.maximum(k, 0, out=k)
        k -= w_min
        k *= n_e
        k += endpoint[a : a + CHUNK]
        k *= n_s
        stage = np.searchsorted(stage_ends, samples["intended_ns"][a : a + CHUNK], side="right")
        k += np.minimum(stage, n_s - 1, out=stage)
    n_keys = (int(key.max()) // (n_e * n_s) + 1) * n_e * n_s
    if n_keys <= 4 * n + 4096:
        per_key = np.bincount(key, minlength=n_keys)
        present = np.flatnonzero(per_key)
        lookup = np.empty(n_keys, dtype=np.int64)
        lookup[present] = np.arange(len(present))
        return lookup[key], present, per_key[present], w_min, n_e, n_s
    present, group, requests = np.unique(key, return_inverse=True, return_counts=True)
    return group.ravel(), present, requests, w_min, n_e, n_s


def _histograms(
    samples: np.ndarray, queued: np.ndarray | None, group: np.ndarray, n_groups: int, requests: np.ndarray
) -> list[GroupedHistograms] | None:
    """Latency, service time, send lag (and the latency without generator queueing when
    `queued` is given) per group; None when a value or a sum is beyond the short path."""
    n = len(samples)
    k_all = 3 if queued is None else 4
    n_kg = k_all * n_groups
    kind_base = np.arange(0, n_kg, n_groups, dtype=np.int64)[:, None]
    end, intended, sent = samples["end_ns"], samples["intended_ns"], samples["sent_ns"]
    mins = np.full(n_kg, _I64_MAX, dtype=np.int64)
    maxs = np.full(n_kg, -1, dtype=np.int64)
    sums = np.zeros(n_kg, dtype=np.int64)
    clamped = np.zeros(n_kg, dtype=np.int64)
    idx = np.empty((k_all, n), dtype=np.int16)  # counts indices (< COUNTS_LEN < 2**15)
    vmax = 0
    # Chunks of CHUNK records: temporaries that stay in cache (3x faster than whole columns).
    for a in range(0, n, _VALUE_CHUNK):
        b = min(a + _VALUE_CHUNK, n)
        v = np.empty((k_all, b - a), dtype=np.int64)
        np.subtract(end[a:b], intended[a:b], out=v[0])
        np.subtract(end[a:b], sent[a:b], out=v[1])
        np.subtract(sent[a:b], intended[a:b], out=v[2])
        if queued is not None:
            np.copyto(v[3], v[0])
            np.copyto(v[3], v[1], where=queued[a:b])
        kg = (kind_base + group[a:b]).ravel()
        flat = v.ravel()
        if int(flat.min()) < 0:
            negative = flat < 0
            clamped += np.bincount(kg[negative], minlength=n_kg)
            flat[negative] = 0
        cmax = int(flat.max())
        if cmax > HIGHEST_TRACKABLE_NS or cmax * (b - a) >= _F64_EXACT:
            return None
        vmax = max(vmax, cmax)
        np.minimum.at(mins, kg, flat)
        np.maximum.at(maxs, kg, flat)
        # Exact: every partial sum of this chunk is an integer below 2**53.
        sums += np.bincount(kg, weights=flat, minlength=n_kg).astype(np.int64)
        idx[:, a:b] = counts_index(v)
    if vmax * n > _I64_MAX:
        return None

    lo = idx.min(axis=1).astype(np.int64)
    width = int((idx.max(axis=1) - lo).max()) + 1
    space = n_kg * width
    dense = space <= _DENSE_PER_VALUE * k_all * n + 4096
    per_key = np.zeros(space if dense else 0, dtype=np.int64)
    hkeys = np.empty(0 if dense else k_all * n, dtype=np.int32 if space < 2**31 else np.int64)
    base = (kind_base * width - lo[:, None]).astype(np.int64)
    for a in range(0, n, _VALUE_CHUNK):
        b = min(a + _VALUE_CHUNK, n)
        h = group[a:b] * width + base
        h += idx[:, a:b]
        if dense:
            np.add.at(per_key, h.ravel(), 1)
        else:
            hkeys[k_all * a : k_all * b] = h.ravel()
    if dense:
        keys = np.flatnonzero(per_key)
        cnt = per_key[keys]
    else:
        s = np.sort(hkeys)
        change = np.empty(len(s), dtype=bool)
        change[0] = True
        np.not_equal(s[1:], s[:-1], out=change[1:])
        starts = np.flatnonzero(change)
        keys = s[starts].astype(np.int64)
        cnt = np.empty(len(starts), dtype=np.int64)
        cnt[:-1] = starts[1:] - starts[:-1]
        cnt[-1] = len(s) - starts[-1]
    key_kg = keys // width
    bucket = keys - key_kg * width + lo[key_kg // n_groups]
    bounds = np.searchsorted(key_kg, np.arange(n_kg + 1)).astype(np.int64)
    idx16 = bucket.astype("<u2")
    cnt32 = cnt.astype("<u4")

    scalars = np.zeros(n_kg, dtype=GROUP_HIST_DTYPE)
    scalars["count"] = np.tile(requests, k_all)
    scalars["clamped"] = clamped
    scalars["min"] = mins
    scalars["max"] = maxs
    scalars["sum"] = sums
    return _split_kinds(scalars, bounds, idx16, cnt32, k_all, n_groups)


def _histograms_sorted(
    samples: np.ndarray, queued: np.ndarray | None, group: np.ndarray, n_groups: int
) -> list[GroupedHistograms] | None:
    """As _histograms, for a small flush: one sort of (kind, group, value) gives every figure.
    Sorted by (kind, group) then value, a group's min and max are its first and last value,
    its buckets come in ascending order (the index grows with the value), its sum is one
    ``np.add.reduceat``; every (kind, group) has a value (a group has a request)."""
    k_all = 3 if queued is None else 4
    n_kg = k_all * n_groups
    if n_kg >= 1 << _SORT_KG_BITS:
        return None
    end, intended, sent = samples["end_ns"], samples["intended_ns"], samples["sent_ns"]
    v = np.empty((k_all, len(samples)), dtype=np.int64)
    np.subtract(end, intended, out=v[0])
    np.subtract(end, sent, out=v[1])
    np.subtract(sent, intended, out=v[2])
    if queued is not None:
        np.copyto(v[3], v[0])
        np.copyto(v[3], v[1], where=queued)
    kg = np.arange(0, n_kg, n_groups, dtype=np.int64)[:, None] + group
    flat = v.ravel()
    negative = None
    if int(flat.min()) < 0:
        negative = flat < 0
        flat[negative] = 0
    vmax = int(flat.max())
    if vmax > HIGHEST_TRACKABLE_NS or vmax * len(samples) > _I64_MAX:
        return None
    # (kind, group) above the 45 bits of a value (HIGHEST_TRACKABLE_NS < 2**45).
    s = kg.ravel() << _SORT_VALUE_BITS
    s |= flat
    s.sort()
    s_kg = s >> _SORT_VALUE_BITS
    s &= _SORT_VALUE_MASK  # s is the values now, sorted within each (kind, group)
    first = np.searchsorted(s_kg, np.arange(n_kg + 1))
    clamped = np.bincount(kg.ravel()[negative], minlength=n_kg) if negative is not None else 0
    hkey = s_kg * COUNTS_LEN
    hkey += counts_index(s)
    change = np.empty(len(hkey), dtype=bool)
    change[0] = True
    np.not_equal(hkey[1:], hkey[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    keys = hkey[starts]
    cnt = np.empty(len(starts), dtype="<u4")
    np.subtract(starts[1:], starts[:-1], out=cnt[:-1], casting="unsafe")
    cnt[-1] = len(hkey) - starts[-1]
    key_kg = keys // COUNTS_LEN
    idx16 = (keys - key_kg * COUNTS_LEN).astype("<u2")
    bounds = np.searchsorted(key_kg, np.arange(n_kg + 1))
    scalars = np.zeros(n_kg, dtype=GROUP_HIST_DTYPE)
    scalars["count"] = first[1:] - first[:-1]
    scalars["clamped"] = clamped
    scalars["min"] = s[first[:-1]]
    scalars["max"] = s[first[1:] - 1]
    scalars["sum"] = np.add.reduceat(s, first[:-1])
    return _split_kinds(scalars, bounds, idx16, cnt, k_all, n_groups)


def _split_kinds(
    scalars: np.ndarray, bounds: np.ndarray, idx16: np.ndarray, cnt32: np.ndarray, k_all: int, n_groups: int
) -> list[GroupedHistograms]:
    """Kind-major columns of (kind, group) histograms -> one GroupedHistograms per kind."""
    out = []
    for kind in range(k_all):
        g0 = kind * n_groups
        bk = bounds[g0 : g0 + n_groups + 1].astype(np.int64)
        lo_i, hi_i = int(bk[0]), int(bk[-1])
        out.append(GroupedHistograms(scalars[g0 : g0 + n_groups], bk - lo_i, idx16[lo_i:hi_i], cnt32[lo_i:hi_i]))
    return out


def _histograms_dense(
    samples: np.ndarray, queued: np.ndarray | None, group: np.ndarray, n_groups: int
) -> list[GroupedHistograms]:
    """As _histograms, by the general path's builder (a dense counts array per kind)."""
    n = len(samples)
    kinds = [GroupedHistogramBuilder(n_groups, n) for _ in range(3 if queued is None else 4)]
    for a in range(0, n, CHUNK):
        c = samples[a : a + CHUNK]
        g = group[a : a + CHUNK]
        end, intended, sent = c["end_ns"], c["intended_ns"], c["sent_ns"]
        lat = end - intended
        svc = end - sent
        kinds[0].add(lat, g)
        kinds[1].add(svc, g)
        kinds[2].add(sent - intended, g)
        if queued is not None:
            kinds[3].add(np.where(queued[a : a + CHUNK], svc, lat), g)
    return [k.finish() for k in kinds]


assert COUNTS_LEN < 2**16  # bucket indices travel as <u2
