"""Python virtual users end to end: the same counts as the equivalent YAML flow against the
automaton, `horde validate` on broken user code (file and line, no traceback), the schema,
and a multi-node Ray run whose nodes do not hold the user file (user code travels with the
run; code that does not load on the agents stops the run before any request)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from horde.automaton.launch import start_automaton
from horde.coordinator.bundle.store import read_bundle
from horde.coordinator.cli import cli
from horde.coordinator.run.session import RunOptions, run_scenario
from horde.coordinator.scenario.load import ScenarioError, load_scenario

REPO = Path(__file__).resolve().parents[2]

SCRIPTED = """
class Research:
    async def run(self, client):
        start = await client.post("/api/workflows/research/run", json={"input": "x"}, name="start", expect=[202])
        run_id = start.json()["run_id"]
        for _ in range(100):
            poll = await client.get(f"/api/workflows/runs/{run_id}", name="poll", expect=[200], read=True)
            if poll.json()["status"] == "completed":
                return
            await client.sleep(0.02)
        client.fail("poll_exhausted")
"""

WORKLOAD = """
workload:
  model: open
  start: 10
  stages: [{duration: 3s, target: 10}]
agents: 1
"""


def _run(path: Path, url: str, out: Path):
    r = run_scenario(
        load_scenario(path, overrides=[f"target={url}"]),
        RunOptions(in_process=True, out_dir=str(out), install_signal_handlers=False),
    )
    return read_bundle(r.bundle)


@pytest.mark.timeout(180)
def test_a_scripted_flow_counts_as_the_equivalent_yaml_flow(tmp_path):
    (tmp_path / "users").mkdir()
    (tmp_path / "users" / "research.py").write_text(SCRIPTED)
    scripted = tmp_path / "scripted.yaml"
    scripted.write_text(
        "name: scripted\ntarget: embedded\nrequests:\n"
        '  - {name: research, user: "users/research.py:Research", requests: [start, poll]}\n' + WORKLOAD
    )
    flow = tmp_path / "flow.yaml"
    flow.write_text(
        textwrap.dedent("""
        name: flow
        target: embedded
        requests:
          - name: research
            flow:
              - {name: start, method: POST, path: /api/workflows/research/run, json: {input: x},
                 expect: [202], capture: {run_id: run_id}}
              - {name: poll, path: "/api/workflows/runs/${run_id}", expect: [200],
                 until: {path: status, equals: completed}, every: 20ms, max_polls: 100}
        """)
        + WORKLOAD
    )
    with start_automaton(async_workflows=True) as target:
        a = _run(scripted, target.url, tmp_path / "a")
        served_a = target.stats()["total"]
        b = _run(flow, target.url, tmp_path / "b")
        served_b = target.stats()["total"] - served_a
    ea, eb = a.summary.endpoints, b.summary.endpoints
    for name in ("research", "research/start"):
        assert ea[name].requests == eb[name].requests == 30, name
        assert ea[name].errors == eb[name].errors == 0, name
    assert ea["research/poll"].requests >= 30 and eb["research/poll"].requests >= 30
    assert ea["research/other"].requests == 0
    # TOTAL counts HTTP requests, not the iterations on top of them, in both
    assert a.summary.total.requests == ea["research/start"].requests + ea["research/poll"].requests == served_a
    assert b.summary.total.requests == served_b
    assert a.summary.engines["research"] == "python" and a.summary.user_errors == {}
    # the manifest records the user file as the agents loaded it
    (code,) = a.manifest.user_code
    assert code.file == "users/research.py" and code.class_name == "Research" and len(code.sha256) == 64


def test_user_errors_reach_the_summary_and_the_text_report(tmp_path):
    (tmp_path / "u.py").write_text(
        "class U:\n    async def run(self, client):\n        await client.get('/health')\n        [][1]\n"
    )
    scen = tmp_path / "s.yaml"
    scen.write_text('name: e\ntarget: embedded\nrequests:\n  - {name: u, user: "u.py:U"}\n' + WORKLOAD)
    with start_automaton() as target:
        b = _run(scen, target.url, tmp_path / "out")
    s = b.summary
    assert s.user_errors == {"IndexError": 30}
    assert s.endpoints["u"].errors_by_class == {"user_error": 30}
    assert s.endpoints["u/other"].errors == 0 and s.endpoints["u/other"].requests == 30
    from horde.coordinator.report.text import text_summary

    assert "user errors: IndexError 30" in text_summary(b)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("class U:\n    async def run(self, client)\n        pass\n", "users/u.py:2: has a syntax error"),
        ("import no_such_module_xyz\n", "users/u.py:1: failed to import: ModuleNotFoundError"),
        ("class V:\n    pass\n", "users/u.py: no class 'U'; classes defined there: V"),
        ("class U:\n    def run(self, client):\n        pass\n", "users/u.py:2: U.run must be `async def"),
    ],
)
def test_validate_reports_broken_user_code_with_file_and_line(tmp_path, source, expected):
    (tmp_path / "users").mkdir()
    (tmp_path / "users" / "u.py").write_text(source)
    scen = tmp_path / "s.yaml"
    scen.write_text('name: v\ntarget: embedded\nrequests:\n  - {name: u, user: "users/u.py:U"}\n' + WORKLOAD)
    r = CliRunner().invoke(cli, ["validate", str(scen)])
    assert r.exit_code == 3, r.output
    assert f"requests[0].user: {expected}" in r.output
    assert "Traceback" not in r.output


def test_validate_passes_good_user_code_and_names_a_missing_file(tmp_path):
    (tmp_path / "u.py").write_text("class U:\n    async def run(self, client):\n        pass\n")
    scen = tmp_path / "s.yaml"
    scen.write_text('name: v\ntarget: embedded\nrequests:\n  - {name: u, user: "u.py:U"}\n' + WORKLOAD)
    r = CliRunner().invoke(cli, ["validate", str(scen)])
    assert r.exit_code == 0 and "valid" in r.output, r.output
    scen.write_text('name: v\ntarget: embedded\nrequests:\n  - {name: u, user: "nope.py:U"}\n' + WORKLOAD)
    with pytest.raises(ScenarioError) as e:
        load_scenario(scen)
    assert "requests[0].user: cannot read the user file nope.py" in str(e.value)


def test_user_entries_in_key_paths_thresholds_and_the_schema(tmp_path):
    (tmp_path / "u.py").write_text("class U:\n    async def run(self, client):\n        pass\n")
    scen = tmp_path / "s.yaml"
    base = 'name: v\ntarget: embedded\nrequests:\n  - {name: shop, user: "u.py:U", requests: [login]%s}\n' + WORKLOAD
    scen.write_text(base % ", tiemout: 1s" + "thresholds:\n  - {expr: 'p99(latency) < 1s', endpoint: shop/nope}\n")
    with pytest.raises(ScenarioError) as e:
        load_scenario(scen)
    text = str(e.value)
    assert "requests[0].tiemout: unknown key; did you mean 'timeout'?" in text
    assert "thresholds[0].endpoint: no request entry named 'shop/nope'" in text and "shop/login" in text
    scen.write_text(base % "" + "thresholds:\n  - {expr: 'p99(latency) < 1s', endpoint: shop/login}\n")
    assert load_scenario(scen).scenario.thresholds[0].endpoint == "shop/login"
    r = CliRunner().invoke(cli, ["schema"])
    schema = json.loads(r.output)
    assert "UserEntry" in schema["$defs"] and "user" in schema["$defs"]["UserEntry"]["properties"]


DRIVER = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    import ray
    from ray.cluster_utils import Cluster
    from horde.automaton.launch import start_automaton
    from horde.coordinator.run.session import RunError, RunOptions, run_scenario
    from horde.coordinator.scenario.load import load_scenario

    good, bad, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    os.environ["HORDE_TEST_DRIVER_PID"] = str(os.getpid())  # the bad user file fails elsewhere
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    result = {}
    with start_automaton() as target:
        loaded = load_scenario(good, overrides=[f"target={target.url}"])
        loaded_bad = load_scenario(bad, overrides=[f"target={target.url}"])
        # the nodes cannot read the file: only what travels with the run can be loaded
        for f in good.parent.glob("users/*.py"):
            f.rename(f.with_suffix(".gone"))
        r = run_scenario(loaded, RunOptions(out_dir=str(out), install_signal_handlers=False))
        result["bundle"] = str(r.bundle)
        before = target.stats()["total"]
        try:
            run_scenario(loaded_bad, RunOptions(out_dir=str(out), install_signal_handlers=False))
            result["bad"] = "ran"
        except RunError as exc:
            result["bad"] = str(exc)
        result["bad_served"] = target.stats()["total"] - before
    print("RESULT " + json.dumps(result), flush=True)
    ray.shutdown()
    cluster.shutdown()
""")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_user_code_is_shipped_to_nodes_that_do_not_hold_it(tmp_path):
    work = tmp_path / "scenario"
    (work / "users").mkdir(parents=True)
    (work / "users" / "hello.py").write_text(
        "import os\n\nclass Hello:\n    async def run(self, client):\n"
        "        await client.get('/health', name='health')\n"
        "        self.pid = os.getpid()\n"
    )
    (work / "users" / "broken.py").write_text(
        "import os\n\nif os.getpid() != int(os.environ.get('HORDE_TEST_DRIVER_PID', os.getpid())):\n"
        "    raise RuntimeError('not on this node')\n\n"
        "class Broken:\n    async def run(self, client):\n        await client.get('/health')\n"
    )
    workload = "workload: {model: open, start: 20, stages: [{duration: 3s, target: 20}]}\nagents: 2\n"
    good = work / "good.yaml"
    good.write_text(
        "name: shipped\ntarget: embedded\nrequests:\n"
        '  - {name: hello, user: "users/hello.py:Hello", requests: [health]}\n' + workload
    )
    bad = work / "bad.yaml"
    bad.write_text(
        'name: broken\ntarget: embedded\nrequests:\n  - {name: b, user: "users/broken.py:Broken"}\n' + workload
    )
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()  # the driver and the nodes it starts run where no user file is
    r = subprocess.run(
        [sys.executable, str(driver), str(good), str(bad), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=elsewhere,
    )
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(line[len("RESULT ") :])
    b = read_bundle(res["bundle"])
    assert b.manifest["outcome"] == "passed", b.summary["stop_reason"]
    assert len({a["node"] for a in b.manifest["agents"]}) == 2  # two nodes ran user code
    s = b.summary
    assert s.endpoints["hello"].requests == s.endpoints["hello/health"].requests == 60
    assert s.endpoints["hello"].errors == 0
    # the broken file loads in the driver but not on the agents: a clear error, nothing sent
    assert "users/broken.py:4: failed to import: RuntimeError: not on this node" in res["bad"], res["bad"]
    assert res["bad_served"] == 0
