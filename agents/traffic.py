# The per-request path runs through the parts below (open_model.py, closed_model.py): the
# engine callbacks (_open_done, _closed_done) record a sample and send the next request with
# no task or coroutine per request, reading the agent's attributes directly. The parts are
# mixins over one state (agents/agent_state.py) so that the split adds no hop per request.
# The benchmarks that check every change: bench/cpu_per_request.py (figures in
# bench/README.md) and bench/open_rate.py for the open model.
"""The traffic agent: an AgentSpec in, a stream of encoded sample batches out.

Plain asyncio, no Ray: cluster/ hosts it in an actor (or a thread, in-process). The agent
is the only place that reads the clock and sleeps; the schedules it follows are pure
(agents/stages.py, agents/arrivals.py).

Plain requests on an engine with ``submit`` (the lean engine) are driven by callbacks, not
coroutines: the engine calls ``done(slot, ...)`` from its parser callback, the agent
records the sample into its preallocated buffer and sends the next request from there. No
future, task or coroutine resumption per request. Flows and engines without ``submit``
(aiohttp) run one task per request on the same slots.

Where each part lives: agents/agent_state.py (what the agent holds, built from its spec),
agents/open_model.py (arrivals on `max_in_flight` slots, coordinated omission corrected),
agents/closed_model.py (virtual users), agents/slow_path.py (flows, Python users, engines
without submit()), agents/flush.py (self-monitoring and batches). This module puts them
together and holds the run's life: start, stop, the lease and the end of sending.
"""

from __future__ import annotations

import asyncio
import time

from horde.agents.closed_model import ClosedModel
from horde.agents.flush import Emit, Flushing
from horde.agents.lease import Lease, LeaseLapsed
from horde.agents.open_model import OpenModel
from horde.agents.slow_path import SlowPath
from horde.agents.timers import hold_still, let_go, make_timers

__all__ = ["Emit", "TrafficAgent"]


class TrafficAgent(OpenModel, ClosedModel, SlowPath, Flushing):
    """An AgentSpec in, a stream of encoded sample batches out (constructor: AgentState)."""

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

    # -- the end of sending -----------------------------------------------------------------

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
