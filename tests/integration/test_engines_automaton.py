"""Both engines see the same thing from the automaton: statuses and body sizes per request,
and, through the whole pipeline, the same per-endpoint counts and bytes."""

from __future__ import annotations

import asyncio
import textwrap

import pytest

from horde.agents.http import make_engine
from horde.agents.spec import RequestTemplate
from horde.automaton.launch import start_automaton
from horde.coordinator.bundle.store import read_bundle
from horde.coordinator.run.session import RunOptions, run_scenario
from horde.coordinator.scenario.load import load_scenario

JSON = (("Content-Type", "application/json"),)
# Deterministic responses only (no clocks or ids in the body), so sizes must match exactly.
REQUESTS = [
    ("GET", "/api/agents", None),
    ("HEAD", "/api/agents", None),
    ("POST", "/api/tools/calculator/invoke", b'{"expression":"2+3*4"}'),
    ("POST", "/api/tools/search/invoke", b'{"query":"load"}'),
    ("GET", "/api/workflows/runs/999999", None),  # 404 with a JSON body
    ("POST", "/api/agents/nobody/respond", b"{}"),  # 404
    ("GET", "/no/such/route", None),  # 404 from the router
]


def test_each_request_gets_the_same_status_and_size_from_both_engines():
    with start_automaton() as target:
        templates = [
            RequestTemplate(f"r{i}", m, target.url + p, headers=JSON if b else (), body=b)
            for i, (m, p, b) in enumerate(REQUESTS)
        ]

        async def send_all(engine_name: str):
            e = make_engine(engine_name, templates, max_connections=2, timeout_s=5, connect_timeout_s=2)
            await e.open()
            try:
                return [tuple(int(x) for x in await e.request(i)) for i in range(len(templates))]
            finally:
                await e.close()

        slow = asyncio.run(send_all("aiohttp"))
        fast = asyncio.run(send_all("fast"))
    assert fast == slow
    assert [r[0] for r in fast] == [200, 200, 200, 200, 404, 404, 404]
    assert fast[1][1] == 0 and fast[0][1] > 100  # HEAD has no body; GET does


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_same_scenario_counts_the_same_with_each_engine(tmp_path):
    scen = tmp_path / "eq.yaml"
    scen.write_text(
        textwrap.dedent("""
        name: engines
        target: embedded
        requests:
          - {name: agents, path: /api/agents, expect: [200]}
          - {name: calc, method: POST, path: /api/tools/calculator/invoke, json: {expression: "2+3*4"}, expect: [200]}
          - {name: missing, path: /api/workflows/runs/999999, expect: [404]}
        workload:
          model: open
          start: 60
          stages: [{duration: 3s, target: 60}]
        agents: 1
    """)
    )
    figures = {}
    for engine in ("aiohttp", "fast"):
        loaded = load_scenario(scen, overrides=(f"engine={engine}",))
        r = run_scenario(
            loaded, RunOptions(in_process=True, out_dir=str(tmp_path / engine), install_signal_handlers=False)
        )
        b = read_bundle(r.bundle)
        assert set(b.summary["engines"].values()) == {engine}
        figures[engine] = {n: (e["requests"], e["errors"], e["bytes"]) for n, e in b.summary["endpoints"].items()}
        assert b.summary["total"]["requests"] == b.manifest["target"]["served"]["total"] == 180
    assert figures["fast"] == figures["aiohttp"]
