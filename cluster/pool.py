"""The agent pool of `horde up`: traffic agents kept warm between runs on the warm head.

A Ray worker process is bound to the job that started it, so every run that creates its
agents waits for new worker processes (~1 s on 2 cores: Python, Ray's core worker, horde's
imports). `horde up` (cluster/head.py) instead starts a pool keeper, a detached actor named
KEEPER_NAME in Ray namespace NAMESPACE, which keeps `size` detached agent actors created with
the options a run's fleet uses (cluster/fleet.py agent_options). A run on the warm head leases
agents from it (RayFleet.start), configures each with its own spec, and gives them back at its
end (RayFleet.close); the keeper resets each (agents/runner.py reset_for_reuse) before another
run may lease it.

- Atomic: the keeper is one actor and lease() takes its agents without awaiting anything, so
  two runs at once never share an agent; the second one creates its own.
- Never stale: a run leases only agents whose code hash (every .py file of horde, hashed when
  the agent started) equals its own, and whose CPUs equal its plan's. Agents of other code are
  retired at once; when a run cannot be served in full, the idle agents it did not take are
  retired too, so their CPUs are free for the agents the run creates.
- Never held by a dead run: a lease ends when the run gives it back, when the run's Ray job
  is dead (a driver killed before its end), or at its hold deadline; its agents are then
  retired, not reused. The pool is refilled to `size` once no lease is outstanding.
- `horde down` stops the head, whose Ray takes the keeper and its agents with it; their
  processes are descendants of the head, which `down` checks by PID (commands/up.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

NAMESPACE = "horde"
KEEPER_NAME = "horde-agent-pool"
RESET_TIMEOUT_S = 30.0  # an agent that does not settle within this is retired
WATCH_EVERY_S = 2.0  # how often the keeper looks for leases of dead runs


def code_hash() -> str:
    """sha256 over the path and text of every .py file of the horde package this process imports."""
    import horde

    root = Path(horde.__file__).resolve().parent if horde.__file__ else Path(next(iter(horde.__path__)))
    h = hashlib.sha256()
    for base in sorted({Path(p) for p in horde.__path__} | {root}):
        files = []
        for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            files += [Path(dirpath) / f for f in filenames if f.endswith(".py")]
        for f in sorted(files):
            h.update(str(f.relative_to(base)).encode())
            try:
                h.update(f.read_bytes())
            except OSError:
                h.update(b"<unreadable>")
    return h.hexdigest()


@dataclass
class _Agent:
    actor: Any
    code: str
    cpus: float
    lease: int | None = None


@dataclass
class _Lease:
    job_id: str
    until_s: float  # time.monotonic() of the keeper's process
    agents: list[str] = field(default_factory=list)


@ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)
class PoolKeeper:
    """Hands out pooled agents one run at a time (see the module's docstring)."""

    def __init__(self, size: int, cpus: float) -> None:
        self._size = max(0, size)
        self._cpus = cpus
        self._agents: dict[str, _Agent] = {}
        self._leases: dict[int, _Lease] = {}
        self._next_lease = 1
        self._retired = 0
        self._watch: asyncio.Task | None = None
        self._fill()

    def _fill(self) -> None:
        from horde.cluster.fleet import TrafficAgentActor, agent_options

        code = code_hash()  # what a worker started now imports
        while len(self._agents) < self._size:
            new = TrafficAgentActor.options  # type: ignore[attr-defined]  # @ray.remote made it an ActorClass
            actor = new(lifetime="detached", namespace=NAMESPACE, **agent_options(self._cpus)).remote(None)
            self._agents[actor._actor_id.hex()] = _Agent(actor, code, self._cpus)

    def _retire(self, key: str) -> None:
        agent = self._agents.pop(key, None)
        if agent is not None:
            self._retired += 1
            try:
                ray.kill(agent.actor, no_restart=True)
            except Exception:  # already gone
                pass

    async def ready(self, timeout_s: float = 60.0) -> dict:
        """Wait until the pool's agents are up; their PIDs (agents that failed are retired)."""
        keys = list(self._agents)
        refs = [self._agents[k].actor.ready.remote() for k in keys]
        done = await asyncio.gather(*(asyncio.wait_for(r, timeout_s) for r in refs), return_exceptions=True)
        pids = []
        for key, info in zip(keys, done):
            if isinstance(info, BaseException):
                self._retire(key)
            else:
                pids.append(info["pid"])
        return {"pid": os.getpid(), "agents": pids, "cpus": self._cpus}

    async def lease(self, n: int, cpus: float, code: str, job_id: str, hold_s: float) -> dict:
        """Up to `n` idle agents of these CPUs and this code, taken for one run (no await: atomic).
        {"lease": id, "agents": [handles], "why": why fewer than n (empty when all were served)}."""
        self._start_watch()
        idle = [k for k, a in self._agents.items() if a.lease is None]
        stale = [k for k in idle if self._agents[k].code != code]
        fits = [k for k in idle if k not in stale and self._agents[k].cpus == cpus][:n]
        why = ""
        if stale:
            why = f"{len(stale)} pooled agent(s) run other horde code"
        elif len(fits) < n:
            busy = len(self._agents) - len(idle)
            why = f"{len(fits)} of {n} agents of {cpus:g} CPU idle in the pool ({busy} leased)"
        retire = stale + ([k for k in idle if k not in fits] if len(fits) < n else [])
        for k in retire:  # their CPUs go to the agents the run creates
            self._retire(k)
        lease_id = self._next_lease
        self._next_lease += 1
        self._leases[lease_id] = _Lease(job_id, time.monotonic() + hold_s, list(fits))
        for k in fits:
            self._agents[k].lease = lease_id
        return {"lease": lease_id, "agents": [self._agents[k].actor for k in fits], "why": why}

    async def give_back(self, lease_id: int, keep: list[bool]) -> None:
        """The run of `lease_id` ended: its agents (in lease order; keep[i] False: lost or killed
        by the run) are reset and pooled again, or retired. Returns once they are (the run's
        close waits for it, bounded, so that a run right after finds them idle)."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return
        keys = [k for k, kept in zip(lease.agents, keep + [False] * len(lease.agents)) if kept]
        for k in lease.agents:
            if k not in keys:
                self._retire(k)
        await self._settle(keys)

    async def _settle(self, keys: list[str]) -> None:
        for k in keys:
            agent = self._agents.get(k)
            if agent is None:
                continue
            try:
                clean = await asyncio.wait_for(agent.actor.reset.remote(), RESET_TIMEOUT_S)
            except Exception:  # died, or did not settle in time
                clean = False
            if clean:
                agent.lease = None
            else:
                self._retire(k)
        self._refill()

    def _refill(self) -> None:
        if not self._leases:
            self._fill()

    def _start_watch(self) -> None:
        if self._watch is None or self._watch.done():
            self._watch = asyncio.get_running_loop().create_task(self._watch_leases())

    async def _watch_leases(self) -> None:
        while self._leases:
            await asyncio.sleep(WATCH_EVERY_S)
            dead = _dead_jobs()
            now = time.monotonic()
            for lease_id, lease in list(self._leases.items()):
                if lease.job_id in dead or now > lease.until_s:
                    del self._leases[lease_id]
                    for k in lease.agents:  # a run that ended without giving them back
                        self._retire(k)
            self._refill()

    async def status(self) -> dict:
        leased = sum(1 for a in self._agents.values() if a.lease is not None)
        return {
            "size": self._size,
            "agents": len(self._agents),
            "leased": leased,
            "leases": len(self._leases),
            "retired": self._retired,
        }


def _dead_jobs() -> set[str]:
    """Ray job IDs (hex) that have ended. Ray's GCS client is a private name of Ray 2.60: where it
    is gone, leases end only by their hold deadline."""
    try:
        client = ray._private.worker.global_worker.gcs_client  # type: ignore[attr-defined]  # set by ray.init
        return {job_id.hex() for job_id, info in client.get_all_job_info().items() if info.is_dead}
    except Exception:
        return set()


def start_pool(size: int, cpus: float, timeout_s: float = 60.0) -> dict:
    """Start the keeper and its agents (the warm head's driver calls this); their PIDs."""
    keeper = PoolKeeper.options(  # type: ignore[attr-defined]  # @ray.remote made it an ActorClass
        name=KEEPER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(size, cpus)
    return ray.get(keeper.ready.remote(timeout_s), timeout=timeout_s + 10)


class PoolLease:
    """A run's side of a lease: which of its agents came from the pool, and their return."""

    def __init__(self, keeper: Any, lease_id: int, actors: list, why: str) -> None:
        self.keeper = keeper
        self.lease_id = lease_id
        self.actors = actors
        self.why = why
        self.kept = [True] * len(actors)

    def drop(self, actor: Any) -> None:
        """The run killed this pooled agent (lost, replaced): it is not given back."""
        for i, a in enumerate(self.actors):
            if a is actor:
                self.kept[i] = False

    async def give_back(self, timeout_s: float = 5.0) -> None:
        try:
            await asyncio.wait_for(self.keeper.give_back.remote(self.lease_id, self.kept), timeout_s)
        except Exception:  # the keeper is gone: the agents go with the warm head
            pass


async def lease_agents(n: int, cpus: float, hold_s: float, code: str, timeout_s: float = 5.0) -> PoolLease | None:
    """Lease up to `n` pooled agents of `cpus` running `code` (code_hash()) for this run; None
    when there is no pool to ask."""
    try:
        keeper = ray.get_actor(KEEPER_NAME, namespace=NAMESPACE)
    except ValueError:  # no pool on this cluster
        return None
    job_id = ray.get_runtime_context().get_job_id()
    try:
        got = await asyncio.wait_for(keeper.lease.remote(n, cpus, code, job_id, hold_s), timeout_s)
    except Exception:
        return None
    return PoolLease(keeper, got["lease"], list(got["agents"]), got["why"])
