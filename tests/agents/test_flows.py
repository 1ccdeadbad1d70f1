"""Flows: captured variables, bounded polling, per-step and whole-flow samples."""

from __future__ import annotations

import asyncio
import itertools
import textwrap
import time

import pytest
from aiohttp import web

from horde.agents.flows import FlowRunner, dig, fill
from horde.agents.samples import ErrorClass
from horde.agents.spec import FlowStepTemplate, FlowTemplate
from horde.automaton.launch import start_automaton
from horde.coordinator.bundle.store import read_bundle
from horde.coordinator.run.session import RunOptions, run_scenario
from horde.coordinator.scenario.load import ScenarioError, load_scenario, parse_scenario


@pytest.mark.parametrize(
    "doc, path, value",
    [
        ({"run_id": 7}, "run_id", 7),  # a top-level field
        ({"a": {"b": [{"c": "x"}]}}, "a.b[0].c", "x"),  # nested through a list
        ({"a": [1]}, "a[3]", None),  # out of range: absent, not an error
        ({"a": 1}, "a.b", None),  # through a number: absent
        (None, "a", None),  # no document at all
    ],
)
def test_dig(doc, path, value):
    assert dig(doc, path) == value


def test_fill_leaves_unknown_variables_alone():
    assert fill("/runs/${id}/x/${other}", {"id": "42"}) == "/runs/42/x/${other}"


async def _jobs_server(done_after: int):
    polls = itertools.count(1)

    async def start(request: web.Request) -> web.Response:
        return web.json_response({"run_id": "r-1", "status": "running"}, status=202)

    async def get(request: web.Request) -> web.Response:
        n = next(polls)
        status = "completed" if n >= done_after else "running"
        return web.json_response({"id": request.match_info["rid"], "status": status})

    app = web.Application()
    app.router.add_post("/runs", start)
    app.router.add_get("/runs/{rid}", get)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]


def _flow(url: str, max_polls: int) -> FlowTemplate:
    return FlowTemplate(
        name="job",
        endpoint=0,
        steps=(
            FlowStepTemplate(
                "start",
                "POST",
                url + "/runs",
                endpoint=1,
                body=b"{}",
                expect=frozenset({202}),
                capture=(("rid", "run_id"),),
            ),
            FlowStepTemplate(
                "poll",
                "GET",
                url + "/runs/${rid}",
                endpoint=2,
                expect=frozenset({200}),
                until=("status", "completed"),
                every_s=0.01,
                max_polls=max_polls,
            ),
        ),
    )


def _run_flow(done_after: int, max_polls: int) -> list[tuple]:
    async def main():
        srv, url = await _jobs_server(done_after)
        t0 = time.monotonic_ns()
        runner = FlowRunner(
            max_connections=4, timeout_s=5, connect_timeout_s=2, clock_ns=lambda: time.monotonic_ns() - t0
        )
        await runner.open()
        records: list[tuple] = []

        async def sleep_until(t_ns: int) -> bool:
            await asyncio.sleep(max(0, t_ns - (time.monotonic_ns() - t0)) / 1e9)
            return True

        try:
            await runner.run(_flow(url, max_polls), 0, lambda *r: records.append(r), sleep_until)
        finally:
            await runner.close()
            await srv.cleanup()
        return records

    return asyncio.run(main())


def test_flow_captures_polls_until_done_and_records_each_attempt():
    records = _run_flow(done_after=3, max_polls=10)
    endpoints = [r[0] for r in records]
    assert endpoints == [1, 2, 2, 2, 0]  # start, three polls, then the whole flow
    assert all(r[5] == ErrorClass.OK for r in records)
    whole = records[-1]
    assert whole[1] == 0 and whole[3] == 200  # intended at the flow's start; the last status


def test_polls_are_bounded_and_the_flow_fails_when_they_run_out():
    records = _run_flow(done_after=100, max_polls=4)
    assert [r[0] for r in records] == [1, 2, 2, 2, 2, 0]
    assert records[-1][5] == ErrorClass.POLL_EXHAUSTED


def test_a_variable_must_be_captured_before_use():
    data = {
        "name": "f",
        "target": "http://127.0.0.1:9",
        "requests": [
            {
                "name": "wf",
                "flow": [
                    {"name": "a", "path": "/runs/${rid}"},
                    {"name": "b", "path": "/runs", "capture": {"rid": "id"}},
                ],
            }
        ],
        "workload": {"model": "open", "stages": [{"duration": "1s", "target": 1}]},
    }
    import yaml

    with pytest.raises(ScenarioError) as e:
        parse_scenario(yaml.safe_dump(data), env={})
    assert any(p.path == "requests[0].flow[0]" and "${rid}" in p.message for p in e.value.problems)


@pytest.mark.timeout(120)
def test_workflows_under_load_against_the_automaton(tmp_path):
    """The automaton in async-workflow mode: a run's status is polled until completed."""
    with start_automaton(async_workflows=True) as target:
        scen = tmp_path / "flow.yaml"
        scen.write_text(
            textwrap.dedent(f"""
            name: flows
            target: {target.url}
            requests:
              - name: research
                flow:
                  - name: start
                    method: POST
                    path: /api/workflows/research/run
                    json: {{input: "x"}}
                    expect: [202]
                    capture: {{run_id: run_id}}
                  - name: poll
                    path: /api/workflows/runs/${{run_id}}
                    expect: [200]
                    until: {{path: status, equals: completed}}
                    every: 20ms
                    max_polls: 100
            workload:
              model: open
              start: 10
              stages: [{{duration: 3s, target: 10}}]
            agents: 1
        """)
        )
        r = run_scenario(
            load_scenario(scen),
            RunOptions(in_process=True, out_dir=str(tmp_path / "out"), install_signal_handlers=False),
        )
        served = target.stats()["total"]
    s = read_bundle(r.bundle).summary
    flow, start, poll = (s["endpoints"][k] for k in ("research", "research/start", "research/poll"))
    assert flow["requests"] == start["requests"] == 30 and flow["errors"] == 0
    assert poll["requests"] >= start["requests"]  # at least one poll per run
    # the whole flow takes at least as long as its steps' latencies
    assert flow["latency_ms"]["p50"] >= start["latency_ms"]["p50"]
    # TOTAL counts HTTP requests (steps), not the flows on top of them
    assert s["total"]["requests"] == start["requests"] + poll["requests"] == served
