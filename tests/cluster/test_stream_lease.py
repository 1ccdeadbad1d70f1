"""The lease on Ray: the coordinator's taking of an agent's batches is its acknowledgement.

An agent actor's stream has a backpressure of one object (cluster/fleet.py), so its yield
returns only once the coordinator took the batch, and the agent then acks the batch before
(agents/lease.py). No ack call is made. Real Ray (the session's), a real HTTP target on
loopback: a plain aiohttp app and the embedded automaton.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from horde.agents.lease import LeaseLapsed
from horde.agents.samples import decode_batch
from horde.agents.spec import AgentSpec, RequestTemplate, Stage
from horde.automaton.app import build_app
from tests.agents.tls_certs import serve_in_thread

pytestmark = [pytest.mark.ray]

RATE = 50.0  # requests/s per agent


def _spec(url: str, path: str, *, index: int = 0, count: int = 1, seconds: float = 1.5, flush_s: float = 0.1):
    return AgentSpec(
        index=index,
        count=count,
        incarnation=0,
        model="open",
        arrivals="constant",
        start_level=RATE * count,
        stages=(Stage(seconds, RATE * count, "hold"),),
        requests=(RequestTemplate("ok", "GET", url + path, expect=frozenset({200})),),
        weights=(1.0,),
        flush_interval_s=flush_s,
        graceful_stop_s=2.0,
    )


def _counted(app: web.Application, arrivals: list[int]) -> web.Application:
    """`app`, noting the time (this host's monotonic clock) of every request it is sent."""

    @web.middleware
    async def note(request: web.Request, handler):
        arrivals.append(time.monotonic_ns())
        return await handler(request)

    app.middlewares.insert(0, note)
    return app


def _plain_app() -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/ok", ok)
    return app


@pytest.mark.timeout(90)
def test_an_agent_whose_coordinator_stops_taking_its_batches_stops_sending_within_its_term(ray_cluster):
    """The coordinator takes batches for 0.6 s, then none for longer than the term (2 s at a
    0.1 s flush): the actor's yield waits, nothing is acked, the lease lapses and the agent
    stops sending. Taken late, the batches made meanwhile come out whole, then LeaseLapsed;
    their late taking (stale acks) revives nothing."""
    from ray.exceptions import RayTaskError

    from horde.agents.lease import lease_term_s
    from horde.cluster.fleet import STREAM_BACKPRESSURE_OBJECTS, TrafficAgentActor

    term_s = lease_term_s(0.1)
    arrivals: list[int] = []
    with serve_in_thread(_counted(_plain_app(), arrivals)) as url:
        spec = _spec(url, "/ok", seconds=30.0)
        actor = TrafficAgentActor.options(num_cpus=0).remote(spec)  # type: ignore[attr-defined]

        async def main():
            # up first (a run waits for its agents the same way): a new worker takes ~0.6 s,
            # longer than the 0.2 s start lead below
            await actor.ready.remote()
            stream = actor.stream.options(_generator_backpressure_num_objects=STREAM_BACKPRESSURE_OBJECTS)
            gen = stream.remote(time.time_ns() + 200_000_000)
            batches, raised, paused_at = [], None, None
            took_at: list[int] = []  # when each batch's reference was taken (acking the one before)
            try:
                async for ref in gen:
                    took_at.append(time.monotonic_ns())
                    batches.append(decode_batch(await ref))
                    if batches[-1].watermark_ns >= 600_000_000 and paused_at is None:
                        paused_at = time.monotonic_ns()
                        await asyncio.sleep(term_s + 1.5)  # the coordinator takes nothing (the stream held)
            except RayTaskError as exc:
                raised = exc.cause
            stats = await actor.lease_stats.remote()
            return batches, raised, paused_at, took_at, stats

        try:
            batches, raised, paused_at, took_at, stats = asyncio.run(main())
        finally:
            import ray

            ray.kill(actor)
    assert isinstance(raised, LeaseLapsed), raised
    assert batches[-1].final and [b.seq for b in batches] == list(range(len(batches)))  # none lost
    # the last batch taken before the pause acked the one before it: the lease ended a term
    # after that one was sent (agent's clock), and the stale acks after the pause moved nothing
    n = next(i for i, b in enumerate(batches) if b.watermark_ns >= 600_000_000)
    term_ns = int(term_s * 1e9)
    assert batches[n - 2].watermark_ns + term_ns < stats["until_ns"] <= batches[n - 1].watermark_ns + term_ns
    # the agent ended long before its 30 s schedule, soon after the lapse
    assert batches[-1].watermark_ns < batches[n - 1].watermark_ns + int((term_s + 0.5) * 1e9)
    # At the target: nothing after a term from the taking that gave the last ack (bar a
    # request or two already on the wire then)
    late = [t for t in arrivals if t > took_at[n] + int(term_s * 1e9) + 50_000_000]
    assert len(late) <= 2, (len(late), len(arrivals))
    assert len(arrivals) > 20 and paused_at is not None


@pytest.mark.timeout(120)
@pytest.mark.parametrize("segment", [None, 3], ids=["one stream", "segments of 3"])
@pytest.mark.parametrize("target", ["plain aiohttp", "automaton"])
def test_a_ray_fleet_run_ends_with_every_request_counted_and_no_ack_calls(ray_cluster, target, segment):
    """Two agents through RayFleet: both end (not fenced: the fan-in's taking acks them) and
    the batches count exactly what the target served. With segments of 3 batches each
    agent's run goes on from one stream to the next (STREAM_SEGMENT), none lost or repeated."""
    from horde.cluster.events import AgentEnded, AgentLost, BatchReceived
    from horde.cluster.fleet import RayFleet, TrafficAgentActor

    assert not hasattr(TrafficAgentActor, "ack")  # the lease needs no call from the coordinator
    arrivals: list[int] = []
    app, path = (_plain_app(), "/ok") if target == "plain aiohttp" else (build_app(), "/health")
    with serve_in_thread(_counted(app, arrivals)) as url:

        async def main():
            fleet = RayFleet(cpus_per_agent=0.01, silence_s=5.0, **({} if segment is None else {"segment": segment}))
            specs = [_spec(url, path, index=i, count=2, seconds=3.0, flush_s=0.25) for i in range(2)]
            await fleet.start(specs)
            fleet.begin(time.time_ns() + 500_000_000, grace_s=3.0)
            requests, ended, lost, seqs = 0, [], [], {0: [], 1: []}
            async for ev in fleet.events():
                if isinstance(ev, BatchReceived):
                    b = decode_batch(ev.payload)
                    requests += b.requests
                    seqs[b.agent].append(b.seq)
                elif isinstance(ev, AgentEnded):
                    ended.append(ev.index)
                elif isinstance(ev, AgentLost):
                    lost.append((ev.index, ev.reason, ev.detail))
            await fleet.stop()
            await fleet.close()
            return requests, ended, lost, seqs

        requests, ended, lost, seqs = asyncio.run(main())
    assert not lost and sorted(ended) == [0, 1]
    for agent_seqs in seqs.values():  # one run per agent, in order, across the segments
        assert agent_seqs == list(range(len(agent_seqs))) and len(agent_seqs) > 6
    assert requests == len(arrivals) == int(RATE * 2 * 3.0)
