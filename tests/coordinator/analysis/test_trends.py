"""horde.coordinator.analysis.trends: Theil-Sen / Mann-Kendall trends and the memory-leak verdict."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from horde.coordinator.analysis.trends import (
    MB,
    generator_rss_series,
    leak_verdict,
    mann_kendall,
    theil_sen,
    trend,
    window_series,
)

# A compressed soak: one real minute stands for one simulated hour, a reading every 0.5 s.
TIME_SCALE = 60.0
T = np.arange(0.0, 60.0, 0.5)
SIM_H = T * TIME_SCALE / 3600.0  # simulated hours
BASE = 200 * MB


def noise(seed: int, sd: float, n: int = len(T)) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, sd, n)


# -- the two statistics ----------------------------------------------------------------


def test_theil_sen_recovers_a_line_and_ignores_outliers() -> None:
    t = np.arange(50.0)
    y = 3.0 * t + 10.0
    y[[5, 17, 33]] = [1e6, -1e6, 5e5]  # wild outliers
    slope, intercept, lo, hi = theil_sen(t, y)
    assert slope == pytest.approx(3.0)
    assert intercept == pytest.approx(10.0, abs=5.0)  # median(y) - slope * median(t): outliers move it a rank
    assert lo <= 3.0 <= hi


def test_mann_kendall_sees_monotonic_trends_and_not_noise() -> None:
    tau, p, z = mann_kendall(np.arange(30.0) + noise(1, 2.0, 30))
    assert tau > 0.5 and p < 1e-6 and z > 0
    tau, p, z = mann_kendall(-np.arange(30.0))
    assert tau == pytest.approx(-1.0) and z < 0
    assert mann_kendall(noise(2, 1.0, 40))[1] > 0.05
    assert mann_kendall([5.0, 5.0, 5.0, 5.0]) == (0.0, 1.0, 0.0)  # all ties: no information


def test_theil_sen_reduces_very_long_series() -> None:
    t = np.arange(50_000.0)
    slope, *_ = theil_sen(t, 0.5 * t + noise(3, 10.0, len(t)))
    assert slope == pytest.approx(0.5, rel=0.01)


# -- trend -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "y, expected",
    [
        (100 + 0.5 * np.arange(40.0) + noise(4, 1.0, 40), "rising"),  # +20% over the series
        (100 - 0.5 * np.arange(40.0) + noise(5, 1.0, 40), "falling"),
        (100 + noise(6, 1.0, 40), "flat"),  # noise only
        (100 + 0.01 * np.arange(40.0) + noise(7, 0.01, 40), "flat"),  # significant, but 0.4%: negligible
        (100 + noise(8, 1.0, 5), "inconclusive"),  # too few points
        (np.full(20, 7.0), "flat"),  # constant
    ],
)
def test_trend_verdicts(y: np.ndarray, expected: str) -> None:
    t_s = np.arange(len(y)) * 60.0
    tr = trend(t_s, y, unit="ms")
    assert tr.verdict == expected, tr


def test_trend_slope_is_per_requested_unit_and_simulated_time() -> None:
    t_s = np.arange(0.0, 600.0, 10.0)  # 10 real minutes
    y = 1.0 + t_s / 60.0  # +1 per real minute
    assert trend(t_s, y, per="minute").slope_per_hour == pytest.approx(1.0)
    assert trend(t_s, y, per="hour").slope_per_hour == pytest.approx(60.0)
    # compressed 60x: one real minute is a simulated hour, so +1 per simulated hour
    assert trend(t_s, y, per="hour", time_scale=60.0).slope_per_hour == pytest.approx(1.0)


def test_trend_noise_floor_turns_small_significant_slopes_flat() -> None:
    t_s = np.arange(30) * 3600.0
    y = 10.0 + 2.0 * np.arange(30)  # +2 per hour, a clear trend
    assert trend(t_s, y).verdict == "rising"
    assert trend(t_s, y, noise_floor=5.0).verdict == "flat"


# -- leak verdict ----------------------------------------------------------------------


def test_linear_leak_is_found_with_its_slope_per_simulated_hour() -> None:
    truth = 50 * MB  # per simulated hour
    rss = BASE + truth * SIM_H + noise(10, 3 * MB)
    v = leak_verdict(T, rss, time_scale=TIME_SCALE)
    assert v.verdict == "leak", v
    assert v.slope_bytes_per_simulated_hour == pytest.approx(truth, rel=0.10)
    assert v.ci[0] <= truth <= v.ci[1]
    assert v.p_value < 1e-6


def test_slow_leak_in_a_real_time_soak() -> None:
    # 2 real hours, a reading a minute, 8 MB/h on a 300 MB process with 1 MB noise.
    t = np.arange(0.0, 7200.0, 60.0)
    rss = 300 * MB + 8 * MB * t / 3600 + noise(11, 1 * MB, len(t))
    v = leak_verdict(t, rss)
    assert v.verdict == "leak", v
    assert v.slope_bytes_per_simulated_hour == pytest.approx(8 * MB, rel=0.10)


@pytest.mark.parametrize("seed", range(5))
def test_flat_noise_is_no_leak(seed: int) -> None:
    v = leak_verdict(T, BASE + noise(20 + seed, 3 * MB), time_scale=TIME_SCALE)
    assert v.verdict == "no leak", v


@pytest.mark.parametrize("step_at_s", [15.0, 25.0, 40.0])
def test_step_then_plateau_is_no_leak(step_at_s: float) -> None:
    rss = BASE + np.where(step_at_s < T, 40 * MB, 0.0) + noise(30, 2 * MB)
    v = leak_verdict(T, rss, time_scale=TIME_SCALE)
    assert v.verdict == "no leak", v
    assert "plateau" in v.reason


def test_warm_up_growth_is_dropped() -> None:
    # Caches fill for the first 10% of the run, then memory is flat.
    rss = BASE + np.minimum(T, 6.0) * 10 * MB + noise(31, 1 * MB)
    v = leak_verdict(T, rss, time_scale=TIME_SCALE)
    assert v.verdict == "no leak", v


def test_too_few_points_is_inconclusive() -> None:
    v = leak_verdict(T[:8], BASE + 50 * MB * SIM_H[:8], time_scale=TIME_SCALE)
    assert v.verdict == "inconclusive" and "needed" in v.reason
    assert leak_verdict([], []).verdict == "inconclusive"


def test_gc_sawtooth_on_a_flat_baseline_is_no_leak() -> None:
    saw = 30 * MB * ((T % 7.0) / 7.0)  # allocate, collect, every 7 s
    v = leak_verdict(T, BASE + saw + noise(40, 1 * MB), time_scale=TIME_SCALE)
    assert v.verdict == "no leak", v


def test_gc_sawtooth_on_a_rising_baseline_is_a_leak() -> None:
    saw = 30 * MB * ((T % 7.0) / 7.0)
    truth = 40 * MB
    v = leak_verdict(T, BASE + truth * SIM_H + saw + noise(41, 1 * MB), time_scale=TIME_SCALE)
    assert v.verdict == "leak", v
    assert v.slope_bytes_per_simulated_hour == pytest.approx(truth, rel=0.15)


def test_growth_below_the_practical_threshold_is_no_leak() -> None:
    # 0.5 MB per simulated hour, measured precisely: real, but below 1 MiB/h and 2%/h.
    rss = BASE + 0.5 * MB * SIM_H + noise(42, 0.01 * MB)
    v = leak_verdict(T, rss, time_scale=TIME_SCALE)
    assert v.verdict == "no leak" and "below" in v.reason, v


def test_a_leak_that_starts_late_is_still_a_leak() -> None:
    rss = BASE + np.maximum(T - 20.0, 0.0) * TIME_SCALE / 3600 * 80 * MB + noise(43, 1 * MB)
    assert leak_verdict(T, rss, time_scale=TIME_SCALE).verdict == "leak"


# -- properties ------------------------------------------------------------------------

_series = st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=3, max_size=40).filter(lambda ys: len(set(ys)) > 1)


@settings(max_examples=60, deadline=None)
@given(ys=_series, c=st.floats(-1e6, 1e6, allow_nan=False))
def test_slope_sign_is_invariant_to_adding_a_constant(ys: list[float], c: float) -> None:
    t = np.arange(len(ys), dtype=float)
    y = np.asarray(ys)
    s1 = theil_sen(t, y)[0]
    s2 = theil_sen(t, y + c)[0]
    if abs(s1) > 1e-6 * (1 + np.abs(y).max()):  # away from rounding noise around 0
        assert np.sign(s1) == np.sign(s2)
    assert s2 == pytest.approx(s1, rel=1e-6, abs=1e-6 * (1 + abs(c) + np.abs(y).max()))


@settings(max_examples=60, deadline=None)
@given(ys=_series, k=st.floats(1e-3, 1e3))
def test_scaling_time_by_k_scales_the_slope_by_one_over_k(ys: list[float], k: float) -> None:
    t = np.arange(len(ys), dtype=float)
    y = np.asarray(ys)
    s1 = theil_sen(t, y)[0]
    s2 = theil_sen(t * k, y)[0]
    assert s2 == pytest.approx(s1 / k, rel=1e-6, abs=1e-9 * (1 + np.abs(y).max()) / k)


# -- series from bundle windows --------------------------------------------------------


def test_window_series_and_generator_rss() -> None:
    windows = [
        {
            "index": 0,
            "end_s": 1.0,
            "total": {"error_rate": 0.0},
            "target": {"target_memory": 10.0},
            "generator": {"0": {"rss_bytes": 100, "incarnation": 0}},
        },
        {
            "index": 1,
            "end_s": 2.0,
            "total": {"error_rate": 0.5},
            "target": {},
            "generator": {"0": {"rss_bytes": 110, "incarnation": 0}, "1": {"rss_bytes": 0}},
        },
    ]
    assert window_series(windows, "target", "target_memory") == ([1.0], [10.0])
    assert window_series(windows, "total", "error_rate") == ([1.0, 2.0], [0.0, 0.5])
    assert generator_rss_series(windows) == {"0": ([1.0, 2.0], [100.0, 110.0])}
