"""agents/timers.py: ordering, cancel, never early, re-arm, the fallback, no leaked fds.

Behaviour only; how late the timers fire is measured in bench/send_lag.py."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
from unittest import mock

import pytest

from horde.agents import timers as timers_mod
from horde.agents.runner import new_event_loop
from horde.agents.timers import (
    AIM_P50_NS,
    AIM_P99_NS,
    KINDS,
    LEAD_MARGIN_NS,
    LEAD_NS,
    MAX_LEAD_NS,
    SPIN_SHARE,
    TIMER_SLACK_NS,
    SpinTimers,
    TimerfdTimers,
    hold_still,
    let_go,
    long_lead_ns,
    make_timers,
    short_lead_ns,
    sleep_until,
    timer_slack_ns,
)

LINUX = sys.platform.startswith("linux")


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request: pytest.FixtureRequest):
    lp = asyncio.new_event_loop() if request.param == "asyncio" else new_event_loop()
    yield lp
    lp.close()


def _timerfds() -> int:
    """This process's open timerfds."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[timerfd]"
        except OSError:  # closed meanwhile (the listing's own fd)
            pass
    return n


async def _fire_all(kind: str, offsets_us: list[int], cancel: set[int] = frozenset()) -> list[tuple[int, int, int]]:
    """Schedule one callback per offset (us from now); return (index, due, ran_at) in run order."""
    timers = make_timers(asyncio.get_running_loop(), kind)
    assert timers.kind == kind
    ran: list[tuple[int, int, int]] = []
    base = time.monotonic_ns() + 2_000_000
    handles = []
    for i, off in enumerate(offsets_us):
        due = base + off * 1000
        handles.append(timers.call_at(due, lambda i=i, due=due: ran.append((i, due, time.monotonic_ns()))))
    for i in cancel:
        handles[i].cancel()
    deadline = time.monotonic() + 2.0
    while len(ran) < len(offsets_us) - len(cancel) and time.monotonic() < deadline:
        await asyncio.sleep(0.002)
    await asyncio.sleep(0.005)  # a cancelled one would have run by now
    timers.close()
    return ran


@pytest.mark.parametrize("kind", KINDS)
def test_callbacks_run_in_deadline_order_never_early(loop, kind: str) -> None:
    # Two equal (they keep their order); 8 ms: far enough to be woken early and spin (LEAD_NS).
    offsets = [900, 100, 500, 100, 300, 0, 2500, 700, 8000]
    ran = loop.run_until_complete(_fire_all(kind, offsets))
    expected = sorted(range(len(offsets)), key=lambda i: (offsets[i], i))
    if kind == "ms":  # whole-ms timers: those due within one millisecond may swap
        assert sorted(i for i, _, _ in ran) == sorted(expected)
    else:
        assert [i for i, _, _ in ran] == expected
    assert all(at >= due for _, due, at in ran)


@pytest.mark.parametrize("kind", KINDS)
def test_cancelled_callbacks_never_run(loop, kind: str) -> None:
    ran = loop.run_until_complete(_fire_all(kind, [0, 200, 400, 600], cancel={0, 2}))
    assert sorted(i for i, _, _ in ran) == [1, 3]


@pytest.mark.parametrize("kind", ["precise", "spin"])
def test_an_earlier_deadline_re_arms_and_callbacks_schedule_more(loop, kind: str) -> None:
    """A later timer armed first, then an earlier one: the earlier runs first, on time; a
    callback scheduling the next (as the agent's pump does) keeps the chain going."""

    async def main() -> list[str]:
        timers = make_timers(asyncio.get_running_loop(), kind)
        order: list[str] = []
        now = time.monotonic_ns()
        timers.call_at(now + 30_000_000, order.append, "late")
        t_early = now + 3_000_000

        def chain(n: int) -> None:
            assert time.monotonic_ns() >= t_early + n * 500_000
            order.append(f"chain{n}")
            if n < 3:
                timers.call_at(t_early + (n + 1) * 500_000, chain, n + 1)

        timers.call_at(t_early, chain, 0)
        await asyncio.sleep(0.05)
        timers.close()
        return order

    assert loop.run_until_complete(main()) == ["chain0", "chain1", "chain2", "chain3", "late"]


def test_a_raising_callback_does_not_stop_the_others(loop) -> None:
    async def main() -> tuple[list[int], list[dict]]:
        lp = asyncio.get_running_loop()
        errors: list[dict] = []
        lp.set_exception_handler(lambda _lp, ctx: errors.append(ctx))
        timers = make_timers(lp, "precise")
        ran: list[int] = []
        t = time.monotonic_ns() + 1_000_000
        timers.call_at(t, lambda: 1 / 0)
        timers.call_at(t, ran.append, 2)
        await asyncio.sleep(0.02)
        timers.close()
        return ran, errors

    ran, errors = loop.run_until_complete(main())
    assert ran == [2]
    assert len(errors) == 1 and isinstance(errors[0]["exception"], ZeroDivisionError)


@pytest.mark.skipif(not LINUX, reason="timerfd is Linux only")
def test_precise_uses_a_timerfd_and_closes_it(loop) -> None:
    before = _timerfds()

    async def main() -> None:
        timers = make_timers(asyncio.get_running_loop())
        assert isinstance(timers, TimerfdTimers)
        assert _timerfds() == before + 1
        await sleep_until(timers, time.monotonic_ns() + 1_000_000)
        timers.close()
        timers.close()  # twice is harmless

    loop.run_until_complete(main())
    assert _timerfds() == before


def test_without_timerfd_precise_falls_back_to_spin(loop, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_libc():
        raise OSError("no timerfd here")

    monkeypatch.setattr(timers_mod, "_libc", no_libc)

    async def main() -> None:
        timers = make_timers(asyncio.get_running_loop(), "precise")
        assert isinstance(timers, SpinTimers)
        due = time.monotonic_ns() + 3_000_000
        await sleep_until(timers, due)
        assert time.monotonic_ns() >= due
        timers.close()

    loop.run_until_complete(main())


def test_the_kind_comes_from_the_environment_and_a_bad_one_is_named(loop, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        lp = asyncio.get_running_loop()
        monkeypatch.setenv("HORDE_SEND_TIMERS", "ms")
        assert make_timers(lp).kind == "ms"
        monkeypatch.setenv("HORDE_SEND_TIMERS", "fast")
        with pytest.raises(ValueError, match="HORDE_SEND_TIMERS: 'fast'"):
            make_timers(lp)

    loop.run_until_complete(main())


@pytest.mark.parametrize("kind", KINDS)
def test_sleep_until_is_cancellable_and_leaves_nothing_scheduled(loop, kind: str) -> None:
    async def main() -> None:
        timers = make_timers(asyncio.get_running_loop(), kind)
        task = asyncio.ensure_future(sleep_until(timers, time.monotonic_ns() + 10_000_000_000))
        await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        if isinstance(timers, (TimerfdTimers, SpinTimers)):
            assert all(h.cancelled for _, _, h in timers._heap)
        timers.close()

    loop.run_until_complete(main())


def test_closed_timers_refuse_new_calls(loop) -> None:
    async def main() -> None:
        timers = make_timers(asyncio.get_running_loop(), "precise")
        timers.close()
        with pytest.raises(RuntimeError, match="closed"):
            timers.call_at(time.monotonic_ns(), print)

    loop.run_until_complete(main())


def test_a_dense_schedule_lets_the_loop_turn_between_callbacks(loop) -> None:
    """Deadlines 20 us apart are spun to, but not one after another in a single turn: the
    loop gets to its sockets (here: another task) between them."""

    async def main() -> list[int]:
        timers = make_timers(asyncio.get_running_loop(), "precise")
        turns = 0
        seen: list[int] = []
        done = asyncio.get_running_loop().create_future()

        async def other_task() -> None:
            nonlocal turns
            while not done.done():
                turns += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(other_task())
        start = time.monotonic_ns() + 2_000_000

        def fire(k: int) -> None:
            seen.append(turns)
            if k < 100:
                timers.call_at(time.monotonic_ns() + 20_000, fire, k + 1)  # never overdue when set
            else:
                done.set_result(None)

        timers.call_at(start, fire, 0)
        await asyncio.wait_for(done, 5)
        await task
        timers.close()
        return seen

    seen = loop.run_until_complete(main())
    turned = sum(b > a for a, b in itertools.pairwise(seen))
    assert turned >= 20  # spinning from one callback to the next in one turn gives 0


def _wake(t: TimerfdTimers, late_ns: int, times: int, long: bool) -> None:
    """`times` wake-ups of the kind `long`, each `late_ns` after the timerfd was due."""
    now = time.monotonic_ns()
    # The clock the timers read stands still, so the lateness they learn is exactly late_ns
    # (on a loaded machine the test itself can be descheduled between arming and waking).
    with mock.patch.object(timers_mod, "_mono", lambda: now):
        for _ in range(times):
            t._lead = long
            t._armed_ns = now - late_ns  # the kernel woke us this late
            t._on_readable()


@pytest.mark.skipif(not LINUX, reason="timerfd is Linux only")
def test_the_early_wake_adapts_to_how_late_the_kernel_wakes_within_its_bounds(loop) -> None:
    t = TimerfdTimers(loop)
    try:
        assert t.lead_ns == LEAD_NS and t.short_lead_ns == 0
        _wake(t, 400_000, 60, long=True)  # an idle machine: long sleeps end ~400 us late
        assert 400_000 < t.lead_ns <= 400_000 + 2 * LEAD_MARGIN_NS
        _wake(t, 5_000_000, 60, long=True)  # far later: the spin stays bounded
        assert t.lead_ns == MAX_LEAD_NS
        _wake(t, 0, 120, long=True)  # wake-ups on time again: back to the floor
        assert t.lead_ns == LEAD_NS
        assert t.short_lead_ns == 0  # the long ones say nothing about the short ones
        _wake(t, AIM_P50_NS // 2, 256, long=False)  # short sleeps ending promptly: no spin at all
        assert t.short_lead_ns == 0
        _wake(t, 150_000, 256, long=False)  # a slow median: wake early by what it lacks
        assert 150_000 - AIM_P50_NS - 10_000 < t.short_lead_ns <= 150_000 - AIM_P50_NS + 10_000
        for _ in range(256 // 16):  # one in 16 very late: the p99 sets the lead
            _wake(t, 10_000, 15, long=False)
            _wake(t, 3_000_000, 1, long=False)
        assert t.short_lead_ns == MAX_LEAD_NS
        assert t.call_at(time.monotonic_ns() + 10**9, lambda: None)  # still serves deadlines
    finally:
        t.close()


def test_the_lead_estimates_stay_within_their_bounds() -> None:
    assert long_lead_ns([]) == LEAD_NS
    assert long_lead_ns([0] * 32) == LEAD_NS
    assert long_lead_ns([10**9] * 32) == MAX_LEAD_NS
    assert long_lead_ns([200_000] * 32) == 200_000 + LEAD_MARGIN_NS
    assert short_lead_ns([10**9] * 8) == 0  # too few to judge: no spin
    assert short_lead_ns([AIM_P50_NS] * 100) == 0
    lates = [50_000] * 98 + [AIM_P99_NS + 70_000] * 2  # the p99 needs 70 us, the p50 50 us - AIM_P50_NS
    assert short_lead_ns(lates) == 70_000
    assert short_lead_ns([10**9] * 100) == MAX_LEAD_NS


@pytest.mark.skipif(not LINUX, reason="timerfd is Linux only")
def test_an_early_wake_never_runs_a_callback_early_and_spins_at_most_its_share(loop) -> None:
    """With the largest lead learnt, deadlines 0.3-3 ms apart still run at or after their
    time, and the timerfd is armed no earlier than SPIN_SHARE of the sleep before one."""

    async def main() -> tuple[list[tuple[int, int]], list[tuple[int, int, int]], int]:
        t = TimerfdTimers(asyncio.get_running_loop())
        t.lead_ns = t.short_lead_ns = MAX_LEAD_NS
        t._learn = lambda long, late: None  # type: ignore[method-assign]  # keep the lead as set
        ran: list[tuple[int, int]] = []
        armed: list[tuple[int, int, int]] = []  # (armed at, due, when)
        done = asyncio.get_running_loop().create_future()
        gaps = [300_000, 3_000_000, 1_000_000, 700_000, 6_000_000, 400_000] * 4

        wake_at = t._wake_at

        def arming(due_ns: int, now: int) -> None:
            wake_at(due_ns, now)
            armed.append((t._armed_ns, due_ns, now))

        t._wake_at = arming  # type: ignore[method-assign]

        def fire(k: int, due: int) -> None:
            ran.append((due, time.monotonic_ns()))
            if k == len(gaps):
                done.set_result(None)
                return
            now = time.monotonic_ns()
            t.call_at(now + gaps[k], fire, k + 1, now + gaps[k])

        first = time.monotonic_ns() + 2_000_000
        t.call_at(first, fire, 0, first)
        await asyncio.wait_for(done, 5)
        spun = t.spun_ns
        t.close()
        return ran, armed, spun

    ran, armed, spun = loop.run_until_complete(main())
    assert all(at >= due for due, at in ran)
    assert len(armed) >= len(ran) - 1
    assert all(due - (due - now) * SPIN_SHARE - 1 <= at < due for at, due, now in armed)
    assert spun > 0  # it did wake early and spin


@pytest.mark.skipif(not LINUX, reason="prctl is Linux only")
def test_hold_still_sets_the_threads_timer_slack_and_freezes_the_collector_until_let_go() -> None:
    import gc
    import threading

    seen: dict = {}

    def agent_thread() -> None:
        seen["before"] = timer_slack_ns()
        seen["set"] = hold_still()
        seen["during"] = timer_slack_ns()
        seen["frozen"] = gc.get_freeze_count()
        let_go()
        seen["after"] = gc.get_freeze_count()
        seen["slack_after"] = timer_slack_ns()

    frozen_before = gc.get_freeze_count()
    th = threading.Thread(target=agent_thread)
    th.start()
    th.join()
    assert seen["set"] is True
    assert seen["during"] == TIMER_SLACK_NS != seen["before"]
    assert timer_slack_ns() != TIMER_SLACK_NS  # only the agent's thread
    assert seen["frozen"] > 0
    assert seen["after"] == frozen_before
    assert seen["slack_after"] == seen["before"]  # the thread's slack as it found it


@pytest.mark.skipif(not LINUX, reason="prctl timer slack is Linux only")
def test_let_go_gives_a_callers_thread_its_timer_slack_back() -> None:
    # An agent run on the caller's own thread (in-process) must not leave that thread's
    # timer slack at 1 ns: later threads it starts would inherit it.
    before = timer_slack_ns()
    assert hold_still() is True
    try:
        assert timer_slack_ns() == TIMER_SLACK_NS
    finally:
        let_go()
    assert timer_slack_ns() == before
