"""Traffic agents as Ray actors: place them, fan their batch streams in, notice losses.

Stream tasks are never retried by Ray (a silent re-run would reset an agent's load state
unnoticed); a lost agent is reported as AgentLost and the coordinator decides what to do.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Sequence

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from agents.spec import AgentSpec
from cluster.events import AgentInfo, FleetEvent
from cluster.fanin import FanIn


@ray.remote(max_restarts=0, max_task_retries=0)
class TrafficAgentActor:
    """Thin actor: hands the work to agents.runner.AgentRunner (plain Python, tested without Ray)."""

    def __init__(self, spec: AgentSpec) -> None:
        from agents.probe import raise_fd_limit
        from agents.runner import AgentRunner

        raise_fd_limit()
        self._runner = AgentRunner(spec)

    async def ready(self) -> dict:
        return {
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "host": socket.gethostname(),
        }

    async def stream(self, start_wall_ns: int):
        async for payload in self._runner.stream(start_wall_ns):
            yield payload

    async def stop(self) -> None:
        self._runner.stop()


def _name_error(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, RayActorError):
        return "actor_died", str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    if isinstance(exc, RayError):
        return "ray_error", f"{type(exc).__name__}: {str(exc)[:300]}"
    return "agent_error", f"{type(exc).__name__}: {str(exc)[:300]}"


class PlacementError(RuntimeError):
    pass


class RayFleet:
    """Fleet on the connected Ray cluster, agents spread over nodes."""

    def __init__(self, *, cpus_per_agent: float, ready_timeout_s: float = 60.0, silence_s: float = 3.0) -> None:
        self._cpus = cpus_per_agent
        self._ready_timeout_s = ready_timeout_s
        self._fanin = FanIn(silence_s, _name_error)
        self._actors: dict[int, tuple[int, ray.actor.ActorHandle]] = {}
        self.agents: list[AgentInfo] = []

    async def start(self, specs: Sequence[AgentSpec]) -> list[AgentInfo]:
        actors = [
            TrafficAgentActor.options(
                num_cpus=self._cpus,
                scheduling_strategy="SPREAD",
                name=None,
            ).remote(s)
            for s in specs
        ]
        refs = [a.ready.remote() for a in actors]
        try:
            infos = await asyncio.wait_for(asyncio.gather(*refs), self._ready_timeout_s)
        except (asyncio.TimeoutError, GetTimeoutError) as exc:
            for a in actors:
                ray.kill(a)
            raise PlacementError(
                f"{len(specs)} agents of {self._cpus:g} CPU each could not be placed within "
                f"{self._ready_timeout_s:.0f}s (cluster resources: {ray.available_resources()})"
            ) from exc
        for s, a, info in zip(specs, actors, infos):
            self._actors[s.index] = (s.incarnation, a)
            self.agents.append(AgentInfo(s.index, s.incarnation, info["pid"], info["node"], info["host"]))
        return list(self.agents)

    def begin(self, start_wall_ns: int, grace_s: float) -> None:
        for index, (inc, actor) in self._actors.items():
            def factory(actor=actor) -> AsyncIterator[bytes]:
                return _refs_to_payloads(
                    actor.stream.options(_generator_backpressure_num_objects=16).remote(start_wall_ns)
                )

            self._fanin.add(index, inc, factory, grace_s=grace_s)

    def events(self) -> AsyncIterator[FleetEvent]:
        return self._fanin.events()

    async def stop(self) -> None:
        refs = [a.stop.remote() for _, a in self._actors.values()]
        await asyncio.gather(*refs, return_exceptions=True)

    async def close(self) -> None:
        await self._fanin.close()
        for _, a in self._actors.values():
            try:
                ray.kill(a)
            except Exception:  # already dead
                pass
        self._actors.clear()


async def _refs_to_payloads(gen) -> AsyncIterator[bytes]:
    async for ref in gen:
        yield await ref
