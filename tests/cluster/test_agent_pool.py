"""The agent pool of `horde up` (cluster/pool.py): runs lease its agents (the same process run
after run, with a fresh agent's figures), two leases never share one, agents of other code or
other CPUs are not leased and leave room for the run's own, a lease of a run that died is
taken back, and `horde down` ends the pool's processes, by PID, and nothing else.
One warm Ray for the module (Ray-starting tests are few on purpose).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from horde.coordinator.commands import up as warm
from tests.cluster.test_warm_head import APP, SCENARIO, _env, _horde, _newest_bundle

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# A driver of its own on the warm Ray, asking the keeper directly (what RayFleet does).
DRIVER = """
import asyncio, json, sys, time
from horde.coordinator.commands.up import warm_address
from horde.cluster.connect import connect
connect(warm_address(), ship_horde=False)
import ray
from horde.cluster.pool import KEEPER_NAME, NAMESPACE, code_hash, lease_agents

async def status(keeper):
    return await keeper.status.remote()

async def main(steps):
    keeper = ray.get_actor(KEEPER_NAME, namespace=NAMESPACE)
    out, leases = [], {}
    for step in steps:
        kind = step[0]
        if kind == "lease":
            _, name, cpus, code = step
            got = await lease_agents(1, cpus, 600.0, code_hash() if code == "mine" else code)
            leases[name] = got
            out.append({"lease": name, "agents": len(got.actors), "why": got.why})
        elif kind == "give_back":
            await leases[step[1]].give_back()
        elif kind == "settle":  # until no agent is leased (the keeper resets them in the background)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (await status(keeper))["leased"]:
                await asyncio.sleep(0.2)
        elif kind == "status":
            out.append(await status(keeper))
    print(json.dumps(out), flush=True)

asyncio.run(main(json.loads(sys.argv[1])))
"""


def _driver(env: dict, steps: list) -> list:
    r = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(steps)], capture_output=True, text=True, env=env, timeout=180
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def pool_up(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pool")
    env = _env(tmp)
    started = _horde(env, "up", "--num-cpus", "2")
    assert started.returncode == 0, started.stderr
    assert "1 pooled agent(s)" in started.stdout
    state = json.loads((tmp / "state" / "up.json").read_text())
    try:
        yield tmp, env, state
    finally:
        if (tmp / "state" / "up.json").exists():
            _horde(env, "down")


def _run(tmp: Path, env: dict, target: str, path: str, agents: int = 1) -> tuple[dict, dict]:
    scenario = tmp / "s.yaml"
    text = textwrap.dedent(SCENARIO.format(target=target, path=path)).replace("agents: 1", f"agents: {agents}")
    scenario.write_text(text)
    r = _horde(env, "run", str(scenario), "-q", "--out", str(tmp / "out"))
    assert r.returncode == 0, r.stderr[-3000:]
    bundle = _newest_bundle(tmp / "out")
    return json.loads((bundle / "manifest.json").read_text()), json.loads((bundle / "summary.json").read_text())


def test_runs_lease_the_pooled_agent_and_get_a_fresh_agents_figures(pool_up):
    tmp, env, state = pool_up
    pooled_pid = state["pool"]["agents"][0]
    app = subprocess.Popen([sys.executable, "-c", APP], stdout=subprocess.PIPE, text=True)
    try:
        assert app.stdout is not None
        port = int(app.stdout.readline())
        figures = []
        for target, path in (("embedded", "/health"), (f"http://127.0.0.1:{port}", "/"), ("embedded", "/health")):
            manifest, summary = _run(tmp, env, target, path)
            assert manifest["cluster"]["kind"] == "warm"
            assert manifest["cluster"]["pool"] == "1 of 1 agent(s) from the pool of `horde up`"
            assert [a["pid"] for a in manifest["agents"]] == [pooled_pid]  # the same process each run
            figures.append((summary["total"]["requests"], summary["total"]["errors"], manifest["start_wall_ns"] > 0))
            _driver(env, [["settle"]])
        # the first run had the agent fresh; the third reused it twice: the same figures
        assert figures[0] == figures[2] == (10, 0, True), figures
        assert figures[1][:2] == (10, 0)
    finally:
        app.kill()
        app.wait()


def test_a_lease_is_one_runs_and_stale_or_unfit_agents_are_not_leased(pool_up):
    tmp, env, state = pool_up
    got = _driver(
        env,
        [
            ["lease", "a", 1.0, "mine"],
            ["lease", "b", 1.0, "mine"],  # the only agent is a's: none for b
            ["give_back", "a"],
            ["give_back", "b"],
            ["settle"],
            ["status"],
            ["lease", "c", 0.5, "mine"],  # other CPUs: not leased, and retired to free its CPU
            ["status"],
            ["give_back", "c"],  # no lease left: the pool is filled again
            ["lease", "d", 1.0, "0" * 64],  # other horde code: stale, retired
            ["status"],
            ["give_back", "d"],
        ],
    )
    a, b, idle, c, after_c, d, after_d = got
    assert a == {"lease": "a", "agents": 1, "why": ""}
    assert b["agents"] == 0 and "0 of 1 agents of 1 CPU idle in the pool (1 leased)" in b["why"]
    assert idle["agents"] == 1 and idle["leased"] == 0 and idle["leases"] == 0
    assert c["agents"] == 0 and after_c["agents"] == 0  # its CPU is free for the run's own agent
    assert d["agents"] == 0 and "run other horde code" in d["why"]
    assert after_d["agents"] == 0 and after_d["retired"] == after_c["retired"] + 1


def test_a_run_that_the_pool_cannot_serve_creates_its_agents(pool_up):
    tmp, env, state = pool_up
    _driver(env, [["settle"]])
    manifest, summary = _run(tmp, env, "embedded", "/health", agents=2)  # 2 agents of 0.5 CPU: not the pool's
    assert manifest["cluster"]["pool"].startswith("0 of 2 agent(s) from the pool"), manifest["cluster"]
    assert summary["total"]["requests"] == 10


def test_a_lease_of_a_run_that_died_is_taken_back(pool_up):
    tmp, env, state = pool_up
    _driver(env, [["settle"]])
    # a driver that leases the agent and ends without giving it back
    held = _driver(env, [["lease", "x", 1.0, "mine"], ["status"]])
    assert held[0]["agents"] == 1
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        (status,) = _driver(env, [["status"]])
        if status["leases"] == 0 and status["agents"] == 1:
            break
        time.sleep(1.0)
    assert status["leases"] == 0 and status["agents"] == 1, status  # retired, and the pool filled again


def test_down_ends_the_pools_processes_by_pid_and_nothing_else(pool_up):
    tmp, env, state = pool_up
    head = psutil.Process(state["pid"])
    tree = {p.pid: p.create_time() for p in [head, *head.children(recursive=True)]}
    pool_pids = [state["pool"]["pid"], *state["pool"]["agents"]]
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        current = [p for p in pool_pids if p in tree]  # the first agent may have been retired since
        assert state["pool"]["pid"] in tree and current
        stopped = _horde(env, "down")
        assert stopped.returncode == 0, stopped.stderr
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (alive := [p for p, t in tree.items() if warm._alive(p, t)]):
            time.sleep(0.2)
        assert not alive
        assert bystander.poll() is None  # not started by `horde up`: untouched
    finally:
        bystander.kill()
        bystander.wait()
    assert os.path.exists(tmp / "state") and not (tmp / "state" / "up.json").exists()
