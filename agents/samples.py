"""Sample batches: what a traffic agent streams to the coordinator.

A batch is one msgpack map. The agent records each request as a packed little-endian
record (one ``struct.pack_into`` per request: measured ~0.2 us, against ~0.45 us for seven
numpy item writes). At flush time it aggregates the records (agents/aggregate.py) and sends
an ``Aggregate``: per (window, endpoint, stage) the counts, error classes, bytes and
histograms of latency, service time and send lag, plus the sends per 100 ms. The
coordinator merges those, so its cost follows agents x endpoints, not requests. With
``HORDE_SAMPLES=raw`` in the agent's environment (debugging) the records themselves travel
instead ("rec"), decoded into a numpy structured array whose fields are column views.
Format 2 carries either; format 1 (raw only, no generator-queued flag) is refused.

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

from horde.agents.histogram import GROUP_HIST_DTYPE, GroupedHistograms

FORMAT_VERSION = 2

# One record per request. Field order is the wire layout of FORMAT_VERSION 2 (as of 1).
RECORD = struct.Struct("<HqqqHBI")
SAMPLE_DTYPE = np.dtype(
    [
        ("endpoint", "<u2"),  # index into the scenario's request mix
        ("intended_ns", "<i8"),  # when the schedule wanted it sent (open model) / user was ready (closed)
        ("sent_ns", "<i8"),  # when it was handed to the engine
        ("end_ns", "<i8"),  # when the response (or the error) was complete
        ("status", "<u2"),  # HTTP status, 0 when there was no response
        ("error", "u1"),  # ErrorClass, | GENERATOR_QUEUED when horde's own slots held the send back
        ("bytes", "<u4"),  # response body bytes
    ]
)
assert SAMPLE_DTYPE.itemsize == RECORD.size
MAX_BYTES = 0xFFFFFFFF  # a larger body is recorded as this (the field is u4)
# A flag on a record's error byte: every one of the agent's own max_in_flight slots was busy
# at the intended time, so the send waited for horde itself (generator queueing), not for a
# free target. ERROR_MASK gives the error class back.
GENERATOR_QUEUED = 0x80
ERROR_MASK = 0x7F
WINDOW_NS = 1_000_000_000  # the coordinator's window: a sample's is end_ns // WINDOW_NS
SEND_BIN_NS = 100_000_000  # sends are counted per 100 ms (spike and ramp analysis)


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


def known_classes(error: np.ndarray) -> np.ndarray:
    """Error classes as counted: one this version does not know counts as `other`; the
    classes after OTHER (poll_exhausted, user_error, data_exhausted, tls) keep their names."""
    return np.where(error < len(ErrorClass), error, int(ErrorClass.OTHER))


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

    def view(self) -> np.ndarray:
        """The records so far as SAMPLE_DTYPE columns over the buffer (valid until the next
        record or grow; `clear()` empties the buffer)."""
        return np.frombuffer(self.data, dtype=SAMPLE_DTYPE, count=self.count)

    def clear(self) -> None:
        self.count = 0

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
    # sends more than LATE_SEND_NS late because every one of the agent's own max_in_flight
    # slots was busy (generator queueing: horde's cap held them back, not a free target)
    generator_queued_sends: int = 0


N_ERROR_CLASSES = len(ErrorClass)
# One row per (window, endpoint, stage) group of an aggregated batch.
GROUP_DTYPE = np.dtype(
    [
        ("window", "<i8"),  # end_ns // window_ns
        ("endpoint", "<u2"),
        ("stage", "<u2"),  # the stage that planned it: by intended_ns
        ("requests", "<u4"),
        ("generator_queued", "<u4"),  # requests sent late because every slot of the agent was busy
        ("bytes", "<u8"),
        ("errors", "<u4", (N_ERROR_CLASSES,)),  # requests by error class (OK first)
    ]
)
HIST_KINDS = ("latency", "service_time", "send_lag", "latency_unqueued")


@dataclass(frozen=True)
class Aggregate:
    """A flush's records, aggregated (agents/aggregate.py): what an agent sends by default."""

    window_ns: int
    groups: np.ndarray  # GROUP_DTYPE, one row per (window, endpoint, stage) with requests
    latency: GroupedHistograms  # end - intended, per group
    service_time: GroupedHistograms  # end - sent
    send_lag: GroupedHistograms  # sent - intended
    # Latency with the generator-queue wait taken out (end - sent for generator-queued
    # requests); None when no request of the batch was generator-queued (then it is `latency`).
    latency_unqueued: GroupedHistograms | None
    sends_first_bin: int  # sends[i] requests were sent in SEND_BIN_NS bin sends_first_bin + i
    sends: np.ndarray  # <u4

    def histograms(self) -> list[GroupedHistograms]:
        out = [self.latency, self.service_time, self.send_lag]
        return out if self.latency_unqueued is None else [*out, self.latency_unqueued]


@dataclass(frozen=True)
class Batch:
    agent: int
    incarnation: int
    seq: int
    watermark_ns: int  # every sample with end_ns <= watermark_ns from this agent is in this or an earlier batch
    samples: np.ndarray  # SAMPLE_DTYPE (empty when the batch is aggregated)
    readings: GeneratorReadings = field(default_factory=GeneratorReadings)
    final: bool = False
    engine: str = ""
    # Python users (issue 15): iterations ended by an exception, by its type name, this batch.
    user_errors: dict[str, int] = field(default_factory=dict)
    # Data files (agents/data.py): name -> [rows handed out, requests refused for want of a row], this batch.
    data_rows: dict[str, list[int]] = field(default_factory=dict)
    agg: Aggregate | None = None  # the records, aggregated (the default form)

    @property
    def requests(self) -> int:
        """How many requests the batch reports."""
        if self.agg is None:
            return len(self.samples)
        return int(self.agg.groups["requests"].sum(dtype=np.int64))

    def send_bins(self) -> tuple[int, np.ndarray]:
        """(first bin, sends per SEND_BIN_NS bin from it)."""
        if self.agg is not None:
            return self.agg.sends_first_bin, self.agg.sends
        return send_bins(self.samples["sent_ns"])


def send_bins(sent_ns: np.ndarray) -> tuple[int, np.ndarray]:
    """Sends per SEND_BIN_NS bin of run time (a send before the start counts in bin 0)."""
    if len(sent_ns) == 0:
        return 0, np.zeros(0, dtype=np.uint32)
    bins = np.maximum(sent_ns, 0) // SEND_BIN_NS
    first = int(bins.min())
    return first, np.bincount(bins - first).astype(np.uint32)


_READING_KEYS = tuple(GeneratorReadings.__dataclass_fields__)


def encode_batch(
    *,
    agent: int,
    incarnation: int,
    seq: int,
    watermark_ns: int,
    readings: GeneratorReadings,
    records: bytes | None = None,
    agg: Aggregate | None = None,
    final: bool = False,
    engine: str = "",
    user_errors: dict[str, int] | None = None,
    data_rows: dict[str, list[int]] | None = None,
) -> bytes:
    """Exactly one of `records` (raw) and `agg` (aggregated)."""
    if (records is None) == (agg is None):
        raise ValueError("a batch carries either records or an aggregate")
    m: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "agent": agent,
        "inc": incarnation,
        "seq": seq,
        "wm": watermark_ns,
        "final": final,
        "engine": engine,
        "gen": [getattr(readings, k) for k in _READING_KEYS],
    }
    if agg is not None:
        m["agg"] = _encode_aggregate(agg)
    else:
        m["rec"] = records
    if user_errors:
        m["uerr"] = user_errors
    if data_rows:
        m["data"] = data_rows
    return msgpack.packb(m, use_bin_type=True)


def _encode_aggregate(a: Aggregate) -> dict[str, Any]:
    return {
        "win": a.window_ns,
        "grp": a.groups.astype(GROUP_DTYPE, copy=False).tobytes(),
        "h": [
            [h.scalars.tobytes(), h.offsets.astype("<u4").tobytes(), h.idx.tobytes(), h.cnt.tobytes()]
            for h in a.histograms()
        ],
        "sb": a.sends_first_bin,
        "sends": a.sends.astype("<u4").tobytes(),
    }


class BatchFormatError(ValueError):
    """A batch that is not what an agent of this run sends; the message names the field."""


# What a peer controls is bounded before anything is allocated for it.
MAX_BATCH_RECORDS = 1 << 22  # ~4.2 M samples (138 MB): 40 s of 100k requests/s from one agent
MAX_PAYLOAD_BYTES = MAX_BATCH_RECORDS * RECORD.size + 65_536  # the records plus the header
MAX_ENGINE_CHARS = 256
MAX_USER_ERROR_TYPES = 33  # agents/user_client.py keeps 32 names and "other"
MAX_USER_ERROR_NAME = 128
MAX_DATA_FILES = 64  # a scenario names at most 64 (coordinator/scenario/models.py); the run checks its own count
MAX_DATA_NAME = 128
MAX_GROUPS = 1 << 20  # (window, endpoint, stage) groups in one aggregated batch
MAX_BUCKETS = 1 << 23  # non-zero buckets of one histogram kind over all groups
MAX_SEND_BINS = 1 << 16  # 100 ms bins one batch may span (~1.8 h)
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


def _data_rows(value: Any) -> dict[str, list[int]]:
    """The optional `data` map: data file name -> [rows handed out, refusals], bounded in size
    and range (the names against the scenario's files: coordinator/measure/batch_check.py)."""
    if not isinstance(value, dict) or len(value) > MAX_DATA_FILES:
        raise BatchFormatError(f"batch field 'data': expected a map of at most {MAX_DATA_FILES} entries")
    for k, v in value.items():
        name_ok = isinstance(k, str) and 0 < len(k) <= MAX_DATA_NAME
        counts_ok = isinstance(v, list) and len(v) == 2 and all(type(n) is int and 0 <= n <= _I64_MAX for n in v)
        if not name_ok or not counts_ok:
            raise BatchFormatError(
                f"batch field 'data': expected file names of at most {MAX_DATA_NAME} characters, "
                "each with [rows used, exhausted] as non-negative integers"
            )
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
    if not isinstance(m, dict):
        raise BatchFormatError(f"not a batch: a msgpack {type(m).__name__}, not a map")
    version = m.get("v")
    if type(version) is not int or version != FORMAT_VERSION:
        raise BatchFormatError(
            f"batch field 'v': unsupported batch format version {version!r} (this coordinator reads "
            f"{FORMAT_VERSION}; agent and coordinator must come from the same horde version)"
        )
    if ("rec" in m) == ("agg" in m):
        raise BatchFormatError("batch fields 'rec' / 'agg': expected exactly one of them")
    agg = None
    samples = _EMPTY_SAMPLES
    if "agg" in m:
        agg = _decode_aggregate(m["agg"])
    else:
        samples = _decode_records(m["rec"])
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
        samples=samples,
        readings=_readings(m.get("gen")),
        final=final,
        engine=engine,
        user_errors=_user_errors(m.get("uerr", {})),
        data_rows=_data_rows(m.get("data", {})),
        agg=agg,
    )


_EMPTY_SAMPLES = np.empty(0, dtype=SAMPLE_DTYPE)
_EMPTY_SAMPLES.flags.writeable = False


def _decode_records(rec: Any) -> np.ndarray:
    if not isinstance(rec, bytes):
        raise BatchFormatError(f"batch field 'rec': expected bytes, got {type(rec).__name__}")
    if len(rec) % RECORD.size:
        raise BatchFormatError(f"batch field 'rec': record bytes {len(rec)} not a multiple of {RECORD.size}")
    if len(rec) // RECORD.size > MAX_BATCH_RECORDS:
        raise BatchFormatError(f"batch field 'rec': {len(rec) // RECORD.size} records, over {MAX_BATCH_RECORDS}")
    return np.frombuffer(rec, dtype=SAMPLE_DTYPE)


def _column(value: Any, name: str, dtype: np.dtype | str, limit: int) -> np.ndarray:
    """A bytes field as a numpy array of `dtype`, at most `limit` items."""
    dt = np.dtype(dtype)
    if not isinstance(value, bytes):
        raise BatchFormatError(f"batch field {name!r}: expected bytes, got {type(value).__name__}")
    if len(value) % dt.itemsize:
        raise BatchFormatError(f"batch field {name!r}: {len(value)} bytes, not a multiple of {dt.itemsize}")
    n = len(value) // dt.itemsize
    if n > limit:
        raise BatchFormatError(f"batch field {name!r}: {n} items, over {limit}")
    return np.frombuffer(value, dtype=dt)


def _decode_aggregate(a: Any) -> Aggregate:
    """The aggregate's structure: fields, types, array sizes, CSR offsets. Its figures are
    checked against each other and the run in coordinator/measure/batch_check.py."""
    if not isinstance(a, dict):
        raise BatchFormatError(f"batch field 'agg': expected a map, got {type(a).__name__}")
    win = a.get("win")
    if type(win) is not int or win != WINDOW_NS:
        raise BatchFormatError(f"batch field 'agg.win': {win!r}, but the coordinator's window is {WINDOW_NS} ns")
    groups = _column(a.get("grp"), "agg.grp", GROUP_DTYPE, MAX_GROUPS)
    n = len(groups)
    hs = a.get("h")
    if not isinstance(hs, list) or len(hs) not in (3, 4):
        raise BatchFormatError("batch field 'agg.h': expected a list of 3 or 4 histogram columns")
    hists = [_decode_grouped(h, f"agg.h.{HIST_KINDS[i]}", n) for i, h in enumerate(hs)]
    first = a.get("sb")
    if type(first) is not int or not 0 <= first <= _I64_MAX // SEND_BIN_NS:
        raise BatchFormatError(f"batch field 'agg.sb': expected a bin index >= 0, got {first!r}")
    sends = _column(a.get("sends"), "agg.sends", "<u4", MAX_SEND_BINS)
    return Aggregate(
        window_ns=win,
        groups=groups,
        latency=hists[0],
        service_time=hists[1],
        send_lag=hists[2],
        latency_unqueued=hists[3] if len(hists) == 4 else None,
        sends_first_bin=first,
        sends=sends,
    )


def _decode_grouped(h: Any, name: str, n_groups: int) -> GroupedHistograms:
    if not isinstance(h, list) or len(h) != 4:
        raise BatchFormatError(f"batch field {name!r}: expected [scalars, offsets, idx, cnt]")
    scalars = _column(h[0], f"{name}.scalars", GROUP_HIST_DTYPE, MAX_GROUPS)
    if len(scalars) != n_groups:
        raise BatchFormatError(f"batch field {name!r}: {len(scalars)} groups, but 'agg.grp' has {n_groups}")
    offsets = _column(h[1], f"{name}.offsets", "<u4", MAX_GROUPS + 1).astype(np.int64)
    idx = _column(h[2], f"{name}.idx", "<u2", MAX_BUCKETS)
    cnt = _column(h[3], f"{name}.cnt", "<u4", MAX_BUCKETS)
    if len(offsets) != n_groups + 1 or len(idx) != len(cnt):
        raise BatchFormatError(f"batch field {name!r}: offsets, idx and cnt of inconsistent lengths")
    if offsets[0] != 0 or offsets[-1] != len(idx) or bool((np.diff(offsets) < 0).any()):
        raise BatchFormatError(f"batch field {name!r}.offsets: not ascending from 0 to the bucket count")
    return GroupedHistograms(scalars, offsets, idx, cnt)


LATE_SEND_NS = 10_000_000  # a send more than 10 ms behind its intended time counts as late
