"""The full-featured engine on aiohttp, and what flows and Python users share of it: one
connection pool per agent, a session per virtual user, bodies read within their caps, and
a client exception mapped to its error class.

Cookies: one connection pool, and one cookie jar per virtual user. A closed-model user
(`request(index, user=j)`) has a session of its own over the shared connector, made when
it first sends and dropped by `end_user(j)`; a request without a user (open model: each
arrival is a new visitor) keeps no cookies at all.

Imported only where aiohttp is used (an aiohttp entry, a flow, a Python user, the
coordinator's probes): agents/http.py make_engine.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Sequence

import aiohttp
from yarl import URL

from horde.agents.data import DataExhausted, DataFeeds, fill_data
from horde.agents.http import ResponseTooLarge, Result
from horde.agents.samples import ErrorClass
from horde.agents.spec import DEFAULT_LIMITS, DEFAULT_TLS, Limits, RequestTemplate, TlsSpec
from horde.agents.tls import is_default, is_tls_error, make_ssl_context

__all__ = [
    "READ_BUFSIZE",
    "AiohttpEngine",
    "ResponseTooLarge",
    "classify_exception",
    "count_body",
    "new_connector",
    "read_body",
    "user_session",
]

# What aiohttp buffers per connection before it stops reading (it holds up to twice this,
# plus one socket read): 64 KiB rather than its 256 KiB, so that 1000 bodies in flight
# hold about a third of a GiB at worst, not one GiB (bench/endless_body.py).
READ_BUFSIZE = 64 * 1024

# A connection that was up and then went away: the errnos of a reset (aiohttp wraps the
# OSError of a reset before any response byte in ClientOSError, not a connect error).
_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})


async def count_body(resp: aiohttp.ClientResponse, max_bytes: int) -> int:
    """Read the body to its end, keeping none of it; its size. Over `max_bytes`: ResponseTooLarge.

    At most one read buffer (aiohttp's `read_bufsize`) is held at a time, whatever the
    peer sends.
    """
    n = 0
    content = resp.content
    while chunk := await content.readany():
        n += len(chunk)
        if n > max_bytes:
            raise ResponseTooLarge(max_bytes)
    return n


async def read_body(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The whole body, for a caller that parses it; over `max_bytes`: ResponseTooLarge."""
    length = resp.content_length
    if length is not None and length > max_bytes and resp.method != "HEAD":
        raise ResponseTooLarge(max_bytes)  # said so up front: not worth reading
    parts: list[bytes] = []
    n = 0
    content = resp.content
    while chunk := await content.readany():
        n += len(chunk)
        if n > max_bytes:
            raise ResponseTooLarge(max_bytes)
        parts.append(chunk)
    return b"".join(parts)


def classify_exception(exc: BaseException) -> int:
    """Map a client-side exception to an ErrorClass (shared by engines)."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return ErrorClass.TIMEOUT
    if isinstance(exc, ResponseTooLarge):
        return ErrorClass.TOO_LARGE
    if is_tls_error(exc):  # before CONNECT: aiohttp's certificate errors are connector errors too
        return ErrorClass.TLS
    if isinstance(exc, (aiohttp.ClientConnectorError, ConnectionRefusedError)):
        return ErrorClass.CONNECT
    if isinstance(exc, (aiohttp.ServerDisconnectedError, ConnectionResetError, BrokenPipeError)):
        return ErrorClass.RESET
    if isinstance(exc, OSError) and exc.errno in _RESET_ERRNOS:
        return ErrorClass.RESET
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ErrorClass.RESET
    if isinstance(exc, aiohttp.ClientResponseError):
        return ErrorClass.PROTOCOL
    if isinstance(exc, OSError):
        return ErrorClass.CONNECT
    return ErrorClass.OTHER


def new_connector(max_connections: int, tls: TlsSpec = DEFAULT_TLS) -> aiohttp.TCPConnector:
    """An agent's pool of aiohttp connections, with the scenario's TLS (agents/tls.py). Shared
    by the sessions of all its virtual users (`user_session`); from inside the event loop."""
    ssl = True if is_default(tls) else make_ssl_context(tls)
    return aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, ttl_dns_cache=300, force_close=False, ssl=ssl)


def user_session(
    connector: aiohttp.BaseConnector, *, timeout: aiohttp.ClientTimeout, limits: Limits, cookies: bool = True
) -> aiohttp.ClientSession:
    """One virtual user's session over a shared pool: a cookie jar of its own (`cookies`), or
    none at all. Closing it leaves the pool open (`detach()` it; the pool's owner closes the
    pool). The settings every engine, flow and Python user share: bodies counted as they
    come (not inflated), response heads capped as `limits` says, `User-Agent: horde`."""
    # unsafe: keep cookies of IP-address hosts too (the target is often 127.0.0.1)
    jar = aiohttp.CookieJar(unsafe=True) if cookies else aiohttp.DummyCookieJar()
    return aiohttp.ClientSession(
        connector=connector,
        connector_owner=False,
        cookie_jar=jar,
        timeout=timeout,
        auto_decompress=False,  # measure bytes on the wire, don't spend CPU inflating them
        skip_auto_headers=("User-Agent",),
        headers={"User-Agent": "horde"},
        # aiohttp caps each head line, not the head: 128 lines (its default) of at most
        # max_header_bytes bound what it holds (the lean engine caps the head: both say protocol)
        max_line_size=limits.max_header_bytes,
        max_field_size=limits.max_header_bytes,
        read_bufsize=READ_BUFSIZE,
    )


class AiohttpEngine:
    """Full-featured engine on one connection pool (aiohttp.TCPConnector)."""

    name = "aiohttp"

    def __init__(
        self,
        templates: Sequence[RequestTemplate],
        *,
        max_connections: int,
        timeout_s: float,
        connect_timeout_s: float,
        limits: Limits = DEFAULT_LIMITS,
        tls: TlsSpec = DEFAULT_TLS,
        data: DataFeeds | None = None,
    ) -> None:
        self._templates = tuple(templates)
        self._max_connections = max_connections
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s)
        self._limits = limits  # response caps (see user_session)
        self._max_body = limits.max_response_bytes
        # The whole-request timeout already bounds a head when it is the shorter one: no
        # timer per request then (the default: both 10 s).
        self._head_timeout_s = limits.header_timeout_s if limits.header_timeout_s < timeout_s else None
        self._tls = tls
        self._data = data
        self._connector: aiohttp.TCPConnector | None = None
        self._session: aiohttp.ClientSession | None = None  # requests of no user: no cookies
        self._users: dict[int, aiohttp.ClientSession] = {}  # a cookie jar per virtual user
        # Pre-built per-template call arguments: the URL parsed once (yarl), no per-request dicts.
        self._prepared: list[tuple[str, URL, dict[str, str] | None, bytes | None]] = [
            (t.method, URL(t.url), dict(t.headers) or None, t.body) for t in self._templates
        ]
        # Per template: None, or the keyword arguments that differ from the plain case.
        self._extra: list[dict | None] = [self._extra_of(t) for t in self._templates]
        self._needs_data = [bool(t.data) for t in self._templates]

    def _extra_of(self, t: RequestTemplate) -> dict | None:
        extra: dict = {}
        if t.timeout_s is not None:
            connect_s = min(self._timeout.connect or t.timeout_s, t.timeout_s)
            extra["timeout"] = aiohttp.ClientTimeout(total=t.timeout_s, connect=connect_s)
        if t.follow_redirects:
            extra["allow_redirects"] = True
        return extra or None

    async def open(self) -> None:
        self._connector = new_connector(self._max_connections, self._tls)
        self._session = user_session(self._connector, timeout=self._timeout, limits=self._limits, cookies=False)

    def _user_session(self, user: int) -> aiohttp.ClientSession:
        session = self._users.get(user)
        if session is None:
            assert self._connector is not None, "engine not opened"
            session = self._users[user] = user_session(self._connector, timeout=self._timeout, limits=self._limits)
        return session

    def end_user(self, user: int) -> None:
        """User `user` left: its cookies go (a new user in its slot starts without them)."""
        session = self._users.pop(user, None)
        if session is not None:
            session.detach()  # the pool stays open for the others

    def _filled(self, index: int) -> tuple[str, URL, dict[str, str] | None, bytes | None]:
        """Template `index` with one row of each data file it refers to (DataExhausted: none left)."""
        method, _url, headers, body = self._prepared[index]
        assert self._data is not None, "a template refers to data but the agent has none"
        rows = self._data.rows_for(self._templates[index].data)
        return (
            method,
            URL(fill_data(self._templates[index].url, rows)),
            {k: fill_data(v, rows) for k, v in headers.items()} if headers else None,
            fill_data(body.decode(), rows).encode() if body is not None else None,
        )

    async def request(self, index: int, user: int = -1) -> Result:
        """Send template `index` as virtual user `user` (its cookie jar), or as no one (-1)."""
        if self._needs_data[index]:
            try:
                method, url, headers, body = self._filled(index)
            except DataExhausted:
                return 0, 0, ErrorClass.DATA_EXHAUSTED
        else:
            method, url, headers, body = self._prepared[index]
        session = self._session if user < 0 else self._user_session(user)
        assert session is not None, "engine not opened"
        extra = self._extra[index]
        try:
            if extra is None:
                sending = session.request(method, url, headers=headers, data=body, allow_redirects=False)
            else:
                sending = session.request(
                    method, url, headers=headers, data=body, **{"allow_redirects": False, **extra}
                )
            if self._head_timeout_s is None:
                resp = await sending
            else:  # the head alone: connect + send + head (a task per request, only when asked for)
                resp = await asyncio.wait_for(sending, self._head_timeout_s)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # every failure becomes a sample, never kills the agent
            return 0, 0, classify_exception(exc)
        if resp.status < 100:  # aiohttp passes "000" on; no HTTP status is a malformed response
            resp.close()
            return 0, 0, ErrorClass.PROTOCOL
        try:
            nbytes = await count_body(resp, self._max_body)
        except asyncio.CancelledError:
            resp.close()
            raise
        except BaseException as exc:
            resp.close()  # a body not read to its end: the connection cannot be reused
            return 0, 0, classify_exception(exc)
        resp.release()
        return resp.status, nbytes, ErrorClass.OK

    async def close(self) -> None:
        for session in self._users.values():
            session.detach()
        self._users.clear()
        if self._session is not None:
            self._session.detach()
            self._session = None
        if self._connector is not None:
            await self._connector.close()
            self._connector = None

    def abort_all(self) -> None:
        """Fencing: every connection of the pool, idle or in use, reset at once (linger_reset,
        then abort). aiohttp offers no public way to reach them, so this reads its connector's
        pool; the session is closed as usual by close()."""
        from horde.agents.fast_http import linger_reset  # the lean engine module holds it (no aiohttp there)

        connector = self._connector
        if connector is None:
            return
        protos = list(getattr(connector, "_acquired", ()))
        for idle in getattr(connector, "_conns", {}).values():
            protos.extend(proto for proto, _ in idle)
        for proto in protos:
            transport = getattr(proto, "transport", None)
            if transport is not None:
                linger_reset(transport)
                proto.abort()
