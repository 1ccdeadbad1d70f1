"""/metrics (Prometheus text) and /stats count exactly the requests served."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from horde.automaton.app import COUNTED_ROUTES
from horde.automaton.config import AutomatonConfig

FAST = AutomatonConfig(think_delay_s=0.0, tool_delay_s=0.0)


def _families(text: str) -> dict[str, list]:
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def test_metrics_exposition_counts_requests_per_endpoint(in_process) -> None:
    async def scenario() -> None:
        async with in_process(FAST) as (client, _):
            for _ in range(3):
                await client.get("/health")
            for _ in range(2):
                await client.get("/api/agents")
            await client.post("/api/agents/analyst/respond", json={})
            await client.post("/api/agents/ghost/respond", json={})  # a 404 is still served
            await client.post("/api/tools/search/invoke", json={})
            run_id = (await (await client.post("/api/workflows/triage/run")).json())["run_id"]
            await client.get(f"/api/workflows/runs/{run_id}")
            for _ in range(4):
                await client.post("/api/records", json={})
            await client.get("/api/records")
            # Observation endpoints are not counted, however often they are read.
            await client.get("/stats")
            await client.get("/metrics")

            resp = await client.get("/metrics")
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            families = _families(await resp.text())

            expected = {
                "health": 3,
                "agents_list": 2,
                "agent_respond": 2,
                "tool_invoke": 1,
                "workflow_run": 1,
                "workflow_get": 1,
                "records_create": 4,
                "records_list": 1,
            }
            counted = {
                s.labels["endpoint"]: s.value
                for s in families["automaton_requests"]
                if s.name == "automaton_requests_total"
            }
            assert counted == expected
            assert set(counted) == set(COUNTED_ROUTES)

            (rss,) = families["process_resident_memory_bytes"]
            assert rss.value > 1_000_000
            assert families["process_open_fds"][0].value > 0
            assert families["process_cpu_seconds"][0].value > 0
            assert families["automaton_in_flight_requests"][0].value == 0
            assert families["automaton_open_connections"][0].value >= 1

            stats = await (await client.get("/stats")).json()
            assert stats["requests"] == expected
            assert stats["total"] == sum(expected.values())
            assert stats["in_flight"] == 0

    asyncio.run(scenario())


def test_in_flight_counts_a_request_being_handled(in_process) -> None:
    slow = AutomatonConfig(think_delay_s=1.0, tool_delay_s=0.0)

    async def scenario() -> None:
        async with in_process(slow) as (client, _):
            pending = asyncio.create_task(client.post("/api/agents/writer/respond", json={}))
            seen = []
            for _ in range(100):  # bounded: the request is in flight for 1 s
                seen.append((await (await client.get("/stats")).json())["in_flight"])
                if seen[-1] == 1:
                    break
                await asyncio.sleep(0.005)
            assert seen[-1] == 1
            metrics = _families(await (await client.get("/metrics")).text())
            assert metrics["automaton_in_flight_requests"][0].value == 1
            assert (await pending).status == 200
            stats = await (await client.get("/stats")).json()
            assert stats["in_flight"] == 0
            assert stats["requests"]["agent_respond"] == 1

    asyncio.run(scenario())


def test_open_connections_follows_client_connections(in_process) -> None:
    async def scenario() -> None:
        async with in_process(FAST) as (client, _):
            # Ten requests started together find no idle connection, so each opens one;
            # keep-alive then holds all ten open.
            calls = [client.post("/api/tools/search/invoke", json={}) for _ in range(10)]
            await asyncio.gather(*calls)
            stats = await (await client.get("/stats")).json()
            assert 10 <= stats["open_connections"] <= 11

    asyncio.run(scenario())


def test_each_app_has_its_own_registry(in_process) -> None:
    async def scenario() -> None:
        async with in_process(FAST) as (client_a, _), in_process(FAST) as (client_b, _):
            await client_a.get("/health")
            stats_b = await (await client_b.get("/stats")).json()
            assert stats_b["total"] == 0
            text_b = await (await client_b.get("/metrics")).text()
            health_b = [
                s.value
                for s in _families(text_b)["automaton_requests"]
                if s.name == "automaton_requests_total" and s.labels["endpoint"] == "health"
            ]
            assert health_b == [0]

    asyncio.run(scenario())
