"""Sample batches: what a traffic agent streams to the coordinator, on the wire.

A batch is one msgpack map. By default it carries the flush's ``Aggregate``
(agents/records.py, built by agents/aggregate.py): per (window, endpoint, stage) the
counts, error classes, bytes and histograms of latency, service time and send lag, plus the
sends per 100 ms. The coordinator merges those, so its cost follows agents x endpoints, not
requests. With ``HORDE_SAMPLES=raw`` in the agent's environment (debugging) the records
themselves travel instead ("rec"), decoded into a numpy structured array whose fields are
column views. Format 2 carries either; format 1 (raw only, no generator-queued flag) is
refused. ``decode_batch`` checks every field a peer controls for type, range and size
before anything is allocated for it.

The records and the batch's types live in agents/records.py; they are importable from here
too (this module is the contract with coordinator/measure/batch_check.py).
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from horde.agents.histogram import GROUP_HIST_DTYPE, GroupedHistograms
from horde.agents.records import (
    ERROR_LABELS,
    ERROR_MASK,
    GENERATOR_QUEUED,
    GROUP_DTYPE,
    HIST_KINDS,
    LATE_SEND_NS,
    MAX_BYTES,
    N_ERROR_CLASSES,
    RECORD,
    SAMPLE_DTYPE,
    SEND_BIN_NS,
    WINDOW_NS,
    Aggregate,
    Batch,
    ErrorClass,
    GeneratorReadings,
    SampleBuffer,
    classify_status,
    known_classes,
    send_bins,
)
from horde.agents.timers import timing_in_use

__all__ = [
    "ERROR_LABELS",
    "ERROR_MASK",
    "FORMAT_VERSION",
    "GENERATOR_QUEUED",
    "GROUP_DTYPE",
    "HIST_KINDS",
    "LATE_SEND_NS",
    "MAX_BATCH_RECORDS",
    "MAX_BUCKETS",
    "MAX_BYTES",
    "MAX_DATA_FILES",
    "MAX_DATA_NAME",
    "MAX_ENGINE_CHARS",
    "MAX_GROUPS",
    "MAX_PAYLOAD_BYTES",
    "MAX_SEND_BINS",
    "MAX_USER_ERROR_NAME",
    "MAX_USER_ERROR_TYPES",
    "N_ERROR_CLASSES",
    "RECORD",
    "SAMPLE_DTYPE",
    "SEND_BIN_NS",
    "WINDOW_NS",
    "Aggregate",
    "Batch",
    "BatchFormatError",
    "ErrorClass",
    "GeneratorReadings",
    "SampleBuffer",
    "classify_status",
    "decode_batch",
    "encode_batch",
    "known_classes",
    "send_bins",
]

FORMAT_VERSION = 2  # the record layout (agents/records.py RECORD) is FORMAT_VERSION 2's, as of 1


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
    timing: str | None = None,
    user_errors: dict[str, int] | None = None,
    data_rows: dict[str, list[int]] | None = None,
) -> bytes:
    """Exactly one of `records` (raw) and `agg` (aggregated). `timing` None: the calling
    thread's send timers and priority (the agent's loop thread encodes its own batches)."""
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
        "timing": timing_in_use() if timing is None else timing,
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
MAX_TIMING_CHARS = 256
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
    timing = m.get("timing", "")
    if not isinstance(timing, str) or len(timing) > MAX_TIMING_CHARS:
        raise BatchFormatError(f"batch field 'timing': expected text of at most {MAX_TIMING_CHARS} characters")
    return Batch(
        agent=_int_field(m, "agent", 0),
        incarnation=_int_field(m, "inc", 0),
        seq=_int_field(m, "seq", 0),
        watermark_ns=_int_field(m, "wm", _I64_MIN),
        samples=samples,
        readings=_readings(m.get("gen")),
        final=final,
        engine=engine,
        timing=timing,
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
