"""Reading bundle files that may be damaged: a bundle may come from anywhere (shared,
fetched, half-written by a killed coordinator).

Files are opened only when regular (a FIFO or device planted in a bundle is refused, not
waited on) and read in bounded pieces; the appended streams (plain, or one gzip stream in
format 2: codec.py) are read record by record; each record is checked before it is used, and
what is wrong is said with the file and the record. store.py's `Bundle` reads through these.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import numpy as np

from horde.coordinator.bundle.codec import GZIP_MAGIC, StreamDamage, gunzip_chunks
from horde.coordinator.measure.aggregate import N_ERROR_CLASSES
from horde.coordinator.measure.histogram import COUNTS_LEN, LAYOUT


class BundleError(RuntimeError):
    pass


# -- reading what may be damaged ------------------------------------------------------------
# A bundle may come from anywhere (shared, fetched, half-written by a killed coordinator).
# manifest.json, summary.json and histograms.msgpack are written whole: damage there is a
# BundleError naming the file. The appended streams (windows.jsonl, windows.msgpack,
# alerts.jsonl) skip a bad record and note it in Bundle.problems, so that one bad line
# never hides the lines after it.

MAX_FILE_BYTES = 512 * 1024 * 1024  # manifest.json, summary.json, histograms.msgpack


def open_regular(path: Path) -> BinaryIO:
    """A regular file opened for reading (a FIFO or device planted in a bundle is refused,
    not waited on)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise BundleError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BundleError(f"{path}: not a regular file")
    return os.fdopen(fd, "rb")


def read_bytes(path: Path) -> bytes:
    with open_regular(path) as f:
        try:
            data = f.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise BundleError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise BundleError(f"{path}: larger than {MAX_FILE_BYTES} bytes, the limit for a bundle file")
    return data


_CHUNK = 1 << 16


def open_stream(path: Path) -> tuple[bool, Iterator[bytes]]:
    """(compressed, the file's bytes chunk by chunk, decompressed when the file is a gzip
    stream: format 2). Iterating raises StreamDamage where a gzip stream is damaged."""
    f = open_regular(path)
    first = f.read(_CHUNK)

    def rest() -> Iterator[bytes]:
        with f:
            while chunk := f.read(_CHUNK):
                yield chunk

    if first.startswith(GZIP_MAGIC):
        return True, gunzip_chunks(rest(), first)
    return False, itertools.chain((first,) if first else (), rest())


def stream_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The lines of a byte stream, each with its newline (a last line without one: torn)."""
    tail = b""
    for chunk in chunks:
        parts = (tail + chunk).split(b"\n")
        tail = parts.pop()
        for part in parts:
            yield part + b"\n"
    if tail:
        yield tail


def jsonl_records(path: Path, problems: list[str], *, quiet_torn_tail: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, object) per line of a .jsonl file (plain, or one gzip stream); a line
    that is not a JSON object is noted in problems and skipped. quiet_torn_tail: an
    unterminated last line that is not JSON (a coordinator killed mid-write) is skipped
    without a note. A gzip stream damaged past some line ends there, noted."""
    if not path.exists():
        return
    n = 0
    try:
        for n, raw in enumerate(stream_lines(open_stream(path)[1]), 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (ValueError, RecursionError):  # not UTF-8, not JSON, an integer too long to convert
                if not (quiet_torn_tail and not raw.endswith(b"\n")):
                    problems.append(f"{path.name}: line {n}: torn or not JSON")
                continue
            if not isinstance(record, dict):
                problems.append(f"{path.name}: line {n}: not an object")
                continue
            yield n, record
    except StreamDamage as exc:
        problems.append(f"{path.name}: after line {n}: {exc}; the rest is ignored")


MAX_SEND_BINS = 10_000_000  # 100 ms bins: 11.5 days, longer than any run horde plans


def sends_record(first_bin: int, counts: np.ndarray) -> dict[str, Any]:
    width = 4 if not len(counts) or int(counts.max()) < 2**32 else 8
    return {"bin": int(first_bin), "w": width, "c": counts.astype("<u4" if width == 4 else "<i8").tobytes()}


def _sends_fields(item: Any) -> tuple[int, np.ndarray] | None:
    """(first bin, counts) of a sends.msgpack record, or None when it is not one."""
    if not isinstance(item, dict):
        return None
    first, width, data = item.get("bin"), item.get("w"), item.get("c")
    if not (isinstance(first, int) and _is_int(first) and width in (4, 8) and isinstance(data, bytes)):
        return None
    if len(data) % width:
        return None
    return first, np.frombuffer(data, dtype="<u4" if width == 4 else "<i8").astype(np.int64)


def read_sends(path: Path, problems: list[str]) -> np.ndarray:
    total = np.zeros(0, dtype=np.int64)
    used = n = 0
    if not path.exists():
        return total
    with open_regular(path) as f:
        unpacker = msgpack.Unpacker(f, raw=False)
        while True:
            try:
                item = unpacker.unpack()
            except msgpack.OutOfData:
                return total[:used]
            except (ValueError, TypeError, msgpack.UnpackException) as exc:
                problems.append(f"sends.msgpack: record {n + 1}: not msgpack ({exc}); the rest is ignored")
                return total[:used]
            n += 1
            parsed = _sends_fields(item)
            if parsed is None:
                problems.append(f"sends.msgpack: record {n}: not a sends record")
                continue
            first, counts = parsed
            end = first + len(counts)
            if first < 0 or end > MAX_SEND_BINS or (len(counts) and int(counts.min()) < 0):
                problems.append(f"sends.msgpack: record {n}: bins out of range")
                continue
            if end > len(total):
                grown = np.zeros(max(end, 2 * len(total)), dtype=np.int64)
                grown[: len(total)] = total
                total = grown
            total[first:end] += counts
            used = max(used, end)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _sparse_problem(d: Any) -> str | None:
    """Why a sparse histogram (Histogram.to_sparse) cannot be restored, or None."""
    if not isinstance(d, dict):
        return "a histogram is not a map"
    if d.get("layout") != LAYOUT:
        return "a histogram's layout is not this horde's"
    idx, cnt = d.get("idx"), d.get("cnt")
    if not (isinstance(idx, bytes) and isinstance(cnt, bytes)) or len(idx) % 4 or len(idx) * 2 != len(cnt):
        return "a histogram's sparse counts are malformed"
    if not all(_is_int(d.get(k)) and d[k] >= 0 for k in ("count", "overflow", "clamped")):
        return "a histogram's count, overflow or clamped is not a count"
    if not all(d.get(k) is None or _is_int(d[k]) for k in ("min", "max")):
        return "a histogram's min or max is not a whole number"
    total = d.get("sum")
    if not (_is_int(total) or (isinstance(total, str) and len(total) <= 40 and total.lstrip("-").isdigit())):
        return "a histogram's sum is not a whole number"
    indices = np.frombuffer(idx, dtype="<u4")
    counts = np.frombuffer(cnt, dtype="<i8")
    if len(indices) and (int(indices.max()) >= COUNTS_LEN or int(counts.min()) < 0):
        return "a histogram's sparse counts are out of range"
    if sum(counts.tolist()) + d["overflow"] != d["count"]:
        return "a histogram's counts do not add up to its count"
    return None


def _stats_problem(d: Any) -> str | None:
    """Why Stats.from_sparse would fail on d, or None."""
    if not isinstance(d, dict):
        return "stats are not a map"
    if not all(_is_int(d.get(k)) for k in ("requests", "errors", "bytes")):
        return "requests, errors or bytes is not a whole number"
    duration = d.get("duration_s")
    if not (isinstance(duration, (int, float)) and not isinstance(duration, bool) and math.isfinite(duration)):
        return "duration_s is not a finite number"
    by_class = d.get("errors_by_class")
    if not (isinstance(by_class, list) and len(by_class) <= N_ERROR_CLASSES and all(map(_is_int, by_class))):
        return f"errors_by_class is not a list of at most {N_ERROR_CLASSES} counts"
    if any(abs(v) >= 2**63 for v in (d["requests"], d["errors"], d["bytes"], *by_class)):
        return "a count is beyond 64 bits"
    for series in ("latency", "service_time", "send_lag"):
        if why := _sparse_problem(d.get(series)):
            return f"{series}: {why}"
    return None


def window_record_problem(item: Any) -> str | None:
    if not isinstance(item, dict):
        return f"expected a map, got {type(item).__name__}"
    if not _is_int(item.get("index")):
        return "index is not a whole number"
    endpoints = item.get("endpoints")
    if endpoints is None:
        return None
    if not isinstance(endpoints, dict):
        return "endpoints is not a map"
    for name, stats in endpoints.items():
        if not isinstance(name, str):
            return "an endpoint name is not text"
        if why := _stats_problem(stats):
            return f"endpoint {name[:80]!r}: {why}"
    return None


def histogram_entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return f"expected a map, got {type(entry).__name__}"
    for key in ("endpoint", "stage"):
        if not (entry.get(key) is None or isinstance(entry[key], str)):
            return f"{key} is not text"
    return _stats_problem(entry.get("stats"))
