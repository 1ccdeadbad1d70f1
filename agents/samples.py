"""Sample batches: what a traffic agent streams to the coordinator.

A batch is one msgpack map. Samples travel as packed little-endian records (one fixed
layout per format version) and are decoded into a numpy structured array, whose fields
are column views: the agent pays one ``struct.pack_into`` per request (measured ~0.2 us,
against ~0.45 us for seven numpy item writes) and the coordinator gets columns for free.

All times are int64 nanoseconds relative to the run's common start instant, read from the
agent's monotonic clock.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import msgpack
import numpy as np

FORMAT_VERSION = 1

# One record per request. Field order is the wire layout of FORMAT_VERSION 1.
RECORD = struct.Struct("<HqqqHBI")
SAMPLE_DTYPE = np.dtype(
    [
        ("endpoint", "<u2"),  # index into the scenario's request mix
        ("intended_ns", "<i8"),  # when the schedule wanted it sent (open model) / user was ready (closed)
        ("sent_ns", "<i8"),  # when it was handed to the engine
        ("end_ns", "<i8"),  # when the response (or the error) was complete
        ("status", "<u2"),  # HTTP status, 0 when there was no response
        ("error", "u1"),  # ErrorClass
        ("bytes", "<u4"),  # response body bytes
    ]
)
assert SAMPLE_DTYPE.itemsize == RECORD.size
MAX_BYTES = 0xFFFFFFFF  # a larger body is recorded as this (the field is u4)


class ErrorClass(IntEnum):
    """Why a request failed; OK means it got an expected status."""

    OK = 0
    CONNECT = 1  # refused, unreachable, DNS
    TIMEOUT = 2  # connect or read timeout
    RESET = 3  # connection reset or closed mid-response
    HTTP_4XX = 4  # unexpected 4xx status
    HTTP_5XX = 5  # unexpected 5xx status
    UNEXPECTED_STATUS = 6  # any other status not in the request's expect list
    PROTOCOL = 7  # malformed response
    TOO_LARGE = 8  # response over the size cap
    OTHER = 9  # anything else the engine could not classify
    POLL_EXHAUSTED = 10  # a flow's polled step never met its condition within its bound
    USER_ERROR = 11  # a Python user's code raised, or called client.fail() (issue 15)
    DATA_EXHAUSTED = 12  # a data file's `unique` rows ran out (issue 15)
    TLS = 13  # the TLS handshake failed: certificate not verified, or no client certificate accepted

    @property
    def label(self) -> str:
        return self.name.lower()


ERROR_LABELS: tuple[str, ...] = tuple(e.label for e in ErrorClass)


def classify_status(status: int, expect: frozenset[int]) -> int:
    """Error class of a response that arrived; `expect` empty means any 2xx/3xx is fine."""
    if expect:
        if status in expect:
            return ErrorClass.OK
    elif 200 <= status < 400:
        return ErrorClass.OK
    if 500 <= status < 600:
        return ErrorClass.HTTP_5XX
    if 400 <= status < 500:
        return ErrorClass.HTTP_4XX
    return ErrorClass.UNEXPECTED_STATUS


class SampleBuffer:
    """Preallocated record buffer; grows by doubling when a flush interval outruns it.

    The agent's completion callbacks write records inline (``RECORD.pack_into(buf.data,
    i * RECORD.size, ...)`` after checking ``count`` against ``capacity``): a method call
    per request is a measurable part of the agent's own cost. `record()` is the same for
    the slow paths.
    """

    __slots__ = ("data", "capacity", "count")

    def __init__(self, capacity: int = 65536) -> None:
        self.capacity = capacity
        self.data = bytearray(capacity * RECORD.size)
        self.count = 0

    def grow(self) -> None:
        self.data.extend(bytes(len(self.data)))
        self.capacity *= 2

    def record(
        self,
        endpoint: int,
        intended_ns: int,
        sent_ns: int,
        end_ns: int,
        status: int,
        error: int,
        nbytes: int,
    ) -> None:
        i = self.count
        if i == self.capacity:
            self.grow()
        RECORD.pack_into(
            self.data,
            i * RECORD.size,
            endpoint,
            intended_ns,
            sent_ns,
            end_ns,
            status,
            error,
            nbytes if nbytes < MAX_BYTES else MAX_BYTES,
        )
        self.count = i + 1

    def take(self) -> bytes:
        """The records so far, as bytes; the buffer is empty afterwards."""
        out = bytes(memoryview(self.data)[: self.count * RECORD.size])
        self.count = 0
        return out


@dataclass(frozen=True)
class GeneratorReadings:
    """The agent's view of itself over one flush interval."""

    cpu_s: float = 0.0  # process user+sys CPU seconds since the agent's run began (cumulative)
    rss_bytes: int = 0
    loop_lag_max_ns: int = 0  # worst event-loop wake-up delay in the interval
    loop_lag_mean_ns: int = 0
    late_sends: int = 0  # sends more than LATE_SEND_NS late although a sender was free (generator lag)
    send_lag_max_ns: int = 0
    in_flight: int = 0
    users: int = 0  # active virtual users (closed model)
    level: float = 0.0  # the planned level for this agent at flush time
    interrupted: int = 0  # requests still in flight when the agent gave up waiting (final batch)
    unsent: int = 0  # planned sends never started because the run stopped first
    queued_sends: int = 0  # sends more than LATE_SEND_NS late because every sender was busy (target-bound)


@dataclass(frozen=True)
class Batch:
    agent: int
    incarnation: int
    seq: int
    watermark_ns: int  # every sample with end_ns <= watermark_ns from this agent is in this or an earlier batch
    samples: np.ndarray  # SAMPLE_DTYPE
    readings: GeneratorReadings = field(default_factory=GeneratorReadings)
    final: bool = False
    engine: str = ""
    # Python users (issue 15): iterations ended by an exception, by its type name, this batch.
    user_errors: dict[str, int] = field(default_factory=dict)


_READING_KEYS = tuple(GeneratorReadings.__dataclass_fields__)


def encode_batch(
    *,
    agent: int,
    incarnation: int,
    seq: int,
    watermark_ns: int,
    records: bytes,
    readings: GeneratorReadings,
    final: bool = False,
    engine: str = "",
    user_errors: dict[str, int] | None = None,
) -> bytes:
    extra = {"uerr": user_errors} if user_errors else {}
    return msgpack.packb(
        {
            **extra,
            "v": FORMAT_VERSION,
            "agent": agent,
            "inc": incarnation,
            "seq": seq,
            "wm": watermark_ns,
            "final": final,
            "engine": engine,
            "rec": records,
            "gen": [getattr(readings, k) for k in _READING_KEYS],
        },
        use_bin_type=True,
    )


class BatchFormatError(ValueError):
    """A batch that is not what an agent of this run sends; the message names the field."""


# What a peer controls is bounded before anything is allocated for it.
MAX_BATCH_RECORDS = 1 << 22  # ~4.2 M samples (138 MB): 40 s of 100k requests/s from one agent
MAX_PAYLOAD_BYTES = MAX_BATCH_RECORDS * RECORD.size + 65_536  # the records plus the header
MAX_ENGINE_CHARS = 256
MAX_USER_ERROR_TYPES = 33  # agents/user_client.py keeps 32 names and "other"
MAX_USER_ERROR_NAME = 128
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_FLOAT_READINGS = frozenset({"cpu_s", "level"})
# The unpacker's own caps: a claimed length over these fails before a list, map, str or bytes is made.
_UNPACK_LIMITS = dict(
    max_bin_len=MAX_PAYLOAD_BYTES,
    max_str_len=MAX_ENGINE_CHARS * 4,
    max_array_len=64,
    max_map_len=64,
    max_ext_len=0,
)


def _int_field(m: dict[str, Any], key: str, low: int, high: int = _I64_MAX) -> int:
    v = m.get(key)
    # bool is an int subclass; msgpack gives True/False for its own booleans, never for numbers.
    if type(v) is not int:
        raise BatchFormatError(f"batch field {key!r}: expected an integer, got {type(v).__name__}")
    if not low <= v <= high:
        raise BatchFormatError(f"batch field {key!r}: {v} outside [{low}, {high}]")
    return v


def _readings(gen: Any) -> GeneratorReadings:
    if not isinstance(gen, list) or len(gen) != len(_READING_KEYS):
        size = len(gen) if isinstance(gen, list) else type(gen).__name__
        raise BatchFormatError(f"batch field 'gen': expected a list of {len(_READING_KEYS)} readings, got {size}")
    values: dict[str, Any] = {}
    for key, v in zip(_READING_KEYS, gen):
        if key in _FLOAT_READINGS and type(v) in (float, int):
            v = float(v)
            if not 0.0 <= v < 1e18:  # also refuses NaN and infinities
                raise BatchFormatError(f"batch reading {key!r}: {v} is not a finite non-negative number")
        elif type(v) is int:
            if not 0 <= v <= _I64_MAX:
                raise BatchFormatError(f"batch reading {key!r}: {v} outside [0, {_I64_MAX}]")
        else:
            want = "a number" if key in _FLOAT_READINGS else "an integer"
            raise BatchFormatError(f"batch reading {key!r}: expected {want}, got {type(v).__name__}")
        values[key] = v
    return GeneratorReadings(**values)


def _user_errors(value: Any) -> dict[str, int]:
    """The optional `uerr` map: exception type name -> count, bounded in size and range."""
    if not isinstance(value, dict) or len(value) > MAX_USER_ERROR_TYPES:
        raise BatchFormatError(f"batch field 'uerr': expected a map of at most {MAX_USER_ERROR_TYPES} entries")
    for k, v in value.items():
        name_ok = isinstance(k, str) and 0 < len(k) <= MAX_USER_ERROR_NAME
        if not name_ok or type(v) is not int or not 0 <= v <= _I64_MAX:
            raise BatchFormatError("batch field 'uerr': expected type names of at most 128 characters and counts")
    return value


def decode_batch(payload: bytes) -> Batch:
    """A batch from its wire form, every header field and reading checked for type and range.

    Raises BatchFormatError with a one-line reason naming the field. The sample columns are
    checked against the run (endpoints, times, status and error ranges) by
    coordinator/measure/batch_check.py, which knows the run's bounds.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise BatchFormatError(f"batch payload: expected bytes, got {type(payload).__name__}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise BatchFormatError(f"batch payload: {len(payload)} bytes, over the {MAX_PAYLOAD_BYTES} limit")
    try:
        m: dict[str, Any] = msgpack.unpackb(payload, raw=False, **_UNPACK_LIMITS)
    except Exception as exc:  # msgpack raises several unrelated types
        raise BatchFormatError(f"not a msgpack batch: {type(exc).__name__}: {exc}") from exc
    if not isinstance(m, dict) or m.get("v") != FORMAT_VERSION or type(m.get("v")) is not int:
        raise BatchFormatError(f"unsupported batch format version {m.get('v') if isinstance(m, dict) else None!r}")
    rec = m.get("rec")
    if not isinstance(rec, bytes):
        raise BatchFormatError(f"batch field 'rec': expected bytes, got {type(rec).__name__}")
    if len(rec) % RECORD.size:
        raise BatchFormatError(f"batch field 'rec': record bytes {len(rec)} not a multiple of {RECORD.size}")
    if len(rec) // RECORD.size > MAX_BATCH_RECORDS:
        raise BatchFormatError(f"batch field 'rec': {len(rec) // RECORD.size} records, over {MAX_BATCH_RECORDS}")
    final = m.get("final")
    if not isinstance(final, bool):
        raise BatchFormatError(f"batch field 'final': expected a boolean, got {type(final).__name__}")
    engine = m.get("engine", "")
    if not isinstance(engine, str) or len(engine) > MAX_ENGINE_CHARS:
        raise BatchFormatError(f"batch field 'engine': expected a name of at most {MAX_ENGINE_CHARS} characters")
    return Batch(
        agent=_int_field(m, "agent", 0),
        incarnation=_int_field(m, "inc", 0),
        seq=_int_field(m, "seq", 0),
        watermark_ns=_int_field(m, "wm", _I64_MIN),
        samples=np.frombuffer(rec, dtype=SAMPLE_DTYPE),
        readings=_readings(m.get("gen")),
        final=final,
        engine=engine,
        user_errors=_user_errors(m.get("uerr", {})),
    )


LATE_SEND_NS = 10_000_000  # a send more than 10 ms behind its intended time counts as late
