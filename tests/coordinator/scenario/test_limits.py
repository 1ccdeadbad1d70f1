"""The scenario's `limits`: parsed with units, checked with key paths, carried to every agent."""

from __future__ import annotations

import textwrap

import pytest

from horde.agents.spec import DEFAULT_LIMITS, Limits
from horde.coordinator.plan import build_plan
from horde.coordinator.scenario.load import ScenarioError, parse_scenario

BASE = textwrap.dedent(
    """\
    name: capped
    target: http://127.0.0.1:8080
    requests:
      - {name: a, path: /a}
    workload:
      model: open
      stages: [{duration: 10s, target: 10}]
    """
)


def _parse(extra: str = "", overrides: tuple[str, ...] = ()):
    return parse_scenario(BASE + textwrap.dedent(extra), source="s.yaml", overrides=overrides).scenario


def test_absent_limits_are_the_defaults_and_reach_every_agent() -> None:
    scenario = _parse()
    plan = build_plan(scenario, "http://127.0.0.1:8080", 4.0, agents=2)
    assert [a.limits for a in plan.agents] == [DEFAULT_LIMITS, DEFAULT_LIMITS]
    assert Limits(64 * 2**20, 64 * 2**10, 10.0) == DEFAULT_LIMITS


def test_limits_take_units_and_reach_every_agent() -> None:
    scenario = _parse(
        """\
        limits:
          max_response_bytes: 1GiB
          max_header_bytes: 16KiB
          header_timeout: 1500ms
        """
    )
    plan = build_plan(scenario, "http://127.0.0.1:8080", 4.0, agents=3)
    assert {a.limits for a in plan.agents} == {Limits(2**30, 16 * 2**10, 1.5)}


def test_set_overrides_a_limit() -> None:
    scenario = _parse(overrides=("limits.max_response_bytes=2MiB",))
    assert scenario.limits.to_agent().max_response_bytes == 2 * 2**20


@pytest.mark.parametrize(
    "extra,path",
    [
        ("limits: {max_response_bytes: 8GiB}", "limits.max_response_bytes"),  # over what a sample can count
        ("limits: {max_response_bytes: 10}", "limits.max_response_bytes"),
        ("limits: {max_response_bytes: lots}", "limits.max_response_bytes"),
        ("limits: {max_header_bytes: 1GiB}", "limits.max_header_bytes"),
        ("limits: {header_timeout: 0s}", "limits.header_timeout"),
        ("limits: {header_timeout: 2h}", "limits.header_timeout"),
        ("limits: {max_body: 1MiB}", "limits.max_body"),  # unknown key
    ],
)
def test_bad_limits_name_their_key_path(extra: str, path: str) -> None:
    with pytest.raises(ScenarioError) as info:
        _parse(extra + "\n")
    assert [p.path for p in info.value.problems] == [path], info.value.problems
