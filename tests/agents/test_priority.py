"""agents/priority.py: the agent thread's priority while it sends, given back exactly, and
the guard that takes a real-time priority away from a busy loop.

Behaviour only; what the priority does to the send lag is measured in bench/send_lag.py."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from horde.agents import priority
from horde.agents.runner import new_event_loop
from horde.agents.timers import hold_still, let_go

LINUX = sys.platform.startswith("linux")
MAY_RT = LINUX and (os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_RTPRIO)[0] > 0)
needs_rt = pytest.mark.skipif(not MAY_RT, reason="needs CAP_SYS_NICE or RLIMIT_RTPRIO > 0 (Linux)")


def _sched(tid: int) -> tuple[int, int, int]:
    """(policy without SCHED_RESET_ON_FORK, real-time priority, nice) of thread `tid`."""
    policy = os.sched_getscheduler(tid) & ~getattr(os, "SCHED_RESET_ON_FORK", 0)
    return policy, os.sched_getparam(tid).sched_priority, os.getpriority(os.PRIO_PROCESS, tid)


def _on_thread(body: Callable[[], Any], nice: int = 0) -> Any:
    """Run `body` on a fresh thread at `nice`; return what it returned (re-raise what it raised)."""
    out: dict = {}

    def main() -> None:
        try:
            if nice:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
            out["value"] = body()
        except BaseException as exc:  # surfaces in the test
            out["error"] = exc

    th = threading.Thread(target=main)
    th.start()
    th.join(30)
    assert not th.is_alive()
    if "error" in out:
        raise out["error"]
    return out["value"]


def _in_loop(coro_fn: Callable[[], Any]) -> Any:
    loop = new_event_loop()
    try:
        return loop.run_until_complete(coro_fn())
    finally:
        loop.close()


@needs_rt
@pytest.mark.parametrize(("mode", "policy"), [("fifo", "SCHED_FIFO"), ("rr", "SCHED_RR")])
def test_a_real_time_mode_is_taken_on_the_loop_thread_and_given_back_exactly(mode: str, policy: str) -> None:
    async def body() -> dict:
        tid = threading.get_native_id()
        seen = {"before": _sched(tid), "label": priority.raise_thread(mode, asyncio.get_running_loop())}
        seen["during"] = _sched(tid)
        seen["in_use"] = priority.in_use()
        await asyncio.sleep(0.3)  # idle: the guard leaves it
        seen["idle"] = _sched(tid)
        priority.restore()
        seen["after"] = _sched(tid)
        seen["in_use_after"] = priority.in_use()
        return seen

    seen = _on_thread(lambda: _in_loop(body), nice=-3)
    assert seen["before"] == (os.SCHED_OTHER, 0, -3)
    assert seen["label"] == seen["in_use"] == f"{mode} {priority.RT_PRIORITY}"
    assert seen["during"] == (getattr(os, policy), priority.RT_PRIORITY, -3)
    assert seen["idle"] == seen["during"]
    assert seen["after"] == seen["before"]  # policy, priority and nice as it found them
    assert seen["in_use_after"] == ""


@needs_rt
def test_a_saturated_loop_gives_its_real_time_priority_back_at_once() -> None:
    async def body() -> dict:
        tid = threading.get_native_id()
        before = _sched(tid)
        priority.raise_thread("fifo", asyncio.get_running_loop())
        raised = _sched(tid)
        t0 = time.monotonic()
        demoted_after = None
        while time.monotonic() - t0 < 2.0:  # bounded: a busy loop that still turns
            end = time.monotonic() + 0.002
            while time.monotonic() < end:
                pass
            await asyncio.sleep(0)
            if _sched(tid)[0] != os.SCHED_FIFO:
                demoted_after = time.monotonic() - t0
                break
        seen = {"before": before, "raised": raised, "busy": _sched(tid), "after_s": demoted_after}
        seen["in_use"] = priority.in_use()
        priority.restore()
        seen["after"] = _sched(tid)
        return seen

    seen = _on_thread(lambda: _in_loop(body), nice=-5)
    assert seen["raised"][0] == os.SCHED_FIFO
    assert seen["busy"] == seen["before"] == (os.SCHED_OTHER, 0, -5)  # its own policy and nice back
    assert seen["after_s"] is not None and seen["after_s"] < 0.5  # within a few guard intervals
    assert seen["in_use"].startswith(f"fifo {priority.RT_PRIORITY}, demoted (loop busy")
    assert seen["after"] == seen["before"]


@needs_rt
def test_a_loop_busy_over_its_share_of_a_second_is_demoted_and_one_under_it_is_not() -> None:
    def drive(busy_share: float) -> tuple[int, str]:
        async def body() -> tuple[int, str]:
            tid = threading.get_native_id()
            priority.raise_thread("rr", asyncio.get_running_loop())
            t0 = time.monotonic()
            while time.monotonic() - t0 < 1.6:  # bounded; over BUSY_SPAN_NS
                end = time.monotonic() + 0.020 * busy_share
                while time.monotonic() < end:
                    pass
                await asyncio.sleep(0.020 * (1 - busy_share))
            out = (_sched(tid)[0], priority.in_use())
            priority.restore()
            return out

        return _on_thread(lambda: _in_loop(body))

    assert priority.SATURATED_SHARE > 0.85 > priority.BUSY_SHARE > 0.2
    policy, label = drive(0.85)  # under SATURATED_SHARE in any one interval: the second's share demotes it
    assert policy == os.SCHED_OTHER and "demoted" in label
    span = re.search(r"of (\d+) ms", label)
    assert span is not None and int(span.group(1)) >= priority.BUSY_SPAN_NS // 1_000_000
    policy, label = drive(0.2)
    assert policy == os.SCHED_RR and label == f"rr {priority.RT_PRIORITY}"


@needs_rt
def test_threads_the_real_time_agent_starts_do_not_inherit_its_priority() -> None:
    async def body() -> tuple:
        priority.raise_thread("fifo", asyncio.get_running_loop())
        child = _on_thread(lambda: _sched(threading.get_native_id()))
        priority.restore()
        return child

    policy, rt, _ = _on_thread(lambda: _in_loop(body))
    assert (policy, rt) == (os.SCHED_OTHER, 0)


@pytest.mark.skipif(not LINUX, reason="sched_setscheduler is Linux only")
def test_without_a_loop_there_is_no_real_time_priority_and_nice_is_given_back() -> None:
    def body() -> dict:
        tid = threading.get_native_id()
        seen = {"before": _sched(tid), "label": priority.raise_thread("fifo", None), "during": _sched(tid)}
        priority.restore()
        seen["after"] = _sched(tid)
        return seen

    seen = _on_thread(body, nice=-2)
    assert seen["during"][0] == os.SCHED_OTHER  # no guard, no real time
    if MAY_RT:
        assert seen["label"] == f"nice {priority.NICE}" and seen["during"][2] == priority.NICE
    assert seen["after"] == seen["before"] == (os.SCHED_OTHER, 0, -2)


@pytest.mark.skipif(not LINUX, reason="sched_setscheduler is Linux only")
def test_where_the_platform_refuses_nothing_changes_and_nothing_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    monkeypatch.setattr(os, "setpriority", refuse)

    async def body() -> dict:
        tid = threading.get_native_id()
        seen = {"before": _sched(tid), "label": priority.raise_thread("fifo", asyncio.get_running_loop())}
        seen["during"] = _sched(tid)
        priority.restore()
        return seen

    seen = _on_thread(lambda: _in_loop(body))
    assert seen["during"] == seen["before"]
    assert seen["label"] == "default"  # nice 0, as the thread was


def test_the_mode_comes_from_the_environment_and_a_bad_one_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(priority.ENV_MODE, "nice")
    assert priority.chosen_mode() == "nice" and priority.mode_problem() is None
    monkeypatch.setenv(priority.ENV_MODE, "turbo")
    assert priority.chosen_mode() == priority.DEFAULT_MODE
    assert "HORDE_AGENT_PRIORITY='turbo'" in (priority.mode_problem() or "")
    with pytest.raises(ValueError, match="turbo"):
        priority.raise_thread("turbo")

    def body() -> str:  # the run goes on at the default, and what it had says why
        label = priority.raise_thread(None, None)
        priority.restore()
        return label

    assert "HORDE_AGENT_PRIORITY='turbo' is not one of" in _on_thread(body)


@needs_rt
def test_hold_still_raises_the_agent_thread_and_let_go_leaves_it_as_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(priority.ENV_MODE, raising=False)

    async def body() -> dict:
        tid = threading.get_native_id()
        seen = {"before": _sched(tid)}
        hold_still()
        seen["during"], seen["in_use"] = _sched(tid), priority.in_use()
        let_go()
        seen["after"] = _sched(tid)
        return seen

    seen = _on_thread(lambda: _in_loop(body), nice=-10)
    assert seen["in_use"] == f"{priority.DEFAULT_MODE} {priority.RT_PRIORITY}"
    assert seen["during"][:2] == (getattr(os, f"SCHED_{priority.DEFAULT_MODE.upper()}"), priority.RT_PRIORITY)
    assert seen["after"] == seen["before"] == (os.SCHED_OTHER, 0, -10)


@pytest.mark.skipif(not LINUX or os.geteuid() != 0, reason="lowers nice and takes real time: root on Linux")
@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", ["rr", "nice", "default"])
def test_an_agents_batches_say_its_timers_and_priority_and_it_leaves_the_callers_thread_as_it_was(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from horde.agents.samples import decode_batch
    from horde.agents.traffic import TrafficAgent
    from horde.coordinator.measure.health import AgentTotals, generator_verdict
    from tests.agents.test_send_timers import _app_server, _spec

    monkeypatch.setenv(priority.ENV_MODE, mode)

    async def body() -> dict:
        tid = threading.get_native_id()
        srv, url = await _app_server()  # a plain aiohttp app on the agent's own loop
        payloads: list[bytes] = []
        before = _sched(tid)
        try:
            await TrafficAgent(_spec(url), timers="precise").run(time.time_ns() + 50_000_000, payloads.append)
        finally:
            await srv.cleanup()
        return {"before": before, "after": _sched(tid), "batches": [decode_batch(p) for p in payloads]}

    seen = _on_thread(lambda: _in_loop(body), nice=-4)
    assert seen["after"] == seen["before"] == (os.SCHED_OTHER, 0, -4)
    batches = seen["batches"]
    assert len(batches) >= 2 and sum(b.requests for b in batches) > 60
    expected = {"rr": f"rr {priority.RT_PRIORITY}", "nice": f"nice {priority.NICE}"}.get(mode, "nice -4 (as found)")
    assert {b.timing for b in batches} == {f"precise timers, {expected}"}
    totals = AgentTotals()
    for b in batches:
        totals.add(b.readings, b.watermark_ns, b.engine, b.timing)
    assert generator_verdict({"0": totals}, 100)["agents"]["0"]["timing"] == f"precise timers, {expected}"


def test_a_batch_carries_the_timing_it_is_given_and_an_oversized_one_is_refused_by_name() -> None:
    import msgpack

    from horde.agents.records import GeneratorReadings
    from horde.agents.samples import MAX_TIMING_CHARS, BatchFormatError, decode_batch, encode_batch

    def batch(timing: str | None) -> bytes:
        return encode_batch(
            agent=0, incarnation=0, seq=0, watermark_ns=0, readings=GeneratorReadings(), records=b"", timing=timing
        )

    assert decode_batch(batch("precise timers, rr 1")).timing == "precise timers, rr 1"
    assert decode_batch(batch(None)).timing == ""  # this thread is not sending: nothing to say
    m = msgpack.unpackb(batch(""), raw=False)
    m["timing"] = "x" * (MAX_TIMING_CHARS + 1)
    with pytest.raises(BatchFormatError, match="'timing'"):
        decode_batch(msgpack.packb(m, use_bin_type=True))
