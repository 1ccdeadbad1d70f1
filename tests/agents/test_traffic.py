"""A traffic agent against a local aiohttp server, with no Ray."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np
import pytest
from aiohttp import web

from horde.agents.runner import AgentRunner
from horde.agents.samples import ERROR_MASK, GENERATOR_QUEUED, ErrorClass, decode_batch
from horde.agents.spec import AgentSpec, RequestTemplate, Stage


async def _server(handler_delay_s: float = 0.0):
    served = {"n": 0, "paths": {}}

    async def ok(request: web.Request) -> web.Response:
        served["n"] += 1
        served["paths"][request.path] = served["paths"].get(request.path, 0) + 1
        if handler_delay_s:
            await asyncio.sleep(handler_delay_s)
        return web.json_response({"ok": True})

    async def teapot(request: web.Request) -> web.Response:
        served["n"] += 1
        return web.Response(status=503, text="busy")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_post("/ok", ok)
    app.router.add_get("/busy", teapot)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}", served


_ENGINE = {"name": "aiohttp"}


@pytest.fixture(autouse=True, params=["aiohttp", "fast"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Every agent test runs on both engines: the lean one drives plain requests by
    callbacks, the aiohttp one by a task per request (two code paths in the agent).
    These tests read every sample, so the agents send them raw (HORDE_SAMPLES=raw);
    tests/agents/test_agent_aggregates.py covers the default, aggregated batches."""
    monkeypatch.setenv("HORDE_SAMPLES", "raw")
    _ENGINE["name"] = request.param
    yield request.param
    _ENGINE["name"] = "aiohttp"


def _spec(url: str, **kw) -> AgentSpec:
    base = dict(
        index=0,
        count=1,
        incarnation=0,
        model="open",
        arrivals="constant",
        start_level=0.0,
        stages=(Stage(1.0, 100.0, "hold"),),
        requests=(RequestTemplate("ok", "GET", url + "/ok", expect=frozenset({200})),),
        weights=(1.0,),
        flush_interval_s=0.25,
        graceful_stop_s=2.0,
        max_in_flight=50,
        max_connections=50,
    )
    base.update(kw)
    base["requests"] = tuple(dataclasses.replace(t, engine=_ENGINE["name"]) for t in base["requests"])
    return AgentSpec(**base)


async def _collect(spec: AgentSpec, stop_after_s: float | None = None):
    runner = AgentRunner(spec)
    batches = []
    start = time.time_ns() + 200_000_000

    async def stopper():
        await asyncio.sleep(0.2 + stop_after_s)
        runner.stop()

    t = asyncio.create_task(stopper()) if stop_after_s is not None else None
    async for payload in runner.stream(start):
        batches.append(decode_batch(payload))
    if t:
        t.cancel()
    return batches


def _samples(batches):
    return np.concatenate([b.samples for b in batches]) if batches else np.zeros(0)


@pytest.mark.timeout(30)
def test_open_model_sends_the_planned_schedule_exactly():
    async def main():
        srv, url, served = await _server()
        try:
            # A ramp 0 -> 100/s over 1 s then a 1 s hold at 100/s: floor(50 + 100) = 150 sends.
            spec = _spec(url, stages=(Stage(1.0, 100.0, "ramp"), Stage(1.0, 100.0, "hold")))
            batches = await _collect(spec)
        finally:
            await srv.cleanup()
        return batches, served

    batches, served = asyncio.run(main())
    s = _samples(batches)
    assert len(s) == 150
    assert served["n"] == 150
    assert batches[-1].final and not any(b.final for b in batches[:-1])
    assert [b.seq for b in batches] == list(range(len(batches)))
    assert (s["error"] == ErrorClass.OK).all() and (s["status"] == 200).all()
    # Watermarks only grow, and every sample ends before the batch that carries it.
    wm = [b.watermark_ns for b in batches]
    assert wm == sorted(wm)
    for b in batches:
        if len(b.samples):
            assert b.samples["end_ns"].max() <= b.watermark_ns
    # Intended times follow the schedule: the last of the ramp at 1.0 s (j=50: sqrt(2*50/100)).
    intended = np.sort(s["intended_ns"]) / 1e9
    assert intended[49] == pytest.approx(1.0, abs=1e-6)
    assert (s["sent_ns"] >= s["intended_ns"]).all()
    assert (s["end_ns"] >= s["sent_ns"]).all()


@pytest.mark.timeout(30)
def test_latency_includes_queueing_that_service_time_does_not():
    """Coordinated omission: one in-flight slot, a 50 ms server, 40/s planned for 1 s.

    The server can do 20/s, so sends queue behind each other: latency (from the intended
    time) grows, service time (from the actual send) stays ~50 ms.
    """

    async def main():
        srv, url, served = await _server(handler_delay_s=0.05)
        try:
            spec = _spec(
                url, stages=(Stage(0.0, 40.0), Stage(1.0, 40.0)), start_level=40.0, max_in_flight=1, max_connections=1
            )
            return await _collect(spec)
        finally:
            await srv.cleanup()

    batches = asyncio.run(main())
    s = _samples(batches)
    assert len(s) == 40
    latency = (s["end_ns"] - s["intended_ns"]) / 1e6
    service = (s["end_ns"] - s["sent_ns"]) / 1e6
    assert np.median(service) < 120
    assert latency.max() > 5 * np.median(service)  # the queue is visible in latency
    assert latency.max() > 3 * service.max()
    # The agent's only slot was busy: those sends were generator-queued (horde's own cap held
    # them back), not late (a generator short of CPU), and each such sample says so.
    assert sum(b.readings.generator_queued_sends for b in batches) >= 10
    assert sum(b.readings.late_sends for b in batches) <= 2
    queued = (s["error"] & GENERATOR_QUEUED) != 0
    assert queued.sum() >= 10
    assert (s["error"] & ERROR_MASK == ErrorClass.OK).all()  # the flag leaves the error class alone
    # Without the generator-queue wait, those requests' latency is their service time.
    assert (latency[queued] > service[queued]).all()


@pytest.mark.timeout(30)
def test_closed_model_runs_the_agents_share_of_users():
    async def main():
        srv, url, served = await _server(handler_delay_s=0.01)
        try:
            # 10 users over 3 agents: agent 1 runs users 1, 4, 7 -> 3 users.
            spec = _spec(
                url,
                model="closed",
                index=1,
                count=3,
                start_level=10.0,
                stages=(Stage(1.0, 10.0),),
                think_time_s=(0.0, 0.0),
            )
            return await _collect(spec), served
        finally:
            await srv.cleanup()

    batches, served = asyncio.run(main())
    users = [b.readings.users for b in batches if not b.final]
    assert max(users) == 3
    s = _samples(batches)
    assert len(s) == served["n"]
    # 3 users, ~10 ms per request, 1 s: roughly 300 requests (generous band for a noisy box)
    assert 60 < len(s) <= 320


@pytest.mark.timeout(30)
def test_errors_are_classified_not_raised():
    async def main():
        srv, url, served = await _server()
        try:
            spec = _spec(
                url,
                stages=(Stage(0.0, 20.0), Stage(0.5, 20.0)),
                start_level=20.0,
                requests=(
                    RequestTemplate("busy", "GET", url + "/busy", expect=frozenset({200})),
                    RequestTemplate("refused", "GET", "http://127.0.0.1:1/x"),
                ),
                weights=(1.0, 1.0),
            )
            return await _collect(spec)
        finally:
            await srv.cleanup()

    s = _samples(asyncio.run(main()))
    assert len(s) == 10
    busy = s[s["endpoint"] == 0]
    refused = s[s["endpoint"] == 1]
    assert len(busy) and (busy["error"] == ErrorClass.HTTP_5XX).all() and (busy["status"] == 503).all()
    assert len(refused) and (refused["error"] == ErrorClass.CONNECT).all() and (refused["status"] == 0).all()


@pytest.mark.timeout(30)
def test_stop_ends_the_stream_early_with_a_final_batch():
    async def main():
        srv, url, served = await _server()
        try:
            spec = _spec(url, stages=(Stage(0.0, 50.0), Stage(30.0, 50.0)), start_level=50.0)
            t0 = time.monotonic()
            batches = await _collect(spec, stop_after_s=0.5)
            return batches, time.monotonic() - t0
        finally:
            await srv.cleanup()

    batches, took = asyncio.run(main())
    assert took < 5
    assert batches[-1].final
    assert 10 <= len(_samples(batches)) <= 40


@pytest.mark.timeout(30)
def test_stop_between_arrivals_does_not_wait_for_the_graceful_stop():
    """Nothing in flight when the stop comes: the agent ends at once, not after graceful_stop."""

    async def main():
        srv, url, served = await _server()
        try:
            spec = _spec(url, stages=(Stage(0.0, 2.0), Stage(30.0, 2.0)), start_level=2.0, graceful_stop_s=10.0)
            t0 = time.monotonic()
            batches = await _collect(spec, stop_after_s=1.2)
            return batches, time.monotonic() - t0
        finally:
            await srv.cleanup()

    batches, took = asyncio.run(main())
    assert took < 4  # 0.2 s lead + 1.2 s + flushing; graceful_stop would make it >= 11
    assert batches[-1].final
    assert batches[-1].readings.unsent == 0  # the stop came between arrivals
    assert 2 <= len(_samples(batches)) <= 3  # arrivals at 0.5 s and 1.0 s (and maybe 1.5 s on a slow box)


@pytest.mark.timeout(30)
def test_readings_count_requests_in_flight():
    async def main():
        srv, url, served = await _server(handler_delay_s=0.3)
        try:
            spec = _spec(
                url,
                model="closed",
                start_level=4.0,
                stages=(Stage(1.5, 4.0),),
                think_time_s=(0.0, 0.0),
                flush_interval_s=0.1,
            )
            return await _collect(spec)
        finally:
            await srv.cleanup()

    batches = asyncio.run(main())
    in_flight = [b.readings.in_flight for b in batches if not b.final]
    assert max(in_flight) == 4  # four users, each waiting 0.3 s for its answer
    assert batches[-1].readings.in_flight == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("model", ["open", "closed"])
def test_an_agent_whose_consumer_stops_taking_batches_sends_nothing_after_its_lease(model):
    """Fencing: the consumer takes the batches for the first 0.5 s (each taking acks the one
    before, agents/runner.py stream), then takes nothing for longer than the term: the lease
    (0.6 s from the send of the last acked batch) lapses and the agent stops sending, emits a
    final batch and ends with LeaseLapsed, long before its 3 s schedule ends. The consumer's
    late taking of the batches made meanwhile acks them, stale: it revives nothing."""
    from horde.agents.lease import LeaseLapsed

    term_s = 0.6

    async def main():
        srv, url, served = await _server()
        arrivals: list[int] = []
        orig = served["paths"]

        class Paths(dict):  # the server's handler counts paths: note each arrival's time
            def get(self, key, default=None):
                arrivals.append(time.monotonic_ns())
                return orig.get(key, default)

        served["paths"] = Paths()
        kw: dict = {"stages": (Stage(3.0, 100.0, "hold"),), "start_level": 100.0, "flush_interval_s": 0.1}
        if model == "closed":
            kw.update(model="closed", start_level=4.0, stages=(Stage(3.0, 4.0, "hold"),), think_time_s=(0.02, 0.02))
        runner = AgentRunner(_spec(url, **kw), lease_term_s=term_s)
        batches, acked = [], []
        raised = None
        paused_at_ns = None
        try:
            async for payload in runner.stream(time.time_ns() + 100_000_000):
                if batches and paused_at_ns is None:  # asking for this one acked the batch before
                    acked.append((batches[-1], time.monotonic_ns()))
                b = decode_batch(payload)
                batches.append(b)
                if b.watermark_ns >= 500_000_000 and paused_at_ns is None:
                    paused_at_ns = time.monotonic_ns()
                    await asyncio.sleep(term_s + 0.6)  # the coordinator takes nothing for a while
        except LeaseLapsed as exc:
            raised = exc
        finally:
            await srv.cleanup()
        return batches, acked, arrivals, raised, runner.lease_stats()

    batches, acked, arrivals, raised, stats = asyncio.run(main())
    assert raised is not None and "no batch acknowledged" in str(raised)
    assert batches[-1].final
    last_acked, received_at_ns = acked[-1]
    # On the agent's own clock: its lease ended at most a term after the last acked batch
    # was emitted (its watermark is read just after); no request left after that, and the
    # stale acks taken after the pause did not move it.
    lease_end_ns = last_acked.watermark_ns + int(term_s * 1e9)
    assert stats["until_ns"] <= lease_end_ns
    s = _samples(batches)
    assert len(s) > 10
    assert s["sent_ns"].max() < lease_end_ns
    # The last batch came soon after the lapse, long before the schedule's end (3 s).
    assert batches[-1].watermark_ns < lease_end_ns + 300_000_000
    # At the target (this process's clock): nothing arrives after the lapse but what was
    # already on the wire then (a request or two, sent just before it).
    late = [t for t in arrivals if t > received_at_ns + int(term_s * 1e9) + 50_000_000]
    assert len(late) <= 2, len(late)
