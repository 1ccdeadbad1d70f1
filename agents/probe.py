"""Resource readings of the process (and node) a traffic agent runs in."""

from __future__ import annotations

import os

import psutil


class ProcessProbe:
    """Cheap per-flush readings of this process: CPU seconds (user+sys) and RSS."""

    def __init__(self, pid: int | None = None) -> None:
        self._proc = psutil.Process(pid or os.getpid())

    def read(self) -> tuple[float, int]:
        with self._proc.oneshot():
            t = self._proc.cpu_times()
            return t.user + t.system, self._proc.memory_info().rss


def node_reading() -> dict[str, float]:
    """Whole-node readings for the bundle's resources (CPU %, memory, connections)."""
    vm = psutil.virtual_memory()
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "mem_used_bytes": float(vm.used),
        "mem_available_bytes": float(vm.available),
    }


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
