"""Three Ray nodes on one machine (ray.cluster_utils.Cluster): agents spread, a node is lost.

Runs in a subprocess: a process can hold only one Ray connection and the session's
embedded Ray is already in this one.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from horde.coordinator.bundle.store import read_bundle

pytestmark = [pytest.mark.slow]

RATE = 120
DURATION_S = 16

DRIVER = textwrap.dedent("""
    import json, sys, threading, time
    from pathlib import Path
    import ray
    from ray.cluster_utils import Cluster
    from horde.coordinator.run.session import RunOptions, run_scenario
    from horde.coordinator.scenario.load import load_scenario

    scenario, out = sys.argv[1], Path(sys.argv[2])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    result = {}

    def run():
        result["r"] = run_scenario(load_scenario(scenario), RunOptions(
            out_dir=str(out), install_signal_handlers=False, progress=lambda l: print(l, flush=True)))

    th = threading.Thread(target=run)
    th.start()
    agents, start_wall_ns = None, None
    for _ in range(300):
        for mf in out.glob("*.incomplete/manifest.json"):
            try:
                manifest = json.loads(mf.read_text())
            except ValueError:
                continue
            agents, start_wall_ns = manifest.get("agents"), manifest.get("start_wall_ns")
        if agents and start_wall_ns:
            break
        time.sleep(0.2)
    # the node goes 3 s into the run: from the run's start instant, not from when the agents appeared
    time.sleep(max(0.0, (start_wall_ns - time.time_ns()) / 1e9 + 3.0))
    by_id = {w.node_id: w for w in workers}
    victim = next((a for a in agents if a["node"] in by_id), None)
    removed = None
    if victim is not None:
        removed = victim["node"]
        cluster.remove_node(by_id[removed], allow_graceful=False)
    th.join(timeout=150)
    print("RESULT " + json.dumps({"bundle": str(result["r"].bundle), "agents": agents, "removed": removed,
                                  "head": cluster.head_node.node_id}), flush=True)
    ray.shutdown()
    cluster.shutdown()
""")


@pytest.mark.timeout(300)
def test_agents_spread_and_a_lost_node_is_replaced(tmp_path):
    scen = tmp_path / "multi.yaml"
    scen.write_text(
        textwrap.dedent(f"""
        name: multi
        target: embedded
        requests:
          - {{name: health, path: /health, expect: [200]}}
        workload:
          model: open
          start: {RATE}
          stages: [{{duration: {DURATION_S}s, target: {RATE}}}]
        agents: 2
    """)
    )
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    r = subprocess.run(
        [sys.executable, str(driver), str(scen), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=Path(__file__).resolve().parents[2],
    )
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(line[len("RESULT ") :])
    agents = res["agents"]
    assert len({a["node"] for a in agents}) == 2, agents  # spread: one agent per node
    assert res["removed"], "no agent on a removable (non-head) node"
    b = read_bundle(res["bundle"])
    assert b.manifest["outcome"] == "passed", b.summary["stop_reason"]
    assert len(b.manifest["cluster"]["nodes"]) == 3
    lost = b.summary["lost_agents"]
    assert len(lost) == 1 and lost[0]["node"] == res["removed"] and lost[0]["replaced"], lost
    assert lost[0]["replacement_node"] != res["removed"]
    windows = {w["index"]: w for w in b.windows()}
    first_full = math.ceil(lost[0]["restored_at_s"]) + 1
    after = [windows[i]["total"]["requests"] for i in range(first_full, DURATION_S) if i in windows]
    assert len(after) >= 3, (lost, sorted(windows))
    for n in after:
        assert abs(n - RATE) <= 0.1 * RATE, (after, lost)
