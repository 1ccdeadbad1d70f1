"""agents/stages.py: tables of known points, plus properties of the level/integral pair."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from horde.agents.spec import Stage
from horde.agents.stages import Profile, level_to_users, users_for_agent

RAMP_UP = Profile(0.0, [Stage(2.0, 10.0, "ramp")])  # 0 -> 10 over 2 s
HOLD = Profile(10.0, [Stage(3.0, 10.0, "hold")])  # 10 for 3 s
SPIKE = Profile(  # 1/s, an instant 100x step, hold, instant step back, hold
    1.0,
    [Stage(2.0, 1.0), Stage(0.0, 100.0, "spike"), Stage(1.0, 100.0), Stage(0.0, 1.0), Stage(2.0, 1.0)],
)
RAMP_DOWN = Profile(10.0, [Stage(2.0, 0.0, "down")])  # 10 -> 0 over 2 s
MIXED = Profile(  # ramp from 0, hold, zero-rate gap, ramp down to 0
    0.0,
    [Stage(2.0, 10.0), Stage(3.0, 10.0), Stage(0.0, 0.0), Stage(1.0, 0.0), Stage(0.0, 4.0), Stage(2.0, 0.0)],
)


@pytest.mark.parametrize(
    "profile, t, level, cumulative",
    [
        (RAMP_UP, 0.0, 0.0, 0.0),  # a ramp from 0 starts at 0
        (RAMP_UP, 1.0, 5.0, 2.5),  # halfway: level 5, area of the triangle 1 * 5 / 2
        (RAMP_UP, 1.999, 9.995, 2.5 * 1.999**2),  # just before the end
        (RAMP_UP, 2.0, 0.0, 10.0),  # the end: level drops to 0, integral is complete
        (RAMP_UP, 7.0, 0.0, 10.0),  # long after the end: integral stays constant
        (RAMP_UP, -1.0, 0.0, 0.0),  # before the start
        (HOLD, 0.0, 10.0, 0.0),  # a hold starts at its level
        (HOLD, 1.5, 10.0, 15.0),  # linear integral
        (HOLD, 3.0, 0.0, 30.0),  # the end
        (SPIKE, 1.999, 1.0, 1.999),  # base rate before the spike
        (SPIKE, 2.0, 100.0, 2.0),  # the zero-duration boundary belongs to the spike
        (SPIKE, 2.5, 100.0, 52.0),  # 2 s at 1/s + 0.5 s at 100/s
        (SPIKE, 3.0, 1.0, 102.0),  # instant step back to base
        (SPIKE, 4.0, 1.0, 103.0),  # base again
        (SPIKE, 5.0, 0.0, 104.0),  # the end
        (RAMP_DOWN, 0.0, 10.0, 0.0),  # starts at the previous level
        (RAMP_DOWN, 1.0, 5.0, 7.5),  # 10 - 2.5 * (2 - 1)^2
        (RAMP_DOWN, 1.5, 2.5, 9.375),  # 10 - 2.5 * 0.25
        (RAMP_DOWN, 2.0, 0.0, 10.0),  # the end
        (MIXED, 5.0, 0.0, 40.0),  # start of the zero gap: 10 + 30
        (MIXED, 5.5, 0.0, 40.0),  # inside the gap: no growth
        (MIXED, 6.0, 4.0, 40.0),  # the instant step to 4 at the end of the gap
        (MIXED, 7.0, 2.0, 43.0),  # halfway down from 4: 40 + (4 + 2) / 2
        (MIXED, 8.0, 0.0, 44.0),  # the end
    ],
)
def test_level_and_cumulative_at_known_points(profile, t, level, cumulative):
    assert profile.level(t) == pytest.approx(level, abs=1e-12)
    assert profile.cumulative(t) == pytest.approx(cumulative, abs=1e-12)


def test_scalars_and_shapes():
    assert SPIKE.duration_s == 5.0
    assert list(SPIKE.boundaries_s) == [2.0, 2.0, 3.0, 3.0, 5.0]
    assert SPIKE.total == pytest.approx(104.0)
    assert isinstance(SPIKE.level(1.0), float)
    assert isinstance(SPIKE.stage_index(1.0), int)
    grid = np.array([[0.0, 1.0], [2.5, 9.0]])
    assert SPIKE.level(grid).shape == (2, 2)
    assert SPIKE.cumulative(grid).shape == (2, 2)
    assert SPIKE.inverse_cumulative(grid).shape == (2, 2)
    assert SPIKE.stage_index(grid).shape == (2, 2)


def test_profile_is_immutable_and_a_value():
    with pytest.raises(AttributeError):
        SPIKE.start_level = 3.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        SPIKE.boundaries_s[0] = 1.0
    assert Profile(0.0, [Stage(2.0, 10.0, "ramp")]) == RAMP_UP
    assert hash(Profile(0.0, [Stage(2.0, 10.0, "ramp")])) == hash(RAMP_UP)


@pytest.mark.parametrize(
    "start, stages",
    [
        (0.0, []),  # no stages
        (-1.0, [Stage(1.0, 1.0)]),  # negative start level
        (0.0, [Stage(-1.0, 1.0)]),  # negative duration
        (0.0, [Stage(1.0, -0.5)]),  # negative target
        (0.0, [Stage(math.inf, 1.0)]),  # infinite duration
        (math.nan, [Stage(1.0, 1.0)]),  # NaN level
    ],
)
def test_invalid_profiles_raise(start, stages):
    with pytest.raises(ValueError):
        Profile(start, stages)


@pytest.mark.parametrize(
    "t, index",
    [
        (-1.0, 0),  # before the start: first stage
        (0.0, 0),  # the start
        (1.999, 0),  # inside the first stage
        (2.0, 2),  # boundary: the next stage, skipping the zero-duration spike itself
        (2.5, 2),  # the spike hold
        (3.0, 4),  # boundary after the hold, past the zero-duration step down
        (4.999, 4),  # last stage
        (5.0, 4),  # the end: last stage
        (100.0, 4),  # after the end: last stage
    ],
)
def test_stage_index_at_boundaries(t, index):
    assert SPIKE.stage_index(t) == index


def test_stage_index_of_a_trailing_zero_duration_stage():
    p = Profile(1.0, [Stage(1.0, 1.0), Stage(0.0, 5.0)])
    assert p.stage_index(0.5) == 0
    assert p.stage_index(1.0) == 1  # t >= duration -> last stage


@pytest.mark.parametrize(
    "profile, n, t",
    [
        (RAMP_UP, 0.0, 0.0),  # nothing needed: the start
        (RAMP_UP, -3.0, 0.0),  # negative: the start
        (RAMP_UP, 2.5, 1.0),  # the ramp's triangle
        (RAMP_UP, 10.0, 2.0),  # exactly the total: the end
        (RAMP_UP, 10.000001, math.inf),  # more than the total: never
        (SPIKE, 2.0, 2.0),  # the base part ends exactly at the spike
        (SPIKE, 52.0, 2.5),  # inside the spike
        (MIXED, 40.0, 5.0),  # flat gap: the smallest t, its start
        (MIXED, 40.5, 6.0 + (4 - math.sqrt(16 - 4 * 0.5)) / 2),  # into the ramp down after the gap
        (RAMP_DOWN, 7.5, 1.0),  # ramp down
    ],
)
def test_inverse_cumulative_at_known_points(profile, n, t):
    assert profile.inverse_cumulative(n) == pytest.approx(t, abs=1e-12)


def test_inverse_cumulative_near_zero_slope_is_stable():
    # A ramp from 1000 to 1000 + 1e-9: a naive quadratic formula divides by the slope.
    p = Profile(1000.0, [Stage(1e4, 1000.0 + 1e-9)])
    t = np.array([0.001, 1.0, 1234.5, 9999.0])
    assert np.allclose(p.inverse_cumulative(p.cumulative(t)), t, rtol=0, atol=1e-9)
    assert p.inverse_cumulative(5e6) == pytest.approx(5000.0, abs=1e-6)


# -- properties ------------------------------------------------------------------------------

levels = st.one_of(st.just(0.0), st.floats(0.0, 200.0))
durations = st.one_of(st.just(0.0), st.floats(0.0, 10.0))
profiles = st.builds(
    Profile,
    levels,
    st.lists(st.builds(Stage, durations, levels), min_size=1, max_size=5),
)


@settings(max_examples=50, deadline=None)
@given(profiles, st.floats(0.0, 1.0))
def test_cumulative_is_monotone_in_floats(profile, frac):
    t = np.concatenate(
        [np.linspace(-1, profile.duration_s + 1, 257), profile.boundaries_s, [frac * profile.duration_s]]
    )
    t = np.sort(np.concatenate([t, np.nextafter(t, np.inf), np.nextafter(t, -np.inf)]))
    c = profile.cumulative(t)
    assert np.all(np.diff(c) >= 0)
    assert c[0] == 0.0 and c[-1] == profile.total


def _fractions(frac: float) -> np.ndarray:
    return np.concatenate([np.linspace(0.0, 1.0, 101), [frac]])


@settings(max_examples=50, deadline=None)
@given(profiles, st.floats(0.0, 1.0))
def test_inverse_is_the_exact_smallest_float(profile, frac):
    n = _fractions(frac) * profile.total
    n = n[n > 0]
    t = profile.inverse_cumulative(n)
    assert np.all((t >= 0.0) & (t <= profile.duration_s))
    assert np.all(profile.cumulative(t) >= n)
    assert np.all(profile.cumulative(np.nextafter(t, -np.inf)) < n)


@settings(max_examples=50, deadline=None)
@given(profiles, st.floats(0.0, 1.0))
def test_inverse_of_cumulative_round_trips(profile, frac):
    t = _fractions(frac) * profile.duration_s
    back = profile.inverse_cumulative(profile.cumulative(t))
    # Always: nothing later than t, and the same integral (a flat stretch before t maps
    # to its start).
    assert np.all(back <= t)
    assert np.array_equal(profile.cumulative(back), profile.cumulative(t))
    # Where the level is positive on both sides of t (away from boundaries), it is t.
    eps = 1e-6
    positive = (profile.level(t) >= 1e-3) & (profile.level(np.maximum(t - eps, 0.0)) >= 1e-3)
    interior = np.all(np.abs(profile.boundaries_s[:, None] - t) > eps, axis=0) | (t == 0.0)
    sel = positive & interior
    assert np.allclose(back[sel], t[sel], rtol=0, atol=1e-9)


@settings(max_examples=50, deadline=None)
@given(profiles, st.floats(-5.0, 60.0))
def test_cumulative_matches_numerical_integral(profile, t):
    grid = np.linspace(0.0, max(t, 0.0), 20001)
    # The trapezoid rule misses at most one kink or step per stage boundary.
    expect = np.trapezoid(profile.level(grid), grid) if t > 0 else 0.0
    slack = 1e-9 + 2 * len(profile.stages) * 200.0 * (grid[1] - grid[0] if t > 0 else 0.0)
    assert profile.cumulative(t) == pytest.approx(expect, abs=slack)


# -- users ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "total, index, count, users",
    [
        (1000, 0, 3, 334),  # u = 0, 3, ..., 999
        (1000, 1, 3, 333),
        (1000, 2, 3, 333),
        (0, 0, 1, 0),  # nobody
        (2, 2, 5, 0),  # fewer users than agents: the high indexes get none
        (2, 1, 5, 1),
        (5, 4, 5, 1),  # one each
        (7, 0, 1, 7),  # a single agent takes all
    ],
)
def test_users_for_agent(total, index, count, users):
    assert users_for_agent(total, index, count) == users


@pytest.mark.parametrize("total, index, count", [(10, 3, 3), (10, -1, 3), (10, 0, 0), (-1, 0, 1)])
def test_users_for_agent_rejects_bad_slices(total, index, count):
    with pytest.raises(ValueError):
        users_for_agent(total, index, count)


@given(st.integers(0, 10**12), st.integers(1, 1000))
def test_users_sum_over_agents_to_total_and_differ_by_at_most_one(total, count):
    shares = [users_for_agent(total, i, count) for i in range(count)]
    assert sum(shares) == total
    assert max(shares) - min(shares) <= 1


@pytest.mark.parametrize(
    "level, users",
    [
        (2.9999999999, 3),  # float dust below a whole number
        (0.1 * 3 * 10, 3),  # 3.0000000000000004
        (3.0, 3),
        (2.5, 2),  # a real fraction floors
        (0.0, 0),
        (0.9999, 0),  # not dust: still 0
        (1e6 - 1e-10, 1_000_000),
    ],
)
def test_level_to_users(level, users):
    assert level_to_users(level) == users
    assert isinstance(level_to_users(level), int)
