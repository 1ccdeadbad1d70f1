"""The open model: `max_in_flight` slots share one cursor over the arrival schedule.

Every due arrival goes out as soon as a slot is free: a completion sends the next due
arrival from its callback (_open_done), and one timer (re-armed for the next arrival, at
most one per loop tick) releases arrivals while slots are idle (_pump). When every slot
is busy the next arrival waits, and its latency (measured from the intended time) shows
the wait: coordinated omission is corrected, as in wrk2. Such an arrival counts as
generator-queued (horde's own max_in_flight held it back; its record is flagged
GENERATOR_QUEUED); one sent late while a slot was free counts as `late` (the generator's
own fault).

A part of TrafficAgent (agents/traffic.py; why the parts are mixins: agents/agent_state.py).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from horde.agents.agent_state import RECORD_SIZE, AgentState, mono_ns, pack_record
from horde.agents.arrivals import ConstantArrivals, PoissonArrivals
from horde.agents.samples import GENERATOR_QUEUED, LATE_SEND_NS, classify_status

_ARRIVAL_CHUNK = 4096


class OpenModel(AgentState):
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
        end = (self._stamps.rx_ns or mono_ns()) - self._mono_start  # type: ignore[union-attr]  # see agent_state.py
        ep = self._slot_ep[slot]
        if not err and status not in self._ok_status[ep]:
            err = classify_status(status, self._expect[ep])
        if self._slot_queued[slot]:  # every slot was busy at its intended time: generator queueing
            err |= GENERATOR_QUEUED
        buf = self._buf
        i = buf.count
        if i == buf.capacity:
            buf.grow()
        pack_record(
            buf.data, i * RECORD_SIZE, ep, self._slot_intended[slot], self._slot_sent[slot], end, status, err, nbytes
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
