"""horde.coordinator.workflows.history: the SQLite run history, monitoring samples, alerts, and
tracking read from it (the judgement itself: tests/coordinator/analysis/test_tracking.py)."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from horde.agents.samples import SAMPLE_DTYPE, Batch, ErrorClass
from horde.coordinator.bundle.store import BundleWriter, read_bundle
from horde.coordinator.measure.aggregate import Aggregator
from horde.coordinator.report.history_text import text_history, text_track
from horde.coordinator.workflows.history import (
    DEFAULT_FILENAME,
    History,
    HistoryError,
    record_bundle,
    track,
)

T0 = datetime(2026, 11, 1, 2, 0, tzinfo=timezone.utc)


def scope(requests: int = 1000, p99_ms: float = 100.0, error_rate: float = 0.0, rps: float = 100.0) -> dict:
    return {
        "requests": requests,
        "errors": round(requests * error_rate),
        "error_rate": error_rate,
        "rps": rps,
        "latency_ms": {"p50": p99_ms / 5, "p95": p99_ms / 2, "p99": p99_ms, "max": p99_ms * 2},
        "service_time_ms": {"p50": p99_ms / 6, "p99": p99_ms * 0.9},
    }


def write_bundle(
    root: Path,
    name: str,
    *,
    scenario: str = "nightly",
    started: datetime = T0,
    p99_ms: float = 100.0,
    outcome: str = "passed",
    complete: bool = True,
    thresholds_ok: bool = True,
    error_rate: float = 0.0,
) -> Path:
    """A minimal bundle: manifest.json and summary.json, as read_bundle needs them."""
    d = root / name
    d.mkdir(parents=True)
    manifest = {
        "scenario": {"name": scenario},
        "started": started.isoformat(),
        "ended": (started + timedelta(minutes=1)).isoformat(),
        "outcome": outcome,
        "complete": complete,
        "horde_version": "0.1.0",
    }
    summary = {
        "outcome": outcome,
        "duration_s": 60.0,
        "total": scope(p99_ms=p99_ms, error_rate=error_rate),
        "endpoints": {"health": scope(600, p99_ms * 0.5), "api": scope(400, p99_ms * 1.5)},
        "thresholds": [
            {
                "expr": "p99(latency) < 500ms",
                "endpoint": None,
                "stage": None,
                "ok": thresholds_ok,
                "observed": p99_ms * 1e6,
                "observed_text": f"{p99_ms}ms",
            },
            {
                "expr": "error_rate < 1%",
                "endpoint": None,
                "stage": None,
                "ok": True,
                "observed": 0.0,
                "observed_text": "0%",
            },
        ],
        "generator": {"saturated": False},
        "target_resources": {"target_memory": {"max": 123e6}},
    }
    (d / "manifest.json").write_text(json.dumps(manifest))
    (d / "summary.json").write_text(json.dumps(summary))
    return d


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.fixture
def history(results: Path):
    h = History(results / DEFAULT_FILENAME)
    yield h
    h.close()


# -- runs ------------------------------------------------------------------------------


def test_add_list_and_read_runs(results: Path, history: History) -> None:
    a = write_bundle(results, "nightly-a", started=T0, p99_ms=100.0)
    b = write_bundle(
        results,
        "nightly-b",
        started=T0 + timedelta(days=1),
        p99_ms=120.0,
        thresholds_ok=False,
        outcome="thresholds_failed",
    )
    c = write_bundle(results, "other-c", scenario="other", started=T0 + timedelta(days=2))
    ids = [history.add_run(read_bundle(p)) for p in (a, b, c)]
    assert len(set(ids)) == 3

    rows = history.runs("nightly")
    assert [r.p99_latency_ms for r in rows] == [120.0, 100.0]  # newest first
    assert [r.scenario for r in history.runs()] == ["other", "nightly", "nightly"]
    assert len(history.runs(limit=1)) == 1

    r = history.run(ids[1])
    assert r.bundle_path == str(b.resolve())
    assert (r.outcome, r.complete, r.requests, r.rps) == ("thresholds_failed", True, 1000, 100.0)
    assert (r.thresholds_total, r.thresholds_failed, r.saturated) == (2, 1, False)
    assert r.p99_service_ms == pytest.approx(108.0)
    assert r.target_memory_max_bytes == 123e6
    assert r.endpoints["api"]["p99_latency_ms"] == pytest.approx(180.0)
    assert r.thresholds[0] == {
        "expr": "p99(latency) < 500ms",
        "endpoint": None,
        "stage": None,
        "ok": False,
        "observed": 120e6,
        "observed_text": "120.0ms",
    }
    with pytest.raises(KeyError):
        history.run(999)
    assert history.scenarios() == ["nightly", "other"]


def test_add_run_is_idempotent_on_the_bundle_path(results: Path, history: History) -> None:
    p = write_bundle(results, "nightly-a")
    first = history.add_run(read_bundle(p))
    # The same bundle again (by another spelling of its path), updated in between.
    summary = json.loads((p / "summary.json").read_text())
    summary["total"]["latency_ms"]["p99"] = 111.0
    (p / "summary.json").write_text(json.dumps(summary))
    again = history.add_run(read_bundle(results / "." / "nightly-a"))
    assert again == first
    rows = history.runs()
    assert len(rows) == 1 and rows[0].p99_latency_ms == 111.0
    assert set(rows[0].endpoints) == {"health", "api"} and len(rows[0].thresholds) == 2


def test_bundle_paths_are_relative_so_a_results_directory_can_move(tmp_path: Path) -> None:
    results = tmp_path / "results"
    write_bundle(results, "nightly-a")
    run_id = record_bundle(results / "nightly-a")  # the history next to the bundle
    moved = tmp_path / "elsewhere"
    results.rename(moved)
    with History(moved / DEFAULT_FILENAME) as h:
        assert h.run(run_id).bundle_path == str((moved / "nightly-a").resolve())


def test_series_across_runs_oldest_first(results: Path, history: History) -> None:
    for i, p99 in enumerate([100.0, 105.0, 98.0]):
        history.add_run(read_bundle(write_bundle(results, f"n{i}", started=T0 + timedelta(days=i), p99_ms=p99)))
    history.add_run(
        read_bundle(
            write_bundle(
                results, "n9", started=T0 + timedelta(days=9), p99_ms=999.0, outcome="interrupted", complete=False
            )
        )
    )
    s = history.series("nightly", "p99_latency_ms")
    assert [v for _, v in s] == [100.0, 105.0, 98.0]  # the incomplete run is left out
    assert s[0][0] == T0.isoformat()
    assert [v for _, v in history.series("nightly", "p99_latency_ms", complete_only=False)][-1] == 999.0
    assert [v for _, v in history.series("nightly", "p99_latency_ms", endpoint="health")] == [50.0, 52.5, 49.0]
    assert history.series("nightly", "rps") == [(t, 100.0) for t, _ in s]
    assert history.series("nope", "rps") == []
    with pytest.raises(ValueError):
        history.series("nightly", "p99; DROP TABLE runs")


def test_a_bundle_without_summary_is_rebuilt_from_its_windows(results: Path, history: History) -> None:
    # A coordinator killed mid-run: manifest and windows only, still named .incomplete.
    writer = BundleWriter(results, "killed", T0)
    writer.write_manifest(
        {"scenario": {"name": "killed"}, "started": T0.isoformat(), "outcome": "running", "complete": False}
    )
    agg = Aggregator(["health"], [10 * 10**9], ["hold"])
    rows = np.zeros(30, SAMPLE_DTYPE)
    rows["intended_ns"] = rows["sent_ns"] = np.arange(30) * 10**8
    rows["end_ns"] = rows["intended_ns"] + 5_000_000
    rows["error"][:3] = ErrorClass.TIMEOUT
    agg.add(Batch(agent=0, incarnation=0, seq=0, watermark_ns=3 * 10**9, samples=rows))
    for w in agg.close_until(3 * 10**9):
        writer.append_window(
            w.to_dict(), {"index": w.index, "endpoints": {k: v.to_sparse() for k, v in w.by_endpoint.items()}}
        )
    for f in (writer._windows, writer._window_hists, writer._alerts):  # what a killed process leaves: flushed files
        f.close()
    run_id = history.add_run(read_bundle(writer.path))
    r = history.run(run_id)
    assert (r.scenario, r.complete, r.requests, r.errors) == ("killed", False, 30, 3)
    assert r.p99_latency_ms == pytest.approx(5.0, rel=0.01)
    assert r.endpoints["health"]["requests"] == 30


def test_schema_version_and_a_file_that_is_not_a_history(tmp_path: Path) -> None:
    p = tmp_path / "h.sqlite3"
    History(p).close()
    db = sqlite3.connect(p)
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute("UPDATE schema_version SET version = 99")
    db.commit()
    db.close()
    with pytest.raises(HistoryError, match="newer"):
        History(p)
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(HistoryError):
        History(junk)


# -- monitoring samples and alerts -----------------------------------------------------


def test_metrics_round_trip(history: History) -> None:
    for i in range(5):
        history.record_metrics("automaton", 1000.0 + i, {"latency_p99_ms": 10.0 + i, "error_rate": 0.0, "skip": None})
    history.record_metrics("other", 1000.0, {"latency_p99_ms": 1.0})
    assert history.metrics("automaton", "latency_p99_ms") == [(1000.0 + i, 10.0 + i) for i in range(5)]
    assert history.metrics("automaton", "latency_p99_ms", since_wall_s=1003.0) == [(1003.0, 13.0), (1004.0, 14.0)]
    assert history.metrics("automaton", "skip") == []
    assert history.metric_names("automaton") == [("automaton", "error_rate"), ("automaton", "latency_p99_ms")]
    assert history.trim_metrics(1002.0, source="automaton") == 4  # two samples of each of two names
    assert [t for t, _ in history.metrics("automaton", "latency_p99_ms")] == [1002.0, 1003.0, 1004.0]
    assert history.metrics("other", "latency_p99_ms") == [(1000.0, 1.0)]


def test_metrics_from_several_threads(history: History) -> None:
    def worker(k: int) -> None:
        for i in range(50):
            history.record_metrics(f"s{k}", float(i), {"x": float(i)})

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(len(history.metrics(f"s{k}", "x")) == 50 for k in range(4))


def test_alerts_round_trip_and_update_when_they_end(history: History) -> None:
    start = {
        "rule": "p99(latency) > 1s",
        "level": "warning",
        "start": 1000.0,
        "end": None,
        "peak": 1.2,
        "source": "automaton",
        "value_unit": "s",
    }
    history.record_alert(start)
    history.record_alert(
        {
            "rule": "error_rate > 20%",
            "level": "critical",
            "start": 1010.0,
            "end": 1020.0,
            "peak": 0.4,
            "source": "other",
        }
    )
    history.record_alert({**start, "end": 1030.0, "peak": 2.5})  # the same alert, ended
    alerts = history.alerts()
    assert len(alerts) == 2
    assert alerts[0] == {**start, "end": 1030.0, "peak": 2.5}
    assert [a["rule"] for a in history.alerts("other")] == ["error_rate > 20%"]
    with pytest.raises(ValueError):
        history.record_alert({"level": "warning"})


# -- tracking --------------------------------------------------------------------------


def nightly(results: Path, history: History, p99s: list[float], **kw) -> None:
    for i, p99 in enumerate(p99s):
        history.add_run(
            read_bundle(write_bundle(results, f"n{i:03d}", started=T0 + timedelta(days=i), p99_ms=p99, **kw))
        )


HEALTHY = [100.0, 103.0, 97.0, 101.0, 99.0, 104.0, 96.0, 100.0, 102.0, 98.0, 101.0, 99.0]


def test_track_flags_a_regression_on_the_last_run(results: Path, history: History) -> None:
    nightly(results, history, HEALTHY + [130.0])
    t = track(history, "nightly")
    assert t["verdict"] == "regression"
    assert t["change"] == pytest.approx(0.30, abs=0.02) and t["robust_z"] > 3.5
    assert t["last"]["value"] == 130.0
    assert [e["run_id"] for e in t["events"]] == [t["last"]["run_id"]]
    assert "REGRESSION" in text_track(t)


def test_track_an_improvement_and_a_higher_is_better_metric(results: Path, history: History) -> None:
    nightly(results, history, HEALTHY + [70.0])
    assert track(history, "nightly")["verdict"] == "improvement"
    assert track(history, "nightly", "rps")["verdict"] == "no change"
    healthy = track(history, "nightly", endpoint="health", baseline_runs=5)  # health's p99 is half the total's
    assert healthy["endpoint"] == "health" and healthy["last"]["value"] == 35.0 and healthy["baseline"]["runs"] == 5
    assert "[health]" in text_track(healthy) and "IMPROVEMENT" in text_track(healthy)
    assert "no change" in text_track(track(history, "nightly", "rps"))
    with pytest.raises(ValueError, match="unknown metric"):
        track(history, "nightly", "duration_s", endpoint="health")  # a run figure, not an endpoint's


def test_track_with_too_little_history(results: Path, history: History) -> None:
    nightly(results, history, [100.0, 150.0])
    t = track(history, "nightly")
    assert t["verdict"] == "insufficient history" and t["trend"]["verdict"] == "inconclusive"
    assert track(history, "nothing")["runs"] == 0


def test_text_history_table(results: Path, history: History) -> None:
    nightly(results, history, [100.0, 120.0])
    history.add_run(
        read_bundle(write_bundle(results, "x", started=T0 + timedelta(days=5), outcome="interrupted", complete=False))
    )
    text = text_history(history.runs("nightly"))
    lines = text.splitlines()
    assert "p99" in lines[0] and len(lines) == 5
    assert "interrupted*" in lines[1] and "2026-11-06 02:00:00" in lines[1]
    assert "120" in lines[2] and "2/2 ok" in lines[2]
    assert text_history([]) == "no runs recorded"
