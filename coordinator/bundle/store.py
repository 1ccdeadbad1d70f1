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
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import msgpack

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
        self._windows = open(self.path / "windows.jsonl", "a")
        self._window_hists = open(self.path / "windows.msgpack", "ab")
        self._alerts = open(self.path / "alerts.jsonl", "a")

    def write_manifest(self, manifest: dict) -> None:
        _dump_json(self.path / "manifest.json", manifest)

    def append_window(self, window: dict, histograms: dict) -> None:
        self._windows.write(json.dumps(window, default=_json_default) + "\n")
        self._windows.flush()
        self._window_hists.write(msgpack.packb(histograms, use_bin_type=True))
        self._window_hists.flush()

    def append_alert(self, alert: dict) -> None:
        self._alerts.write(json.dumps(alert, default=_json_default) + "\n")
        self._alerts.flush()

    def finish(self, *, manifest: dict, summary: dict, histograms: list[dict], junit_xml: str) -> Path:
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


@dataclass
class Bundle:
    path: Path
    manifest: dict
    summary: dict | None

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete")) and not self.path.name.endswith(INCOMPLETE_SUFFIX)

    def windows(self) -> Iterator[dict]:
        p = self.path / "windows.jsonl"
        if not p.exists():
            return
        with open(p) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        return  # a torn last line from a killed coordinator

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

    def alerts(self) -> list[dict]:
        p = self.path / "alerts.jsonl"
        if not p.exists():
            return []
        out = []
        for line in p.read_text().splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a torn last line from a killed coordinator
        return out


def read_bundle(path: str | Path) -> Bundle:
    p = Path(path)
    if not p.is_dir():
        raise BundleError(f"{p}: not a bundle directory")
    mf = p / "manifest.json"
    if not mf.exists():
        raise BundleError(f"{p}: no manifest.json (not a horde bundle)")
    try:
        manifest = json.loads(mf.read_text())
        sp = p / "summary.json"
        summary = json.loads(sp.read_text()) if sp.exists() else None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{p}: unreadable JSON: {exc}") from exc
    return Bundle(path=p, manifest=manifest, summary=summary)
