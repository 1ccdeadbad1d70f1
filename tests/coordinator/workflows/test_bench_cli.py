"""`horde bench SCENARIO` end to end, small: against the embedded automaton and against an
HTTP service of the test's own on 127.0.0.1 (no Ray in either)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner

from horde.coordinator.cli import cli
from horde.coordinator.workflows.history import History, default_history_path

SCENARIOS = Path(__file__).resolve().parents[3] / "scenarios"
ITERATIONS = 20
WARMUP = 3


def check_figures(doc: dict[str, Any], names: set[str], iterations: int = ITERATIONS) -> None:
    """What every benchmark's figures must satisfy, whatever the machine's speed."""
    assert set(doc["operations"]) == names
    for name, op in doc["operations"].items():
        assert op["n"] == iterations and op["errors"] == 0, (name, op["errors_by_class"])
        assert op["warmup"] == WARMUP, name
        assert op["min_ms"] <= op["median_ms"] <= op["max_ms"], name
        # p95 / p99 come from the histogram (within 1%), the median is exact
        assert 0.99 * op["median_ms"] <= op["p95_ms"] <= op["p99_ms"] <= 1.01 * op["max_ms"], (name, op)
        mean_ci, median_ci = op["mean_ci_ms"], op["median_ci_ms"]
        assert mean_ci["low"] <= op["mean_ms"] <= mean_ci["high"], (name, op)
        assert median_ci["low"] <= op["median_ms"] <= median_ci["high"], (name, op)
        assert median_ci["confidence"] >= 0.95
        assert op["ops_per_s"] > 0


def history_rows(results: Path) -> list[Any]:
    with History(default_history_path(results)) as h:
        return h.runs()


# -- the embedded automaton -------------------------------------------------------------------


def test_bench_times_the_automatons_operations_and_records_them(tmp_path: Path) -> None:
    results = tmp_path / "results"
    out = CliRunner().invoke(
        cli,
        [
            "bench",
            str(SCENARIOS / "smoke.yaml"),
            "--iterations",
            str(ITERATIONS),
            "--warmup",
            str(WARMUP),
            "--results",
            str(results),
            "--json",
        ],
    )
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    from horde.coordinator.workflows.microbench import automaton_operations

    check_figures(doc, {op.name for op in automaton_operations()})
    groups = {op["group"] for op in doc["operations"].values()}
    assert groups == {"health", "agents", "tools", "workflows", "database"}
    assert doc["target_url"].startswith("embedded automaton (http://127.0.0.1:")
    # A workflow runs an agent and then its tools: clearly slower than one tool call.
    assert doc["operations"]["workflows.triage"]["median_ms"] > doc["operations"]["tools.search"]["median_ms"]

    (row,) = history_rows(results)
    assert row.scenario == "bench:smoke" and row.outcome == "bench"
    assert row.requests == ITERATIONS * len(doc["operations"]) and row.errors == 0
    assert set(row.endpoints) == set(doc["operations"])
    assert row.endpoints["tools.search"]["p50_latency_ms"] == pytest.approx(
        doc["operations"]["tools.search"]["median_ms"]
    )
    assert Path(row.bundle_path).parent == results.resolve()  # the result file, beside the history
    assert json.loads(Path(row.bundle_path).read_text())["history"]["run_id"] == row.id

    listed = CliRunner().invoke(cli, ["history", "--results", str(results)])
    assert listed.exit_code == 0, listed.output
    assert "bench:smoke" in listed.output and "bench" in listed.output


def test_bench_starts_the_automaton_with_the_scenarios_faults(tmp_path: Path) -> None:
    tool_fault = "target={embedded: {faults: {endpoints: {tool_invoke: {latency: 10ms}}}}}"
    out = CliRunner().invoke(
        cli,
        [
            "bench",
            str(SCENARIOS / "smoke.yaml"),
            "--set",
            tool_fault,
            "--group",
            "tools",
            "--group",
            "health",
            "--iterations",
            str(ITERATIONS),
            "--warmup",
            str(WARMUP),
            "--out",
            str(tmp_path),
            "--json",
        ],
    )
    assert out.exit_code == 0, out.output
    ops = json.loads(out.stdout)["operations"]
    check_figures({"operations": ops}, {"health", "tools.search", "tools.calculator", "tools.summarize"})
    for name in ("tools.search", "tools.calculator", "tools.summarize"):
        assert ops[name]["median_ci_ms"]["low"] >= 10.0, ops[name]  # the fault's fixed 10 ms, at least
    assert ops["health"]["median_ms"] < 10.0


# -- any HTTP service --------------------------------------------------------------------------


class Service:
    """A small aiohttp app on 127.0.0.1 in a thread of its own: counts what it was sent."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _count(self, key: str) -> None:
        self.seen[key] = self.seen.get(key, 0) + 1

    async def _items(self, request: web.Request) -> web.Response:
        self._count("items" if request.headers.get("X-Bench") == "yes" else "items-without-header")
        return web.json_response([{"id": 1}])

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._count("create" if body == {"kind": "bench", "n": 1} else "create-with-other-body")
        return web.json_response({"id": 2}, status=201)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/items", self._items)
        app.router.add_post("/items", self._create)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def __enter__(self) -> Service:
        self._thread.start()
        assert self._ready.wait(10), "the test service did not start"
        return self

    def __exit__(self, *exc: Any) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def service() -> Iterator[Service]:
    with Service() as s:
        yield s


def own_scenario(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "own.yaml"
    path.write_text(f"""
name: own-service
target: {url}
requests:
  - {{name: list, path: /items, headers: {{X-Bench: "yes"}}, weight: 3}}
  - {{name: create, method: POST, path: /items, json: {{kind: bench, n: 1}}, expect: [201]}}
  - name: checkout
    flow:
      - {{name: cart, method: POST, path: /items, json: {{kind: bench, n: 1}}}}
workload: {{model: open, stages: [{{duration: 1s, target: 1}}]}}
output: {tmp_path / "own-results"}
""")
    return path


def test_bench_times_a_url_targets_own_requests(tmp_path: Path, service: Service) -> None:
    scenario = own_scenario(tmp_path, service.url)
    out = CliRunner().invoke(cli, ["bench", str(scenario), "--iterations", str(ITERATIONS), "--warmup", str(WARMUP)])
    assert out.exit_code == 0, out.output
    # The table: one line per operation, n and errors first, then mean / median with intervals.
    lines = {line.split()[0]: line.split() for line in out.stdout.splitlines() if line.startswith("  requests.")}
    assert set(lines) == {"requests.list", "requests.create"}
    for cols in lines.values():
        assert cols[1:3] == [str(ITERATIONS), "0"]
    assert "left out flow(s), no single operation: checkout" in out.stderr
    # Each request went with its own method, header and body, and nothing else was sent.
    assert service.seen == {"items": ITERATIONS + WARMUP, "create": ITERATIONS + WARMUP}

    # The results directory is the scenario's output, as for `horde run`.
    (row,) = history_rows(tmp_path / "own-results")
    assert row.scenario == "bench:own-service" and set(row.endpoints) == {"requests.list", "requests.create"}
    saved = json.loads(Path(row.bundle_path).read_text())
    check_figures(saved, {"requests.list", "requests.create"})
    assert saved["target_url"] == service.url and saved["skipped_flows"] == ["checkout"]


def test_bench_by_duration_and_group_on_a_url(tmp_path: Path, service: Service) -> None:
    scenario = own_scenario(tmp_path, service.url)
    out = CliRunner().invoke(
        cli,
        [
            "bench",
            str(scenario),
            "--duration",
            "0.3",
            "--warmup",
            "0",
            "--group",
            "requests",
            "--concurrency",
            "2",
            "--json",
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    for op in doc["operations"].values():
        assert op["n"] > 5 and op["errors"] == 0 and op["concurrency"] == 2
        assert 0.25 <= op["wall_s"] <= 3.0
    assert doc["settings"]["duration_s"] == 0.3 and doc["settings"]["iterations"] is None
    assert len(history_rows(tmp_path / "r")) == 1


# -- what goes wrong ---------------------------------------------------------------------------


def test_bench_of_an_unreachable_service_fails_and_records_nothing(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    scenario = own_scenario(tmp_path, f"http://127.0.0.1:{port}")
    out = CliRunner().invoke(cli, ["bench", str(scenario), "--iterations", "3", "--warmup", "0"])
    assert out.exit_code == 1, out.output
    assert "no good answer from requests.list, requests.create" in out.stderr
    assert "Traceback" not in out.output
    assert not (tmp_path / "own-results").exists()


def test_bench_of_a_bad_scenario_exits_3_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ntarget: ftp://x\nrequests: []\nworkload: {model: open, stages: []}\n")
    out = CliRunner().invoke(cli, ["bench", str(bad), "--iterations", "5"])
    assert out.exit_code == 3, out.output
    assert "invalid scenario" in out.stderr and "target" in out.stderr
    assert isinstance(out.exception, SystemExit)
    # Once in a real process: the exit code and stderr a shell sees.
    proc = subprocess.run(
        [sys.executable, "-m", "horde.coordinator.cli", "bench", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr and "invalid scenario" in proc.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("args", [["--group", "nope"], ["--iterations", "0"], ["--duration", "0"]])
def test_bench_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    out = CliRunner().invoke(cli, ["bench", str(SCENARIOS / "smoke.yaml"), *args])
    assert out.exit_code == 2, out.output


def test_bench_of_a_scenario_with_only_flows_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "flows.yaml"
    path.write_text("""
name: flows
target: http://127.0.0.1:9
requests:
  - name: checkout
    flow: [{name: cart, method: POST, path: /cart}]
workload: {model: open, stages: [{duration: 1s, target: 1}]}
""")
    out = CliRunner().invoke(cli, ["bench", str(path)])
    assert out.exit_code == 1, out.output
    assert "nothing to benchmark" in out.stderr and "checkout" in out.stderr
