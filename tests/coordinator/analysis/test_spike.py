"""coordinator/analysis/spike.py: spikes found in profiles, and their analysis over synthetic windows."""

from __future__ import annotations

import pytest

from horde.agents.spec import Stage
from horde.agents.stages import Profile
from horde.coordinator.analysis.spike import (
    SpikeSpec,
    analyse_spikes,
    find_spikes,
    in_band,
    spikes_for_run,
    time_to_reach,
)
from horde.coordinator.measure.aggregate import Stats
from horde.coordinator.scenario.load import parse_scenario


def P(start, *stages):
    """A profile from (duration_s, target) pairs."""
    return Profile(start, [Stage(d, t) for d, t in stages])


STEP_10X = P(10, (5, 10), (0, 100), (5, 100), (0, 10), (5, 10))


@pytest.mark.parametrize(
    "profile, expected",
    [
        # an instant 10x step, held 5 s, instant step back
        (STEP_10X, [SpikeSpec(5, 10, 10, 100, 10.0, 0.0)]),
        # 100x
        (P(5, (3, 5), (0, 500), (3, 500), (0, 5), (3, 5)), [SpikeSpec(3, 6, 5, 500, 100.0, 0.0)]),
        # a very short ramp (0.5 s) counts as a spike; its rise time is kept
        (P(10, (2, 10), (0.5, 100), (2, 100), (0, 10), (1, 10)), [SpikeSpec(2, 4.5, 10, 100, 10.0, 0.5)]),
        # a rise of exactly 1 s still counts
        (P(10, (2, 10), (1, 50), (2, 50), (0, 10)), [SpikeSpec(2, 5, 10, 50, 5.0, 1.0)]),
        # a gradual ramp (10 -> 1000 over 10 s) is not a spike, even though 10 -> 109 takes 1 s
        (P(10, (2, 10), (10, 1000), (2, 1000)), []),
        # a 1.5 s rise is too slow
        (P(10, (2, 10), (1.5, 100), (2, 100), (0, 10)), []),
        # a 4x step is too small; exactly 5x is enough
        (P(10, (2, 10), (0, 40), (2, 40), (0, 10)), []),
        (P(10, (2, 10), (0, 50), (2, 50), (0, 10)), [SpikeSpec(2, 4, 10, 50, 5.0, 0.0)]),
        # a rise from 0 is the start of a load, not a spike
        (P(0, (0, 100), (3, 100)), []),
        (P(0, (1, 0), (0, 100), (3, 100)), []),
        # a step then a short ramp are one rise (10 -> 20 -> 100 within 0.5 s)
        (P(10, (2, 10), (0, 20), (0.5, 100), (2, 100), (0, 10)), [SpikeSpec(2, 4.5, 10, 100, 10.0, 0.5)]),
        # a slow ramp, then a step: only the step is a spike, from the ramp's top
        (P(10, (5, 20), (0, 200), (2, 200), (0, 20)), [SpikeSpec(5, 7, 20, 200, 10.0, 0.0)]),
        # never falls back: the spike lasts to the end of the profile
        (P(10, (2, 10), (0, 100), (3, 100)), [SpikeSpec(2, 5, 10, 100, 10.0, 0.0)]),
        # falls back by a step and a ramp: ends where the falling stops
        (P(10, (2, 10), (0, 100), (2, 100), (0, 50), (2, 10), (3, 10)), [SpikeSpec(2, 6, 10, 100, 10.0, 0.0)]),
        # a further slow rise during the spike belongs to it
        (P(10, (2, 10), (0, 100), (3, 150), (0, 10), (2, 10)), [SpikeSpec(2, 5, 10, 100, 10.0, 0.0)]),
        # three spikes in a row, each from its own base
        (
            P(
                10,
                (2, 10),
                (0, 100),
                (1, 100),
                (0, 10),
                (2, 10),
                (0, 200),
                (1, 200),
                (0, 20),
                (2, 20),
                (0, 100),
                (1, 100),
                (0, 20),
                (2, 20),
            ),
            [
                SpikeSpec(2, 3, 10, 100, 10.0, 0.0),
                SpikeSpec(5, 6, 10, 200, 20.0, 0.0),
                SpikeSpec(8, 9, 20, 100, 5.0, 0.0),
            ],
        ),
    ],
)
def test_find_spikes(profile, expected):
    assert find_spikes(profile) == expected


def test_find_spikes_takes_a_scenario_workload_or_stages():
    loaded = parse_scenario(
        """
name: s
target: http://127.0.0.1:1
requests: [{name: r, path: /}]
workload:
  model: open
  start: 5
  stages:
    - {duration: 3s, target: 5}
    - {duration: 0s, target: 500}
    - {duration: 2s, target: 500}
    - {duration: 0s, target: 5}
    - {duration: 3s, target: 5}
"""
    )
    want = [SpikeSpec(3, 5, 5, 500, 100.0, 0.0)]
    assert find_spikes(loaded.scenario.workload) == want
    assert find_spikes([Stage(3, 5), Stage(0, 500), Stage(2, 500), Stage(0, 5)], start_level=5) == want


def test_thresholds_of_the_definition_are_parameters():
    assert find_spikes(P(10, (2, 10), (0, 40), (2, 40)), min_factor=4) == [SpikeSpec(2, 4, 10, 40, 4.0, 0.0)]
    assert find_spikes(P(10, (2, 10), (1.5, 100), (2, 100)), max_rise_s=2) == [SpikeSpec(2, 5.5, 10, 100, 10.0, 1.5)]


# --- time to 90% ----------------------------------------------------------------------------

# 5/s for 3 s, a 100x step to 500/s for 2 s, back to 5/s: per 100 ms bin 0.5 planned, then 50.
SPIKE_100X = P(5, (3, 5), (0, 500), (2, 500), (0, 5), (3, 5))
S100 = find_spikes(SPIKE_100X)[0]


def sends(before, during, after=(), base=1):
    """Sends per 100 ms: 30 base bins, then `during` (padded with 50s to 20 bins), then after."""
    during = list(during) + [50] * (20 - len(during))
    return [base] * 30 + during + list(after or [1] * 30)


@pytest.mark.parametrize(
    "counts, expected",
    [
        (sends(None, []), 0.1),  # at the planned level from the first bin: one bin's resolution
        (sends(None, [10, 30, 45, 50]), 0.3),  # 45 >= 0.9 x 50 in the third bin, then 50
        (sends(None, [10, 45, 30, 50, 50]), 0.4),  # one good bin is not enough: two in a row
        (sends(None, [10, 44, 44, 44, 46]), 0.5),  # 44 < 45; catching up counts (46, then 50)
        (sends(None, [0] * 9 + [100]), 1.0),  # a late burst reaches the level after 1 s
        (sends(None, [40] * 20), None),  # never at 90% during the spike
        ([1] * 30, None),  # no sends recorded at all during the spike
    ],
)
def test_time_to_90(counts, expected):
    got = time_to_reach(S100, counts, 0.1, SPIKE_100X)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_time_to_90_waits_for_the_plan_on_a_short_ramp():
    # 10 -> 100 over 0.5 s from t=2: the plan reaches 90/s only in the bin [2.4, 2.5)
    prof = P(10, (2, 10), (0.5, 100), (2, 100), (0, 10), (2, 10))
    spike = find_spikes(prof)[0]
    counts = [1] * 20 + [10] * 5 + [10] * 20 + [1] * 20  # exactly the plan's 10 per bin at 100/s
    # bins [2.4, 2.5) (planned 9.1 >= 9) and [2.5, 2.6): reached at 2.5 s, 0.5 s after the rise began
    assert time_to_reach(spike, counts, 0.1, prof) == pytest.approx(0.5)


def test_time_to_90_partial_first_bin_is_not_counted():
    # the step is at 2.05 s: the bin [2.0, 2.1) is half base, half peak
    prof = P(10, (2.05, 10), (0, 100), (2, 100), (0, 10), (1, 10))
    spike = find_spikes(prof)[0]
    counts = [1] * 20 + [6] + [10] * 20 + [1] * 10
    assert time_to_reach(spike, counts, 0.1, prof) == pytest.approx(0.15)


# --- windows --------------------------------------------------------------------------------


def W(i, requests=100, errors=0, p99=10.0, p50=None, mx=None):
    """A window dict as the bundle stores it (only the keys the analysis reads)."""
    return {
        "index": i,
        "start_s": float(i),
        "end_s": float(i + 1),
        "total": {
            "requests": requests,
            "errors": errors,
            "error_rate": errors / requests if requests else 0.0,
            "latency_ms": {
                "p50": p50 if p50 is not None else (p99 / 2 if requests else None),
                "p99": p99 if requests else None,
                "max": mx if mx is not None else p99,
            },
        },
    }


# 10/s for 5 s, 10x to 100/s for 5 s, back to 10/s for 10 s.
PROF = Profile(10, [Stage(5, 10), Stage(0, 100), Stage(5, 100), Stage(0, 10), Stage(10, 10)])
SPK = find_spikes(PROF)


def run_windows(p99s, errors=None, requests=None):
    errors = errors or [0] * len(p99s)
    requests = requests or [100] * len(p99s)
    return [W(i, r, e, p) for i, (p, e, r) in enumerate(zip(p99s, errors, requests))]


@pytest.mark.parametrize(
    "p99s, errors, expected_recovery, why",
    [
        # pre-spike p99 at most 10 ms (window 0 ignored: set-up) -> limit 16 ms; back at once
        (
            [99, 10, 8, 9, 10, 50, 60, 70, 80, 90, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10],
            None,
            0.0,
            "in band right from the spike's end",
        ),
        # slow drain: 40, 30, 20 ms after the spike, then inside
        (
            [99, 10, 8, 9, 10, 50, 60, 70, 80, 90, 40, 30, 20, 16, 12, 10, 10, 10, 10, 10],
            None,
            3.0,
            "16 ms is on the limit (10 x 1.5 + 1): inside",
        ),
        # a relapse inside the 3 windows restarts the count
        (
            [99, 10, 8, 9, 10, 50, 60, 70, 80, 90, 10, 10, 30, 10, 10, 10, 10, 10, 10, 10],
            None,
            3.0,
            "a window out of band breaks the run of three",
        ),
        # errors keep it out: pre error rate 0, limit 1%
        (
            [99, 10, 8, 9, 10, 50, 60, 70, 80, 90, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10],
            [0] * 10 + [5, 2, 1, 0, 0, 0, 0, 0, 0, 0],
            2.0,
            "2% errors is out, 1% is in",
        ),
        # never back inside before the end of the run
        (
            [99, 10, 8, 9, 10, 50, 60, 70, 80, 90, 40, 40, 40, 40, 40, 40, 40, 40, 10, 10],
            None,
            None,
            "only two good windows at the end",
        ),
    ],
)
def test_recovery(p99s, errors, expected_recovery, why):
    [r] = analyse_spikes(SPK, run_windows(p99s, errors), [], 0.1, PROF)
    assert r["recovery_s"] == expected_recovery, why
    assert r["band"]["windows"] == [1, 4]
    assert r["band"]["p99_limit_ms"] == pytest.approx(16.0)
    if expected_recovery is None:
        assert "end of the run" in r["note"]
    else:
        assert r["recovered_at_s"] == 10.0 + expected_recovery


def test_band_error_rate_is_relative_to_the_pre_spike_errors():
    # 2% errors before the spike: up to 3% after is inside
    ws = run_windows([10] * 20, errors=[2] * 5 + [50] * 5 + [4, 3, 3, 3, 3] + [3] * 5)
    [r] = analyse_spikes(SPK, ws, [], 0.1, PROF)
    assert r["band"]["error_rate"] == pytest.approx(0.02)
    assert r["band"]["error_rate_limit"] == pytest.approx(0.03)
    assert r["recovery_s"] == 1.0


def test_missing_or_empty_windows_are_not_in_band():
    ws = run_windows([10] * 20)
    del ws[11]  # nothing completed in window 11 (the target froze)
    next(w for w in ws if w["index"] == 13)["total"]["requests"] = 0
    [r] = analyse_spikes(SPK, ws, [], 0.1, PROF)
    assert r["recovery_s"] == 4.0  # windows 14, 15, 16
    assert not in_band(None, r["band"])


def test_no_pre_spike_windows_gives_no_band():
    ws = [W(i) for i in range(5, 20)]
    [r] = analyse_spikes(SPK, ws, [], 0.1, PROF)
    assert r["band"] is None and r["recovery_s"] is None
    assert "no pre-spike window" in r["note"]


def test_during_sums_requests_errors_and_reports_the_worst_window():
    ws = run_windows(
        [10] * 5 + [50, 90, 70, 60, 55] + [10] * 10,
        errors=[0] * 5 + [0, 30, 10, 0, 0] + [0] * 10,
        requests=[10] * 5 + [100] * 5 + [10] * 10,
    )
    [r] = analyse_spikes(SPK, ws, [], 0.1, PROF)
    d = r["during"]
    assert d["windows"] == [5, 9]
    assert d["requests"] == 500 and d["errors"] == 40
    assert d["error_rate"] == pytest.approx(0.08)
    assert d["latency_p99_ms"] == 90 and d["latency_p50_ms"] == 45 and d["quantiles"] == "worst_window"


def test_during_merges_histograms_exactly_when_given():
    import numpy as np

    hists = {}
    for i in range(20):
        s = Stats(1.0)
        value_ms = 100 if 5 <= i < 10 else 1
        s.latency.record_many(np.full(100, value_ms * 1_000_000, dtype=np.int64))
        s.requests = 100
        hists[i] = s.to_sparse() if i % 2 else s
    ws = run_windows([1] * 5 + [100] * 5 + [1] * 10)
    [r] = analyse_spikes(SPK, ws, [], 0.1, PROF, histograms=hists)
    d = r["during"]
    assert d["quantiles"] == "merged"
    assert d["latency_p50_ms"] == pytest.approx(100, rel=0.01)
    assert d["latency_p99_ms"] == pytest.approx(100, rel=0.01)


def test_multiple_spikes_each_get_their_own_band_and_the_next_spike_bounds_recovery():
    prof = P(10, (3, 10), (0, 100), (2, 100), (0, 10), (5, 10), (0, 100), (2, 100), (0, 10), (6, 10))
    spikes = find_spikes(prof)
    assert [(s.start_s, s.end_s) for s in spikes] == [(3, 5), (10, 12)]
    p99s = [50, 10, 10, 50, 60, 30, 20, 10, 10, 10, 80, 90, 40, 40, 40, 40, 40, 40]
    rs = analyse_spikes(spikes, run_windows(p99s), [50] * 180, 0.1, prof)
    assert rs[0]["band"]["windows"] == [1, 2]
    assert rs[0]["recovery_s"] == 2.0  # windows 7, 8, 9 (ending by the next spike at 10)
    # the second spike's band starts after the first one's recovery (windows 7..9)
    assert rs[1]["band"]["windows"] == [7, 9]
    assert rs[1]["recovery_s"] is None and "end of the run" in rs[1]["note"]


def test_recovery_must_finish_before_the_next_spike():
    prof = P(10, (3, 10), (0, 100), (2, 100), (0, 10), (3, 10), (0, 100), (2, 100), (0, 10), (4, 10))
    spikes = find_spikes(prof)
    p99s = [10, 10, 10, 50, 60, 40, 10, 10, 50, 60, 10, 10, 10, 10]
    rs = analyse_spikes(spikes, run_windows(p99s), [], 0.1, prof)
    assert rs[0]["recovery_s"] is None and "next spike" in rs[0]["note"]
    assert rs[1]["band"]["windows"] == [5, 7]  # from the first spike's end: it never recovered
    assert rs[1]["recovery_s"] == 0.0


def test_spikes_for_run_and_closed_model():
    counts = [1] * 50 + [10] * 50 + [1] * 100
    ws = run_windows([10] * 20)
    [r] = spikes_for_run(PROF, ws, {"bin_s": 0.1, "counts": counts})
    assert r["time_to_90_s"] == pytest.approx(0.1) and r["recovery_s"] == 0.0
    assert r["factor"] == 10.0 and r["start_s"] == 5 and r["end_s"] == 10
    [c] = spikes_for_run(PROF, ws, {"bin_s": 0.1, "counts": counts}, model="closed")
    assert c["time_to_90_s"] is None and "open model only" in c["note"]
    assert spikes_for_run(P(10, (5, 10)), ws, {"bin_s": 0.1, "counts": counts}) == []
