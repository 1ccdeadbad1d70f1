"""horde.coordinator.plan: a scenario and the cluster's CPUs -> one AgentSpec per agent."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from horde.agents.arrivals import ConstantArrivals
from horde.agents.spec import FlowStepTemplate, RequestTemplate, Stage
from horde.agents.stages import Profile, level_to_users, users_for_agent
from horde.coordinator.plan import (
    COORDINATOR_CPUS,
    agent_count,
    build_plan,
    build_templates,
    split_exact,
    stage_names,
)
from horde.coordinator.scenario.models import Scenario

BASE = "http://127.0.0.1:8080"


def _scenario(**kw) -> Scenario:
    """A valid scenario; keyword arguments replace top-level keys, `workload` keys merge."""
    data: dict = {
        "name": "plan-test",
        "target": BASE,
        "requests": [{"name": "list", "path": "/api/records"}],
        "workload": {"model": "open", "stages": [{"duration": 10, "target": 100}]},
    }
    data["workload"].update(kw.pop("workload", {}))
    data.update(kw)
    return Scenario.model_validate(data)


# -- the exact split -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "total, parts, expected",
    [
        (1000, 3, [334, 333, 333]),  # k6's example: the remainder goes to the first agents
        (6, 3, [2, 2, 2]),  # even
        (2, 3, [1, 1, 0]),  # fewer than agents: some get none
        (0, 3, [0, 0, 0]),
        (7, 1, [7]),  # one agent takes it all
        (5, 4, [2, 1, 1, 1]),
    ],
)
def test_split_exact(total: int, parts: int, expected: list[int]) -> None:
    assert split_exact(total, parts) == expected


@given(st.integers(0, 10**9), st.integers(1, 500))
def test_split_exact_sums_to_the_total_and_differs_by_at_most_one(total: int, parts: int) -> None:
    out = split_exact(total, parts)
    assert len(out) == parts
    assert sum(out) == total
    assert max(out) - min(out) <= 1
    assert out == sorted(out, reverse=True)  # largest first


# -- how many agents, how many CPUs each -----------------------------------------------------


@pytest.mark.parametrize(
    "requested, cluster_cpus, count",
    [
        ("auto", 4.0, 3),  # one CPU left for the coordinator
        ("auto", 4.9, 3),  # whole agents only
        ("auto", 2.0, 1),
        ("auto", 1.0, 1),  # never fewer than one agent
        ("auto", 0.5, 1),
        (5, 2.0, 5),  # an explicit count is taken as given, even beyond the CPUs
        (1, 64.0, 1),
    ],
)
def test_agent_count(requested, cluster_cpus: float, count: int) -> None:
    assert COORDINATOR_CPUS == 1.0
    assert agent_count(requested, cluster_cpus) == count


def test_agents_auto_and_explicit_reach_the_plan() -> None:
    assert build_plan(_scenario(), BASE, 4.0).count == 3  # auto: 4 CPUs - 1
    assert build_plan(_scenario(agents=2), BASE, 16.0).count == 2  # the scenario's count
    assert build_plan(_scenario(agents=2), BASE, 16.0, agents=5).count == 5  # the caller's count wins


@pytest.mark.parametrize(
    "cluster_cpus, agents, cpus_per_agent",
    [
        (4.0, 3, 1.0),  # 3 CPUs left over 3 agents
        (16.0, 2, 1.0),  # at most one CPU each: an agent is one event loop
        (3.0, 3, 0.6667),  # 2 CPUs left over 3 agents, rounded to 4 places
        (2.0, 4, 0.25),
        (1.5, 1, 0.5),  # half a CPU left after the coordinator's
        (1.05, 4, 0.05),  # at least 0.1 left over 4 is 0.025: the floor is 0.05
        (1.0, 1, 1.0),  # a one-CPU cluster shares its CPU: the agent asks for all of it
        (0.5, 2, 0.25),  # less than the coordinator's share: split what there is
        (100.0, 1000, 0.099),
    ],
)
def test_cpus_per_agent(cluster_cpus: float, agents: int, cpus_per_agent: float) -> None:
    plan = build_plan(_scenario(), BASE, cluster_cpus, agents=agents)
    assert plan.cpus_per_agent == cpus_per_agent


# -- one spec per agent ----------------------------------------------------------------------


def test_every_agent_gets_its_slice_and_the_shared_settings() -> None:
    scenario = _scenario(
        requests=[{"name": "a", "path": "/a", "weight": 3}, {"name": "b", "path": "/b", "weight": 0.5}],
        workload={
            "model": "open",
            "arrivals": "poisson",
            "start": 5,
            "stages": [{"duration": 10, "target": 50, "name": "ramp"}, {"duration": 20, "target": 50}],
            "graceful_stop": 2,
        },
        timeout=3,
        connect_timeout=1.5,
        flush_interval=0.5,
        seed=42,
        engine="aiohttp",
    )
    plan = build_plan(scenario, BASE, 8.0, agents=4)
    assert [s.index for s in plan.agents] == [0, 1, 2, 3]
    for s in plan.agents:
        assert (s.count, s.incarnation, s.model, s.arrivals) == (4, 0, "open", "poisson")
        # The global profile: each agent takes its share of it at run time (index of count).
        assert s.start_level == 5.0
        assert s.stages == (Stage(10.0, 50.0, "ramp"), Stage(20.0, 50.0, "stage-2"))
        assert s.weights == (3.0, 0.5)
        assert (s.timeout_s, s.connect_timeout_s, s.flush_interval_s, s.graceful_stop_s) == (3.0, 1.5, 0.5, 2.0)
        assert (s.seed, s.engine) == (42, "aiohttp")
        assert [r.name for r in s.requests] == ["a", "b"]
        assert s.flows == (None, None)
    assert plan.endpoints == ("a", "b")
    assert plan.stage_names == ("ramp", "stage-2")
    assert plan.stage_ends_ns == (10_000_000_000, 30_000_000_000)
    assert plan.duration_s == 30.0
    assert plan.engines == {"a": "aiohttp", "b": "aiohttp"}


@pytest.mark.parametrize(
    "workload, in_flight, connections",
    [
        # open model: the run's concurrency cap is split; connections follow it unless capped
        ({"max_in_flight": 1000}, [334, 333, 333], [334, 333, 333]),
        ({"max_in_flight": 1000, "max_connections": 10}, [334, 333, 333], [4, 3, 3]),
        ({"max_in_flight": 2}, [1, 1, 1], [1, 1, 1]),  # an agent needs at least one slot
        ({"max_in_flight": 9, "max_connections": 1}, [3, 3, 3], [1, 1, 1]),  # ... and one connection
        # closed model: one slot and one connection per user at the peak level
        ({"model": "closed", "stages": [{"duration": 5, "target": 1000}]}, [334, 333, 333], [334, 333, 333]),
        (
            {"model": "closed", "start": 10, "stages": [{"duration": 5, "target": 4}]},  # the peak is the start
            [4, 3, 3],
            [4, 3, 3],
        ),
        ({"model": "closed", "stages": [{"duration": 5, "target": 2}]}, [1, 1, 1], [1, 1, 1]),  # the third has none
        (
            {"model": "closed", "stages": [{"duration": 5, "target": 100}], "max_connections": 4},
            [34, 33, 33],  # users are not capped ...
            [2, 1, 1],  # ... their connection pools are
        ),
    ],
)
def test_concurrency_and_connection_caps_are_split(workload: dict, in_flight, connections) -> None:
    plan = build_plan(_scenario(workload=workload), BASE, 16.0, agents=3)
    assert [s.max_in_flight for s in plan.agents] == in_flight
    assert [s.max_connections for s in plan.agents] == connections


@pytest.mark.parametrize("agents", [1, 2, 3, 7])
def test_open_arrivals_are_split_exactly(agents: int) -> None:
    # 100/s for 10 s after a ramp from 0 over 5 s: 1250 arrivals in all, none lost or doubled.
    scenario = _scenario(
        workload={"stages": [{"duration": 5, "target": 100}, {"duration": 10, "target": 100}]},
    )
    plan = build_plan(scenario, BASE, 16.0, agents=agents)
    times = []
    for s in plan.agents:
        sched = ConstantArrivals(Profile(s.start_level, s.stages), s.index, s.count)
        times.append(sched.next_batch(10_000))
        assert sched.exhausted
    counts = [len(t) for t in times]
    assert sum(counts) == 1250
    assert max(counts) - min(counts) <= 1  # like split_exact
    merged = np.sort(np.concatenate(times))
    glob = ConstantArrivals(Profile(0.0, plan.agents[0].stages), 0, 1).next_batch(10_000)
    assert np.array_equal(merged, glob)  # the union is the single-agent schedule


@pytest.mark.parametrize("users, agents", [(1000, 3), (5, 7), (1, 2), (12, 4)])
def test_closed_users_are_split_exactly(users: int, agents: int) -> None:
    plan = build_plan(
        _scenario(workload={"model": "closed", "stages": [{"duration": 10, "target": users}]}),
        BASE,
        16.0,
        agents=agents,
    )
    level = level_to_users(plan.agents[0].stages[-1].target)
    share = [users_for_agent(level, s.index, s.count) for s in plan.agents]
    assert share == split_exact(users, agents)
    assert [s.max_in_flight for s in plan.agents] == [max(1, u) for u in share]


def test_time_compression_shortens_the_stages() -> None:
    scenario = _scenario(
        workload={"stages": [{"duration": 3600, "target": 10}, {"duration": 1800, "target": 10, "name": "hold"}]},
        time_compression=60,
    )
    plan = build_plan(scenario, BASE, 4.0, agents=1)
    assert plan.agents[0].stages == (Stage(60.0, 10.0, "stage-1"), Stage(30.0, 10.0, "hold"))
    assert plan.duration_s == 90.0
    assert plan.stage_ends_ns == (60_000_000_000, 90_000_000_000)


# -- stage names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given_names, names",
    [
        (["a", "b"], ("a", "b")),
        (["", ""], ("stage-1", "stage-2")),  # 1-based, by position
        (["ramp", ""], ("ramp", "stage-2")),
        (["stage-2", ""], ("stage-2", "stage-2.2")),  # a generated name never takes a given one
        (["", "stage-1"], ("stage-1.2", "stage-1")),  # ... even one given later
        (["stage-2", "", "stage-2.2"], ("stage-2", "stage-2.3", "stage-2.2")),
    ],
)
def test_stage_names(given_names: list[str], names: tuple[str, ...]) -> None:
    stages = [Stage(1.0, 1.0, n) for n in given_names]
    assert stage_names(stages) == names
    assert len(set(names)) == len(names)


# -- request templates -----------------------------------------------------------------------


def test_templates_resolve_urls_bodies_and_headers() -> None:
    scenario = _scenario(
        requests=[
            {"name": "get", "path": "/a?x=1", "expect": [200, 404]},
            {"name": "post", "method": "post", "path": "/b", "json": {"k": [1, 2], "s": "é"}},
            {"name": "typed", "method": "PUT", "path": "/c", "json": [], "headers": {"content-type": "text/x"}},
            {"name": "raw", "method": "POST", "path": "/d", "body": "plain", "headers": {"X-N": 5}},
        ],
        engine="aiohttp",
    )
    get, post, typed, raw = build_templates(scenario, BASE + "/", None)
    assert get == RequestTemplate(
        name="get", method="GET", url=BASE + "/a?x=1", expect=frozenset({200, 404}), engine="aiohttp"
    )  # the base URL's trailing slash is not doubled
    assert post.method == "POST"
    assert post.body == json.dumps({"k": [1, 2], "s": "é"}, separators=(",", ":")).encode()  # compact, once
    assert post.headers == (("Content-Type", "application/json"),)  # added for a JSON body
    assert typed.headers == (("content-type", "text/x"),)  # a given content type (any case) is kept
    assert typed.body == b"[]"  # an empty JSON list is still a body
    assert raw.body == b"plain"
    assert raw.headers == (("X-N", "5"),)  # no content type invented for a raw body


@pytest.mark.parametrize(
    "engine, supports_fast, chosen",
    [
        ("aiohttp", lambda t: True, "aiohttp"),  # asked for aiohttp: aiohttp
        ("fast", None, "fast"),  # asked for fast: fast, without asking
        ("fast", lambda t: False, "fast"),
        ("auto", lambda t: True, "fast"),  # auto: fast where it is supported
        ("auto", lambda t: t.method != "POST", "per-request"),
        ("auto", None, "aiohttp"),  # auto without a way to tell: the safe engine
    ],
)
def test_engine_choice(engine: str, supports_fast, chosen: str) -> None:
    scenario = _scenario(
        requests=[{"name": "g", "path": "/g"}, {"name": "p", "method": "POST", "path": "/p", "body": "x"}],
        engine=engine,
    )
    plan = build_plan(scenario, BASE, 2.0, agents=1, supports_fast=supports_fast)
    expected = {"g": "fast", "p": "aiohttp"} if chosen == "per-request" else {"g": chosen, "p": chosen}
    assert {t.name: t.engine for t in plan.agents[0].requests} == expected
    assert plan.engines == expected


# -- flows -----------------------------------------------------------------------------------


def test_flows_get_templates_and_endpoint_numbers_after_the_mix() -> None:
    scenario = _scenario(
        requests=[
            {"name": "list", "path": "/list"},
            {
                "name": "order",
                "weight": 2,
                "flow": [
                    {"name": "create", "method": "POST", "path": "/orders", "json": {"n": 1}, "capture": {"id": "id"}},
                    {
                        "name": "poll",
                        "path": "/orders/${id}",
                        "until": {"path": "state", "equals": "done"},
                        "every": "250ms",
                        "max_polls": 7,
                        "expect": [200],
                    },
                ],
            },
            {"name": "other", "flow": [{"name": "ping", "path": "/ping"}]},
        ],
        engine="fast",
    )
    plan = build_plan(scenario, BASE, 2.0, agents=2)
    spec = plan.agents[0]
    assert plan.endpoints == ("list", "order", "other", "order/create", "order/poll", "other/ping")
    assert spec.flows[0] is None  # a plain request
    order, other = spec.flows[1], spec.flows[2]
    assert (order.name, order.endpoint, other.name, other.endpoint) == ("order", 1, "other", 2)
    create, poll = order.steps
    assert create == FlowStepTemplate(
        name="create",
        method="POST",
        url=BASE + "/orders",
        endpoint=3,  # numbered after the three mix entries
        headers=(("Content-Type", "application/json"),),
        body=b'{"n":1}',
        capture=(("id", "id"),),
    )
    assert (poll.url, poll.endpoint, poll.until, poll.every_s, poll.max_polls) == (
        BASE + "/orders/${id}",  # filled at run time
        4,
        ("state", "done"),
        0.25,
        7,
    )
    assert poll.expect == frozenset({200})
    assert other.steps[0].endpoint == 5
    # A flow entry keeps its place in the mix with a placeholder request; its engine is "flow".
    assert spec.requests[1] == RequestTemplate(name="order", method="GET", url=BASE + "/", engine="aiohttp")
    assert spec.weights == (1.0, 2.0, 1.0)
    assert plan.engines == {"list": "fast", "order": "flow", "other": "flow"}
    assert plan.agents[1].flows == spec.flows  # every agent runs the same flows


def test_plan_duration_matches_the_profile() -> None:
    scenario = _scenario(
        workload={"start": 3, "stages": [{"duration": 0, "target": 10}, {"duration": 2.5, "target": 0}]}
    )
    plan = build_plan(scenario, BASE, 2.0, agents=1)
    assert plan.duration_s == 2.5
    assert plan.stage_ends_ns == (0, 2_500_000_000)  # an instant step ends where it starts
    assert math.isclose(Profile(3.0, plan.agents[0].stages).total, 12.5)  # 10 -> 0 over 2.5 s
