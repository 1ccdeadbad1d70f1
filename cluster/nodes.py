"""One resource monitor per node: a zero-CPU actor pinned to each node, streaming readings.

Ray's driver keeps the id of every item a streaming generator has yielded for as long as the
stream lives (the owner's ObjectRefStream records each item it was told of, consumed or not:
~37 bytes a slot of a hash set that doubles; docs/scale.md, "horde's own memory"). One
reading a second for a 72-hour soak would hold 18.5 MiB in the coordinator per node. So a
monitor's stream ends after `STREAM_SEGMENT` readings and the coordinator opens the next one
on the same actor, which carries on from the same tick: the driver holds at most one
segment's ids a node.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

if TYPE_CHECKING:
    from horde.agents.probe import NodeProbe

# Readings a stream yields before the next one takes over: two minutes at one a second, so
# Ray's per-stream record stays under 128 slots (~5 kB) a node however long the run, and has
# reached that size before minute 2, where a soak's leak verdict starts (with an hour's
# segments it grew through the first hour, +57 kB in a 10-minute run: docs/scale.md). A new
# segment is one more call to the actor every two minutes.
STREAM_SEGMENT = 120


async def segmented(open_segment: Callable[[], Any], size: int) -> AsyncIterator[Any]:
    """The values of one stream carried in segments of `size` items (STREAM_SEGMENT):
    `open_segment()` opens the next (a Ray ObjectRefGenerator) once the last ended full; a
    segment shorter than `size` was the stream's last. Shared by the node monitors and the
    agents' batch streams (cluster/fleet.py)."""
    while True:
        got = 0
        async for ref in open_segment():
            got += 1
            yield await ref
        if got < size:
            return


@ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)
class NodeMonitor:
    def __init__(self) -> None:
        self._probe: NodeProbe | None = None
        self._k = 1  # the next tick, kept from one stream segment to the next

    async def stream(self, start_wall_ns: int, interval_s: float, count: int | None = None):
        """Readings on the ticks of `interval_s` from `start_wall_ns`; at most `count` of them."""
        from horde.agents.probe import NodeProbe

        if self._probe is None:
            self._probe = NodeProbe()
        probe = self._probe
        yielded = 0
        while count is None or yielded < count:
            delay = start_wall_ns / 1e9 + self._k * interval_s - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._k = max(self._k + 1, int((time.time() - start_wall_ns / 1e9) / interval_s) + 1)
            reading = probe.read()
            reading["t_s"] = time.time() - start_wall_ns / 1e9
            yielded += 1
            yield reading


class NodeMonitors:
    """Start a monitor on every alive node and feed readings to `on_reading(node_id, dict)`."""

    def __init__(self, on_reading: Callable[[str, dict], None], segment: int = STREAM_SEGMENT) -> None:
        self._on_reading = on_reading
        self._segment = segment
        self._tasks: list[asyncio.Task] = []
        self._actors: list[tuple[str, Any]] = []  # (node id, its NodeMonitor actor)

    def create(self) -> None:
        """Create the monitors (once): with the agents, so that their workers start side by side."""
        if self._actors:
            return
        for n in ray.nodes():
            if not n.get("Alive"):
                continue
            node_id = n["NodeID"]
            actor = NodeMonitor.options(  # type: ignore[attr-defined]  # @ray.remote made it an ActorClass; mypy sees the plain class
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
            ).remote()
            self._actors.append((node_id, actor))

    def start(self, start_wall_ns: int, interval_s: float = 1.0) -> None:
        self.create()
        for node_id, actor in self._actors:
            self._tasks.append(asyncio.create_task(self._consume(node_id, actor, start_wall_ns, interval_s)))

    async def _consume(self, node_id: str, actor, start_wall_ns: int, interval_s: float) -> None:
        try:
            segments = segmented(lambda: actor.stream.remote(start_wall_ns, interval_s, self._segment), self._segment)
            async for reading in segments:
                self._on_reading(node_id, reading)
        except asyncio.CancelledError:
            raise
        except Exception:  # a lost node's monitor ends quietly; agent loss is handled by the fleet
            return

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for _, a in self._actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass


async def _aiter(gen) -> AsyncIterator:
    async for ref in gen:
        yield await ref
