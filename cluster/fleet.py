"""Traffic agents as Ray actors: place them, fan their batch streams in, notice losses.

Stream tasks are never retried by Ray (a silent re-run would reset an agent's load state
unnoticed); a lost agent is reported as AgentLost and the coordinator decides what to do.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

from horde.agents.lease import LeaseLapsed, lease_term_s
from horde.agents.spec import AgentSpec
from horde.cluster.events import AgentInfo, FleetEvent
from horde.cluster.fanin import FanIn, held

if TYPE_CHECKING:
    from horde.cluster.nodes import NodeMonitors


@ray.remote(max_restarts=0, max_task_retries=0)
class TrafficAgentActor:
    """Thin actor: hands the work to horde.agents.runner.AgentRunner (plain Python, tested without Ray)."""

    def __init__(self, spec: AgentSpec) -> None:
        from horde.agents.probe import raise_fd_limit
        from horde.agents.runner import AgentRunner, raise_priority
        from horde.cluster.allocator import tune_allocator

        raise_fd_limit()
        tune_allocator(coordinator=False)  # where the worker did not inherit it (a `ray start` node)
        # Every thread of this process above Ray's daemons and the coordinator on the node
        # (the agent's loop thread sets its own again); see agents/runner.py AGENT_NICE.
        self._priority = raise_priority(whole_process=True)
        # Fenced unless the coordinator acks its batches: a partitioned node's agent, or
        # every agent of a dead coordinator, stops within the term (agents/lease.py).
        self._runner = AgentRunner(spec, lease_term_s=lease_term_s(spec.flush_interval_s))

    async def ready(self) -> dict:
        return {
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "host": socket.gethostname(),
            "priority": self._priority,
        }

    async def stream(self, start_wall_ns: int, resume_ns: int | None = None):
        async for payload in self._runner.stream(start_wall_ns, resume_ns):
            yield payload

    async def ack(self, seq: int) -> None:
        self._runner.ack(seq)

    async def lease_stats(self) -> dict:
        return self._runner.lease_stats()

    async def stop(self) -> None:
        self._runner.stop()


def _name_error(exc: BaseException) -> tuple[str, str]:
    cause = exc.cause if isinstance(exc, RayTaskError) else exc
    if isinstance(cause, LeaseLapsed):
        return "fenced", str(cause)[:300]
    if isinstance(exc, RayActorError):
        return "actor_died", str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    if isinstance(exc, RayError):
        return "ray_error", f"{type(exc).__name__}: {str(exc)[:300]}"
    return "agent_error", f"{type(exc).__name__}: {str(exc)[:300]}"


class PlacementError(RuntimeError):
    pass


def _creation_error(exc: BaseException) -> str:
    """The agent's own one-line reason (a Python user file that does not load names its file
    and line: agents/users.py UserCodeError), not Ray's traceback."""
    text = str(exc)
    marker = "UserCodeError: "
    if marker in text:
        return text[text.rindex(marker) + len(marker) :].strip().splitlines()[0][:500]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:500] if lines else type(exc).__name__


class RayFleet:
    """Fleet on the connected Ray cluster, agents spread over nodes."""

    def __init__(
        self,
        *,
        cpus_per_agent: float,
        ready_timeout_s: float = 60.0,
        silence_s: float = 1.5,
        probe_timeout_s: float = 0.5,
    ) -> None:
        self._cpus = cpus_per_agent
        self._ready_timeout_s = ready_timeout_s
        self._fanin = FanIn(silence_s, _name_error, probe_timeout_s=probe_timeout_s)
        self._actors: dict[int, tuple[int, ray.actor.ActorHandle]] = {}
        self.agents: list[AgentInfo] = []
        self._start_wall_ns = 0
        self._monitors: NodeMonitors | None = None

    async def start(self, specs: Sequence[AgentSpec]) -> list[AgentInfo]:
        actors = [
            TrafficAgentActor.options(  # type: ignore[attr-defined]  # @ray.remote made it an ActorClass; mypy sees the plain class
                num_cpus=self._cpus,
                scheduling_strategy="SPREAD",
                name=None,
            ).remote(s)
            for s in specs
        ]
        refs = [a.ready.remote() for a in actors]
        try:
            infos = await asyncio.wait_for(asyncio.gather(*refs), self._ready_timeout_s)
        except RayActorError as exc:  # an agent could not be built: nothing is sent anywhere
            for a in actors:
                _kill(a)
            raise PlacementError(f"an agent could not be built: {_creation_error(exc)}") from None
        except (asyncio.TimeoutError, GetTimeoutError) as exc:
            for a in actors:
                _kill(a)
            raise PlacementError(
                f"{len(specs)} agents of {self._cpus:g} CPU each could not be placed within "
                f"{self._ready_timeout_s:.0f}s (cluster resources: {ray.available_resources()})"
            ) from exc
        for s, a, info in zip(specs, actors, infos):
            self._actors[s.index] = (s.incarnation, a)
            self.agents.append(AgentInfo(s.index, s.incarnation, info["pid"], info["node"], info["host"]))
        return list(self.agents)

    def begin(self, start_wall_ns: int, grace_s: float) -> None:
        self._start_wall_ns = start_wall_ns
        for index, (inc, actor) in self._actors.items():
            self._consume(index, inc, actor, grace_s)

    def _consume(
        self, index: int, inc: int, actor, grace_s: float, hold_until_s: float = 0.0, resume_ns: int | None = None
    ) -> None:
        start = self._start_wall_ns

        def factory() -> AsyncIterator[bytes]:
            stream = actor.stream.options(_generator_backpressure_num_objects=16)
            return _refs_to_payloads(stream.remote(start, resume_ns))

        def ack(seq: int) -> None:
            actor.ack.remote(seq)  # fire and forget: a lost ack only shortens the lease

        self._fanin.add(
            index, inc, held(factory, hold_until_s), grace_s=grace_s, probe=lambda: actor.ready.remote(), ack=ack
        )

    def last_batch_at(self, index: int, incarnation: int) -> float | None:
        """time.monotonic() when this agent's last batch arrived (None: none did)."""
        return self._fanin.last_batch_at(index, incarnation)

    async def replace(
        self, spec: AgentSpec, grace_s: float, hold_s: float = 0.0, resume_ns: int | None = None
    ) -> AgentInfo:
        """Start `spec` (a higher incarnation) in place of a lost agent, on any live node. Its
        stream (and so its sending) begins `hold_s` from now at the earliest, and its schedule
        at `resume_ns` of the run (None: wherever the agent is when it begins)."""
        hold_until_s = time.monotonic() + hold_s
        old = self._actors.pop(spec.index, None)
        if old is not None:
            _kill(old[1])  # a frozen or partitioned agent must not come back and send load
        options = TrafficAgentActor.options  # type: ignore[attr-defined]  # @ray.remote made it an ActorClass; mypy sees the plain class
        actor = options(num_cpus=self._cpus, scheduling_strategy="SPREAD").remote(spec)
        try:
            info = await asyncio.wait_for(actor.ready.remote(), self._ready_timeout_s)
        except (asyncio.TimeoutError, GetTimeoutError, RayError) as exc:
            _kill(actor)
            raise PlacementError(
                f"no live node could host a replacement for agent {spec.index} within "
                f"{self._ready_timeout_s:.0f}s ({type(exc).__name__})"
            ) from exc
        self._actors[spec.index] = (spec.incarnation, actor)
        agent = AgentInfo(spec.index, spec.incarnation, info["pid"], info["node"], info["host"])
        self.agents.append(agent)
        self._consume(spec.index, spec.incarnation, actor, grace_s + hold_s, hold_until_s, resume_ns)
        return agent

    def forget(self, index: int, incarnation: int) -> None:
        """A lost agent: make sure its actor is gone (it may only be frozen)."""
        cur = self._actors.get(index)
        if cur is not None and cur[0] == incarnation:
            _kill(cur[1])

    def monitor_nodes(self, on_reading) -> None:
        """One resource monitor per node, streaming from the common start instant."""
        from horde.cluster.nodes import NodeMonitors

        self._monitors = NodeMonitors(on_reading)
        self._monitors.start(self._start_wall_ns)

    def events(self) -> AsyncIterator[FleetEvent]:
        return self._fanin.events()

    async def stop(self) -> None:
        refs = [a.stop.remote() for _, a in self._actors.values()]
        await asyncio.gather(*refs, return_exceptions=True)

    async def close(self) -> None:
        if self._monitors is not None:
            await self._monitors.close()
        await self._fanin.close()
        for _, a in self._actors.values():
            _kill(a)
        self._actors.clear()


def _kill(actor) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # already dead, or its node is gone
        pass


async def _refs_to_payloads(gen) -> AsyncIterator[bytes]:
    async for ref in gen:
        yield await ref
