"""Every command that takes a scenario works the same against both kinds of target.

The matrix: run, stress, monitor, nightly, bench and submit, each through the CLI (click's
CliRunner), against
  - `embedded`: horde starts the automaton itself (coordinator/run/target.py), and
  - an external HTTP service on 127.0.0.1 that the test started: the automaton as a
    separate process (`python -m horde.automaton serve --port 0`), which horde knows only
    by its URL; and, for the commands whose load is the scenario's requests, a plain
    aiohttp app that is no automaton at all (no /metrics, no /stats).
Each case asserts the exit code and that the target answered requests of that command:
the external services count what they served; horde's embedded automaton is asked through
the bundle's `served` record, the monitor's snapshot or the benchmark's answers.

`submit` needs a Ray job server; starting one (`ray start --head` with its dashboard, as
tests/cluster/test_jobs.py does) and a job's own environment cost about a minute per job,
so here the job server is a fake that takes the submission, and the job's entrypoint is
then run as Ray would run it (the exec wrapper, the shipped scenario, `horde run`), attached
to the session's Ray instead of `auto`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from click.testing import CliRunner

from horde.cluster import jobs
from horde.coordinator.cli import cli

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SCENARIO = """\
name: {name}
target: {target}
requests:
  - {{name: health, method: GET, path: /health, expect: [200]}}
workload:
  model: open
  start: 0
  stages:
    - {{duration: 0s, target: 5}}
    - {{duration: 1s, target: 5}}
    - {{duration: 0s, target: 10}}
    - {{duration: 1s, target: 10}}
thresholds:
  - {{expr: "error_rate < 50%", abort: true}}
agents: 1
flush_interval: 1s
"""
# 5 req/s for 1 s, then 10 req/s for 1 s: the search's staircase, and a short run for the rest.
PLANNED_REQUESTS = 15


@dataclass
class Service:
    """A target for the scenario: its `target:` value and, when the test started it, a count
    of the /health requests it answered."""

    kind: str
    target: str
    served: Callable[[], int] | None  # None: horde's embedded automaton, asked otherwise


# --- the external services ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def automaton_process() -> Iterator[Service]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "horde.automaton", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = (proc.stdout.readline() if proc.stdout else "").strip()
        assert line.startswith("listening "), line
        url = line.split(" ", 1)[1]

        def served() -> int:
            with urllib.request.urlopen(url + "/stats", timeout=5) as resp:
                return int(json.load(resp)["requests"]["health"])

        yield Service("automaton-process", url, served)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def plain_aiohttp() -> Iterator[Service]:
    """An aiohttp app with one route, /health, on its own thread and loop."""
    count = {"health": 0}

    async def health(request: web.Request) -> web.Response:
        count["health"] += 1
        return web.Response(text="ok")

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # port 0: the one it got
    thread = threading.Thread(target=loop.run_forever, name="plain-app", daemon=True)
    thread.start()
    try:
        yield Service("plain-aiohttp", f"http://127.0.0.1:{port}", lambda: count["health"])
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture(params=["embedded", "automaton-process", "plain-aiohttp"])
def service(request: pytest.FixtureRequest) -> Service:
    if request.param == "embedded":
        return Service("embedded", "embedded", None)
    return request.getfixturevalue(request.param.replace("-", "_"))


def _scenario(tmp_path: Path, service: Service, command: str) -> Path:
    path = tmp_path / f"{command}.yaml"
    path.write_text(SCENARIO.format(name=f"matrix-{command}", target=service.target))
    return path


def _cli(*args: str) -> tuple[int, str]:
    """Exit code and standard output (the error stream is shown when the code is wrong)."""
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if result.exit_code != 0:
        return result.exit_code, result.output
    return result.exit_code, result.stdout


def _served_by_bundles(root: Path) -> int:
    """What horde's embedded automaton served, from every bundle's manifest under `root`."""
    total = 0
    for manifest in root.rglob("manifest.json"):
        target = json.loads(manifest.read_text())["target"]
        assert target["embedded"] is True
        total += int(target["served"]["requests"]["health"])
    return total


def _check_served(service: Service, before: int | None, bundles: Path | None, at_least: int) -> None:
    if service.served is not None:
        assert before is not None
        assert service.served() - before >= at_least
    elif bundles is not None:
        assert _served_by_bundles(bundles) >= at_least


def _before(service: Service) -> int | None:
    return service.served() if service.served is not None else None


# --- the matrix -------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_run(ray_cluster, tmp_path, service):
    before = _before(service)
    code, out = _cli("run", str(_scenario(tmp_path, service, "run")), "--out", str(tmp_path / "out"), "-q")
    assert code == 0, out
    _check_served(service, before, tmp_path / "out", PLANNED_REQUESTS)


@pytest.mark.timeout(120)
def test_stress(ray_cluster, tmp_path, service):
    before = _before(service)
    code, out = _cli(
        "stress",
        str(_scenario(tmp_path, service, "stress")),
        "--no-recovery",
        "-q",
        "--out",
        str(tmp_path / "out"),
        "--json",
        str(tmp_path / "stress.json"),
    )
    assert code == 0, out
    report = json.loads((tmp_path / "stress.json").read_text())
    # (A 1 s hold is short enough for a busy machine's scheduling to show as a generator
    # hiccup at one step; that is named in the verdict and does not decide it.)
    assert report["search"]["verdict"].startswith("held up to the search maximum 10"), report["search"]["verdict"]
    assert report["search"]["limited_by"] is None and report["search"]["broke_at"] is None
    assert [s["level"] for s in report["search"]["steps"]] == [5, 10]
    if service.served is not None:
        _check_served(service, before, None, PLANNED_REQUESTS)
    else:  # the search ran against the automaton `horde stress` started: answered, and scraped
        bundle = Path(report["search"]["bundle"])
        total = json.loads((bundle / "summary.json").read_text())["total"]
        assert total["requests"] >= PLANNED_REQUESTS and total["errors"] == 0, total
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert manifest["target"]["metrics"] == manifest["target"]["url"].rstrip("/") + "/metrics"


@pytest.mark.timeout(120)
def test_monitor(tmp_path, service):
    before = _before(service)
    snapshot = tmp_path / "snapshot.json"
    code, out = _cli(
        "monitor",
        str(_scenario(tmp_path, service, "monitor")),
        "--duration",
        "1.5",
        "--interval",
        "0.5",
        "--history",
        str(tmp_path / "history.sqlite3"),
        "--snapshot",
        str(snapshot),
    )
    assert code == 0, out
    snap = json.loads(snapshot.read_text())
    assert snap["done"] and snap["totals"]["health"]["probes"] >= 3 and snap["totals"]["health"]["errors"] == 0
    if service.served is not None:
        assert service.served() - before >= 3
    else:  # horde's automaton answered, and its /metrics was read through the one scraper
        assert "target_memory" in snap["rolling"]["target"], snap["rolling"]["target"]


@pytest.mark.timeout(120)
def test_nightly(ray_cluster, tmp_path, service):
    before = _before(service)
    code, out = _cli(
        "nightly", str(_scenario(tmp_path, service, "nightly")), "--history", str(tmp_path / "nights"), "-q"
    )
    assert code == 0, out
    assert "no regression, no leak, thresholds passed" in out
    _check_served(service, before, tmp_path / "nights", PLANNED_REQUESTS)


@pytest.mark.timeout(120)
def test_bench(tmp_path, service):
    before = _before(service)
    code, out = _cli(
        "bench",
        str(_scenario(tmp_path, service, "bench")),
        "--group",
        "requests",
        "--iterations",
        "10",
        "--warmup",
        "2",
        "--out",
        str(tmp_path / "out"),
        "--json",
    )
    assert code == 0, out
    result = json.loads(out)
    assert not result["failed"], result["failed"]
    if service.served is not None:
        assert service.served() - before >= 12
    else:  # the embedded automaton answered every timed request with the expected status
        assert result["target_url"].startswith("embedded automaton"), result["target_url"]
        op = result["operations"]["requests.health"]
        assert op["n"] >= 10 and op["errors_by_class"] == {"ok": op["n"]}, op


@pytest.mark.timeout(180)
def test_submit(ray_cluster, tmp_path, service, monkeypatch):
    submitted: list[dict] = []
    work = tmp_path / "job"  # the job's working directory, as Ray would unpack the upload

    class JobServer:
        def submit_job(self, **kw):
            submitted.append(kw)
            # What Ray uploads: the job's own files exist in working_dir only during the call.
            job_files = Path(kw["runtime_env"]["working_dir"]) / ".horde-jobs" / kw["submission_id"]
            shutil.copytree(job_files, work / ".horde-jobs" / kw["submission_id"])
            return kw["submission_id"]

    monkeypatch.setattr(jobs, "_client", lambda address, token: JobServer())
    before = _before(service)
    code, out = _cli("submit", str(_scenario(tmp_path, service, "submit")), "--address", "http://127.0.0.1:9")
    assert code == 0, out
    [job] = submitted
    assert out.strip() == job["submission_id"]
    env = job["runtime_env"]["env_vars"]
    [shipped] = (work / ".horde-jobs" / job["submission_id"]).glob("*.yaml")
    assert f"target: {service.target}" in shipped.read_text()  # the scenario travels as written, as a file

    # The job, as Ray would start it in its working directory, but on the session's Ray.
    argv = shlex.split(job["entrypoint"])
    argv = [ray_cluster if a == "auto" else a for a in argv]
    done = subprocess.run(argv, cwd=work, env={**os.environ, **env}, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _check_served(service, before, work / "results", PLANNED_REQUESTS)


def test_the_matrix_covers_every_command_that_takes_a_scenario():
    """A command added later that takes a scenario file belongs in this matrix."""
    takes_file = sorted(
        name
        for name, cmd in cli.commands.items()
        if any(getattr(p, "name", None) in ("file", "targets") for p in cmd.params)
    )
    covered = sorted(name[len("test_") :] for name in globals() if name.startswith("test_")) + ["validate"]
    assert set(takes_file) <= set(covered), set(takes_file) - set(covered)
