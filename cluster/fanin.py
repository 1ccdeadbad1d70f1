"""Fan many agent streams into one event stream, with a watchdog for silent agents.

Shared by the Ray fleet and the in-process fleet: each agent stream is an async iterator of
encoded batches; a stream that raises is a lost agent. A stream that stays silent for
`silence_s` (a frozen process, a partitioned node: Ray raises nothing for about a minute)
is suspected: the watchdog pings the agent (`probe`) and declares it lost when the ping
does not answer within `probe_timeout_s`. An agent that answers pings but still sends
nothing for `hung_s` is lost too (hung). The ping keeps a slow but alive agent on a
starved machine from being killed for a late batch.

The queue holds at most `max_queued_batches` batches: a stream whose next batch finds it
full waits (and reads no more of its stream, so the agent's side backs up: Ray's
generator backpressure, the in-process runner's queue) until the consumer of `events()`
takes one. An agent waiting on us is not silent. Ends and losses are never held back
(at most two per stream).

Taking a stream's next batch is what acknowledges the last one to its agent (the lease,
agents/lease.py; no call is made): a coordinator that stays behind by a full queue for
the agents' lease term fences them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from horde.cluster.events import AgentEnded, AgentLost, BatchReceived, FleetEvent

MAX_QUEUED_BATCHES = 256  # about 256 agent-seconds of samples waiting for the coordinator

StreamFactory = Callable[[], AsyncIterator[bytes]]
Probe = Callable[[], Awaitable[object]]
ErrorNamer = Callable[[BaseException], tuple[str, str]]


def held(stream: StreamFactory, until_s: float) -> StreamFactory:
    """`stream`, started no earlier than time.monotonic() == until_s (a replacement waits
    out its lost predecessor's lease, agents/lease.py)."""

    async def later() -> AsyncIterator[bytes]:
        delay = until_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        async for payload in stream():
            yield payload

    return later


def _default_namer(exc: BaseException) -> tuple[str, str]:
    return type(exc).__name__, str(exc)[:500]


class FanIn:
    def __init__(
        self,
        silence_s: float,
        name_error: ErrorNamer = _default_namer,
        *,
        probe_timeout_s: float | None = None,
        hung_factor: float = 5.0,
        max_queued_batches: int = MAX_QUEUED_BATCHES,
    ) -> None:
        self._silence_s = silence_s
        self._probe_timeout_s = probe_timeout_s if probe_timeout_s is not None else silence_s / 3
        self._hung_s = silence_s * hung_factor
        self._probes: dict[tuple[int, int], Probe] = {}
        self._probing: set[tuple[int, int]] = set()
        # The event loop keeps only weak references to tasks: a running ping is held here.
        self._pings: set[asyncio.Task] = set()
        self._name_error = name_error
        self._queue: asyncio.Queue[FleetEvent | _EndOfStreams] = asyncio.Queue()
        # Batches in the queue, bounded by these slots (ends and losses take none).
        self._batch_slots = asyncio.Semaphore(max_queued_batches)
        self._backpressured: set[tuple[int, int]] = set()  # streams waiting for a slot
        self._tasks: dict[tuple[int, int], asyncio.Task] = {}
        self._last_seen: dict[tuple[int, int], float] = {}
        self._received_at: dict[tuple[int, int], float] = {}  # the last batch's arrival, kept after a loss
        self._open = 0
        self._watchdog: asyncio.Task | None = None
        self._closed = False

    def add(
        self,
        index: int,
        incarnation: int,
        stream: StreamFactory,
        grace_s: float = 0.0,
        probe: Probe | None = None,
    ) -> None:
        """Consume one agent's stream; `grace_s` extends its first silence deadline (start lead).
        Asking a stream for its next batch is what acks the last one (the agent's lease,
        agents/lease.py): it is asked only once the batch before is in the queue."""
        key = (index, incarnation)
        if probe is not None:
            self._probes[key] = probe
        self._last_seen[key] = time.monotonic() + grace_s
        self._open += 1
        self._tasks[key] = asyncio.create_task(self._consume(key, stream), name=f"fanin-{index}.{incarnation}")
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch())

    async def _consume(self, key: tuple[int, int], stream: StreamFactory) -> None:
        index, inc = key
        try:
            async for payload in stream():
                self._last_seen[key] = self._received_at[key] = time.monotonic()
                if self._batch_slots.locked():
                    self._backpressured.add(key)
                    try:
                        await self._batch_slots.acquire()
                    finally:
                        self._backpressured.discard(key)
                    self._last_seen[key] = time.monotonic()  # the wait was ours, not the agent's silence
                else:
                    await self._batch_slots.acquire()  # free: returns at once
                self._queue.put_nowait(BatchReceived(index, payload))
            self._queue.put_nowait(AgentEnded(index, inc))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # any stream failure is a lost agent, never a crash
            reason, detail = self._name_error(exc)
            self._queue.put_nowait(AgentLost(index, inc, reason, detail))
        finally:
            self._last_seen.pop(key, None)
            self._open -= 1
            if self._open == 0:
                self._queue.put_nowait(_END)

    async def _watch(self) -> None:
        while not self._closed:
            await asyncio.sleep(min(0.1, self._silence_s / 10))
            now = time.monotonic()
            for key, seen in list(self._last_seen.items()):
                silent = now - seen
                if silent <= self._silence_s or key in self._probing or key in self._backpressured:
                    continue
                probe = self._probes.get(key)
                if probe is None or silent > self._hung_s:
                    why = "silent" if probe is None else "hung"
                    self._declare_lost(key, why, f"no batch for {silent:.1f}s")
                else:
                    self._probing.add(key)
                    ping = asyncio.create_task(self._ping(key, probe, silent))
                    self._pings.add(ping)
                    ping.add_done_callback(self._pings.discard)

    async def _ping(self, key: tuple[int, int], probe: Probe, silent: float) -> None:
        # The timeout must not depend on the ping giving up: a call to an unreachable node
        # may ignore its cancellation (asyncio.wait_for would then wait on it for ever and
        # keep this agent in `_probing`, never declared). asyncio.wait returns at the
        # deadline whatever the ping does; a ping still out is cancelled and left behind.
        call = asyncio.ensure_future(_call(probe))
        try:
            done, _ = await asyncio.wait({call}, timeout=self._probe_timeout_s)
            answered = call in done and not call.cancelled() and call.exception() is None
            if not answered:
                if not call.done():
                    call.cancel()
                    self._pings.add(call)  # a stubborn ping is kept referenced until it ends
                    call.add_done_callback(self._pings.discard)
                if key in self._last_seen and time.monotonic() - self._last_seen[key] > self._silence_s:
                    self._declare_lost(
                        key,
                        "silent",
                        f"no batch for {silent:.1f}s and no answer to a ping within {self._probe_timeout_s:.1f}s",
                    )
        finally:
            self._probing.discard(key)

    def _declare_lost(self, key: tuple[int, int], reason: str, detail: str) -> None:
        task = self._tasks.get(key)
        self._last_seen.pop(key, None)
        if task is not None and not task.done():
            task.cancel()
            # The consumer's finally runs on cancel; report the loss here.
            self._queue.put_nowait(AgentLost(key[0], key[1], reason, detail))

    def last_batch_at(self, index: int, incarnation: int) -> float | None:
        """time.monotonic() when this agent's last batch arrived; None before its first."""
        return self._received_at.get((index, incarnation))

    def touch_all(self) -> None:
        """Reset the silence clocks (e.g. while waiting for the common start instant)."""
        now = time.monotonic()
        for key in self._last_seen:
            self._last_seen[key] = now

    async def events(self) -> AsyncIterator[FleetEvent]:
        if self._open == 0 and self._queue.empty():
            return  # nothing was ever added; streams that already ended left their events queued
        while True:
            ev = await self._queue.get()
            if isinstance(ev, _EndOfStreams):
                # More streams may have been added (replacements) before this was read.
                if self._open == 0:
                    return
                continue
            if isinstance(ev, BatchReceived):
                self._batch_slots.release()  # taken out: a waiting stream may queue its next
            yield ev

    async def close(self) -> None:
        self._closed = True
        for t in self._tasks.values():
            t.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
        for ping in list(self._pings):
            ping.cancel()  # not awaited: a ping nobody answers may ignore it
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if self._watchdog is not None:
            await asyncio.gather(self._watchdog, return_exceptions=True)


async def _call(probe: Probe) -> object:
    return await probe()


class _EndOfStreams:
    """The queue's marker: every stream has ended (a type of its own, so the queue stays typed)."""


_END = _EndOfStreams()
