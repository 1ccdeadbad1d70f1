"""horde.agents.aggregate_fast: the short paths of a flush's aggregation give the general
path's batch, byte for byte.

Random record sets (empty, one record, many endpoints, records across window and stage
boundaries, negative and out-of-range times, every error class and unknown ones, the
generator-queued flag, bodies up to 4 GiB) go through the general path and through each
short path forced in turn, in one chunk and in many; the encoded batches (with late,
queued and unsent counts in the readings) must be the same bytes.
"""

from __future__ import annotations

from contextlib import ExitStack
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import horde.agents.aggregate_fast as af
from horde.agents.aggregate import aggregate_general, aggregate_records
from horde.agents.histogram import HIGHEST_TRACKABLE_NS
from horde.agents.samples import GENERATOR_QUEUED, SAMPLE_DTYPE, GeneratorReadings, decode_batch, encode_batch

S = 1_000_000_000
STAGE_ENDS = np.asarray([2 * S, 2 * S + 500_000_000, 4 * S], dtype=np.int64)
READINGS = GeneratorReadings(cpu_s=1.5, late_sends=3, generator_queued_sends=2, unsent=7, interrupted=1, in_flight=4)
# (histogram path, dense bucket counting in the compact path, chunk sizes): every branch.
VARIANTS = [
    ("sorted", 4, 8192, 4096),
    ("compact", 10**9, 8192, 4096),  # counted in a dense array over the compacted keys
    ("compact", -(10**9), 8192, 4096),  # counted by sorting the keys
    ("compact", 10**9, 5, 3),  # many chunks
    ("compact", -(10**9), 5, 3),
    ("dense", 4, 8192, 4096),
    ("dense", 4, 5, 3),
]


def _batch(agg) -> bytes:
    return encode_batch(agent=1, incarnation=2, seq=3, watermark_ns=4 * S, readings=READINGS, agg=agg, final=True)


def _general(records: np.ndarray) -> bytes | type[OverflowError]:
    try:
        return _batch(aggregate_general(records, STAGE_ENDS))
    except OverflowError:
        return OverflowError


def _forced(records: np.ndarray, path: str, dense_per_value: int, chunk: int, value_chunk: int):
    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(af, "histogram_path", lambda n, g: path))
        stack.enter_context(mock.patch.object(af, "_DENSE_PER_VALUE", dense_per_value))
        stack.enter_context(mock.patch.object(af, "CHUNK", chunk))
        stack.enter_context(mock.patch.object(af, "_VALUE_CHUNK", value_chunk))
        try:
            fast = af.aggregate_fast(records, STAGE_ENDS, S)
            # None: the short path declines (a value beyond the histograms' range, sums
            # float64 would not add exactly); aggregate_records then takes the general path.
            return _batch(fast) if fast is not None else None
        except OverflowError:
            return OverflowError


def _records(rows: list[tuple[int, int, int, int, int, int]]) -> np.ndarray:
    s = np.zeros(len(rows), dtype=SAMPLE_DTYPE)
    for i, (ep, intended, lag, svc, err, nbytes) in enumerate(rows):
        sent = intended + lag
        s[i] = (ep, intended, sent, sent + svc, 200 if err == 0 else 500, err, nbytes)
    return s


_time = st.one_of(
    st.integers(-(10**6), 10**7),
    st.integers(0, 3 * S),
    st.sampled_from([0, 1, 255, 256, 257, HIGHEST_TRACKABLE_NS, HIGHEST_TRACKABLE_NS + 1, 2**50]),
)
_row = st.tuples(
    st.one_of(st.integers(0, 3), st.integers(0, 299)),  # endpoint: a few, or many
    st.one_of(  # intended: near the window (2 s, 3 s, 4 s) and stage (2.5 s) boundaries, or anywhere
        st.sampled_from([2 * S, 3 * S, 4 * S, 2 * S + 500_000_000]).flatmap(
            lambda b: st.integers(b - 20_000_000, b + 20_000_000)
        ),
        st.integers(0, 5 * S),
    ),
    _time,  # send lag (negative: sent before its time)
    _time,  # service time (negative: ends before it was sent, clamped)
    st.one_of(st.just(0), st.integers(0, 0xFF), st.just(GENERATOR_QUEUED)),  # error classes, unknown ones, queued
    st.one_of(st.integers(0, 5000), st.just(2**32 - 1)),
)


@settings(max_examples=120, deadline=None)
@given(st.lists(_row, max_size=60))
def test_every_short_path_gives_the_general_batch(rows) -> None:
    records = _records(rows)
    want = _general(records)
    for variant in VARIANTS:
        got = _forced(records, *variant)
        if got is not None:
            assert got == want, variant
    # The default choice too, through the public entry point.
    try:
        assert _batch(aggregate_records(records, STAGE_ENDS)) == want
    except OverflowError:
        assert want is OverflowError


@pytest.mark.parametrize("n", [0, 1, 2, 200, 1000, 5000, 40_000])
@pytest.mark.parametrize("endpoints", [1, 3, 50])
def test_realistic_flushes_take_a_short_path_and_give_the_same_bytes(n, endpoints) -> None:
    rng = np.random.default_rng(n * 7 + endpoints)
    s = np.zeros(n, SAMPLE_DTYPE)
    intended = 59 * S + np.sort(rng.integers(0, S, n))
    sent = intended + rng.exponential(50_000, n).astype(np.int64)
    s["endpoint"] = rng.integers(0, endpoints, n)
    s["intended_ns"], s["sent_ns"] = intended, sent
    s["end_ns"] = sent + rng.lognormal(np.log(5e6), 0.8, n).astype(np.int64)
    s["error"][rng.random(n) < 0.02] = 5
    s["error"][rng.random(n) < 0.01] |= GENERATOR_QUEUED
    s["bytes"] = rng.integers(0, 5000, n)
    stage_ends = np.asarray([59 * S + 400_000_000, 120 * S], dtype=np.int64)
    fast = af.aggregate_fast(s, stage_ends, S)
    general = aggregate_general(s, stage_ends)
    assert (fast is None) == (n == 0)  # every non-empty realistic flush takes a short path
    got = aggregate_records(s, stage_ends)
    assert _batch(got) == _batch(general)
    decoded = decode_batch(_batch(got)).agg
    assert decoded is not None and int(decoded.groups["requests"].sum()) == n


def test_sums_beyond_64_bits_still_refuse_the_aggregate() -> None:
    """Whichever path counts it raises (the agent then sends the batch raw)."""
    n = 1 << 14
    s = np.zeros(n, SAMPLE_DTYPE)
    s["end_ns"] = 2**50  # latency far beyond the histograms' range, 2**14 times: a sum over 2**63
    for variant in VARIANTS:
        assert _forced(s, *variant) in (None, OverflowError), variant
    with pytest.raises(OverflowError):
        aggregate_records(s, STAGE_ENDS)


def test_the_path_follows_records_and_groups() -> None:
    assert af.histogram_path(200, 6) == "sorted"
    assert af.histogram_path(40_000, 100) == "compact"
    assert af.histogram_path(40_000, 6) == "dense"
