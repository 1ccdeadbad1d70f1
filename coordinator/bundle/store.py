"""Result bundles: write them as the run goes (atomic at the end), read them back.

Layout of `<output>/<scenario>-<UTC timestamp>/`:
  manifest.json        scenario as run (secrets redacted), versions, cluster, start/end, outcome
  summary.json         per endpoint and per stage figures, thresholds, generator health
  windows.jsonl        one line per closed 1-second window (appended as windows close; format 2:
                       one gzip stream, flushed per window)
  windows.msgpack      the same windows' histograms and counts (a stream of msgpack maps; format 2:
                       compact histograms, one gzip stream flushed per window; codec.py)
  sends.msgpack        actual sends per 100 ms, handed off as the run goes (format 2)
  histograms.msgpack   cumulative histograms per endpoint x stage (mergeable; exact counts)
  alerts.jsonl         alerts and agent losses as they happened
  junit.xml            one test case per threshold

While the run goes the directory is named `<...>.incomplete`; it is renamed when the
bundle is finished. A run that was interrupted is renamed too, with `complete: false` in
its manifest; a coordinator that was killed leaves the `.incomplete` directory with every
window written up to its last flush.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, cast

import msgpack
import numpy as np
from pydantic import ValidationError

from horde.coordinator import files
from horde.coordinator.bundle.codec import (
    GZIP_MAGIC,
    GzipAppender,
    StreamDamage,
    gunzip_bounded,
    gunzip_chunks,
    pack_histogram_entries,
    pack_window_record,
    unpack_stats,
    unpack_window_record,
)
from horde.coordinator.bundle.schema import (
    BUNDLE_FORMAT,
    READABLE_FORMATS,
    AlertRecord,
    Manifest,
    Record,
    Summary,
    Window,
    first_problem,
)
from horde.coordinator.measure.aggregate import N_ERROR_CLASSES
from horde.coordinator.measure.histogram import COUNTS_LEN, LAYOUT

INCOMPLETE_SUFFIX = ".incomplete"
BUNDLE_FILES = (
    "manifest.json",
    "summary.json",
    "windows.jsonl",
    "windows.msgpack",
    "sends.msgpack",
    "histograms.msgpack",
    "alerts.jsonl",
    "junit.xml",
)


def _dump_json(path: Path, data: Any, *, indent: int | None = 2) -> None:
    with files.replacing(path, "w") as f:
        separators = (",", ":") if indent is None else None
        json.dump(data, f, indent=indent, separators=separators, sort_keys=False, default=_json_default)
        f.write("\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def bundle_name(scenario: str, started: datetime) -> str:
    return f"{scenario}-{started.astimezone(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"


class BundleWriter:
    """Writes a bundle as the run goes. Manifest, summary and windows pass through the
    bundle's models (schema.py) first: a record readers would reject is a BundleError here,
    in the run (and its tests) that wrote it, not a surprise in a later report. What is
    written is the caller's dict as given, so checking changes no byte of the bundle."""

    def __init__(self, output_dir: str | Path, scenario: str, started: datetime) -> None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        name = bundle_name(scenario, started)
        final = out / name
        n = 1
        while files.taken(final) or files.taken(final.with_name(final.name + INCOMPLETE_SUFFIX)):
            n += 1
            final = out / f"{name}-{n}"
        self.final_path = final
        self.path = final.with_name(final.name + INCOMPLETE_SUFFIX)
        self.path.mkdir()
        # Open for the whole run (appended and flushed per record); closed by finish().
        self._windows = GzipAppender(cast(BinaryIO, files.open_append(self.path / "windows.jsonl", "ab")))
        self._window_hists = GzipAppender(cast(BinaryIO, files.open_append(self.path / "windows.msgpack", "ab")))
        self._sends = files.open_append(self.path / "sends.msgpack", "ab")
        self._alerts = files.open_append(self.path / "alerts.jsonl", "a")

    def write_manifest(self, manifest: dict) -> None:
        _checked(Manifest, manifest, "manifest.json")
        _dump_json(self.path / "manifest.json", manifest)

    def append_window(self, window: dict, histograms: dict) -> None:
        line = json.dumps(window, default=_json_default)
        _checked_json(Window, line, "windows.jsonl")
        self._windows.write(line.encode("utf-8") + b"\n")
        self._window_hists.write(msgpack.packb(pack_window_record(histograms), use_bin_type=True))

    def append_sends(self, first_bin: int, counts: np.ndarray) -> None:
        """Sends per 100 ms bin from `first_bin` on (run/summary.py SendCounter's hand-off)."""
        self._sends.write(msgpack.packb(_sends_record(first_bin, counts), use_bin_type=True))
        self._sends.flush()

    def sends(self) -> dict[str, Any]:
        """The sends handed off so far, read back (`{"bin_s", "counts"}`: spike analysis at the end)."""
        self._sends.flush()
        return {"bin_s": 0.1, "counts": _read_sends(self.path / "sends.msgpack", [])}

    def append_alert(self, alert: dict) -> None:
        self._alerts.write(json.dumps(alert, default=_json_default) + "\n")
        self._alerts.flush()

    def finish(self, *, manifest: dict, summary: dict, histograms: list[dict], junit_xml: str) -> Path:
        # Checked before anything final is written: a summary that does not fit leaves the
        # bundle as a killed coordinator would (windows intact, still `.incomplete`).
        _checked(Summary, summary, "summary.json")
        _checked(Manifest, manifest, "manifest.json")
        for f in (self._windows, self._window_hists, self._sends, self._alerts):
            f.close()
        files.write_bytes(self.path / "histograms.msgpack", pack_histogram_entries(histograms))
        files.write_text(self.path / "junit.xml", junit_xml)
        # Compact (one line, `jq .` shows it indented): a third of a wide run's summary was indentation.
        _dump_json(self.path / "summary.json", summary, indent=None)
        _dump_json(self.path / "manifest.json", manifest)  # last: its presence with an outcome marks a finished bundle
        os.replace(self.path, files.refuse_link(self.final_path))
        self.path = self.final_path
        return self.final_path


class BundleError(RuntimeError):
    pass


def _checked(model: type[Record], data: dict, name: str) -> None:
    # Through JSON first, so what is checked is exactly what the file will hold (numpy scalars, tuples).
    _checked_json(model, json.dumps(data, default=_json_default), name)


def _checked_json(model: type[Record], text: str, name: str) -> None:
    try:
        model.model_validate_json(text)
    except ValidationError as exc:
        raise BundleError(f"{name} does not fit the bundle format: {first_problem(exc)}") from exc


@dataclass
class Bundle:
    """A bundle read back: `manifest` and `summary` (None for a killed coordinator's bundle)
    as the models of schema.py; `windows()` and `alerts()` yield theirs."""

    path: Path
    manifest: Manifest
    summary: Summary | None
    problems: list[str] = field(default_factory=list)  # records left out while reading (file: why)

    @property
    def complete(self) -> bool:
        return self.manifest.complete and not self.path.name.endswith(INCOMPLETE_SUFFIX)

    def skipped_records(self) -> list[str]:
        """Every record the stream readers skip (reads windows.jsonl, windows.msgpack and
        alerts.jsonl once more; `problems` is left as it was)."""
        kept = self.problems
        self.problems = []
        try:
            for _ in self.windows():
                pass
            for _ in self.window_histograms():
                pass
            self.alerts()
            return self.problems
        finally:
            self.problems = kept

    def windows(self) -> Iterator[Window]:
        """windows.jsonl in order. A line that is not JSON or does not fit the format is
        skipped and noted in `problems` with its line number; the lines after it are still
        read. A torn last line (a coordinator killed mid-write) is skipped quietly."""
        for n, record in _jsonl(self.path / "windows.jsonl", self.problems, quiet_torn_tail=True):
            try:
                yield Window.model_validate(record)
            except ValidationError as exc:
                self.problems.append(f"windows.jsonl: line {n}: {first_problem(exc)}")

    def window_count(self) -> int:
        """How many windows windows.jsonl holds (its non-blank lines; streamed, nothing parsed)."""
        p = self.path / "windows.jsonl"
        if not p.exists():
            return 0
        n = 0
        try:
            n = sum(1 for line in _lines(_stream(p)[1]) if line.strip())
        except StreamDamage:
            pass
        return n

    def window_histograms(self) -> Iterator[dict]:
        """windows.msgpack's records in order (`{"index", "endpoints": {name: stats}}`, the
        format-1 sparse form whichever format the file holds). A record that does not fit is
        skipped and noted in `problems`; a stream that cannot be decoded further (damage)
        ends there, noted too. A torn last record (a killed coordinator) ends it quietly.
        Streamed: a long run's windows never need to fit in memory at once."""
        p = self.path / "windows.msgpack"
        if not p.exists():
            return
        unpacker = msgpack.Unpacker(raw=False)
        n = 0
        compact, chunks = _stream(p)
        try:
            for chunk in chunks:
                unpacker.feed(chunk)
                while True:
                    try:
                        item = unpacker.unpack()
                    except msgpack.OutOfData:
                        break
                    except (ValueError, TypeError, msgpack.UnpackException) as exc:  # FormatError, StackError, UTF-8
                        self.problems.append(
                            f"windows.msgpack: record {n + 1}: not msgpack ({exc}); the rest is ignored"
                        )
                        return
                    n += 1
                    try:
                        item = unpack_window_record(item) if compact else item
                    except ValueError as exc:
                        self.problems.append(f"windows.msgpack: record {n}: {exc}")
                        continue
                    if why := _window_record_problem(item):
                        self.problems.append(f"windows.msgpack: record {n}: {why}")
                        continue
                    yield item
        except StreamDamage as exc:
            self.problems.append(f"windows.msgpack: after record {n}: {exc}; the rest is ignored")

    def sends(self) -> dict[str, Any]:
        """Actual sends per 100 ms bin from the start instant: `{"bin_s", "counts"}` (counts a
        numpy array). Format 1 kept them in summary.json; format 2 in sends.msgpack, whose
        records add up (a record that does not fit is skipped and noted in `problems`)."""
        given = self.summary.sends if self.summary is not None else None
        bin_s = given.bin_s if given is not None else 0.1
        if given is not None and given.counts:
            return {"bin_s": bin_s, "counts": np.asarray(given.counts, dtype=np.int64)}
        return {"bin_s": bin_s, "counts": _read_sends(self.path / "sends.msgpack", self.problems)}

    def histograms(self) -> list[dict]:
        """histograms.msgpack: `[{"endpoint", "stage", "stats"}]`. Written once at the end, so
        any damage makes it unusable: a BundleError naming the file and entry."""
        p = self.path / "histograms.msgpack"
        if not p.exists():
            return []
        data = _read_bytes(p)
        compact = data.startswith(GZIP_MAGIC)  # format 2
        try:
            entries = msgpack.unpackb(gunzip_bounded(data, MAX_FILE_BYTES) if compact else data, raw=False)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise BundleError(f"{p}: not readable msgpack: {exc}") from None
        if not isinstance(entries, list):
            raise BundleError(f"{p}: expected a list of entries, got {type(entries).__name__}")
        for i, entry in enumerate(entries):
            if compact and isinstance(entry, dict):
                try:
                    entry["stats"] = unpack_stats(entry.get("stats"))
                except ValueError as exc:
                    raise BundleError(f"{p}: entry {i}: {exc}") from None
            if why := _histogram_entry_problem(entry):
                raise BundleError(f"{p}: entry {i}: {why}")
        return entries

    def alerts(self) -> list[AlertRecord]:
        """alerts.jsonl in order. A torn line (a killed coordinator) or a record that does not
        fit is left out and noted in `problems`; an alert-engine event stored wrapped
        (`{"event", "t_s", "alert": {...}}`) is flattened into its alert."""
        out = []
        for n, record in _jsonl(self.path / "alerts.jsonl", self.problems):
            try:
                out.append(AlertRecord.model_validate(_flat_alert(record)))
            except ValidationError as exc:
                self.problems.append(f"alerts.jsonl: line {n}: {first_problem(exc)}")
        return out


# -- reading what may be damaged ------------------------------------------------------------
# A bundle may come from anywhere (shared, fetched, half-written by a killed coordinator).
# manifest.json, summary.json and histograms.msgpack are written whole: damage there is a
# BundleError naming the file. The appended streams (windows.jsonl, windows.msgpack,
# alerts.jsonl) skip a bad record and note it in Bundle.problems, so that one bad line
# never hides the lines after it.

MAX_FILE_BYTES = 512 * 1024 * 1024  # manifest.json, summary.json, histograms.msgpack


def _open_regular(path: Path) -> BinaryIO:
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


def _read_bytes(path: Path) -> bytes:
    with _open_regular(path) as f:
        try:
            data = f.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise BundleError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise BundleError(f"{path}: larger than {MAX_FILE_BYTES} bytes, the limit for a bundle file")
    return data


_CHUNK = 1 << 16


def _stream(path: Path) -> tuple[bool, Iterator[bytes]]:
    """(compressed, the file's bytes chunk by chunk, decompressed when the file is a gzip
    stream: format 2). Iterating raises StreamDamage where a gzip stream is damaged."""
    f = _open_regular(path)
    first = f.read(_CHUNK)

    def rest() -> Iterator[bytes]:
        with f:
            while chunk := f.read(_CHUNK):
                yield chunk

    if first.startswith(GZIP_MAGIC):
        return True, gunzip_chunks(rest(), first)
    return False, itertools.chain((first,) if first else (), rest())


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The lines of a byte stream, each with its newline (a last line without one: torn)."""
    tail = b""
    for chunk in chunks:
        parts = (tail + chunk).split(b"\n")
        tail = parts.pop()
        for part in parts:
            yield part + b"\n"
    if tail:
        yield tail


def _jsonl(path: Path, problems: list[str], *, quiet_torn_tail: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, object) per line of a .jsonl file (plain, or one gzip stream); a line
    that is not a JSON object is noted in problems and skipped. quiet_torn_tail: an
    unterminated last line that is not JSON (a coordinator killed mid-write) is skipped
    without a note. A gzip stream damaged past some line ends there, noted."""
    if not path.exists():
        return
    n = 0
    try:
        for n, raw in enumerate(_lines(_stream(path)[1]), 1):
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


def _sends_record(first_bin: int, counts: np.ndarray) -> dict[str, Any]:
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


def _read_sends(path: Path, problems: list[str]) -> np.ndarray:
    total = np.zeros(0, dtype=np.int64)
    used = n = 0
    if not path.exists():
        return total
    with _open_regular(path) as f:
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


def _window_record_problem(item: Any) -> str | None:
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


def _histogram_entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return f"expected a map, got {type(entry).__name__}"
    for key in ("endpoint", "stage"):
        if not (entry.get(key) is None or isinstance(entry[key], str)):
            return f"{key} is not text"
    return _stats_problem(entry.get("stats"))


def _flat_alert(record: dict) -> dict:
    inner = record.get("alert")
    if not isinstance(inner, dict):
        return record
    flat = dict(inner)
    flat["event"] = record.get("event")
    if flat.get("at_s") is None:
        flat["at_s"] = record.get("t_s")
    return flat


def _read_json(path: Path, model: type[Record]) -> Any:
    try:
        data = json.loads(_read_bytes(path).decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: unreadable JSON: {exc}") from None
    except (ValueError, RecursionError) as exc:  # an integer too long to convert, nesting too deep
        raise BundleError(f"{path}: unreadable JSON: {str(exc)[:120]}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: not a JSON object")
    if model is Manifest:
        fmt = data.get("bundle_format", BUNDLE_FORMAT)
        if not isinstance(fmt, (int, str)) or isinstance(fmt, bool) or fmt not in READABLE_FORMATS:
            shown = repr(fmt) if len(repr(fmt)) <= 40 else repr(fmt)[:37] + "..."
            raise BundleError(
                f"{path}: bundle_format {shown} is not one this horde reads "
                f"({', '.join(map(str, sorted(READABLE_FORMATS)))}); read it with the horde that wrote it "
                f"({str(data.get('horde_version', 'unknown version'))[:40]})"
            )
    try:
        record = model.model_validate(data)
    except ValidationError as exc:
        raise BundleError(f"{path}: does not fit the bundle format: {first_problem(exc)}") from None
    if where := _non_finite(record.model_dump(by_alias=True)):  # horde writes no NaN or infinity
        raise BundleError(f"{path}: {where}: not a finite number")
    return record


def _non_finite(data: Any) -> str | None:
    """The key path of the first NaN or infinity in data, or None."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        node, here = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return here or "the top level"
        if isinstance(node, dict):
            stack.extend((v, f"{here}.{k}" if here else str(k)) for k, v in node.items())
        elif isinstance(node, (list, tuple)):
            stack.extend((v, f"{here}[{i}]") for i, v in enumerate(node))
    return None


def read_bundle(path: str | Path) -> Bundle:
    p = Path(path)
    if not p.is_dir():
        raise BundleError(f"{p}: not a bundle directory")
    mf = p / "manifest.json"
    if not mf.is_file():
        raise BundleError(f"{p}: no manifest.json (not a horde bundle)")
    for name in BUNDLE_FILES:  # readers elsewhere open these by name: a FIFO or directory there would hang or fail
        f = p / name
        if os.path.lexists(f) and not f.is_file():
            raise BundleError(f"{f}: not a regular file")
    manifest = _read_json(mf, Manifest)
    sp = p / "summary.json"
    summary = _read_json(sp, Summary) if sp.exists() else None
    return Bundle(path=p, manifest=manifest, summary=summary)
