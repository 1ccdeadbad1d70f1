"""A process that hosted one run's agent hosts the next one's as a fresh process would
(agents/runner.py reset_for_reuse; the pooled agents of `horde up`, cluster/pool.py): the
second run's figures equal those of an agent in a process that ran nothing before. No Ray.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import types

import pytest

from horde.agents.runner import AgentRunner, reset_for_reuse
from horde.agents.samples import decode_batch
from horde.agents.spec import AgentSpec, DataFeed, RequestTemplate, Stage
from tests.agents.test_traffic import _server


def _spec(url: str, engine: str) -> AgentSpec:
    # a data file taken in order: a feed carried over from the last run would hand out other rows
    feed = DataFeed("acc", "unique", ("user",), tuple((f"u{i}",) for i in range(200)), 200)
    return AgentSpec(
        index=0,
        count=1,
        incarnation=0,
        model="open",
        arrivals="constant",
        start_level=0.0,
        stages=(Stage(0.4, 100.0, "up"), Stage(0.4, 100.0, "hold")),
        requests=(
            RequestTemplate("ok", "GET", url + "/ok?u=${data.acc.user}", engine=engine, data=("acc",)),
            RequestTemplate("busy", "GET", url + "/busy", engine=engine),
        ),
        weights=(3.0, 1.0),
        flush_interval_s=0.2,
        graceful_stop_s=2.0,
        max_in_flight=4,
        max_connections=4,
        data=(feed,),
    )


def _figures(payloads: list[bytes], runner: AgentRunner) -> dict:
    batches = [decode_batch(p) for p in payloads]
    by_endpoint: dict[int, int] = {}
    rows = 0
    for b in batches:
        assert b.agg is not None
        for g in b.agg.groups:
            by_endpoint[int(g["endpoint"])] = by_endpoint.get(int(g["endpoint"]), 0) + int(g["requests"])
        rows += sum(v[0] for v in b.data_rows.values())
    return {
        "requests": sum(b.requests for b in batches),
        "by_endpoint": by_endpoint,
        "rows_taken": rows,
        "seqs_from_zero": [b.seq for b in batches] == list(range(len(batches))),
        "final": batches[-1].final,
        "lease_term_ns": runner.lease_stats().get("term_ns"),
    }


async def _one_run(url: str, engine: str) -> tuple[AgentRunner, dict]:
    runner = AgentRunner(_spec(url, engine), lease_term_s=2.0)
    payloads = []
    async for p in runner.stream(time.time_ns() + 100_000_000):
        payloads.append(p)
        runner.ack(decode_batch(p).seq)
    return runner, _figures(payloads, runner)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("engine", ["aiohttp", "fast"])
def test_a_reused_hosts_second_run_has_a_fresh_agents_figures(engine):
    async def main():
        srv, url, served = await _server()
        try:
            _, fresh = await _one_run(url, engine)  # this process's first agent: a fresh host
            first, _ = await _one_run(url, engine)
            clean = await asyncio.to_thread(reset_for_reuse, first)
            _, reused = await _one_run(url, engine)
            return fresh, clean, reused, served
        finally:
            await srv.cleanup()

    fresh, clean, reused, served = asyncio.run(main())
    assert clean
    assert fresh["requests"] == 60  # the area under the profile: 20 on the ramp, 40 on the hold
    assert reused == fresh
    assert served["n"] == 3 * fresh["requests"]


def test_reset_ends_the_last_agent_and_drops_its_users_modules():
    sys.modules["horde_user_0123456789abcdef"] = types.ModuleType("horde_user_0123456789abcdef")
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, args=(5.0,), name="horde-agent-7", daemon=True)
    t.start()
    try:
        assert reset_for_reuse(None, timeout_s=0.1) is False  # an agent thread still runs: not reusable
        assert "horde_user_0123456789abcdef" not in sys.modules
        stop.set()
        assert reset_for_reuse(None, timeout_s=2.0) is True
    finally:
        stop.set()
        t.join()
