"""agents/timers.py: ordering, cancel, never early, re-arm, the fallback, no leaked fds.

Behaviour only; how late the timers fire is measured in bench/send_lag.py."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time

import pytest

from horde.agents import timers as timers_mod
from horde.agents.runner import new_event_loop
from horde.agents.timers import (
    KINDS,
    LEAD_NS,
    MAX_LEAD_NS,
    SpinTimers,
    TimerfdTimers,
    make_timers,
    sleep_until,
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


@pytest.mark.skipif(not LINUX, reason="timerfd is Linux only")
def test_the_early_wake_adapts_to_how_late_the_kernel_wakes_within_its_bounds(loop) -> None:
    t = TimerfdTimers(loop)
    try:

        def wake(late_ns: int, times: int) -> None:
            for _ in range(times):
                t._lead = True
                t._armed_ns = time.monotonic_ns() - late_ns  # the kernel woke us this late
                t._on_readable()

        assert t.lead_ns == LEAD_NS
        wake(400_000, 60)  # an idle machine: long sleeps end ~400 us late
        assert 700_000 < t.lead_ns <= MAX_LEAD_NS
        wake(5_000_000, 60)  # far later: the spin stays bounded
        assert t.lead_ns == MAX_LEAD_NS
        wake(0, 120)  # wake-ups on time again: back to the floor
        assert t.lead_ns == LEAD_NS
        assert t.call_at(time.monotonic_ns() + 10**9, lambda: None)  # still serves deadlines
    finally:
        t.close()
