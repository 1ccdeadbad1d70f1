"""Log-linear mergeable latency histogram in HdrHistogram's exact bucket layout.

Values are int nanoseconds. The layout is HdrHistogram's for lowest discernible value 1,
2 significant figures and highest trackable value 2**44 ns (~4.9 h): values below 256 are
counted exactly, and each further power of two [2**k, 2**(k+1)) is cut into 128 equal
sub-buckets; 38 buckets, 4,992 counts. Index i covers the values
``[value_from_index(i), highest_equivalent_value(i)]``; a value's bucket is at most 1/128
of it wide, so a reported quantile is within 1/128 (< 1%) of the true one, and the counts
array can be written out as an HdrHistogram log later without re-bucketing.

Why not HdrHistogram_py: it records one value per Python call; here a batch of samples is
recorded with a few numpy passes (``record_many``, ``histograms_by_group``), which is what
lets the coordinator ingest millions of samples per second per core. Histograms with no
in-range count share one read-only zero array until first written.

The layout itself lives in agents/histogram.py, which agents aggregate with before they
send (``add_group`` takes one group of their columns in).

Nothing is clipped silently: negative values are recorded as 0 and counted in
``clamped``; values above ``HIGHEST_TRACKABLE_NS`` are counted in ``overflow`` (and in
``count``), and a quantile that falls among them reports the exact ``max_ns``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from horde.agents.histogram import (
    BUCKET_COUNT,
    COUNTS_LEN,
    HIGHEST_TRACKABLE_NS,
    LAYOUT,
    LOWEST_DISCERNIBLE_NS,
    MAX_RELATIVE_ERROR,
    SIGNIFICANT_FIGURES,
    SUB_BUCKET_HALF_COUNT,
    GroupedHistograms,
    counts_index,
    highest_equivalent_int,
    highest_equivalent_value,
    index_of_value,
    value_from_index,
)

__all__ = [
    "BUCKET_COUNT",
    "COUNTS_LEN",
    "HIGHEST_TRACKABLE_NS",
    "LAYOUT",
    "LOWEST_DISCERNIBLE_NS",
    "MAX_RELATIVE_ERROR",
    "SIGNIFICANT_FIGURES",
    "SUB_BUCKET_HALF_COUNT",
    "Histogram",
    "counts_index",
    "highest_equivalent_value",
    "histograms_by_group",
    "value_from_index",
]

# Exact int64 sums need chunking: 2**18 values of at most 2**44 sum below 2**63.
_SUM_CHUNK = 1 << 18
# Below this many values np.add.at beats a bincount over the whole counts array.
_ADD_AT_MAX = 512
_I64_MAX = np.iinfo(np.int64).max


def _nonzero(counts: np.ndarray) -> np.ndarray:
    """Indices of the non-zero counts: numpy finds a bool array's non-zeros several times
    faster than an int64 array's (2 against 9 us for 4,992 counts)."""
    return (counts != 0).nonzero()[0]


# Shared by every histogram with no in-range count yet: an empty window or scope costs no
# 40 KB array (fresh pages are what dominates when many histograms are alive at once).
_NO_COUNTS = np.zeros(COUNTS_LEN, dtype=np.int64)
_NO_COUNTS.flags.writeable = False


def _exact_sum(values: np.ndarray) -> int:
    """Exact sum of in-range int64 values (each <= HIGHEST_TRACKABLE_NS)."""
    if len(values) <= _SUM_CHUNK:
        return int(values.sum())
    return sum(int(s) for s in np.add.reduceat(values, np.arange(0, len(values), _SUM_CHUNK)))


def _as_int64(values_ns: Any) -> np.ndarray:
    v = np.asarray(values_ns)
    if v.dtype.kind == "u":
        if v.dtype.itemsize == 8:
            v = np.minimum(v, _I64_MAX)
    elif v.dtype.kind != "i":
        if v.size == 0:
            return np.empty(0, np.int64)
        raise TypeError(f"histogram values must be integer nanoseconds, got dtype {v.dtype}")
    return v.astype(np.int64, copy=False).ravel()


class Histogram:
    """Counts of int-nanosecond values; merge by addition; exact count/min/max/sum.

    ``stdev_ns`` is computed from bucket midpoints (HdrHistogram's median-equivalent
    values) around the exact mean, with overflowed values taken at ``max_ns``.
    """

    __slots__ = ("_counts", "count", "overflow", "clamped", "min_ns", "max_ns", "sum_ns")
    __hash__ = None  # type: ignore[assignment]  # mutable, compared by content

    def __init__(self) -> None:
        self._counts = _NO_COUNTS
        self.count = 0
        self.overflow = 0  # values above HIGHEST_TRACKABLE_NS (included in count)
        self.clamped = 0  # negative values, recorded as 0
        self.min_ns: int | None = None
        self.max_ns: int | None = None
        self.sum_ns = 0  # exact Python int

    def _writable(self) -> np.ndarray:
        if self._counts is _NO_COUNTS:
            self._counts = np.zeros(COUNTS_LEN, dtype=np.int64)
        return self._counts

    # -- recording ---------------------------------------------------------------------

    def record(self, value_ns: int) -> None:
        v = int(value_ns)
        if v < 0:
            self.clamped += 1
            v = 0
        if v > HIGHEST_TRACKABLE_NS:
            self.overflow += 1
        else:
            self._writable()[index_of_value(v)] += 1
        self.count += 1
        self.sum_ns += v
        self.min_ns = v if self.min_ns is None or v < self.min_ns else self.min_ns
        self.max_ns = v if self.max_ns is None or v > self.max_ns else self.max_ns

    def record_many(self, values_ns: np.ndarray) -> None:
        """Record an array of int nanoseconds with a few vectorised passes."""
        v = _as_int64(values_ns)
        n = len(v)
        if n == 0:
            return
        lo = int(v.min())
        hi = int(v.max())
        if lo < 0:
            negative = v < 0
            self.clamped += int(np.count_nonzero(negative))
            v = np.where(negative, 0, v)
            lo = 0
            hi = max(hi, 0)
        if hi > HIGHEST_TRACKABLE_NS:
            over = v > HIGHEST_TRACKABLE_NS
            self.overflow += int(np.count_nonzero(over))
            self.sum_ns += sum(v[over].tolist())
            v = v[~over]
        if len(v):
            idx = counts_index(v)
            if len(idx) <= _ADD_AT_MAX:
                np.add.at(self._writable(), idx, 1)
            else:
                self._writable()[:] += np.bincount(idx, minlength=COUNTS_LEN)
        self.sum_ns += _exact_sum(v)
        self.count += n
        self.min_ns = lo if self.min_ns is None or lo < self.min_ns else self.min_ns
        self.max_ns = hi if self.max_ns is None or hi > self.max_ns else self.max_ns

    def add_group(self, grouped: GroupedHistograms, g: int) -> Histogram:
        """Add group `g` of an agent's grouped histograms (agents/histogram.py); returns self.
        The same as recording that group's values here."""
        return GroupColumns(grouped).add_into(self, g)

    def add_buckets(
        self, idx: np.ndarray, cnt: np.ndarray, count: int, overflow: int, clamped: int, lo: int, hi: int, total: int
    ) -> None:
        """Add counts at distinct counts indices `idx`, and the figures a bucket array cannot
        give (count, overflow, clamped, min, max, sum of the values added)."""
        if count == 0:
            return
        if len(idx):
            counts = self._counts
            if counts is _NO_COUNTS:
                counts = self._counts = np.zeros(COUNTS_LEN, dtype=np.int64)
            counts[idx] += cnt  # distinct indices: no np.add.at needed
        self.add_figures(count, overflow, clamped, lo, hi, total)

    def add_figures(self, count: int, overflow: int, clamped: int, lo: int, hi: int, total: int) -> None:
        """Add the figures a bucket array cannot give (count, overflow, clamped, min, max and
        the sum of the values added), for buckets added elsewhere (measure/blocks.py)."""
        self.count += count
        self.overflow += overflow
        self.clamped += clamped
        self.sum_ns += total
        if self.min_ns is None or lo < self.min_ns:
            self.min_ns = lo
        if self.max_ns is None or hi > self.max_ns:
            self.max_ns = hi

    # -- combining ---------------------------------------------------------------------

    def merge(self, other: Histogram) -> Histogram:
        """Add ``other`` into this histogram (in place); returns self."""
        if other.count == 0:
            return self
        if other._counts is not _NO_COUNTS:
            if self._counts is _NO_COUNTS:
                self._counts = other._counts.copy()
            else:
                self._counts += other._counts
        self.count += other.count
        self.overflow += other.overflow
        self.clamped += other.clamped
        self.sum_ns += other.sum_ns
        if self.min_ns is None or (other.min_ns is not None and other.min_ns < self.min_ns):
            self.min_ns = other.min_ns
        if self.max_ns is None or (other.max_ns is not None and other.max_ns > self.max_ns):
            self.max_ns = other.max_ns
        return self

    def __add__(self, other: Histogram) -> Histogram:
        if not isinstance(other, Histogram):
            return NotImplemented
        return self.copy().merge(other)

    def copy(self) -> Histogram:
        h = Histogram.__new__(Histogram)
        h._counts = _NO_COUNTS if self._counts is _NO_COUNTS else self._counts.copy()
        h.count, h.overflow, h.clamped = self.count, self.overflow, self.clamped
        h.min_ns, h.max_ns, h.sum_ns = self.min_ns, self.max_ns, self.sum_ns
        return h

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return (
            self.count == other.count
            and self.overflow == other.overflow
            and self.clamped == other.clamped
            and self.min_ns == other.min_ns
            and self.max_ns == other.max_ns
            and self.sum_ns == other.sum_ns
            and bool(np.array_equal(self._counts, other._counts))
        )

    def __repr__(self) -> str:
        return f"Histogram(count={self.count}, min_ns={self.min_ns}, max_ns={self.max_ns}, overflow={self.overflow})"

    # -- reading -----------------------------------------------------------------------

    @property
    def counts(self) -> np.ndarray:
        """The dense counts array (read-only view), HdrHistogram index order."""
        view = self._counts.view()
        view.flags.writeable = False
        return view

    def mean_ns(self) -> float | None:
        return self.sum_ns / self.count if self.count else None

    def stdev_ns(self) -> float | None:
        """Population standard deviation from bucket midpoints (see class docstring)."""
        if not self.count:
            return None
        mean = self.sum_ns / self.count
        nz = _nonzero(self._counts)
        lo = value_from_index(nz)
        mid = (lo + ((highest_equivalent_value(nz) - lo + 1) >> 1)).astype(np.float64)
        sq = float(np.dot(self._counts[nz].astype(np.float64), (mid - mean) ** 2))
        if self.overflow:
            sq += self.overflow * (float(self.max_ns) - mean) ** 2  # type: ignore[arg-type]  # overflow: max_ns set
        return math.sqrt(sq / self.count)

    def value_at_quantile(self, q: float) -> int | None:
        """HdrHistogram's quantile: highest equivalent value of the bucket holding rank
        ``max(1, ceil(q * count))``, clamped to [min_ns, max_ns]; None when empty."""
        return self._quantiles_from((q,))[0]

    def quantiles(self, qs: Iterable[float]) -> dict[float, int | None]:
        qs = tuple(qs)
        return dict(zip(qs, self._quantiles_from(qs)))

    def _quantiles_from(self, qs: Sequence[float]) -> list[int | None]:
        """All of `qs` in one pass: the ranks are searched together in the cumulative
        counts of the non-empty buckets only (a window's histogram has tens of them among
        its 4,992), so a record's five quantiles cost a few numpy calls, not five scans."""
        for q in qs:
            if not 0.0 <= q <= 1.0:
                raise ValueError(f"quantile {q!r} outside [0, 1]")
        if not self.count:
            return [None] * len(qs)
        assert self.min_ns is not None and self.max_ns is not None
        lo, hi = self.min_ns, self.max_ns
        in_range = self.count - self.overflow
        out: list[int | None] = []
        ranks: list[int] = []
        where: list[int] = []
        for q in qs:
            rank = max(1, math.ceil(q * self.count))
            if q == 0.0:
                out.append(lo)
            elif q == 1.0 or rank > in_range:
                out.append(hi)
            else:
                out.append(None)
                ranks.append(rank)
                where.append(len(out) - 1)
        if ranks:
            nz = _nonzero(self._counts)
            cumulative = np.cumsum(self._counts[nz])
            found = nz[np.searchsorted(cumulative, ranks, side="left")]
            for j, i in zip(where, found.tolist()):
                out[j] = min(max(highest_equivalent_int(i), lo), hi)
        return out

    def buckets(self) -> Iterator[tuple[int, int, int]]:
        """(value_lo, value_hi inclusive, count) per non-empty bucket, ascending; the
        overflow, if any, comes last as (HIGHEST_TRACKABLE_NS + 1, max_ns, overflow)."""
        nz = _nonzero(self._counts)
        yield from zip(value_from_index(nz).tolist(), highest_equivalent_value(nz).tolist(), self._counts[nz].tolist())
        if self.overflow:
            assert self.max_ns is not None
            yield (HIGHEST_TRACKABLE_NS + 1, self.max_ns, self.overflow)

    # -- storage -----------------------------------------------------------------------

    def to_sparse(self) -> dict[str, Any]:
        """msgpack-friendly form: non-zero indices (uint32 LE) and counts (int64 LE)."""
        nz = _nonzero(self._counts)
        return {
            "layout": dict(LAYOUT),
            "idx": nz.astype("<u4").tobytes(),
            "cnt": self._counts[nz].astype("<i8").tobytes(),
            "count": self.count,
            "overflow": self.overflow,
            "clamped": self.clamped,
            "min": self.min_ns,
            "max": self.max_ns,
            # msgpack ints stop at 64 bits; a longer sum travels as its decimal string.
            "sum": self.sum_ns if -(2**63) <= self.sum_ns < 2**63 else str(self.sum_ns),
        }

    @classmethod
    def from_sparse(cls, d: dict[str, Any]) -> Histogram:
        layout = d.get("layout")
        if layout != LAYOUT:
            raise ValueError(f"histogram layout {layout!r} is not {LAYOUT!r}")
        idx = np.frombuffer(d["idx"], dtype="<u4")
        cnt = np.frombuffer(d["cnt"], dtype="<i8")
        if len(idx) != len(cnt) or (len(idx) and int(idx.max()) >= COUNTS_LEN):
            raise ValueError("malformed sparse histogram counts")
        h = cls()
        if len(idx):
            h._writable()[idx] = cnt
        h.count = int(d["count"])
        h.overflow = int(d["overflow"])
        h.clamped = int(d["clamped"])
        h.min_ns = None if d["min"] is None else int(d["min"])
        h.max_ns = None if d["max"] is None else int(d["max"])
        h.sum_ns = int(d["sum"])
        if int(cnt.sum()) + h.overflow != h.count:
            raise ValueError("sparse histogram counts do not add up to its count")
        return h


class GroupColumns:
    """An agent's grouped histograms as Python lists and int64 arrays, converted once per
    batch, so that adding a group into a histogram costs one fancy add and a few int ops."""

    __slots__ = ("count", "overflow", "clamped", "lo", "hi", "total", "offsets", "idx", "cnt")

    def __init__(self, grouped: GroupedHistograms, with_buckets: bool = True) -> None:
        sc = grouped.scalars
        self.count: list[int] = sc["count"].tolist()
        self.overflow: list[int] = sc["overflow"].tolist()
        self.clamped: list[int] = sc["clamped"].tolist()
        self.lo: list[int] = sc["min"].tolist()
        self.hi: list[int] = sc["max"].tolist()
        self.total: list[int] = sc["sum"].tolist()
        self.offsets: list[int] = grouped.offsets.tolist() if with_buckets else []
        self.idx = grouped.idx.astype(np.intp) if with_buckets else grouped.idx
        self.cnt = grouped.cnt.astype(np.int64) if with_buckets else grouped.cnt

    def add_into(self, h: Histogram, g: int) -> Histogram:
        """Group g, buckets and figures, into `h`."""
        a, b = self.offsets[g], self.offsets[g + 1]
        h.add_buckets(
            self.idx[a:b],
            self.cnt[a:b],
            self.count[g],
            self.overflow[g],
            self.clamped[g],
            self.lo[g],
            self.hi[g],
            self.total[g],
        )
        return h

    def add_figures(self, h: Histogram, g: int) -> None:
        """Group g's figures alone into `h` (count, overflow, clamped, min, max, sum), its
        buckets added by the caller (coordinator/measure/blocks.py)."""
        n = self.count[g]
        if n == 0:
            return
        h.count += n
        h.overflow += self.overflow[g]
        h.clamped += self.clamped[g]
        h.sum_ns += self.total[g]
        lo, hi = self.lo[g], self.hi[g]
        if h.min_ns is None or lo < h.min_ns:
            h.min_ns = lo
        if h.max_ns is None or hi > h.max_ns:
            h.max_ns = hi


def histograms_by_group(values_ns: np.ndarray, group: np.ndarray, n_groups: int) -> list[Histogram]:
    """One histogram per group id in [0, n_groups), built in one vectorised pass.

    Equivalent to recording ``values_ns[group == g]`` into a fresh histogram for each g,
    without a Python loop over values or a pass per group.
    """
    v = _as_int64(values_ns)
    g = np.asarray(group, dtype=np.int64).ravel()
    if len(g) != len(v):
        raise ValueError("values and groups differ in length")
    out = [Histogram() for _ in range(n_groups)]
    for start in range(0, len(v), _SUM_CHUNK):
        _record_grouped(out, v[start : start + _SUM_CHUNK], g[start : start + _SUM_CHUNK])
    return out


def _record_grouped(out: list[Histogram], v: np.ndarray, g: np.ndarray) -> None:
    n_groups = len(out)
    if len(v) == 0:
        return
    count = np.bincount(g, minlength=n_groups)
    clamped = None
    if int(v.min()) < 0:
        negative = v < 0
        clamped = np.bincount(g[negative], minlength=n_groups)
        v = np.where(negative, 0, v)
    mins = np.full(n_groups, _I64_MAX, dtype=np.int64)
    maxs = np.full(n_groups, -1, dtype=np.int64)
    np.minimum.at(mins, g, v)
    np.maximum.at(maxs, g, v)
    overflow = None
    overflow_sums: dict[int, int] = {}
    if int(v.max()) > HIGHEST_TRACKABLE_NS:
        over = v > HIGHEST_TRACKABLE_NS
        overflow = np.bincount(g[over], minlength=n_groups)
        for gi, value in zip(g[over].tolist(), v[over].tolist()):
            overflow_sums[gi] = overflow_sums.get(gi, 0) + value
        keep = ~over
        v, g = v[keep], g[keep]
    sums = np.zeros(n_groups, dtype=np.int64)  # exact: a chunk of in-range values cannot overflow
    np.add.at(sums, g, v)
    key = g * COUNTS_LEN + counts_index(v)
    if n_groups * COUNTS_LEN <= 32 * len(v) + (1 << 17):
        # Few groups (the usual batch): one bincount over all the groups' counts arrays.
        dense = np.bincount(key, minlength=n_groups * COUNTS_LEN).reshape(n_groups, COUNTS_LEN)
        for i in np.flatnonzero(np.bincount(g, minlength=n_groups)).tolist():
            h = out[i]
            if h._counts is _NO_COUNTS:
                h._counts = dense[i].copy()
            else:
                h._counts += dense[i]
    else:
        # Many sparse groups: a dense block would dwarf the data, so sort the keys instead.
        keys, key_counts = np.unique(key, return_counts=True)
        key_groups = keys // COUNTS_LEN
        key_index = keys - key_groups * COUNTS_LEN
        bounds = np.searchsorted(key_groups, np.arange(n_groups + 1)).tolist()
        for i in range(n_groups):
            a, b = bounds[i], bounds[i + 1]
            if b > a:
                out[i]._writable()[key_index[a:b]] += key_counts[a:b]
    for i in np.flatnonzero(count).tolist():
        h = out[i]
        h.count += int(count[i])
        if clamped is not None:
            h.clamped += int(clamped[i])
        if overflow is not None:
            h.overflow += int(overflow[i])
        h.sum_ns += int(sums[i]) + overflow_sums.get(i, 0)
        lo, hi = int(mins[i]), int(maxs[i])
        h.min_ns = lo if h.min_ns is None or lo < h.min_ns else h.min_ns
        h.max_ns = hi if h.max_ns is None or hi > h.max_ns else h.max_ns
