"""Result bundles: write them as the run goes (atomic at the end), read them back.

Layout of `<output>/<scenario>-<UTC timestamp>/`:
  manifest.json        scenario as run (secrets redacted), versions, cluster, start/end, outcome
  summary.json         per endpoint and per stage figures, thresholds, generator health
  windows.jsonl        one line per closed 1-second window (appended as windows close)
  windows.msgpack      the same windows' histograms and counts (a stream of msgpack maps)
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
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgpack
from pydantic import ValidationError

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

INCOMPLETE_SUFFIX = ".incomplete"


def _dump_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)


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
        while final.exists() or final.with_name(final.name + INCOMPLETE_SUFFIX).exists():
            n += 1
            final = out / f"{name}-{n}"
        self.final_path = final
        self.path = final.with_name(final.name + INCOMPLETE_SUFFIX)
        self.path.mkdir()
        # Open for the whole run (appended and flushed per record); closed by finish().
        self._windows = open(self.path / "windows.jsonl", "a")  # noqa: SIM115
        self._window_hists = open(self.path / "windows.msgpack", "ab")  # noqa: SIM115
        self._alerts = open(self.path / "alerts.jsonl", "a")  # noqa: SIM115

    def write_manifest(self, manifest: dict) -> None:
        _checked(Manifest, manifest, "manifest.json")
        _dump_json(self.path / "manifest.json", manifest)

    def append_window(self, window: dict, histograms: dict) -> None:
        line = json.dumps(window, default=_json_default)
        _checked_json(Window, line, "windows.jsonl")
        self._windows.write(line + "\n")
        self._windows.flush()
        self._window_hists.write(msgpack.packb(histograms, use_bin_type=True))
        self._window_hists.flush()

    def append_alert(self, alert: dict) -> None:
        self._alerts.write(json.dumps(alert, default=_json_default) + "\n")
        self._alerts.flush()

    def finish(self, *, manifest: dict, summary: dict, histograms: list[dict], junit_xml: str) -> Path:
        # Checked before anything final is written: a summary that does not fit leaves the
        # bundle as a killed coordinator would (windows intact, still `.incomplete`).
        _checked(Summary, summary, "summary.json")
        _checked(Manifest, manifest, "manifest.json")
        for f in (self._windows, self._window_hists, self._alerts):
            f.close()
        with open(self.path / "histograms.msgpack", "wb") as f:
            f.write(msgpack.packb(histograms, use_bin_type=True))
        (self.path / "junit.xml").write_text(junit_xml)
        _dump_json(self.path / "summary.json", summary)
        _dump_json(self.path / "manifest.json", manifest)  # last: its presence with an outcome marks a finished bundle
        os.replace(self.path, self.final_path)
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

    def windows(self) -> Iterator[Window]:
        """windows.jsonl in order; stops before a torn last line. A line that is JSON but does
        not fit the format is a BundleError naming the file and line."""
        p = self.path / "windows.jsonl"
        if not p.exists():
            return
        with open(p) as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    return  # a torn last line from a killed coordinator
                try:
                    yield Window.model_validate(record)
                except ValidationError as exc:
                    raise BundleError(f"{p}: line {n}: {first_problem(exc)}") from exc

    def window_histograms(self) -> Iterator[dict]:
        p = self.path / "windows.msgpack"
        if not p.exists():
            return
        with open(p, "rb") as f:
            unpacker = msgpack.Unpacker(f, raw=False)
            try:
                yield from unpacker
            except (msgpack.OutOfData, ValueError):
                return

    def histograms(self) -> list[dict]:
        p = self.path / "histograms.msgpack"
        if not p.exists():
            return []
        return msgpack.unpackb(p.read_bytes(), raw=False)

    def alerts(self) -> list[AlertRecord]:
        """alerts.jsonl in order. A torn line (a killed coordinator) or a record that does not
        fit is left out and noted in `problems`; an alert-engine event stored wrapped
        (`{"event", "t_s", "alert": {...}}`) is flattened into its alert."""
        p = self.path / "alerts.jsonl"
        if not p.exists():
            return []
        out = []
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                self.problems.append(f"{p.name}: line {n}: torn or not JSON")
                continue
            if not isinstance(record, dict):
                self.problems.append(f"{p.name}: line {n}: not an object")
                continue
            try:
                out.append(AlertRecord.model_validate(_flat_alert(record)))
            except ValidationError as exc:
                self.problems.append(f"{p.name}: line {n}: {first_problem(exc)}")
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
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: unreadable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{path}: not a JSON object")
    if model is Manifest:
        fmt = data.get("bundle_format", BUNDLE_FORMAT)
        if fmt not in READABLE_FORMATS:
            raise BundleError(
                f"{path}: bundle_format {fmt!r} is not one this horde reads "
                f"({', '.join(map(str, sorted(READABLE_FORMATS)))}); read it with the horde that wrote it "
                f"({data.get('horde_version', 'unknown version')})"
            )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BundleError(f"{path}: does not fit the bundle format: {first_problem(exc)}") from exc


def read_bundle(path: str | Path) -> Bundle:
    p = Path(path)
    if not p.is_dir():
        raise BundleError(f"{p}: not a bundle directory")
    mf = p / "manifest.json"
    if not mf.exists():
        raise BundleError(f"{p}: no manifest.json (not a horde bundle)")
    manifest = _read_json(mf, Manifest)
    sp = p / "summary.json"
    summary = _read_json(sp, Summary) if sp.exists() else None
    return Bundle(path=p, manifest=manifest, summary=summary)
