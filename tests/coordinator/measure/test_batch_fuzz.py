"""Nothing a peer sends in a batch gets past decode + check as anything but BatchFormatError,
and nothing that passes makes aggregation fail or allocate in proportion to a claimed size.

Each example goes through the coordinator's ingest path as run/session.py takes it:
decode_batch, BatchChecker.check, then Aggregator.add / close_until, SendCounter.add and
AgentTotals.add. tracemalloc (numpy reports its buffers to it) bounds each example's peak.
"""

from __future__ import annotations

import math
import tracemalloc

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from horde.agents.aggregate import aggregate_records
from horde.agents.samples import (
    FORMAT_VERSION,
    GROUP_DTYPE,
    RECORD,
    SAMPLE_DTYPE,
    BatchFormatError,
    GeneratorReadings,
    decode_batch,
    encode_batch,
)
from horde.coordinator.measure.aggregate import Aggregator
from horde.coordinator.measure.batch_check import BatchChecker, RunBounds
from horde.coordinator.measure.health import AgentTotals
from horde.coordinator.run.summary import SendCounter

S = 1_000_000_000
NOW_NS = 60 * S
ENDPOINTS = ["a", "b", "c"]
PEAK_BYTES = 16 * 2**20  # an example's payload is at most a few kB: 16 MiB is already generous
FUZZ = settings(max_examples=100, deadline=None)


def _ingest(payload: bytes) -> bool:
    """The session's path for one batch; True when it was aggregated. Only BatchFormatError may escape."""
    agg = Aggregator(ENDPOINTS, [30 * S, 90 * S], ["warm", "main"])
    checker = BatchChecker(RunBounds(endpoints=len(ENDPOINTS), stages=2))
    try:
        b = decode_batch(payload)
        checker.check(b, sender=0, incarnations={0: 0}, now_ns=NOW_NS)
    except BatchFormatError as exc:
        assert str(exc) and "\n" not in str(exc)  # a one-line reason
        return False
    agg.add(b)
    SendCounter().add_counts(*b.send_bins())
    AgentTotals().add(b.readings, b.watermark_ns, b.engine)
    agg.close_until(b.watermark_ns)
    agg.close_all()
    return True


def _bounded(payload: bytes) -> bool:
    # Traced only around the ingest: hypothesis' own allocations are not the code under test.
    tracemalloc.start()
    try:
        ok = _ingest(payload)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BYTES + 8 * len(payload), f"{peak} bytes for a {len(payload)}-byte payload"
    return ok


# -- what a good agent sends -------------------------------------------------------------------

_time = st.integers(0, 50 * S)
_row = st.tuples(
    st.integers(0, len(ENDPOINTS) - 1), _time, _time, st.integers(0, 5 * S), st.sampled_from([0, 200, 404, 503])
).map(lambda r: (r[0], r[1], r[2], r[2] + r[3], r[4], 0 if r[4] == 200 else 5, 100))


def _good_map(rows: list[tuple]) -> dict:
    payload = encode_batch(
        agent=0,
        incarnation=0,
        seq=0,
        watermark_ns=NOW_NS,
        records=b"".join(RECORD.pack(*r) for r in rows),
        readings=GeneratorReadings(cpu_s=1.5, rss_bytes=10**8, in_flight=3, level=10.0),
        engine="fast",
    )
    return msgpack.unpackb(payload, raw=False)


def _pack(m: object) -> bytes:
    return msgpack.packb(m, use_bin_type=True)


def test_a_good_batch_is_aggregated() -> None:
    # The baseline the mutations start from passes: a mutation that is refused is refused for itself.
    assert _ingest(_pack(_good_map([(0, S, S, 2 * S, 200, 0, 1)])))


# -- garbage of every kind ---------------------------------------------------------------------

_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([-1, 0, 2**31, 2**62, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=80),
)
_garbage = st.recursive(
    _scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=5), inner, max_size=6)),
    max_leaves=30,
)


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(payload: bytes) -> None:
    _bounded(payload)


@FUZZ
@given(
    st.lists(_row, max_size=20),
    st.sampled_from(["v", "agent", "inc", "seq", "wm", "final", "engine", "rec", "gen", "uerr", "data"]),
    st.one_of(_garbage, st.just(...)),
)
def test_one_header_field_replaced_by_garbage_or_removed(rows, key, value) -> None:
    m = _good_map(rows)
    if value is ...:
        m.pop(key, None)  # the optional fields (uerr, data) are absent from the good map
    else:
        m[key] = value
    _bounded(_pack(m))


@FUZZ
@given(st.lists(_row, max_size=20), st.integers(0, 11), _garbage)
def test_one_reading_replaced_by_garbage(rows, i, value) -> None:
    m = _good_map(rows)
    m["gen"][i] = value
    _bounded(_pack(m))


_extreme = st.one_of(
    st.sampled_from([0, 1, 99, 255, 1000, 65535, 2**31, 2**32 - 1, 2**62, 2**63 - 1, -1, -(2**62), -(2**63)]),
    st.integers(-(2**63), 2**63 - 1),
)


@FUZZ
@given(st.lists(_row, min_size=1, max_size=20), st.data())
def test_one_sample_field_set_to_an_extreme(rows, data) -> None:
    arr = np.frombuffer(b"".join(RECORD.pack(*r) for r in rows), dtype=SAMPLE_DTYPE).copy()
    name = data.draw(st.sampled_from(SAMPLE_DTYPE.names))
    row = data.draw(st.integers(0, len(arr) - 1))
    info = np.iinfo(SAMPLE_DTYPE[name])
    arr[name][row] = min(max(data.draw(_extreme), info.min), info.max)
    m = _good_map([])
    m["rec"] = arr.tobytes()
    _bounded(_pack(m))


@FUZZ
@given(st.lists(_row, max_size=20), st.data())
def test_truncated_or_extended(rows, data) -> None:
    payload = _pack(_good_map(rows))
    cut = data.draw(st.integers(0, len(payload)))
    tail = data.draw(st.binary(max_size=40))
    _bounded(payload[:cut])
    _bounded(payload[:cut] + tail)
    flip = data.draw(st.integers(0, len(payload) - 1))
    _bounded(payload[:flip] + bytes([payload[flip] ^ data.draw(st.integers(1, 255))]) + payload[flip + 1 :])


@pytest.mark.parametrize(
    "prefix",
    [
        b"\xdd\xff\xff\xff\xff",  # an array claiming 2^32 - 1 items
        b"\xdf\xff\xff\xff\xff",  # a map claiming 2^32 - 1 pairs
        b"\xc6\xff\xff\xff\xff",  # bytes claiming 4 GiB
        b"\xdb\xff\xff\xff\xff",  # a string claiming 4 GiB
        b"\x91" * 200_000,  # arrays nested 200,000 deep
        b"\x81\xa1k" * 50_000,  # maps nested 50,000 deep
    ],
    ids=["array-4G", "map-4G", "bin-4GiB", "str-4GiB", "arrays-deep", "maps-deep"],
)
def test_huge_claims_allocate_nothing(prefix: bytes) -> None:
    assert not _bounded(prefix + b"\xc0" * 8)


def test_huge_claims_inside_a_good_batch() -> None:
    # The batch map itself is fine but its records field claims 4 GiB it does not hold.
    head = _pack({"v": FORMAT_VERSION, "agent": 0, "inc": 0, "seq": 0, "wm": S, "final": False})
    claimed = bytes([head[0] + 1]) + head[1:] + _pack("rec") + b"\xc6\xff\xff\xff\xff" + b"\x00" * 64
    assert not _bounded(claimed)
    gen = bytes([head[0] + 1]) + head[1:] + _pack("gen") + b"\xdd\xff\xff\xff\xff" + b"\x00" * 64
    assert not _bounded(gen)


@FUZZ
@given(_garbage)
def test_any_msgpack_value(value) -> None:
    assert not _bounded(_pack(value)) or isinstance(value, dict)


def test_the_issue_batch_is_refused_without_allocating() -> None:
    # One sent_ns of 2^62 used to reach SendCounter: a bin count of 344 GiB.
    m = _good_map([(0, S, 2**62, 2**62 + 1, 200, 0, 1)])
    assert not _bounded(_pack(m))


@FUZZ
@given(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, 8]))
def test_float_readings(value, i) -> None:
    m = _good_map([])
    m["gen"][i] = value
    ok = _bounded(_pack(m))
    assert ok == (math.isfinite(value) and 0 <= value < 1e18)


# -- aggregated batches (the default form) ---------------------------------------------------


def _good_agg_map(rows: list[tuple]) -> dict:
    records = np.frombuffer(b"".join(RECORD.pack(*r) for r in rows), dtype=SAMPLE_DTYPE)
    payload = encode_batch(
        agent=0,
        incarnation=0,
        seq=0,
        watermark_ns=NOW_NS,
        agg=aggregate_records(records, np.asarray([30 * S, 90 * S])),
        readings=GeneratorReadings(cpu_s=1.5, rss_bytes=10**8, in_flight=3, level=10.0),
        engine="fast",
    )
    return msgpack.unpackb(payload, raw=False)


def test_a_good_aggregated_batch_is_aggregated() -> None:
    assert _ingest(_pack(_good_agg_map([(0, S, S, 2 * S, 200, 0, 1), (2, 40 * S, 41 * S, 42 * S, 503, 5, 9)])))
    assert _ingest(_pack(_good_agg_map([])))


@FUZZ
@given(
    st.lists(_row, max_size=20),
    st.sampled_from(["win", "grp", "h", "sb", "sends"]),
    st.one_of(_garbage, st.just(...)),
)
def test_one_aggregate_field_replaced_by_garbage_or_removed(rows, key, value) -> None:
    m = _good_agg_map(rows)
    if value is ...:
        del m["agg"][key]
    else:
        m["agg"][key] = value
    _bounded(_pack(m))


@FUZZ
@given(st.lists(_row, min_size=1, max_size=20), st.data())
def test_one_aggregate_column_value_set_to_an_extreme(rows, data) -> None:
    m = _good_agg_map(rows)
    agg = m["agg"]
    kind = data.draw(st.integers(-2, len(agg["h"]) * 4 - 1))
    if kind == -2:  # a group column
        arr = np.frombuffer(agg["grp"], dtype=GROUP_DTYPE).copy()
        name = data.draw(st.sampled_from([n for n in GROUP_DTYPE.names if n != "errors"] + ["errors"]))
        row = data.draw(st.integers(0, len(arr) - 1))
        column = arr[name][row]
        info = np.iinfo(arr[name].dtype)
        value = min(max(data.draw(_extreme), info.min), info.max)
        if name == "errors":
            column[data.draw(st.integers(0, column.shape[0] - 1))] = value
        else:
            arr[name][row] = value
        agg["grp"] = arr.tobytes()
    elif kind == -1:  # the sends
        arr = np.frombuffer(agg["sends"], dtype="<u4").copy()
        arr[data.draw(st.integers(0, len(arr) - 1))] = data.draw(st.integers(0, 2**32 - 1))
        agg["sends"] = arr.tobytes()
    else:  # a histogram column: scalars, offsets, idx or cnt
        h, part = agg["h"][kind // 4], kind % 4
        raw = bytearray(h[part])
        if raw:
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
        h[part] = bytes(raw)
    _bounded(_pack(m))


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda a: a.__setitem__("win", 10**8), "'agg.win'"),
        (lambda a: a.__setitem__("grp", a["grp"][:-1]), "'agg.grp'"),
        (lambda a: a["h"].pop(), "'agg.h"),
        (lambda a: a["h"][0].__setitem__(2, a["h"][0][2][:-2]), "'agg.h.latency'"),
        (lambda a: a.__setitem__("sends", a["sends"] + b"\x01\x00\x00\x00"), "'agg.sends'"),
        (lambda a: a.__setitem__("sb", -1), "'agg.sb'"),
    ],
    ids=["window", "torn-groups", "two-histograms", "torn-idx", "sends-over-requests", "bin-negative"],
)
def test_a_bad_aggregate_names_its_field(mutate, field) -> None:
    m = _good_agg_map([(0, S, S, 2 * S, 200, 0, 1), (1, 2 * S, 2 * S, 3 * S, 200, 0, 1)])
    mutate(m["agg"])
    agg = Aggregator(ENDPOINTS, [30 * S, 90 * S], ["warm", "main"])
    checker = BatchChecker(RunBounds(endpoints=len(ENDPOINTS), stages=2))
    with pytest.raises(BatchFormatError, match=field.replace("(", r"\(")):
        checker.check(decode_batch(_pack(m)), sender=0, incarnations={0: 0}, now_ns=NOW_NS)
    assert agg.snapshot().requests == 0
