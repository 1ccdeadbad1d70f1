"""Traffic agents as Ray actors: place them, fan their batch streams in, notice losses.

Stream tasks are never retried by Ray (a silent re-run would reset an agent's load state
unnoticed); a lost agent is reported as AgentLost and the coordinator decides what to do.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

from horde.agents.lease import LeaseLapsed, lease_term_s
from horde.agents.spec import AgentSpec
from horde.cluster.events import AgentInfo, FleetEvent
from horde.cluster.fanin import FanIn, held
from horde.cluster.nodes import STREAM_SEGMENT as NODE_STREAM_SEGMENT
from horde.cluster.nodes import NodeMonitors, segmented

if TYPE_CHECKING:
    from horde.cluster.pool import PoolLease


@ray.remote(max_restarts=0, max_task_retries=0)
class TrafficAgentActor:
    """Thin actor: hands the work to horde.agents.runner.AgentRunner (plain Python, tested without Ray)."""

    def __init__(self, spec: AgentSpec | None) -> None:
        """`spec` None: a pooled agent (cluster/pool.py), given its spec by configure()."""
        from horde.agents.probe import raise_fd_limit
        from horde.agents.runner import AgentRunner, raise_priority
        from horde.cluster.allocator import tune_allocator

        raise_fd_limit()
        tune_allocator(coordinator=False)  # where the worker did not inherit it (a `ray start` node)
        # Every thread of this process above Ray's daemons and the coordinator on the node
        # (the agent's loop thread sets its own again); see agents/runner.py AGENT_NICE.
        self._priority = raise_priority(whole_process=True)
        self._runner: AgentRunner | None = None
        self._live: AsyncIterator[bytes] | None = None  # the run's stream, across segments
        self._code = ""
        if spec is not None:
            self._runner = _new_runner(spec)
        else:
            from horde.cluster.pool import code_hash

            self._code = code_hash()  # the code this process imported, checked by each run

    async def configure(self, spec: AgentSpec, code: str) -> dict:
        """A pooled agent takes a run's spec: a clean host (reset), then a new runner. Raises when
        this process runs other horde code than the run's (`code`), or did not settle."""
        if code != self._code:
            raise RuntimeError("this pooled agent runs other horde code than the run")
        if not await self.reset():
            raise RuntimeError("this pooled agent's last run did not settle")
        self._runner = _new_runner(spec)
        self._live = None
        return await self.ready()

    async def reset(self) -> bool:
        """End the last run's agent and its state (agents/runner.py reset_for_reuse)."""
        from horde.agents.runner import reset_for_reuse

        runner, self._runner = self._runner, None
        self._live = None
        return await asyncio.to_thread(reset_for_reuse, runner)

    async def ready(self) -> dict:
        return {
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "host": socket.gethostname(),
            "priority": self._priority,
        }

    async def stream(self, start_wall_ns: int, resume_ns: int | None = None, count: int | None = None):
        """The agent's batches, at most `count` of them (a segment: STREAM_SEGMENT). The first
        call starts the agent; each later one goes on with the same run where the last segment
        ended (its arguments but `count` are then unused), until the run's stream ends.
        Called with a backpressure of one object (RayFleet), each yield returns once the
        coordinator took this batch's reference, after it received the batch before: the
        runner then acks that one (the lease, no call of its own)."""
        if self._runner is None:
            raise RuntimeError("this agent has no spec (a pooled agent not configured)")
        if self._live is None:
            self._live = aiter(self._runner.stream(start_wall_ns, resume_ns, acked_behind=1))
        live = self._live
        yielded = 0
        while count is None or yielded < count:
            try:
                payload = await anext(live)
            except StopAsyncIteration:
                return
            yielded += 1
            yield payload

    async def lease_stats(self) -> dict:
        return self._runner.lease_stats() if self._runner is not None else {}

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.stop()


# Batches an agent's stream yields before the next one takes over: Ray's driver keeps a
# record of every item of a live stream (~37 bytes a slot of a set that doubles; docs/scale.md,
# "horde's own memory"), 18.5 MiB an agent after 72 hours at a batch a second. Two minutes'
# worth at the default flush interval, as the node monitors' readings.
STREAM_SEGMENT = NODE_STREAM_SEGMENT

# Ray's backpressure on an agent's stream: one batch not taken by the coordinator holds the
# actor's yield, so its return proves the coordinator took it (TrafficAgentActor.stream).
# Batches made meanwhile wait in the runner's queue, none lost. Ray releases a waiting
# yield without consumption only when the caller drops the stream (measured with Ray 2.60:
# a consumer that stops, a SIGSTOPped or SIGKILLed driver leave it waiting; a dropped
# stream lets every later yield return at once), so the fleet never drops a stream while
# its agent may live.
STREAM_BACKPRESSURE_OBJECTS = 1


def _new_runner(spec: AgentSpec):
    from horde.agents.runner import AgentRunner

    # Fenced unless the coordinator takes its batches: a partitioned node's agent, or
    # every agent of a dead coordinator, stops within the term (agents/lease.py).
    return AgentRunner(spec, lease_term_s=lease_term_s(spec.flush_interval_s))


def agent_options(cpus: float) -> dict:
    """The options of every traffic agent actor: a run's own and the pool's (cluster/pool.py)."""
    return {"num_cpus": cpus, "scheduling_strategy": "SPREAD"}


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
        pool_hold_s: float | None = None,
        segment: int = STREAM_SEGMENT,
    ) -> None:
        """`pool_hold_s`: lease agents from the pool of `horde up` (cluster/pool.py) for at most
        this long (the run's planned length and a margin); None: create every agent. `segment`:
        the batches an agent's stream yields before the next one takes over (STREAM_SEGMENT)."""
        self._cpus = cpus_per_agent
        self._pool_hold_s = pool_hold_s
        self._lease: PoolLease | None = None
        self._lease_code = ""
        self.pool_note = ""  # how many agents came from the pool, and why not more
        self._ready_timeout_s = ready_timeout_s
        self._fanin = FanIn(silence_s, _name_error, probe_timeout_s=probe_timeout_s)
        self._actors: dict[int, tuple[int, ray.actor.ActorHandle]] = {}
        self.agents: list[AgentInfo] = []
        self._start_wall_ns = 0
        self._monitors: NodeMonitors | None = None
        self._on_reading: Callable[[str, dict], None] = lambda node_id, reading: None
        # Every agent's current stream segment (its ObjectRefGenerator), held until the segment
        # ends or close(): dropping one would release its agent's waiting yield, and so ack a
        # batch nobody took (STREAM_BACKPRESSURE_OBJECTS). An ended segment is let go, and with
        # it the record of its items Ray's driver keeps while a stream lives (STREAM_SEGMENT).
        self._streams: dict[tuple[int, int], object] = {}
        self._segment = segment

    async def start(self, specs: Sequence[AgentSpec]) -> list[AgentInfo]:
        self._create_monitors()
        pooled = await self._lease_pooled(specs)
        fresh = [s for s in specs if s.index not in pooled]
        actors = {s.index: self._new_actor(s) for s in fresh}
        refs = {s.index: actors[s.index].ready.remote() for s in fresh}
        if pooled:
            by_index = {s.index: s for s in specs}
            tried = [(i, a, a.configure.remote(by_index[i], self._lease_code)) for i, a in pooled.items()]
            got = await asyncio.gather(*(r for _, _, r in tried), return_exceptions=True)
            for (i, a, _), info in zip(tried, got):
                if isinstance(info, BaseException):  # not usable after all: a new agent instead
                    self._drop_pooled(a)
                    actors[i] = self._new_actor(by_index[i])
                    refs[i] = actors[i].ready.remote()
                else:
                    actors[i] = a
                    refs[i] = _done(info)
        order = [s.index for s in specs]
        try:
            infos = await asyncio.wait_for(asyncio.gather(*(refs[i] for i in order)), self._ready_timeout_s)
        except RayActorError as exc:  # an agent could not be built: nothing is sent anywhere
            self._kill_all(actors.values())
            raise PlacementError(f"an agent could not be built: {_creation_error(exc)}") from None
        except (asyncio.TimeoutError, GetTimeoutError) as exc:
            self._kill_all(actors.values())
            raise PlacementError(
                f"{len(specs)} agents of {self._cpus:g} CPU each could not be placed within "
                f"{self._ready_timeout_s:.0f}s (cluster resources: {ray.available_resources()})"
            ) from exc
        for s, info in zip(specs, infos):
            self._actors[s.index] = (s.incarnation, actors[s.index])
            self.agents.append(AgentInfo(s.index, s.incarnation, info["pid"], info["node"], info["host"]))
        return list(self.agents)

    def _new_actor(self, spec: AgentSpec):
        options = TrafficAgentActor.options  # type: ignore[attr-defined]  # @ray.remote made it an ActorClass; mypy sees the plain class
        return options(**agent_options(self._cpus)).remote(spec)

    async def _lease_pooled(self, specs: Sequence[AgentSpec]) -> dict[int, ray.actor.ActorHandle]:
        """Agents of the pool for the specs without Python users (a user's module may keep state)."""
        if self._pool_hold_s is None:
            return {}
        from horde.cluster.pool import code_hash, lease_agents

        eligible = [s for s in specs if not s.users]
        self._lease_code = await asyncio.to_thread(code_hash)
        self._lease = await lease_agents(len(eligible), self._cpus, self._pool_hold_s, self._lease_code)
        if self._lease is None:
            self.pool_note = "no agent pool on this Ray"
            return {}
        got = dict(zip((s.index for s in eligible), self._lease.actors))
        self.pool_note = f"{len(got)} of {len(specs)} agent(s) from the pool of `horde up`" + (
            f" ({self._lease.why})" if self._lease.why else ""
        )
        return got

    def _drop_pooled(self, actor) -> None:
        if self._lease is not None:
            self._lease.drop(actor)
        _kill(actor)

    def _kill_all(self, actors) -> None:
        for a in actors:
            self._drop_pooled(a)

    def begin(self, start_wall_ns: int, grace_s: float) -> None:
        self._start_wall_ns = start_wall_ns
        for index, (inc, actor) in self._actors.items():
            self._consume(index, inc, actor, grace_s)

    def _consume(
        self, index: int, inc: int, actor, grace_s: float, hold_until_s: float = 0.0, resume_ns: int | None = None
    ) -> None:
        start = self._start_wall_ns

        async def factory() -> AsyncIterator[bytes]:
            stream = actor.stream.options(_generator_backpressure_num_objects=STREAM_BACKPRESSURE_OBJECTS)

            def open_segment():
                gen = stream.remote(start, resume_ns, self._segment)
                self._streams[(index, inc)] = gen  # never dropped while one of its yields may wait
                return gen

            async for payload in segmented(open_segment, self._segment):  # as the node monitors'
                yield payload

        self._fanin.add(index, inc, held(factory, hold_until_s), grace_s=grace_s, probe=lambda: actor.ready.remote())

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
            self._drop_pooled(old[1])  # a frozen or partitioned agent must not come back and send load
        actor = self._new_actor(spec)
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
            self._drop_pooled(cur[1])

    def _create_monitors(self) -> None:
        """The node monitors' actors, created with the agents: on the embedded Ray (which
        prestarts no worker, cluster/connect.py) their workers then start side by side, before
        the common start instant, not in the run's steady state."""
        from horde.cluster.nodes import NodeMonitors

        if self._monitors is None:
            self._monitors = NodeMonitors(lambda node_id, reading: self._on_reading(node_id, reading))
            self._monitors.create()

    def monitor_nodes(self, on_reading) -> None:
        """One resource monitor per node, streaming from the common start instant."""
        self._on_reading = on_reading
        self._create_monitors()
        assert self._monitors is not None
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
        pooled = set(map(id, self._lease.actors)) if self._lease is not None else set()
        for _, a in self._actors.values():
            if id(a) not in pooled:
                _kill(a)
        self._actors.clear()
        if self._lease is not None:  # stopped by stop(); the keeper resets them before reuse
            await self._lease.give_back()
            self._lease = None
        self._streams.clear()  # the agents are killed, or stopped and reset by the pool


def _kill(actor) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # already dead, or its node is gone
        pass


async def _done(value):
    return value
