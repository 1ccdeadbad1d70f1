"""Network namespaces joined by veth pairs to one bridge on 198.18.0.0/24, and link faults.

Every name carries a per-process prefix, so two sessions on one machine do not collide on
names (they would still collide on the subnet: run one netns session at a time).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

SUBNET_PREFIX = "198.18.0"
BRIDGE_HOST = 254  # the root namespace's own address on the bridge (the test reads the target there)


class NetnsUnavailable(RuntimeError):
    """This machine or user cannot create network namespaces (the test skips with this reason)."""


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=check)


def netns_available() -> str | None:
    """None when `ip netns` works here; else the reason it does not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"hnfprobe{os.getpid()}"
    try:
        done = ip("netns", "add", probe, check=False)
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns` is not usable: {exc}"
    if done.returncode != 0:
        return f"`ip netns add` failed: {done.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


@dataclass
class Host:
    """One namespace with one veth to the bridge: `dev` is the bridge side (root namespace), `eth0` inside."""

    name: str
    netns: str
    address: str
    dev: str


@dataclass
class Network:
    prefix: str
    bridge: str
    hosts: dict[str, Host] = field(default_factory=dict)
    _faulted: set[str] = field(default_factory=set)

    @classmethod
    def create(cls, names_and_octets: Sequence[tuple[str, int]]) -> Network:
        prefix = f"hnf{os.getpid() % 100000}"
        taken = [ln.split()[0] for ln in ip("-br", "addr").stdout.splitlines() if f" {SUBNET_PREFIX}." in ln]
        if taken:  # a left-over of a killed session would route the test's traffic astray
            raise RuntimeError(f"{SUBNET_PREFIX}.0/24 is already on {taken}: remove it first (ip link del DEV)")
        net = cls(prefix=prefix, bridge=f"{prefix}br")
        try:
            ip("link", "add", net.bridge, "type", "bridge")
            ip("addr", "add", f"{SUBNET_PREFIX}.{BRIDGE_HOST}/24", "dev", net.bridge)
            ip("link", "set", net.bridge, "up")
            for i, (name, octet) in enumerate(names_and_octets):
                net._add_host(name, octet, i)
        except BaseException:
            net.remove()
            raise
        return net

    def _add_host(self, name: str, octet: int, i: int) -> None:
        host = Host(name, f"{self.prefix}-{name}", f"{SUBNET_PREFIX}.{octet}", f"{self.prefix}v{i}")
        self.hosts[name] = host
        ip("netns", "add", host.netns)
        ip("link", "add", host.dev, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        ip("link", "set", host.dev, "master", self.bridge, "up")
        ip("link", "set", "lo", "up", netns=host.netns)
        ip("addr", "add", f"{host.address}/24", "dev", "eth0", netns=host.netns)
        ip("link", "set", "eth0", "up", netns=host.netns)

    # -- faults --------------------------------------------------------------------------

    def partition(self, name: str) -> None:
        """Cut the host off: its bridge-side veth goes down, so every packet either way is dropped
        (no reset reaches either end; sockets stay open as across a real cut). netem is not in
        every kernel (not in this machine's), link state is."""
        self._faulted.add(name)
        ip("link", "set", self.hosts[name].dev, "down")

    def heal(self, name: str) -> None:
        ip("link", "set", self.hosts[name].dev, "up", check=False)
        self._faulted.discard(name)

    # -- clean-up ------------------------------------------------------------------------

    def remove(self) -> list[str]:
        """Delete every namespace, veth and the bridge; returns what could not be removed."""
        left: list[str] = []
        for name in list(self._faulted):
            self.heal(name)
        for host in self.hosts.values():
            ip("link", "del", host.dev, check=False)  # deletes its peer too
            if ip("netns", "del", host.netns, check=False).returncode != 0 and host.netns in _netns_names():
                left.append(host.netns)
        if ip("link", "del", self.bridge, check=False).returncode != 0 and _link_exists(self.bridge):
            left.append(self.bridge)
        return left


def _netns_names() -> set[str]:
    out = ip("netns", "list", check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _link_exists(dev: str) -> bool:
    return ip("link", "show", dev, check=False).returncode == 0


def netns_pids(netns: str) -> list[int]:
    """Every process running in the namespace (all of them were started by the test)."""
    out = ip("netns", "pids", netns, check=False).stdout
    return [int(p) for p in out.split() if p.strip().isdigit()]
