"""Stress: the breaking-point search finds a capacity set by faults, a healthy automaton does
not break below the search maximum, recovery follows a scaling delay, and pool exhaustion,
memory pressure and CPU saturation each show up in horde's report."""

from __future__ import annotations

import pytest

from horde.coordinator.bundle.outcome import Outcome
from horde.coordinator.bundle.store import read_bundle
from horde.coordinator.workflows.stress import (
    StressPlan,
    StressReport,
    StressTarget,
    find_breaking_point,
    format_report,
    measure_recovery,
    search_plan,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# stress-breaking-point.yaml's faults: 4 workers, each request held 20 ms -> 200 req/s.
CAPACITY = 4 / 0.020


def steps_table(result):
    return [
        {
            "level": s.level,
            "rps": s.rps,
            "sent_per_s": s.sends_per_s,
            "error_rate": s.error_rate,
            "p99_ms": s.latency_ms.get("p99"),
            "broke": s.broke,
            "generator": s.generator_reasons,
        }
        for s in result.steps
    ]


@pytest.mark.timeout(600)
def test_breaking_point_is_found_within_15_percent_of_the_configured_capacity(
    load, run_options, perf_full, report, ray_cluster
):
    loaded = load("stress-breaking-point")
    plan = search_plan(loaded)  # the file's staircase (50..400 by 25, 5 s holds) and abort rules
    if not perf_full:
        plan = search_plan(loaded, StressPlan(start=100, step=20, max_level=300, hold_s=3))
    with StressTarget.for_scenario(loaded) as target:
        result = find_breaking_point(
            loaded,
            start=plan.start,
            step=plan.step,
            max_level=plan.max_level,
            hold_s=plan.hold_s,
            break_rules=list(plan.break_rules),
            options=run_options,
            target=target,
        )
    print(format_report(StressReport(result, None)))
    report(
        configured_capacity=CAPACITY,
        broke_at=result.broke_at,
        highest_held=result.highest_held,
        limited_by=result.limited_by,
        verdict=result.verdict,
        steps=steps_table(result),
    )
    assert result.limited_by == "target", result.verdict
    assert result.broke_at is not None
    assert abs(result.broke_at - CAPACITY) <= 0.15 * CAPACITY, result.verdict
    assert result.highest_held is not None and result.highest_held < result.broke_at
    assert result.aborted  # the abort rules stopped the staircase at the break


@pytest.mark.timeout(600)
def test_healthy_automaton_does_not_break_below_the_search_maximum(load, run_options, report, ray_cluster):
    loaded = load("stress-breaking-point")
    rules = list(search_plan(loaded).break_rules)
    with StressTarget({}) as target:  # the same search, no faults
        result = find_breaking_point(
            loaded, start=100, step=100, max_level=300, hold_s=3, break_rules=rules, options=run_options, target=target
        )
    report(verdict=result.verdict, steps=steps_table(result))
    assert result.broke_at is None and result.limited_by is None, result.verdict
    assert result.highest_held == 300 and len(result.steps) == 3


def scaling_faults(delay_s):
    # 2 workers x 20 ms = 100 req/s to start with; once the queue has stayed above 5 for
    # `delay_s`, the pool grows to 20 workers (1000 req/s); no scale-down during the test.
    return {
        "latency": {"dist": "fixed", "delay_s": 0.020},
        "concurrency": {"limit": 2, "queue": 1000},
        "scaling": {
            "min_workers": 2,
            "max_workers": 20,
            "step": 18,
            "queue_above": 5,
            "scale_up_delay_s": delay_s,
            "cool_down_s": 60,
        },
    }


@pytest.mark.timeout(600)
def test_recovery_from_overload_follows_the_scaling_delay(load, run_options, report, ray_cluster):
    loaded = load("stress-breaking-point")
    rules = list(search_plan(loaded).break_rules)
    overload, recovery, overload_s = 150.0, 120.0, 1.0
    measured = {}
    with StressTarget(scaling_faults(4.0)) as target:
        # The band comes from the search's low steps, on the same automaton.
        search = find_breaking_point(
            loaded, start=40, step=40, max_level=160, hold_s=3, break_rules=rules, options=run_options, target=target
        )
        band = search.baseline_band()
        assert band is not None, search.verdict
        for delay_s in (4.0, 2.0):
            target.faults = scaling_faults(delay_s)  # applied (and the scaling model restarted) before the run
            r = measure_recovery(
                loaded,
                overload_level=overload,
                recovery_level=recovery,
                overload_s=overload_s,
                recovery_s=10,
                baseline_band=band,
                options=run_options,
                target=target,
            )
            measured[delay_s] = r
    # The recovery level (120/s) is above the starting capacity (~95/s measured): the queue
    # keeps growing after the overload until the pool scales up, `delay` after the queue
    # first passed 5 (queue_above / (overload - capacity) ~ 0.1 s into the overload). The
    # window holding the scale-up still completes queued requests; the next one is in band.
    report(
        search=search.verdict,
        band=band,
        recovery={d: {"recovery_time_s": r.recovery_time_s, "windows": r.windows} for d, r in measured.items()},
    )
    for delay_s, r in measured.items():
        expected = 5 / (overload - 95) + delay_s - overload_s
        assert r.recovery_time_s is not None, r.note
        assert abs(r.recovery_time_s - expected) <= 1.0, (delay_s, r.recovery_time_s, expected)
    assert measured[4.0].recovery_time_s > measured[2.0].recovery_time_s


# --- each stress state shows up in horde's report -------------------------------------------------


@pytest.mark.timeout(600)
def test_connection_pool_exhaustion_is_reported(load, run, report, verdicts, perf_full):
    # CI: 300 users started together against a 100-connection cap; full size: the file
    # (1000 users, cap 200).
    ci = [
        "workload.stages[0].target=300",
        "workload.stages[1].target=300",
        "workload.stages[1].duration=5s",
        "target.embedded.faults.max_connections=100",
    ]
    cap = 200 if perf_full else 100
    result = run(load("stress-pool-exhaustion", ci=ci))
    v = verdicts(result)
    res = result.summary["target_resources"]
    served = read_bundle(result.bundle).manifest["target"].get("served", {})
    report(
        target_connections=res.get("target_connections"),
        errors_by_class=result.summary["total"]["errors_by_class"],
        error_rate=result.summary["total"]["error_rate"],
        thresholds={k: x["observed_text"] for k, x in v.items()},
        target_rejected=served.get("rejected"),
    )
    assert result.outcome is Outcome.THRESHOLDS_FAILED
    # the open-connection count stops at the cap, far from the 1000+ target ...
    conns = v["max(target_connections) >= 1000"]
    assert not conns["ok"] and conns["observed"] <= cap
    assert res["target_connections"]["max"] <= cap
    # ... and the users turned away fail their requests
    assert result.summary["total"]["errors"] > 0


@pytest.mark.timeout(600)
def test_memory_pressure_fails_the_memory_threshold(load, run, report, verdicts, perf_full):
    # CI: 200 KB per request at 200 req/s for 5 s (~200 MB kept) against a 150 MB limit;
    # full size: the file as written (1 MB per request at 100 req/s, ~3 GB, limit 2000 MB).
    ci = [
        "target.embedded.faults.leak_per_request=200KB",
        "workload.stages[0].duration=0s",
        "workload.stages[0].target=200",
        "workload.stages[1].target=200",
        "workload.stages[1].duration=5s",
        "thresholds[0]=max(target_memory) < 150MB",
    ]
    result = run(load("stress-memory-pressure", ci=ci))
    v = verdicts(result)
    mem = result.summary["target_resources"]["target_memory"]
    limit = "max(target_memory) < 2000MB" if perf_full else "max(target_memory) < 150MB"
    report(
        target_memory_max_mb=mem["max"] / 1e6,
        target_memory_first_mb=mem["min"] / 1e6,
        thresholds={k: x["observed_text"] for k, x in v.items()},
    )
    assert result.outcome is Outcome.THRESHOLDS_FAILED
    assert not v[limit]["ok"]
    assert mem["max"] - mem["min"] >= (1.5e9 if perf_full else 150e6)  # it grew by about what was leaked


@pytest.mark.timeout(600)
def test_cpu_saturation_fails_the_cpu_threshold(load, run, report, verdicts, perf_full):
    # 20 ms of CPU per request at 60 req/s: the automaton's single event loop needs 1.2
    # cores and gets at most one. On this shared 2-core machine it gets 0.8-1.0 of a core
    # per window (mean ~0.9, measured): at CI size the check is that it is saturated past
    # 75% of a core; at full size, the suite's own bound (90%) as the file states it.
    limit = "avg(target_cpu) < 90%" if perf_full else "avg(target_cpu) < 75%"
    ci = ["workload.stages[1].duration=8s", f"thresholds[0]={limit}"]
    result = run(load("stress-cpu-saturation", ci=ci))
    v = verdicts(result)
    cpu = result.summary["target_resources"]["target_cpu"]
    report(
        target_cpu_mean=cpu["mean"],
        target_cpu_max=cpu["max"],
        thresholds={k: x["observed_text"] for k, x in v.items()},
        generator=result.summary["generator"]["reasons"],
    )
    assert result.outcome is Outcome.THRESHOLDS_FAILED
    assert not v[limit]["ok"]
    assert not v["p95(latency) < 1s"]["ok"]  # and the requests queue behind the busy loop
