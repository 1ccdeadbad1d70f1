"""Run one command pinned to a CPU and measure the CPU time of its whole process tree.

    python bench/meter.py --cpu 1 --result r.json --timeout 60 -- wrk -t1 -c64 -d10s URL

How the CPU is counted:

1. Reaped processes, exactly. The meter makes itself a *child subreaper*
   (prctl PR_SET_CHILD_SUBREAPER), so a process whose parent dies first is re-parented to
   the meter instead of init, and the meter reaps the whole tree. When a process is
   reaped (waited for), Linux adds its user+sys time, and that of every descendant it
   reaped, to the reaper's RUSAGE_CHILDREN. So once the tree is gone, the meter's
   `getrusage(RUSAGE_CHILDREN)` holds every process that was waited for, however short
   its life, without sampling.
2. Auto-reaped processes, from their last reading. A process whose parent ignores
   SIGCHLD is discarded by the kernel at exit without a wait, and its CPU reaches no
   RUSAGE_CHILDREN. Ray's raylet does exactly that to its workers (the traffic agents
   among them), so (1) alone would miss horde's agents. The meter therefore reads every
   descendant's CPU from /proc every --sample-every seconds and, when one vanishes whose
   parent ignored SIGCHLD, adds its last reading. This part can miss up to one sampling
   interval of each such process and any such process shorter than one interval; it is
   reported apart (`autoreaped_cpu_s`) so its size is visible.

The command, not the meter, is pinned (sched_setaffinity between fork and exec, what
`taskset -c CPU` does); everything it starts inherits the affinity, while the meter's own
reading of /proc runs where the meter was started. The meter's own CPU is in neither part.

Bounded: the command is killed at --timeout; descendants still alive --linger seconds
after the command exits are ended by PID (SIGTERM, then SIGKILL) and reaped, so their CPU
counts too. The result is one JSON object written to --result. Standard library only.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

PR_SET_CHILD_SUBREAPER = 36
SIGCHLD_BIT = 1 << (signal.SIGCHLD - 1)


# -- reading /proc ------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    ppid: int
    own_ticks: int  # utime + stime
    reaped_ticks: int  # cutime + cstime: the descendants it has waited for
    start_ticks: int  # start time since boot: with the PID, names one process (PIDs recycle)


def read_stat(pid: int) -> ProcStat:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state) of proc(5): ppid is 4, utime..cstime 14-17, starttime 22
    return ProcStat(
        ppid=int(fields[1]),
        own_ticks=int(fields[11]) + int(fields[12]),
        reaped_ticks=int(fields[13]) + int(fields[14]),
        start_ticks=int(fields[19]),
    )


def ignores_sigchld(pid: int) -> bool:
    """Whether `pid`'s children are reaped by the kernel at exit, unwaited for."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigIgn:"):
                    return bool(int(line.split()[1], 16) & SIGCHLD_BIT)
    except OSError:
        pass
    return False


def descendants(pid: int) -> list[int]:
    """Live descendants of `pid`, parents before children, from /proc."""
    out: list[int] = []
    stack = [pid]
    while stack:
        p = stack.pop()
        kids: list[int] = []
        try:
            # each thread has its own list: a child forked by any thread is listed there
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids.extend(int(k) for k in f.read().split())
        except OSError:
            continue
        out.extend(kids)
        stack.extend(kids)
    return out


def tree_cpu_s(meter_pid: int) -> float:
    """CPU seconds so far of everything a running meter has started, read from outside.

    = what the meter has reaped (its cutime+cstime) + each live descendant's own time and
    what it has reaped. A process reaped between the reads is missed for that one reading,
    never counted twice (the meter is read first); auto-reaped processes that have already
    exited are not in it. Clock-tick resolution (10 ms).
    """
    total = read_stat(meter_pid).reaped_ticks
    for pid in descendants(meter_pid):
        try:
            s = read_stat(pid)
        except (OSError, IndexError, ValueError):
            continue
        total += s.own_ticks + s.reaped_ticks
    return total / os.sysconf("SC_CLK_TCK")


EXITED = "exited"  # tree_cpu_by's part for CPU of processes already reaped by one in the tree


def tree_cpu_by(meter_pid: int, label: Callable[[int, bool], str]) -> dict[str, float]:
    """tree_cpu_s split into parts: CPU seconds by label, read at one instant.

    Each live descendant's own utime+stime goes to `label(pid, top)` (`top`: a direct
    child of the meter, i.e. the command itself); what processes have reaped (the meter's
    and every descendant's cutime+cstime: processes that already exited) goes to EXITED.
    The parts add up to what tree_cpu_s reads.
    """
    ticks: dict[str, int] = {EXITED: read_stat(meter_pid).reaped_ticks}
    for pid in descendants(meter_pid):
        try:
            s = read_stat(pid)
            part = label(pid, s.ppid == meter_pid)
        except (OSError, IndexError, ValueError):
            continue
        ticks[part] = ticks.get(part, 0) + s.own_ticks
        ticks[EXITED] += s.reaped_ticks
    hz = os.sysconf("SC_CLK_TCK")
    return {part: t / hz for part, t in ticks.items()}


def cmdline(pid: int) -> str:
    """A process's command line as `ps` shows it (a title set with setproctitle included)."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace").strip()


@dataclass
class AutoreapTracker:
    """Last CPU reading of every descendant, to account for those the kernel auto-reaps."""

    root: int
    lost_ticks: int = 0
    processes: int = 0  # auto-reaped processes accounted for
    _last: dict[tuple[int, int], tuple[int, bool]] = field(default_factory=dict)

    def sample(self) -> None:
        seen: dict[tuple[int, int], tuple[int, bool]] = {}
        autoreaping: dict[int, bool] = {}
        for pid in descendants(self.root):
            try:
                s = read_stat(pid)
            except (OSError, IndexError, ValueError):
                continue
            if s.ppid not in autoreaping:
                autoreaping[s.ppid] = s.ppid != self.root and ignores_sigchld(s.ppid)
            seen[(pid, s.start_ticks)] = (s.own_ticks + s.reaped_ticks, autoreaping[s.ppid])
        for key, (ticks, autoreaped) in self._last.items():
            if key not in seen and autoreaped:
                self.lost_ticks += ticks
                self.processes += 1
        self._last = seen

    @property
    def lost_s(self) -> float:
        return self.lost_ticks / os.sysconf("SC_CLK_TCK")


# -- running ------------------------------------------------------------------------------


def _set_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _signal_tree(sig: int) -> list[int]:
    pids = descendants(os.getpid())
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return pids


def _reap_available() -> list[tuple[int, int]]:
    """Reap every exited child without blocking; (pid, wait status) of each."""
    reaped = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        reaped.append((pid, status))
    return reaped


def _spawn(argv: list[str], cpu: int | None) -> int:
    pid = os.fork()
    if pid == 0:  # child: pin, restore the signal state the meter changed, exec
        try:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            os.execvp(argv[0], argv)
        except BaseException as e:
            os.write(2, f"meter: cannot run {argv[0]}: {e}\n".encode())
        os._exit(127)
    return pid


def run(
    argv: list[str], cpu: int | None, timeout_s: float, linger_s: float, sample_every_s: float = 0.2
) -> dict[str, object]:
    subreaper = _set_subreaper()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)

    stop_requested = False

    def on_term(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    # Ctrl-C reaches the whole foreground group; the meter then still ends and reaps the
    # tree and writes its result. (Handlers, unlike SIG_IGN, reset to default on exec.)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    # Wake on SIGCHLD or at the next sample instead of polling in between.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})

    t0 = time.monotonic()
    child = _spawn(argv, cpu)
    tracker = AutoreapTracker(root=os.getpid())
    exit_code: int | None = None
    wall_s = 0.0
    killed_at_timeout = False
    ended_stragglers: list[int] = []
    deadline = t0 + timeout_s
    linger_deadline: float | None = None
    sigterm_sent_at: float | None = None

    while True:
        tracker.sample()
        for pid, status in _reap_available():
            if pid == child:
                exit_code = os.waitstatus_to_exitcode(status)
                wall_s = time.monotonic() - t0
                linger_deadline = time.monotonic() + linger_s
        if exit_code is not None and not descendants(os.getpid()):
            tracker.sample()  # account for the last auto-reaped processes
            break
        now = time.monotonic()
        overdue = (
            (exit_code is None and now >= deadline)
            or stop_requested
            or (linger_deadline is not None and now >= linger_deadline)
        )
        if overdue and sigterm_sent_at is None:
            killed_at_timeout = exit_code is None and not stop_requested
            ended_stragglers = _signal_tree(signal.SIGTERM)
            sigterm_sent_at = now
        elif sigterm_sent_at is not None and now - sigterm_sent_at > 5.0:
            _signal_tree(signal.SIGKILL)
        signal.sigtimedwait({signal.SIGCHLD}, sample_every_s)

    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    user_s = after.ru_utime - before.ru_utime
    sys_s = after.ru_stime - before.ru_stime
    return {
        "argv": argv,
        "cpu": cpu,
        "exit_code": exit_code,
        "wall_s": wall_s,
        "user_s": user_s,  # reaped processes only: the auto-reaped have no user/sys split
        "sys_s": sys_s,
        "reaped_cpu_s": user_s + sys_s,
        "autoreaped_cpu_s": tracker.lost_s,
        "autoreaped_processes": tracker.processes,
        "cpu_s": user_s + sys_s + tracker.lost_s,
        "max_rss_kib": after.ru_maxrss,  # largest single reaped process, not a sum
        "subreaper": subreaper,
        "killed_at_timeout": killed_at_timeout,
        "stopped_by_signal": stop_requested,
        "ended_stragglers": [] if killed_at_timeout else ended_stragglers,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", type=int, default=None, help="pin the command's tree to this CPU")
    ap.add_argument("--result", required=True, help="where to write the JSON result")
    ap.add_argument("--timeout", type=float, default=600.0, help="kill the command after this (s)")
    ap.add_argument(
        "--linger", type=float, default=30.0, help="after the command exits, end descendants still alive after this (s)"
    )
    ap.add_argument(
        "--sample-every", type=float, default=0.2, help="seconds between /proc readings for auto-reaped processes"
    )
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    argv = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not argv:
        ap.error("no command given")
    result = run(argv, args.cpu, args.timeout, args.linger, args.sample_every)
    tmp = args.result + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, args.result)
    code = result["exit_code"]
    return code if isinstance(code, int) and code >= 0 else 1


if __name__ == "__main__":
    sys.exit(main())
