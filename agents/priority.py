"""The agent loop thread's scheduling priority while it sends, and the guard that gives
a real-time priority back when the loop gets busy.

Sends leave late when the agent's thread waits for a core (issue 14): on a 2-core virtual
machine most sends over 250 us late had waited on the run queue or for a wake-up, and at
SCHED_FIFO every rate met 50 us at p50 and 250 us at p99 (bench/send_lag.py). So while
the agent sends (agents/timers.py hold_still / let_go) its loop thread alone, by its
native thread id, takes one of these modes ($HORDE_AGENT_PRIORITY; default DEFAULT_MODE):

- "fifo": SCHED_FIFO at RT_PRIORITY (the lowest real-time priority), with
  SCHED_RESET_ON_FORK so that no thread or process it starts inherits it;
- "rr" (the default): SCHED_RR at RT_PRIORITY, the same otherwise; the send lag was the
  same as with "fifo", and two agent threads of one process sharing a core take turns
  (100 ms slices) instead of one running until it blocks;
- "nice": SCHED_OTHER at nice NICE;
- "default": the thread as it is (agents/runner.py has set nice -10 on it already).

A real-time thread runs before every ordinary one on its core, so a busy one would starve
what shares the core (Ray's daemons, the coordinator, the target). The guard: every
GUARD_NS a loop callback reads the thread's CPU time (time.thread_time_ns); busy more than
SATURATED_SHARE of that interval (horde's own mark of a saturated agent, coordinator/
measure/health.py CPU_SATURATED), or more than BUSY_SHARE of the last second (BUSY_SPAN_NS),
the thread gets its previous policy and nice back at once and keeps them for the rest of
the run (`demoted`). Below those shares a real-time agent takes no more of a contended core
than it does at its default nice -10, whose weight against one nice-0 task is 9548:1024,
90% of the core; what real time changes is how soon it runs when it wakes. Half of one
interval would demote agents far from saturation: at 5000/s on a loaded 2-core machine
the loop used 35-40% of a core and one 50 ms interval in ten was over half busy. An agent
that is not saturated is idle in epoll_wait most of the time (its spinning to deadlines is
capped at a tenth of a core, agents/timers.py SPIN_SHARE). The kernel's real-time
throttling (sched_rt_runtime_us, 95% of each second by default) is only the last
backstop, for one callback that runs longer than the interval without returning to the loop.

Where the platform refuses (no CAP_SYS_NICE and RLIMIT_RTPRIO 0, or not Linux) the next
mode down is tried ("fifo"/"rr", then "nice", then the thread as it is); nothing raises.
restore() leaves the thread exactly as raise_thread() found it (policy, real-time
priority, nice): an agent run on a caller's thread leaves it as it found it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass, field

MODES = ("fifo", "rr", "nice", "default")
ENV_MODE = "HORDE_AGENT_PRIORITY"
DEFAULT_MODE = "rr"
RT_PRIORITY = 1  # the lowest real-time priority: above every SCHED_OTHER thread, below the kernel's
NICE = -20
GUARD_NS = 50_000_000  # how often the guard reads the thread's CPU time
SATURATED_SHARE = 0.9  # busy more than this share of one interval: demoted at once
BUSY_SHARE = 0.75  # or more than this share of the last BUSY_SPAN_NS
BUSY_SPAN_NS = 1_000_000_000

_RT_POLICIES = {"fifo": "SCHED_FIFO", "rr": "SCHED_RR"}
_state = threading.local()  # the thread's Held, between raise_thread and restore


@dataclass
class Held:
    """What raise_thread did to one thread, and what restore puts back."""

    tid: int
    policy: int  # as found (sched_getscheduler, SCHED_RESET_ON_FORK bit included)
    rt_priority: int
    nice: int
    label: str  # the priority in use: "fifo 1", "rr 1", "nice -20", "default"
    guard: asyncio.TimerHandle | None = None
    readings: list[tuple[int, int]] = field(default_factory=list)  # the guard's (monotonic, CPU) ns
    demoted: str = ""  # why the guard gave a real-time priority back ("" if it did not)

    def in_use(self) -> str:
        return f"{self.label}, demoted ({self.demoted})" if self.demoted else self.label


def chosen_mode() -> str:
    """$HORDE_AGENT_PRIORITY, or DEFAULT_MODE; an unknown value is named and the default used."""
    mode = (os.environ.get(ENV_MODE) or DEFAULT_MODE).strip().lower()
    return mode if mode in MODES else DEFAULT_MODE


def mode_problem() -> str | None:
    """Why $HORDE_AGENT_PRIORITY was not used (None: it was, or it is unset)."""
    raw = os.environ.get(ENV_MODE)
    if raw and raw.strip().lower() not in MODES:
        return f"{ENV_MODE}={raw[:40]!r} is not one of {', '.join(MODES)}; {DEFAULT_MODE!r} used"
    return None


def raise_thread(mode: str | None = None, loop: asyncio.AbstractEventLoop | None = None) -> str:
    """Raise the calling thread's priority to `mode` (None: chosen_mode()); a real-time
    mode only with `loop` (the thread's running loop, which runs the guard), else "nice".
    Returns the priority in use. Once per thread until restore(); never raises."""
    held = getattr(_state, "held", None)
    if held is not None:
        return held.in_use()
    problem = mode_problem() if mode is None else None  # named in the label: the summary shows it
    mode = mode or chosen_mode()
    if mode not in MODES:
        raise ValueError(f"priority mode {mode!r} is not one of {', '.join(MODES)}")
    if mode in _RT_POLICIES and loop is None:
        mode = "nice"
    found = _read(threading.get_native_id())
    if found is None:  # not Linux, or the thread's scheduling cannot be read
        return "default"
    held = Held(*found, label=_as_found(found[1], found[2], found[3]))
    if held.policy & ~_reset_flag() not in (_policy("SCHED_OTHER"), _policy("SCHED_BATCH")):
        mode = "default"  # already real-time (or idle): leave it as it is
    if mode in _RT_POLICIES and loop is not None and _set_rt(held.tid, _policy(_RT_POLICIES[mode])):
        held.label = f"{mode} {RT_PRIORITY}"
        held.readings.append((time.monotonic_ns(), time.thread_time_ns()))
        held.guard = loop.call_later(GUARD_NS / 1e9, _check, held)
    elif mode != "default" and held.nice > NICE and _set_nice(held.tid, NICE):
        held.label = f"nice {NICE}"
    if problem:
        held.label += f" ({problem})"
    _state.held = held
    return held.in_use()


def restore() -> None:
    """The calling thread's policy, real-time priority and nice as raise_thread found them."""
    held = getattr(_state, "held", None)
    if held is None:
        return
    del _state.held
    if held.guard is not None:
        held.guard.cancel()
        held.guard = None
    _put_back(held)


def in_use() -> str:
    """The calling thread's priority now ("fifo 1", "nice -20", "default", with the
    demotion if the guard gave it back), "" outside raise_thread/restore."""
    held = getattr(_state, "held", None)
    return held.in_use() if held is not None else ""


def _check(held: Held) -> None:
    """The guard, on the held thread's loop: demote the thread if it was busy over
    SATURATED_SHARE of the last interval or over BUSY_SHARE of the last BUSY_SPAN_NS."""
    now, cpu = time.monotonic_ns(), time.thread_time_ns()
    readings = held.readings
    readings.append((now, cpu))
    checks = [(readings[-2], SATURATED_SHARE)]
    if (len(readings) - 1) * GUARD_NS >= BUSY_SPAN_NS:  # a whole span: over BUSY_SHARE of it too
        checks.append((readings.pop(0), BUSY_SHARE))
    held.guard = None
    for (t0, cpu0), share in checks:
        busy = (cpu - cpu0) / max(1, now - t0)
        if busy > share:
            _put_back(held)
            held.demoted = f"loop busy {100 * busy:.0f}% of {(now - t0) / 1e6:.0f} ms"
            return
    held.guard = asyncio.get_running_loop().call_later(GUARD_NS / 1e9, _check, held)


def _put_back(held: Held) -> None:
    try:
        if os.sched_getscheduler(held.tid) != held.policy:
            os.sched_setscheduler(held.tid, held.policy, os.sched_param(held.rt_priority))
        if os.getpriority(os.PRIO_PROCESS, held.tid) != held.nice:
            os.setpriority(os.PRIO_PROCESS, held.tid, held.nice)
    except (OSError, AttributeError):  # raising nice / dropping real time is always allowed
        pass


def _read(tid: int) -> tuple[int, int, int, int] | None:
    try:
        policy = os.sched_getscheduler(tid)
        return tid, policy, os.sched_getparam(tid).sched_priority, os.getpriority(os.PRIO_PROCESS, tid)
    except (OSError, AttributeError):
        return None


def _set_rt(tid: int, policy: int) -> bool:
    try:
        os.sched_setscheduler(tid, policy | _reset_flag(), os.sched_param(RT_PRIORITY))
        return True
    except (OSError, AttributeError):  # EPERM: no CAP_SYS_NICE and RLIMIT_RTPRIO 0
        return False


def _set_nice(tid: int, nice: int) -> bool:
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
        return True
    except (OSError, AttributeError):  # EACCES/EPERM: no CAP_SYS_NICE, RLIMIT_NICE too low
        return False


def _as_found(policy: int, rt_priority: int, nice: int) -> str:
    """The label of a thread left as it was: "default" at nice 0, else what it runs at."""
    policy &= ~_reset_flag()
    for mode, name in _RT_POLICIES.items():
        if policy == _policy(name):
            return f"{mode} {rt_priority} (as found)"
    return f"nice {nice} (as found)" if nice else "default"


def _policy(name: str) -> int:
    return int(getattr(os, name, -1))


def _reset_flag() -> int:
    return int(getattr(os, "SCHED_RESET_ON_FORK", 0))
