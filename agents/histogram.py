"""The histogram bucket layout both sides share, and histograms of many groups in columns.

The layout is HdrHistogram's for lowest discernible value 1, 2 significant figures and
highest trackable value 2**44 ns (~4.9 h): values below 256 are counted exactly, and each
further power of two [2**k, 2**(k+1)) is cut into 128 equal sub-buckets; 38 buckets, 4,992
counts. Index i covers the values ``[value_from_index(i), highest_equivalent_value(i)]``.

An agent aggregates its records per (window, endpoint, stage) at flush time
(agents/aggregate.py) into ``GroupedHistograms``: per group the exact count, overflow,
clamped, min, max and sum, and the non-zero bucket counts (CSR: ``offsets`` into ``idx`` /
``cnt``). The coordinator (coordinator/measure/histogram.py) adds those buckets into its
histograms: the same counts, bucket for bucket, as recording the values there.

Pure: numpy only, no clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOWEST_DISCERNIBLE_NS = 1
HIGHEST_TRACKABLE_NS = 2**44  # ~4.9 hours
SIGNIFICANT_FIGURES = 2

# HdrHistogram's constructor arithmetic, spelled out for the layout above.
UNIT_MAGNITUDE = LOWEST_DISCERNIBLE_NS.bit_length() - 1  # floor(log2(lowest)) = 0
_SUB_BUCKET_COUNT_MAGNITUDE = (2 * 10**SIGNIFICANT_FIGURES - 1).bit_length()  # ceil(log2(200)) = 8
SUB_BUCKET_HALF_COUNT_MAGNITUDE = _SUB_BUCKET_COUNT_MAGNITUDE - 1  # 7
SUB_BUCKET_COUNT = 1 << _SUB_BUCKET_COUNT_MAGNITUDE  # 256
SUB_BUCKET_HALF_COUNT = SUB_BUCKET_COUNT // 2  # 128
SUB_BUCKET_MASK = (SUB_BUCKET_COUNT - 1) << UNIT_MAGNITUDE  # 255


def _bucket_count(highest: int) -> int:
    smallest_untrackable = SUB_BUCKET_COUNT << UNIT_MAGNITUDE
    buckets = 1
    while smallest_untrackable <= highest:
        smallest_untrackable <<= 1
        buckets += 1
    return buckets


BUCKET_COUNT = _bucket_count(HIGHEST_TRACKABLE_NS)  # 38
COUNTS_LEN = (BUCKET_COUNT + 1) * SUB_BUCKET_HALF_COUNT  # 4992
MAX_RELATIVE_ERROR = 1 / SUB_BUCKET_HALF_COUNT

LAYOUT: dict[str, int] = {"lowest": LOWEST_DISCERNIBLE_NS, "highest": HIGHEST_TRACKABLE_NS, "sig": SIGNIFICANT_FIGURES}

# Exact int64 sums need chunking: 2**18 values of at most 2**44 sum below 2**63.
_SUM_CHUNK = 1 << 18
# Below this many values np.add.at beats a bincount over the whole counts array.
_ADD_AT_MAX = 512
_I64_MAX = np.iinfo(np.int64).max
# Shared by every histogram with no in-range count yet: an empty window or scope costs no
# 40 KB array (fresh pages are what dominates when many histograms are alive at once).
_NO_COUNTS = np.zeros(COUNTS_LEN, dtype=np.int64)
_NO_COUNTS.flags.writeable = False


def counts_index(values_ns: np.ndarray) -> np.ndarray:
    """HdrHistogram counts index of each value (int64 array in, int64 array out).

    Same integer formula as HdrHistogram: ``bucket = bitlen(v | sub_bucket_mask) - 8``,
    ``sub = v >> bucket``, ``index = (bucket + 1) * 128 + sub - 128``. The bit length
    comes from the float64 exponent, exact for 0 <= v < 2**53; indices of values above
    ``HIGHEST_TRACKABLE_NS`` may lie beyond ``COUNTS_LEN``.
    """
    v = np.asarray(values_ns, dtype=np.int64)
    # The biased float64 exponent of x >= 1 is floor(log2 x) + 1023, so bit length = it - 1022.
    # In place where it can be: at a flush's sizes the temporaries are most of the cost.
    bucket = (v | SUB_BUCKET_MASK).astype(np.float64).view(np.int64)
    bucket >>= 52
    bucket -= 1022 + UNIT_MAGNITUDE + SUB_BUCKET_HALF_COUNT_MAGNITUDE + 1
    out = v >> (bucket + UNIT_MAGNITUDE) if UNIT_MAGNITUDE else v >> bucket
    # (bucket + 1) * half_count + (sub - half_count) == bucket * half_count + sub
    bucket <<= SUB_BUCKET_HALF_COUNT_MAGNITUDE
    out += bucket
    return out


def _bucket_of_index(index: np.ndarray) -> np.ndarray:
    return np.maximum((index >> SUB_BUCKET_HALF_COUNT_MAGNITUDE) - 1, 0)


def value_from_index(index: np.ndarray | int) -> np.ndarray:
    """Lowest value counted at each counts index (HdrHistogram's get_value_from_index)."""
    i = np.asarray(index, dtype=np.int64)
    bucket = (i >> SUB_BUCKET_HALF_COUNT_MAGNITUDE) - 1
    sub = (i & (SUB_BUCKET_HALF_COUNT - 1)) + SUB_BUCKET_HALF_COUNT
    first = bucket < 0
    sub = np.where(first, sub - SUB_BUCKET_HALF_COUNT, sub)
    bucket = np.where(first, 0, bucket)
    return sub << (bucket + UNIT_MAGNITUDE)


def highest_equivalent_value(index: np.ndarray | int) -> np.ndarray:
    """Highest value counted at each counts index (inclusive)."""
    i = np.asarray(index, dtype=np.int64)
    return value_from_index(i) + (np.int64(1) << (_bucket_of_index(i) + UNIT_MAGNITUDE)) - 1


def highest_equivalent_int(index: int) -> int:
    """highest_equivalent_value for one Python int (a quantile's bucket: no numpy call)."""
    bucket = (index >> SUB_BUCKET_HALF_COUNT_MAGNITUDE) - 1
    sub = (index & (SUB_BUCKET_HALF_COUNT - 1)) + SUB_BUCKET_HALF_COUNT
    if bucket < 0:
        sub -= SUB_BUCKET_HALF_COUNT
        bucket = 0
    return (sub << (bucket + UNIT_MAGNITUDE)) + (1 << (bucket + UNIT_MAGNITUDE)) - 1


def index_of_value(value: int) -> int:
    """counts_index for one Python int (the scalar path of ``record``)."""
    bucket = (value | SUB_BUCKET_MASK).bit_length() - (UNIT_MAGNITUDE + SUB_BUCKET_HALF_COUNT_MAGNITUDE + 1)
    return (bucket << SUB_BUCKET_HALF_COUNT_MAGNITUDE) + (value >> (bucket + UNIT_MAGNITUDE))


# Exact int64 sums need chunking: 2**18 values of at most 2**44 sum below 2**63.
SUM_CHUNK = 1 << 18
I64_MAX = int(np.iinfo(np.int64).max)

# Per group and per histogram: the exact figures a bucket array cannot give.
GROUP_HIST_DTYPE = np.dtype(
    [
        ("count", "<u4"),  # values recorded (overflow included)
        ("overflow", "<u4"),  # values above HIGHEST_TRACKABLE_NS
        ("clamped", "<u4"),  # negative values, recorded as 0
        ("min", "<i8"),
        ("max", "<i8"),
        ("sum", "<i8"),  # exact (a batch whose sum would not fit is sent raw)
    ]
)


@dataclass(frozen=True)
class GroupedHistograms:
    """Histograms of n groups in columns. Group g's non-zero buckets are
    ``idx[offsets[g]:offsets[g + 1]]`` (ascending counts indices) with counts ``cnt[...]``."""

    scalars: np.ndarray  # GROUP_HIST_DTYPE, one row per group
    offsets: np.ndarray  # int64, n + 1, offsets[0] == 0, offsets[-1] == len(idx)
    idx: np.ndarray  # uint16 counts index (< COUNTS_LEN)
    cnt: np.ndarray  # uint32 count (> 0)

    @property
    def groups(self) -> int:
        return len(self.scalars)


CHUNK = 8192  # values per vectorised pass: temporaries stay in cache and off mmap (3x faster)


class GroupedHistogramBuilder:
    """Histograms of `n_groups` groups built chunk by chunk (``add``), then ``finish``.

    The same figures as recording each group's values into a fresh histogram. Raises
    OverflowError when a group's sum does not fit in int64 (the caller sends the batch raw
    then). Few groups (an agent's usual flush) count into one dense array per chunk; many
    groups keep the chunk's keys and count them with one sort at the end.
    """

    def __init__(self, n_groups: int, expected_values: int) -> None:
        self.n = n_groups
        # Dense up to ~100 groups: an np.add.at per chunk into one calloc'd array (pages never
        # written cost nothing); beyond, the keys are sorted once at the end.
        self.dense = n_groups * COUNTS_LEN <= max(1 << 19, 2 * expected_values)
        self.counts = np.zeros(n_groups * COUNTS_LEN if self.dense else 0, dtype=np.int64)
        self.keys: list[np.ndarray] = []
        self.count = np.zeros(n_groups, dtype=np.int64)
        self.clamped = np.zeros(n_groups, dtype=np.int64)
        self.overflow = np.zeros(n_groups, dtype=np.int64)
        self.mins = np.full(n_groups, I64_MAX, dtype=np.int64)
        self.maxs = np.full(n_groups, -1, dtype=np.int64)
        self.sums = np.zeros(n_groups, dtype=np.int64)
        self.extra: dict[int, int] = {}  # exact sums of overflowed values, by group

    def add(self, v: np.ndarray, g: np.ndarray) -> None:
        """int64 values `v` (at most SUM_CHUNK of them) of groups `g`."""
        if len(v) == 0:
            return
        n = self.n
        self.count += np.bincount(g, minlength=n)
        if int(v.min()) < 0:
            negative = v < 0
            self.clamped += np.bincount(g[negative], minlength=n)
            v = np.where(negative, 0, v)
        np.minimum.at(self.mins, g, v)
        np.maximum.at(self.maxs, g, v)
        if int(v.max()) > HIGHEST_TRACKABLE_NS:
            over = v > HIGHEST_TRACKABLE_NS
            self.overflow += np.bincount(g[over], minlength=n)
            for gi, value in zip(g[over].tolist(), v[over].tolist()):
                self.extra[gi] = self.extra.get(gi, 0) + value
            keep = ~over
            v, g = v[keep], g[keep]
        part = np.zeros(n, dtype=np.int64)  # exact: a chunk of in-range values cannot overflow
        np.add.at(part, g, v)
        if bool((self.sums > I64_MAX - part).any()):
            raise OverflowError("a group's sum of values does not fit in 64 bits")
        self.sums += part
        key = g * COUNTS_LEN + counts_index(v)
        if self.dense:
            np.add.at(self.counts, key, 1)
        else:
            self.keys.append(key)

    def finish(self) -> GroupedHistograms:
        n = self.n
        scalars = np.zeros(n, dtype=GROUP_HIST_DTYPE)
        scalars["count"], scalars["clamped"], scalars["overflow"] = self.count, self.clamped, self.overflow
        scalars["min"], scalars["max"] = self.mins, self.maxs
        sums = self.sums
        for gi, value in self.extra.items():
            total = int(sums[gi]) + value
            if total > I64_MAX:
                raise OverflowError("a group's sum of values does not fit in 64 bits")
            sums[gi] = total
        scalars["sum"] = sums
        if self.dense:
            keys = np.flatnonzero(self.counts)
            key_counts = self.counts[keys]
        elif self.keys:
            keys, key_counts = np.unique(np.concatenate(self.keys), return_counts=True)
        else:
            keys = key_counts = np.empty(0, dtype=np.int64)
        key_groups = keys // COUNTS_LEN
        offsets = np.searchsorted(key_groups, np.arange(n + 1)).astype(np.int64)
        idx = (keys - key_groups * COUNTS_LEN).astype("<u2")
        return GroupedHistograms(scalars, offsets, idx, key_counts.astype("<u4"))


def group_histograms(values_ns: np.ndarray, group: np.ndarray, n_groups: int) -> GroupedHistograms:
    """One histogram per group id in [0, n_groups) (see GroupedHistogramBuilder)."""
    v = np.asarray(values_ns, dtype=np.int64).ravel()
    g = np.asarray(group, dtype=np.int64).ravel()
    if len(g) != len(v):
        raise ValueError("values and groups differ in length")
    builder = GroupedHistogramBuilder(n_groups, len(v))
    for start in range(0, len(v), CHUNK):
        builder.add(v[start : start + CHUNK], g[start : start + CHUNK])
    return builder.finish()
