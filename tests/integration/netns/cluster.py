"""A Ray cluster in network namespaces: a head (0 CPUs: the coordinator runs there), worker
nodes of 1 CPU each, and a counting target in a namespace of its own."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.netns.net import SUBNET_PREFIX, Network, netns_pids
from tests.integration.netns.nodes import RAY_PORT, in_netns, node_env, ray_start, signal_netns, stop_netns
from tests.integration.netns.target import COUNTS_PATH

HEAD_OCTET = 1
TARGET_OCTET = 100
TARGET_PORT = 8080
WORKER_OCTETS = (11, 12, 13)
_TARGET_SCRIPT = Path(__file__).with_name("target.py")

# A short Python run on the head that lists the cluster's nodes: node id -> address, alive, free CPUs.
_NODES_PY = """
import json, ray
ray.init(address="{address}", logging_level="ERROR", log_to_driver=False)
free = ray.available_resources().get("CPU", 0.0)
print("NODES " + json.dumps({{"free_cpus": free, "nodes": [[n["NodeID"], n["NodeManagerAddress"], n["Alive"]]
    for n in ray.nodes()]}}))
"""


@dataclass
class NetnsCluster:
    net: Network
    work: Path  # logs, the private HOME (short paths: Ray's socket paths are length-limited)
    workers: tuple[str, ...]
    node_ips: dict[str, str] = field(default_factory=dict)  # Ray node id -> address (every node seen)
    _target: subprocess.Popen | None = None

    @property
    def head(self):
        return self.net.hosts["head"]

    @property
    def address(self) -> str:
        return f"{self.head.address}:{RAY_PORT}"

    @property
    def target_url(self) -> str:
        return f"http://{SUBNET_PREFIX}.{TARGET_OCTET}:{TARGET_PORT}"

    @property
    def env(self) -> dict[str, str]:
        return node_env(self.work / "home")

    @classmethod
    def start(cls, workers: int = len(WORKER_OCTETS)) -> NetnsCluster:
        names = [("head", HEAD_OCTET), ("target", TARGET_OCTET)]
        names += [(f"w{i + 1}", WORKER_OCTETS[i]) for i in range(workers)]
        net = Network.create(names)
        work = Path(tempfile.mkdtemp(prefix=f"{net.prefix}-"))
        (work / "home").mkdir()
        cluster = cls(net=net, work=work, workers=tuple(n for n, _ in names[2:]))
        try:
            cluster._start_target()
            ray_start(
                cluster.head.netns,
                cluster.head.address,
                env=cluster.env,
                temp_dir=work / "ray",
                head_address=None,
                num_cpus=0,
                log=work / "head.log",
            )
            for w in cluster.workers:
                cluster.start_worker(w)
            cluster.wait_ready(len(cluster.workers))
        except BaseException:
            cluster.close()
            raise
        return cluster

    def _start_target(self) -> None:
        host = self.net.hosts["target"]
        argv = [sys.executable, str(_TARGET_SCRIPT), "--host", host.address, "--port", str(TARGET_PORT)]
        log = (self.work / "target.log").open("ab")
        self._target = subprocess.Popen(in_netns(host.netns, argv), stdout=log, stderr=subprocess.STDOUT, env=self.env)
        end = time.monotonic() + 20
        while time.monotonic() < end:
            try:
                self.counts()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the counting target did not come up: {(self.work / 'target.log').read_text()[-2000:]}")

    def start_worker(self, name: str) -> None:
        host = self.net.hosts[name]
        ray_start(
            host.netns,
            host.address,
            env=self.env,
            temp_dir=self.work / "ray",
            head_address=self.address,
            num_cpus=1,
            log=self.work / f"{name}.log",
        )

    def nodes(self) -> dict:
        """The head's view: free CPUs and every node (id, address, alive); remembers id -> address."""
        code = _NODES_PY.format(address=self.address)
        done = subprocess.run(
            in_netns(self.head.netns, [sys.executable, "-c", code]),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("NODES ")), None)
        if line is None:
            raise RuntimeError(f"could not list the cluster's nodes: {done.stderr[-2000:]}")
        view = json.loads(line[len("NODES ") :])
        self.node_ips.update({nid: addr for nid, addr, _ in view["nodes"]})
        return view

    def wait_ready(self, free_cpus: int, timeout_s: float = 60.0) -> dict:
        """Until `free_cpus` CPUs are free (every agent of the last run gone, every worker up)."""
        end = time.monotonic() + timeout_s
        view: dict = {}
        while time.monotonic() < end:
            view = self.nodes()
            if view["free_cpus"] >= free_cpus:
                return view
            time.sleep(1.0)
        raise RuntimeError(f"the cluster did not get {free_cpus} free CPUs within {timeout_s:.0f}s: {view}")

    def repair(self) -> None:
        """Bring every worker back: restart the Ray of a worker whose namespace runs nothing."""
        for name in self.workers:
            self.net.heal(name)
            netns = self.net.hosts[name].netns
            signal_netns(netns, signal.SIGCONT)
            if not netns_pids(netns):
                self.start_worker(name)
        self.wait_ready(len(self.workers))

    def counts(self) -> list[tuple[int, str, int]]:
        """The target's counts: (wall second, source address, requests)."""
        with urllib.request.urlopen(self.target_url + COUNTS_PATH, timeout=5) as resp:
            return [tuple(c) for c in json.loads(resp.read())["counts"]]

    def close(self) -> list[str]:
        """Stop every process of every namespace, then remove the network; returns what was left behind."""
        left: list[str] = []
        for host in self.net.hosts.values():
            left += [f"pid {p} in {host.netns}" for p in stop_netns(host.netns)]
        if self._target is not None:
            self._target.wait(timeout=5)
        left += self.net.remove()
        shutil.rmtree(self.work, ignore_errors=True)  # Ray's session files, logs, the private HOME
        return left


def free_of(view: dict, ips: Sequence[str]) -> bool:
    return all(any(addr == ip and alive for _, addr, alive in view["nodes"]) for ip in ips)
