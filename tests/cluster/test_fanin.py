"""horde.cluster.fanin: many agent streams into one event stream, and the watchdog for silent agents.

No Ray: each agent is a fake async stream the test feeds, and the watchdog reads a fake clock
(the module's `time` is replaced), so silence is decided by the test, not by the machine's
speed. The watchdog still wakes on real (short) sleeps; the tests wait for it to have looked
a few times, with a generous real-time guard that only turns a hang into a failure.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from horde.cluster import fanin
from horde.cluster.events import AgentEnded, AgentLost, BatchReceived
from horde.cluster.fanin import FanIn

SILENCE_S = 0.0625  # exact in binary, so the thresholds' edges are exact too
HUNG_FACTOR = 5.0
HUNG_S = SILENCE_S * HUNG_FACTOR  # 0.3125
EPS = 0.001
GUARD_S = 5.0  # real seconds before a wait counts as a hang


class Clock:
    """The watchdog's monotonic clock, moved by the test; counts how often it is read."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0

    def monotonic(self) -> float:
        self.reads += 1
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(fanin, "time", SimpleNamespace(monotonic=c.monotonic))
    return c


class Agent:
    """A fake agent stream: the test puts batches, ends it or makes it fail."""

    def __init__(self) -> None:
        self._q: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.done = False

    def put(self, payload: bytes) -> None:
        self._q.put_nowait(("batch", payload))

    def end(self) -> None:
        self._q.put_nowait(("end", None))

    def fail(self, exc: BaseException) -> None:
        self._q.put_nowait(("fail", exc))

    async def stream(self):
        try:
            while True:
                kind, value = await self._q.get()
                if kind == "end":
                    return
                if kind == "fail":
                    raise value
                yield value
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.done = True


class Probe:
    """A ping: `answers` returns at once, `silent` never returns, `fails` raises (after `gate`)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.calls = 0
        self.gate = asyncio.Event()
        if mode != "gated":
            self.gate.set()

    async def __call__(self) -> object:
        self.calls += 1
        if self.mode == "answers":
            return "pong"
        if self.mode == "silent":
            await asyncio.Event().wait()
        await self.gate.wait()
        raise ConnectionError("no route to host")


class Events:
    """Reads fan.events() in the background into a list (`await Events.reading(fan)`)."""

    def __init__(self, fan: FanIn) -> None:
        self.items: list = []
        self.task = asyncio.create_task(self._read(fan))

    @classmethod
    async def reading(cls, fan: FanIn) -> Events:
        """Start reading, and return once the reader waits for its first event."""
        events = cls(fan)
        await asyncio.sleep(0)
        return events

    async def _read(self, fan: FanIn) -> None:
        async for ev in fan.events():
            self.items.append(ev)

    @property
    def lost(self) -> list[AgentLost]:
        return [e for e in self.items if isinstance(e, AgentLost)]

    async def finished(self) -> list:
        await asyncio.wait_for(self.task, GUARD_S)
        return self.items


async def _until(cond, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GUARD_S
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


async def _watchdog_looks(clock: Clock, times: int = 5) -> None:
    """Wait until the watchdog has read the clock `times` more times (it reads it once a look)."""
    start = clock.reads
    await _until(lambda: clock.reads >= start + times, f"{times} watchdog looks")


def _run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, 4 * GUARD_S))


# -- streams, ends and errors ----------------------------------------------------------------


def test_batches_of_every_agent_arrive_in_order_then_the_stream_ends(clock: Clock) -> None:
    async def main() -> None:
        fan = FanIn(SILENCE_S)
        a, b = Agent(), Agent()
        fan.add(0, 0, a.stream)
        fan.add(1, 3, b.stream)
        events = await Events.reading(fan)
        for i in range(3):
            a.put(b"a%d" % i)
            b.put(b"b%d" % i)
        a.end()
        b.end()
        items = await events.finished()  # ends by itself once every stream has ended
        assert [e.payload for e in items if isinstance(e, BatchReceived) and e.index == 0] == [b"a0", b"a1", b"a2"]
        assert [e.payload for e in items if isinstance(e, BatchReceived) and e.index == 1] == [b"b0", b"b1", b"b2"]
        assert sorted((e.index, e.incarnation) for e in items if isinstance(e, AgentEnded)) == [(0, 0), (1, 3)]
        assert len(items) == 8
        # An agent's end comes after its last batch.
        assert items.index(AgentEnded(0, 0)) > items.index(BatchReceived(0, b"a2"))
        await fan.close()

    _run(main())


def test_no_agents_no_events() -> None:
    async def main() -> None:
        fan = FanIn(SILENCE_S)
        assert [ev async for ev in fan.events()] == []
        await fan.close()

    _run(main())


@pytest.mark.parametrize(
    "exc, namer, lost",
    [
        # stream failure -> the AgentLost it becomes
        (RuntimeError("boom"), None, AgentLost(2, 1, "RuntimeError", "boom")),
        (ConnectionResetError(), None, AgentLost(2, 1, "ConnectionResetError", "")),
        (ValueError("x" * 600), None, AgentLost(2, 1, "ValueError", "x" * 500)),  # long details are cut
        (KeyError("k"), lambda e: ("actor_died", "node gone"), AgentLost(2, 1, "actor_died", "node gone")),
    ],
)
def test_a_stream_error_is_a_lost_agent(clock: Clock, exc: BaseException, namer, lost: AgentLost) -> None:
    async def main() -> None:
        fan = FanIn(SILENCE_S) if namer is None else FanIn(SILENCE_S, namer)
        agent = Agent()
        fan.add(2, 1, agent.stream)
        events = await Events.reading(fan)
        agent.put(b"first")
        agent.fail(exc)
        assert await events.finished() == [BatchReceived(2, b"first"), lost]  # no AgentEnded after a loss
        await fan.close()

    _run(main())


def test_a_replacement_added_after_the_last_stream_ended_is_still_read(clock: Clock) -> None:
    async def main() -> None:
        fan = FanIn(SILENCE_S)
        first = Agent()
        fan.add(0, 0, first.stream)
        first.fail(RuntimeError("died"))
        await _until(lambda: first.done, "the first stream to finish")  # the end marker is queued now
        replacement = Agent()
        fan.add(0, 1, replacement.stream)  # before anyone read the end marker
        events = await Events.reading(fan)  # already queued: the loss and the end marker
        replacement.put(b"r")
        replacement.end()
        assert await events.finished() == [
            AgentLost(0, 0, "RuntimeError", "died"),
            BatchReceived(0, b"r"),
            AgentEnded(0, 1),
        ]
        await fan.close()

    _run(main())


def test_close_cancels_the_streams(clock: Clock) -> None:
    async def main() -> None:
        fan = FanIn(SILENCE_S)
        agents = [Agent(), Agent()]
        for i, a in enumerate(agents):
            fan.add(i, 0, a.stream)
        await asyncio.sleep(0)  # let the streams start
        await fan.close()
        assert [a.cancelled for a in agents] == [True, True]
        assert fan._watchdog is not None and fan._watchdog.done()

    _run(main())


# -- the watchdog ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "probe_mode, silent_s, reason",
    [
        # no probe: silence alone decides
        (None, SILENCE_S, None),  # silent for exactly the limit: not yet
        (None, SILENCE_S + EPS, "silent"),
        (None, 10.0, "silent"),
        # a probe that answers keeps a slow agent alive ... until it is hung
        ("answers", SILENCE_S + EPS, None),
        ("answers", HUNG_S, None),  # hung at exactly the limit: not yet
        ("answers", HUNG_S + EPS, "hung"),
        # a probe that does not answer, or fails: lost as silent
        ("silent", SILENCE_S + EPS, "silent"),
        ("fails", SILENCE_S + EPS, "silent"),
    ],
)
def test_watchdog_verdicts(clock: Clock, probe_mode: str | None, silent_s: float, reason: str | None) -> None:
    async def main() -> None:
        fan = FanIn(SILENCE_S, hung_factor=HUNG_FACTOR)
        agent = Agent()
        probe = Probe(probe_mode) if probe_mode else None
        fan.add(4, 2, agent.stream, probe=probe)
        events = await Events.reading(fan)
        await _watchdog_looks(clock)
        assert events.items == [] and (probe is None or probe.calls == 0)  # not silent yet: no ping
        clock.now = silent_s
        if reason is None:
            if probe is not None:
                await _until(lambda: probe.calls >= 2, "pings")  # pinged, answered, pinged again
            await _watchdog_looks(clock, 10)
            assert events.lost == []
            assert not agent.cancelled
            agent.end()
            assert await events.finished() == [AgentEnded(4, 2)]
        else:
            items = await events.finished()  # the lost agent was the only one: the stream ends
            assert [(e.index, e.incarnation, e.reason) for e in items] == [(4, 2, reason)]
            assert items[0].detail.startswith(f"no batch for {silent_s:.1f}s")
            if probe_mode in ("silent", "fails"):
                assert "no answer to a ping" in items[0].detail
                assert probe.calls >= 1  # pinged before being declared lost
            assert agent.cancelled  # its stream is stopped
        await fan.close()

    _run(main())


def test_a_batch_resets_the_silence_clock(clock: Clock) -> None:
    async def main() -> None:
        fan = FanIn(SILENCE_S)
        agent = Agent()
        fan.add(0, 0, agent.stream)
        events = await Events.reading(fan)
        clock.now = SILENCE_S  # at the limit
        agent.put(b"alive")
        await _until(lambda: len(events.items) == 1, "the batch")
        clock.now = 2 * SILENCE_S  # silent for SILENCE_S since the batch: still fine
        await _watchdog_looks(clock, 10)
        assert events.lost == []
        clock.now = 2 * SILENCE_S + EPS
        items = await events.finished()
        assert [type(e).__name__ for e in items] == ["BatchReceived", "AgentLost"]
        await fan.close()

    _run(main())


def test_two_silent_agents_are_both_lost_even_when_one_ping_hangs_for_ever(clock: Clock) -> None:
    """A ping to an unreachable node may never return and ignore its cancellation (a Ray call
    while the coordinator's node is cut off): it must time out, and must not hold back the
    verdict on the other agent (both were lost only at the heal, issue 12)."""
    stubborn_cancels = 0
    released = asyncio.Event()  # only the test's end lets the stubborn ping go

    async def hangs_for_ever() -> object:
        nonlocal stubborn_cancels
        while not released.is_set():
            try:
                await released.wait()
            except asyncio.CancelledError:  # refuses to be cancelled, like a call nobody answers
                stubborn_cancels += 1
        return "too late"

    async def main() -> None:
        probe_timeout_s = 0.05  # real seconds: the loop's clock bounds the ping
        fan = FanIn(SILENCE_S, probe_timeout_s=probe_timeout_s, hung_factor=1000.0)
        stuck, cut = Agent(), Agent()
        other = Probe("silent")
        fan.add(0, 0, stuck.stream, probe=hangs_for_ever)
        fan.add(1, 0, cut.stream, probe=other)
        events = await Events.reading(fan)
        loop = asyncio.get_running_loop()
        began = loop.time()
        clock.now = SILENCE_S + EPS  # both go silent at once
        items = await events.finished()  # both lost: the fan-in ends
        took_s = loop.time() - began
        assert sorted((e.index, e.reason) for e in items) == [(0, "silent"), (1, "silent")]
        assert all("no answer to a ping" in e.detail for e in items)
        assert stuck.cancelled and cut.cancelled
        assert stubborn_cancels >= 1  # the hanging ping was cancelled and did not block
        # Bound: a look (<= 0.1 s), the ping's timeout, and scheduling slack; far below a hang.
        assert took_s < 10 * (0.1 + probe_timeout_s)
        released.set()
        await fan.close()

    _run(main())


def test_a_slow_agent_that_answers_pings_and_then_sends_is_never_lost(clock: Clock) -> None:
    async def main() -> None:
        fan = FanIn(SILENCE_S)
        agent = Agent()
        probe = Probe("answers")
        fan.add(0, 0, agent.stream, probe=probe)
        events = await Events.reading(fan)
        for i in range(3):
            clock.now += 3 * SILENCE_S  # late every time, but below the hung limit
            calls = probe.calls
            await _until(lambda c=calls: probe.calls > c, "a ping")
            agent.put(b"late %d" % i)
            await _until(lambda n=i: len(events.items) == n + 1, "the batch")
        agent.end()
        assert await events.finished() == [BatchReceived(0, b"late %d" % i) for i in range(3)] + [AgentEnded(0, 0)]
        await fan.close()

    _run(main())


def test_a_batch_during_a_failing_ping_keeps_the_agent(clock: Clock) -> None:
    async def main() -> None:
        fan = FanIn(SILENCE_S, probe_timeout_s=GUARD_S)
        agent = Agent()
        probe = Probe("gated")  # fails, but only once the test opens the gate
        fan.add(0, 0, agent.stream, probe=probe)
        events = await Events.reading(fan)
        clock.now = SILENCE_S + EPS
        await _until(lambda: probe.calls == 1, "the ping")
        agent.put(b"here after all")  # the batch comes in while the ping is out
        await _until(lambda: len(events.items) == 1, "the batch")
        probe.gate.set()  # now the ping fails: too late to call the agent silent
        await _watchdog_looks(clock, 10)
        assert events.lost == []
        agent.end()
        assert await events.finished() == [BatchReceived(0, b"here after all"), AgentEnded(0, 0)]
        await fan.close()

    _run(main())


@pytest.mark.parametrize(
    "grace_s, silent_s, lost",
    [
        (1.0, SILENCE_S + EPS, False),  # past the silence limit, inside the start lead
        (1.0, 1.0 + SILENCE_S, False),  # the lead plus the limit, exactly
        (1.0, 1.0 + SILENCE_S + EPS, True),
        (0.0, SILENCE_S + EPS, True),  # no lead
    ],
)
def test_grace_extends_the_first_deadline(clock: Clock, grace_s: float, silent_s: float, lost: bool) -> None:
    async def main() -> None:
        fan = FanIn(SILENCE_S)
        agent = Agent()
        fan.add(0, 0, agent.stream, grace_s=grace_s)
        events = await Events.reading(fan)
        clock.now = silent_s
        if lost:
            assert [e.reason for e in await events.finished()] == ["silent"]
        else:
            await _watchdog_looks(clock, 10)
            assert events.items == []
        await fan.close()

    _run(main())


def test_touch_all_restarts_every_silence_clock(clock: Clock) -> None:
    async def main() -> None:
        fan = FanIn(SILENCE_S)
        agents = [Agent(), Agent()]
        for i, a in enumerate(agents):
            fan.add(i, 0, a.stream)
        events = await Events.reading(fan)
        clock.now = 10.0  # long silent (waiting for the common start instant) ...
        fan.touch_all()  # ... but touched before the watchdog could look
        await _watchdog_looks(clock, 10)
        assert events.items == []
        clock.now = 10.0 + SILENCE_S + EPS
        items = await events.finished()
        assert sorted((e.index, e.reason) for e in items) == [(0, "silent"), (1, "silent")]
        await fan.close()

    _run(main())


def test_a_lost_agent_is_reported_once_and_the_others_carry_on(clock: Clock) -> None:
    async def main() -> None:
        fan = FanIn(SILENCE_S)
        quiet, busy = Agent(), Agent()
        fan.add(0, 0, quiet.stream)
        fan.add(1, 0, busy.stream, grace_s=100.0)
        events = await Events.reading(fan)
        clock.now = SILENCE_S + EPS
        await _until(lambda: len(events.lost) == 1, "the loss")
        await _watchdog_looks(clock, 10)  # the watchdog keeps looking: no second report
        assert events.items == [events.lost[0]] and events.lost[0].index == 0
        assert quiet.cancelled and not busy.cancelled
        busy.put(b"b")
        busy.end()
        assert (await events.finished())[1:] == [BatchReceived(1, b"b"), AgentEnded(1, 0)]
        await fan.close()

    _run(main())


@pytest.mark.parametrize(
    "finish, expected",
    [
        ("end", [AgentEnded(0, 0), AgentEnded(1, 0)]),  # every agent ended before the first read
        ("fail", [AgentLost(0, 0, "OSError", "gone"), AgentLost(1, 0, "OSError", "gone")]),  # ... or failed
    ],
)
def test_events_queued_before_the_first_read_are_delivered(clock: Clock, finish: str, expected: list) -> None:
    async def main() -> None:
        fan = FanIn(SILENCE_S)
        agents = [Agent(), Agent()]
        for i, a in enumerate(agents):
            fan.add(i, 0, a.stream)
            if finish == "end":
                a.end()
            else:
                a.fail(OSError("gone"))
        await _until(lambda: all(a.done for a in agents), "both streams to finish")
        assert [ev async for ev in fan.events()] == expected
        await fan.close()

    _run(main())


# -- a bounded queue ---------------------------------------------------------------------------


def test_a_full_queue_holds_the_stream_back_without_declaring_it_lost(clock: Clock) -> None:
    """Three slots: a stream with ten batches ready is read three batches ahead of the
    consumer, no further; the wait is not silence, however long the clock says it was."""

    async def main() -> None:
        fan = FanIn(SILENCE_S, hung_factor=HUNG_FACTOR, max_queued_batches=3)
        agent = Agent()
        for i in range(10):
            agent.put(b"%d" % i)
        agent.end()
        fan.add(0, 0, agent.stream)
        await _until(lambda: 0 in fan._backpressured or fan._queue.qsize() >= 3, "the queue to fill")
        await asyncio.sleep(0.01)
        assert fan._queue.qsize() == 3  # three batches queued, the fourth held in the stream's task
        assert agent._q.qsize() == 10 - 4 + 1  # six batches and the end still unread
        clock.now += 10 * HUNG_S  # the consumer is slow: far past every silence limit
        await _watchdog_looks(clock)
        events = await Events.reading(fan)
        items = await events.finished()
        assert [e.payload for e in items if isinstance(e, BatchReceived)] == [b"%d" % i for i in range(10)]
        assert not events.lost
        assert isinstance(items[-1], AgentEnded)
        await fan.close()

    _run(main())


# -- acks for the agents' leases (agents/lease.py) ---------------------------------------------


def test_a_stream_is_asked_for_its_next_batch_only_once_the_last_is_queued_and_arrival_times_are_kept(
    clock: Clock,
) -> None:
    """The fan-in's demand is the agents' ack (agents/runner.py stream): the stream resumes
    after batch n only when n is in the queue, and a full queue asks for nothing more."""

    async def main() -> None:
        fan = FanIn(SILENCE_S, max_queued_batches=2)
        asked: list[tuple[int, int]] = []  # (batch just resumed after, batches queued then)

        async def stream():
            for n in range(4):
                clock.now = 5.0 + n
                yield b"%d" % n
                asked.append((n, fan._queue.qsize()))

        fan.add(0, 1, stream)
        assert fan.last_batch_at(0, 1) is None
        await _until(lambda: (0, 1) in fan._backpressured, "the queue to fill")
        await asyncio.sleep(0.01)
        # two batches queued; the third arrived and waits for a slot: only the first two were asked past
        assert asked == [(0, 1), (1, 2)]
        events = await Events.reading(fan)
        items = await events.finished()
        assert [e.payload for e in items if isinstance(e, BatchReceived)] == [b"0", b"1", b"2", b"3"]
        assert [n for n, _ in asked] == [0, 1, 2, 3] and all(q >= 0 for _, q in asked)
        assert fan.last_batch_at(0, 1) == 8.0  # kept after the stream ended
        await fan.close()

    _run(main())


def test_a_held_stream_starts_no_earlier_than_its_time() -> None:
    async def main() -> None:
        from horde.cluster.fanin import held

        started: list[float] = []

        async def stream():
            started.append(time.monotonic())
            yield b"x"

        until = time.monotonic() + 0.2
        assert [p async for p in held(stream, until)()] == [b"x"]
        assert started[0] >= until

    asyncio.run(main())
