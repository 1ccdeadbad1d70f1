"""cluster/jobs.py: the pieces without a cluster, then the real thing against `ray start --head`.

The cluster tests start a private Ray head on this machine (its own temp dir, HOME, free
ports, token auth on) and a reference automaton for the jobs to load, submit real
`horde run` jobs, and stop exactly the processes that head started, by PID: `ray stop`
would kill every Ray of this user on the machine, other sessions' included.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from horde.cluster import jobs
from horde.cluster.allocator import allocator_env
from horde.cluster.jobs import JobsError
from horde.coordinator.bundle.store import read_bundle

REPO = Path(__file__).resolve().parents[2]


# --- without a cluster ---------------------------------------------------------------------


def test_job_ids_are_prefixed_readable_and_distinct():
    a, b = jobs.new_job_id("Checkout Flow!"), jobs.new_job_id("Checkout Flow!")
    assert a.startswith("horde-checkout-flow-") and a != b
    assert jobs._JOB_ID_RE.match(a)


def test_entrypoint_runs_horde_through_the_exec_wrapper():
    cmd = jobs.job_entrypoint(
        "horde-x-1",
        ".horde-jobs/horde-x-1/my scenario.yaml",
        set_file=".horde-jobs/horde-x-1/overrides.json",
        scenario_from_env=True,
    )
    argv = shlex.split(cmd)
    sep = argv.index("--")
    wrapper, run = argv[:sep], argv[sep + 1 :]
    assert wrapper[:4] == ["python", "-m", "horde.cluster.jobs", "exec"]
    assert wrapper[wrapper.index("--bundles") + 1] == "results/horde-x-1"
    assert wrapper[wrapper.index("--scenario-from-env") + 1] == ".horde-jobs/horde-x-1/my scenario.yaml"
    assert run[:5] == ["python", "-m", "horde.coordinator.cli", "run", ".horde-jobs/horde-x-1/my scenario.yaml"]
    assert run[run.index("--out") + 1] == "results/horde-x-1"
    assert run[run.index("--address") + 1] == "auto"  # the job's driver attaches to its own cluster
    assert "--set" not in run  # --set values travel in a file, never on the command line
    assert run[run.index("--set-file") + 1] == ".horde-jobs/horde-x-1/overrides.json"


def test_runtime_env_ships_the_repo_without_results_and_merges_extras(tmp_path):
    env = jobs.build_runtime_env(
        tmp_path,
        "horde-x",
        scenario_text="name: x\n",
        extra={"env_vars": {"API_TOKEN": "t"}, "excludes": ["bench/"], "pip": ["x"]},
    )
    assert env["working_dir"] == str(tmp_path)
    assert {".git", "results/", "bench/"} <= set(env["excludes"])
    assert env["env_vars"] == {
        "HORDE_JOB_ID": "horde-x",
        "RAY_JOB_STOP_WAIT_TIME_S": str(jobs.STOP_GRACE_S),
        "HORDE_SCENARIO_YAML": "name: x\n",
        "API_TOKEN": "t",
        **allocator_env(),  # the job's processes get horde's malloc set-up
    }
    assert {"MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} <= set(env["env_vars"])
    assert env["pip"] == ["x"]


def test_submit_passes_a_shipped_scenario_by_path_and_carries_any_other(monkeypatch, tmp_path):
    calls = []

    class FakeClient:
        def submit_job(self, **kw):
            calls.append(kw)
            return kw["submission_id"]

    monkeypatch.setattr(jobs, "_client", lambda address, token: FakeClient())
    job_id = jobs.submit(REPO / "scenarios" / "smoke.yaml", address="http://head:8265", job_id="nightly-1")
    assert job_id == "horde-nightly-1"
    assert "horde.coordinator.cli run scenarios/smoke.yaml" in calls[-1]["entrypoint"]
    assert "HORDE_SCENARIO_YAML" not in calls[-1]["runtime_env"]["env_vars"]
    assert calls[-1]["runtime_env"]["working_dir"] == str(REPO)

    outside = tmp_path / "mine.yaml"
    outside.write_text("name: mine\n")
    wd = tmp_path / "wd"
    wd.mkdir()
    uploaded = {}

    def upload(**kw):  # what Ray's upload would find in working_dir during submit_job
        uploaded.update({p.relative_to(wd).as_posix(): p.read_text() for p in wd.rglob("*") if p.is_file()})
        return kw["submission_id"]

    FakeClient.submit_job = lambda self, **kw: (calls.append(kw), upload(**kw))[1]
    job_id = jobs.submit(outside, address="http://head:8265", working_dir=wd, overrides=["agents=2"])
    # The scenario and the overrides travel as files in the working_dir upload, then are removed.
    assert uploaded == {
        f".horde-jobs/{job_id}/mine.yaml": "name: mine\n",
        f".horde-jobs/{job_id}/overrides.json": '["agents=2"]',
    }
    assert not list(wd.rglob("*"))
    assert "HORDE_SCENARIO_YAML" not in calls[-1]["runtime_env"]["env_vars"]
    run_args = f"run .horde-jobs/{job_id}/mine.yaml --set-file .horde-jobs/{job_id}/overrides.json"
    assert run_args in calls[-1]["entrypoint"]
    assert "agents=2" not in calls[-1]["entrypoint"]

    with pytest.raises(JobsError, match="no such file"):
        jobs.submit(tmp_path / "missing.yaml", address="http://head:8265")
    with pytest.raises(JobsError, match="job id"):
        jobs.submit(outside, address="http://head:8265", job_id="a b")


def test_a_git_ignored_file_in_the_repo_is_not_shipped_by_ray():
    assert jobs._shipped_with(REPO, Path("scenarios/smoke.yaml"))
    assert not jobs._shipped_with(REPO, Path("results/x.yaml"))
    assert not jobs._shipped_with(REPO, Path("agents/__pycache__/x.yaml"))


def test_auth_token_comes_from_where_ray_looks_in_rays_order(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: home))
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(var, raising=False)
    assert jobs.auth_headers() == {}  # no token anywhere: no header, fine for a cluster without auth
    (home / ".ray" / "auth_token").write_text("from-file\n")
    assert jobs.auth_headers() == {"Authorization": "Bearer from-file"}
    (tmp_path / "tok").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert jobs.auth_headers() == {"Authorization": "Bearer from-path"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert jobs.auth_headers() == {"Authorization": "Bearer from-env"}
    assert jobs.auth_headers("explicit") == {"Authorization": "Bearer explicit"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert jobs.auth_headers() == {}
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(JobsError, match="RAY_AUTH_TOKEN_PATH"):
        jobs.auth_headers()


def _fake_bundle(root: Path, name: str = "smoke-20260101T000000Z") -> Path:
    b = root / name
    (b / "sub").mkdir(parents=True)
    (b / "manifest.json").write_text('{"complete": true}')
    (b / "sub" / "x.bin").write_bytes(bytes(range(256)) * 10)
    return b


def test_export_then_unpack_gives_the_same_bundle(tmp_path):
    bundle = _fake_bundle(tmp_path / "out")
    archive = jobs.export_bundle_for_fetch(bundle, job_id="horde-x", logs_dir=tmp_path / "logs")
    assert archive == tmp_path / "logs" / "horde-bundles" / "horde-x.tar.gz"
    assert [p.name for p in archive.parent.iterdir()] == ["horde-x.tar.gz"]  # no temporary file left
    dest = tmp_path / "home"
    dest.mkdir()
    got = jobs._unpack(archive, dest, "horde-x")
    assert got == dest / bundle.name
    assert (got / "sub" / "x.bin").read_bytes() == (bundle / "sub" / "x.bin").read_bytes()
    with pytest.raises(JobsError, match="already exists"):
        jobs._unpack(archive, dest, "horde-x")


def test_unpack_refuses_an_archive_that_escapes(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    (tmp_path / "f").write_text("x")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(tmp_path / "f", arcname="../escaped")
    (tmp_path / "dest").mkdir()
    with pytest.raises(JobsError):
        jobs._unpack(evil, tmp_path / "dest", "horde-x")
    assert not (tmp_path / "escaped").exists()


def test_export_outside_a_job_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("HORDE_JOB_ID", raising=False)
    with pytest.raises(JobsError, match="HORDE_JOB_ID"):
        jobs.export_bundle_for_fetch(_fake_bundle(tmp_path), logs_dir=tmp_path)


def test_exec_wrapper_writes_the_scenario_runs_the_command_and_exports_its_bundle(tmp_path):
    out = tmp_path / "results" / "horde-t"
    script = textwrap.dedent(f"""
        import pathlib, sys
        assert pathlib.Path("scen/s.yaml").read_text() == "name: s\\n"
        b = pathlib.Path({str(out)!r}) / "s-1.incomplete"
        b.mkdir(parents=True)
        (b / "manifest.json").write_text("{{}}")
        sys.exit(4)
    """)
    env = dict(os.environ, HORDE_RAY_LOGS_DIR=str(tmp_path / "logs"), HORDE_SCENARIO_YAML="name: s\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "horde.cluster.jobs",
            "exec",
            "--job-id",
            "horde-t",
            "--bundles",
            str(out),
            "--scenario-from-env",
            "scen/s.yaml",
            "--",
            sys.executable,
            "-c",
            script,
        ],
        cwd=tmp_path,
        env=env | {"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 4, proc.stderr  # the run's own exit code
    assert "exported" in proc.stdout
    with tarfile.open(tmp_path / "logs" / "horde-bundles" / "horde-t.tar.gz") as tar:
        assert "s-1.incomplete/manifest.json" in tar.getnames()


def test_an_unreachable_or_wrong_address_says_what_to_do():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(JobsError, match="cannot reach the Ray job server.*ray dashboard"):
        jobs.list_jobs(f"127.0.0.1:{port}")
    with pytest.raises(JobsError, match="dashboard's HTTP port"):
        jobs.status("ray://head:10001", "horde-x")


# --- against a real `ray start --head` -------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        time.sleep(0.25)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:.0f}s")


def _processes_of(temp_dir: str, gcs_port: int) -> list[psutil.Process]:
    """Every process the head started: its cmdline names our temp dir or our GCS port, or it
    descends from one that does. Never this test process or its parents."""
    mine = {os.getpid()} | {p.pid for p in psutil.Process().parents()}
    roots = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            args = p.info["cmdline"] or []
        except psutil.Error:
            continue
        if p.pid in mine:
            continue
        if any(temp_dir in a or a.endswith(f":{gcs_port}") for a in args):
            roots.append(p)
    found = {p.pid: p for p in roots}
    for p in roots:
        with contextlib.suppress(psutil.Error):
            for c in p.children(recursive=True):
                if c.pid not in mine:
                    found[c.pid] = c
    return list(found.values())


def _kill_by_pid(procs: list[psutil.Process]) -> None:
    # SIGKILL at once: a throwaway cluster has nothing to save, and raylet and GCS take
    # seconds to act on SIGTERM.
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=10)


@pytest.fixture(scope="module")
def ray_head():
    """A private Ray head with token auth on loopback's dashboard; yields (address, token)."""
    # Short: Ray's unix socket paths live under it and must stay < 108 bytes.
    temp_dir = tempfile.mkdtemp(prefix="hj", dir="/tmp")
    home = Path(temp_dir) / "home"
    home.mkdir()
    token = secrets.token_hex(16)
    (gcs, dash, agent_http, agent_grpc, env_agent, metrics, client, node_manager, object_manager) = _free_ports(9)
    env = dict(
        os.environ,
        HOME=str(home),
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        # the job's `python` is this interpreter, with horde installed
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    env.pop("RAY_ADDRESS", None)
    cmd = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--head",
        f"--port={gcs}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        "--include-dashboard=true",
        "--num-cpus=2",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
        f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={env_agent}",
        f"--metrics-export-port={metrics}",
        f"--ray-client-server-port={client}",
        f"--node-manager-port={node_manager}",
        f"--object-manager-port={object_manager}",
        "--no-monitor",
    ]
    try:
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        if started.returncode != 0:
            pytest.fail(f"ray start failed ({started.returncode}):\n{started.stdout[-3000:]}\n{started.stderr[-3000:]}")
        _wait_port(dash, 60)
        _wait_port(agent_http, 60)  # the job agent: submissions fail until it is up
        yield f"http://127.0.0.1:{dash}", token
    finally:
        _kill_by_pid(_processes_of(temp_dir, gcs))
        leftovers = _processes_of(temp_dir, gcs)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not leftovers, f"processes of the test's Ray head survived: {[p.pid for p in leftovers]}"


@pytest.fixture(scope="module")
def automaton_url():
    proc = subprocess.Popen(
        [sys.executable, "-m", "horde.automaton", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("listening "), line
        yield line.split(" ", 1)[1]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def scenario(tmp_path):
    # Outside the repository on purpose: it travels in the job's environment.
    p = tmp_path / "tiny.yaml"
    p.write_text(
        textwrap.dedent("""\
        name: tiny
        target: http://127.0.0.1:9/unused
        requests:
          - {name: health, method: GET, path: /health, expect: [200]}
        workload:
          model: open
          arrivals: constant
          start: 20
          stages:
            - {name: hold, duration: 3s, target: 20}
        agents: 1
        flush_interval: 1s
    """)
    )
    return p


async def _follow(address, token, job_id, *, until: str | None = None, timeout_s: float = 90.0) -> str:
    seen: list[str] = []

    async def consume() -> None:
        async with contextlib.aclosing(jobs.follow_logs(address, job_id, token=token)) as chunks:
            async for chunk in chunks:
                seen.append(chunk)
                if until is not None and until in "".join(seen):
                    return

    await asyncio.wait_for(consume(), timeout_s)
    return "".join(seen)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_submit_follow_fetch(ray_head, automaton_url, scenario, tmp_path):
    address, token = ray_head
    job_id = jobs.submit(scenario, address=address, token=token, overrides=[f"target={automaton_url}"])
    assert job_id.startswith("horde-tiny-")
    assert job_id in [j.job_id for j in jobs.list_jobs(address, token=token)]

    output = asyncio.run(_follow(address, token, job_id))
    info = jobs.status(address, job_id, token=token)
    assert info.status == "SUCCEEDED", output[-3000:]
    assert info.driver_exit_code == 0
    assert "horde run tiny: passed" in output and "exported" in output
    assert "horde run tiny: passed" in jobs.logs(address, job_id, token=token)

    bundle = read_bundle(jobs.fetch(address, job_id, tmp_path / "home", token=token))
    assert bundle.complete
    assert bundle.summary["total"]["requests"] == 60  # 20/s for 3 s
    assert bundle.manifest["cluster"]["kind"] == "attached"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_stop_a_running_job_and_still_fetch_its_incomplete_bundle(ray_head, automaton_url, scenario, tmp_path):
    address, token = ray_head
    job_id = jobs.submit(
        scenario,
        address=address,
        token=token,
        overrides=[f"target={automaton_url}", "workload.stages[0].duration=120s"],
    )
    asyncio.run(_follow(address, token, job_id, until="[    1s]"))  # the run is under way
    with pytest.raises(JobsError, match="RUNNING"):
        jobs.fetch(address, job_id, tmp_path, token=token)

    info = jobs.stop(address, job_id, token=token)
    assert info.status == "STOPPED"
    bundle = read_bundle(jobs.fetch(address, job_id, tmp_path / "home", token=token))
    assert not bundle.complete
    assert bundle.manifest["outcome"] == "interrupted"
    assert sum(w["total"]["requests"] for w in bundle.windows()) >= 1


@pytest.mark.slow
def test_clear_errors_from_a_live_cluster(ray_head):
    address, token = ray_head
    with pytest.raises(JobsError, match="no job horde-nope"):
        jobs.status(address, "horde-nope", token=token)
    with pytest.raises(JobsError, match="no job horde-nope"):
        jobs.fetch(address, "horde-nope", "/nonexistent", token=token)
    with pytest.raises(JobsError, match="rejected the token.*RAY_AUTH_TOKEN"):
        jobs.list_jobs(address, token="not-the-token")
