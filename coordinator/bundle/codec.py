"""The compact encodings of a format-2 bundle's streams (measured in bench/soak_memory.py --bundle-size).

Two layers, both exact:

- a histogram in `windows.msgpack` keeps its non-zero buckets as delta-coded uint16 indices
  (`d`, the layout has 4,992 buckets) and counts in the narrowest unsigned width that holds
  the largest (`c`, `w` bytes each): 3 bytes a bucket in a usual window instead of 12;
- `windows.jsonl` and `windows.msgpack` are each one gzip stream, flushed (Z_SYNC_FLUSH)
  after every window, so a killed coordinator's file is readable up to its last window and
  consecutive windows share one compression context (a window's record is much like the
  one before it).

`unpack_histogram` restores a format-1 sparse histogram (`Histogram.to_sparse`), so every
reader downstream of `Bundle.window_histograms()` sees the same records for both formats.
Pure, apart from `GzipAppender` writing to the file object it is given.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

import msgpack
import numpy as np

from horde.coordinator.measure.histogram import COUNTS_LEN, LAYOUT

GZIP_MAGIC = b"\x1f\x8b"
_WIDTHS = {1: "<u1", 2: "<u2", 4: "<u4", 8: "<i8"}
_GZIP_WBITS = 31  # zlib's gzip container: `zcat windows.jsonl` reads it
_SLICE = 4096
_LEVEL = 6  # measured: level 9 saves under 2% more at twice the CPU


def pack_histogram(h: dict[str, Any]) -> dict[str, Any]:
    """A format-1 sparse histogram (Histogram.to_sparse) in the compact form."""
    idx = np.frombuffer(h["idx"], dtype="<u4")
    cnt = np.frombuffer(h["cnt"], dtype="<i8")
    top = int(cnt.max()) if len(cnt) else 0
    width = next(w for w in (1, 2, 4, 8) if w == 8 or top < 1 << (8 * w))
    return {
        "d": np.diff(idx, prepend=np.uint32(0)).astype("<u2").tobytes(),
        "c": cnt.astype(_WIDTHS[width]).tobytes(),
        "w": width,
        "n": h["count"],
        "o": h["overflow"],
        "z": h["clamped"],
        "lo": h["min"],
        "hi": h["max"],
        "s": h["sum"],
    }


def unpack_histogram(c: Any) -> dict[str, Any]:
    """The format-1 sparse histogram of a compact one; ValueError naming what is wrong."""
    if not isinstance(c, dict):
        raise ValueError("a histogram is not a map")
    d, cnt, width = c.get("d"), c.get("c"), c.get("w")
    if not (isinstance(d, bytes) and isinstance(cnt, bytes)) or width not in _WIDTHS:
        raise ValueError("a histogram's compact counts are malformed")
    if len(d) % 2 or len(cnt) != (len(d) // 2) * width:
        raise ValueError("a histogram's compact counts are malformed")
    idx = np.cumsum(np.frombuffer(d, dtype="<u2"), dtype=np.int64)
    if len(idx) and (int(idx[-1]) >= COUNTS_LEN or np.any(np.diff(idx) <= 0)):
        raise ValueError("a histogram's compact indices are out of range")
    return {
        "layout": dict(LAYOUT),
        "idx": idx.astype("<u4").tobytes(),
        "cnt": np.frombuffer(cnt, dtype=_WIDTHS[width]).astype("<i8").tobytes(),
        "count": c.get("n"),
        "overflow": c.get("o"),
        "clamped": c.get("z"),
        "min": c.get("lo"),
        "max": c.get("hi"),
        "sum": c.get("s"),
    }


_SERIES = ("latency", "service_time", "send_lag")


def pack_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """Sparse Stats (Stats.to_sparse) with its three histograms compact."""
    return {**stats, **{series: pack_histogram(stats[series]) for series in _SERIES}}


def unpack_stats(stats: Any) -> Any:
    """Sparse Stats of compact ones (what is not a map is given back for the checks to name)."""
    if not isinstance(stats, dict):
        return stats
    out = dict(stats)
    for series in _SERIES:
        try:
            out[series] = unpack_histogram(stats.get(series))
        except ValueError as exc:
            raise ValueError(f"{series}: {exc}") from None
    return out


def pack_window_record(record: dict[str, Any]) -> dict[str, Any]:
    """A windows.msgpack record (`{"index", "endpoints": {name: sparse Stats}}`), compact."""
    return {"index": record["index"], "endpoints": {k: pack_stats(v) for k, v in record["endpoints"].items()}}


def unpack_window_record(item: Any) -> Any:
    """The format-1 record of a compact one. What is not a compact record is given back as it
    is (the format-1 checks then say what is wrong with it); ValueError for a bad histogram."""
    if not isinstance(item, dict) or not isinstance(item.get("endpoints"), dict):
        return item
    out = {}
    for name, stats in item["endpoints"].items():
        try:
            out[name] = unpack_stats(stats)
        except ValueError as exc:
            raise ValueError(f"endpoint {str(name)[:80]!r}: {exc}") from None
    return {**item, "endpoints": out}


def pack_histogram_entries(entries: list[dict[str, Any]]) -> bytes:
    """histograms.msgpack of format 2: the entries with compact stats, gzip-compressed whole."""
    packed = [{**e, "stats": pack_stats(e["stats"])} for e in entries]
    z = zlib.compressobj(_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
    return z.compress(msgpack.packb(packed, use_bin_type=True)) + z.flush()


def gunzip_bounded(data: bytes, limit: int) -> bytes:
    """A whole gzip member, at most `limit` bytes once decompressed; ValueError otherwise."""
    z = zlib.decompressobj(_GZIP_WBITS)
    try:
        out = z.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ValueError(f"not a gzip stream ({exc})") from None
    if len(out) > limit:
        raise ValueError(f"larger than {limit} bytes once decompressed")
    if not z.eof:
        raise ValueError("the gzip stream ends early")
    return out


class GzipAppender:
    """One gzip stream over an append-only file, flushed to the file after every record."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._z = zlib.compressobj(_LEVEL, zlib.DEFLATED, _GZIP_WBITS)

    def write(self, data: bytes) -> None:
        self._f.write(self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH))
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.write(self._z.flush(zlib.Z_FINISH))
            self._f.close()


class StreamDamage(ValueError):
    """A gzip stream that cannot be decoded further (not a torn tail: damage)."""


def gunzip_chunks(chunks: Iterable[bytes], first: bytes = b"") -> Iterator[bytes]:
    """The decompressed bytes of a gzip stream, chunk by chunk, in bounded memory. A stream
    that ends early (a killed coordinator's last flush) just ends; StreamDamage when the
    bytes are not gzip or fail its checks."""
    z = zlib.decompressobj(_GZIP_WBITS)
    for whole in itertools.chain((first,), chunks):
        # Fed 4 kB at a time: zlib raises without what it decoded in the call, so damage
        # loses at most the windows of one slice before it.
        for at in range(0, len(whole), _SLICE):
            chunk = whole[at : at + _SLICE]
            while chunk:
                try:
                    out = z.decompress(chunk, 1 << 18)  # 256 kB out at a time, whatever the ratio
                except zlib.error as exc:
                    raise StreamDamage(f"not a gzip stream past this point ({exc})") from None
                if out:
                    yield out
                chunk = z.unconsumed_tail
                if z.eof:
                    if z.unused_data.strip(b"\0") or whole[at + _SLICE :].strip(b"\0"):
                        raise StreamDamage("bytes after the end of the gzip stream")
                    return
