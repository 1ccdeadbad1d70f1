"""The request-engine seam: send one prepared request, get (status, body bytes, error class).

Everything per request outside the engine (scheduling, timing, recording) belongs to the
agent. An engine owns its connections (at most `max_connections`), never raises for a
failed request (the failure is an error class), and is used from one event loop.

Engines:
- ``aiohttp``: full HTTP via aiohttp.ClientSession (TLS, redirects, cookies, any body),
  agents/aiohttp_engine.py.
- ``fast``: the lean HTTP/1.1 keep-alive engine (agents/fast_http.py), for plain requests.

Each is imported only when a run uses it: an agent of plain requests never imports aiohttp
(~0.09 s of a new agent worker's start, on the path to the first request: docs/start.md).

Client options (docs/scenarios.md): both engines take the scenario's `tls` (agents/tls.py).
The aiohttp engine alone serves an entry with its own `timeout`, `follow_redirects: true`,
`cookies: true` or `${data...}` references (coordinator/plan.py routes them here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from horde.agents.data import DataFeeds
from horde.agents.spec import DEFAULT_LIMITS, DEFAULT_TLS, Limits, RequestTemplate, TlsSpec
from horde.agents.tls import is_default, make_ssl_context

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

    def abort_all(self) -> None:
        """Fencing: drop every connection at once, abortively (linger_reset), so that no
        request already written reaches the target later; close() still follows."""
        ...


class ResponseTooLarge(Exception):
    """A response body over its cap (error class too_large)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"response body over {max_bytes} bytes")
        self.max_bytes = max_bytes


def make_engine(
    name: str,
    templates: Sequence[RequestTemplate],
    *,
    max_connections: int,
    timeout_s: float,
    connect_timeout_s: float,
    limits: Limits = DEFAULT_LIMITS,
    tls: TlsSpec = DEFAULT_TLS,
    data: DataFeeds | None = None,
) -> Engine:
    """Build the named engine over `templates` (indexes passed to request() refer to them)."""
    if name == "aiohttp":
        from horde.agents.aiohttp_engine import AiohttpEngine  # full HTTP; imported only when chosen

        return AiohttpEngine(
            templates,
            max_connections=max_connections,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            limits=limits,
            tls=tls,
            data=data,
        )
    if name == "fast":
        from horde.agents.fast_http import FastEngine  # the lean engine; imported only when chosen

        return FastEngine(
            templates,
            max_connections=max_connections,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            limits=limits,
            ssl_context=None if is_default(tls) else make_ssl_context(tls),
        )
    raise ValueError(f"unknown engine {name!r} (expected 'aiohttp' or 'fast')")
