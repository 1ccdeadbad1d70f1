"""One resource monitor per node: a zero-CPU actor pinned to each node, streaming readings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)
class NodeMonitor:
    async def stream(self, start_wall_ns: int, interval_s: float):
        from horde.agents.probe import NodeProbe

        probe = NodeProbe()
        k = 1
        while True:
            delay = start_wall_ns / 1e9 + k * interval_s - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            k = max(k + 1, int((time.time() - start_wall_ns / 1e9) / interval_s) + 1)
            reading = probe.read()
            reading["t_s"] = time.time() - start_wall_ns / 1e9
            yield reading


class NodeMonitors:
    """Start a monitor on every alive node and feed readings to `on_reading(node_id, dict)`."""

    def __init__(self, on_reading: Callable[[str, dict], None]) -> None:
        self._on_reading = on_reading
        self._tasks: list[asyncio.Task] = []
        self._actors: list = []

    def start(self, start_wall_ns: int, interval_s: float = 1.0) -> None:
        for n in ray.nodes():
            if not n.get("Alive"):
                continue
            node_id = n["NodeID"]
            actor = NodeMonitor.options(  # type: ignore[attr-defined]  # @ray.remote made it an ActorClass; mypy sees the plain class
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
            ).remote()
            self._actors.append(actor)
            gen = actor.stream.remote(start_wall_ns, interval_s)
            self._tasks.append(asyncio.create_task(self._consume(node_id, gen)))

    async def _consume(self, node_id: str, gen) -> None:
        try:
            async for ref in gen:
                self._on_reading(node_id, await ref)
        except asyncio.CancelledError:
            raise
        except Exception:  # a lost node's monitor ends quietly; agent loss is handled by the fleet
            return

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for a in self._actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass


async def _aiter(gen) -> AsyncIterator:
    async for ref in gen:
        yield await ref
