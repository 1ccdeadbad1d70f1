"""A run's CPU outside its steady state: start-up, shutdown and end-of-run analyses.

Counted: horde's own processes, i.e. this coordinator process (its threads, in-process agents
included) and every process it started that is not the target: the embedded Ray's daemons
and workers (the agents), found as this process's descendants. The target's process tree
(the embedded automaton) is the system under test and is left out. For an attached Ray (a
cluster, or the warm head of `horde up`) the Ray processes are not this process's: `scope`
says "coordinator" and the agents' CPU is not in the figures.

How: os.times() gives this process's CPU and that of the children it has reaped (Ray's
daemons, once stopped, with the workers they reaped); psutil gives each live descendant's. A
process that exits without being reaped by a counted one (an orphan) takes its CPU with it,
so a reading is a lower bound, and readings are kept from going down.

The phases are differences between readings, `mark`ed by the run at its boundaries:

    process start -> "started" (agents begun at the common start instant): startup_s
    "started" -> "steady_end" (the fleet's streams ended): steady_s, per_request_us
    "steady_end" -> "stopped" (agents and the Ray this run started stopped): shutdown_s
    "stopped" -> "analysed" (summary figures and end-of-run analyses computed): analyses_s
"""

from __future__ import annotations

import os
from collections.abc import Callable

import psutil

PHASES = ("started", "steady_end", "stopped", "analysed")


def _tree_pids(pid: int) -> set[int]:
    try:
        root = psutil.Process(pid)
        return {pid} | {c.pid for c in root.children(recursive=True)}
    except psutil.Error:
        return {pid}


class HordeCpu:
    """CPU seconds so far of this process and its descendants (less the tree of `exclude_pid`)."""

    def __init__(self) -> None:
        self._high = 0.0

    def __call__(self, exclude_pid: int | None = None) -> tuple[float, bool]:
        """The total, and whether any live descendant was counted."""
        t = os.times()
        total = t.user + t.system + t.children_user + t.children_system
        excluded = _tree_pids(exclude_pid) if exclude_pid is not None else set()
        counted = False
        for p in psutil.Process().children(recursive=True):
            if p.pid in excluded:
                continue
            try:
                c = p.cpu_times()
            except psutil.Error:
                continue  # exited meanwhile
            total += c.user + c.system + c.children_user + c.children_system
            counted = True
        self._high = max(self._high, total)
        return self._high, counted


class CpuPhases:
    """Readings of horde_cpu_s at a run's phase boundaries; `summary()` is summary.json's `cpu`."""

    def __init__(self, read: Callable[[int | None], tuple[float, bool]] | None = None) -> None:
        self._read = read or HordeCpu()
        self.readings: dict[str, float] = {}
        self.with_descendants = False
        self.exclude_pid: int | None = None  # the target's process, set once it is known

    def mark(self, phase: str) -> None:
        """Read the CPU at the end of `phase` (one of PHASES); a phase marked twice keeps the first."""
        if phase not in PHASES:
            raise ValueError(f"unknown CPU phase {phase!r}")
        if phase in self.readings:
            return
        cpu_s, counted = self._read(self.exclude_pid)
        self.readings[phase] = cpu_s
        self.with_descendants = self.with_descendants or counted

    def summary(self, requests: int) -> dict:
        """startup_s, steady_s, per_request_us, shutdown_s, analyses_s (None where a boundary
        was never reached, an interrupted start say) and `scope`."""
        r = self.readings

        def between(a: str | None, b: str) -> float | None:
            if b not in r or (a is not None and a not in r):
                return None
            return round(max(0.0, r[b] - (r[a] if a is not None else 0.0)), 3)

        steady = between("started", "steady_end")
        return {
            "startup_s": between(None, "started"),
            "steady_s": steady,
            "per_request_us": round(steady / requests * 1e6, 2) if steady is not None and requests > 0 else None,
            "shutdown_s": between("steady_end", "stopped"),
            "analyses_s": between("stopped", "analysed"),
            "scope": "coordinator+ray" if self.with_descendants else "coordinator",
        }
