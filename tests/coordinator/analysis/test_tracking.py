"""horde.coordinator.analysis.tracking: headline figures and the robust judgement of a run
against the runs before it (synthetic series, no store)."""

from __future__ import annotations

import math

import pytest

from horde.coordinator.analysis.tracking import (
    HEADLINE,
    _judge,
    finite_number,
    headline,
    track_series,
)
from horde.coordinator.bundle.schema import Stats

HEALTHY = [100.0, 103.0, 97.0, 101.0, 99.0, 104.0, 96.0, 100.0, 102.0, 98.0, 101.0, 99.0]


def series(values: list[float]) -> list[tuple[int, str | None, float]]:
    """(run id, started, value) rows, oldest first, as History.series_rows gives them."""
    return [(i + 1, f"2026-11-{i + 1:02d}T02:00:00+00:00", v) for i, v in enumerate(values)]


def judge(value: float, baseline: list[float], **kw) -> dict:
    opts = dict(higher_is_better=False, z_threshold=3.5, min_effect=0.05, min_abs_change=0.0)
    return _judge(value, baseline, **{**opts, **kw})


# -- headline figures ------------------------------------------------------------------


def test_finite_number_keeps_only_finite_numbers() -> None:
    assert finite_number(3) == 3.0 and isinstance(finite_number(3), float)
    assert finite_number(2.5) == 2.5
    assert [finite_number(v) for v in (True, math.nan, math.inf, "1", None)] == [None] * 5


def test_headline_reads_a_summary_scope() -> None:
    stats = Stats.model_validate(
        {
            "requests": 1000,
            "errors": 10,
            "error_rate": 0.01,
            "rps": 50.0,
            "latency_ms": {"p50": 20.0, "p95": 50.0, "p99": 100.0, "max": 200.0},
            "service_time_ms": {"p50": 15.0},  # p99 missing: no samples
        }
    )
    h = headline(stats)
    assert list(h) == list(HEADLINE)
    assert h["requests"] == 1000.0 and h["error_rate"] == 0.01 and h["p99_latency_ms"] == 100.0
    assert h["p50_service_ms"] == 15.0 and h["p99_service_ms"] is None
    assert headline(None) == dict.fromkeys(HEADLINE)


# -- the judgement -----------------------------------------------------------------------


def test_judge_uses_the_median_and_mad_of_the_baseline() -> None:
    j = judge(130.0, [100.0, 102.0, 98.0, 101.0, 99.0])  # median 100, MAD 1
    assert j["baseline_median"] == 100.0 and j["baseline_mad"] == 1.0
    assert j["robust_z"] == pytest.approx(30.0 / 1.4826)
    assert j["change"] == pytest.approx(0.30) and j["verdict"] == "regression"
    assert judge(130.0, [100.0, 102.0, 98.0, 101.0, 99.0], higher_is_better=True)["verdict"] == "improvement"


def test_judge_an_identical_history_any_change_past_the_minimum_effect_counts() -> None:
    same = [100.0] * 5  # MAD 0: the z-score is infinite, shown as None
    j = judge(110.0, same)
    assert j["verdict"] == "regression" and j["robust_z"] is None and j["change"] == pytest.approx(0.10)
    assert judge(103.0, same)["verdict"] == "no change"  # below the 5% minimum effect
    j = judge(100.0, same)
    assert j["verdict"] == "no change" and j["robust_z"] == 0.0 and j["change"] == 0.0


def test_judge_a_zero_baseline_and_the_absolute_floor() -> None:
    zeros = [0.0] * 5  # an error rate that was always zero
    assert judge(0.0005, zeros, min_abs_change=0.001)["verdict"] == "no change"
    j = judge(0.002, zeros, min_abs_change=0.001)
    assert j["verdict"] == "regression" and j["change"] is None


# -- tracking a series -------------------------------------------------------------------


def test_track_a_healthy_series_is_no_change() -> None:
    t = track_series(series(HEALTHY), scenario="nightly")
    assert t["verdict"] == "no change" and t["events"] == []
    assert t["trend"]["reading"] == "stable"
    assert t["baseline"]["runs"] == 10
    assert t["better"] == "lower" and t["runs"] == len(HEALTHY)


def test_track_a_regression_on_the_last_run_and_its_direction() -> None:
    rows = series(HEALTHY + [130.0])
    t = track_series(rows, scenario="nightly")
    assert t["verdict"] == "regression" and t["last"] == {"run_id": 13, "started": rows[-1][1], "value": 130.0}
    assert [e["run_id"] for e in t["events"]] == [13]
    # the same numbers read as a higher-is-better metric: the last run improved
    assert track_series(rows, scenario="nightly", metric="rps")["verdict"] == "improvement"
    assert track_series(series(HEALTHY + [70.0]), scenario="nightly", metric="rps")["verdict"] == "regression"


def test_track_remembers_a_regression_that_came_and_went() -> None:
    t = track_series(series(HEALTHY[:6] + [160.0] + HEALTHY[6:]), scenario="nightly")
    assert t["verdict"] == "no change"
    assert [(e["verdict"], e["value"]) for e in t["events"]] == [("regression", 160.0)]


def test_track_sees_a_slow_drift_as_a_worsening_trend() -> None:
    t = track_series(series([100.0 + 2.0 * i for i in range(15)]), scenario="nightly")  # +2% a run
    assert t["verdict"] == "no change"  # each step is small
    assert t["trend"]["verdict"] == "rising" and t["trend"]["reading"] == "worsening"
    t = track_series(series([100.0 + 2.0 * i for i in range(15)]), scenario="nightly", metric="rps")
    assert t["trend"]["reading"] == "improving"


def test_track_with_too_little_history() -> None:
    t = track_series(series([100.0, 150.0]), scenario="nightly")
    assert t["verdict"] == "insufficient history" and t["trend"]["verdict"] == "inconclusive"
    assert t["baseline"] is None and t["last"]["value"] == 150.0
    empty = track_series([], scenario="nightly", endpoint="health")
    assert empty["runs"] == 0 and empty["last"] is None and empty["endpoint"] == "health"
