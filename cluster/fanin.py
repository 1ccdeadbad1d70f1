"""Fan many agent streams into one event stream, with a watchdog for silent agents.

Shared by the Ray fleet and the in-process fleet: each agent stream is an async iterator of
encoded batches; a stream that raises is a lost agent; a stream that stays silent for
`silence_s` (a frozen process, a partitioned node: Ray raises nothing for about a minute)
is declared lost by the watchdog and its consumer is cancelled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from cluster.events import AgentEnded, AgentLost, BatchReceived, FleetEvent

StreamFactory = Callable[[], AsyncIterator[bytes]]
ErrorNamer = Callable[[BaseException], tuple[str, str]]


def _default_namer(exc: BaseException) -> tuple[str, str]:
    return type(exc).__name__, str(exc)[:500]


class FanIn:
    def __init__(self, silence_s: float, name_error: ErrorNamer = _default_namer) -> None:
        self._silence_s = silence_s
        self._name_error = name_error
        self._queue: asyncio.Queue[FleetEvent] = asyncio.Queue()
        self._tasks: dict[tuple[int, int], asyncio.Task] = {}
        self._last_seen: dict[tuple[int, int], float] = {}
        self._open = 0
        self._watchdog: asyncio.Task | None = None
        self._closed = False

    def add(self, index: int, incarnation: int, stream: StreamFactory, grace_s: float = 0.0) -> None:
        """Consume one agent's stream; `grace_s` extends its first silence deadline (start lead)."""
        key = (index, incarnation)
        self._last_seen[key] = time.monotonic() + grace_s
        self._open += 1
        self._tasks[key] = asyncio.create_task(self._consume(key, stream), name=f"fanin-{index}.{incarnation}")
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch())

    async def _consume(self, key: tuple[int, int], stream: StreamFactory) -> None:
        index, inc = key
        try:
            async for payload in stream():
                self._last_seen[key] = time.monotonic()
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
                self._queue.put_nowait(_END)  # type: ignore[arg-type]

    async def _watch(self) -> None:
        while not self._closed:
            await asyncio.sleep(min(0.25, self._silence_s / 4))
            now = time.monotonic()
            for key, seen in list(self._last_seen.items()):
                if now - seen > self._silence_s:
                    task = self._tasks.get(key)
                    self._last_seen.pop(key, None)
                    if task is not None and not task.done():
                        task.cancel()
                        # The consumer's finally runs on cancel; report the loss here.
                        self._queue.put_nowait(
                            AgentLost(key[0], key[1], "silent", f"no batch for {now - seen:.1f}s")
                        )

    def touch_all(self) -> None:
        """Reset the silence clocks (e.g. while waiting for the common start instant)."""
        now = time.monotonic()
        for key in self._last_seen:
            self._last_seen[key] = now

    async def events(self) -> AsyncIterator[FleetEvent]:
        if self._open == 0:
            return
        while True:
            ev = await self._queue.get()
            if ev is _END:
                # More streams may have been added (replacements) before this was read.
                if self._open == 0:
                    return
                continue
            yield ev

    async def close(self) -> None:
        self._closed = True
        for t in self._tasks.values():
            t.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if self._watchdog is not None:
            await asyncio.gather(self._watchdog, return_exceptions=True)


_END = object()
