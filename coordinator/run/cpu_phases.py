"""A run's CPU outside its steady state: start-up, shutdown and end-of-run analyses.

Counted: horde's own processes, i.e. this coordinator process (its threads, in-process agents
included) and every process it started that is not the target: the embedded Ray's daemons
and workers (the agents), found as this process's descendants. The target's process tree
(the embedded automaton) is the system under test and is left out. For an attached Ray (a
cluster, or the warm head of `horde up`) the Ray processes are not this process's: `scope`
says "coordinator" and the agents' CPU is not in the figures.

How: os.times() gives this process's CPU and that of the children it has reaped; psutil
gives each live descendant's. A process that exits without being reaped by a counted one (a
Ray worker whose raylet is gone) takes its CPU with it, so whole-tree readings are kept from
going down, and the stop, where Ray's processes exit, is read by sampling each of them until
it does (StopWatch). The figures are lower bounds.

The phases are differences between readings, `mark`ed by the run at its boundaries:

    process start -> "started" (agents begun at the common start instant): startup_s
    "started" -> "steady_end" (the fleet's streams ended): steady_s, per_request_us
    "steady_end" -> "stopped" (agents and the Ray this run started stopped): shutdown_s
    "stopped" -> "analysed" (summary figures and end-of-run analyses computed): analyses_s
"""

from __future__ import annotations

import os
import threading

import psutil

PHASES = ("started", "steady_end", "stopped", "analysed")


def _tree_pids(pid: int) -> set[int]:
    try:
        root = psutil.Process(pid)
        return {pid} | {c.pid for c in root.children(recursive=True)}
    except psutil.Error:
        return {pid}


class HordeCpu:
    """CPU seconds of this process and its descendants (less the tree of `exclude_pid`)."""

    def __init__(self) -> None:
        self._high = 0.0

    def total(self, exclude_pid: int | None = None) -> tuple[float, bool]:
        """All of it so far, and whether any live descendant was counted."""
        t = os.times()
        total = t.user + t.system + t.children_user + t.children_system
        counted = False
        for c in _descendant_times(exclude_pid, with_children=True).values():
            total += c
            counted = True
        self._high = max(self._high, total)
        return self._high, counted

    def own(self) -> float:
        t = os.times()
        return t.user + t.system

    def watch(self, exclude_pid: int | None = None) -> StopWatch:
        return StopWatch(exclude_pid)


def _descendant_times(exclude_pid: int | None, *, with_children: bool) -> dict[tuple[int, float], float]:
    excluded = _tree_pids(exclude_pid) if exclude_pid is not None else set()
    out: dict[tuple[int, float], float] = {}
    for p in psutil.Process().children(recursive=True):
        if p.pid in excluded:
            continue
        try:
            with p.oneshot():
                c = p.cpu_times()
                key = (p.pid, p.create_time())
        except psutil.Error:
            continue  # exited meanwhile
        out[key] = c.user + c.system + ((c.children_user + c.children_system) if with_children else 0.0)
    return out


class StopWatch:
    """The CPU of a stop, while the processes being stopped exit: each descendant's own CPU is
    read every `interval_s` until stop(), so a process's last reading is at most that old when it
    exits; the stop's CPU is this process's plus each descendant's growth since the start."""

    def __init__(self, exclude_pid: int | None, interval_s: float = 0.05) -> None:
        self._exclude = exclude_pid
        self._own0 = HordeCpu().own()
        self._first = _descendant_times(exclude_pid, with_children=False)
        self._last = dict(self._first)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(interval_s,), name="horde-cpu-stop", daemon=True)
        self._thread.start()

    def _loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self._last.update(_descendant_times(self._exclude, with_children=False))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self._last.update(_descendant_times(self._exclude, with_children=False))
        grown = sum(v - self._first.get(k, 0.0) for k, v in self._last.items())
        return HordeCpu().own() - self._own0 + max(0.0, grown)


class CpuPhases:
    """Readings at a run's phase boundaries; `summary()` is summary.json's `cpu`.

    startup and steady are differences of whole-tree readings. The stop is watched as it
    happens (StopWatch: the stopped processes take their CPU with them), and the analyses
    after it are this process's own CPU (nothing else runs by then).
    """

    def __init__(self, reader: HordeCpu | None = None) -> None:
        self._reader = reader or HordeCpu()
        self.readings: dict[str, float] = {}
        self.with_descendants = False
        self.exclude_pid: int | None = None  # the target's process, set once it is known
        self._watch: StopWatch | None = None
        self._own_at_stop = 0.0

    def mark(self, phase: str) -> None:
        """Read the CPU at the end of `phase` (one of PHASES); a phase marked twice keeps the first."""
        if phase not in PHASES:
            raise ValueError(f"unknown CPU phase {phase!r}")
        if phase in self.readings:
            return
        if phase == "stopped" and "steady_end" in self.readings and self._watch is not None:
            self.readings[phase] = self.readings["steady_end"] + self._watch.stop()
            self._own_at_stop = self._reader.own()
        elif phase == "analysed" and "stopped" in self.readings:
            self.readings[phase] = self.readings["stopped"] + self._reader.own() - self._own_at_stop
        else:
            cpu_s, counted = self._reader.total(self.exclude_pid)
            self.readings[phase] = cpu_s
            self.with_descendants = self.with_descendants or counted
            if phase == "stopped":
                self._own_at_stop = self._reader.own()
        if phase == "steady_end":
            self._watch = self._reader.watch(self.exclude_pid)

    def summary(self, requests: int) -> dict:
        """startup_s, steady_s, per_request_us, shutdown_s, analyses_s (None where a boundary
        was never reached, an interrupted start say) and `scope`."""
        if self._watch is not None and "stopped" not in self.readings:
            self._watch.stop()  # a run that ended without its stop being marked
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
