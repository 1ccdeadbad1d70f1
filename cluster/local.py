"""In-process fleet: agents on threads of this process, no Ray (tests, and the Ray-cost baseline)."""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import AsyncIterator, Sequence

from horde.agents.runner import AgentRunner
from horde.agents.spec import AgentSpec
from horde.cluster.events import AgentInfo, FleetEvent
from horde.cluster.fanin import FanIn


class LocalFleet:
    def __init__(self, *, silence_s: float = 3.0) -> None:
        self._fanin = FanIn(silence_s)
        self._runners: dict[int, tuple[int, AgentRunner]] = {}
        self.agents: list[AgentInfo] = []
        self._start_wall_ns = 0

    async def start(self, specs: Sequence[AgentSpec]) -> list[AgentInfo]:
        for s in specs:
            self._runners[s.index] = (s.incarnation, AgentRunner(s))
            self.agents.append(AgentInfo(s.index, s.incarnation, os.getpid(), "local", socket.gethostname()))
        return list(self.agents)

    def begin(self, start_wall_ns: int, grace_s: float) -> None:
        self._start_wall_ns = start_wall_ns
        for index, (inc, runner) in self._runners.items():
            self._fanin.add(index, inc, functools.partial(runner.stream, start_wall_ns), grace_s=grace_s)

    async def replace(self, spec: AgentSpec, grace_s: float) -> AgentInfo:
        old = self._runners.pop(spec.index, None)
        if old is not None:
            old[1].stop()
        runner = AgentRunner(spec)
        self._runners[spec.index] = (spec.incarnation, runner)
        info = AgentInfo(spec.index, spec.incarnation, os.getpid(), "local", socket.gethostname())
        self.agents.append(info)
        start = self._start_wall_ns
        self._fanin.add(spec.index, spec.incarnation, lambda: runner.stream(start), grace_s=grace_s)
        return info

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
