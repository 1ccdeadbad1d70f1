"""`horde up` / `horde run` / `horde down`: runs attach to the warm loopback Ray and say so,
against the embedded automaton and a plain aiohttp app in a subprocess; `horde down` leaves
none of the processes the head started (checked by PID and start time); stale records are
reported, not used. The stale cases need no Ray; the round trip starts one (one Ray start).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from horde.coordinator.commands import up as warm

SCENARIO = """
name: warm
target: {target}
requests:
  - {{name: root, path: {path}, expect: [200]}}
workload:
  model: open
  start: 10
  stages: [{{duration: 1s, target: 10}}]
agents: 1
"""

APP = """
import sys
from aiohttp import web

async def root(request):
    return web.Response(text="ok")

app = web.Application()
app.router.add_get("/", root)
runner = web.AppRunner(app)

async def main():
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

import asyncio
asyncio.run(main())
"""


def _horde(env: dict, *argv: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "horde.coordinator.cli", *argv], capture_output=True, text=True, env=env, timeout=timeout
    )


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "HORDE_STATE_DIR": str(tmp_path / "state")}


def _newest_bundle(out: Path) -> Path:
    return max((p for p in out.iterdir() if (p / "summary.json").exists()), key=lambda p: p.stat().st_mtime)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_runs_attach_to_the_warm_ray_and_down_leaves_nothing_it_started(tmp_path):
    env = _env(tmp_path)
    app = subprocess.Popen([sys.executable, "-c", APP], stdout=subprocess.PIPE, text=True)
    head_pid = None
    try:
        started = _horde(env, "up", "--num-cpus", "2")
        assert started.returncode == 0, started.stderr
        state = json.loads((tmp_path / "state" / "up.json").read_text())
        head_pid = state["pid"]
        assert state["address"].startswith("127.0.0.1:")
        assert _horde(env, "up").stdout.startswith("horde: the warm Ray is already up")

        assert app.stdout is not None
        port = int(app.stdout.readline())
        for target, path in (("embedded", "/health"), (f"http://127.0.0.1:{port}", "/")):
            scenario = tmp_path / "s.yaml"
            scenario.write_text(textwrap.dedent(SCENARIO.format(target=target, path=path)))
            r = _horde(env, "run", str(scenario), "-q", "--out", str(tmp_path / "out"))
            assert r.returncode == 0, r.stderr[-3000:]
            assert f"attached to the warm Ray of `horde up` at {state['address']}" in r.stderr
            bundle = _newest_bundle(tmp_path / "out")
            manifest = json.loads((bundle / "manifest.json").read_text())
            summary = json.loads((bundle / "summary.json").read_text())
            assert manifest["cluster"]["kind"] == "warm"
            assert manifest["cluster"]["ray_binding"]["host"] == "127.0.0.1"
            assert summary["total"]["requests"] >= 5
            cpu = summary["cpu"]
            assert cpu["startup_s"] > 0 and cpu["per_request_us"] > 0, cpu
            assert cpu["scope"] == "coordinator"  # the warm Ray's processes are not this run's

        head = psutil.Process(head_pid)
        tree = {p.pid: p.create_time() for p in [head, *head.children(recursive=True)]}
        assert len(tree) >= 3  # the head, Ray's GCS and raylet at least
        stopped = _horde(env, "down")
        assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr
        assert not (tmp_path / "state" / "up.json").exists()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (alive := [pid for pid, t in tree.items() if warm._alive(pid, t)]):
            time.sleep(0.2)
        assert not alive, f"still running after horde down: {alive}"
        assert _horde(env, "down").stdout.startswith("horde: no warm Ray is up")
    finally:
        app.kill()
        app.wait()
        if head_pid is not None and (tmp_path / "state" / "up.json").exists():
            _horde(env, "down")


_LISTENERS: list[socket.socket] = []  # kept open: a recorded address that answers


def _record(tmp_path: Path, monkeypatch, **changes) -> warm.WarmHead:
    monkeypatch.setenv("HORDE_STATE_DIR", str(tmp_path / "state"))
    me = psutil.Process()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    _LISTENERS.append(listener)
    head = warm.WarmHead(
        address=f"127.0.0.1:{listener.getsockname()[1]}",
        pid=me.pid,
        create_time=me.create_time(),
        session_dir="",
        auth="token",
        **warm._identity(),
    )
    head = warm.WarmHead(**{**head.__dict__, **changes})
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "state" / "up.json").write_text(json.dumps(head.__dict__))
    return head


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({}, None),  # this process, a listening address, this horde: usable
        ({"pid": 2**22 + 17}, "is gone"),
        ({"create_time": 1.0}, "is gone"),  # the PID now belongs to another process
        ({"address": "127.0.0.1:PORT"}, "does not answer"),
        ({"horde_version": "0.0.1"}, "horde version 0.0.1"),
        ({"horde_path": "/elsewhere"}, "horde path /elsewhere"),
        ({"ray_version": "2.0.0"}, "ray version 2.0.0"),
    ],
)
def test_a_stale_record_says_why(tmp_path, monkeypatch, changes, reason):
    if changes.get("address") == "127.0.0.1:PORT":
        changes = {"address": f"127.0.0.1:{_free_port()}"}
    head = _record(tmp_path, monkeypatch, **changes)
    got = warm.stale_reason(warm.read_state() or head)
    assert got == reason if reason is None else reason in (got or "")


def test_run_reports_a_stale_head_and_does_not_use_it(tmp_path, monkeypatch, capsys):
    _record(tmp_path, monkeypatch, pid=2**22 + 17)
    assert warm.warm_address() is None
    assert "the warm Ray of `horde up` is stale (its process 4194321 is gone); starting an embedded Ray" in (
        capsys.readouterr().err
    )


def test_down_clears_a_stale_or_damaged_record_without_signalling_anyone(tmp_path, monkeypatch):
    env = _env(tmp_path)
    _record(tmp_path, monkeypatch, pid=2**22 + 17)
    r = _horde(env, "up")  # refuses to start over a stale record
    assert r.returncode == 1 and "a stale warm Ray is recorded (its process 4194321 is gone)" in r.stderr
    r = _horde(env, "down")
    assert r.returncode == 0 and "already gone; record cleared" in r.stdout
    assert not (tmp_path / "state" / "up.json").exists()
    (tmp_path / "state" / "up.json").write_text("{not json")
    r = _horde(env, "run", str(tmp_path / "missing.yaml"))  # the scenario is read first
    assert r.returncode != 0
    r = _horde(env, "down")
    assert r.returncode == 0 and "not a horde up record" in r.stderr
    assert not (tmp_path / "state" / "up.json").exists()
