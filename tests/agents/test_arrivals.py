"""agents/arrivals.py: exact send times, the exact split across agents, Poisson statistics."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from horde.agents.arrivals import ConstantArrivals, PoissonArrivals
from horde.agents.spec import Stage
from horde.agents.stages import Profile


def drain(schedule, chunk: int = 997) -> np.ndarray:
    """Every remaining send time of a schedule (odd chunk size on purpose)."""
    parts = []
    while len(part := schedule.next_batch(chunk)):
        parts.append(part)
    assert schedule.exhausted
    assert len(schedule.next_batch(chunk)) == 0  # stays exhausted
    return np.concatenate(parts) if parts else np.empty(0)


def constant_times(profile: Profile, index: int = 0, count: int = 1) -> np.ndarray:
    return drain(ConstantArrivals(profile, index, count))


# -- exact send times -------------------------------------------------------------------------

J10 = np.arange(1, 11)


EXACT = 1e-12


@pytest.mark.parametrize(
    "start, stages, expected, atol",
    [
        # constant 10/s over 1 s: one every 0.1 s, the last exactly at the end
        (10.0, [Stage(1.0, 10.0)], J10 / 10, EXACT),
        # ramp 0 -> 10/s over 2 s: cumulative 2.5 t^2, so t_j = sqrt(2j/5)
        (0.0, [Stage(2.0, 10.0)], np.sqrt(2 * J10 / 5), EXACT),
        # zero rate throughout: nothing
        (0.0, [Stage(5.0, 0.0)], [], EXACT),
        # a zero-rate gap: 10 sends, silence from 1 s to 3 s, 10 more
        (
            10.0,
            [Stage(1.0, 10.0), Stage(0.0, 0.0), Stage(2.0, 0.0), Stage(0.0, 10.0), Stage(1.0, 10.0)],
            np.concatenate([J10 / 10, 3 + J10 / 10]),
            EXACT,
        ),
        # 100x step: 1/s for 2 s, 100/s for 1 s, 1/s for 2 s
        (
            1.0,
            [Stage(2.0, 1.0), Stage(0.0, 100.0), Stage(1.0, 100.0), Stage(0.0, 1.0), Stage(2.0, 1.0)],
            np.concatenate([[1.0, 2.0], 2 + np.arange(1, 101) / 100, [4.0, 5.0]]),
            EXACT,
        ),
        # ramp down 10 -> 0 over 2 s: cumulative 10 - 2.5 (2 - t)^2; the level is ~0 at
        # the 10th send, where cumulative reaches 10.0 in floats ~2e-8 s before the end
        (10.0, [Stage(2.0, 0.0)], 2 - np.sqrt((10 - J10) / 2.5), 1e-7),
        # 2.5/s for 1.6 s: 4 whole sends (the integral is exactly 4)
        (2.5, [Stage(1.6, 2.5)], np.arange(1, 5) / 2.5, EXACT),
        # 0.5 sends in total: none
        (0.5, [Stage(1.0, 0.5)], [], EXACT),
    ],
)
def test_exact_send_times(start, stages, expected, atol):
    times = constant_times(Profile(start, stages))
    assert len(times) == len(expected)
    assert np.allclose(times, expected, rtol=0, atol=atol)


@pytest.mark.parametrize(
    "index, expected",
    [
        (0, [0.1, 0.4, 0.7, 1.0]),  # global arrivals 1, 4, 7, 10
        (1, [0.2, 0.5, 0.8]),  # 2, 5, 8
        (2, [0.3, 0.6, 0.9]),  # 3, 6, 9
    ],
)
def test_split_over_three_agents(index, expected):
    times = constant_times(Profile(10.0, [Stage(1.0, 10.0)]), index, 3)
    assert np.allclose(times, expected, rtol=0, atol=1e-12)


def test_batches_are_bounded_and_resume_where_they_stopped():
    s = ConstantArrivals(Profile(10.0, [Stage(1.0, 10.0)]), 0, 1)
    assert len(s.next_batch(0)) == 0 and not s.exhausted
    assert np.allclose(s.next_batch(3), [0.1, 0.2, 0.3])
    assert np.allclose(s.next_batch(3), [0.4, 0.5, 0.6])
    assert np.allclose(s.next_batch(100), [0.7, 0.8, 0.9, 1.0])
    assert s.exhausted and len(s.next_batch(100)) == 0


@pytest.mark.parametrize(
    "t, expected",
    [
        (0.0, [0.1, 0.2]),  # nothing before the start
        (0.35, [0.4, 0.5]),  # between two sends
        (0.5, [0.5, 0.6]),  # a send exactly at t is kept
        (0.5000001, [0.6, 0.7]),  # just after it: dropped
        (1.0, [1.0]),  # the last send
        (2.0, []),  # after the end
    ],
)
def test_skip_until(t, expected):
    s = ConstantArrivals(Profile(10.0, [Stage(1.0, 10.0)]), 0, 1)
    s.skip_until(t)
    assert np.allclose(s.next_batch(2), expected, rtol=0, atol=1e-12)


def test_skip_until_never_goes_back():
    s = ConstantArrivals(Profile(10.0, [Stage(1.0, 10.0)]), 0, 1)
    s.skip_until(0.55)
    s.skip_until(0.15)
    assert np.allclose(s.next_batch(1), [0.6])


@pytest.mark.parametrize("index, count", [(1, 1), (-1, 2), (0, 0)])
def test_bad_slices_raise(index, count):
    p = Profile(1.0, [Stage(1.0, 1.0)])
    with pytest.raises(ValueError):
        ConstantArrivals(p, index, count)
    with pytest.raises(ValueError):
        PoissonArrivals(p, index, count, seed=1)


# -- the split is exact ---------------------------------------------------------------------

levels = st.one_of(st.just(0.0), st.floats(0.0, 200.0))
durations = st.one_of(st.just(0.0), st.floats(0.0, 10.0))
profiles = st.builds(
    Profile,
    levels,
    st.lists(st.builds(Stage, durations, levels), min_size=1, max_size=5),
)


@settings(max_examples=40, deadline=None)
@given(profiles, st.integers(1, 7), st.floats(0.0, 1.1), st.integers(0, 10**6), st.booleans())
def test_agents_split_the_global_schedule_exactly(profile, count, frac, pick, at_a_send):
    whole = constant_times(profile)
    assert len(whole) == math.floor(profile.total)
    assert np.all(np.diff(whole) >= 0)
    agents = [constant_times(profile, i, count) for i in range(count)]
    # Disjoint, and together exactly the global schedule: agent i has arrivals i, i+count, ...
    for i, times in enumerate(agents):
        assert np.array_equal(times, whole[i::count])
    # Sends in [0, T], summed over the agents, are floor of the integral, also when T is
    # exactly a send time.
    T = whole[pick % len(whole)] if at_a_send and len(whole) else frac * profile.duration_s
    sent = sum(int(np.count_nonzero(times <= T)) for times in agents)
    assert sent == math.floor(profile.cumulative(T))
    assert abs(sent - profile.cumulative(T)) < 1


@settings(max_examples=40, deadline=None)
@given(profiles, st.integers(1, 7), st.integers(0, 6), st.floats(-1.0, 1.1))
def test_skip_until_drops_exactly_the_earlier_sends(profile, count, index, frac):
    index %= count
    full = constant_times(profile, index, count)
    t = frac * profile.duration_s
    s = ConstantArrivals(profile, index, count)
    s.skip_until(t)
    assert np.array_equal(drain(s), full[full >= t])


# -- long runs --------------------------------------------------------------------------------

DAY_S = 86_400.0


def test_a_day_at_1000_per_s_stays_accurate_to_a_microsecond():
    profile = Profile(1000.0, [Stage(DAY_S, 1000.0)])
    s = ConstantArrivals(profile, 2, 4)
    s.skip_until(86_000.0)
    times = s.next_batch(10_000)
    assert len(times) == 10_000
    first = 86_000_000 + (2 - (86_000_000 - 1)) % 4  # smallest j >= 86e6 with (j-1) % 4 == 2
    j = first + 4 * np.arange(10_000)
    assert np.max(np.abs(times - j / 1000)) < 1e-6
    assert len(drain(s)) == (86_400_000 - j[-1]) // 4  # the rest, to the very end


def test_a_day_long_ramp_stays_accurate_to_a_microsecond():
    # 0 -> 1000/s over 24 h: cumulative = 1000 t^2 / (2 DAY), t_j = sqrt(2 DAY j / 1000)
    profile = Profile(0.0, [Stage(DAY_S, 1000.0)])
    s = ConstantArrivals(profile, 0, 1)
    s.skip_until(80_000.0)
    times = s.next_batch(10_000)
    j0 = math.ceil(1000 * 80_000.0**2 / (2 * DAY_S))
    j = j0 + np.arange(10_000)
    assert np.max(np.abs(times - np.sqrt(2 * DAY_S * j / 1000))) < 1e-6


@pytest.mark.parametrize("kind", ["constant", "poisson"])
def test_a_batch_of_ten_thousand_is_vectorised(kind):
    profile = Profile(0.0, [Stage(60.0, 500.0), Stage(0.0, 5000.0), Stage(60.0, 5000.0), Stage(60.0, 0.0)])
    s = ConstantArrivals(profile, 1, 3) if kind == "constant" else PoissonArrivals(profile, 1, 3, seed=7)
    s.skip_until(50.0)
    began = time.perf_counter()
    times = s.next_batch(10_000)
    elapsed = time.perf_counter() - began
    assert len(times) == 10_000
    assert elapsed < 0.25  # ~10 ms here; a per-arrival Python loop takes far longer


# -- Poisson ----------------------------------------------------------------------------------


def poisson_times(profile: Profile, index: int, count: int, seed: int, chunk: int = 4096) -> np.ndarray:
    return drain(PoissonArrivals(profile, index, count, seed), chunk)


def test_poisson_count_over_a_long_run_matches_the_integral():
    profile = Profile(1000.0, [Stage(100.0, 1000.0)])  # 100 000 expected
    count = 4
    sent = sum(len(poisson_times(profile, i, count, seed=11)) for i in range(count))
    assert abs(sent - profile.total) < 5 * math.sqrt(profile.total)


def test_poisson_follows_a_varying_rate_and_is_silent_at_zero():
    # ramp 0 -> 1000/s over 20 s, 10 s silent, 500/s for 20 s
    profile = Profile(
        0.0, [Stage(20.0, 1000.0), Stage(0.0, 0.0), Stage(10.0, 0.0), Stage(0.0, 500.0), Stage(20.0, 500.0)]
    )
    times = np.concatenate([poisson_times(profile, i, 3, seed=5) for i in range(3)])
    assert np.all((times >= 0) & (times <= profile.duration_s))
    assert not np.any((times > 20.0) & (times < 30.0))
    for lo, hi in [(0.0, 10.0), (10.0, 20.0), (30.0, 50.0)]:
        expect = profile.cumulative(hi) - profile.cumulative(lo)
        got = np.count_nonzero((times >= lo) & (times < hi))
        assert abs(got - expect) < 5 * math.sqrt(expect), (lo, hi)


def test_poisson_counts_are_dispersed_like_poisson():
    # Counts per 0.1 s window: variance ~ mean for Poisson (constant arrivals: ~0).
    profile = Profile(1000.0, [Stage(100.0, 1000.0)])
    times = poisson_times(profile, 0, 4, seed=3)
    counts = np.bincount((times * 10).astype(int), minlength=1000)[:1000]
    assert counts.mean() == pytest.approx(25.0, rel=0.05)
    assert 0.8 < counts.var() / counts.mean() < 1.2


def test_poisson_is_reproducible_and_independent_of_batching():
    profile = Profile(50.0, [Stage(20.0, 200.0), Stage(10.0, 0.0)])
    a = poisson_times(profile, 2, 5, seed=42, chunk=4096)
    b = poisson_times(profile, 2, 5, seed=42, chunk=7)
    assert len(a) > 100
    assert np.array_equal(a, b)
    assert np.all(np.diff(a) >= 0)


def test_poisson_streams_differ_by_index_and_seed():
    profile = Profile(100.0, [Stage(10.0, 100.0)])
    base = poisson_times(profile, 0, 2, seed=1)
    other_index = poisson_times(profile, 1, 2, seed=1)
    other_seed = poisson_times(profile, 0, 2, seed=2)
    n = min(len(base), len(other_index), len(other_seed))
    assert not np.array_equal(base[:n], other_index[:n])
    assert not np.array_equal(base[:n], other_seed[:n])


@settings(max_examples=25, deadline=None)
@given(profiles, st.integers(1, 7), st.integers(0, 6), st.floats(-1.0, 1.1), st.integers(0, 2**32))
def test_poisson_replacement_picks_up_the_same_schedule(profile, count, index, frac, seed):
    index %= count
    full = poisson_times(profile, index, count, seed)
    t = frac * profile.duration_s
    replacement = PoissonArrivals(profile, index, count, seed)
    replacement.skip_until(t)
    assert np.array_equal(drain(replacement, 311), full[full >= t])


def test_poisson_of_zero_rate_is_empty():
    s = PoissonArrivals(Profile(0.0, [Stage(10.0, 0.0)]), 0, 1, seed=0)
    assert len(s.next_batch(100)) == 0 and s.exhausted
