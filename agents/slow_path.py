"""The requests that run as a task, on the slots of either model: flows, Python users'
iterations, and requests on an engine without submit() (aiohttp); and their recording.

A part of TrafficAgent (agents/traffic.py; why the parts are mixins: agents/agent_state.py).
Plain requests on the lean engine never come here: its callbacks record them inline
(open_model.py, closed_model.py).
"""

from __future__ import annotations

import asyncio
import time

from horde.agents.agent_state import AgentState
from horde.agents.samples import GENERATOR_QUEUED, LATE_SEND_NS, classify_status
from horde.agents.spec import FlowTemplate
from horde.agents.timers import sleep_until


class SlowPath(AgentState):
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
                        # a closed-model user's cookie jar (agents/aiohttp_engine.py); none in the open model
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
