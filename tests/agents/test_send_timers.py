"""The agent's sends on agents/timers.py: never before their intended time, in the open
model, after think times and between a flow's polls, and no timerfd left behind.

Against a plain aiohttp app and the embedded automaton (a feature works against any HTTP
service). How late the sends leave is measured in bench/send_lag.py, not here."""

from __future__ import annotations

import asyncio
import itertools
import os
import time

import numpy as np
import pytest
from aiohttp import web

from horde.agents.runner import new_event_loop
from horde.agents.samples import ErrorClass, decode_batch
from horde.agents.spec import AgentSpec, FlowStepTemplate, FlowTemplate, RequestTemplate, Stage
from horde.agents.timers import KINDS, make_timers
from horde.agents.traffic import TrafficAgent
from horde.automaton.launch import start_automaton


@pytest.fixture(autouse=True)
def _raw_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests read every sample, so the agents send them raw (HORDE_SAMPLES=raw);
    tests/agents/test_agent_aggregates.py covers the default, aggregated batches."""
    monkeypatch.setenv("HORDE_SAMPLES", "raw")


def _timerfds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[timerfd]"
        except OSError:
            pass
    return n


async def _app_server():
    polls = itertools.count(1)

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def start(request: web.Request) -> web.Response:
        return web.json_response({"run_id": "r-1"}, status=202)

    async def poll(request: web.Request) -> web.Response:
        return web.json_response({"status": "completed" if next(polls) % 4 == 0 else "running"})

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_post("/runs", start)
    app.router.add_get("/runs/{rid}", poll)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]


def _spec(url: str, engine: str = "fast", path: str = "/ok", **kw) -> AgentSpec:
    base = dict(
        index=0,
        count=1,
        incarnation=0,
        model="open",
        arrivals="poisson",
        start_level=200.0,
        stages=(Stage(0.6, 200.0, "hold"),),
        requests=(RequestTemplate("ok", "GET", url + path, engine=engine),),
        weights=(1.0,),
        flush_interval_s=0.2,
        graceful_stop_s=1.0,
        max_in_flight=20,
        max_connections=20,
    )
    base.update(kw)
    return AgentSpec(**base)


def _run(spec: AgentSpec, kind: str, server=_app_server) -> tuple[np.ndarray, int]:
    """Run the agent on its own uvloop with a server on the same loop; its samples and
    how many timerfds it left open."""
    loop = new_event_loop()
    payloads: list[bytes] = []

    async def main() -> None:
        srv, url = await server()
        try:
            agent = TrafficAgent(spec(url) if callable(spec) else spec, timers=kind)
            await agent.run(time.time_ns() + 50_000_000, payloads.append)
        finally:
            await srv.cleanup()

    before = _timerfds()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    samples = np.concatenate([decode_batch(p).samples for p in payloads])
    return samples, _timerfds() - before


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", KINDS)
def test_open_model_sends_never_leave_early_and_the_timerfd_is_closed(kind: str) -> None:
    s, left = _run(lambda url: _spec(url), kind)
    assert len(s) > 60 and (s["error"] == ErrorClass.OK).all()
    assert (s["sent_ns"] >= s["intended_ns"]).all()
    assert left == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("engine", ["fast", "aiohttp"])
def test_a_user_sends_when_its_think_time_ends_never_before(kind: str, engine: str) -> None:
    spec = lambda url: _spec(  # noqa: E731
        url,
        engine,
        model="closed",
        start_level=5.0,
        stages=(Stage(0.6, 5.0, "hold"),),
        think_time_s=(0.003, 0.009),
    )
    s, left = _run(spec, kind)
    assert len(s) > 100
    after_think = s[s["intended_ns"] > s["intended_ns"].min()]  # not a user's first request
    assert (after_think["sent_ns"] >= after_think["intended_ns"]).all()
    assert left == 0


@pytest.mark.timeout(30)
def test_a_flows_polls_wait_their_interval_never_less() -> None:
    def spec(url: str) -> AgentSpec:
        flow = FlowTemplate(
            "job",
            0,
            (
                FlowStepTemplate("start", "POST", url + "/runs", 1, body=b"{}", capture=(("rid", "run_id"),)),
                FlowStepTemplate(
                    "poll", "GET", url + "/runs/${rid}", 2, until=("status", "completed"), every_s=0.004, max_polls=10
                ),
            ),
        )
        return _spec(
            url,
            "aiohttp",
            start_level=20.0,
            stages=(Stage(0.5, 20.0, "hold"),),
            requests=(
                RequestTemplate("job", "GET", url + "/runs", engine="aiohttp"),
                RequestTemplate("start", "POST", url + "/runs", engine="aiohttp"),
                RequestTemplate("poll", "GET", url + "/runs/x", engine="aiohttp"),
            ),
            weights=(1.0, 0.0, 0.0),
            flows=(flow, None, None),
        )

    s, left = _run(spec, "precise")
    polls = s[s["endpoint"] == 2]
    assert len(polls) > len(s[s["endpoint"] == 0])  # flows polled more than once
    assert (s["sent_ns"] >= s["intended_ns"]).all()
    assert left == 0


@pytest.mark.timeout(60)
def test_against_the_automaton_sends_never_leave_early() -> None:
    with start_automaton() as target:

        async def server():
            class _Nothing:
                async def cleanup(self) -> None:
                    pass

            return _Nothing(), target.url.rstrip("/")

        s, left = _run(lambda url: _spec(url, path="/health"), "precise", server=server)
    assert len(s) > 60
    assert (s["sent_ns"] >= s["intended_ns"]).all()
    assert left == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("after_flush_ns", [2_500_000, -500_000])
def test_a_flush_lets_the_send_due_with_it_go_first(kind: str, after_flush_ns: int) -> None:
    """A send due within 3 ms of a flush instant (or overdue at it) leaves before the batch
    is built: building it would hold the send back."""
    loop = new_event_loop()
    order: list[str] = []

    async def main() -> None:
        agent = TrafficAgent(_spec("http://127.0.0.1:9", flush_interval_s=0.05), timers=kind)
        agent._timers = timers = make_timers(asyncio.get_running_loop(), kind)
        agent._mono_start = time.monotonic_ns()
        agent._batch = lambda *, final: order.append("batch") or b""  # type: ignore[method-assign]
        due = 50_000_000 + after_flush_ns  # from the first flush instant, at 50 ms
        agent._timer_at = due
        if after_flush_ns < 0:  # overdue at the flush: the loop is held past both
            asyncio.get_running_loop().call_at(asyncio.get_running_loop().time() + 0.045, time.sleep, 0.006)

        def send() -> None:  # as the agent's _on_timer: the timer is spent
            agent._timer = None
            order.append("send")

        agent._timer = timers.call_at(agent._mono_start + due, send)
        flusher = asyncio.ensure_future(agent._flush_every_interval(lambda _b: None))
        for _ in range(400):  # at most 2 s
            if "batch" in order:
                break
            await asyncio.sleep(0.005)
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
        timers.close()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert order[:2] == ["send", "batch"]


@pytest.mark.timeout(30)
def test_a_start_instant_already_past_when_the_agent_begins_sends_every_planned_request_late() -> None:
    """The common start instant is fixed a short lead ahead (coordinator/run/session.py
    start_lead_s); where the call that begins an agent came after it, the sends that fell
    due meanwhile leave at once, none dropped, and their lateness is in their latency."""
    loop = new_event_loop()
    payloads: list[bytes] = []
    late_by_ns = 200_000_000

    async def main() -> None:
        srv, url = await _app_server()
        try:
            spec = _spec(url, arrivals="constant", start_level=100.0, stages=(Stage(0.6, 100.0, "hold"),))
            await TrafficAgent(spec, timers="precise").run(time.time_ns() - late_by_ns, payloads.append)
        finally:
            await srv.cleanup()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    s = np.concatenate([decode_batch(p).samples for p in payloads])
    assert 58 <= len(s) <= 62 and (s["error"] == ErrorClass.OK).all()  # 0.6 s at 100/s, none dropped
    missed = s[s["intended_ns"] < late_by_ns - 20_000_000]  # due well before the agent began
    assert len(missed) >= 15
    assert (missed["sent_ns"] >= late_by_ns - 1_000_000).all()  # sent when it began, not at their time
    assert (missed["end_ns"] - missed["intended_ns"] >= late_by_ns - missed["intended_ns"] - 1_000_000).all()
