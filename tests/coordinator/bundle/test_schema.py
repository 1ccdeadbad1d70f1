"""horde.coordinator.bundle.schema: the bundle's records as types, checked on write and on read."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from horde.coordinator.bundle.schema import AlertRecord, Manifest, Stats, Summary, Window, bundle_json_schema
from horde.coordinator.bundle.store import BundleError, BundleWriter, read_bundle
from horde.coordinator.cli import cli
from horde.coordinator.measure.aggregate import Stats as MeasuredStats

DOC = Path(__file__).resolve().parents[3] / "docs" / "bundle-format.md"
T0 = datetime(2026, 12, 1, 5, 0, tzinfo=timezone.utc)


def _section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def _documented(title: str, column: int = 0) -> set[str]:
    """Top-level keys named in the first (or given) column of a section's tables:
    `target.url` -> target, `agents[]` -> agents, `started` / `ended` -> both."""
    keys = set()
    for line in _section(title).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) <= column or set(cells[0]) <= {"-", " "}:
            continue
        for name in re.findall(r"`([^`]+)`", cells[column]):
            if re.fullmatch(r"[A-Za-z_][\w.\[\]]*", name):  # a key path, not a value ("1/N") or a file
                keys.add(re.split(r"[.\[]", name)[0])
    return keys


@pytest.mark.parametrize(
    "title, model, column",
    [
        ("manifest.json", Manifest, 0),
        ("summary.json", Summary, 0),
        ("windows.jsonl", Window, 0),
        ("Statistics of a scope (`Stats.to_dict`)", Stats, 0),
        ("alerts.jsonl", AlertRecord, 1),
    ],
)
def test_the_document_and_the_models_name_the_same_keys(title, model, column) -> None:
    in_schema = set(model.model_json_schema(by_alias=True)["properties"])
    documented = _documented(title, column) | ({"kind"} if model is AlertRecord else set())
    assert sorted(in_schema - documented) == [], f"docs/bundle-format.md, {title}: keys the model has, undocumented"
    assert sorted(documented - in_schema) == [], f"docs/bundle-format.md, {title}: documented keys the model lacks"


def test_the_key_check_reads_the_tables() -> None:
    # Not vacuous: each section yields its keys, and a key of one table is not taken for another's.
    summary = _documented("summary.json")
    assert {"total", "endpoints", "stages", "thresholds", "generator", "soak", "spikes"} <= summary
    assert "start_wall_ns" not in summary and "start_wall_ns" in _documented("manifest.json")
    assert {"agent", "replaced", "event_t_s"} <= _documented("alerts.jsonl", 1)


def test_horde_schema_bundle_prints_the_four_records() -> None:
    r = CliRunner().invoke(cli, ["schema", "--bundle"])
    assert r.exit_code == 0, r.output
    printed = json.loads(r.output)
    assert printed == json.loads(json.dumps(bundle_json_schema()))
    assert set(printed) == {"manifest.json", "summary.json", "windows.jsonl", "alerts.jsonl"}
    assert "bundle_format" in printed["manifest.json"]["properties"]


# -- on read -------------------------------------------------------------------------------


def _bundle(tmp_path: Path, manifest: dict, summary: dict | None = None) -> Path:
    d = tmp_path / "b"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps(manifest))
    if summary is not None:
        (d / "summary.json").write_text(json.dumps(summary))
    return d


def test_an_unknown_bundle_format_is_a_clear_error(tmp_path: Path) -> None:
    d = _bundle(tmp_path, {"bundle_format": 7, "horde_version": "9.0.0", "scenario": {"name": "x"}})
    with pytest.raises(BundleError) as err:
        read_bundle(d)
    assert str(d / "manifest.json") in str(err.value) and "bundle_format 7" in str(err.value)
    r = CliRunner().invoke(cli, ["report", str(d)])
    assert r.exit_code == 1 and "bundle_format 7" in r.output and "Traceback" not in r.output


def test_a_summary_that_does_not_fit_is_a_clear_error(tmp_path: Path) -> None:
    d = _bundle(tmp_path, {"bundle_format": 1}, {"total": {"requests": "many"}})
    with pytest.raises(BundleError, match=r"summary\.json.*total\.requests"):
        read_bundle(d)


def test_records_read_as_types(tmp_path: Path) -> None:
    stats = MeasuredStats(1.0).to_dict()
    d = _bundle(
        tmp_path,
        {"bundle_format": 1, "scenario": {"name": "s", "workload": {"model": "closed"}}, "complete": True},
        {
            "duration_s": 1.0,
            "total": stats,
            "endpoints": {"a": stats},
            "thresholds": [{"expr": "error_rate < 1%", "ok": False, "observed": 0.5, "observed_text": "50%"}],
        },
    )
    (d / "windows.jsonl").write_text(
        json.dumps({"index": 0, "start_s": 0.0, "end_s": 1.0, "total": stats}) + "\n" + '{"index": 1, "sta'
    )  # a torn last line
    (d / "alerts.jsonl").write_text(
        json.dumps({"event": "fired", "t_s": 3.0, "alert": {"kind": "alert", "rule": "r", "level": "warning"}})
        + "\n"
        + json.dumps({"kind": "agent_lost", "agent": "not a number"})
        + "\n"
        + '{"kind": "abo'
    )
    b = read_bundle(d)
    assert b.complete and b.manifest.scenario_name == "s" and b.manifest.model == "closed"
    assert b.summary.thresholds[0].ok is False and b.summary.endpoints["a"].latency_ms.p99_9 is None
    assert b.summary["total"]["latency_ms"]["p99.9"] is None  # item access by JSON key
    assert [w.index for w in b.windows()] == [0]
    alerts = b.alerts()
    assert [(a.kind, a.event, a.at_s) for a in alerts] == [("alert", "fired", 3.0)]
    assert len(b.problems) == 2 and "line 2" in b.problems[0] and "line 3" in b.problems[1]


def test_a_window_that_does_not_fit_is_skipped_and_named_by_its_line(tmp_path: Path) -> None:
    d = _bundle(tmp_path, {"bundle_format": 1})
    (d / "windows.jsonl").write_text(
        '{"index": 0, "start_s": 0, "end_s": 1}\n{"index": 1, "start_s": 1, "end_s": 2, "totl": {}}\n'
        '{"index": 2, "start_s": 2, "end_s": 3}\n'
    )
    b = read_bundle(d)
    assert [w.index for w in b.windows()] == [0, 2]  # the lines after a bad one are still read
    assert len(b.problems) == 1 and re.search(r"windows\.jsonl: line 2: totl", b.problems[0])


# -- on write ------------------------------------------------------------------------------


def test_the_writer_checks_what_it_writes(tmp_path: Path) -> None:
    w = BundleWriter(tmp_path, "s", T0)
    with pytest.raises(BundleError, match=r"manifest\.json.*bundle_format"):
        w.write_manifest({"bundle_format": "one"})
    w.write_manifest({"bundle_format": 1, "scenario": {"name": "s"}, "outcome": "running"})
    with pytest.raises(BundleError, match=r"windows\.jsonl.*start_s"):
        w.append_window({"index": 0}, {"index": 0, "endpoints": {}})
    summary = {"duration_s": 1.0, "total": {**MeasuredStats(1.0).to_dict(), "p99_typo": 1}}
    with pytest.raises(BundleError, match=r"summary\.json.*p99_typo"):
        w.finish(
            manifest={"bundle_format": 1, "outcome": "passed", "complete": True},
            summary=summary,
            histograms=[],
            junit_xml="",
        )
    assert w.path.name.endswith(".incomplete") and not (w.path / "summary.json").exists()  # as a killed run leaves it
    summary["total"].pop("p99_typo")
    path = w.finish(
        manifest={"bundle_format": 1, "outcome": "passed", "complete": True},
        summary=summary,
        histograms=[],
        junit_xml="",
    )
    assert json.loads((path / "summary.json").read_text()) == summary  # written as given
    assert read_bundle(path).summary.total.duration_s == 1.0


def test_an_old_bundles_queued_sends_read_as_generator_queued_sends() -> None:
    from horde.coordinator.bundle.schema import Generator, GeneratorAgent

    old = Generator.model_validate({"queued_sends": 7, "agents": {"0": {"queued_sends": 3}}})
    assert old.generator_queued_sends == 7 and old.agents["0"].generator_queued_sends == 3
    assert old.generator_queueing is None  # not measured before issue 14
    new = Generator.model_validate({"generator_queued_sends": 5})
    assert new.generator_queued_sends == 5
    assert GeneratorAgent().generator_queued_sends == 0
