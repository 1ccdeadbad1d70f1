"""The request-engine seam: send one prepared request, get (status, body bytes, error class).

Everything per request outside the engine (scheduling, timing, recording) belongs to the
agent. An engine owns its connections (at most `max_connections`), never raises for a
failed request (the failure is an error class), and is used from one event loop.

Engines:
- ``aiohttp``: full HTTP via aiohttp.ClientSession (TLS, redirects, cookies, any body).
- ``fast``: the lean HTTP/1.1 keep-alive engine (agents/fast_http.py), for plain requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

import aiohttp
from yarl import URL

from horde.agents.samples import ErrorClass
from horde.agents.spec import RequestTemplate

Result = tuple[int, int, int]  # (status or 0, response body bytes, ErrorClass)


class Engine(Protocol):
    """What the agent needs of an engine. An engine may also offer, as the lean one does,
    ``submit(index, token, done)`` (send, then call ``done(token, status, bytes, error)``
    from the loop) and ``in_flight()``; the agent then drives it by callbacks instead of a
    task per request (agents/traffic.py)."""

    name: str

    async def open(self) -> None: ...

    async def request(self, index: int) -> Result: ...

    async def close(self) -> None: ...


def classify_exception(exc: BaseException) -> int:
    """Map a client-side exception to an ErrorClass (shared by engines)."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return ErrorClass.TIMEOUT
    if isinstance(exc, (aiohttp.ClientConnectorError, ConnectionRefusedError)):
        return ErrorClass.CONNECT
    if isinstance(exc, (aiohttp.ServerDisconnectedError, ConnectionResetError, BrokenPipeError)):
        return ErrorClass.RESET
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ErrorClass.RESET
    if isinstance(exc, aiohttp.ClientResponseError):
        return ErrorClass.PROTOCOL
    if isinstance(exc, OSError):
        return ErrorClass.CONNECT
    return ErrorClass.OTHER


class AiohttpEngine:
    """Full-featured engine on one aiohttp.ClientSession."""

    name = "aiohttp"

    def __init__(
        self,
        templates: Sequence[RequestTemplate],
        *,
        max_connections: int,
        timeout_s: float,
        connect_timeout_s: float,
    ) -> None:
        self._templates = tuple(templates)
        self._max_connections = max_connections
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s)
        self._session: aiohttp.ClientSession | None = None
        # Pre-built per-template call arguments: the URL parsed once (yarl), no per-request dicts.
        self._prepared: list[tuple[str, URL, dict[str, str] | None, bytes | None]] = [
            (t.method, URL(t.url), dict(t.headers) or None, t.body) for t in self._templates
        ]

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, limit_per_host=0, ttl_dns_cache=300, force_close=False
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,  # measure bytes on the wire, don't spend CPU inflating them
            skip_auto_headers=("User-Agent",),
            headers={"User-Agent": "horde"},
        )

    async def request(self, index: int) -> Result:
        method, url, headers, body = self._prepared[index]
        session = self._session
        assert session is not None, "engine not opened"
        try:
            async with session.request(method, url, headers=headers, data=body, allow_redirects=False) as resp:
                data = await resp.read()
                return resp.status, len(data), ErrorClass.OK
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # every failure becomes a sample, never kills the agent
            return 0, 0, classify_exception(exc)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def make_engine(
    name: str,
    templates: Sequence[RequestTemplate],
    *,
    max_connections: int,
    timeout_s: float,
    connect_timeout_s: float,
) -> Engine:
    """Build the named engine over `templates` (indexes passed to request() refer to them)."""
    if name == "aiohttp":
        return AiohttpEngine(
            templates, max_connections=max_connections, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s
        )
    if name == "fast":
        from horde.agents.fast_http import FastEngine  # the lean engine; imported only when chosen

        return FastEngine(
            templates, max_connections=max_connections, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s
        )
    raise ValueError(f"unknown engine {name!r} (expected 'aiohttp' or 'fast')")
