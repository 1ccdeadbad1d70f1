"""The embedded Ray listens on loopback only, keeps token auth on, and starts quietly.

One Ray per process: the embedded Ray under test runs in a subprocess of its own (the test
session has its own Ray), which lists the listening sockets of every process it started,
found by PID, while a task and an actor keep workers alive.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.slow]

# Runs in the subprocess: start the embedded Ray the way a run does, make it start workers,
# then report every socket its processes listen on (TCP) or are bound to (UDP).
_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import psutil
    import ray
    from horde.cluster.connect import connect, ray_binding

    conn = connect(None, num_cpus=1)

    @ray.remote
    def pid():
        return os.getpid()

    @ray.remote
    class Holder:
        def pid(self):
            return os.getpid()

    holder = Holder.remote()
    ray.get([pid.remote(), holder.pid.remote()])
    me = psutil.Process()
    names = {me.pid: "driver"}
    for p in me.children(recursive=True):
        try:
            names[p.pid] = " ".join(p.cmdline()[:1]).rsplit("/", 1)[-1] or p.name()
        except psutil.Error:
            pass  # a worker that exited meanwhile listens on nothing
    sockets = []
    for c in psutil.net_connections(kind="inet"):
        listening = c.status == psutil.CONN_LISTEN or (c.type == 2 and c.laddr)  # 2: SOCK_DGRAM
        if c.pid in names and listening:
            sockets.append({"pid": c.pid, "process": names[c.pid], "ip": c.laddr.ip, "port": c.laddr.port})
    print("SOCKETS " + json.dumps(sockets), flush=True)
    print("BINDING " + json.dumps(ray_binding(conn.shape.kind)), flush=True)
    print("AUTH " + os.environ.get("RAY_AUTH_MODE", ""), flush=True)
    token = os.path.expanduser("~/.ray/auth_token")
    print("TOKEN " + json.dumps([os.path.getsize(token), oct(os.stat(token).st_mode & 0o777)]), flush=True)
    conn.close()
    """
)

# Ports that Ray cannot bind to loopback (docs/security.md, "Ports a run opens"): none today.
DOCUMENTED_EXCEPTIONS: set[str] = set()


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # ::ffff:127.0.0.1, a dual-stack socket bound to 127.0.0.1
    return addr.is_loopback


def _line(out: str, tag: str) -> str:
    for line in out.splitlines():
        if line.startswith(tag + " "):
            return line[len(tag) + 1 :]
    raise AssertionError(f"no {tag} line in the subprocess output:\n{out}")


def test_is_loopback_tells_wildcards_and_routable_addresses_apart():
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("::ffff:127.0.0.1")
    assert not _is_loopback("::") and not _is_loopback("0.0.0.0") and not _is_loopback("192.0.2.2")


def test_ray_binding_says_where_each_kind_of_ray_listens(monkeypatch):
    from horde.cluster.connect import ray_binding

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert ray_binding("embedded") == {"host": "127.0.0.1", "auth": "token"}
    assert ray_binding("attached") == {"host": "0.0.0.0", "auth": "token"}
    assert ray_binding("in-process") is None  # no Ray, no port
    monkeypatch.setenv("RAY_AUTH_MODE", "Disabled")
    assert ray_binding("embedded") == {"host": "127.0.0.1", "auth": "disabled"}


@pytest.mark.timeout(180)
def test_embedded_ray_listens_on_loopback_only_and_keeps_token_auth(tmp_path):
    env = dict(os.environ, HOME=str(tmp_path), RAY_USAGE_STATS_ENABLED="0")
    # The test session's own Ray exported RAY_AUTH_MODE=token; a user's shell has none, and
    # that is when Ray prints its token-auth line.
    env.pop("RAY_AUTH_MODE", None)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=150, cwd=tmp_path
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    sockets = json.loads(_line(proc.stdout, "SOCKETS"))
    # The listing found Ray's servers at all (else "all on loopback" would hold vacuously).
    processes = {s["process"] for s in sockets}
    assert {"gcs_server", "raylet", "driver"} <= processes, sockets
    exposed = [s for s in sockets if not _is_loopback(s["ip"]) and s["process"] not in DOCUMENTED_EXCEPTIONS]
    assert exposed == [], f"sockets of the embedded Ray not on loopback: {exposed}"
    assert json.loads(_line(proc.stdout, "BINDING")) == {"host": "127.0.0.1", "auth": "token"}
    assert _line(proc.stdout, "AUTH") == "token"  # Ray still turned token auth on
    # Ray generated the token into a file only this user can read (other local users can
    # reach 127.0.0.1: the token is what keeps them out).
    assert json.loads(_line(proc.stdout, "TOKEN")) == [64, "0o600"]
    assert "Token authentication is enabled" not in out


@pytest.mark.parametrize(
    "address, loopback",
    [
        ("127.0.0.1:6379", True),  # the embedded Ray of another horde on this machine
        ("127.0.0.2:6379", True),  # all of 127.0.0.0/8 is loopback
        ("localhost:6379", True),
        ("[::1]:6379", True),
        ("ray://127.0.0.1:10001", True),
        ("198.18.0.1:6379", False),  # a real cluster's head
        ("auto", False),  # inside a Ray job: whatever the job's cluster is
        ("head.example:6379", False),
    ],
)
def test_an_address_on_loopback_is_recognised(address, loopback):
    from horde.cluster.connect import _is_loopback

    assert _is_loopback(address) is loopback
