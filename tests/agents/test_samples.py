"""horde.agents.samples: the sample record layout, the record buffer and the batch encoder/decoder."""

from __future__ import annotations

import dataclasses

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from horde.agents import samples
from horde.agents.samples import (
    FORMAT_VERSION,
    MAX_BYTES,
    MAX_DATA_FILES,
    MAX_PAYLOAD_BYTES,
    RECORD,
    SAMPLE_DTYPE,
    BatchFormatError,
    ErrorClass,
    GeneratorReadings,
    SampleBuffer,
    classify_status,
    decode_batch,
    encode_batch,
)

FIELDS = ("endpoint", "intended_ns", "sent_ns", "end_ns", "status", "error", "bytes")

# Every reading set to a value of its own, so a swapped or dropped field shows.
READINGS = GeneratorReadings(
    cpu_s=1.25,
    rss_bytes=123_456_789,
    loop_lag_max_ns=7_000_001,
    loop_lag_mean_ns=3_000_002,
    late_sends=11,
    send_lag_max_ns=13_000_003,
    in_flight=17,
    users=19,
    level=23.5,
    interrupted=29,
    unsent=31,
    generator_queued_sends=37,
)


def _payload(records: bytes = b"", **kw) -> bytes:
    args = dict(agent=3, incarnation=2, seq=41, watermark_ns=5_000_000_007, readings=READINGS, final=True)
    args.update(kw)
    return encode_batch(records=records, engine=args.pop("engine", "fast,aiohttp"), **args)


def _map(**changes) -> bytes:
    """A raw batch map (the current version) with some keys changed (a value of `...` removes the key)."""
    m = msgpack.unpackb(_payload(), raw=False)
    for k, v in changes.items():
        if v is ...:
            m.pop(k)
        else:
            m[k] = v
    return msgpack.packb(m, use_bin_type=True)


# -- the record layout ---------------------------------------------------------------------


def test_dtype_is_the_wire_layout_field_by_field() -> None:
    assert SAMPLE_DTYPE.names == FIELDS
    assert SAMPLE_DTYPE.itemsize == RECORD.size == 33  # packed: no padding between fields
    # One record packed by struct reads back through the dtype with the same values.
    # Byte-asymmetric values, so a swapped byte order or a shifted offset shows.
    values = (0x0102, -(2**63), 2**63 - 1, 0x0102030405060708, 0x0A0B, 0x7F, 0x01020304)
    arr = np.frombuffer(RECORD.pack(*values), dtype=SAMPLE_DTYPE)
    assert tuple(arr[0].tolist()) == values
    # Little-endian whatever the machine: the first byte of the endpoint is its low byte.
    assert RECORD.pack(0x0102, 0, 0, 0, 0, 0, 0)[:2] == b"\x02\x01"


def test_error_labels_are_the_lower_case_names() -> None:
    assert ErrorClass.POLL_EXHAUSTED.label == "poll_exhausted"
    assert [e.value for e in ErrorClass] == list(range(len(ErrorClass)))  # a u1 on the wire, dense


@pytest.mark.parametrize(
    "status, expect, error",
    [
        (200, frozenset(), ErrorClass.OK),  # no expect list: 2xx is fine
        (399, frozenset(), ErrorClass.OK),  # ... and 3xx
        (199, frozenset(), ErrorClass.UNEXPECTED_STATUS),  # 1xx is neither
        (400, frozenset(), ErrorClass.HTTP_4XX),
        (499, frozenset(), ErrorClass.HTTP_4XX),
        (500, frozenset(), ErrorClass.HTTP_5XX),
        (599, frozenset(), ErrorClass.HTTP_5XX),
        (600, frozenset(), ErrorClass.UNEXPECTED_STATUS),
        (404, frozenset({200, 404}), ErrorClass.OK),  # an expected 404 is a success
        (200, frozenset({201}), ErrorClass.UNEXPECTED_STATUS),  # a 2xx not in the list fails
        (503, frozenset({201}), ErrorClass.HTTP_5XX),
        (302, frozenset({200}), ErrorClass.UNEXPECTED_STATUS),
    ],
)
def test_classify_status(status: int, expect: frozenset[int], error: ErrorClass) -> None:
    assert classify_status(status, expect) == error


# -- the record buffer ---------------------------------------------------------------------


def test_buffer_grows_by_doubling_and_keeps_every_record() -> None:
    buf = SampleBuffer(capacity=2)
    for i in range(5):
        buf.record(i, 10 * i, 10 * i + 1, 10 * i + 2, 200, 0, i)
    assert (buf.count, buf.capacity) == (5, 8)  # 2 -> 4 -> 8
    arr = np.frombuffer(buf.take(), dtype=SAMPLE_DTYPE)
    assert arr["endpoint"].tolist() == [0, 1, 2, 3, 4]
    assert arr["end_ns"].tolist() == [2, 12, 22, 32, 42]
    assert buf.count == 0 and buf.take() == b""  # take() empties it
    buf.record(9, 1, 2, 3, 204, 0, 0)  # and it is reusable
    assert np.frombuffer(buf.take(), dtype=SAMPLE_DTYPE)["endpoint"].tolist() == [9]


@pytest.mark.parametrize(
    "nbytes, recorded",
    [
        (0, 0),
        (MAX_BYTES - 1, MAX_BYTES - 1),  # the largest value below the cap is kept
        (MAX_BYTES, MAX_BYTES),
        (MAX_BYTES + 1, MAX_BYTES),  # a larger body is clamped, not an overflow error
        (10 * MAX_BYTES, MAX_BYTES),
    ],
)
def test_buffer_clamps_body_bytes_to_the_field(nbytes: int, recorded: int) -> None:
    buf = SampleBuffer(capacity=1)
    buf.record(0, 0, 0, 0, 200, 0, nbytes)
    assert np.frombuffer(buf.take(), dtype=SAMPLE_DTYPE)["bytes"][0] == recorded


# -- encode / decode -----------------------------------------------------------------------


def test_round_trip_of_every_header_and_reading_field() -> None:
    buf = SampleBuffer(capacity=4)
    buf.record(1, -5, 7, 9_000_000_000, 503, ErrorClass.HTTP_5XX, 1234)
    buf.record(0, 100, 101, 102, 0, ErrorClass.TIMEOUT, 0)
    b = decode_batch(_payload(buf.take()))
    assert (b.agent, b.incarnation, b.seq, b.watermark_ns, b.final, b.engine) == (
        3,
        2,
        41,
        5_000_000_007,
        True,
        "fast,aiohttp",
    )
    assert b.readings == READINGS
    assert dataclasses.asdict(b.readings) == dataclasses.asdict(READINGS)  # each field by name
    assert b.samples.dtype == SAMPLE_DTYPE
    assert [tuple(r) for r in b.samples.tolist()] == [
        (1, -5, 7, 9_000_000_000, 503, int(ErrorClass.HTTP_5XX), 1234),
        (0, 100, 101, 102, 0, int(ErrorClass.TIMEOUT), 0),
    ]


def test_defaults_round_trip() -> None:
    b = decode_batch(
        encode_batch(agent=0, incarnation=0, seq=0, watermark_ns=0, records=b"", readings=GeneratorReadings())
    )
    assert (b.final, b.engine, b.readings) == (False, "", GeneratorReadings())


def test_empty_batch_has_zero_samples_of_the_dtype() -> None:
    b = decode_batch(_payload(b""))
    assert len(b.samples) == 0
    assert b.samples.dtype == SAMPLE_DTYPE
    assert b.samples["end_ns"].sum() == 0  # columns of an empty batch still index


def test_a_batch_without_engine_key_decodes_with_an_empty_engine() -> None:
    # Older agents sent no engine name: it is optional on read.
    assert decode_batch(_map(engine=...)).engine == ""


_i64 = st.integers(-(2**63), 2**63 - 1)
_record = st.tuples(
    st.integers(0, 2**16 - 1),  # endpoint
    _i64,  # intended_ns
    _i64,  # sent_ns
    _i64,  # end_ns
    st.integers(0, 2**16 - 1),  # status
    st.integers(0, 255),  # error
    st.integers(0, 2**32 - 1),  # bytes
)
_readings = st.builds(
    GeneratorReadings,
    cpu_s=st.floats(0, 1e9, allow_nan=False),
    rss_bytes=st.integers(0, 2**63 - 1),
    loop_lag_max_ns=st.integers(0, 2**63 - 1),
    loop_lag_mean_ns=st.integers(0, 2**63 - 1),
    late_sends=st.integers(0, 2**40),
    send_lag_max_ns=st.integers(0, 2**63 - 1),
    in_flight=st.integers(0, 2**31),
    users=st.integers(0, 2**31),
    level=st.floats(0, 1e9, allow_nan=False),
    interrupted=st.integers(0, 2**31),
    unsent=st.integers(0, 2**40),
    generator_queued_sends=st.integers(0, 2**40),
)


@given(
    records=st.lists(_record, max_size=40),
    readings=_readings,
    agent=st.integers(0, 10_000),
    incarnation=st.integers(0, 1000),
    seq=st.integers(0, 2**40),
    watermark_ns=_i64,
    final=st.booleans(),
    engine=st.sampled_from(["", "aiohttp", "fast", "aiohttp,fast"]),
)
def test_round_trip_property(records, readings, agent, incarnation, seq, watermark_ns, final, engine) -> None:
    raw = b"".join(RECORD.pack(*r) for r in records)
    b = decode_batch(
        encode_batch(
            agent=agent,
            incarnation=incarnation,
            seq=seq,
            watermark_ns=watermark_ns,
            records=raw,
            readings=readings,
            final=final,
            engine=engine,
        )
    )
    assert (b.agent, b.incarnation, b.seq, b.watermark_ns, b.final, b.engine) == (
        agent,
        incarnation,
        seq,
        watermark_ns,
        final,
        engine,
    )
    assert b.readings == readings
    assert [tuple(r) for r in b.samples.tolist()] == records
    for i, name in enumerate(FIELDS):  # the columns are the fields in wire order
        assert b.samples[name].tolist() == [r[i] for r in records]


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "not a msgpack batch"),  # nothing at all
        (b"\xc1", "not a msgpack batch"),  # a byte msgpack never uses
        (_payload(RECORD.pack(1, 2, 3, 4, 200, 0, 5))[:-7], "not a msgpack batch"),  # truncated
        (_payload() + b"\x00", "not a msgpack batch"),  # trailing bytes after the map
        (msgpack.packb([1, 2, 3]), "not a map"),
        (msgpack.packb("hello"), "not a map"),
        (_map(v=1), "unsupported batch format version 1 .this coordinator reads 2"),  # an older agent
        (_map(v=FORMAT_VERSION + 1), f"unsupported batch format version {FORMAT_VERSION + 1}"),  # a newer agent
        (_map(v=0), "unsupported batch format version 0"),
        (_map(v="1"), "unsupported batch format version '1'"),  # the version must be the integer
        (_map(v=...), "unsupported batch format version None"),  # no version at all
        (_map(rec=b"\x00" * (RECORD.size + 1)), f"not a multiple of {RECORD.size}"),  # a torn record
        (_map(rec=b"\x00" * (RECORD.size - 1)), f"not a multiple of {RECORD.size}"),
    ],
)
def test_garbage_is_a_batch_format_error(payload: bytes, message: str) -> None:
    with pytest.raises(BatchFormatError, match=message.replace("(", r"\(")):
        decode_batch(payload)


def test_batch_format_error_is_a_value_error() -> None:
    assert issubclass(BatchFormatError, ValueError)


@pytest.mark.parametrize(
    "payload, field",
    [
        pytest.param(_map(rec=...), "'rec'", id="no-records"),
        pytest.param(_map(gen=...), "'gen'", id="no-readings"),
        pytest.param(_map(agent=...), "'agent'", id="no-agent"),
        pytest.param(_map(gen=None), "'gen'", id="readings-not-a-list"),
        pytest.param(_map(rec=None), "'rec'", id="records-not-bytes"),
        pytest.param(_map(rec="x" * RECORD.size), "'rec'", id="records-a-string"),
        pytest.param(_map(v=True), "version True", id="version-a-boolean"),
        pytest.param(_map(v=1.0), "version 1.0", id="version-a-float"),
        pytest.param(_map(agent=-1), "'agent'", id="agent-negative"),
        pytest.param(_map(agent="3"), "'agent'", id="agent-a-string"),
        pytest.param(_map(agent=True), "'agent'", id="agent-a-boolean"),
        pytest.param(_map(inc=None), "'inc'", id="no-incarnation"),
        pytest.param(_map(seq=-5), "'seq'", id="seq-negative"),
        pytest.param(_map(seq=2**64 - 1), "'seq'", id="seq-over-i64"),
        pytest.param(_map(wm=1.5), "'wm'", id="watermark-a-float"),
        pytest.param(_map(final=1), "'final'", id="final-an-integer"),
        pytest.param(_map(final=...), "'final'", id="no-final"),
        pytest.param(_map(engine=7), "'engine'", id="engine-a-number"),
        pytest.param(_map(engine="x" * 257), "'engine'", id="engine-too-long"),
        pytest.param(_map(gen=[0] * 11), "'gen'", id="readings-too-few"),
        pytest.param(_map(gen=[0] * 13), "'gen'", id="readings-too-many"),
        pytest.param(_map(gen=[float("nan")] + [0] * 11), "'cpu_s'", id="cpu-nan"),
        pytest.param(_map(gen=[-1.0] + [0] * 11), "'cpu_s'", id="cpu-negative"),
        pytest.param(_map(gen=[0.0, 1.5] + [0] * 10), "'rss_bytes'", id="rss-a-float"),
        pytest.param(_map(gen=[0.0, -1] + [0] * 10), "'rss_bytes'", id="rss-negative"),
        pytest.param(_map(gen=[0.0, "x"] + [0] * 10), "'rss_bytes'", id="rss-a-string"),
        pytest.param(_map(gen=[0.0] + [0] * 7 + [float("inf")] + [0] * 3), "'level'", id="level-infinite"),
    ],
)
def test_a_version_1_map_with_a_bad_field_is_a_batch_format_error_naming_it(payload: bytes, field: str) -> None:
    with pytest.raises(BatchFormatError, match=field.replace("(", r"\(")) as info:
        decode_batch(payload)
    assert "\n" not in str(info.value)  # one line


def test_the_data_row_counts_round_trip_and_are_left_out_when_none() -> None:
    b = decode_batch(_payload(data_rows={"accounts": [7, 2], "p": [0, 1]}))
    assert b.data_rows == {"accounts": [7, 2], "p": [0, 1]}
    assert "data" not in msgpack.unpackb(_payload(data_rows={}), raw=False)
    assert decode_batch(_payload()).data_rows == {}
    with pytest.raises(BatchFormatError):  # more files than a scenario may name (the unpacker's cap, too)
        decode_batch(_payload(data_rows={f"f{i}": [1, 0] for i in range(MAX_DATA_FILES + 1)}))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param([1, 2], id="not-a-map"),
        pytest.param({"x" * 129: [1, 0]}, id="name-too-long"),
        pytest.param({"": [1, 0]}, id="name-empty"),
        pytest.param({"a": [-1, 0]}, id="used-negative"),
        pytest.param({"a": [0, -3]}, id="exhausted-negative"),
        pytest.param({"a": [1]}, id="one-count"),
        pytest.param({"a": [1, 0, 0]}, id="three-counts"),
        pytest.param({"a": [1.5, 0]}, id="a-float"),
        pytest.param({"a": [True, 0]}, id="a-boolean"),
        pytest.param({"a": 3}, id="a-number"),
    ],
)
def test_a_bad_data_row_count_is_a_batch_format_error_naming_the_field(data) -> None:
    m = msgpack.unpackb(_payload(), raw=False)
    m["data"] = data
    with pytest.raises(BatchFormatError, match="batch field 'data'") as info:
        decode_batch(msgpack.packb(m, use_bin_type=True))
    assert "\n" not in str(info.value)


def test_an_oversize_payload_is_refused_before_it_is_unpacked() -> None:
    # Longer than any batch may be: refused on its length alone (the bytes are never parsed).
    with pytest.raises(BatchFormatError, match="payload: .* over the"):
        decode_batch(b"\x00" * (MAX_PAYLOAD_BYTES + 1))


@pytest.mark.parametrize(
    "header",
    [
        b"\xdd\xff\xff\xff\xff",  # an array claiming 2^32 - 1 items
        b"\xdf\xff\xff\xff\xff",  # a map claiming 2^32 - 1 pairs
        b"\xc6\xff\xff\xff\xff",  # bytes claiming 4 GiB
        b"\xdb\xff\xff\xff\xff",  # a string claiming 4 GiB
        b"\x91" * 100_000 + b"\xc0",  # nested 100,000 deep
    ],
)
def test_a_claimed_size_is_not_allocated(header: bytes) -> None:
    with pytest.raises(BatchFormatError, match="not a msgpack batch"):
        decode_batch(header + b"\x00" * 16)


def test_a_batch_of_too_many_records_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # The cap made small, so the test does not build a 138 MB batch.
    monkeypatch.setattr(samples, "MAX_BATCH_RECORDS", 10)
    assert decode_batch(_payload(RECORD.pack(0, 0, 0, 0, 0, 0, 0) * 10)).samples.size == 10
    with pytest.raises(BatchFormatError, match="'rec': 11 records, over 10"):
        decode_batch(_payload(RECORD.pack(0, 0, 0, 0, 0, 0, 0) * 11))
