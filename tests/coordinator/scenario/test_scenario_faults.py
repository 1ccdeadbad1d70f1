"""The embedded target's faults in a scenario: units, key paths, and the JSON the automaton takes."""

from __future__ import annotations

import copy
import textwrap

import pytest
import yaml

from horde.automaton.faults import fault_config_from_dict
from horde.coordinator.scenario.load import Problem, ScenarioError, parse_scenario
from horde.coordinator.scenario.models import EmbeddedTarget, scenario_json_schema

SCENARIO = textwrap.dedent(
    """\
    name: fault-lab
    target:
      embedded:
        faults:
          latency: {dist: lognormal, median: 20ms, sigma: 0.5}
          error_rate: 1%
          error_status: 503
          stall: {every: 10s, for: 1s}
          leak_per_request: 10KB
          leak_cap: 64MiB
          cpu_per_request: 200us
          concurrency: {limit: 4, queue: 100}
          max_connections: 500
          db_lock: 5ms
          scaling: {min_workers: 2, max_workers: 16, step: 2, queue_above: 10, scale_up_delay: 5s, cool_down: 30s}
          seed: 7
          endpoints:
            health: {error_rate: 5%, error_status: 500}
            records_create:
              latency: {dist: bimodal, p: 10%, fast: 1ms, slow: 200ms}
              concurrency: {limit: 1}
            agents_list:
              latency: {dist: normal, mean: 10ms, stdev: 2ms}
              stall: {every: 5s, for: 500ms}
            tool_invoke: {latency: 50ms, leak_per_request: 1KiB, cpu_per_request: 1ms}
    requests:
      - {name: health, path: /health}
    workload:
      model: open
      stages: [{duration: 10s, target: 10}]
    """
)
DATA = yaml.safe_load(SCENARIO)

EXPECTED_CONFIG = {
    "latency": {"dist": "lognormal", "median_s": 0.02, "sigma": 0.5},
    "error_rate": 0.01,
    "error_status": 503,
    "stall_every_s": 10.0,
    "stall_for_s": 1.0,
    "leak_bytes_per_request": 10_000,
    "leak_cap_bytes": 64 * 1024 * 1024,
    "cpu_per_request_s": pytest.approx(0.0002),
    "concurrency": {"limit": 4, "queue": 100},
    "max_connections": 500,
    "db_lock_s": 0.005,
    "scaling": {
        "min_workers": 2,
        "max_workers": 16,
        "step": 2,
        "queue_above": 10,
        "scale_up_delay_s": 5.0,
        "cool_down_s": 30.0,
    },
    "seed": 7,
    "endpoints": {
        "health": {"error_rate": 0.05},  # error_status 500 is the default
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
            "leak_bytes_per_request": 1024,
            "cpu_per_request_s": 0.001,
        },
    },
}


def parse(data: dict, **kw):
    return parse_scenario(yaml.safe_dump(data, sort_keys=False), source="s.yaml", **kw)


def with_target(embedded: object) -> dict:
    data = copy.deepcopy(DATA)
    data["target"] = {"embedded": embedded}
    return data


def with_faults(**faults: object) -> dict:
    return with_target({"faults": faults})


def problems_of(data: dict, **kw) -> list[Problem]:
    with pytest.raises(ScenarioError) as info:
        parse(data, **kw)
    return info.value.problems


def test_full_faults_become_the_automatons_json() -> None:
    embedded = parse(DATA).scenario.target.embedded
    assert embedded is not None
    config = embedded.faults_config()
    assert config == EXPECTED_CONFIG
    # ...and the automaton takes that JSON as it is, meaning the same thing.
    faults = fault_config_from_dict(config)
    assert faults.endpoints["records_create"].concurrency.limit == 1
    assert fault_config_from_dict(faults.as_dict()) == faults


def test_no_faults_is_empty_json() -> None:
    data = copy.deepcopy(DATA)
    data["target"] = "embedded"
    assert parse(data).scenario.target.embedded.faults_config() == {}
    assert parse(with_target({})).scenario.target.embedded.faults_config() == {}
    assert parse(with_faults()).scenario.target.embedded.faults_config() == {}


def test_stall_shorthand_is_a_global_stall() -> None:
    embedded = parse(with_target({"stall": {"every": "5s", "for": "1s"}})).scenario.target.embedded
    assert (embedded.stall.every_s, embedded.stall.for_s) == (5.0, 1.0)  # the model is unchanged
    assert embedded.faults_config() == {"stall_every_s": 5.0, "stall_for_s": 1.0}
    both = parse(with_target({"stall": {"every": "5s", "for": "1s"}, "faults": {"error_rate": "2%"}}))
    assert both.scenario.target.embedded.faults_config() == {
        "error_rate": 0.02,
        "stall_every_s": 5.0,
        "stall_for_s": 1.0,
    }
    assert fault_config_from_dict(both.scenario.target.embedded.faults_config()).stall_enabled


@pytest.mark.parametrize(
    ("latency", "expected"),
    [
        ("50ms", {"dist": "fixed", "delay_s": 0.05}),  # a bare duration is a fixed delay
        (0.25, {"dist": "fixed", "delay_s": 0.25}),  # a number is seconds
        ({"dist": "fixed", "delay": "1s"}, {"dist": "fixed", "delay_s": 1.0}),
        ({"dist": "normal", "mean": "50ms", "stdev": "10ms"}, {"dist": "normal", "mean_s": 0.05, "stdev_s": 0.01}),
        ({"dist": "lognormal", "median": "2ms", "sigma": 1}, {"dist": "lognormal", "median_s": 0.002, "sigma": 1.0}),
        (
            {"dist": "bimodal", "p": 0.25, "fast": 0, "slow": "1s"},
            {"dist": "bimodal", "p_slow": 0.25, "fast_s": 0.0, "slow_s": 1.0},
        ),
    ],
)
def test_latency_forms(latency: object, expected: dict) -> None:
    config = parse(with_faults(latency=latency)).scenario.target.embedded.faults_config()
    assert config == {"latency": expected}
    fault_config_from_dict(config)


def test_override_sets_a_fault() -> None:
    data = copy.deepcopy(DATA)
    data["target"] = "embedded"
    loaded = parse(data, overrides=["target={}", "target.embedded.faults.endpoints.health.error_rate=5%"])
    assert loaded.scenario.target.embedded.faults_config() == {"endpoints": {"health": {"error_rate": 0.05}}}


F = "target.embedded.faults"
PROBLEMS = [
    # (faults, expected problem path, fragment of its message)
    ({"endpoints": {"health": {"error_rate": "150%"}}}, f"{F}.endpoints.health.error_rate", "at most 100%"),
    ({"error_rate": "lots"}, f"{F}.error_rate", "invalid percentage"),
    ({"error_rate": -0.1}, f"{F}.error_rate", "must not be negative"),
    ({"error_status": 200}, f"{F}.error_status", "greater than or equal to 400"),
    ({"endpoints": {"helth": {}}}, f"{F}.endpoints.helth", "not an endpoint of the automaton; expected one of: health"),
    ({"latency": {"dist": "normal", "mean": "10ms"}}, f"{F}.latency.stdev", "required for dist normal"),
    ({"latency": {"dist": "fixed", "delay": "1ms", "sigma": 1}}, f"{F}.latency.sigma", "not a parameter of dist fixed"),
    ({"latency": {"dist": "gamma"}}, f"{F}.latency.dist", "must be 'fixed', 'normal', 'lognormal' or 'bimodal'"),
    ({"latency": "soon"}, f"{F}.latency.delay", "invalid duration"),
    ({"latency": {"dist": "bimodal", "p": "120%", "fast": 0, "slow": 1}}, f"{F}.latency.p", "at most 100%"),
    (
        {"latency": {"dist": "lognormal", "median": "1ms", "sigma": -1}},
        f"{F}.latency.sigma",
        "greater than or equal to 0",
    ),
    ({"leak_per_request": "10 parsecs"}, f"{F}.leak_per_request", "invalid size"),
    ({"leak_cap": -1}, f"{F}.leak_cap", "must be a finite, non-negative number"),
    ({"cpu_per_request": "fast"}, f"{F}.cpu_per_request", "invalid duration"),
    ({"db_lock": "-5ms"}, f"{F}.db_lock", "invalid duration"),
    ({"max_connections": 0}, f"{F}.max_connections", "greater than or equal to 1"),
    ({"concurrency": {"limit": 0}}, f"{F}.concurrency.limit", "greater than or equal to 1"),
    ({"concurrency": {"queue": 2}}, f"{F}.concurrency.limit", "required key is missing"),
    (
        {"scaling": {"min_workers": 1, "max_workers": 2, "scale_up_delay": "1s", "cool_down": "1s"}},
        f"{F}.scaling",
        "needs concurrency",
    ),
    (
        {
            "concurrency": {"limit": 1},
            "scaling": {"min_workers": 4, "max_workers": 2, "scale_up_delay": 1, "cool_down": 1},
        },
        f"{F}.scaling.max_workers",
        "must not be less than min_workers",
    ),
    (
        {
            "concurrency": {"limit": 9},
            "scaling": {"min_workers": 1, "max_workers": 4, "scale_up_delay": 1, "cool_down": 1},
        },
        f"{F}.concurrency.limit",
        "between scaling.min_workers and scaling.max_workers",
    ),
    (
        {"endpoints": {"health": {"stall": {"every": "1s", "for": "2s"}}}},
        f"{F}.endpoints.health.stall.for",
        "shorter than 'every'",
    ),
    ({"colour": "red"}, f"{F}.colour", "unknown key"),
    ({"eror_rate": "1%"}, f"{F}.eror_rate", "did you mean 'error_rate'?"),
    ({"endpoints": {"health": {"scaling": {}}}}, f"{F}.endpoints.health.scaling", "unknown key"),  # global only
    ({"endpoints": {"health": {"max_connections": 3}}}, f"{F}.endpoints.health.max_connections", "unknown key"),
]


@pytest.mark.parametrize(("faults", "path", "fragment"), PROBLEMS)
def test_problems_have_key_paths(faults: dict, path: str, fragment: str) -> None:
    problems = problems_of(with_faults(**faults))
    assert [p.path for p in problems] == [path], problems
    assert fragment in problems[0].message, problems[0]


def test_stall_given_twice_is_a_problem() -> None:
    stall = {"every": "5s", "for": "1s"}
    problems = problems_of(with_target({"stall": stall, "faults": {"stall": stall}}))
    assert [(p.path, p.message) for p in problems] == [
        ("target.embedded.stall", "given twice: also as faults.stall; keep one")
    ]


def test_every_problem_at_once() -> None:
    problems = problems_of(
        with_faults(error_rate="2", max_connections=0, endpoints={"health": {"error_status": 99}, "nope": {}})
    )
    assert {p.path for p in problems} == {
        f"{F}.error_rate",
        f"{F}.max_connections",
        f"{F}.endpoints.health.error_status",
        f"{F}.endpoints.nope",
    }


def test_json_schema_documents_the_fault_units() -> None:
    schema = scenario_json_schema()
    defs = schema["$defs"]
    assert "faults" in defs["EmbeddedTarget"]["properties"]
    target_faults = defs["TargetFaults"]["properties"]
    assert {
        "latency",
        "error_rate",
        "leak_per_request",
        "leak_cap",
        "cpu_per_request",
        "db_lock",
        "scaling",
        "endpoints",
        "max_connections",
        "concurrency",
        "stall",
        "seed",
    } <= set(target_faults)
    kinds = lambda prop: {alt.get("type") for alt in prop["anyOf"]}  # noqa: E731
    assert kinds(target_faults["error_rate"]) == {"number", "string"}  # 0.05 or "5%"
    assert kinds(target_faults["leak_cap"]) == {"integer", "string"}  # bytes or "1GiB"


def test_model_is_usable_on_its_own() -> None:
    embedded = EmbeddedTarget.model_validate({"faults": {"latency": "5ms", "db_lock": "1ms"}})
    assert embedded.faults_config() == {"latency": {"dist": "fixed", "delay_s": 0.005}, "db_lock_s": 0.001}
