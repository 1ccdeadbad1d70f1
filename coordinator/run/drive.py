"""The session's drive loop: the fleet's events to RunSession's steps, and the timer that
declares suspected agents lost when their leases lapse (run/losses.py)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from horde.cluster.events import AgentEnded, AgentLost, BatchReceived
from horde.coordinator.run import losses

if TYPE_CHECKING:
    from horde.coordinator.run.session import RunSession


async def drive(session: RunSession, events: Any) -> None:
    """The fleet's events to the session's steps, until the stream ends or the time is up.
    Suspected agents are declared lost here when their leases lapse: the wait for the next
    event is cut short for it (asyncio.wait: the pending read of the stream is kept)."""
    pending: asyncio.Task | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(_next(events))
            budget_s = session.wait_budget_s()
            lapse_s = losses.next_lapse_in_s(session)
            wait_s = budget_s if lapse_s is None else min(budget_s, lapse_s)
            done, _ = await asyncio.wait({pending}, timeout=wait_s)
            if not done:
                if lapse_s is None or lapse_s > budget_s:
                    session.on_timeout()
                    break
                if await session.declare_lapsed():
                    session.close_ready_windows()
                continue
            task, pending = pending, None
            try:
                ev = task.result()
            except StopAsyncIteration:
                if not session.suspects:
                    break
                # Every stream ended with agents still suspected: wait out their leases; the
                # replacements' streams are read anew.
                await asyncio.sleep(losses.next_lapse_in_s(session) or 0.0)
                await session.declare_lapsed()
                events = session.fleet.events().__aiter__()
                continue
            fresh = True  # False: a dropped batch or a stale loss, nothing new to close
            if isinstance(ev, BatchReceived):
                fresh = session.on_batch(ev)
                if session.faulty:  # bad batches made an agent faulty: lost and replaced like any loss
                    fresh = await session.lose_faulty() or fresh
            elif isinstance(ev, AgentEnded):
                session.on_agent_ended(ev)
            elif isinstance(ev, AgentLost):
                fresh = await session.on_agent_lost(ev)
            if fresh:
                session.close_ready_windows()
    finally:
        if pending is not None:
            pending.cancel()


async def _next(events: Any) -> Any:
    return await events.__anext__()
