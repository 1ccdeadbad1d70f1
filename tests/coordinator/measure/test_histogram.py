"""horde.coordinator.measure.histogram: layout, accuracy against exact percentiles, merging, storage."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from horde.coordinator.measure.histogram import (
    BUCKET_COUNT,
    COUNTS_LEN,
    HIGHEST_TRACKABLE_NS,
    MAX_RELATIVE_ERROR,
    Histogram,
    counts_index,
    highest_equivalent_value,
    histograms_by_group,
    value_from_index,
)

US, MS, S = 1_000, 1_000_000, 1_000_000_000
QUANTILES = (0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 0.9999)


# -- a slow, independent transcription of HdrHistogram's integer formulas ---------------
# (lowest 1 -> unit magnitude 0, 2 significant figures -> sub bucket count 256)


def clz64(value: int) -> int:
    """Leading zeros of a positive 64-bit value, as HdrHistogram_py computes them."""
    return 63 - (len(bin(value)) - 3)


def ref_counts_index(value: int) -> int:
    pow2ceiling = 64 - clz64(value | 255)  # sub_bucket_mask = 255
    bucket_index = pow2ceiling - 0 - (7 + 1)  # unit magnitude 0, sub bucket half count magnitude 7
    sub_bucket_index = value >> (bucket_index + 0)
    bucket_base_index = (bucket_index + 1) << 7
    offset_in_bucket = sub_bucket_index - 128
    return bucket_base_index + offset_in_bucket


def ref_value_from_index(index: int) -> int:
    bucket_index = (index >> 7) - 1
    sub_bucket_index = (index & 127) + 128
    if bucket_index < 0:
        sub_bucket_index -= 128
        bucket_index = 0
    return sub_bucket_index << bucket_index


def ref_highest_equivalent(value: int) -> int:
    bucket_index = (value | 255).bit_length() - 8
    sub_bucket_index = value >> bucket_index
    lowest = sub_bucket_index << bucket_index
    if sub_bucket_index >= 256:
        bucket_index += 1
    return lowest + (1 << bucket_index) - 1


def exact(values: np.ndarray, q: float) -> int:
    return int(np.percentile(values, q * 100, method="inverted_cdf"))


def distributions() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20240611)
    n = 200_003  # odd size: no quantile rank lands exactly on a float boundary
    lo, hi = 10 * US, 10 * S
    bimodal = np.concatenate([rng.normal(2 * MS, 0.2 * MS, n // 2), rng.normal(800 * MS, 50 * MS, n - n // 2)])
    out = {
        "uniform": rng.uniform(lo, hi, n),
        "exponential": lo + rng.exponential(20 * MS, n),
        "lognormal": rng.lognormal(math.log(5 * MS), 1.5, n),
        "bimodal": rng.permutation(bimodal),
    }
    return {k: np.clip(v, lo, hi).astype(np.int64) for k, v in out.items()}


DATA = distributions()


# -- layout --------------------------------------------------------------------------


def test_layout_is_hdrhistograms_for_1_to_2_pow_44_at_2_digits() -> None:
    assert BUCKET_COUNT == 38
    assert COUNTS_LEN == (38 + 1) * 128 == 4992
    assert MAX_RELATIVE_ERROR == 1 / 128


def test_value_from_index_matches_reference_and_tiles_the_range_without_gaps() -> None:
    idx = np.arange(COUNTS_LEN)
    lows = value_from_index(idx)
    highs = highest_equivalent_value(idx)
    assert lows.tolist() == [ref_value_from_index(i) for i in range(COUNTS_LEN)]
    assert highs.tolist() == [ref_highest_equivalent(ref_value_from_index(i)) for i in range(COUNTS_LEN)]
    # each bucket starts right after the previous one ends: every value has exactly one home
    assert np.array_equal(highs[:-1] + 1, lows[1:])
    assert lows[0] == 0 and highs[-1] >= HIGHEST_TRACKABLE_NS
    # width of a bucket is at most 1/128 of its lowest value (above the exact first 256)
    wide = lows >= 256
    assert np.all((highs[wide] - lows[wide] + 1) * 128 <= lows[wide])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=HIGHEST_TRACKABLE_NS), min_size=1, max_size=50))
def test_counts_index_matches_hdrhistogram_integer_formula(values: list[int]) -> None:
    got = counts_index(np.array(values, dtype=np.int64))
    assert got.tolist() == [ref_counts_index(v) for v in values]
    assert np.all(value_from_index(got) <= values)
    assert np.all(highest_equivalent_value(got) >= values)


def test_counts_index_at_power_of_two_edges() -> None:
    edges = sorted({v for k in range(45) for v in (2**k - 1, 2**k, 2**k + 1) if 0 <= v <= HIGHEST_TRACKABLE_NS})
    assert counts_index(np.array(edges)).tolist() == [ref_counts_index(v) for v in edges]
    assert int(counts_index(np.array([HIGHEST_TRACKABLE_NS]))[0]) < COUNTS_LEN


# -- accuracy ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DATA))
def test_quantiles_within_1_percent_of_exact(name: str) -> None:
    values = DATA[name]
    h = Histogram()
    h.record_many(values)
    got = h.quantiles(QUANTILES)
    for q in QUANTILES:
        want = exact(values, q)
        assert got[q] is not None
        # the reported value is the top of the true value's bucket: never below, < 1/128 above
        assert want <= got[q] <= want * (1 + MAX_RELATIVE_ERROR), (name, q, got[q], want)
        assert h.value_at_quantile(q) == got[q]
    assert h.value_at_quantile(0.0) == values.min() == h.min_ns
    assert h.value_at_quantile(1.0) == values.max() == h.max_ns
    assert h.count == len(values)
    assert h.sum_ns == sum(values.tolist())
    assert h.mean_ns() == pytest.approx(values.mean(), rel=1e-12)
    assert h.stdev_ns() == pytest.approx(values.std(), rel=0.01)


@pytest.mark.parametrize("name", sorted(DATA))
def test_merging_50_parts_equals_recording_everything(name: str) -> None:
    values = DATA[name]
    whole = Histogram()
    whole.record_many(values)
    merged = Histogram()
    for part in np.array_split(values, 50):
        h = Histogram()
        h.record_many(part)
        merged.merge(h)
    assert merged == whole
    for q in QUANTILES:
        want = exact(values, q)
        assert want <= merged.value_at_quantile(q) <= want * (1 + MAX_RELATIVE_ERROR)


def test_add_returns_a_new_histogram_and_leaves_operands_alone() -> None:
    a, b = Histogram(), Histogram()
    a.record_many(np.array([1, 2, 3]))
    b.record_many(np.array([1000, 2000]))
    a_before, b_before = a.copy(), b.copy()
    c = a + b
    assert a == a_before and b == b_before
    assert c.count == 5 and c.min_ns == 1 and c.max_ns == 2000 and c.sum_ns == 3006


def test_scalar_record_equals_record_many() -> None:
    values = DATA["lognormal"][:2000].tolist() + [-7, 0, HIGHEST_TRACKABLE_NS, HIGHEST_TRACKABLE_NS + 1]
    one, many = Histogram(), Histogram()
    for v in values:
        one.record(v)
    many.record_many(np.array(values))
    assert one == many


def test_small_and_large_batches_record_the_same() -> None:
    values = DATA["exponential"][:5000]
    small, large = Histogram(), Histogram()
    for part in np.array_split(values, 500):  # 10 values each: the add.at path
        small.record_many(part)
    large.record_many(values)  # the bincount path
    assert small == large


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(min_value=-(10**6), max_value=2**50), max_size=200),
    st.integers(min_value=1, max_value=6),
)
def test_histograms_by_group_equals_one_histogram_per_group(values: list[int], n_groups: int) -> None:
    v = np.array(values, dtype=np.int64)
    groups = np.arange(len(v)) * 7 % n_groups
    got = histograms_by_group(v, groups, n_groups)
    for g in range(n_groups):
        want = Histogram()
        want.record_many(v[groups == g])
        assert got[g] == want


def test_histograms_by_group_with_many_sparse_groups() -> None:
    # far more groups than values per group: the sorted (not dense) path
    rng = np.random.default_rng(1)
    v = rng.lognormal(15, 2, 3000).astype(np.int64)
    groups = rng.integers(0, 700, len(v))
    got = histograms_by_group(v, groups, 700)
    for g in range(700):
        want = Histogram()
        want.record_many(v[groups == g])
        assert got[g] == want


# -- out of range --------------------------------------------------------------------


def test_values_above_highest_are_counted_in_overflow_not_clipped() -> None:
    h = Histogram()
    h.record_many(np.array([1, HIGHEST_TRACKABLE_NS, HIGHEST_TRACKABLE_NS + 1, 2**50]))
    assert h.count == 4
    assert h.overflow == 2
    assert int(h.counts.sum()) == 2
    assert h.max_ns == 2**50
    assert h.sum_ns == 1 + HIGHEST_TRACKABLE_NS + HIGHEST_TRACKABLE_NS + 1 + 2**50
    assert h.value_at_quantile(1.0) == 2**50
    assert h.value_at_quantile(0.75) == 2**50  # rank 3 is an overflowed value: exact max
    assert HIGHEST_TRACKABLE_NS <= h.value_at_quantile(0.5) <= HIGHEST_TRACKABLE_NS * (1 + MAX_RELATIVE_ERROR)
    assert h.value_at_quantile(0.25) == 1
    assert list(h.buckets())[-1] == (HIGHEST_TRACKABLE_NS + 1, 2**50, 2)


def test_negative_values_are_clamped_to_zero_and_counted() -> None:
    h = Histogram()
    h.record_many(np.array([-5, -1, 3]))
    assert (h.count, h.clamped, h.min_ns, h.max_ns, h.sum_ns) == (3, 2, 0, 3, 3)
    assert h.value_at_quantile(0.5) == 0
    assert h.value_at_quantile(0.9) == 3


def test_float_values_are_refused() -> None:
    with pytest.raises(TypeError):
        Histogram().record_many(np.array([1.5, 2.0]))


# -- empty and reading ---------------------------------------------------------------


def test_empty_histogram_reports_none_not_zero() -> None:
    h = Histogram()
    assert h.count == 0
    assert h.value_at_quantile(0.5) is None
    assert h.value_at_quantile(0.0) is None
    assert h.quantiles([0.5, 0.99]) == {0.5: None, 0.99: None}
    assert (h.min_ns, h.max_ns, h.mean_ns(), h.stdev_ns()) == (None, None, None, None)
    assert list(h.buckets()) == []
    h.record_many(np.array([], dtype=np.int64))
    assert h == Histogram()


def test_quantile_outside_0_1_is_an_error() -> None:
    h = Histogram()
    h.record(5)
    with pytest.raises(ValueError):
        h.value_at_quantile(1.5)
    with pytest.raises(ValueError):
        h.value_at_quantile(-0.1)


def test_quantile_of_a_single_value_is_that_value() -> None:
    h = Histogram()
    h.record(123_456_789)
    assert {h.value_at_quantile(q) for q in (0.0, 0.001, 0.5, 0.999, 1.0)} == {123_456_789}


def test_quantile_uses_ceil_rank() -> None:
    h = Histogram()
    h.record_many(np.arange(1, 101))  # 1..100, all exact (below 256)
    assert h.value_at_quantile(0.5) == 50  # rank 50
    assert h.value_at_quantile(0.505) == 51  # rank ceil(50.5) = 51
    assert h.value_at_quantile(0.001) == 1  # rank max(1, ceil(0.1)) = 1


def test_buckets_cover_every_count() -> None:
    values = DATA["bimodal"]
    h = Histogram()
    h.record_many(values)
    rows = list(h.buckets())
    assert sum(c for _, _, c in rows) == len(values)
    lows = np.array([lo for lo, _, _ in rows])
    his = np.array([hi for _, hi, _ in rows])
    assert np.all(lows <= his) and np.all(his[:-1] < lows[1:])
    # count in each bucket equals the number of values inside its bounds
    for lo, hi, c in rows[:: max(1, len(rows) // 20)]:
        assert c == int(np.count_nonzero((values >= lo) & (values <= hi)))


# -- storage -------------------------------------------------------------------------


def test_sparse_round_trip_through_msgpack_is_exact() -> None:
    h = Histogram()
    h.record_many(DATA["lognormal"])
    h.record_many(np.array([-3, HIGHEST_TRACKABLE_NS + 5]))
    d = msgpack.unpackb(msgpack.packb(h.to_sparse(), use_bin_type=True), raw=False)
    back = Histogram.from_sparse(d)
    assert back == h
    assert (back.overflow, back.clamped) == (1, 1)
    assert back.quantiles(QUANTILES) == h.quantiles(QUANTILES)
    nz = np.count_nonzero(h.counts)
    assert len(d["idx"]) == 4 * nz and len(d["cnt"]) == 8 * nz


def test_sparse_round_trip_of_empty_histogram() -> None:
    d = Histogram().to_sparse()
    assert d["min"] is None and d["max"] is None and d["count"] == 0
    assert Histogram.from_sparse(msgpack.unpackb(msgpack.packb(d), raw=False)) == Histogram()


def test_sum_beyond_64_bits_survives_the_sparse_form() -> None:
    h = Histogram()
    h.record_many(np.full(4, 2**62, dtype=np.int64))
    assert h.sum_ns == 2**64
    back = Histogram.from_sparse(msgpack.unpackb(msgpack.packb(h.to_sparse()), raw=False))
    assert back.sum_ns == 2**64 and back == h


def test_from_sparse_refuses_another_layout_or_inconsistent_counts() -> None:
    h = Histogram()
    h.record_many(np.array([10, 20, 30]))
    d = h.to_sparse()
    with pytest.raises(ValueError):
        Histogram.from_sparse({**d, "layout": {"lowest": 1, "highest": 2**44, "sig": 3}})
    with pytest.raises(ValueError):
        Histogram.from_sparse({**d, "count": 4})


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(min_value=-(10**3), max_value=2**46), max_size=100),
    st.lists(st.integers(min_value=-(10**3), max_value=2**46), max_size=100),
)
def test_merge_of_sparse_round_trips_equals_recording_all(a: list[int], b: list[int]) -> None:
    ha, hb, both = Histogram(), Histogram(), Histogram()
    ha.record_many(np.array(a, dtype=np.int64))
    hb.record_many(np.array(b, dtype=np.int64))
    both.record_many(np.array(a + b, dtype=np.int64))
    merged = Histogram.from_sparse(ha.to_sparse()) + Histogram.from_sparse(hb.to_sparse())
    assert merged == both
    if a or b:
        assert merged.min_ns == max(0, min(a + b)) and merged.max_ns == max(0, max(a + b))
