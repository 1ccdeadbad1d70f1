# Over 500 lines on purpose: this is the measured hot path. The open and closed models
# share the per-slot state, the sample buffer and the engine callbacks (_open_done,
# _closed_done) that record a sample and send the next request with no task or coroutine
# per request; they read the agent's attributes directly, and splitting the models or the
# recording into other objects would add attribute hops and calls per request. The
# benchmarks that justify it and check every change: bench/cpu_per_request.py (figures in
# bench/README.md, 2026-11-27, steady medians: horde's agent 20.6 us/request against wrk's
# 14.1) and bench/open_rate.py for the open model (44 / 34 / 29 us/request at 5000 / 15000 /
# 25000 requests/s).
"""The traffic agent: an AgentSpec in, a stream of encoded sample batches out.

Plain asyncio, no Ray: cluster/ hosts it in an actor (or a thread, in-process). The agent
is the only place that reads the clock and sleeps; the schedules it follows are pure
(agents/stages.py, agents/arrivals.py).

Plain requests on an engine with ``submit`` (the lean engine) are driven by callbacks, not
coroutines: the engine calls ``done(slot, ...)`` from its parser callback, the agent
records the sample into its preallocated buffer and sends the next request from there. No
future, task or coroutine resumption per request. Flows and engines without ``submit``
(aiohttp) run one task per request on the same slots.

Open model: `max_in_flight` slots share one cursor over the arrival schedule. Every due
arrival goes out as soon as a slot is free: a completion sends the next due arrival from
its callback, and one timer (re-armed for the next arrival, at most one per loop tick)
releases arrivals while slots are idle. When every slot is busy the next arrival waits,
and its latency (measured from the intended time) shows the wait: coordinated omission is
corrected, as in wrk2. Such an arrival counts as generator-queued (horde's own
max_in_flight held it back; its record is flagged GENERATOR_QUEUED); one sent late while
a slot was free counts as `late` (the generator's own fault).

Closed model: one slot per virtual user, started and stopped as the planned user count of
this agent's share changes; a user's intended send time is when its think time ended, so
event-loop lag is still visible.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from horde.agents.aggregate import aggregate_records, raw_samples_requested, stage_ends_ns
from horde.agents.arrivals import ConstantArrivals, PoissonArrivals
from horde.agents.data import DataFeeds
from horde.agents.flows import FlowRunner
from horde.agents.http import Engine, make_engine
from horde.agents.lease import Lease, LeaseLapsed
from horde.agents.probe import ProcessProbe
from horde.agents.samples import (
    GENERATOR_QUEUED,
    LATE_SEND_NS,
    RECORD,
    GeneratorReadings,
    SampleBuffer,
    classify_status,
    encode_batch,
)
from horde.agents.spec import AgentSpec, FlowTemplate, UserTemplate
from horde.agents.stages import Profile, level_to_users, users_for_agent
from horde.agents.timers import TimerHandle, Timers, hold_still, let_go, make_timers, sleep_until

if TYPE_CHECKING:
    from horde.agents.users import UserRunner

# An engine's callback-driven send: submit(template index, token, done(token, status, bytes, error)).
_Submit = Callable[[int, int, Callable[[int, int, int, int], None]], None]

Emit = Callable[[bytes], None]

_CHOICES = 1 << 16  # pre-drawn endpoint choices / think times, used cyclically

_T = TypeVar("_T")


def _cycled(values: list[_T]) -> Callable[[], _T]:
    """values[0], values[1], ... for ever, holding no copy of them (~24 ns a draw)."""
    return itertools.chain.from_iterable(itertools.repeat(values)).__next__


_RECORD_SIZE = RECORD.size
_DEFAULT_OK = frozenset(range(200, 400))  # no `expect`: any 2xx or 3xx (as classify_status)
_pack_into = RECORD.pack_into
_mono = time.monotonic_ns
_ARRIVAL_CHUNK = 4096
_LOOP_LAG_PERIOD_S = 0.05
_USER_CONTROL_PERIOD_S = 0.05
_FLUSH_YIELD_NS = 3_000_000  # a flush waits for a send due within this (see _flush_every_interval)
_NO_LEASE_NS = 1 << 62  # an agent run without a lease (tests, benchmarks): never lapses


class TrafficAgent:
    def __init__(
        self,
        spec: AgentSpec,
        *,
        engine_factory: Callable[..., Engine] = make_engine,
        lease_term_s: float | None = None,
        timers: str | None = None,
    ) -> None:
        """`timers`: how sends wait for their time (agents/timers.py; None: $HORDE_SEND_TIMERS
        or "precise"); "ms", the old whole-millisecond loop timers, is for benchmarking."""
        self.spec = spec
        # Fencing (agents/lease.py): with a term, the agent sends only while its host acks
        # its batches. The hot path compares a clock reading it already took with
        # _lease_until (ns, the agent's run time); None: no lease, never fenced.
        self._lease_term_ns = None if lease_term_s is None else int(lease_term_s * 1e9)
        self._lease: Lease | None = None
        self._lease_until = _NO_LEASE_NS
        self._fenced = False
        self._resume_ns: int | None = None
        self._profile = Profile(spec.start_level, spec.stages)
        self._buf = SampleBuffer()
        self._stage_ends = stage_ends_ns(spec.stages)  # batches are aggregated per stage (_batch)
        self._raw_samples = raw_samples_requested()  # HORDE_SAMPLES=raw: every sample is sent (debugging)
        self._probe = ProcessProbe()
        self._seq = 0
        self._stopping = False
        self._stop_event: asyncio.Event | None = None
        self._mono_start = 0
        self._in_flight = 0
        self._users = 0
        self._late = 0
        self._queued = 0
        self._send_lag_max = 0
        self._lag_max = 0
        self._lag_sum = 0
        self._lag_n = 0
        self._interrupted = 0
        self._unsent = 0
        self._sleepers: set[asyncio.Task] = set()
        self._cpu0 = 0.0
        # Per-slot state of the request in flight (a slot is a user, or an open-model sender).
        self._slot_ep: list[int] = []
        self._slot_intended: list[int] = []
        self._slot_sent: list[int] = []
        self._slot_queued: list[bool] = []
        # What a slot does after a slow request; returns the slot's next (endpoint, intended) or None.
        self._after: tuple[Callable[[int], tuple[int, int] | None], ...] = ()
        self._drained: asyncio.Future | None = None  # every sender is done
        self._finished = False
        self._sending_ended = False
        self._slow: set[asyncio.Task] = set()
        # open model
        self._schedule: ConstantArrivals | PoissonArrivals | None = None
        self._pending: list[int] = []
        self._pos = 0
        self._exhausted = False
        self._free: list[int] | None = None
        self._full_since = -1  # since when every slot has been busy (-1: one is free)
        # Arrivals, think times and flow sleeps wait on these (a timerfd: microsecond
        # sends, agents/timers.py); made on the agent's loop in run().
        self._timer_kind = timers
        self._timers: Timers | None = None
        self._timer: TimerHandle | None = None
        self._timer_at = 0
        # closed model
        self._active: list[bool] = []
        self._allowed = 0
        self._thinking: dict[int, TimerHandle] = {}
        self._closed_cb = self._closed_done  # bound once: the engines keep it per request
        self._open_cb = self._open_done

        rng = np.random.default_rng([spec.seed, spec.index, 7])
        w = np.asarray(spec.weights, dtype=float)
        self._choices: list[int] = rng.choice(len(w), size=_CHOICES, p=w / w.sum()).tolist()
        lo, hi = spec.think_time_s
        thinks = (rng.uniform(lo, hi, size=_CHOICES) if hi > lo else np.full(_CHOICES, lo)).tolist()
        # Pre-drawn, used cyclically; a bound __next__ is the cheapest draw per request. Not
        # itertools.cycle: it copies what it yields on its first pass (+0.5 MiB a list, one
        # pointer a request until the pass ends: a slow creep at a low rate).
        self._next_choice: Callable[[], int] = _cycled(self._choices)
        self._next_think_s: Callable[[], float] = _cycled(thinks)
        self._thinks = hi > 0  # False: users send back to back, no draw per request

        names = sorted({t.engine for t in spec.requests})
        # The scenario's data files, this agent's share: one source for every engine, flow and user.
        self.data = DataFeeds(
            spec.data, index=spec.index, count=spec.count, incarnation=spec.incarnation, seed=spec.seed
        )
        kw = dict(
            max_connections=spec.max_connections,
            timeout_s=spec.timeout_s,
            connect_timeout_s=spec.connect_timeout_s,
            limits=spec.limits,
            tls=spec.tls,
            data=self.data,
        )
        self._engines = {n: engine_factory(n, spec.requests, **kw) for n in names}
        # The lean engine (only it calls _open_done/_closed_done back): its rx_ns is the
        # kernel's receive time of the response being called back, 0 when unknown.
        self._stamps = self._engines.get("fast")
        self._send = [self._engines[t.engine].request for t in spec.requests]
        # None where the engine has no submit(); called only for the plain entries (_plain below).
        submits = [getattr(self._engines[t.engine], "submit", None) for t in spec.requests]
        self._submit: list[_Submit] = submits  # type: ignore[assignment]  # its None entries are never called
        self._expect = [t.expect for t in spec.requests]
        # The statuses that count as OK, per endpoint: one set lookup per response.
        self._ok_status = [t.expect or _DEFAULT_OK for t in spec.requests]
        self._flows: list[FlowTemplate | None] = list(spec.flows) or [None] * len(spec.requests)
        self._flow_runner = (
            FlowRunner(
                max_connections=spec.max_connections,
                timeout_s=spec.timeout_s,
                connect_timeout_s=spec.connect_timeout_s,
                clock_ns=self._now,
                limits=spec.limits,
                tls=spec.tls,
                data=self.data,
            )
            if any(f is not None for f in self._flows)
            else None
        )
        # Python users (agents/users.py): loaded here, before the start instant, so that a
        # user file that does not load stops the agent before it sends anything. The runner
        # joins the engines: opened, fenced and closed with them.
        self._user_of: tuple[UserTemplate | None, ...] = tuple(spec.users) or (None,) * len(spec.requests)
        self._user_runner: UserRunner | None = None
        if any(u is not None for u in self._user_of):
            from horde.agents.users import UserRunner

            self._user_runner = UserRunner(
                self._user_of,
                record=self._record_done,
                clock_ns=self._now,
                sleep_until=self._sleep_until,
                max_connections=spec.max_connections,
                timeout_s=spec.timeout_s,
                connect_timeout_s=spec.connect_timeout_s,
                limits=spec.limits,
                lean=spec.engine != "aiohttp",
                data=self.data.next if self.data.names() else None,
                tls=spec.tls,
            )
            self._engines[UserRunner.name] = self._user_runner  # type: ignore[assignment]  # has the lifecycle
        # Plain: sent by submit() and completed by callback; the rest by a task each.
        self._plain = [
            f is None and u is None and sub is not None for f, u, sub in zip(self._flows, self._user_of, self._submit)
        ]

    # -- clock ---------------------------------------------------------------------------

    def _now(self) -> int:
        return time.monotonic_ns() - self._mono_start

    # -- entry points ---------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop sending new requests; in-flight ones get the graceful-stop time. Loop-thread only."""
        if self._stopping:
            return
        self._stopping = True
        self._allowed = 0  # closed-model users leave after their current request
        if self._stop_event is not None:
            self._stop_event.set()
        for t in list(self._sleepers):
            t.cancel()
        if self._drained is not None:  # sending has begun
            self._end_sending()

    async def run(self, start_wall_ns: int, emit: Emit, resume_ns: int | None = None) -> None:
        """Run the whole slice, starting at the common start instant; emit() every batch.
        A replacement (incarnation > 0) takes over the schedule at `resume_ns` of the run,
        where the coordinator stopped counting its predecessor's arrivals as missed (None:
        from its own now)."""
        self._resume_ns = resume_ns
        self._stop_event = asyncio.Event()
        if self._stopping:
            self._stop_event.set()
        # Map the common wall-clock start onto this process's monotonic clock once.
        self._mono_start = time.monotonic_ns() + (start_wall_ns - time.time_ns())
        if self._lease_term_ns is not None:  # granted now, on this process's own clock
            self._lease = Lease(self._lease_term_ns, self._now())
            self._lease_until = self._lease.until_ns
        self._cpu0 = self._probe.read()[0]
        for e in self._engines.values():
            await e.open()
        if self._flow_runner is not None:
            await self._flow_runner.open()
        self._timers = timers = make_timers(asyncio.get_running_loop(), self._timer_kind)
        hold_still()  # this thread's timer slack, and the garbage collector out of the way
        try:
            wait_s = -self._now() / 1e9
            if wait_s > 0 and not self._stopping:
                try:
                    await asyncio.wait_for(self._stop_event.wait(), wait_s)
                except asyncio.TimeoutError:
                    pass
            monitor = asyncio.create_task(self._watch_loop_lag())
            flusher = asyncio.create_task(self._flush_every_interval(emit))
            try:
                if self.spec.model == "open":
                    await self._drive_open()
                else:
                    await self._drive_closed()
            finally:
                monitor.cancel()
                flusher.cancel()
                await asyncio.gather(monitor, flusher, return_exceptions=True)
            emit(self._batch(final=True))
        finally:
            let_go()
            for e in self._engines.values():
                await e.close()
            if self._flow_runner is not None:
                await self._flow_runner.close()
            timers.close()  # its timerfd: nothing waits on it once the drive has ended
        if self._fenced:  # the host reports the agent lost (it stopped on its own)
            raise LeaseLapsed(
                f"agent {self.spec.index}.{self.spec.incarnation}: no batch acknowledged for "
                f"{(self._lease_term_ns or 0) / 1e9:g}s; stopped sending at {self._now() / 1e9:.3f}s"
            )

    # -- the lease ------------------------------------------------------------------------

    def ack(self, seq: int) -> None:
        """The coordinator received batch `seq`: extend the lease (agents/lease.py). Loop-thread only."""
        if self._lease is not None and not self._fenced:
            self._lease_until = self._lease.ack(seq, self._now())

    def lease_stats(self) -> dict:
        """The lease as it stands: its end, its term and the longest a batch waited for its ack (ns)."""
        lease = self._lease
        if lease is None:
            return {}
        return {"until_ns": lease.until_ns, "term_ns": lease.term_ns, "ack_delay_max_ns": lease.ack_delay_max_ns}

    def _lapse(self) -> None:
        """The lease lapsed: send nothing more, drop the backlog and the requests in flight
        (counted as interrupted), and end: run() emits a final batch and raises LeaseLapsed."""
        if self._fenced:
            return
        self._fenced = True
        self._interrupted += self._requests_in_flight()
        self.request_stop()  # no new sends; counts the due arrivals as unsent
        self._finished = True  # completions are neither recorded nor followed by a send
        # Reset every connection now rather than close it gracefully: a request still in a
        # socket's send buffer (a partitioned host) must not reach the target after the
        # fence, when a replacement may be sending (issue 12).
        for e in self._engines.values():
            e.abort_all()
        self._set_drained()  # no graceful wait: the engines are closed at once

    # -- sending --------------------------------------------------------------------------

    def _record(
        self, ep: int, intended: int, sent: int, status: int, nbytes: int, err: int, queued: bool = False
    ) -> None:
        """Record one finished request (the slow path's; the callbacks inline the same)."""
        end = time.monotonic_ns() - self._mono_start
        if not err:
            err = classify_status(status, self._expect[ep])
        lag = sent - intended
        if lag > LATE_SEND_NS:
            # Late because every one of the agent's slots was busy (generator queueing, the
            # max_in_flight cap) is not the generator lagging; late while a slot was free is.
            if queued:
                self._queued += 1
            else:
                self._late += 1
        if lag > self._send_lag_max:
            self._send_lag_max = lag
        if queued:
            err |= GENERATOR_QUEUED
        self._buf.record(ep, intended, sent, end, status, err, nbytes)

    def _record_done(self, ep: int, intended: int, sent: int, status: int, nbytes: int, err: int) -> None:
        """Record a request whose error class is already decided (flow steps and flows)."""
        end = time.monotonic_ns() - self._mono_start
        self._buf.record(ep, intended, sent, end, status, err, nbytes)

    def _grow_slots(self, n: int) -> None:
        while len(self._slot_ep) < n:
            self._slot_ep.append(0)
            self._slot_intended.append(0)
            self._slot_sent.append(0)
            self._slot_queued.append(False)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._slow.add(task)
        task.add_done_callback(self._slow.discard)

    async def _slow_request(self, slot: int, ep: int, intended: int, queued: bool) -> None:
        """A flow, or a request on an engine without submit(); then the slot goes on. When
        the slot's next request is a slow one too (a closed-model user on aiohttp), this
        task carries on with it: a task per request cost aiohttp users ~50 us each."""
        while True:
            try:
                flow = self._flows[ep]
                user = self._user_of[ep]
                if flow is not None or user is not None:
                    if self._now() >= self._lease_until:
                        self._lapse()
                        return
                    if user is not None:  # a Python user's iteration (agents/users.py)
                        self._in_flight += 1
                        try:
                            await self._user_runner.iterate(user, slot, intended)  # type: ignore[union-attr]  # exists with a user entry
                        finally:
                            self._in_flight -= 1
                    else:
                        user_slot = slot if self.spec.model == "closed" else -1
                        await self._run_flow(flow, intended, user_slot)  # type: ignore[arg-type]  # not None here
                else:
                    sent = time.monotonic_ns() - self._mono_start
                    if sent >= self._lease_until:
                        self._lapse()
                        return
                    self._in_flight += 1
                    try:
                        # a closed-model user's cookie jar (agents/http.py); none in the open model
                        if self.spec.model == "closed":
                            status, nbytes, err = await self._send[ep](ep, slot)  # type: ignore[call-arg]  # the aiohttp engine: request(index, user)
                        else:
                            status, nbytes, err = await self._send[ep](ep)
                    finally:
                        self._in_flight -= 1
                    self._record(ep, intended, sent, status, nbytes, err, queued)
            finally:
                nxt = None if self._finished else self._after[0](slot)
            if nxt is None:
                return
            ep, intended = nxt
            queued = False

    async def _run_flow(self, flow: FlowTemplate, intended: int, user: int = -1) -> None:
        self._in_flight += 1
        try:
            runner = self._flow_runner  # exists whenever the spec has a flow entry
            await runner.run(flow, intended, self._record_done, self._sleep_until, user)  # type: ignore[union-attr]  # see above
        finally:
            self._in_flight -= 1

    async def _sleep_until(self, t_ns: int) -> bool:
        """Sleep until t_ns; False if the agent was stopped meanwhile (flows' polling)."""
        if t_ns > self._now():
            task = asyncio.current_task()
            self._sleepers.add(task)  # type: ignore[arg-type]  # always inside a task
            try:  # never early (agents/timers.py): a request never leaves before its time
                await sleep_until(self._timers, t_ns + self._mono_start)  # type: ignore[arg-type]  # set by run()
            except asyncio.CancelledError:
                if self._stopping:
                    return False
                raise
            finally:
                self._sleepers.discard(task)
        return not self._stopping

    async def _wait_drained(self) -> None:
        """Wait for the senders to end: at most graceful_stop after the last stage or a stop."""
        drained = self._drained
        assert drained is not None and self._stop_event is not None
        if self._stopping:  # stopped before or while the drive began
            self._end_sending()
        if not drained.done():
            stop_wait = asyncio.ensure_future(self._stop_event.wait())
            end_s = self._profile.duration_s - self._now() / 1e9
            # The schedule runs until its end; the stop event can cut it short.
            await asyncio.wait(
                {drained, stop_wait},
                timeout=max(0.0, end_s) + self.spec.graceful_stop_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            stop_wait.cancel()
            if not drained.done() and self._stopping:
                await asyncio.wait({drained}, timeout=self.spec.graceful_stop_s)
        self._end_sending()
        if not drained.done():
            self._interrupted += self._requests_in_flight()
        self._finished = True  # late completions (the engines' close resets them) are not recorded
        slow = list(self._slow)
        for t in slow:
            t.cancel()
        if slow:
            await asyncio.gather(*slow, return_exceptions=True)

    def _requests_in_flight(self) -> int:
        """Requests sent and not yet answered: the slow paths' count plus the engines' own
        (plain requests are not counted one by one in the callbacks)."""
        n = self._in_flight
        for e in self._engines.values():
            count = getattr(e, "in_flight", None)
            if count is not None:
                n += count()
        return n

    def _set_drained(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # -- open model -----------------------------------------------------------------------

    async def _drive_open(self) -> None:
        spec = self.spec
        if spec.arrivals == "poisson":
            self._schedule = PoissonArrivals(self._profile, spec.index, spec.count, spec.seed)
        else:
            self._schedule = ConstantArrivals(self._profile, spec.index, spec.count)
        if spec.incarnation > 0:  # a replacement takes over from now, not from the start
            resume_ns = self._now() if self._resume_ns is None else self._resume_ns
            self._schedule.skip_until(max(0.0, resume_ns / 1e9))
            # Arrivals from the coordinator's resume point to now (this agent began late: its
            # placement outlasted the hold) are not sent in a burst: they count as unsent.
            self._count_unsent()
        n = spec.max_in_flight
        self._grow_slots(n)
        self._free = list(range(n - 1, -1, -1))
        self._after = (self._open_release,)
        self._drained = asyncio.get_running_loop().create_future()
        self._pump()
        await self._wait_drained()

    def _peek(self) -> int:
        """The next arrival's intended time (ns), or -1 when the schedule is exhausted."""
        if self._pos == len(self._pending):
            nxt = self._schedule.next_batch(_ARRIVAL_CHUNK)  # type: ignore[union-attr]  # set by _drive_open
            if len(nxt) == 0:
                return -1
            self._pending = (np.asarray(nxt) * 1e9).astype(np.int64).tolist()
            self._pos = 0
        return self._pending[self._pos]

    def _pump(self) -> None:
        """Send every due arrival while a slot is free; arm the timer for the next one."""
        if self._stopping:
            return
        free = self._free
        mono, start = time.monotonic_ns, self._mono_start
        now = mono() - start
        if now >= self._lease_until:  # a thawed or cut-off agent stops here
            self._lapse()
            return
        while free:
            t = self._pending[self._pos] if self._pos < len(self._pending) else self._peek()
            if t < 0:
                self._exhausted = True
                if len(free) == len(self._slot_ep):
                    self._set_drained()
                break
            if t > now:
                self._arm(t, now)
                break
            self._pos += 1
            slot = free.pop()
            full_since = self._full_since
            queued = full_since >= 0 and t >= full_since
            ep = self._next_choice()
            if self._plain[ep]:
                self._slot_ep[slot] = ep
                self._slot_intended[slot] = t
                self._slot_queued[slot] = queued
                self._slot_sent[slot] = sent = mono() - start
                lag = sent - t
                if lag > self._send_lag_max:
                    self._send_lag_max = lag
                if lag > LATE_SEND_NS:
                    if queued:
                        self._queued += 1
                    else:
                        self._late += 1
                self._submit[ep](ep, slot, self._open_cb)
            else:
                self._spawn(self._slow_request(slot, ep, t, queued))
        if free:
            self._full_since = -1
        elif self._full_since < 0:
            self._full_since = now

    def _arm(self, t: int, now: int) -> None:
        if self._timer is not None:
            if self._timer_at <= t:
                return
            self._timer.cancel()
        self._timer_at = t
        self._timer = self._timers.call_at(t + self._mono_start, self._on_timer)  # type: ignore[union-attr]  # set by run()

    def _on_timer(self) -> None:
        self._timer = None
        self._pump()

    def _open_done(self, slot: int, status: int, nbytes: int, err: int) -> None:
        """The engine's callback for an open-model request: record, free the slot, send on.
        Written out inline as _closed_done; the send lag was taken when it was sent."""
        if self._finished:
            return
        end = (self._stamps.rx_ns or _mono()) - self._mono_start  # type: ignore[union-attr]  # see __init__
        ep = self._slot_ep[slot]
        if not err and status not in self._ok_status[ep]:
            err = classify_status(status, self._expect[ep])
        if self._slot_queued[slot]:  # every slot was busy at its intended time: generator queueing
            err |= GENERATOR_QUEUED
        buf = self._buf
        i = buf.count
        if i == buf.capacity:
            buf.grow()
        _pack_into(
            buf.data, i * _RECORD_SIZE, ep, self._slot_intended[slot], self._slot_sent[slot], end, status, err, nbytes
        )
        buf.count = i + 1
        self._open_release(slot)

    def _open_release(self, slot: int) -> None:  # returns None: the pump sends the next one
        free: list[int] = self._free  # type: ignore[assignment]  # open model: set by _drive_open
        free.append(slot)
        if self._stopping or self._exhausted:
            if len(free) == len(self._slot_ep):
                self._set_drained()
        else:
            self._pump()

    def _count_unsent(self) -> None:
        """Arrivals that were due when sending ended but never went out."""
        if self._schedule is None:
            return
        now = self._now()
        while True:
            rest = self._pending[self._pos :]
            due = int(np.searchsorted(np.asarray(rest, dtype=np.int64), now, side="right"))
            self._unsent += due
            self._pos += due
            if due < len(rest):
                return
            if self._peek() < 0:
                return

    # -- closed model -----------------------------------------------------------------------

    async def _drive_closed(self) -> None:
        spec = self.spec
        end_ns = int(self._profile.duration_s * 1e9)
        self._after = (self._user_after_slow,)
        self._drained = asyncio.get_running_loop().create_future()
        active = self._active
        while not self._stopping and self._now() < end_ns:
            total = level_to_users(float(self._profile.level(self._now() / 1e9)))
            self._allowed = allowed = users_for_agent(total, spec.index, spec.count)
            self._grow_slots(allowed)
            while len(active) < allowed:
                active.append(False)
            # Users with j >= allowed leave after their current request.
            for j in range(allowed):
                if not active[j]:
                    active[j] = True
                    self._users += 1
                    self._user_send(j, self._now())
            try:
                stop_event = self._stop_event  # set by run() before driving
                await asyncio.wait_for(stop_event.wait(), _USER_CONTROL_PERIOD_S)  # type: ignore[union-attr]  # see above
            except asyncio.TimeoutError:
                pass
        self._allowed = 0
        self._end_sending()
        if self._users == 0:
            self._set_drained()
        await self._wait_drained()

    def _user_send(self, j: int, intended: int, in_task: bool = False) -> tuple[int, int] | None:
        """User j's next request, intended at `intended` (now, or when its think time ended).
        A slow one is returned as (endpoint, intended) when called from a user's task
        (`in_task`: it carries on there), else it gets a task of its own."""
        if self._stopping or j >= self._allowed:
            self._user_leave(j)
            return None
        ep = self._next_choice()
        if self._plain[ep]:
            sent = time.monotonic_ns() - self._mono_start
            if sent >= self._lease_until:  # (a slow request checks in _slow_request)
                self._lapse()
                self._user_leave(j)
                return None
            self._slot_ep[j] = ep
            self._slot_intended[j] = intended
            self._slot_sent[j] = sent
            lag = sent - intended  # a think-time timer that fired late
            if lag > self._send_lag_max:
                self._send_lag_max = lag
            if lag > LATE_SEND_NS:
                self._late += 1
            self._submit[ep](ep, j, self._closed_cb)
        elif in_task:
            return ep, intended
        else:
            self._spawn(self._slow_request(j, ep, intended, False))
        return None

    def _closed_done(self, j: int, status: int, nbytes: int, err: int) -> None:
        """The engine's callback for a closed-model request: record, then the user goes on.

        Every request of a closed-model run passes here, so recording and sending the next
        request are written out inline (see _record and _user_send), and what can be
        known elsewhere is not tracked here: requests in flight are counted by the
        engine, and a back-to-back user has no send lag to measure."""
        if self._finished:
            return
        end = (self._stamps.rx_ns or _mono()) - self._mono_start  # type: ignore[union-attr]  # see __init__
        ep = self._slot_ep[j]
        if not err and status not in self._ok_status[ep]:
            err = classify_status(status, self._expect[ep])
        buf = self._buf
        i = buf.count
        if i == buf.capacity:
            buf.grow()
        _pack_into(buf.data, i * _RECORD_SIZE, ep, self._slot_intended[j], self._slot_sent[j], end, status, err, nbytes)
        buf.count = i + 1
        if self._thinks:
            self._user_think(j, end + int(self._next_think_s() * 1e9))
        elif j >= self._allowed:  # fewer users planned now, or stopping (allowed is 0 then)
            self._user_leave(j)
        elif end >= self._lease_until:
            self._lapse()
            self._user_leave(j)
        else:
            ep = self._next_choice()
            if self._plain[ep]:
                self._slot_ep[j] = ep
                self._slot_intended[j] = end
                self._slot_sent[j] = _mono() - self._mono_start
                self._submit[ep](ep, j, self._closed_cb)
            else:
                self._spawn(self._slow_request(j, ep, end, False))

    def _user_after_slow(self, j: int) -> tuple[int, int] | None:
        now = self._now()
        if self._thinks:
            self._user_think(j, now + int(self._next_think_s() * 1e9))
            return None
        return self._user_send(j, now, in_task=True)

    def _user_think(self, j: int, intended: int) -> None:
        if self._stopping or j >= self._allowed:
            self._user_leave(j)
            return
        # Never early (agents/timers.py): the user sends at or after `intended`.
        self._thinking[j] = self._timers.call_at(intended + self._mono_start, self._user_wake, j, intended)  # type: ignore[union-attr]  # set by run()

    def _user_wake(self, j: int, intended: int) -> None:
        del self._thinking[j]
        self._user_send(j, intended)

    def _user_leave(self, j: int) -> None:
        for e in self._engines.values():  # its cookies go with it (agents/http.py)
            end_user = getattr(e, "end_user", None)
            if end_user is not None:
                end_user(j)
        if self._flow_runner is not None:
            self._flow_runner.end_user(j)
        self._active[j] = False
        self._users -= 1
        if self._users == 0 and (self._stopping or self._allowed == 0):
            self._set_drained()

    def _end_sending(self) -> None:
        """No new requests from here: cancel timers, let thinking users go, count the unsent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for j in list(self._thinking):
            self._thinking.pop(j).cancel()
            self._user_leave(j)
        if not self._sending_ended:
            self._sending_ended = True
            self._count_unsent()
        if self._free is not None and len(self._free) == len(self._slot_ep):
            self._set_drained()  # open model: nothing in flight

    # -- self-monitoring and flushing -----------------------------------------------------

    async def _watch_loop_lag(self) -> None:
        # A loop timer, not the send timers: a 50 ms probe needs no microseconds, and the
        # send timers wake a long sleep 150 us early and spin (agents/timers.py LEAD_NS),
        # 3 ms of CPU a second at 20 probes. Its reading includes up to ~1 ms of rounding.
        period_ns = int(_LOOP_LAG_PERIOD_S * 1e9)
        while True:
            t0 = time.monotonic_ns()
            await asyncio.sleep(_LOOP_LAG_PERIOD_S)
            lag = time.monotonic_ns() - t0 - period_ns
            if lag < 0:
                lag = 0
            if lag > self._lag_max:
                self._lag_max = lag
            self._lag_sum += lag
            self._lag_n += 1

    async def _flush_every_interval(self, emit: Emit) -> None:
        interval = int(self.spec.flush_interval_s * 1e9)
        k = max(1, self._now() // interval + 1)
        while True:
            delay = k * interval - self._now()
            if delay > 0:
                await asyncio.sleep(delay / 1e9)
            # A send due in the next moment goes first: building the batch would hold it
            # back (constant arrivals at 1/s, 2/s... fall on the flush instants). The batch
            # is built right after it (the send timers), with the whole gap to the next.
            due = self._timer_at - self._now() if self._timer is not None else _FLUSH_YIELD_NS
            if due < _FLUSH_YIELD_NS:
                await sleep_until(self._timers, self._timer_at + self._mono_start + 1)  # type: ignore[arg-type]  # set by run()
                for _ in range(3):  # overdue (the loop was held): its wake-up runs within a turn or two
                    if self._timer is None or self._timer_at > self._now():
                        break
                    await asyncio.sleep(0)
            if self._now() >= self._lease_until:  # nothing sent or in flight after a lapse
                self._lapse()
                return
            emit(self._batch(final=False))
            k = self._now() // interval + 1

    def _batch(self, *, final: bool) -> bytes:
        cpu_s, rss = self._probe.read()
        cpu_s -= self._cpu0
        t = self._now() / 1e9
        level = float(self._profile.level(t)) / self.spec.count if t < self._profile.duration_s else 0.0
        readings = GeneratorReadings(
            cpu_s=cpu_s,
            rss_bytes=rss,
            loop_lag_max_ns=self._lag_max,
            loop_lag_mean_ns=self._lag_sum // self._lag_n if self._lag_n else 0,
            late_sends=self._late,
            generator_queued_sends=self._queued,
            send_lag_max_ns=self._send_lag_max,
            in_flight=self._requests_in_flight(),
            users=self._users,
            level=level,
            interrupted=self._interrupted if final else 0,
            unsent=self._unsent if final else 0,
        )
        self._lag_max = self._lag_sum = self._lag_n = 0
        self._late = 0
        self._queued = 0
        self._send_lag_max = 0
        if self._lease is not None:
            self._lease.sent(self._seq, self._now())
        # Every record so far ended before now: the watermark covers them all.
        watermark_ns = self._now()
        records, agg = None, None
        if not self._raw_samples:
            try:
                agg = aggregate_records(self._buf.view(), self._stage_ends)
            except OverflowError:  # a group's sum of times beyond 64 bits: this batch goes raw
                agg = None
        if agg is None:
            records = self._buf.take()
        self._buf.clear()
        payload = encode_batch(
            agent=self.spec.index,
            incarnation=self.spec.incarnation,
            seq=self._seq,
            watermark_ns=watermark_ns,
            readings=readings,
            records=records,
            agg=agg,
            final=final,
            engine=",".join(sorted(self._engines)),
            user_errors=self._user_runner.take_errors() if self._user_runner is not None else None,
            data_rows=self.data.take_counts(),
        )
        self._seq += 1
        return payload
