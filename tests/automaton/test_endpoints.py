"""Each endpoint's status and JSON shape, against an in-process automaton."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from horde.automaton.app import STATE
from horde.automaton.catalog import SIMULATED_AGENTS, TOOL_NAMES, WORKFLOWS
from horde.automaton.config import AutomatonConfig

# Fast handlers: these tests check shapes, not timing.
FAST = AutomatonConfig(think_delay_s=0.0, tool_delay_s=0.0)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_health(in_process) -> None:
    async def scenario() -> None:
        async with in_process(FAST) as (client, _):
            resp = await client.get("/health")
            assert resp.status == 200
            body = await resp.json()
            assert body["status"] == "ok"
            assert body["uptime_s"] >= 0
            assert body["faults"] == {}  # no faults: defaults are left out

    run(scenario())


def test_agents_list(in_process) -> None:
    async def scenario() -> None:
        async with in_process(FAST) as (client, _):
            resp = await client.get("/api/agents")
            assert resp.status == 200
            body = await resp.json()
            assert body["count"] == len(body["agents"]) == len(SIMULATED_AGENTS)
            for agent in body["agents"]:
                assert set(agent) == {"id", "name", "role", "tools"}
                assert set(agent["tools"]) <= set(TOOL_NAMES)

    run(scenario())


def test_agent_respond(in_process) -> None:
    async def scenario() -> None:
        async with in_process(FAST) as (client, _):
            resp = await client.post("/api/agents/researcher/respond", json={"message": "find x"})
            assert resp.status == 200
            body = await resp.json()
            assert body["agent_id"] == "researcher"
            assert "find x" in body["reply"]
            assert len(body["thought_digest"]) == 16
            # A bare POST (no body) is a valid request: load generators send those.
            assert (await client.post("/api/agents/planner/respond")).status == 200

    run(scenario())


def test_agent_respond_errors(in_process) -> None:
    async def scenario() -> None:
        async with in_process(FAST) as (client, _):
            resp = await client.post("/api/agents/nobody/respond", json={})
            assert resp.status == 404
            assert "nobody" in (await resp.json())["error"]
            resp = await client.post("/api/agents/planner/respond", data=b"{not json")
            assert resp.status == 400
            resp = await client.post("/api/agents/planner/respond", json=[1, 2])
            assert resp.status == 400
            # Only POST is routed.
            assert (await client.get("/api/agents/planner/respond")).status == 405

    run(scenario())


@pytest.mark.parametrize(
    ("tool", "payload", "expected_output"),
    [
        ("calculator", {"op": "sum", "numbers": [1, 2, 3.5]}, {"op": "sum", "value": 6.5}),
        ("calculator", {"op": "mean", "numbers": [2, 4]}, {"op": "mean", "value": 3.0}),
        ("summarize", {"text": "a b c d e", "max_words": 2}, {"summary": "a b", "words": 5}),
        ("search", {"query": "sqlite"}, {"query": "sqlite", "hits": ["SQLite write-ahead logging"]}),
        ("search", {"query": "zzz"}, {"query": "zzz", "hits": []}),
    ],
)
def test_tool_invoke(in_process, tool: str, payload: dict[str, Any], expected_output: dict[str, Any]) -> None:
    async def scenario() -> None:
        async with in_process(FAST) as (client, _):
            resp = await client.post(f"/api/tools/{tool}/invoke", json=payload)
            assert resp.status == 200
            assert await resp.json() == {"tool": tool, "output": expected_output}

    run(scenario())


def test_every_tool_works_with_an_empty_body(in_process) -> None:
    async def scenario() -> None:
        async with in_process(FAST) as (client, _):
            for tool in TOOL_NAMES:
                resp = await client.post(f"/api/tools/{tool}/invoke")
                assert resp.status == 200, tool
                assert (await resp.json())["tool"] == tool

    run(scenario())


def test_tool_invoke_errors(in_process) -> None:
    async def scenario() -> None:
        async with in_process(FAST) as (client, _):
            assert (await client.post("/api/tools/hammer/invoke", json={})).status == 404
            bad = [
                ("calculator", {"op": "pow"}),
                ("calculator", {"numbers": []}),
                ("calculator", {"numbers": ["1"]}),
                ("summarize", {"max_words": 0}),
                ("search", {"query": 7}),
            ]
            for tool, payload in bad:
                resp = await client.post(f"/api/tools/{tool}/invoke", json=payload)
                assert resp.status == 400, (tool, payload)
                assert "error" in await resp.json()

    run(scenario())


def test_workflow_run_then_get(in_process) -> None:
    async def scenario() -> None:
        async with in_process(FAST) as (client, _):
            for name, workflow in WORKFLOWS.items():
                resp = await client.post(f"/api/workflows/{name}/run", json={"message": "go"})
                assert resp.status == 200
                run_reply = await resp.json()
                assert run_reply["status"] == "completed"
                assert run_reply["workflow"] == name
                steps = run_reply["result"]["steps"]
                assert [s["step"] for s in steps] == ["agent"] + ["tool"] * len(workflow.tools)
                assert [s["tool"] for s in steps[1:]] == list(workflow.tools)

                resp = await client.get(f"/api/workflows/runs/{run_reply['run_id']}")
                assert resp.status == 200
                record = await resp.json()
                assert record["run_id"] == run_reply["run_id"]
                assert record["status"] == "completed"
                assert record["workflow"] == name
                assert record["result"] == run_reply["result"]

    run(scenario())


def test_workflow_tool_inputs_reach_the_tools(in_process) -> None:
    async def scenario() -> None:
        async with in_process(FAST) as (client, _):
            body = {"tool_inputs": {"calculator": {"op": "max", "numbers": [3, 9, 4]}}}
            resp = await client.post("/api/workflows/analysis/run", json=body)
            assert resp.status == 200
            steps = (await resp.json())["result"]["steps"]
            assert steps[1]["output"] == {"op": "max", "value": 9}
            bad = {"tool_inputs": {"calculator": {"op": "pow"}}}
            assert (await client.post("/api/workflows/analysis/run", json=bad)).status == 400

    run(scenario())


def test_workflow_errors(in_process) -> None:
    async def scenario() -> None:
        async with in_process(FAST) as (client, _):
            assert (await client.post("/api/workflows/nope/run", json={})).status == 404
            resp = await client.get("/api/workflows/runs/does-not-exist")
            assert resp.status == 404
            assert "error" in await resp.json()

    run(scenario())


def test_async_workflow_can_be_polled_to_completion(in_process) -> None:
    config = AutomatonConfig(think_delay_s=0.05, tool_delay_s=0.0, async_workflows=True)

    async def scenario() -> None:
        async with in_process(config) as (client, _):
            resp = await client.post("/api/workflows/research/run", json={})
            assert resp.status == 202
            reply = await resp.json()
            assert reply["status"] == "running"
            statuses = []
            for _ in range(200):  # bounded poll: at most ~2 s
                record = await (await client.get(f"/api/workflows/runs/{reply['run_id']}")).json()
                statuses.append(record["status"])
                if record["status"] != "running":
                    break
                await asyncio.sleep(0.01)
            assert statuses[0] == "running"  # the 50 ms think delay outlasts the first poll
            assert statuses[-1] == "completed"
            assert len(record["result"]["steps"]) == 3

    run(scenario())


def test_records_round_trip(in_process) -> None:
    async def scenario() -> None:
        async with in_process(FAST) as (client, _):
            resp = await client.get("/api/records")
            assert resp.status == 200
            assert await resp.json() == {"records": [], "count": 0}

            created = []
            for i in range(3):
                resp = await client.post("/api/records", json={"n": i, "tags": ["a"]})
                assert resp.status == 201
                created.append(await resp.json())
            assert created[0]["data"] == {"n": 0, "tags": ["a"]}

            body = await (await client.get("/api/records?limit=2")).json()
            assert body["count"] == 2
            # Newest first.
            assert [r["id"] for r in body["records"]] == [created[2]["id"], created[1]["id"]]
            assert body["records"][0]["data"] == {"n": 2, "tags": ["a"]}

            all_records = await (await client.get("/api/records?limit=1000")).json()
            assert all_records["count"] == 3

    run(scenario())


def test_records_errors(in_process) -> None:
    async def scenario() -> None:
        async with in_process(FAST) as (client, _):
            for limit in ("0", "1001", "x", "-3"):
                resp = await client.get(f"/api/records?limit={limit}")
                assert resp.status == 400, limit
            assert (await client.post("/api/records", data=b"\xff\xfe")).status == 400

    run(scenario())


def test_concurrent_record_writes_all_land(in_process) -> None:
    async def scenario() -> None:
        async with in_process(FAST) as (client, _):
            replies = await asyncio.gather(*(client.post("/api/records", json={"i": i}) for i in range(100)))
            assert [r.status for r in replies] == [201] * 100
            ids = {(await r.json())["id"] for r in replies}
            assert len(ids) == 100
            body = await (await client.get("/api/records?limit=1000")).json()
            assert sorted(r["data"]["i"] for r in body["records"]) == list(range(100))

    run(scenario())


def test_unknown_path_is_404_and_not_counted(in_process) -> None:
    async def scenario() -> None:
        async with in_process(FAST) as (client, app):
            assert (await client.get("/nope")).status == 404
            assert app[STATE].metrics.stats()["total"] == 0

    run(scenario())
