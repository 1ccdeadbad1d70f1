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

import json
import math
import os
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
from horde.coordinator.bundle.streams import (
    MAX_FILE_BYTES,
    BundleError,
    histogram_entry_problem,
    jsonl_records,
    open_stream,
    read_bytes,
    read_sends,
    sends_record,
    stream_lines,
    window_record_problem,
)

__all__ = ["BUNDLE_FILES", "INCOMPLETE_SUFFIX", "Bundle", "BundleError", "BundleWriter", "read_bundle"]

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
        self._sends.write(msgpack.packb(sends_record(first_bin, counts), use_bin_type=True))
        self._sends.flush()

    def sends(self) -> dict[str, Any]:
        """The sends handed off so far, read back (`{"bin_s", "counts"}`: spike analysis at the end)."""
        self._sends.flush()
        return {"bin_s": 0.1, "counts": read_sends(self.path / "sends.msgpack", [])}

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
        """Every record the stream readers skip (reads windows.jsonl, windows.msgpack,
        sends.msgpack and alerts.jsonl once more; `problems` is left as it was)."""
        kept = self.problems
        self.problems = []
        try:
            for _ in self.windows():
                pass
            for _ in self.window_histograms():
                pass
            self.sends()
            self.alerts()
            return self.problems
        finally:
            self.problems = kept

    def windows(self) -> Iterator[Window]:
        """windows.jsonl in order. A line that is not JSON or does not fit the format is
        skipped and noted in `problems` with its line number; the lines after it are still
        read. A torn last line (a coordinator killed mid-write) is skipped quietly."""
        for n, record in jsonl_records(self.path / "windows.jsonl", self.problems, quiet_torn_tail=True):
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
            n = sum(1 for line in stream_lines(open_stream(p)[1]) if line.strip())
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
        compact, chunks = open_stream(p)
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
                    if why := window_record_problem(item):
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
        return {"bin_s": bin_s, "counts": read_sends(self.path / "sends.msgpack", self.problems)}

    def histograms(self) -> list[dict]:
        """histograms.msgpack: `[{"endpoint", "stage", "stats"}]`. Written once at the end, so
        any damage makes it unusable: a BundleError naming the file and entry."""
        p = self.path / "histograms.msgpack"
        if not p.exists():
            return []
        data = read_bytes(p)
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
            if why := histogram_entry_problem(entry):
                raise BundleError(f"{p}: entry {i}: {why}")
        return entries

    def alerts(self) -> list[AlertRecord]:
        """alerts.jsonl in order. A torn line (a killed coordinator) or a record that does not
        fit is left out and noted in `problems`; an alert-engine event stored wrapped
        (`{"event", "t_s", "alert": {...}}`) is flattened into its alert."""
        out = []
        for n, record in jsonl_records(self.path / "alerts.jsonl", self.problems):
            try:
                out.append(AlertRecord.model_validate(_flat_alert(record)))
            except ValidationError as exc:
                self.problems.append(f"alerts.jsonl: line {n}: {first_problem(exc)}")
        return out


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
        data = json.loads(read_bytes(path).decode("utf-8"))
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
