"""The closed model: one slot per virtual user, as many as this agent's share of the plan.

Users are started and stopped as the planned user count of this agent's share changes; a
user's intended send time is when its think time ended, so event-loop lag is still visible.

A plain request's completion (_closed_done) records it and sends the user's next request
from the engine's callback. A part of TrafficAgent (agents/traffic.py; why the parts are
mixins: agents/agent_state.py).
"""

from __future__ import annotations

import asyncio
import time

from horde.agents.agent_state import RECORD_SIZE, AgentState, mono_ns, pack_record
from horde.agents.samples import LATE_SEND_NS, classify_status
from horde.agents.stages import level_to_users, users_for_agent

_USER_CONTROL_PERIOD_S = 0.05


class ClosedModel(AgentState):
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
        end = (self._stamps.rx_ns or mono_ns()) - self._mono_start  # type: ignore[union-attr]  # see agent_state.py
        ep = self._slot_ep[j]
        if not err and status not in self._ok_status[ep]:
            err = classify_status(status, self._expect[ep])
        buf = self._buf
        i = buf.count
        if i == buf.capacity:
            buf.grow()
        pack_record(buf.data, i * RECORD_SIZE, ep, self._slot_intended[j], self._slot_sent[j], end, status, err, nbytes)
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
                self._slot_sent[j] = mono_ns() - self._mono_start
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
        for e in self._engines.values():  # its cookies go with it (agents/aiohttp_engine.py)
            end_user = getattr(e, "end_user", None)
            if end_user is not None:
                end_user(j)
        if self._flow_runner is not None:
            self._flow_runner.end_user(j)
        self._active[j] = False
        self._users -= 1
        if self._users == 0 and (self._stopping or self._allowed == 0):
            self._set_drained()
