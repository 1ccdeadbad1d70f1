"""horde.coordinator.bundle.export: the windows as CSV, and HdrHistogram interval logs that
HdrHistogram's own decoder reads back bucket for bucket."""

from __future__ import annotations

import base64
import csv
import io
import struct
import zlib

import numpy as np
import pytest

from horde.coordinator.bundle.export import (
    CSV_COLUMNS,
    encode_counts,
    encode_histogram,
    hdr_interval_log,
    hdr_log_name,
    window_series,
    windows_csv,
    write_csv,
    write_hdr_log,
)
from horde.coordinator.bundle.store import read_bundle
from horde.coordinator.measure.histogram import COUNTS_LEN, Histogram, highest_equivalent_value


@pytest.fixture
def synthetic(shared_bundle):
    return read_bundle(shared_bundle)


# -- CSV -----------------------------------------------------------------------------------


def test_csv_has_a_row_per_window_and_endpoint_plus_totals(synthetic) -> None:
    rows = list(csv.DictReader(io.StringIO(windows_csv(synthetic))))
    windows = list(synthetic.windows())
    endpoints = list(synthetic.summary["endpoints"])
    assert list(rows[0]) == CSV_COLUMNS
    assert len(rows) == len(windows) * (len(endpoints) + 1)
    totals = [r for r in rows if r["scope"] == "total"]
    assert len(totals) == len(windows)
    assert sum(int(r["requests"]) for r in totals) == synthetic.summary["total"]["requests"]
    per_endpoint = {e: sum(int(r["requests"]) for r in rows if r["endpoint"] == e) for e in endpoints}
    assert per_endpoint == {e: s["requests"] for e, s in synthetic.summary["endpoints"].items()}
    errors = sum(int(r["errors_http_5xx"]) + int(r["errors_timeout"]) + int(r["errors_connect"]) for r in totals)
    assert errors == synthetic.summary["total"]["errors"]
    w5 = next(r for r in totals if r["window"] == "5")
    assert float(w5["latency_p99_ms"]) == windows[5]["total"]["latency_ms"]["p99"]
    assert float(w5["rps"]) == windows[5]["total"]["requests"]


def test_csv_endpoint_without_samples_in_a_window_has_zeros_and_blank_quantiles(make_bundle) -> None:
    bundle = read_bundle(make_bundle(rate_per_s=3, seed=3))
    rows = [r for r in csv.DictReader(io.StringIO(windows_csv(bundle))) if r["scope"] == "endpoint"]
    empty = [r for r in rows if r["requests"] == "0"]
    assert empty and all(r["latency_p50_ms"] == "" and r["errors"] == "0" for r in empty)


def test_write_csv(make_bundle) -> None:
    path = make_bundle()
    out = write_csv(path)
    assert out == path / "windows.csv"
    assert out.read_text() == windows_csv(read_bundle(path))


# -- HdrHistogram encoding ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "counts, expected",
    [
        ({}, b""),  # empty: no counts at all
        ({0: 1}, b"\x02"),  # zigzag(1) = 2
        ({1: 3}, b"\x00\x06"),  # a single zero is written as 0
        ({3: 1}, b"\x05\x02"),  # three zeros as zigzag(-3) = 5
        ({0: 64}, b"\x80\x01"),  # zigzag(64) = 128: two LEB128 bytes
        ({200: 1, 4991: 2}, b"\x8f\x03\x02\xeb\x4a\x04"),  # -200 -> 399; -4790 -> 9579
    ],
)
def test_counts_encoding(counts, expected) -> None:
    arr = np.zeros(COUNTS_LEN, np.int64)
    for i, c in counts.items():
        arr[i] = c
    assert encode_counts(arr) == expected


def test_nine_byte_varint_for_huge_counts() -> None:
    arr = np.zeros(COUNTS_LEN, np.int64)
    arr[0] = 2**62
    out = encode_counts(arr)
    assert len(out) == 9 and out[-1] == (2**63 >> 56) & 0xFF


def test_compressed_wrapper_layout() -> None:
    h = Histogram()
    h.record_many(np.array([1_000, 2_000_000, 2_000_000], np.int64))
    raw = base64.b64decode(encode_histogram(h))
    cookie, length = struct.unpack(">ii", raw[:8])
    assert cookie == 0x1C849314 and length == len(raw) - 8
    inner = zlib.decompress(raw[8:])
    cookie, payload_len, offset, sig, lowest, highest, ratio = struct.unpack(">iiiiqqd", inner[:40])
    assert (cookie, offset, sig, lowest, highest, ratio) == (0x1C849313, 0, 2, 1, 2**44, 1.0)
    assert payload_len == len(inner) - 40


# -- interval log, read back by HdrHistogram_py ---------------------------------------------------


def _read_log(text: str, tmp_path):
    hdrh_log = pytest.importorskip("hdrh.log", reason="pip install hdrhistogram (test extra)")
    from hdrh.histogram import HdrHistogram

    path = tmp_path / "x.hlog"
    path.write_text(text)
    reader = hdrh_log.HistogramLogReader(str(path), HdrHistogram(1, 2**44, 2))
    out = []
    while (h := reader.get_next_interval_histogram()) is not None:
        out.append(h)
    reader.close()
    return reader, out


def _hdrh_value_at(h: Histogram, percentile: float) -> int:
    """HdrHistogram_py's quantile convention (rank rounded half up, not ceil as horde's)."""
    rank = max(int(percentile * h.count / 100 + 0.5), 1)
    i = int(np.searchsorted(np.cumsum(h.counts), rank))
    return int(highest_equivalent_value(i))


@pytest.mark.parametrize("series", ["latency", "service_time", "send_lag"])
def test_hdrhistogram_reads_the_interval_log_back(synthetic, tmp_path, series) -> None:
    log = hdr_interval_log(synthetic, series=series)
    reader, decoded = _read_log(log, tmp_path)
    ours = list(window_series(synthetic, series=series))
    assert len(decoded) == len(ours) == len(list(synthetic.windows()))
    base = synthetic.manifest["start_wall_ns"] / 1e9
    assert reader.get_start_time_sec() == pytest.approx(base, abs=1e-3)
    for (index, h), d in zip(ours, decoded):
        assert d.get_total_count() == h.count
        assert d.get_start_time_stamp() / 1000 == pytest.approx(base + index, abs=1e-3)
        counts = np.array([d.get_count_at_index(i) for i in range(COUNTS_LEN)])
        assert np.array_equal(counts, h.counts), f"window {index}: counts differ"
        if h.count:
            # HdrHistogram picks the rank by rounding where horde takes the ceiling, so
            # its quantiles are compared with its own convention applied to our counts.
            for p in (50.0, 90.0, 99.0, 99.9, 100.0):
                assert d.get_value_at_percentile(p) == _hdrh_value_at(h, p)
            assert d.get_max_value() == int(highest_equivalent_value(int(np.flatnonzero(h.counts)[-1])))


def test_interval_log_of_one_endpoint(synthetic, tmp_path) -> None:
    log = hdr_interval_log(synthetic, endpoint="checkout & pay")
    _, decoded = _read_log(log, tmp_path)
    total = sum(d.get_total_count() for d in decoded)
    assert total == synthetic.summary["endpoints"]["checkout & pay"]["requests"]
    assert "endpoint checkout & pay" in log.splitlines()[1]


def test_interval_log_header(synthetic) -> None:
    lines = hdr_interval_log(synthetic).splitlines()
    assert lines[0] == "#[Histogram log format version 1.3]"
    assert any("max value divisor 1000000.0" in x for x in lines if x.startswith("#"))
    assert any(x.startswith("#[StartTime: ") for x in lines) and any(x.startswith("#[BaseTime: ") for x in lines)
    legend = lines.index('"StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"')
    first = lines[legend + 1].split(",")
    assert first[0] == "0.000" and first[1] == "1.000" and first[3].startswith("HISTF")


def test_empty_and_overflowing_windows(tmp_path) -> None:
    pytest.importorskip("hdrh", reason="pip install hdrhistogram (test extra)")
    from hdrh.histogram import HdrHistogram

    empty = HdrHistogram.decode(encode_histogram(Histogram()))
    assert empty.get_total_count() == 0
    h = Histogram()
    h.record_many(np.array([5, 2**45], np.int64))  # the second is above the trackable range
    d = HdrHistogram.decode(encode_histogram(h))
    assert d.get_total_count() == 1 and h.overflow == 1


def test_write_hdr_log_names(make_bundle) -> None:
    path = make_bundle()
    assert write_hdr_log(path).name == "latency.hlog"
    out = write_hdr_log(path, endpoint="search <q>", series="service_time")
    assert out.name == "service_time-search_q.hlog" == hdr_log_name("search <q>", "service_time")
    assert out.read_text().count("HISTF") == len(list(read_bundle(path).windows()))
    with pytest.raises(ValueError):
        hdr_interval_log(read_bundle(path), series="bytes")
