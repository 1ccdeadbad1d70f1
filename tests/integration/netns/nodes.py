"""Ray nodes started with `ray start` inside namespaces, and process faults on them.

Every process in a test namespace was started by the test, so `ip netns pids` is the list
of what to signal or stop; nothing is ever found by name (`ray stop` would stop every Ray
on the machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from horde.cluster.connect import STREAM_INLINE_BYTES
from tests.integration.netns.net import netns_pids

RAY_PORT = 6379
OBJECT_STORE_BYTES = 100 * 1024 * 1024  # the default (30% of RAM per node) is far more than a test needs


def script(name: str) -> str:
    """A console script of this interpreter's environment (`ray`, `horde`), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def node_env(home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every Ray process and horde run of the cluster: one private HOME
    (Ray 2.60 keeps its auth token there), no usage stats, no metrics exporter."""
    # Nothing of this process's own Ray: ray.init (the session's embedded Ray, in the full
    # suite) exports RAY_AUTH_MODE=token and others, which a `ray start` in a namespace
    # would take up (and refuse to start without that cluster's token).
    env = {k: v for k, v in (base if base is not None else os.environ).items() if not k.startswith("RAY_")}
    env.update(
        HOME=str(home),
        RAY_USAGE_STATS_ENABLED="0",
        RAY_enable_metrics_collection="0",
        RAY_max_direct_call_object_size=str(STREAM_INLINE_BYTES),  # as ray-config.yaml starts a node
        PYTHONUNBUFFERED="1",
    )
    return env


def in_netns(netns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


def ray_start(
    netns: str,
    address: str,
    *,
    env: Mapping[str, str],
    temp_dir: Path,
    head_address: str | None,
    num_cpus: int,
    log: Path,
) -> None:
    """`ray start` one node in `netns` (the head when head_address is None); returns once it is up."""
    argv = [
        script("ray"),
        "start",
        "--node-ip-address",
        address,
        "--num-cpus",
        str(num_cpus),
        "--disable-usage-stats",
        "--object-store-memory",
        str(OBJECT_STORE_BYTES),
    ]
    if head_address is None:
        argv += ["--head", "--port", str(RAY_PORT), "--include-dashboard=false", "--temp-dir", str(temp_dir)]
    else:
        argv += ["--address", head_address]
    with log.open("ab") as out:
        done = subprocess.run(
            in_netns(netns, argv), env=dict(env), stdout=out, stderr=subprocess.STDOUT, timeout=120, check=False
        )
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"`ray start` in {netns} failed ({done.returncode}):\n{tail}")


def signal_netns(netns: str, sig: int) -> list[int]:
    """Send `sig` to every process in the namespace; returns the PIDs signalled."""
    pids = netns_pids(netns)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return pids


def stop_netns(netns: str, grace_s: float = 3.0) -> list[int]:
    """SIGTERM everything in the namespace, then SIGKILL what is left; returns PIDs still there."""
    signal_netns(netns, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
    signal_netns(netns, signal.SIGTERM)
    end = time.monotonic() + grace_s
    while time.monotonic() < end and netns_pids(netns):
        time.sleep(0.1)
    signal_netns(netns, signal.SIGKILL)
    end = time.monotonic() + 5.0
    while time.monotonic() < end and netns_pids(netns):
        time.sleep(0.1)
    return netns_pids(netns)
