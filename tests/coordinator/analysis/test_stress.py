"""The pure half of `horde stress` (coordinator/analysis/stress_plan.py, coordinator/analysis/stress.py):
staircases, the rebuilt scenario, per-step verdicts, whose limit, recovery."""

from __future__ import annotations

import numpy as np
import pytest

from horde.agents.samples import ErrorClass
from horde.coordinator.analysis.stress import analyse_steps, recovery_from_windows, verdict
from horde.coordinator.analysis.stress_plan import (
    StressPlan,
    abort_thresholds,
    rebuild,
    search_plan,
    staircase,
    staircase_levels,
)
from horde.coordinator.measure.aggregate import Stats
from horde.coordinator.scenario.load import parse_scenario

MS = 1_000_000

BASE = """
name: s
target: embedded
requests: [{name: health, path: /health}]
workload:
  model: {model}
  stages: {stages}
thresholds: {thresholds}
"""


def scenario(model="open", stages="[{duration: 1s, target: 10}]", thresholds="[]"):
    text = BASE.replace("{model}", model).replace("{stages}", stages).replace("{thresholds}", thresholds)
    return parse_scenario(text)


# --- the staircase ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "start, step, max_level, levels",
    [
        (100, 20, 200, [100, 120, 140, 160, 180, 200]),
        (100, 30, 200, [100, 130, 160, 190]),  # the last level stays at or below the max
        (50, 50, 50, [50]),  # a single level
        (0.5, 0.25, 1.0, [0.5, 0.75, 1.0]),  # fractions of a request per second
    ],
)
def test_staircase_levels(start, step, max_level, levels):
    assert staircase_levels(start, step, max_level) == levels


@pytest.mark.parametrize("start, step, max_level", [(0, 10, 100), (10, 0, 100), (100, 10, 50)])
def test_staircase_levels_rejects_nonsense(start, step, max_level):
    with pytest.raises(ValueError):
        staircase_levels(start, step, max_level)


def test_staircase_stages_and_steps():
    stages, steps = staircase([100, 150], 3)
    assert stages == [
        {"name": "step-1-to-100", "duration": 0.0, "target": 100},
        {"name": "hold-1-at-100", "duration": 3.0, "target": 100},
        {"name": "step-2-to-150", "duration": 0.0, "target": 150},
        {"name": "hold-2-at-150", "duration": 3.0, "target": 150},
    ]
    assert [(s.level, s.start_s, s.end_s) for s in steps] == [(100, 0, 3), (150, 3, 6)]


def test_abort_thresholds_slide_over_the_hold_and_reject_bad_rules():
    assert abort_thresholds(["error_rate < 1%"], 4) == [
        {"expr": "error_rate < 1%", "abort": True, "window": 4.0, "delay": 4.0}
    ]
    with pytest.raises(ValueError, match="needs an aggregate"):
        abort_thresholds(["latency < 5"], 4)


def test_rebuild_replaces_target_stages_and_thresholds_and_validates():
    loaded = scenario(thresholds='["p99(latency) < 1s"]')
    stages, _ = staircase([10, 20], 2)
    out = rebuild(
        loaded,
        target_url="http://127.0.0.1:9",
        start=0,
        stages=stages,
        thresholds=abort_thresholds(["error_rate < 1%"], 2),
    )
    sc = out.scenario
    assert sc.target.url == "http://127.0.0.1:9" and not sc.target.is_embedded
    assert [(s.duration, s.target) for s in sc.workload.stages] == [(0, 10), (2, 10), (0, 20), (2, 20)]
    assert [(t.expr, t.abort, t.window) for t in sc.thresholds] == [("error_rate < 1%", True, 2.0)]
    assert out.as_run["target"]["url"] == "http://127.0.0.1:9"
    assert loaded.scenario.target.is_embedded  # the original is untouched
    with pytest.raises(ValueError, match="duration"):
        rebuild(loaded, stages=[{"duration": -1, "target": 5}])


def test_rebuild_keeps_a_url_target_and_says_what_is_wrong_without_pydantic_noise():
    loaded = parse_scenario(
        BASE.replace("target: embedded", "target: {url: 'http://127.0.0.1:9', metrics: 'http://127.0.0.1:8/metrics'}")
        .replace("{model}", "open")
        .replace("{stages}", "[{duration: 1s, target: 10}]")
        .replace("{thresholds}", "[]")
    )
    stages, _ = staircase([10, 20], 2)
    out = rebuild(loaded, start=0, stages=stages)  # the scenario's own target: a URL, kept as it is
    assert out.scenario.target.url == "http://127.0.0.1:9" and not out.scenario.target.is_embedded
    assert out.scenario.target.metrics == "http://127.0.0.1:8/metrics"
    # another target: the automaton's /metrics by default, the one given, or none
    assert rebuild(loaded, target_url="http://h:1").scenario.target.metrics == "http://h:1/metrics"
    assert (
        rebuild(loaded, target_url="http://h:1", target_metrics="http://m:2/x").scenario.target.metrics
        == "http://m:2/x"
    )
    assert rebuild(loaded, target_url="http://h:1", target_metrics=None).scenario.target.metrics is None
    with pytest.raises(ValueError, match=r"workload\.stages\.0\.duration") as bad:
        rebuild(loaded, stages=[{"duration": -1, "target": 5}])
    assert "errors.pydantic.dev" not in str(bad.value)


def test_search_plan_reads_a_staircase_scenario():
    loaded = scenario(
        stages="[{duration: 0, target: 50}, {duration: 4s, target: 50}, {duration: 0, target: 100},"
        " {duration: 4s, target: 100}, {duration: 0, target: 150}, {duration: 4s, target: 150}]",
        thresholds='[{expr: "error_rate < 1%", abort: true, window: 4s}, "p99(latency) < 1s",'
        ' {expr: "p99(latency) < 300ms", abort: true}]',
    )
    plan = search_plan(loaded)
    assert (plan.start, plan.step, plan.max_level, plan.hold_s) == (50, 50, 150, 4)
    assert plan.break_rules == ("error_rate < 1%", "p99(latency) < 300ms")  # the abort thresholds only
    # given values win
    assert search_plan(loaded, StressPlan(max_level=500, break_rules=("errors == 0",))).max_level == 500


def test_search_plan_says_what_is_missing():
    with pytest.raises(ValueError, match="step.*break rules"):
        search_plan(scenario(stages="[{duration: 5s, target: 50}]"))


# --- per-step analysis --------------------------------------------------------------------------

STAGES, STEPS = staircase([100, 200, 300], 3)  # steps [0,3), [3,6), [6,9)


def window(i, n=None, lat_ms=5.0, errors=0, late=0, lag_ms=1.0, in_flight=2, cpu_s=None, target=None):
    """A window dict and its histogram record, as the bundle stores them."""
    n = n if n is not None else 100 * (1 + i // 3)  # at the planned rate of its step
    s = Stats(1.0)
    s.latency.record_many(np.full(n, int(lat_ms * MS), dtype=np.int64))
    s.service_time.record_many(np.full(n, int(lat_ms * MS), dtype=np.int64))
    s.requests = n
    s.errors = errors
    s.errors_by_class[int(ErrorClass.OK)] = n - errors
    s.errors_by_class[int(ErrorClass.HTTP_5XX)] = errors
    gen = {"late_sends": late, "loop_lag_max_ns": int(lag_ms * MS), "in_flight": in_flight}
    if cpu_s is not None:
        gen["cpu_s"] = cpu_s
    d = {
        "index": i,
        "start_s": float(i),
        "end_s": float(i + 1),
        "total": {
            "requests": n,
            "errors": errors,
            "error_rate": errors / n if n else 0.0,
            "latency_ms": {"p50": lat_ms, "p99": lat_ms if n else None},
        },
        "generator": {"0": gen},
        "target": target or {},
    }
    return d, {"index": i, "endpoints": {"health": s.to_sparse()}}


def run(overrides=None, n_windows=9, sends=None, **kw):
    """Windows 0..n-1 at the plan; overrides: index -> window() kwargs."""
    overrides = overrides or {}
    made = [window(i, **overrides.get(i, {})) for i in range(n_windows)]
    windows = [w for w, _ in made]
    hists = {h["index"]: h for _, h in made}
    if sends is None:  # sends per 100 ms at the plan: 10, 20, 30 per bin
        sends = [10] * 30 + [20] * 30 + [30] * 30
    kw.setdefault("max_in_flight", 1000)
    steps = analyse_steps(
        STEPS, windows, hists, {"bin_s": 0.1, "counts": sends}, ["error_rate < 1%", "p99(latency) < 100ms"], **kw
    )
    return steps, verdict(steps, [100, 200, 300], aborted=kw.get("run_end_s") is not None)


def test_healthy_staircase_holds_to_the_max():
    steps, v = run()
    assert [s.broke for s in steps] == [False, False, False]
    assert [s.windows for s in steps] == [[1, 2], [4, 5], [7, 8]]  # the first window of each is warm-up
    assert [s.warmup_windows for s in steps] == [[0], [3], [6]]
    assert steps[1].requests == 400 and steps[1].rps == 200
    assert steps[1].sends_per_s == pytest.approx(200) and steps[1].planned_per_s == 200
    assert steps[1].latency_ms["p99"] == pytest.approx(5, rel=0.01)
    assert (v.highest_held, v.broke_at, v.limited_by) == (300, None, None)
    assert "held up to the search maximum 300" in v.text


@pytest.mark.parametrize(
    "overrides, held, broke, why",
    [
        ({7: {"errors": 10}, 8: {"errors": 12}}, 200, 300, "errors above 1% at 300"),
        ({4: {"lat_ms": 150}}, 100, 200, "p99 above 100 ms in one measured window of 200"),
        ({3: {"lat_ms": 500, "errors": 50}}, 300, None, "a bad warm-up window does not break a step"),
        ({1: {"errors": 5}}, None, 100, "the first level already breaks"),
    ],
)
def test_the_first_failing_step_broke(overrides, held, broke, why):
    steps, v = run(overrides)
    assert (v.highest_held, v.broke_at) == (held, broke), why
    assert v.limited_by == ("target" if broke is not None else None)
    if broke is not None:
        b = next(s for s in steps if s.broke)
        assert any(not r["ok"] for r in b.rules)
        assert f"broke at {broke:g}" in v.text


def test_a_step_with_no_answers_breaks():
    steps, v = run({7: {"n": 0}, 8: {"n": 0}})
    assert steps[2].broke and steps[2].rules[0]["observed_text"] == "no data"
    assert v.broke_at == 300


@pytest.mark.parametrize(
    "overrides, sends, limited, why",
    [
        ({7: {"late": 20}}, None, True, "20 late of 600 sends: 3.3% > 1%"),
        ({7: {"late": 5}}, None, False, "0.8% late is fine"),
        ({7: {"late": 9}}, None, False, "9 late of 600 is above 1%, but fewer than 10: noise"),
        ({8: {"lag_ms": 150}}, None, True, "event loop lagged 150 ms"),
        ({}, [10] * 30 + [20] * 30 + [20] * 30, True, "sent 200/s of 300/s planned, target healthy"),
        (
            {7: {"errors": 40}, 8: {"errors": 40}},
            [10] * 30 + [20] * 30 + [20] * 30,
            False,
            "sent too little, but the target was erroring: its limit",
        ),
        ({7: {"late": 20, "in_flight": 950}}, None, False, "late because the pool waited on the target"),
    ],
)
def test_generator_limits_are_not_blamed_on_the_target(overrides, sends, limited, why):
    steps, v = run(overrides, sends=sends)
    assert steps[2].generator_limited is limited, why
    if limited:
        assert v.limited_by == "generator" and "generator ran out of capacity at 300" in v.text
        assert v.highest_held == 200  # only what held below the generator's limit counts
    else:
        assert v.limited_by in ("target", None)


def test_a_generator_limited_break_is_the_generators():
    # the target "broke" at 300 (errors), but the generator was behind in that very step
    steps, v = run({7: {"errors": 10, "late": 50}, 8: {"errors": 10}})
    assert steps[2].broke and steps[2].generator_limited
    assert (v.broke_at, v.limited_by, v.highest_held) == (300, "generator", 200)


def test_a_run_of_generator_limited_steps_starts_where_it_ran_out():
    steps, v = run({4: {"late": 50}, 7: {"late": 50}})
    assert v.limited_by == "generator" and "at 200" in v.text and v.highest_held == 100


def test_a_passing_generator_hiccup_below_the_break_does_not_decide():
    # 11 late sends in one second at 200 req/s, then a clean step at 300: nothing broke, the
    # hiccup is named in the text and does not make it the generator's limit.
    steps, v = run({4: {"late": 11}})
    assert steps[1].generator_limited and not steps[2].generator_limited
    assert v.limited_by is None and v.highest_held == 300
    assert "hiccups, not sustained, at 200" in v.text
    # a hiccup at 100, the target breaks at 300: the target's limit
    steps, v = run({1: {"late": 30}, 7: {"errors": 20}})
    assert (v.broke_at, v.limited_by, v.highest_held) == (300, "target", 200)


def test_generator_limited_after_the_break_does_not_matter():
    steps, v = run({4: {"errors": 10}, 5: {"errors": 10}, 7: {"late": 100}})
    assert (v.broke_at, v.limited_by) == (200, "target")


def test_an_abort_cuts_the_run_short():
    # the live rule stopped the run 2 s into the third step: one warm-up window, one measured
    steps, v = run({7: {"errors": 50}}, n_windows=8, run_end_s=8.0)
    assert len(steps) == 3 and not steps[2].complete and steps[2].windows == [7]
    assert (v.highest_held, v.broke_at, v.limited_by) == (200, 300, "target")
    # stopped 1 s into it: only the warm-up window is there, and it is judged
    steps, v = run({6: {"errors": 50}}, n_windows=7, run_end_s=7.0)
    assert steps[2].windows == [6] and steps[2].broke and v.broke_at == 300
    # the live rule fired, yet no step fails on its own windows: the last step reached broke
    steps, v = run({}, n_windows=5, run_end_s=5.0)
    assert len(steps) == 2 and v.broke_at == 200 and "live abort rule" in v.text


def test_resource_rules_and_figures():
    mb = 1e6
    over = {
        i: {"target": {"target_memory": 50 * mb * (i + 1), "target_cpu": 0.5, "target_connections": 40}}
        for i in range(9)
    }
    made = [window(i, **over[i]) for i in range(9)]
    steps = analyse_steps(
        STEPS,
        [w for w, _ in made],
        {h["index"]: h for _, h in made},
        {"bin_s": 0.1, "counts": [10] * 90},
        ["max(target_memory) < 250MB"],
    )
    assert [s.broke for s in steps] == [False, True, True]
    assert steps[1].target == {"memory_max_mb": 300.0, "cpu_mean": 0.5, "connections_max": 40.0}
    assert steps[1].rules[0]["observed_text"] == "300MB"


def test_a_resource_rule_without_readings_breaks_nothing():
    made = [window(i) for i in range(9)]  # no target readings: its metrics were not scraped
    steps = analyse_steps(
        STEPS,
        [w for w, _ in made],
        {h["index"]: h for _, h in made},
        {"bin_s": 0.1, "counts": [10] * 90},
        ["max(target_memory) < 250MB"],
    )
    assert [s.broke for s in steps] == [False, False, False]
    assert steps[0].rules[0]["observed_text"] == "no data" and steps[0].target["memory_max_mb"] is None


def test_generator_cpu_from_cumulative_readings():
    over = {i: {"cpu_s": 0.25 * i} for i in range(9)}
    steps, _ = run(over)
    assert steps[1].generator_cpu == pytest.approx(0.25)  # (1.25 - 0.75) over windows 4..5


def test_closed_model_has_no_planned_rate():
    steps, v = run(sends=[1] * 90, model="closed")
    assert steps[0].planned_per_s is None and not steps[0].generator_limited
    assert v.limited_by is None


# --- recovery -------------------------------------------------------------------------------------

BAND = {"p99_limit_ms": 31.0, "error_rate_limit": 0.01}


def rec_windows(p99s, errors=None):
    errors = errors or [0] * len(p99s)
    return [
        {
            "index": i,
            "start_s": float(i),
            "end_s": float(i + 1),
            "total": {"requests": 100, "errors": e, "error_rate": e / 100, "latency_ms": {"p99": p}},
        }
        for i, (p, e) in enumerate(zip(p99s, errors))
    ]


@pytest.mark.parametrize(
    "p99s, errors, expected",
    [
        ([300, 900, 20, 20, 20, 20, 20, 20], None, 0.0),  # back at once after a 2 s overload
        ([300, 900, 800, 500, 100, 30, 20, 20, 20, 20], None, 3.0),  # draining for 3 windows
        ([300, 900, 20, 20, 20, 20, 20, 20], [50, 50, 5, 0, 0, 0, 0, 0], 1.0),  # errors linger
        ([300, 900, 800, 500, 100, 40, 20, 20], None, None),  # run ends before 3 good windows
    ],
)
def test_recovery_from_windows(p99s, errors, expected):
    r = recovery_from_windows(
        rec_windows(p99s, errors),
        overload_level=300,
        recovery_level=50,
        overload_s=2,
        recovery_s=len(p99s) - 2,
        baseline_band=BAND,
    )
    assert r.recovery_time_s == expected
    assert r.overload["requests"] == 200 and r.overload["latency_p99_ms_worst_window"] == 900
    assert r.windows[0]["in_band"] is False
    if expected is None:
        assert "not back inside the band" in r.note


def test_recovery_measures_its_own_baseline():
    # 3 s baseline (first window left out: set-up), 2 s overload, then recovery
    p99s = [80, 10, 12, 500, 600, 300, 15, 15, 15, 15]
    r = recovery_from_windows(
        rec_windows(p99s),
        overload_level=300,
        recovery_level=50,
        overload_s=2,
        recovery_s=5,
        baseline_band=None,
        baseline_s=3,
    )
    assert r.band["p99_limit_ms"] == pytest.approx(12 * 1.5 + 1)
    assert r.overload_end_s == 5 and r.recovery_time_s == 1.0
