"""injector.py and admin.py in process: gates, scaling ticks, leak cap, CPU burn, the admin app."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from horde.automaton.admin import build_admin_app
from horde.automaton.app import STATE
from horde.automaton.config import AutomatonConfig
from horde.automaton.faults import Concurrency, FaultConfig, ScalingPolicy, ScopeFaults
from horde.automaton.injector import ConnectionLimiter, FaultInjector, Gate, burn_cpu_s
from horde.automaton.latency import Fixed


def test_gate_runs_two_queues_two_and_rejects_the_rest_in_order() -> None:
    async def scenario() -> None:
        gate = Gate(limit=2, queue_limit=2)
        order: list[int] = []

        async def request(i: int) -> bool:
            if not await gate.enter():
                return False
            order.append(i)
            await asyncio.sleep(0.01)
            gate.leave()
            return True

        results = await asyncio.gather(*(request(i) for i in range(10)))
        assert results == [True] * 4 + [False] * 6
        assert order == [0, 1, 2, 3]  # first come, first served
        assert (gate.account.running, gate.account.waiting) == (0, 0)

    asyncio.run(scenario())


def test_cancelled_waiter_gives_up_its_place() -> None:
    async def scenario() -> None:
        gate = Gate(limit=1, queue_limit=5)
        assert await gate.enter()
        first = asyncio.create_task(gate.enter())
        second = asyncio.create_task(gate.enter())
        await asyncio.sleep(0)
        assert gate.account.waiting == 2
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        assert gate.account.waiting == 1
        gate.leave()  # the worker goes to `second`, not to the cancelled one
        assert await second
        assert (gate.account.running, gate.account.waiting) == (1, 0)
        gate.leave()
        assert gate.account.running == 0

    asyncio.run(scenario())


def test_waiter_cancelled_after_promotion_hands_its_worker_on() -> None:
    async def scenario() -> None:
        gate = Gate(limit=1, queue_limit=5)
        assert await gate.enter()
        promoted = asyncio.create_task(gate.enter())
        after = asyncio.create_task(gate.enter())
        await asyncio.sleep(0)
        gate.leave()  # `promoted` now holds the worker, but has not resumed yet...
        promoted.cancel()  # ...and is cancelled before it does
        await asyncio.gather(promoted, return_exceptions=True)
        assert await after
        assert (gate.account.running, gate.account.waiting) == (1, 0)

    asyncio.run(scenario())


def test_removing_a_limit_releases_the_queue() -> None:
    async def scenario() -> None:
        injector = FaultInjector(FaultConfig(concurrency=Concurrency(limit=1, queue=10)))
        held = await injector.admit("health")
        assert held is not None
        waiting = [asyncio.create_task(injector.admit("health")) for _ in range(3)]
        await asyncio.sleep(0)
        assert injector.queue_length() == 3 and injector.capacity_workers() == 1
        injector.apply(FaultConfig())
        admitted = await asyncio.wait_for(asyncio.gather(*waiting), timeout=1)
        assert all(gates is not None for gates in admitted)
        assert injector.queue_length() == 0 and injector.capacity_workers() is None
        assert await injector.admit("health") == ()  # no gates at all now

    asyncio.run(scenario())


def test_endpoint_and_global_gates_both_apply() -> None:
    async def scenario() -> None:
        faults = FaultConfig(
            concurrency=Concurrency(limit=3, queue=0),
            endpoints={"health": ScopeFaults(concurrency=Concurrency(limit=1, queue=0))},
        )
        injector = FaultInjector(faults)
        assert await injector.admit("health") is not None
        assert await injector.admit("health") is None  # health's own pool is full
        assert await injector.admit("agents_list") is not None
        assert await injector.admit("agents_list") is not None
        assert await injector.admit("agents_list") is None  # the global pool is full
        assert injector.capacity_workers() == 3

    asyncio.run(scenario())


def test_scaling_ticks_resize_the_global_gate() -> None:
    async def scenario() -> None:
        faults = FaultConfig(
            concurrency=Concurrency(limit=1, queue=100),
            scaling=ScalingPolicy(min_workers=1, max_workers=2, scale_up_delay_s=1.0, cool_down_s=1.0),
        )
        injector = FaultInjector(faults)
        await injector.admit("health")
        waiting = [asyncio.create_task(injector.admit("health")) for _ in range(2)]
        await asyncio.sleep(0)
        injector.tick(10.0)
        assert injector.capacity_workers() == 1
        injector.tick(11.0)  # a second of queue: one more worker, and a waiter starts on it
        assert injector.capacity_workers() == 2
        assert injector.queue_length() == 1
        await asyncio.wait_for(waiting[0], timeout=1)
        waiting[1].cancel()
        await asyncio.gather(waiting[1], return_exceptions=True)

    asyncio.run(scenario())


def test_leak_keeps_bytes_up_to_the_cap() -> None:
    injector = FaultInjector(FaultConfig(leak_cap_bytes=1000))
    for _ in range(3):
        injector.leak(400)
    assert injector.leaked_bytes == 800  # the third would pass the cap
    injector.leak(200)
    assert injector.leaked_bytes == 1000
    injector.apply(FaultConfig())  # a new configuration does not give leaked memory back
    assert injector.leaked_bytes == 1000


def test_burn_cpu_uses_cpu_time() -> None:
    started_cpu_s = time.thread_time()
    burn_cpu_s(0.05)
    assert time.thread_time() - started_cpu_s >= 0.05


def test_connection_limiter_counts_and_refuses() -> None:
    refused: list[int] = []
    limit = [2]

    class Recorder(asyncio.Protocol):
        lost = False

        def connection_lost(self, exc: Exception | None) -> None:
            self.lost = True

    limiter = ConnectionLimiter(Recorder, limit=lambda: limit[0], on_refused=lambda: refused.append(1))
    first, _ = limiter(), limiter()
    assert limiter.open == 2
    third = limiter()
    assert refused == [1] and limiter.open == 2

    class Transport:
        closed = False

        def close(self) -> None:
            self.closed = True

    transport = Transport()
    third.connection_made(transport)  # type: ignore[arg-type]
    assert transport.closed  # refused: hung up at once
    first.connection_lost(None)
    assert limiter.open == 1 and first._inner.lost  # type: ignore[attr-defined]
    assert limiter() is not None and limiter.open == 2
    limit[0] = None  # type: ignore[call-overload]
    limiter()
    assert limiter.open == 3


# --- the admin app, in process -------------------------------------------------------------

TOKEN = "test-token"
FAST = AutomatonConfig(think_delay_s=0.0, tool_delay_s=0.0)


def test_admin_requires_the_token_and_replaces_faults(in_process) -> None:
    async def scenario() -> None:
        async with in_process(FAST) as (client, app):
            admin_app = build_admin_app(app, TOKEN)
            async with TestServer(admin_app, host="127.0.0.1") as server, TestClient(server) as admin:
                good = {"Authorization": f"Bearer {TOKEN}"}
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                    resp = await admin.get("/admin/faults", headers=headers)
                    assert resp.status == 401, headers
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                    resp = await admin.put("/admin/faults", json={"error_rate": 1.0}, headers=headers)
                    assert resp.status == 401
                assert (await admin.get("/admin/other", headers={})).status == 401  # no probing either
                assert app[STATE].injector.faults == FaultConfig()

                resp = await admin.get("/admin/faults", headers=good)
                assert resp.status == 200 and await resp.json() == {}

                new = {"endpoints": {"health": {"error_rate": 1.0, "error_status": 503}}}
                resp = await admin.put("/admin/faults", json=new, headers=good)
                assert resp.status == 200 and await resp.json() == new
                assert (await client.get("/health")).status == 503
                assert (await client.get("/api/agents")).status == 200
                stats = await (await client.get("/stats")).json()
                assert stats["rejected"]["injected_error"] == 1

                resp = await admin.put("/admin/faults", json={"error_rate": 2, "bogus": 1}, headers=good)
                assert resp.status == 400
                body = await resp.json()
                assert len(body["problems"]) == 2
                resp = await admin.put("/admin/faults", data=b"{nope", headers=good)
                assert resp.status == 400
                # Invalid configurations change nothing.
                assert await (await admin.get("/admin/faults", headers=good)).json() == new

                assert (await admin.put("/admin/faults", json={}, headers=good)).status == 200
                assert (await client.get("/health")).status == 200

    asyncio.run(scenario())


def test_observation_endpoints_are_not_faulted(in_process) -> None:
    config = AutomatonConfig(
        faults=FaultConfig(error_rate=1.0, latency=Fixed(5.0)), think_delay_s=0.0, tool_delay_s=0.0
    )

    async def scenario() -> None:
        async with in_process(config) as (client, _):
            started = time.monotonic()
            assert (await client.get("/stats")).status == 200
            assert (await client.get("/metrics")).status == 200
            assert (await client.get("/no/such/path")).status == 404
            assert time.monotonic() - started < 2.0

    asyncio.run(scenario())


def test_empty_admin_token_is_refused(in_process) -> None:
    async def scenario() -> None:
        async with in_process(FAST) as (_, app):
            with pytest.raises(ValueError):
                build_admin_app(app, "")

    asyncio.run(scenario())
