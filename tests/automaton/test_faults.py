"""faults.py: stall windows, configuration (validation, wire form), per-request plans. Pure."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from horde.automaton.fault_model import TargetFaults, problem_lines
from horde.automaton.faults import (
    NO_FAULT,
    Concurrency,
    FaultConfig,
    FaultConfigError,
    RequestPlan,
    ScalingPolicy,
    ScopeFaults,
    fault_config_from_dict,
    plan_request,
    stall_hold_s,
    stall_remaining,
)
from horde.automaton.latency import Bimodal, Fixed, LogNormal, Normal


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
def test_stall_remaining_ends_exactly_at_a_period_boundary(t_s: float, every_s: float, for_fraction: float) -> None:
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
    assert faults.as_dict() == {}
    assert plan_request(faults, "health", random.Random(1)) is NO_FAULT
    assert stall_hold_s(faults, "health", 123.4) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"stall_every_s": 5.0}, "stall.for: required key is missing"),  # the older flat pair
        ({"stall_for_s": 1.0}, "stall.every: required key is missing"),
        ({"stall_every_s": 1.0, "stall_for_s": 1.0}, "stall.for: must be shorter than 'every'"),
        ({"stall": {"every_s": 1.0, "for_s": 2.0}}, "stall.for: must be shorter than 'every'"),
        ({"stall_every_s": 0.0, "stall_for_s": 0.5}, "stall.every_s: Input should be greater than 0"),
        ({"stall_every_s": 5.0, "stall_for_s": -1.0}, "stall.for_s: duration must not be negative"),
        ({"stall_every_s": math.inf, "stall_for_s": 1.0}, "stall.every_s: duration must be finite"),
        ({"stall_every_s": math.nan, "stall_for_s": 1.0}, "stall.every_s: duration must be finite"),
        ({"stall": {"every_s": 5.0, "for_s": 1.0}, "stall_every_s": 5.0, "stall_for_s": 1.0}, "stall: given twice"),
        ({"error_rate": 1.5}, "error_rate: must be at most 100%"),
        ({"error_rate": -0.1}, "error_rate: percentage must not be negative"),
        ({"error_rate": True}, "error_rate: expected a percentage"),  # a bool is not 100%
        ({"error_status": 200}, "error_status: Input should be greater than or equal to 400"),
        ({"error_status": 600}, "error_status: Input should be less than or equal to 599"),
        ({"leak_bytes_per_request": -1}, "leak_bytes_per_request: size must be a finite, non-negative number"),
        ({"leak_bytes_per_request": "lots"}, "leak_bytes_per_request: invalid size"),
        ({"cpu_per_request_s": -0.001}, "cpu_per_request_s: duration must not be negative"),
        ({"latency": Normal(mean_s=-1.0, stdev_s=0.1)}, "latency.mean_s: duration must not be negative"),
        ({"latency": Bimodal(p_slow=2.0, fast_s=0.0, slow_s=1.0)}, "latency.p_slow: must be at most 100%"),
        ({"max_connections": 0}, "max_connections: Input should be greater than or equal to 1"),
        ({"db_lock_s": -1.0}, "db_lock_s: duration must not be negative"),
        ({"leak_cap_bytes": -5}, "leak_cap_bytes: size must be a finite, non-negative number"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
        ({"endpoints": {"nope": ScopeFaults()}}, "endpoints.nope: not an endpoint of the automaton"),
        (
            {"scaling": ScalingPolicy(min_workers=1, max_workers=2, scale_up_delay_s=1, cool_down_s=1)},
            "scaling: needs concurrency",
        ),
        (
            {
                "concurrency": Concurrency(limit=5, queue=1),
                "scaling": ScalingPolicy(min_workers=1, max_workers=2, scale_up_delay_s=1, cool_down_s=1),
            },
            "concurrency.limit: is the starting capacity",
        ),
    ],
)
def test_fault_config_rejects_invalid(kwargs: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError) as info:
        FaultConfig(**kwargs)  # type: ignore[arg-type]
    lines = problem_lines(info.value)
    assert any(line.startswith(problem) for line in lines), lines


def test_nested_values_validate_on_their_own() -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        Concurrency(limit=0)
    with pytest.raises(ValidationError, match="must not be less than min_workers"):
        ScalingPolicy(min_workers=2, max_workers=1, scale_up_delay_s=1, cool_down_s=1)
    with pytest.raises(ValidationError, match="at most 100%"):
        ScopeFaults(error_rate=2)


def test_fault_config_lists_every_problem() -> None:
    with pytest.raises(ValidationError) as info:
        FaultConfig(stall_every_s=-1.0, stall_for_s=-2.0, error_status=1)
    lines = problem_lines(info.value)
    assert [line.split(":")[0] for line in lines] == ["error_status", "stall.every_s", "stall.for_s"], lines


def test_defaults_and_the_seed() -> None:
    faults = FaultConfig()
    assert (faults.error_status, faults.leak_cap_bytes, faults.seed) == (500, 1 << 30, 1)
    # The default seed stays out of the wire form, as every other default does.
    assert faults.as_dict() == FaultConfig(seed=1).as_dict() == {}
    assert FaultConfig(seed=7).as_dict() == {"seed": 7}


# --- the wire form ----------------------------------------------------------------------------

FULL_WIRE = {
    "seed": 7,
    "latency": {"dist": "lognormal", "median_s": 0.02, "sigma": 0.5},
    "error_rate": 0.05,
    "error_status": 503,
    "stall_every_s": 10.0,
    "stall_for_s": 1.0,
    "leak_bytes_per_request": 10240,
    "leak_cap_bytes": 1 << 20,
    "cpu_per_request_s": 0.0005,
    "concurrency": {"limit": 4, "queue": 100},
    "max_connections": 500,
    "db_lock_s": 0.005,
    "scaling": {
        "min_workers": 2,
        "max_workers": 16,
        "scale_up_delay_s": 5.0,
        "cool_down_s": 30.0,
        "step": 2,
        "queue_above": 10,
    },
    "endpoints": {
        "health": {"error_rate": 0.01, "error_status": 502},
        "records_create": {
            "latency": {"dist": "bimodal", "p_slow": 0.1, "fast_s": 0.001, "slow_s": 0.2},
            "concurrency": {"limit": 1, "queue": 0},
        },
        "agents_list": {
            "latency": {"dist": "normal", "mean_s": 0.01, "stdev_s": 0.002},
            "stall_every_s": 5.0,
            "stall_for_s": 0.5,
        },
        "tool_invoke": {
            "latency": {"dist": "fixed", "delay_s": 0.05},
            "cpu_per_request_s": 0.001,
            "leak_bytes_per_request": 1,
        },
    },
}


def test_wire_form_round_trips() -> None:
    faults = fault_config_from_dict(FULL_WIRE)
    assert faults.latency.distribution == LogNormal(median_s=0.02, sigma=0.5)
    assert faults.concurrency == Concurrency(limit=4, queue=100)
    assert faults.scaling == ScalingPolicy(
        min_workers=2, max_workers=16, scale_up_delay_s=5.0, cool_down_s=30.0, step=2, queue_above=10
    )
    assert faults.endpoints["tool_invoke"].latency.distribution == Fixed(delay_s=0.05)
    assert faults.as_dict() == FULL_WIRE
    assert FaultConfig.from_dict(faults.as_dict()) == faults
    assert fault_config_from_dict(None) == fault_config_from_dict({}) == FaultConfig()
    # Integral floats from a JSON writer are integers.
    assert fault_config_from_dict({"max_connections": 5.0}).max_connections == 5


def test_the_stall_as_the_models_own_field() -> None:
    flat = ("stall_every_s", "stall_for_s")
    nested = {k: v for k, v in FULL_WIRE.items() if k not in flat} | {"stall": {"every_s": 10, "for_s": 1}}
    assert fault_config_from_dict(nested) == fault_config_from_dict(FULL_WIRE)
    assert fault_config_from_dict(nested).as_dict() == FULL_WIRE  # answered in the flat wire form
    faults = FaultConfig(stall_every_s=10.0, stall_for_s=1.0)
    assert (faults.stall_every_s, faults.stall_for_s, faults.stall_enabled) == (10.0, 1.0, True)
    assert FaultConfig().stall_every_s is None and not FaultConfig().stall_enabled


def test_the_scenario_form_is_the_same_model() -> None:
    # One model: the scenario's names and units mean what the wire form's plain numbers mean.
    written = {
        "seed": 7,
        "latency": {"dist": "lognormal", "median": "20ms", "sigma": 0.5},
        "error_rate": "5%",
        "error_status": 503,
        "stall": {"every": "10s", "for": "1s"},
        "leak_per_request": "10240B",
        "leak_cap": "1MiB",
        "cpu_per_request": "500us",
        "concurrency": {"limit": 4, "queue": 100},
        "max_connections": 500,
        "db_lock": "5ms",
        "scaling": {
            "min_workers": 2,
            "max_workers": 16,
            "scale_up_delay": "5s",
            "cool_down": "30s",
            "step": 2,
            "queue_above": 10,
        },
        "endpoints": {
            "health": {"error_rate": "1%", "error_status": 502},
            "records_create": {
                "latency": {"dist": "bimodal", "p": "10%", "fast": "1ms", "slow": "200ms"},
                "concurrency": {"limit": 1, "queue": 0},
            },
            "agents_list": {
                "latency": {"dist": "normal", "mean": "10ms", "stdev": "2ms"},
                "stall": {"every": "5s", "for": "500ms"},
            },
            "tool_invoke": {"latency": "50ms", "cpu_per_request": "1ms", "leak_per_request": 1},
        },
    }
    faults = fault_config_from_dict(written)
    assert faults == fault_config_from_dict(FULL_WIRE)
    assert faults.as_dict() == FULL_WIRE
    assert FaultConfig is TargetFaults  # the automaton's name for the scenario's model


def test_wire_form_lists_every_problem_with_its_path() -> None:
    bad = {
        "error_rate": "lots",
        "latency": {"dist": "weibull"},
        "concurrency": {"queue": 3},
        "scaling": {"min_workers": 1, "max_workers": 2, "scale_up_delay_s": 1, "cool_down_s": 1},
        "endpoints": {
            "health": {"error_rate": 3, "stall_every_s": 1},
            "helth": {},
            "records_list": {"latency": {"dist": "normal", "mean_s": 0.1}, "colour": "red"},
        },
        "mystery": 1,
    }
    with pytest.raises(FaultConfigError) as info:
        fault_config_from_dict(bad)
    problems = info.value.problems
    expected_prefixes = [
        "error_rate: invalid percentage 'lots'",
        "latency.dist: Input should be 'fixed', 'normal', 'lognormal' or 'bimodal'",
        "concurrency.limit: required key is missing",
        "endpoints.health.error_rate: must be at most 100%",
        "endpoints.health.stall.for: required key is missing",
        "endpoints.helth: not an endpoint of the automaton",
        "endpoints.records_list.colour: unknown key",
        "endpoints.records_list.latency.stdev: required for dist normal",
        "mystery: unknown key",
    ]
    for prefix in expected_prefixes:
        assert any(p.startswith(prefix) for p in problems), (prefix, problems)
    # concurrency failed to parse: scaling is not also told that it is missing.
    assert not any(p.startswith("scaling") for p in problems)
    assert len(problems) == len(expected_prefixes), problems


@pytest.mark.parametrize("data", [[], "x", 3])
def test_wire_form_must_be_an_object(data: object) -> None:
    with pytest.raises(FaultConfigError, match="must be a JSON object"):
        fault_config_from_dict(data)


# --- per-request plans ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "draws"),
    [
        (0.05, 20_000),
        (0.5, 10_000),
        (0.999, 10_000),
    ],
)
def test_error_rate_sampling_matches_the_rate(rate: float, draws: int) -> None:
    faults = FaultConfig(error_rate=rate, error_status=503)
    rng = random.Random(42)
    statuses = Counter(plan_request(faults, "health", rng).error_status for _ in range(draws))
    assert set(statuses) <= {None, 503}
    observed = statuses[503] / draws
    # Four binomial standard deviations: a wrong rate (or a rate applied twice) fails.
    assert abs(observed - rate) <= 4 * math.sqrt(rate * (1 - rate) / draws) + 1e-9


def test_error_rate_zero_and_one_are_exact() -> None:
    rng = random.Random(3)
    never = FaultConfig(error_rate=0.0)
    always = FaultConfig(error_rate=1.0, error_status=429)
    assert all(plan_request(never, "health", rng).error_status is None for _ in range(1000))
    assert all(plan_request(always, "health", rng).error_status == 429 for _ in range(1000))


def test_same_seed_same_plans() -> None:
    faults = fault_config_from_dict(FULL_WIRE)
    first = [plan_request(faults, "records_create", random.Random(faults.seed)) for _ in range(3)]
    rng_a, rng_b = random.Random(9), random.Random(9)
    a = [plan_request(faults, "records_create", rng_a) for _ in range(200)]
    b = [plan_request(faults, "records_create", rng_b) for _ in range(200)]
    assert a == b
    assert len({p.delay_s for p in a}) > 10  # and they do vary from request to request
    assert first[0] == first[1] == first[2]


def test_endpoint_faults_apply_to_that_endpoint_only_and_add_to_global() -> None:
    faults = FaultConfig(
        latency=Fixed(0.1),
        leak_bytes_per_request=100,
        cpu_per_request_s=0.001,
        endpoints={
            "health": ScopeFaults(
                latency=Fixed(0.02), leak_bytes_per_request=5, cpu_per_request_s=0.002, error_rate=1.0, error_status=502
            ),
        },
    )
    rng = random.Random(0)
    assert plan_request(faults, "health", rng) == RequestPlan(
        delay_s=pytest.approx(0.12), error_status=502, leak_bytes=105, cpu_s=pytest.approx(0.003)
    )
    assert plan_request(faults, "agents_list", rng) == RequestPlan(
        delay_s=0.1, error_status=None, leak_bytes=100, cpu_s=0.001
    )


def test_global_error_is_drawn_before_the_endpoints() -> None:
    faults = FaultConfig(
        error_rate=1.0, error_status=500, endpoints={"health": ScopeFaults(error_rate=1.0, error_status=503)}
    )
    assert plan_request(faults, "health", random.Random(0)).error_status == 500


def test_stall_hold_takes_the_longest_window_in_scope() -> None:
    faults = FaultConfig(
        stall_every_s=10.0,
        stall_for_s=1.0,
        endpoints={"health": ScopeFaults(stall_every_s=4.0, stall_for_s=2.0)},
    )
    # t=9.5: global window [9, 10) has 0.5 s left; health's [6, 8) is over, [10, 12) to come.
    assert stall_hold_s(faults, "health", 9.5) == pytest.approx(0.5)
    # t=10.5: only health's window [10, 12) is open.
    assert stall_hold_s(faults, "health", 10.5) == pytest.approx(1.5)
    assert stall_hold_s(faults, "agents_list", 10.5) == 0.0
    # t=3.5: health's [2, 4) has 0.5 left, the global one is closed.
    assert stall_hold_s(faults, "health", 3.5) == pytest.approx(0.5)
