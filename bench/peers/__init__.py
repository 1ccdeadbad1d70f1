"""Peer load generators for bench/cpu_per_request.py: each knows how to launch itself
against a URL and how to read its own request count back.

`peers()` lists them in the order the runner reports them; none is started at import.
"""

from __future__ import annotations

from bench.peers.base import Count, Load, Peer, PeerFailed
from bench.peers.external import AiohttpLoop, FloorLoop, Locust, Wrk
from bench.peers.horde import Horde

__all__ = ["Count", "Load", "Peer", "PeerFailed", "peers"]


def peers(horde_executable: str = "horde") -> list[Peer]:
    return [
        Wrk(),
        FloorLoop(),
        AiohttpLoop(),
        Locust(),
        Horde(horde_executable),
        Horde(horde_executable, engine="aiohttp"),
    ]
