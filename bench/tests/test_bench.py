"""Checks of the benchmark harness's own parts: `python -m pytest bench/tests -q`.

Pure parsers and arithmetic with plain values; the meter and nginx with real processes
(a second or two each, skipped where nginx is missing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.cpu_per_request import Sample, format_table, steady_cpu_per_request, steady_parts_per_request, summarise
from bench.nginx import Nginx, render_config
from bench.peers.base import PeerFailed
from bench.peers.external import parse_locust_json, parse_wrk
from bench.peers.horde import summary_agent_cpu_s, summary_requests

BENCH = Path(__file__).resolve().parent.parent

WRK_OK = """\
Running 5s test @ http://127.0.0.1:40001/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.96ms  368.91us   5.35ms   73.95%
    Req/Sec    55.41k     5.49k   74.29k    85.00%
  276123 requests in 5.00s, 39.50MB read
Requests/sec:  55224.60
"""
WRK_ERRORS = """\
  1500 requests in 1.00m, 1.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 10
"""


# -- wrk ----------------------------------------------------------------------------------


def test_wrk_count_and_duration() -> None:
    c = parse_wrk(WRK_OK)
    assert (c.requests, c.errors, c.run_s) == (276123, 0, 5.0)


def test_wrk_errors_and_minutes() -> None:
    c = parse_wrk(WRK_ERRORS)
    assert (c.requests, c.errors, c.run_s) == (1500, 15, 60.0)


def test_wrk_without_summary_fails() -> None:
    with pytest.raises(PeerFailed):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


# -- locust -------------------------------------------------------------------------------


def test_locust_sums_entries_failures_included() -> None:
    entries = [
        {"name": "/", "num_requests": 100, "num_failures": 2},
        {"name": "/b", "num_requests": 50, "num_failures": 0},
    ]
    c = parse_locust_json(entries, 5)
    assert (c.requests, c.errors, c.run_s) == (150, 2, 5.0)


# -- horde summary hooks ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("summary", "expected"),
    [
        ({"total": {"requests": 10}}, None),  # no generator section
        ({"generator": {"cpu_s": 3.61, "agents": {"0": {"cpu_s": 3.61}}}}, 3.61),  # as horde writes it
        ({"generator": {"agents": {"0": {"cpu_s": 1.5}, "1": {"cpu_s": 0.5}}}}, 2.0),  # no total
        ({"generator": {"agents": [{"cpu_s": 1.0}]}}, 1.0),  # a list of agents
        ({"generator": {"agents": [{"cpu_s": 1.0}, {"rss": 5}]}}, None),  # one agent lacks it
        ({"generator": {"agents": {}}}, None),  # no agents listed
    ],
)
def test_agent_cpu_hook(summary: dict, expected: float | None) -> None:
    assert summary_agent_cpu_s(summary) == expected


def test_summary_requests() -> None:
    assert summary_requests({"total": {"requests": 7, "errors": 1}}) == (7, 1)
    assert summary_requests({"total": {"requests": 7}}) == (7, 0)


# -- steady window ------------------------------------------------------------------------


def _samples(rows: list[tuple[float, float, int]]) -> list[Sample]:
    return [Sample(t, cpu, n) for t, cpu, n in rows]


def test_steady_window_skips_startup_and_polls() -> None:
    # 2 s of start-up burning CPU with no requests, then 1000 req/s at 0.1 CPU-s per second
    # (100 us per request); each sample's own status query adds one to nginx's count.
    rows = [(0.0, 0.0, 1), (1.0, 1.0, 2), (2.0, 2.0, 3)]
    for k in range(1, 9):
        rows.append((2.0 + k, 2.0 + 0.1 * k, 3 + k * 1001))
    rows.append((11.0, 2.9, rows[-1][2] + 1))  # load over
    us, window_s = steady_cpu_per_request(_samples(rows))
    assert us == pytest.approx(100.0)
    # from 1 s after the first requests to 0.5 s before the last
    assert window_s == pytest.approx(6.0)


def test_steady_window_none_without_requests() -> None:
    assert steady_cpu_per_request(_samples([(0, 0, 1), (1, 1, 2), (2, 2, 3)])) == (None, 0.0)


def test_steady_window_none_when_too_short() -> None:
    rows = [(0.0, 0.0, 1), (0.5, 0.1, 500), (1.0, 0.2, 1000), (1.5, 0.2, 1001)]
    assert steady_cpu_per_request(_samples(rows)) == (None, 0.0)


# -- table --------------------------------------------------------------------------------


def test_table_with_skipped_peer_and_ratio() -> None:
    from bench.cpu_per_request import PeerRun

    runs = [
        PeerRun(peer="wrk", round=0, status="ok", requests=1000, run_s=1.0, wall_s=1.0, cpu_s=0.01),
        PeerRun(peer="aiohttp", round=0, status="ok", requests=100, run_s=1.0, wall_s=1.0, cpu_s=0.01),
        PeerRun(peer="locust", round=0, status="skipped", reason="locust not importable"),
    ]
    rows = summarise(runs, ["wrk", "aiohttp", "locust"])
    assert rows[1]["us_per_request_x_wrk"] == pytest.approx(10.0)
    text = format_table(rows)
    assert "locust: skipped: locust not importable" in text


# -- meter --------------------------------------------------------------------------------


def test_meter_counts_an_orphaned_grandchild(tmp_path: Path) -> None:
    script = tmp_path / "tree.py"
    script.write_text(
        textwrap.dedent("""\
        import os, time
        if os.fork() == 0:
            if os.fork() == 0:   # orphaned at once; burns 0.4 s of CPU after its parent is gone
                t = time.process_time()
                while time.process_time() - t < 0.4:
                    pass
            os._exit(0)
    """)
    )
    result = tmp_path / "r.json"
    subprocess.run(
        [sys.executable, str(BENCH / "meter.py"), "--result", str(result), "--", sys.executable, str(script)],
        check=True,
        timeout=30,
    )
    r = json.loads(result.read_text())
    assert r["subreaper"] and r["exit_code"] == 0
    assert r["cpu_s"] >= 0.4


def test_meter_counts_a_process_its_parent_auto_reaps(tmp_path: Path) -> None:
    # Ray's raylet ignores SIGCHLD: its workers vanish at exit without reaching any
    # RUSAGE_CHILDREN. The meter must still count them, from its last reading.
    script = tmp_path / "autoreap.py"
    script.write_text(
        textwrap.dedent("""\
        import os, signal, time
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        if os.fork() == 0:
            t = time.process_time()
            while time.process_time() - t < 0.8:
                pass
            time.sleep(0.5)   # idle at the end, as an agent is after its traffic
            os._exit(0)
        time.sleep(2.0)
    """)
    )
    result = tmp_path / "r.json"
    subprocess.run(
        [
            sys.executable,
            str(BENCH / "meter.py"),
            "--result",
            str(result),
            "--sample-every",
            "0.1",
            "--",
            sys.executable,
            str(script),
        ],
        check=True,
        timeout=30,
    )
    r = json.loads(result.read_text())
    assert r["autoreaped_processes"] == 1
    assert 0.75 <= r["autoreaped_cpu_s"] <= 0.9
    assert r["cpu_s"] >= r["reaped_cpu_s"] + 0.75


def test_meter_ends_the_tree_at_timeout(tmp_path: Path) -> None:
    result = tmp_path / "r.json"
    subprocess.run(
        [
            sys.executable,
            str(BENCH / "meter.py"),
            "--result",
            str(result),
            "--timeout",
            "0.5",
            "--",
            "sh",
            "-c",
            "sleep 30 & sleep 30",
        ],
        timeout=30,
    )
    r = json.loads(result.read_text())
    assert r["killed_at_timeout"] and r["wall_s"] < 10


# -- nginx --------------------------------------------------------------------------------


def test_config_pins_the_worker() -> None:
    assert "worker_cpu_affinity 1;" in render_config("/r", "127.0.0.1", 1, cpu=0)
    assert "worker_cpu_affinity 10;" in render_config("/r", "127.0.0.1", 1, cpu=1)


@pytest.mark.skipif(not os.access("/usr/sbin/nginx", os.X_OK), reason="nginx not installed")
def test_nginx_serves_counts_and_stops() -> None:
    target = Nginx(cpu=0).start()
    try:
        root, master = target.root, target.master_pid
        assert root is not None and master is not None and target.worker_pids()
        first = target.requests_served()
        out = subprocess.run(
            ["curl", "-s", target.url, target.static_url], capture_output=True, text=True, timeout=10
        ).stdout
        assert out.startswith("ok\n") and "horde static file" in out
        assert target.requests_served() == first + 3  # two GETs and this query
    finally:
        target.stop()
    assert not root.exists()
    assert not Path(f"/proc/{master}").exists()


def test_config_extra_locations_and_keepalive() -> None:
    conf = render_config(
        "/r", "127.0.0.1", 1, cpu=0, keepalive_requests=40, returns={"/204": "204", "/moved": "301 /static/a.bin"}
    )
    assert "keepalive_requests 40;" in conf
    assert "location = /204 {\n            return 204;\n        }" in conf
    assert "return 301 /static/a.bin;" in conf
    assert "keepalive_requests 100000000;" in render_config("/r", "127.0.0.1", 1, cpu=0)


def test_nginx_rejects_file_names_outside_static() -> None:
    from bench.nginx import NginxError

    with pytest.raises(NginxError):
        Nginx(files={"../escape": b"x"})


@pytest.mark.skipif(not os.access("/usr/sbin/nginx", os.X_OK), reason="nginx not installed")
def test_nginx_serves_extra_files_and_returns() -> None:
    import urllib.request

    def get(url: str) -> tuple[int, bytes]:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()

    with Nginx(cpu=0, files={"a.bin": b"abc"}, returns={"/204": "204"}) as target:
        assert get(target.url_of("/static/a.bin")) == (200, b"abc")
        assert get(target.url_of("/204")) == (204, b"")
        assert get(target.static_url)[0] == 200


# -- the floor client (bench/floor.py) ------------------------------------------------------


def test_floor_encodes_a_plain_get() -> None:
    from bench.floor import encode_get

    assert encode_get("http://127.0.0.1:8080/static/a.bin?x=1") == (
        "127.0.0.1",
        8080,
        b"GET /static/a.bin?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
    )


@pytest.mark.skipif(not os.access("/usr/sbin/nginx", os.X_OK), reason="nginx not installed")
def test_floor_sends_exactly_the_requests() -> None:
    import asyncio

    from bench.floor import Floor

    async def go(url: str) -> tuple[int, int, int]:
        floor = await Floor.open(url, 4)
        try:
            errors = await asyncio.wait_for(floor.phase(203), 10)
            return errors, floor.body_bytes, floor.left
        finally:
            floor.close()

    with Nginx(cpu=0, files={"a.bin": b"x" * 100}) as target:
        served = target.requests_served()
        assert asyncio.run(go(target.url_of("/static/a.bin"))) == (0, 20300, 0)
        assert target.requests_served() - served == 203 + 1


@pytest.mark.skipif(not os.access("/usr/sbin/nginx", os.X_OK), reason="nginx not installed")
def test_floor_ends_when_nginx_closes_its_connections() -> None:
    import asyncio

    from bench.floor import Floor

    async def go(url: str) -> int:
        floor = await Floor.open(url, 2)
        try:
            return await asyncio.wait_for(floor.phase(100), 10)
        finally:
            floor.close()

    with Nginx(cpu=0, keepalive_requests=10) as target:  # no reconnects: the floor runs dry
        assert asyncio.run(go(target.url)) > 0


# -- steady breakdown by process ------------------------------------------------------------


def test_steady_parts_add_up_to_the_whole() -> None:
    rows = []
    for k in range(12):  # 1000 req/s from t=1; agent 60, driver 30, ray 10 us/request
        n = 1 + k + (k - 1) * 1000 if k >= 1 else 1
        t = max(k - 1, 0)  # seconds of load
        parts = {"agent": 0.06 * t, "driver": 1.0 + 0.03 * t, "ray": 2.0 + 0.01 * t}
        rows.append(Sample(float(k), sum(parts.values()), n, parts))
    whole, _ = steady_cpu_per_request(rows)
    parts = steady_parts_per_request(rows)
    assert whole == pytest.approx(100.0)
    assert parts == pytest.approx({"agent": 60.0, "driver": 30.0, "ray": 10.0})
    assert steady_parts_per_request([Sample(s.t_s, s.tree_cpu_s, s.nginx_requests) for s in rows]) is None


def test_horde_rows_agent_and_coordinator() -> None:
    from bench.cpu_per_request import PeerRun

    run = PeerRun(
        peer="horde",
        round=0,
        status="ok",
        requests=1000,
        run_s=1.0,
        wall_s=5.0,
        cpu_s=0.5,
        agent_cpu_s=0.05,
        steady_us_per_request=100.0,
        steady_parts_us_per_request={"agent": 60.0, "driver": 30.0, "ray": 10.0},
    )
    rows = {r["peer"]: r for r in summarise([run], ["horde"])}
    assert rows["horde (agent only)"]["us_per_request"] == pytest.approx(50.0)
    assert rows["horde (agent only)"]["steady_us_per_request"] == pytest.approx(60.0)
    both = rows["horde (agent + coordinator)"]
    assert both["steady_us_per_request"] == pytest.approx(90.0) and both["us_per_request"] is None
    text = format_table(list(rows.values()))
    assert "horde: steady us/req by process: agent 60.0, driver 30.0, ray 10.0" in text


@pytest.mark.parametrize(
    ("top", "title", "part"),
    [
        (True, "", "driver"),
        (False, "ray::TrafficAgentActor.stream", "agent"),
        (False, "ray::TrafficAgentActor", "agent"),
        (False, "ray::NodeMonitor.stream", "other actors"),
        (False, "ray::IDLE", "ray"),
        (False, "ray::DashboardAgent", "ray"),
        (False, "/usr/lib/python3/site-packages/ray/core/src/ray/raylet/raylet --x", "ray"),
    ],
)
def test_horde_process_parts(top: bool, title: str, part: str) -> None:
    from bench.peers.horde import process_part

    assert process_part(top, title) == part


def test_tree_cpu_by_adds_up_to_tree_cpu(tmp_path: Path) -> None:
    from bench.meter import EXITED, tree_cpu_by, tree_cpu_s

    child = subprocess.Popen(["sleep", "5"])  # an idle child: nothing changes between reads
    try:
        parts = tree_cpu_by(os.getpid(), lambda pid, top: "top" if top else "below")
        assert set(parts) <= {"top", "below", EXITED} and "top" in parts
        assert sum(parts.values()) == pytest.approx(tree_cpu_s(os.getpid()), abs=0.011)
    finally:
        child.kill()
        child.wait()


# -- open_rate.py -----------------------------------------------------------------------------

OPEN_SUMMARY = {  # the parts of a summary.json open_rate.py reads, as horde writes them
    "duration_s": 8.0,
    "total": {
        "requests": 160000,
        "errors": 2,
        "rps": 20000.0,
        "duration_s": 8.0,
        "latency_ms": {"p50": 0.412, "p90": 0.9, "p99": 3.25, "max": 20.1},
    },
    "generator": {
        "saturated": True,
        "reasons": ["agent 0 used 95% of a core"],
        "agents": {"0": {"cpu_s": 4.0, "late_sends": 120, "queued_sends": 7}},
        "cpu_s": 4.0,
        "cpu_us_per_request": 25.0,
        "late_sends": 120,
        "queued_sends": 7,
        "interrupted": 0,
        "unsent": 3,
    },
}


def test_open_scenario_has_the_rate_and_validates(tmp_path: Path) -> None:
    import yaml

    from bench.open_rate import write_open_scenario
    from horde.coordinator.scenario.load import load_scenario

    path = write_open_scenario("http://127.0.0.1:9/", 20000, 8, tmp_path)
    assert path.parent == tmp_path
    data = yaml.safe_load(path.read_text())
    assert data["target"] == "http://127.0.0.1:9"
    assert (data["engine"], data["agents"]) == ("fast", 1)
    workload = data["workload"]
    assert (workload["model"], workload["arrivals"]) == ("open", "constant")
    assert workload["start"] == 20000  # flat from t = 0: no ramp from 0
    assert workload["stages"] == [{"duration": "8s", "target": 20000}]
    assert (workload["max_in_flight"], workload["max_connections"]) == (64, 64)
    scenario = load_scenario(path, env={}).scenario  # what `horde run` would accept
    assert scenario.workload.total_duration_s == 8.0
    assert scenario.workload.stages[0].target == 20000.0


def test_open_rate_reads_the_summary() -> None:
    from bench.open_rate import read_summary

    got = read_summary(OPEN_SUMMARY, seconds=10)
    assert (got["requests"], got["errors"], got["run_s"]) == (160000, 2, 8.0)
    assert got["rps"] == pytest.approx(20000.0)
    assert got["agent_cpu_s"] == 4.0 and got["agent_us_per_request"] == pytest.approx(25.0)
    assert (got["late_sends"], got["generator_queued_sends"], got["unsent"]) == (120, 7, 3)
    assert (got["latency_p50_ms"], got["latency_p99_ms"]) == (0.412, 3.25)
    assert got["saturated"] and got["saturation_reasons"] == ["agent 0 used 95% of a core"]


def test_open_rate_summary_without_optional_parts() -> None:
    from bench.open_rate import read_summary

    # an older layout: no queued_sends, no latency, no generator CPU, no duration
    got = read_summary({"total": {"requests": 50}, "generator": {"late_sends": 1}}, seconds=5)
    assert (got["requests"], got["errors"], got["run_s"], got["rps"]) == (50, 0, 5.0, 10.0)
    assert got["agent_cpu_s"] is None and got["agent_us_per_request"] is None
    assert (got["late_sends"], got["generator_queued_sends"]) == (1, None)
    assert (got["latency_p50_ms"], got["latency_p99_ms"]) == (None, None)
    assert not got["saturated"]


def test_open_rate_table_and_rates() -> None:
    from bench.open_rate import RateRun, format_table, parse_rates

    assert parse_rates("5000, 20000,") == [5000, 20000]
    with pytest.raises(ValueError):
        parse_rates("0")
    ok = RateRun(
        rate=5000,
        status="ok",
        requests=50000,
        rps=5000.0,
        agent_us_per_request=30.0,
        late_sends=0,
        generator_queued_sends=2,
        latency_p50_ms=0.3,
        latency_p99_ms=1.5,
        steady_parts_us_per_request={"agent": 28.0, "driver": 5.0},
    )
    assert ok.steady_agent_us_per_request == 28.0
    text = format_table([ok, RateRun(rate=25000, reason="killed after 190s")])
    row = next(line for line in text.splitlines() if line.lstrip().startswith("5000"))
    assert row.split() == ["5000", "50000", "0", "5000", "-", "30.0", "28.0", "0", "2", "0.30", "1.50", "-"]
    assert "25000/s: failed: killed after 190s" in text
    assert "5000/s: steady us/req by process: agent 28.0, driver 5.0" in text


def test_coordinator_sim_batches_pass_the_coordinators_checks() -> None:
    # What the simulated agents replay is what real agents send: it passes the checks and
    # lands in the aggregator, window by window (no Ray here: the actor class is plain).

    from bench.coordinator_sim import S, SimAgents
    from horde.agents.samples import decode_batch
    from horde.coordinator.measure.aggregate import Aggregator
    from horde.coordinator.measure.batch_check import BatchChecker, RunBounds

    sim = SimAgents([0, 2])
    assert sim.prepare(2000, 10, 1) == 3

    items = list(sim.stream(None, 0, 3, 1))  # all its agents in turn; start in the past: no waiting
    # each flush's batches, with their agent and when they were made
    assert [(flush, agent) for flush, agent, _, _ in items] == [(0, 0), (0, 2), (1, 0), (1, 2), (2, 0), (2, 2)]
    payloads = [payload for _, _, _, payload in items]
    agg = Aggregator([f"e{i}" for i in range(10)], [10**13], ["main"])
    checker = BatchChecker(RunBounds(endpoints=10, stages=1))
    for p in payloads:
        b = decode_batch(p)
        checker.check(b, sender=b.agent, incarnations={0: 0, 2: 0}, now_ns=4 * S)
        agg.add(b)
    assert len(payloads) == 6
    assert agg.snapshot().requests == 6 * 2000
    assert [w.total.requests > 0 for w in agg.close_until(3 * S)] == [True, True, True]
