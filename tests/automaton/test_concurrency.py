"""The automaton holds 1000+ concurrent keep-alive connections (subprocess, 127.0.0.1)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from horde.automaton.launch import start_automaton
from horde.automaton.server import raise_open_file_limit

CONNECTIONS = 1000


@pytest.mark.timeout(60)
def test_one_thousand_concurrent_keep_alive_connections() -> None:
    # The client side needs the fds too.
    if 0 <= raise_open_file_limit() < 2 * CONNECTIONS + 100:
        pytest.skip("not enough file descriptors for 1000 client connections")

    with start_automaton() as automaton:

        async def one_round(session: aiohttp.ClientSession) -> list[int]:
            async def respond(i: int) -> int:
                async with session.post(
                    f"{automaton.url}/api/agents/planner/respond", json={"message": str(i)}
                ) as resp:
                    await resp.json()
                    return resp.status

            return await asyncio.gather(*(respond(i) for i in range(CONNECTIONS)))

        async def scenario() -> tuple[list[int], list[int], dict, dict]:
            # limit=0: no pool cap, so all 1000 requests, started together, each open a
            # connection (none is idle yet) and keep it alive afterwards.
            connector = aiohttp.TCPConnector(limit=0)
            timeout = aiohttp.ClientTimeout(total=45)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                first = await one_round(session)
                after_first = automaton.stats()
                # The second round reuses the kept-alive connections.
                second = await one_round(session)
                after_second = automaton.stats()
            return first, second, after_first, after_second

        first, second, after_first, after_second = asyncio.run(scenario())

        assert first == [200] * CONNECTIONS
        assert second == [200] * CONNECTIONS
        # The urllib stats() call holds one more connection.
        assert after_first["open_connections"] >= CONNECTIONS
        assert after_second["open_connections"] <= CONNECTIONS + 1
        assert after_second["requests"]["agent_respond"] == 2 * CONNECTIONS
        assert after_second["in_flight"] == 0
