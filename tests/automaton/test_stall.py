"""End to end: a stall freezes responses until its window ends, and only then.

The server stalls every 2 s for 1 s: windows are [1, 2), [3, 4), ... s after start.
Sleeps here only position a request in the cycle; the assertions compare the
server's own uptime readings with the window boundaries, with generous margins.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from horde.automaton.app import STATE
from horde.automaton.config import AutomatonConfig
from horde.automaton.faults import FaultConfig

EVERY_S = 2.0
FOR_S = 1.0
# asyncio timers may fire up to a clock tick early; the loop is shared with the client.
EARLY_TOLERANCE_S = 0.02
LATE_TOLERANCE_S = 0.5


def _uptime_s(app: web.Application) -> float:
    return app[STATE].uptime_s()


async def _sleep_until_phase(app: web.Application, phase_s: float) -> None:
    """Sleep until uptime mod EVERY_S == phase_s (the next such instant)."""
    now_s = _uptime_s(app)
    wait_s = (phase_s - now_s) % EVERY_S
    await asyncio.sleep(wait_s)


def _config(think_delay_s: float = 0.0) -> AutomatonConfig:
    return AutomatonConfig(
        faults=FaultConfig(stall_every_s=EVERY_S, stall_for_s=FOR_S),
        think_delay_s=think_delay_s,
        tool_delay_s=0.0,
    )


def test_request_outside_a_stall_window_is_fast(in_process) -> None:
    async def scenario() -> None:
        async with in_process(_config()) as (client, app):
            await _sleep_until_phase(app, 0.1)
            started = time.monotonic()
            resp = await client.get("/health")
            elapsed_s = time.monotonic() - started
            assert resp.status == 200
            assert elapsed_s < LATE_TOLERANCE_S
            # And it was answered before the window opened.
            assert (await resp.json())["uptime_s"] % EVERY_S < EVERY_S - FOR_S

    asyncio.run(scenario())


def test_request_arriving_in_a_window_waits_for_its_end(in_process) -> None:
    async def scenario() -> None:
        async with in_process(_config()) as (client, app):
            await _sleep_until_phase(app, 1.2)
            sent_at_s = _uptime_s(app)
            window_end_s = (sent_at_s // EVERY_S + 1) * EVERY_S
            assert window_end_s - sent_at_s > 0.5  # really inside the window
            started = time.monotonic()
            resp = await client.get("/health")
            elapsed_s = time.monotonic() - started
            answered_at_s = _uptime_s(app)
            assert resp.status == 200
            assert answered_at_s >= window_end_s - EARLY_TOLERANCE_S
            assert answered_at_s <= window_end_s + LATE_TOLERANCE_S
            assert elapsed_s >= (window_end_s - sent_at_s) - EARLY_TOLERANCE_S

    asyncio.run(scenario())


def test_request_handled_into_a_window_waits_for_its_end(in_process) -> None:
    # Sent 0.3 s before the window with 0.6 s of "thinking": the handler finishes
    # inside the window, so the response is held until the window ends.
    async def scenario() -> None:
        async with in_process(_config(think_delay_s=0.6)) as (client, app):
            await _sleep_until_phase(app, 0.7)
            sent_at_s = _uptime_s(app)
            window_end_s = (sent_at_s // EVERY_S + 1) * EVERY_S
            resp = await client.post("/api/agents/writer/respond", json={})
            answered_at_s = _uptime_s(app)
            assert resp.status == 200
            assert answered_at_s >= window_end_s - EARLY_TOLERANCE_S
            assert answered_at_s <= window_end_s + LATE_TOLERANCE_S

    asyncio.run(scenario())


def test_stall_also_holds_errors(in_process) -> None:
    async def scenario() -> None:
        async with in_process(_config()) as (client, app):
            await _sleep_until_phase(app, 1.5)
            window_end_s = (_uptime_s(app) // EVERY_S + 1) * EVERY_S
            resp = await client.post("/api/agents/ghost/respond", json={})
            assert resp.status == 404
            assert _uptime_s(app) >= window_end_s - EARLY_TOLERANCE_S

    asyncio.run(scenario())
