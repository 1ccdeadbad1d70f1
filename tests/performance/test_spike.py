"""Spike: the open model reaches a 100x step's rate within 1 s, and the target's recovery
after a spike is measured, and is longer when the target drains its queue more slowly."""

from __future__ import annotations

import pytest

from horde.coordinator.analysis.spike import spikes_for_run
from horde.coordinator.bundle.outcome import Outcome
from horde.coordinator.bundle.store import read_bundle
from horde.coordinator.measure.aggregate import Stats
from horde.coordinator.workflows.stress import StressTarget

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def spike_analysis(loaded, result):
    """The bundle's spikes, analysed (coordinator/analysis/spike.py)."""
    b = read_bundle(result.bundle)
    hists = {}
    for h in b.window_histograms():
        total = Stats(1.0)
        for sparse in h["endpoints"].values():
            total.merge(Stats.from_sparse(sparse))
        hists[int(h["index"])] = total
    return spikes_for_run(loaded.scenario.workload, list(b.windows()), b.sends(), histograms=hists)


def brief(s):
    return {
        k: s[k]
        for k in ("start_s", "end_s", "base_level", "peak_level", "factor", "time_to_90_s", "recovery_s", "note")
    } | {"during": s["during"], "band": s["band"]}


@pytest.mark.timeout(600)
def test_a_100x_step_reaches_90_percent_of_the_planned_rate_within_1s(load, run, report):
    # 5 -> 500 req/s on /health: the automaton keeps up with 500/s on this machine.
    ci = ["workload.stages[0].duration=3s", "workload.stages[2].duration=3s", "workload.stages[4].duration=4s"]
    loaded = load("spike-100x", ci=ci)
    result = run(loaded)
    [spike] = spike_analysis(loaded, result)
    report(spike=brief(spike), generator=result.summary["generator"]["reasons"], outcome=result.outcome.value)
    assert spike["factor"] == 100
    assert spike["time_to_90_s"] is not None and spike["time_to_90_s"] <= 1.0, spike
    assert spike["during"]["error_rate"] < 0.05
    assert result.outcome is Outcome.PASSED, result.summary["thresholds"]


def queue_faults(delay_s):
    # 4 workers, each request held `delay_s`; a queue long enough that nothing is refused:
    # a spike above capacity builds a queue that drains at (capacity - base rate) afterwards.
    return {"latency": {"dist": "fixed", "delay_s": delay_s}, "concurrency": {"limit": 4, "queue": 5000}}


@pytest.mark.timeout(600)
def test_recovery_after_a_spike_is_longer_when_the_target_drains_slower(load, run, report):
    # 50 -> 500 req/s for 1 s, then 50 again for 12 s (spike-10x, shortened); the band
    # comes from the 4 windows before the spike (the run's first one is left out).
    #   20 ms: capacity ~190/s (4 / 21 ms), queue ~310 after the spike, drains at ~140/s: ~2.2 s
    #   30 ms: capacity ~130/s (4 / 31 ms), queue ~370, drains at ~80/s: ~4.7 s
    # Recovery is counted in whole windows from the end of the spike (measured: 3 s and 5 s;
    # with 50 requests a window, p99 is nearly the maximum, and one slow request out of
    # band puts recovery a few windows later).
    ci = ["workload.stages[0].duration=5s", "workload.stages[2].duration=1s", "workload.stages[4].duration=12s"]
    measured = {}
    with StressTarget(queue_faults(0.020)) as target:
        for delay_s in (0.020, 0.030):
            target.faults = queue_faults(delay_s)
            target.reset()
            loaded = load("spike-10x", overrides=ci, target=target.url)
            result = run(loaded)
            [spike] = spike_analysis(loaded, result)
            measured[delay_s] = spike
    report(**{f"{int(d * 1000)}ms": brief(s) for d, s in measured.items()})
    fast, slow = measured[0.020], measured[0.030]
    assert fast["recovery_s"] is not None and slow["recovery_s"] is not None, (fast["note"], slow["note"])
    assert slow["recovery_s"] > fast["recovery_s"]
    # the queue was really there: the spike's latency was far outside the band
    for s in (fast, slow):
        assert s["during"]["latency_p99_ms"] > s["band"]["p99_limit_ms"]
        assert 1.0 <= s["recovery_s"] <= 9.0
