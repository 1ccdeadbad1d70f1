"""Resource readings of the process (and node) a traffic agent runs in."""

from __future__ import annotations

import os

import psutil


class ProcessProbe:
    """Cheap per-flush readings of this process: CPU seconds (user+sys) and RSS.

    For the agent's own process the same figures as psutil's, read directly: ``os.times()``
    (psutil's utime and stime, from the same kernel counters in the same clock ticks) and
    the resident pages of /proc/self/statm (psutil's rss on Linux) take ~2-5 us, against
    ~40-150 us through psutil, on the agent's event loop at every flush (bench/agent_batch.py).
    """

    def __init__(self, pid: int | None = None) -> None:
        self._proc = psutil.Process(pid or os.getpid())
        self._own = pid in (None, os.getpid())
        self._statm = self._own and os.path.exists(_STATM)

    def read(self) -> tuple[float, int]:
        if self._own:
            t = os.times()
            rss = _statm_rss() if self._statm else self._proc.memory_info().rss
            return t.user + t.system, rss
        with self._proc.oneshot():
            pt = self._proc.cpu_times()
            return pt.user + pt.system, self._proc.memory_info().rss


_STATM = "/proc/self/statm"
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _statm_rss() -> int:
    """Resident set size in bytes: the second field of /proc/self/statm, in pages."""
    with open(_STATM, "rb") as f:
        return int(f.read().split()[1]) * _PAGE_SIZE


class NodeProbe:
    """Whole-node readings: CPU busy fraction, memory, network bytes per second, TCP connections.

    CPU and network are rates since the previous read (the first read primes them).
    """

    def __init__(self) -> None:
        psutil.cpu_percent(interval=None)
        self._net = psutil.net_io_counters()
        self._t = _monotonic()

    def read(self) -> dict[str, float]:
        vm = psutil.virtual_memory()
        net = psutil.net_io_counters()
        t = _monotonic()
        dt = max(t - self._t, 1e-6)
        out = {
            "cpu_fraction": psutil.cpu_percent(interval=None) / 100.0,
            "cpus": float(psutil.cpu_count() or 1),
            "mem_used_bytes": float(vm.total - vm.available),
            "mem_total_bytes": float(vm.total),
            "net_sent_bytes_per_s": (net.bytes_sent - self._net.bytes_sent) / dt,
            "net_recv_bytes_per_s": (net.bytes_recv - self._net.bytes_recv) / dt,
            "tcp_connections": float(_tcp_connections()),
        }
        self._net, self._t = net, t
        return out


def _monotonic() -> float:
    import time

    return time.monotonic()


def _tcp_connections() -> int:
    """Established TCP connections on the node, from /proc (psutil.net_connections is slow)."""
    n = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f, None)
                n += sum(1 for line in f if line.split(None, 4)[3] == "01")
        except OSError:
            continue
    return n


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit (1000+ connections need it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft
