"""Timers finer than the event loop's, for one event loop: when sends leave.

asyncio's and uvloop's timers count whole milliseconds (uvloop runs a delay under half a
millisecond as call_soon), so a send due at a given microsecond left 0.7-1.1 ms late at
the median and up to 10 ms late at p99 (issue 14). Here a heap of deadlines (monotonic
ns, time.monotonic_ns's clock) is served by ONE Linux timerfd (CLOCK_MONOTONIC, armed at
the earliest deadline with TFD_TIMER_ABSTIME) that the loop watches with add_reader: the
kernel wakes the loop at the deadline's microsecond, and nothing runs before its time.
Python 3.11 has no os.timerfd_create, so it is called through ctypes on libc.

Three kinds (make_timers), all with call_at(due_ns, callback, *args) -> handle.cancel():
- "precise": the timerfd. Costs one timerfd_settime when the earliest deadline moves
  earlier, and one read(8) per wake-up; an idle wait is a blocked epoll_wait (no CPU).
  A deadline under NEAR_NS away is spun to on the loop's next turn instead, and the others
  wake the loop early by a lead learnt from how late recent wake-ups were (see LEAD_NS;
  never over SPIN_SHARE of the sleep) and spin the rest (measured in bench/send_lag.py;
  the figures are in docs/measurement.md).
- "spin": the fallback where there is no timerfd (not Linux, or ctypes fails): a loop
  timer to about SPIN_NS before the deadline, then call_soon turns of the loop until it
  is due. Each wait burns a core for up to ~2 ms (the spin plus the loop timer's own
  lateness), so near-continuous at 500/s and above.
- "ms": whole-millisecond loop timers, rounded up: horde's timers before issue 14, kept
  to measure against (bench/send_lag.py; HORDE_SEND_TIMERS=ms). Up to ~1 ms late.

Every kind checks the clock when a timer fires and waits again if it is early: a callback
never runs before its due time.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import heapq
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from horde.agents import priority

KINDS = ("precise", "spin", "ms")
ENV_KIND = "HORDE_SEND_TIMERS"  # for benchmarking: "ms" selects the old whole-ms timers
SPIN_NS = 1_000_000  # the spin fallback hands over from a loop timer this long before a deadline
# A deadline nearer than this is not given to the kernel: the loop's next turn runs it,
# spinning the rest. Arming a timer 30 us ahead cost 29 us of CPU here (a virtual
# machine's timer reprogramming) against 1.8 us for a far one; a spin that short is cheaper.
NEAR_NS = 30_000
# A wake-up is late by the kernel's wake latency plus whatever the loop was busy with;
# on the test machine (a 2-core virtual machine) 40-60 us at the median after a sleep of
# 0.2-1 ms and 150-450 us after a long one (an idle core, a cold cache). So the timerfd
# is armed `lead` early and the rest is spun, with a lead learnt from the recent wake-ups
# of the same kind (a sleep over LEAD_AFTER_NS, "long", or not, "short"):
# - long: their p95 plus LEAD_MARGIN_NS, at least LEAD_NS (a spin is cheap beside the sleep);
# - short: only what keeps the send lag in bounds, the larger of p50 - AIM_P50_NS and
#   p99 - AIM_P99_NS (0 when the wake-ups are prompt enough: no spin at all);
# both at most MAX_LEAD_NS and SPIN_SHARE of the sleep, so the spinning never takes more
# than SPIN_SHARE of a core whatever the rate (measured in bench/send_lag.py).
LEAD_NS = 150_000
LEAD_AFTER_NS = 5_000_000
LEAD_MARGIN_NS = 50_000
AIM_P50_NS = 5_000  # 20 us before real-time priority: a prompt wake then left ~30 us late at p50 (bench/send_lag.py)
AIM_P99_NS = 150_000
MAX_LEAD_NS = 1_000_000
SPIN_SHARE = 0.1
_WINDOW = {True: 32, False: 256}  # wake-ups remembered per kind (long: True)
_REESTIMATE_EVERY = 32  # short wake-ups between two estimates of their lead
TIMER_SLACK_NS = 1  # the agent thread's timer slack (prctl; Linux's default is 50 us)

_mono = time.monotonic_ns
_CLOCK_MONOTONIC = 1
_TFD_TIMER_ABSTIME = 1
_PR_SET_TIMERSLACK = 29
_PR_GET_TIMERSLACK = 30


class TimerHandle:
    """A scheduled callback; cancel() before it runs and it never runs."""

    __slots__ = ("due_ns", "callback", "args", "cancelled", "_loop_handle")

    def __init__(self, due_ns: int, callback: Callable[..., Any], args: tuple) -> None:
        self.due_ns = due_ns
        self.callback = callback
        self.args = args
        self.cancelled = False
        self._loop_handle: asyncio.TimerHandle | None = None  # "ms" kind only

    def cancel(self) -> None:
        self.cancelled = True
        if self._loop_handle is not None:
            self._loop_handle.cancel()
            self._loop_handle = None


class Timers(Protocol):
    kind: str

    def call_at(self, due_ns: int, callback: Callable[..., Any], *args: Any) -> TimerHandle: ...

    def close(self) -> None: ...


def _ms_delay_s(delay_ns: int) -> float:
    """A loop-timer delay for something `delay_ns` away: whole milliseconds, rounded up."""
    return -(-delay_ns // 1_000_000) / 1000 if delay_ns > 0 else 0.0


def _report(loop: asyncio.AbstractEventLoop, exc: Exception, callback: Callable) -> None:
    loop.call_exception_handler({"message": f"timer callback {callback!r} raised", "exception": exc})


class MsTimers:
    """Whole-millisecond loop timers (the old way): one loop timer per call, rounded up."""

    kind = "ms"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def call_at(self, due_ns: int, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        handle = TimerHandle(due_ns, callback, args)
        self._schedule(handle)
        return handle

    def _schedule(self, handle: TimerHandle) -> None:
        handle._loop_handle = self._loop.call_later(_ms_delay_s(handle.due_ns - _mono()), self._fire, handle)

    def _fire(self, handle: TimerHandle) -> None:
        handle._loop_handle = None
        if handle.cancelled:
            return
        if _mono() < handle.due_ns:  # loop timers may fire a little early
            self._schedule(handle)
            return
        handle.cancelled = True  # ran: a later cancel() is a no-op
        handle.callback(*handle.args)

    def close(self) -> None:
        pass


class _HeapTimers:
    """A heap of deadlines served by one wake-up source; subclasses say how to wake."""

    kind = ""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[int, int, TimerHandle]] = []
        self._seq = 0
        self._running = False  # inside _run_due: re-arm once at its end
        self._closed = False
        self._soon: asyncio.Handle | None = None  # a near deadline: _run_due on the loop's next turn

    def call_at(self, due_ns: int, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        if self._closed:
            raise RuntimeError("timers closed")
        handle = TimerHandle(due_ns, callback, args)
        self._seq += 1
        heap = self._heap
        heapq.heappush(heap, (due_ns, self._seq, handle))
        if not self._running and heap[0][2] is handle:
            self._wake_near_or_at(due_ns)
        return handle

    def _wake_near_or_at(self, due_ns: int) -> None:
        now = _mono()
        if due_ns - now > NEAR_NS:
            self._wake_at(due_ns, now)
        elif self._soon is None:
            self._soon = self._loop.call_soon(self._run_soon)

    def _run_soon(self) -> None:
        self._soon = None
        self._run_due()

    def _run_due(self, spin_ns: int = NEAR_NS) -> None:
        """Run every callback that is due (none early), spinning for one due within
        `spin_ns`, then wake again for the next."""
        heap = self._heap
        pop = heapq.heappop
        self._running = True
        try:
            now = _mono()
            ran = False
            while heap:
                due, _, handle = heap[0]
                if handle.cancelled:
                    pop(heap)
                    continue
                if due > now:
                    now = _mono()  # the callbacks took time: more may be due now
                    if due > now:
                        # Spin only before the first callback of a turn: after one, a near
                        # deadline waits for the loop's next turn (call_soon), so the loop
                        # reads its sockets between sends however dense the schedule.
                        if ran or due - now > spin_ns:
                            break
                        while now < due:  # near: spin rather than sleep (see NEAR_NS)
                            now = _mono()
                ran = True
                pop(heap)
                handle.cancelled = True  # ran: a later cancel() is a no-op
                try:
                    handle.callback(*handle.args)
                except Exception as exc:  # one failing callback must not stop the others
                    _report(self._loop, exc, handle.callback)
        finally:
            self._running = False
        while heap and heap[0][2].cancelled:
            pop(heap)
        if heap and not self._closed:
            self._wake_near_or_at(heap[0][0])

    def _wake_at(self, due_ns: int, now: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._closed = True
        self._heap.clear()
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None


class SpinTimers(_HeapTimers):
    """The fallback: a loop timer to ~SPIN_NS before the deadline, then call_soon spins."""

    kind = "spin"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._loop_handle: asyncio.Handle | None = None
        self._wake_ns = 0  # when the pending loop handle is meant for (0: none)

    def _wake_at(self, due_ns: int, now: int) -> None:
        if self._loop_handle is not None:
            if self._wake_ns <= due_ns:
                return  # already waking in time
            self._loop_handle.cancel()
        self._wake_ns = due_ns
        delay = due_ns - now - SPIN_NS
        if delay >= 1_000_000:  # whole ms, rounded down: it hands over before the deadline
            self._loop_handle = self._loop.call_later((delay // 1_000_000) / 1000, self._tick)
        else:
            self._loop_handle = self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        self._loop_handle = None
        self._wake_ns = 0
        self._run_due()  # wakes again (spins) if the next deadline is still ahead

    def close(self) -> None:
        if self._loop_handle is not None:
            self._loop_handle.cancel()
            self._loop_handle = None
        super().close()


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_LIBC: Any = None


def _libc() -> Any:
    """libc with timerfd_create / timerfd_settime / prctl typed; raises OSError without them."""
    global _LIBC
    if _LIBC is None:
        if not sys.platform.startswith("linux"):
            raise OSError("timerfd is Linux only")
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.timerfd_create.restype = ctypes.c_int
        lib.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p]
        lib.timerfd_settime.restype = ctypes.c_int
        lib.prctl.restype = ctypes.c_int
        _LIBC = lib
    return _LIBC


class TimerfdTimers(_HeapTimers):
    """The heap served by one timerfd: the kernel wakes the loop at the earliest deadline."""

    kind = "precise"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        lib = _libc()
        fd = lib.timerfd_create(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self._fd = fd
        self._settime = lib.timerfd_settime
        self._spec = _Itimerspec()
        self._value = self._spec.it_value
        self._spec_ptr = ctypes.pointer(self._spec)
        self._armed_ns = 0  # when the kernel wakes us (0: not armed, or it fired)
        self._lead = False  # the sleep it ends is a long one (over LEAD_AFTER_NS)
        self._armed_lead = 0  # how early it was armed (the spin it allows)
        self.lead_ns = LEAD_NS  # the early wake for a long sleep (learnt in _on_readable)
        self.short_lead_ns = 0  # and for a short one
        self._lates: dict[bool, list[int]] = {True: [], False: []}  # recent lateness, by kind
        self._late_pos = {True: 0, False: 0}
        self.spun_ns = 0  # spinning to deadlines after an early wake, in all (bench/send_lag.py)
        try:
            loop.add_reader(fd, self._on_readable)
        except BaseException:
            os.close(fd)
            raise

    def _wake_at(self, due_ns: int, now: int) -> None:
        # Wake `lead` early and spin the rest (see LEAD_NS): at most SPIN_SHARE of the sleep.
        ahead = due_ns - now
        lead = ahead > LEAD_AFTER_NS
        early = min(self.lead_ns if lead else self.short_lead_ns, int(ahead * SPIN_SHARE))
        at = due_ns - early
        armed = self._armed_ns
        if armed and armed <= at:
            return  # the kernel wakes us in time already
        self._armed_ns = at = max(at, 1)  # an it_value of 0 would disarm it
        self._lead = lead
        self._armed_lead = early
        value = self._value
        value.tv_sec, value.tv_nsec = divmod(at, 1_000_000_000)
        if self._settime(self._fd, _TFD_TIMER_ABSTIME, self._spec_ptr, None) < 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def _on_readable(self) -> None:
        try:
            os.read(self._fd, 8)  # the expiry count; reading it clears readability
        except BlockingIOError:  # re-armed after it fired: nothing to read yet
            pass
        armed, self._armed_ns = self._armed_ns, 0
        if armed:
            now = _mono()
            self._learn(self._lead, max(now - armed, 0))
            early = self._armed_lead
            self._run_due(NEAR_NS + early)
            if early:
                self.spun_ns += min(max(armed + early - now, 0), early)  # bounded by the early wake
        else:
            self._run_due(NEAR_NS)

    def _learn(self, long: bool, late_ns: int) -> None:
        """Keep `late_ns` (how late the kernel woke us) and re-estimate that kind's lead."""
        lates = self._lates[long]
        size = _WINDOW[long]
        pos = self._late_pos[long]
        if len(lates) < size:
            lates.append(late_ns)
        else:
            lates[pos % size] = late_ns
        self._late_pos[long] = pos + 1
        if long:
            self.lead_ns = long_lead_ns(lates)
        elif pos % _REESTIMATE_EVERY == _REESTIMATE_EVERY - 1:
            self.short_lead_ns = short_lead_ns(lates)

    def close(self) -> None:
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            if not self._loop.is_closed():
                self._loop.remove_reader(fd)
        finally:
            os.close(fd)
            super().close()


def _quantile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def long_lead_ns(lates: list[int]) -> int:
    """The early wake for a long sleep, from how late recent ones ended (see LEAD_NS)."""
    if not lates:
        return LEAD_NS
    return min(MAX_LEAD_NS, max(LEAD_NS, _quantile(lates, 0.95) + LEAD_MARGIN_NS))


def short_lead_ns(lates: list[int]) -> int:
    """The early wake for a short sleep: the least that keeps the lag's p50 and p99 in
    bounds (AIM_P50_NS, AIM_P99_NS), 0 while the wake-ups are prompt enough."""
    if len(lates) < _REESTIMATE_EVERY:
        return 0
    need = max(_quantile(lates, 0.5) - AIM_P50_NS, _quantile(lates, 0.99) - AIM_P99_NS)
    return min(MAX_LEAD_NS, max(0, need))


def make_timers(loop: asyncio.AbstractEventLoop, kind: str | None = None) -> Timers:
    """Timers for `loop` (the running one): `kind` or $HORDE_SEND_TIMERS, default "precise";
    "precise" falls back to "spin" where there is no timerfd."""
    kind = kind or os.environ.get(ENV_KIND) or "precise"
    if kind not in KINDS:
        raise ValueError(f"{ENV_KIND}: {kind!r} is not one of {', '.join(KINDS)}")
    timers: Timers | None = MsTimers(loop) if kind == "ms" else None
    if kind == "precise":
        try:
            timers = TimerfdTimers(loop)
        except (OSError, AttributeError, NotImplementedError):  # no timerfd here: spin instead
            pass
    timers = timers or SpinTimers(loop)
    _here.kind = timers.kind  # for timing_in_use (batches report it)
    return timers


def set_timer_slack_ns(slack_ns: int) -> bool:
    """The calling thread's timer slack (prctl PR_SET_TIMERSLACK; Linux default 50 us): how
    late the kernel may run its sleeps' timeouts to batch wake-ups. False where unsupported."""
    try:
        return _libc().prctl(_PR_SET_TIMERSLACK, ctypes.c_ulong(slack_ns), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


_gc_holds = 0  # agents holding the collector frozen (hold_still)
_gc_lock = threading.Lock()
_here = threading.local()  # the calling thread's timer slack before hold_still (for let_go), its timers' kind


def hold_still() -> bool:
    """Before sending: make the calling thread (the agent's loop) keep time. Its timer slack
    goes to TIMER_SLACK_NS (the kernel may otherwise run its sleeps' timeouts up to 50 us
    late to batch wake-ups), and what the process holds now is frozen out of the garbage
    collector (gc.freeze: a full pass over a Ray worker's heap paused the loop 10-40 ms,
    holding back the sends due meanwhile), and the thread takes the agent's scheduling
    priority (agents/priority.py: SCHED_RR 1 by default, given back if the loop gets
    busy; priority.in_use() says what it got). Undo with let_go(); returns whether the
    timer slack was set (False where the platform does not allow it)."""
    global _gc_holds
    with _gc_lock:  # agents on several threads of one process (in-process runs)
        if _gc_holds == 0:
            gc.freeze()
        _gc_holds += 1
    try:  # a real-time priority needs the thread's loop: it runs the guard (agents/priority.py)
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    priority.raise_thread(loop=loop)
    before = timer_slack_ns()
    if before > 0 and not hasattr(_here, "before"):
        _here.before = before
    return set_timer_slack_ns(TIMER_SLACK_NS)


def let_go() -> None:
    """After sending: the calling thread's timer slack and scheduling priority are what they
    were before hold_still (an agent run on a caller's thread leaves it as it found it), and the frozen objects go back
    to the collector (the last hold only)."""
    global _gc_holds
    priority.restore()
    before = getattr(_here, "before", None)
    if before is not None:
        set_timer_slack_ns(before)
        del _here.before
    with _gc_lock:
        _gc_holds = max(0, _gc_holds - 1)
        if _gc_holds == 0:
            gc.unfreeze()


def timing_in_use() -> str:
    """What the calling thread's sends wait on, between hold_still and let_go: its timers'
    kind and its priority ("precise timers, fifo 1"; agents/priority.py), "" outside."""
    prio = priority.in_use()
    return f"{getattr(_here, 'kind', '?')} timers, {prio}" if prio else ""


def timer_slack_ns() -> int:
    """The calling thread's timer slack (prctl PR_GET_TIMERSLACK), -1 where unsupported."""
    try:
        return int(_libc().prctl(_PR_GET_TIMERSLACK, 0, 0, 0, 0))
    except (OSError, AttributeError):
        return -1


async def sleep_until(timers: Timers, due_ns: int) -> None:
    """Wait until monotonic `due_ns` on `timers` (never earlier); cancellable."""
    if _mono() >= due_ns:
        return
    fut = asyncio.get_running_loop().create_future()
    handle = timers.call_at(due_ns, _wake, fut)
    try:
        await fut
    finally:
        handle.cancel()


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)
