"""horde.coordinator.measure.health: running agent totals and the generator saturation verdict."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from horde.agents.samples import GeneratorReadings
from horde.coordinator.measure.health import (
    CPU_SATURATED,
    LATE_FRACTION_SATURATED,
    LOOP_LAG_SATURATED_NS,
    AgentTotals,
    generator_queueing,
    generator_verdict,
)
from horde.coordinator.measure.histogram import Histogram

S = 1_000_000_000  # ns per second


def _agent(cpu_s: float = 1.0, elapsed_s: float = 10.0, **kw) -> AgentTotals:
    """An agent whose last batch came `elapsed_s` after it began, having used `cpu_s`."""
    began_ns = kw.pop("began_ns", 0)
    return AgentTotals(cpu_s=cpu_s, began_ns=began_ns, last_watermark_ns=began_ns + int(elapsed_s * S), **kw)


# -- the verdict: each reason at its edge ----------------------------------------------------


def test_the_thresholds_are_what_the_docs_say() -> None:
    assert (CPU_SATURATED, LOOP_LAG_SATURATED_NS, LATE_FRACTION_SATURATED) == (0.90, 250_000_000, 0.01)


@pytest.mark.parametrize(
    "agent, requests, reasons",
    [
        (_agent(cpu_s=1.0), 1000, []),  # 10% of a core, nothing late: healthy
        (_agent(cpu_s=9.0), 1000, []),  # exactly 90% of a core is not over the line
        (_agent(cpu_s=9.01), 1000, ["agent 0 used 90% of a core"]),  # just over (rounds to 90% in the text)
        (_agent(cpu_s=12.0), 1000, ["agent 0 used 120% of a core"]),  # several threads: over 100%
        (_agent(loop_lag_max_ns=LOOP_LAG_SATURATED_NS), 1000, []),  # 250 ms lag exactly: not over
        (_agent(loop_lag_max_ns=LOOP_LAG_SATURATED_NS + 1), 1000, ["agent 0 event loop lagged 250 ms"]),
        (_agent(loop_lag_max_ns=1_500_000_000), 1000, ["agent 0 event loop lagged 1500 ms"]),
        (_agent(late_sends=10), 1000, []),  # 1.0% late: at the line, not over
        (_agent(late_sends=11), 1000, ["11 of 1000 sends (1.1%) left more than 10 ms late"]),
        (_agent(late_sends=5), 0, []),  # no requests: no fraction, no division by zero
        (_agent(generator_queued_sends=900), 1000, []),  # waiting on a busy target is not generator lag
        (_agent(cpu_s=5.0, elapsed_s=0.0), 1000, []),  # no elapsed time: no CPU fraction to judge
        (_agent(cpu_s=5.0, elapsed_s=-1.0), 1000, []),  # no batch since it began (clock skew): no fraction
    ],
)
def test_each_reason_at_its_threshold(agent: AgentTotals, requests: int, reasons: list[str]) -> None:
    v = generator_verdict({"0": agent}, requests)
    assert v["reasons"] == reasons
    assert v["saturated"] is bool(reasons)


def test_a_replacement_is_judged_on_its_own_time() -> None:
    # Began 20 s into the run, last batch at 30 s: 9.5 CPU seconds in 10 s is 95%, not 31.7%.
    late_starter = _agent(cpu_s=9.5, elapsed_s=10.0, began_ns=20 * S)
    v = generator_verdict({"0#1": late_starter}, 1000)
    assert v["agents"]["0#1"]["cpu_fraction"] == 0.95
    assert v["reasons"] == ["agent 0#1 used 95% of a core"]


def test_late_sends_are_summed_over_agents_before_the_fraction() -> None:
    # 6 + 5 = 11 of 1000: each agent alone is under 1%, together they are over.
    v = generator_verdict({"0": _agent(late_sends=6), "1": _agent(late_sends=5)}, 1000)
    assert v["reasons"] == ["11 of 1000 sends (1.1%) left more than 10 ms late"]
    assert v["late_sends"] == 11


def test_several_reasons_are_all_given_in_agent_order() -> None:
    agents = {
        "1": _agent(cpu_s=9.5, loop_lag_max_ns=300_000_000),
        "0": _agent(loop_lag_max_ns=400_000_000, late_sends=50),
    }
    v = generator_verdict(agents, 1000)
    assert v["saturated"] is True
    assert v["reasons"] == [
        "agent 0 event loop lagged 400 ms",
        "agent 1 used 95% of a core",
        "agent 1 event loop lagged 300 ms",
        "50 of 1000 sends (5.0%) left more than 10 ms late",
    ]


def test_no_agents_is_a_healthy_empty_verdict() -> None:
    v = generator_verdict({}, 0)
    assert v == {
        "saturated": False,
        "reasons": [],
        "agents": {},
        "cpu_s": 0.0,
        "cpu_us_per_request": None,
        "late_sends": 0,
        "generator_queued_sends": 0,
        "interrupted": 0,
        "unsent": 0,
    }


def test_totals_and_per_agent_figures() -> None:
    a = _agent(
        cpu_s=2.0,
        elapsed_s=8.0,
        peak_rss_bytes=150 * 2**20,
        loop_lag_max_ns=12_345_678,
        late_sends=3,
        generator_queued_sends=7,
        send_lag_max_ns=20_000_000,
        interrupted=2,
        unsent=4,
        engines={"fast", "aiohttp"},
        timing="precise timers, rr 1, demoted (loop busy 95% of 50 ms)",
    )
    b = _agent(cpu_s=1.0, elapsed_s=8.0, generator_queued_sends=1, interrupted=1, unsent=1)
    v = generator_verdict({"0": a, "1": b}, 3000)
    assert v["agents"]["0"] == {
        "cpu_s": 2.0,
        "cpu_fraction": 0.25,
        "peak_rss_mb": 150.0,
        "loop_lag_max_ms": 12.346,
        "late_sends": 3,
        "generator_queued_sends": 7,
        "send_lag_max_ms": 20.0,
        "interrupted": 2,
        "unsent": 4,
        "engines": ["aiohttp", "fast"],
        "timing": "precise timers, rr 1, demoted (loop busy 95% of 50 ms)",
    }
    assert v["cpu_s"] == 3.0
    assert v["cpu_us_per_request"] == 1000.0  # 3 CPU seconds over 3000 requests
    assert (v["late_sends"], v["generator_queued_sends"], v["interrupted"], v["unsent"]) == (3, 8, 3, 5)
    assert v["saturated"] is False


# -- running totals from batches -------------------------------------------------------------


def test_totals_from_readings() -> None:
    t = AgentTotals(began_ns=5 * S)
    rows = [
        # (readings, watermark_ns, engine)
        (GeneratorReadings(cpu_s=0.5, rss_bytes=100, loop_lag_max_ns=7, late_sends=2, send_lag_max_ns=30), 2 * S, ""),
        (
            GeneratorReadings(cpu_s=1.5, rss_bytes=300, loop_lag_max_ns=3, generator_queued_sends=4, interrupted=1),
            3 * S,
            "fast",
        ),
        (
            GeneratorReadings(cpu_s=1.2, rss_bytes=200, late_sends=1, unsent=6, send_lag_max_ns=10),
            1 * S,
            "aiohttp,fast",
        ),
    ]
    for readings, wm, engine in rows:
        t.add(readings, wm, engine)
    assert t.cpu_s == 1.2  # cumulative readings: the last one counts, not the sum
    assert t.peak_rss_bytes == 300  # peak, not last
    assert t.loop_lag_max_ns == 7
    assert t.send_lag_max_ns == 30
    # per-interval counts: summed
    assert (t.late_sends, t.generator_queued_sends, t.interrupted, t.unsent) == (3, 4, 1, 6)
    assert t.batches == 3
    assert t.first_watermark_ns == 2 * S  # the first batch's, even though a later one is smaller
    assert t.last_watermark_ns == 3 * S  # the largest seen: a late batch does not move it back
    assert t.engines == {"fast", "aiohttp"}
    assert t.began_ns == 5 * S


def test_totals_accept_readings_without_generator_queued_sends() -> None:
    # Readings from an agent that predates `generator_queued_sends` (a plain object without it).
    old = SimpleNamespace(
        cpu_s=1.0, rss_bytes=1, loop_lag_max_ns=0, late_sends=0, send_lag_max_ns=0, interrupted=0, unsent=0
    )
    t = AgentTotals()
    t.add(old, 1, "")
    assert (t.generator_queued_sends, t.batches, t.engines) == (0, 1, set())


def _hist(values_ms) -> Histogram:
    h = Histogram()
    h.record_many(np.asarray([int(v * 1e6) for v in values_ms], dtype=np.int64))
    return h


def test_generator_queueing_that_moves_a_percentile_is_warned_about() -> None:
    # 100 requests of 10 ms; the slowest 5 waited 90 ms for a free slot of their own agent.
    without = _hist([10] * 100)
    with_wait = _hist([10] * 95 + [100] * 5)
    out = generator_queueing({"total": (with_wait, without, 5)})
    scope = out["scopes"]["total"]
    assert scope["requests"] == 5
    assert scope["latency_ms_without"]["p99"] == pytest.approx(10.0, rel=0.01)
    assert abs(scope["moved"]["p50"]) < 0.01 and scope["moved"]["p99"] > 5  # within a bucket; 10x
    assert out["warning"] and "p99" in out["warning"] and "5 requests" in out["warning"]


@pytest.mark.parametrize(
    "with_ms, queued",
    [
        ([10] * 99 + [10.3], 1),  # moved 3%: under the 5% line
        ([10] * 100, 0),  # nothing waited
    ],
)
def test_generator_queueing_under_the_line_is_not_warned_about(with_ms, queued) -> None:
    out = generator_queueing({"total": (_hist(with_ms), _hist([10] * 100), queued)})
    assert out["warning"] is None
    assert ("total" in out["scopes"]) is bool(queued)
