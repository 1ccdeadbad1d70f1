"""In-process fleet: agents on threads of this process, no Ray (tests, and the Ray-cost baseline)."""

from __future__ import annotations

import functools
import os
import socket
import time
from collections.abc import AsyncIterator, Sequence

from horde.agents.lease import LeaseLapsed, lease_term_s
from horde.agents.runner import AgentRunner
from horde.agents.spec import AgentSpec
from horde.cluster.events import AgentInfo, FleetEvent
from horde.cluster.fanin import FanIn, held


def _name_error(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, LeaseLapsed):
        return "fenced", str(exc)[:300]
    return type(exc).__name__, str(exc)[:500]


def _runner(spec: AgentSpec) -> AgentRunner:
    # Leased as on Ray: the fan-in's taking each batch from the stream acks it (agents/lease.py).
    return AgentRunner(spec, lease_term_s=lease_term_s(spec.flush_interval_s))


class LocalFleet:
    def __init__(self, *, silence_s: float = 3.0) -> None:
        self._fanin = FanIn(silence_s, _name_error)
        self._runners: dict[int, tuple[int, AgentRunner]] = {}
        self.agents: list[AgentInfo] = []
        self._start_wall_ns = 0

    async def start(self, specs: Sequence[AgentSpec]) -> list[AgentInfo]:
        for s in specs:
            self._runners[s.index] = (s.incarnation, _runner(s))
            self.agents.append(AgentInfo(s.index, s.incarnation, os.getpid(), "local", socket.gethostname()))
        return list(self.agents)

    def begin(self, start_wall_ns: int, grace_s: float) -> None:
        self._start_wall_ns = start_wall_ns
        for index, (inc, runner) in self._runners.items():
            stream = functools.partial(runner.stream, start_wall_ns)
            self._fanin.add(index, inc, stream, grace_s=grace_s)

    async def replace(
        self, spec: AgentSpec, grace_s: float, hold_s: float = 0.0, resume_ns: int | None = None
    ) -> AgentInfo:
        """As RayFleet.replace: the replacement's stream begins `hold_s` from now at the earliest."""
        hold_until_s = time.monotonic() + hold_s
        old = self._runners.pop(spec.index, None)
        if old is not None:
            old[1].stop()
        runner = _runner(spec)
        self._runners[spec.index] = (spec.incarnation, runner)
        info = AgentInfo(spec.index, spec.incarnation, os.getpid(), "local", socket.gethostname())
        self.agents.append(info)
        start = self._start_wall_ns
        stream = held(lambda: runner.stream(start, resume_ns), hold_until_s)
        self._fanin.add(spec.index, spec.incarnation, stream, grace_s=grace_s + hold_s)
        return info

    def last_batch_at(self, index: int, incarnation: int) -> float | None:
        """time.monotonic() when this agent's last batch arrived (None: none did)."""
        return self._fanin.last_batch_at(index, incarnation)

    def forget(self, index: int, incarnation: int) -> None:
        cur = self._runners.get(index)
        if cur is not None and cur[0] == incarnation:
            cur[1].stop()

    def events(self) -> AsyncIterator[FleetEvent]:
        return self._fanin.events()

    async def stop(self) -> None:
        for _, r in self._runners.values():
            r.stop()

    async def close(self) -> None:
        for _, r in self._runners.values():
            r.stop()
        await self._fanin.close()
