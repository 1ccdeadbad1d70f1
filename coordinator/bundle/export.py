"""A bundle's time series for other tools: CSV for spreadsheets and notebooks, and
HdrHistogram interval logs (``.hlog``) for HdrHistogram's own tooling (HistogramLogAnalyzer,
HistogramLogProcessor, HdrHistogram_py's ``HistogramLogReader``).

The interval log holds one histogram per window in HdrHistogram's V2 compressed encoding.
horde's histograms have HdrHistogram's exact layout (lowest 1, highest 2**44, 2
significant figures; see coordinator/measure/histogram.py), so the counts array is written as it
is, without re-bucketing. Values stay in nanoseconds; ``Interval_Max`` is in milliseconds
(max value divisor 1e6, as HdrHistogram's log writer does by default).

The encoding, as HdrHistogram (Java) ``AbstractHistogram.encodeIntoByteBuffer`` and
``encodeIntoCompressedByteBuffer`` write it, all big-endian:
  uncompressed: int32 cookie 0x1c849313 (V2 encoding, 0x1c849303 | 0x10: LEB128 counts),
    int32 payload length, int32 normalizing index offset (0), int32 significant figures,
    int64 lowest discernible value, int64 highest trackable value, float64 integer to
    double conversion ratio (1.0), then the counts up to the last non-zero one, each as a
    ZigZag LEB128 varint (at most 9 bytes), a run of k > 1 zero counts as the single
    varint -k;
  compressed: int32 cookie 0x1c849314 (0x1c849304 | 0x10), int32 length of what follows,
    then the uncompressed form deflated with zlib;
  in the log: that, base64.
"""

from __future__ import annotations

import base64
import csv
import io
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from horde.agents.samples import ERROR_LABELS
from horde.coordinator import files
from horde.coordinator.bundle.schema import Stats as ScopeStats
from horde.coordinator.bundle.schema import Window
from horde.coordinator.bundle.store import Bundle, read_bundle
from horde.coordinator.measure.aggregate import Stats
from horde.coordinator.measure.histogram import (
    HIGHEST_TRACKABLE_NS,
    LOWEST_DISCERNIBLE_NS,
    SIGNIFICANT_FIGURES,
    Histogram,
)

CSV_FILE = "windows.csv"
SERIES = ("latency", "service_time", "send_lag")

V2_ENCODING_COOKIE = 0x1C849303 | 0x10
V2_COMPRESSED_ENCODING_COOKIE = 0x1C849304 | 0x10
_HEADER = struct.Struct(">iiiiqqd")
_WRAPPER = struct.Struct(">ii")
LOG_FORMAT_VERSION = "1.3"
MAX_VALUE_DIVISOR = 1e6  # Interval_Max in ms for values in ns


# -- CSV ------------------------------------------------------------------------------------

_ERROR_COLUMNS = [f"errors_{label}" for label in ERROR_LABELS if label != "ok"]
CSV_COLUMNS = [
    "window",
    "t_start_s",
    "t_end_s",
    "scope",
    "endpoint",
    "requests",
    "errors",
    "rps",
    "error_rate",
    *_ERROR_COLUMNS,
    "latency_p50_ms",
    "latency_p90_ms",
    "latency_p99_ms",
    "latency_max_ms",
    "service_p50_ms",
    "service_p99_ms",
]


def _endpoints(bundle: Bundle) -> list[str]:
    if bundle.summary is not None and "endpoints" in bundle.summary.model_fields_set:
        return list(bundle.summary.endpoints)
    if bundle.manifest.plan is not None:
        return list(bundle.manifest.plan.engines)
    reqs = bundle.manifest.scenario.get("requests") or []  # the scenario as run: open, a dict
    return [str(r["name"]) for r in reqs if isinstance(r, dict) and r.get("name")]


def _csv_row(w: Window, scope: str, endpoint: str, d: ScopeStats | None) -> list:
    d = d or ScopeStats()  # an endpoint without samples in the window: zeros, empty quantiles
    lat, svc = d.latency_ms, d.service_time_ms
    start, end = w.start_s, w.end_s
    span = end - start
    by_class = d.errors_by_class

    def opt(v):
        return "" if v is None else v

    return [
        w.index,
        start,
        end,
        scope,
        endpoint,
        d.requests,
        d.errors,
        round(d.requests / span, 3) if span > 0 else "",
        round(d.error_rate, 6),
        *[int(by_class.get(c[len("errors_") :], 0)) for c in _ERROR_COLUMNS],
        opt(lat.p50),
        opt(lat.p90),
        opt(lat.p99),
        opt(lat.max),
        opt(svc.p50),
        opt(svc.p99),
    ]


def iter_csv_rows(bundle: Bundle) -> Iterator[list]:
    """Rows of CSV_COLUMNS: per window, one per endpoint (zeros where it had no sample)
    and one ``scope=total`` row. Times in ms; rps over the window's span."""
    known = _endpoints(bundle)
    for w in bundle.windows():
        eps = w.endpoints
        names = known + [e for e in eps if e not in known]
        for e in names:
            yield _csv_row(w, "endpoint", e, eps.get(e))
        yield _csv_row(w, "total", "", w.total)


def windows_csv(bundle: Bundle) -> str:
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(CSV_COLUMNS)
    out.writerows(iter_csv_rows(bundle))
    return buf.getvalue()


def write_csv(bundle_path: str | Path) -> Path:
    """Write ``windows.csv`` into the bundle (streamed, one window at a time)."""
    bundle = read_bundle(bundle_path)
    path = bundle.path / CSV_FILE
    with files.replacing(path, "w", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(CSV_COLUMNS)
        out.writerows(iter_csv_rows(bundle))
    return path


# -- HdrHistogram encoding ----------------------------------------------------------------------


def _put_varint(out: bytearray, value: int) -> None:
    """ZigZag LEB128 as HdrHistogram's ZigZagEncoding.putLong: 7 bits a byte for eight
    bytes, the ninth carries the last 8 bits."""
    v = ((value << 1) ^ (value >> 63)) & 0xFFFF_FFFF_FFFF_FFFF
    for _ in range(8):
        if v < 0x80:
            out.append(v)
            return
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v & 0xFF)


def encode_counts(counts: np.ndarray) -> bytes:
    """The V2 counts payload: varints up to the last non-zero count, zero runs as -k."""
    out = bytearray()
    nz = np.flatnonzero(counts)
    prev = -1
    for i, c in zip(nz.tolist(), counts[nz].tolist()):
        gap = i - prev - 1
        if gap == 1:
            _put_varint(out, 0)
        elif gap > 1:
            _put_varint(out, -gap)
        _put_varint(out, int(c))
        prev = i
    return bytes(out)


def encode_histogram(h: Histogram) -> str:
    """One histogram in HdrHistogram's compressed V2 form, base64 (the log's last column).
    Values above the trackable range (``h.overflow``) cannot be encoded and are left out."""
    payload = encode_counts(h.counts)
    header = _HEADER.pack(
        V2_ENCODING_COOKIE,
        len(payload),
        0,
        SIGNIFICANT_FIGURES,
        LOWEST_DISCERNIBLE_NS,
        HIGHEST_TRACKABLE_NS,
        1.0,
    )
    deflated = zlib.compress(header + payload)
    return base64.b64encode(_WRAPPER.pack(V2_COMPRESSED_ENCODING_COOKIE, len(deflated)) + deflated).decode("ascii")


# -- interval log ----------------------------------------------------------------------------


def _base_time_s(bundle: Bundle) -> float:
    m = bundle.manifest
    if m.start_wall_ns:
        return m.start_wall_ns / 1e9
    try:
        return datetime.fromisoformat(str(m.started)).timestamp()
    except (TypeError, ValueError):
        return 0.0


def _window_spans(bundle: Bundle) -> Callable[[int], tuple[float, float]]:
    """index -> (start_s, end_s) from windows.jsonl, read alongside the histograms (both are in
    index order), so a long run's spans are never all in memory; (index, index + 1) where a
    window's line is missing."""
    lines = iter(bundle.windows())
    current: list = [next(lines, None)]

    def span(index: int) -> tuple[float, float]:
        while current[0] is not None and current[0].index < index:
            current[0] = next(lines, None)
        w = current[0]
        return (w.start_s, w.end_s) if w is not None and w.index == index else (float(index), float(index + 1))

    return span


def window_series(
    bundle: Bundle, endpoint: str | None = None, series: str = "latency"
) -> Iterator[tuple[int, Histogram]]:
    """(window index, histogram) per window: one endpoint's, or all endpoints merged."""
    if series not in SERIES:
        raise ValueError(f"series must be one of {', '.join(SERIES)}, not {series!r}")
    for item in bundle.window_histograms():
        h = Histogram()
        for name, sparse in (item.get("endpoints") or {}).items():
            if endpoint is not None and name != endpoint:
                continue
            h.merge(getattr(Stats.from_sparse(sparse), series))
        yield int(item["index"]), h


def hdr_interval_log(bundle: Bundle, endpoint: str | None = None, series: str = "latency") -> str:
    """The per-window histograms of ``series`` (latency, service_time or send_lag) of one
    endpoint, or of all endpoints merged, as an HdrHistogram interval log."""
    return "".join(line + "\n" for line in hdr_log_lines(bundle, endpoint, series))


def hdr_log_lines(bundle: Bundle, endpoint: str | None = None, series: str = "latency") -> Iterator[str]:
    """hdr_interval_log's lines, one window at a time (a comment line at the end counts the
    values above the layout's range, which the format cannot hold)."""
    if series not in SERIES:
        raise ValueError(f"series must be one of {', '.join(SERIES)}, not {series!r}")
    base = _base_time_s(bundle)
    name = bundle.manifest.scenario_name or "?"
    scope = f"endpoint {endpoint}" if endpoint is not None else "all endpoints"
    started = datetime.fromtimestamp(base, timezone.utc).isoformat() if base else "unknown"
    yield from (
        f"#[Histogram log format version {LOG_FORMAT_VERSION}]",
        f"#[horde {_one_line(name)}: {series}, {_one_line(scope)}; one interval per window]",
        "#[Values in nanoseconds; Interval_Max in milliseconds (max value divisor 1000000.0)]",
        f"#[Layout: lowest 1, highest {HIGHEST_TRACKABLE_NS}, {SIGNIFICANT_FIGURES} significant figures]",
        f"#[StartTime: {base:.3f} (seconds since epoch), {started}]",
        f"#[BaseTime: {base:.3f} (seconds since epoch)]",
        '"StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"',
    )
    span = _window_spans(bundle)
    overflow = 0
    for index, h in window_series(bundle, endpoint, series):
        start, end = span(index)
        overflow += h.overflow
        max_ms = (h.max_ns or 0) / MAX_VALUE_DIVISOR
        yield f"{start:.3f},{end - start:.3f},{max_ms:.3f},{encode_histogram(h)}"
    if overflow:
        yield f"#[{overflow} values above {HIGHEST_TRACKABLE_NS} ns are not representable and left out]"


def _one_line(s: object) -> str:
    return re.sub(r"[\r\n\]]+", " ", str(s))


def hdr_log_name(endpoint: str | None = None, series: str = "latency") -> str:
    if endpoint is None:
        return f"{series}.hlog"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", endpoint).strip("_") or "endpoint"
    return f"{series}-{safe}.hlog"


def write_hdr_log(bundle_path: str | Path, endpoint: str | None = None, series: str = "latency") -> Path:
    """Write ``<series>[-<endpoint>].hlog`` into the bundle; returns its path."""
    bundle = read_bundle(bundle_path)
    path = bundle.path / hdr_log_name(endpoint, series)
    lines = hdr_log_lines(bundle, endpoint, series)
    first = next(lines)  # a bad series fails here, before the file is begun
    with files.replacing(path, "w") as f:  # streamed, one window at a time
        f.write(first + "\n")
        for line in lines:
            f.write(line + "\n")
    return path
