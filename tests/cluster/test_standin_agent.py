"""cluster/standin_agent.py: what the lean head's raylet starts in place of Ray's two agents.

It must write the port files the raylet waits for, refuse a runtime_env with a reply the
raylet parses as a failure (not a network error, which the raylet retries and then ends the
node for), and end when the raylet does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from horde.cluster import standin_agent
from horde.cluster.connect import standin_agent_args

STANDIN = Path(standin_agent.__file__)
NODE = "ab" * 28


def _ray_style(args: list[str]) -> str:
    return subprocess.list2cmdline(args)  # how Ray writes an agent's command into the raylet's


def test_the_raylet_command_gets_the_standins_and_keeps_everything_else():
    dash = ["/py", "-u", "/ray/dashboard/agent.py", f"--node-id={NODE}", "--session-dir=/tmp/s x", "--grpc-port=0"]
    renv = ["/py", "-u", "/ray/runtime_env/agent/main.py", f"--node-id={NODE}", "--session-dir=/tmp/s x"]
    cmd = [
        "raylet",
        "--head",
        f"--dashboard_agent_command={_ray_style(dash)}",
        f"--runtime_env_agent_command={_ray_style(renv)}",
    ]
    out = standin_agent_args(cmd)
    assert out[:2] == cmd[:2]
    for arg, kind in zip(out[2:], ("dashboard", "runtime_env")):
        assert str(STANDIN) in arg and f"--kind={kind}" in arg
        assert f"--node-id={NODE}" in arg and '"--session-dir=/tmp/s x"' in arg  # quoted as Ray quotes
        assert "-S -I" in arg  # no site packages: it imports nothing of Ray's
        assert "/ray/dashboard/agent.py" not in arg and "main.py" not in arg


def test_an_agent_command_without_its_session_keeps_rays_own():
    cmd = ["raylet", "--dashboard_agent_command=/py /ray/dashboard/agent.py --grpc-port=0"]
    assert standin_agent_args(cmd) == cmd


def test_the_refusal_is_a_failed_reply_in_rays_own_protobuf():
    from ray.core.generated.runtime_env_agent_pb2 import GetOrCreateRuntimeEnvReply

    long = "x" * 300  # a length that needs two varint bytes
    reply = GetOrCreateRuntimeEnvReply.FromString(standin_agent.failed_reply(long))
    assert reply.status == 1 and reply.error_message == long  # AGENT_RPC_STATUS_FAILED


def _spawn_orphanable(tmp_path: Path, kind: str) -> tuple[subprocess.Popen, int]:
    """A parent process that starts the stand-in and then waits to be told to exit."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import subprocess, sys
                child = subprocess.Popen([sys.executable, "-S", "-I", {str(STANDIN)!r}, "--kind={kind}",
                    "--session-dir={tmp_path}", "--node-id={NODE}", "--disable-metrics-collection"])
                print(child.pid, flush=True)
                sys.stdin.read()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    return parent, int(parent.stdout.readline())


def _wait_for(path: Path, timeout_s: float = 10.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text()
        time.sleep(0.02)
    raise AssertionError(f"{path.name} was not written")


def _ends_with_parent(parent: subprocess.Popen, child_pid: int) -> None:
    child = psutil.Process(child_pid)
    assert child.is_running()
    assert parent.stdin is not None
    parent.stdin.close()  # the parent (the raylet's place) exits; the stand-in is orphaned
    parent.wait(timeout=10)
    child.wait(timeout=10)  # psutil.TimeoutExpired if it outlived its parent


@pytest.mark.timeout(60)
def test_the_dashboard_standin_writes_no_ports_and_ends_with_its_parent(tmp_path):
    parent, child_pid = _spawn_orphanable(tmp_path, "dashboard")
    try:
        for name in standin_agent.PORT_NAMES["dashboard"]:
            assert _wait_for(tmp_path / f"{name}_{NODE}") == "-1"
        assert not [p for p in os.listdir(tmp_path) if ".standin-" in p]  # no temporary file left
        _ends_with_parent(parent, child_pid)
    finally:
        parent.kill()


@pytest.mark.timeout(60)
def test_the_runtime_env_standin_refuses_and_releases_and_ends_with_its_parent(tmp_path):
    from ray.core.generated.runtime_env_agent_pb2 import (
        DeleteRuntimeEnvIfPossibleReply,
        GetOrCreateRuntimeEnvReply,
    )

    parent, child_pid = _spawn_orphanable(tmp_path, "runtime_env")
    try:
        port = int(_wait_for(tmp_path / f"runtime_env_agent_port_{NODE}"))
        assert port > 0

        def post(path: str) -> bytes:
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"\x0a\x00", method="POST")
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 200
                return resp.read()

        prepared = GetOrCreateRuntimeEnvReply.FromString(post("/get_or_create_runtime_env"))
        assert prepared.status == 1 and "runtime-env agent" in prepared.error_message
        released = DeleteRuntimeEnvIfPossibleReply.FromString(post("/delete_runtime_env_if_possible"))
        assert released.status == 0
        _ends_with_parent(parent, child_pid)
    finally:
        parent.kill()


@pytest.mark.timeout(120)
def test_on_the_embedded_ray_the_agents_are_standins_and_a_runtime_env_fails_at_once(ray_cluster):
    import ray
    from ray.exceptions import RuntimeEnvSetupError

    session = ray._private.worker.global_worker.node.get_session_dir_path()
    standins = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(STANDIN) in (p.info["cmdline"] or []) and f"--session-dir={session}" in cmd:
            standins.append(cmd)
        assert not ("dashboard/agent.py" in cmd and session in cmd), "Ray's own dashboard agent runs"
    assert sorted("--kind=runtime_env" in c for c in standins) == [False, True], standins

    @ray.remote
    def env_var():
        return os.environ.get("HORDE_STANDIN_PROBE")

    start = time.monotonic()
    with pytest.raises(RuntimeEnvSetupError, match="runtime-env agent"):
        ray.get(env_var.options(runtime_env={"env_vars": {"HORDE_STANDIN_PROBE": "1"}}).remote(), timeout=60)
    assert time.monotonic() - start < 30  # refused, not retried until the raylet gives up
    assert ray.get(env_var.remote(), timeout=60) is None  # and the node still serves tasks


def test_a_head_with_standins_says_so_to_runs_that_attach(ray_cluster):
    from horde.cluster.connect import _standin_head_at

    # the session's embedded Ray: a run attaching to it ships no runtime_env (none can be made there)
    assert _standin_head_at(ray_cluster) is True
    assert _standin_head_at("198.18.0.1:6379") is False  # not this machine: never asked
    assert _standin_head_at("ray://127.0.0.1:10001") is False  # Ray client: its own server
