"""stall_remaining, FaultConfig validation and plan_request_faults: pure, plain values."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from automaton.faults import NO_FAULT, FaultConfig, plan_request_faults, stall_remaining


@pytest.mark.parametrize(
    ("t_s", "every_s", "for_s", "expected_s"),
    [
        (0.0, 2.0, 1.0, 0.0),  # a fresh server answers at once
        (0.5, 2.0, 1.0, 0.0),  # first half of the first period
        (0.999, 2.0, 1.0, 0.0),  # just before the first window
        (1.0, 2.0, 1.0, 1.0),  # window opens: the whole window remains
        (1.25, 2.0, 1.0, 0.75),  # inside the first window
        (1.999, 2.0, 1.0, 0.001),  # about to end
        (2.0, 2.0, 1.0, 0.0),  # windows are half-open: the end instant is free
        (3.5, 2.0, 1.0, 0.5),  # second window, k=2
        (4001.5, 2.0, 1.0, 0.5),  # far into a long run
        (4.0, 5.0, 1.0, 1.0),  # last S seconds of the period: [4, 5)
        (3.9, 5.0, 1.0, 0.0),  # before it
        (9.9, 10.0, 0.05, 0.0),  # short window at the end of a long period
        (9.97, 10.0, 0.05, 0.03),
        (-1.0, 2.0, 1.0, 0.0),  # before start (clock skew): never stalled
        (1.5, 2.0, 0.0, 0.0),  # zero-length window: never stalled
    ],
)
def test_stall_remaining_table(t_s: float, every_s: float, for_s: float, expected_s: float) -> None:
    assert stall_remaining(t_s, every_s, for_s) == pytest.approx(expected_s, abs=1e-9)


@given(
    t_s=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    every_s=st.floats(min_value=0.01, max_value=1000),
    for_fraction=st.floats(min_value=0.001, max_value=0.999),
)
def test_stall_remaining_ends_exactly_at_a_period_boundary(
    t_s: float, every_s: float, for_fraction: float
) -> None:
    for_s = every_s * for_fraction
    remaining_s = stall_remaining(t_s, every_s, for_s)
    assert 0.0 <= remaining_s <= for_s + 1e-9
    if remaining_s > 0:
        # The wait lands on k*every_s, the end of the window.
        end_s = t_s + remaining_s
        k = round(end_s / every_s)
        assert k >= 1
        assert math.isclose(end_s, k * every_s, rel_tol=1e-9, abs_tol=1e-6)


def test_fault_config_defaults_to_no_faults() -> None:
    faults = FaultConfig()
    assert not faults.stall_enabled
    assert plan_request_faults(faults, 123.4) == NO_FAULT


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stall_every_s": 5.0}, "given together"),
        ({"stall_for_s": 1.0}, "given together"),
        ({"stall_every_s": 1.0, "stall_for_s": 1.0}, "shorter than"),
        ({"stall_every_s": 1.0, "stall_for_s": 2.0}, "shorter than"),
        ({"stall_every_s": 0.0, "stall_for_s": 0.5}, "stall_every_s must be"),
        ({"stall_every_s": 5.0, "stall_for_s": -1.0}, "stall_for_s must be"),
        ({"stall_every_s": math.inf, "stall_for_s": 1.0}, "stall_every_s must be"),
        ({"stall_every_s": math.nan, "stall_for_s": 1.0}, "stall_every_s must be"),
    ],
)
def test_fault_config_rejects_invalid(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FaultConfig(**kwargs)


def test_fault_config_lists_every_problem() -> None:
    with pytest.raises(ValueError) as info:
        FaultConfig(stall_every_s=-1.0, stall_for_s=-2.0)
    assert "stall_every_s must be" in str(info.value)
    assert "stall_for_s must be" in str(info.value)


def test_plan_request_faults_delays_only_inside_a_window() -> None:
    faults = FaultConfig(stall_every_s=5.0, stall_for_s=1.0)
    assert plan_request_faults(faults, 3.0) == NO_FAULT
    assert plan_request_faults(faults, 4.25).delay_before_response_s == pytest.approx(0.75)
    assert plan_request_faults(faults, 5.0) == NO_FAULT
