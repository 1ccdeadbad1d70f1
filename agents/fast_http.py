"""The lean HTTP/1.1 keep-alive engine: pre-encoded requests, llhttp responses, a small pool.

Same contract as the aiohttp engine (agents/http.py): ``request(index)`` sends template
`index` and returns ``(status, body bytes, ErrorClass)``; it never raises for a failed
request. It serves the plain requests that make up most load (any method, a fixed body or
none, http or https) at a fraction of aiohttp's CPU per request; `supports()` says which
templates qualify.

How it stays cheap:
- Each template is encoded to its wire bytes once, at construction. A request is one
  ``transport.write``. (A later ``${var}`` feature would keep the constant pieces around
  each variable and send them with ``transport.writelines((before, value, after))``,
  still without re-encoding the rest.)
- Responses are parsed by httptools (llhttp). Headers are not collected: the engine only
  needs the status and the body size, so the hot path has one callback per header block,
  one per body piece and one per message.
- Connections are a pool owned by the engine: at most `max_connections` open, idle ones
  reused last-in first-out (warm, and the cold ones age out on the server), requests that
  find none wait in FIFO order for a released connection or a free slot.

Error classes (the engine closes a connection after any error):
- CONNECT: connection refused/unreachable, DNS failure, TLS handshake failure.
- TIMEOUT: no connection (pool wait + connect) within `connect_timeout_s`, or the whole
  response not in within `timeout_s` of sending (checked by a periodic sweep: it fires
  at most two ticks late, a tick being min(100 ms, timeout_s / 20)).
- RESET: reset, or closed before the response was complete. A request whose *reused*
  keep-alive connection closed before any response byte is retried once on a fresh
  connection (the server closed an idle connection as we wrote; browsers do the same).
- PROTOCOL: anything llhttp rejects (bad status line, bad chunk size, ...), an upgrade we
  never asked for, and a response head over `max_header_bytes` (the class aiohttp's
  header-line limit gives too, so both engines agree).
- TOO_LARGE: a body over `max_response_bytes`.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from collections import deque
from collections.abc import Sequence
from urllib.parse import urlsplit

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpResponseParser

from agents.samples import ErrorClass
from agents.spec import RequestTemplate

DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_HEADER_BYTES = 64 * 1024

# Sent unless the template sets them; the same as the aiohttp engine sends (less "br",
# which aiohttp adds only when a brotli package is installed).
DEFAULT_HEADERS: tuple[tuple[str, str], ...] = (
    ("User-Agent", "horde"),
    ("Accept", "*/*"),
    ("Accept-Encoding", "gzip, deflate"),
)

# Plain ints in the hot path: IntEnum members compare and hash slower.
_OK = int(ErrorClass.OK)
_CONNECT = int(ErrorClass.CONNECT)
_TIMEOUT = int(ErrorClass.TIMEOUT)
_RESET = int(ErrorClass.RESET)
_PROTOCOL = int(ErrorClass.PROTOCOL)
_TOO_LARGE = int(ErrorClass.TOO_LARGE)
_OTHER = int(ErrorClass.OTHER)
_EARLY_CLOSE = -1  # internal: the connection closed before any byte of the response
_HEAD_DONE = -2  # internal: the head of a HEAD response is complete (see on_headers_complete)

_UNSUPPORTED_RESULT = (0, 0, _OTHER)

# Framing is the engine's job; a template that sets these goes to the aiohttp engine.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "expect", "upgrade"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # aiohttp sends Content-Length: 0 for these
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class _Stop(Exception):
    """Raised from a parser callback to make llhttp stop where it is."""


# --------------------------------------------------------------------------- templates


def unsupported_reason(template: RequestTemplate) -> str | None:
    """Why the fast engine cannot serve `template`, or None when it can."""
    if template.body is not None and not isinstance(template.body, (bytes, bytearray)):
        return "body is not bytes"
    if not template.method or not set(template.method) <= _TOKEN_CHARS:
        return f"method {template.method!r} is not an HTTP token"
    if not template.url.isascii() or any(c in template.url for c in " \r\n\t"):
        return "URL has non-ASCII or whitespace characters (needs aiohttp's URL encoding)"
    try:
        url = urlsplit(template.url)
        url.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError as exc:
        return f"bad URL: {exc}"
    if url.scheme not in ("http", "https"):
        return f"scheme {url.scheme!r} (only http and https)"
    if not url.hostname:
        return "URL has no host"
    if url.username is not None or url.password is not None:
        return "credentials in the URL"
    for name, value in template.headers:
        if not name or not set(name) <= _TOKEN_CHARS:
            return f"header name {name!r} is not an HTTP token"
        if any(c in value for c in "\r\n\0"):
            return f"header {name!r} value has CR, LF or NUL"
        lname = name.lower()
        if lname in _FRAMING_HEADERS:
            return f"header {name!r} (framing is set by the engine)"
        if lname == "connection" and value.strip().lower() not in ("close", "keep-alive"):
            return f"Connection: {value!r}"
    return None


def supports(template: RequestTemplate) -> bool:
    """True when the fast engine can serve `template` (used for ``engine: auto``)."""
    return unsupported_reason(template) is None


def encode_request(template: RequestTemplate) -> bytes:
    """The complete wire bytes of `template`'s request (which must be supported)."""
    url = urlsplit(template.url)
    target = (url.path or "/") + (f"?{url.query}" if url.query else "")
    default_port = 443 if url.scheme == "https" else 80
    host = url.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    if url.port is not None and url.port != default_port:
        host = f"{host}:{url.port}"
    given = {name.lower() for name, _ in template.headers}
    lines = [f"{template.method} {target} HTTP/1.1"]
    if "host" not in given:
        lines.append(f"Host: {host}")
    lines.extend(f"{name}: {value}" for name, value in DEFAULT_HEADERS if name.lower() not in given)
    lines.extend(f"{name}: {value}" for name, value in template.headers)
    body = bytes(template.body) if template.body is not None else b""
    if template.body is not None or template.method in _BODY_METHODS:
        lines.append(f"Content-Length: {len(body)}")
        if template.body is not None and "content-type" not in given:
            lines.append("Content-Type: application/octet-stream")  # as aiohttp does for bytes
    if "connection" not in given:
        lines.append("Connection: keep-alive")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


class _Origin:
    """One (scheme, host, port): where its connections go, and its idle ones."""

    __slots__ = ("host", "port", "ssl", "server_hostname", "idle")

    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        self.host = host
        self.port = port
        self.ssl = ssl_context
        self.server_hostname = host if ssl_context is not None else None
        self.idle: list[_Connection] = []  # LIFO: append on release, pop on acquire


class _Prepared:
    __slots__ = ("wire", "origin", "is_head", "close")

    def __init__(self, wire: bytes, origin: _Origin, is_head: bool, close: bool) -> None:
        self.wire = wire
        self.origin = origin
        self.is_head = is_head
        self.close = close  # the template asked for Connection: close


# --------------------------------------------------------------------------- connection


class _Connection(asyncio.Protocol):
    """One keep-alive connection and the state of its one in-flight response.

    `waiter` is the future of the request in flight (None when idle); it resolves to an
    error-class int once, with `status` and `body_bytes` set when it is OK.
    """

    __slots__ = (
        "engine", "origin", "loop", "transport", "parser", "waiter", "sent_tick",
        "is_head", "status", "body_bytes", "headers_done", "head_data",
        "error", "keep_alive", "reused", "idle", "closed", "max_body", "max_head",
    )

    def __init__(self, engine: FastEngine, origin: _Origin) -> None:
        self.engine = engine
        self.origin = origin
        self.loop = engine._loop
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.waiter: asyncio.Future[int] | None = None
        self.sent_tick = 0  # the engine's sweep tick when the request went out (timeouts)
        self.is_head = False
        self.status = 0
        self.body_bytes = 0
        self.headers_done = False
        self.head_data: bytes | None = None  # the response head so far (size cap, rare EOF check)
        self.error = 0  # set by a parser callback just before it stops the parser
        self.keep_alive = False
        self.reused = False  # has completed a response before: a close-before-response may be retried
        self.idle = False
        self.closed = False
        self.max_body = engine._max_response_bytes
        self.max_head = engine._max_header_bytes

    # -- driving one request

    def send(self, wire: bytes, is_head: bool, tick: int) -> asyncio.Future[int]:
        fut = self.loop.create_future()
        self.waiter = fut
        self.sent_tick = tick
        self.is_head = is_head
        self.body_bytes = 0
        self.headers_done = False
        self.head_data = None
        if not self.closed:
            try:
                self.transport.write(wire)  # type: ignore[union-attr]
                return fut
            except (OSError, RuntimeError):  # uvloop refuses writes on a transport it closed
                self.abort()
        # Lost while being handed from one request to the next: request() resends it.
        self.waiter = None
        fut.set_result(_EARLY_CLOSE)
        return fut

    def _finish(self, code: int) -> None:
        fut = self.waiter
        if fut is None:  # already answered; whatever came after makes the connection unusable
            self.keep_alive = False
            return
        self.waiter = None
        if not fut.done():  # done: the request was cancelled (the requester discards us)
            fut.set_result(code)

    def timed_out(self) -> None:
        self._finish(_TIMEOUT)
        self.abort()

    def abort(self) -> None:
        self.keep_alive = False
        if not self.closed:
            self.closed = True
            self.transport.abort()  # type: ignore[union-attr]

    def drop_request(self) -> None:
        """The requester gave up (cancelled): forget the response and close."""
        self.waiter = None
        self.abort()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            # Bytes nobody asked for (e.g. a 408 before an idle close): the connection is
            # out of step, so it cannot carry another request.
            if self.idle:
                self.engine._idle_lost(self)
            self.abort()
            return
        if not self.headers_done:
            head = self.head_data
            self.head_data = data if head is None else head + data
        try:
            self.parser.feed_data(data)
        except HttpParserCallbackError:
            error = self.error
            self.error = 0
            if error == _HEAD_DONE:
                # The parser stopped after the head of a HEAD response (there is no way to
                # tell httptools the body is absent); a fresh parser reads the next one.
                self.parser = HttpResponseParser(self)
                self._finish(_OK)
            else:
                self._finish(error or _PROTOCOL)
                self.abort()
        except (HttpParserError, HttpParserUpgrade):
            self._finish(_PROTOCOL)
            self.abort()
        else:
            if not self.headers_done and len(self.head_data) > self.max_head:  # type: ignore[arg-type]
                self._finish(_PROTOCOL)
                self.abort()

    def eof_received(self) -> bool:
        return False  # close; connection_lost decides what the EOF meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.keep_alive = False
        if self.waiter is not None:
            if self.headers_done:
                if exc is None and self._body_runs_to_eof():
                    self.status = self.parser.get_status_code()
                    self._finish(_OK)
                else:
                    self._finish(_RESET)
            elif self.head_data is None:
                self._finish(_EARLY_CLOSE)
            else:
                self._finish(_RESET)
        elif self.idle:
            self.engine._idle_lost(self)

    # -- httptools callbacks

    def on_headers_complete(self) -> None:
        if self.waiter is None:
            # A second response after the one we asked for: stop before it overwrites
            # the first one's status and size (the connection is then closed).
            raise _Stop
        self.headers_done = True
        if self.is_head:
            status = self.parser.get_status_code()
            if status >= 200:
                # llhttp would wait for the body that Content-Length announces; a HEAD
                # response has none. httptools cannot pass llhttp's "skip body" return
                # value, so stop the parser here and replace it (data_received).
                self.status = status
                self.keep_alive = self.parser.should_keep_alive()
                self.error = _HEAD_DONE
                raise _Stop

    def on_body(self, body: bytes) -> None:
        n = self.body_bytes + len(body)
        self.body_bytes = n
        if n > self.max_body:
            self.error = _TOO_LARGE
            raise _Stop

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # 1xx interim response (100 Continue, 103 Early Hints): the real one follows
            self.headers_done = False
            self.body_bytes = 0
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        fut = self.waiter  # never None here: on_headers_complete stops unasked-for responses
        self.waiter = None
        if not fut.done():  # type: ignore[union-attr]
            fut.set_result(_OK)  # type: ignore[union-attr]

    def _body_runs_to_eof(self) -> bool:
        """Is the response in flight delimited by the close (no length, not chunked)?"""
        if self.parser.should_keep_alive():
            return False  # llhttp says the message is framed and the connection persists
        probe = _FramingProbe()
        probe.parser = HttpResponseParser(probe)
        try:
            probe.parser.feed_data(self.head_data or b"")
        except HttpParserError:
            pass
        return probe.runs_to_eof


class _FramingProbe:
    """Re-reads a response head to learn its framing; only when a connection closes mid-body."""

    __slots__ = ("parser", "length", "transfer_encoding", "chunked")

    def __init__(self) -> None:
        self.parser: HttpResponseParser | None = None
        self.on_message_begin()

    def on_message_begin(self) -> None:
        self.length = self.transfer_encoding = self.chunked = False

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length":
            self.length = True
        elif name == b"transfer-encoding":
            self.transfer_encoding = True
            self.chunked = value.strip().lower().endswith(b"chunked")

    def on_headers_complete(self) -> None:
        if self.parser.get_status_code() >= 200:  # type: ignore[union-attr]
            raise _Stop

    @property
    def runs_to_eof(self) -> bool:
        if self.transfer_encoding:
            return not self.chunked
        return not self.length


# --------------------------------------------------------------------------- engine


_SLOT = object()  # handed to a waiter: "you may open a new connection"


def _expire_waiter(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(_TIMEOUT)


class FastEngine:
    """Lean HTTP/1.1 keep-alive engine (see the module docstring)."""

    name = "fast"

    def __init__(
        self,
        templates: Sequence[RequestTemplate],
        *,
        max_connections: int,
        timeout_s: float,
        connect_timeout_s: float,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self._max_connections = max_connections
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        # Read timeouts are checked by one periodic sweep rather than a timer per request
        # (a timer costs more than the rest of the request's Python work together). A
        # response times out between timeout_s and timeout_s + 2 ticks after it was sent.
        self._tick_s = min(0.1, max(0.002, timeout_s / 20))
        self._timeout_ticks = math.ceil(timeout_s / self._tick_s)
        self._tick = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self._max_response_bytes = max_response_bytes
        self._max_header_bytes = max_header_bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._n_conns = 0  # open or opening connections: the pool's slots in use
        self._conns: set[_Connection] = set()
        self._waiters: deque[tuple[_Origin, asyncio.Future]] = deque()
        self._origins: dict[tuple[str, str, int], _Origin] = {}
        self._ssl_context = ssl_context  # None: a default (verifying) context when needed
        # One entry per template; None for one this engine cannot serve (it is served by
        # the aiohttp engine, and request() on it answers OTHER).
        self._prepared: list[_Prepared | None] = []
        self.unsupported: dict[int, str] = {}
        for i, t in enumerate(templates):
            reason = unsupported_reason(t)
            if reason is not None:
                if t.engine == "fast":
                    raise ValueError(f"request {t.name!r} cannot use engine 'fast': {reason}")
                self.unsupported[i] = reason
                self._prepared.append(None)
                continue
            close = any(n.lower() == "connection" and v.strip().lower() == "close" for n, v in t.headers)
            self._prepared.append(_Prepared(encode_request(t), self._origin(t.url), t.method == "HEAD", close))

    def _origin(self, url_text: str) -> _Origin:
        url = urlsplit(url_text)
        https = url.scheme == "https"
        key = (url.scheme, url.hostname or "", url.port or (443 if https else 80))
        origin = self._origins.get(key)
        if origin is None:
            if https and self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()  # verifies, like aiohttp's default
            origin = _Origin(key[1], key[2], self._ssl_context if https else None)
            self._origins[key] = origin
        return origin

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._closed = False
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(self._tick_s, self._sweep)

    def _sweep(self) -> None:
        self._tick = tick = self._tick + 1
        limit = self._timeout_ticks
        expired = [c for c in self._conns if c.waiter is not None and tick - c.sent_tick > limit]
        for conn in expired:
            conn.timed_out()
        self._sweeper = self._loop.call_later(self._tick_s, self._sweep)  # type: ignore[union-attr]

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._waiters:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(_OTHER)
        for origin in self._origins.values():
            for conn in origin.idle:
                conn.idle = False
                conn.closed = True
                conn.transport.close()  # type: ignore[union-attr]
            origin.idle.clear()
        for conn in list(self._conns):
            conn.abort()  # in-flight requests end as RESET
        self._conns.clear()
        self._n_conns = 0
        await asyncio.sleep(0)  # let the transports deliver connection_lost

    # -- the hot path

    async def request(self, index: int) -> tuple[int, int, int]:
        prepared = self._prepared[index]
        if prepared is None:
            return _UNSUPPORTED_RESULT
        idle = prepared.origin.idle
        if idle:
            conn = idle.pop()
            conn.idle = False
        else:
            got = await self._acquire(prepared.origin)
            if got.__class__ is int:
                return (0, 0, got)
            conn = got
        fut = conn.send(prepared.wire, prepared.is_head, self._tick)
        try:
            code = await fut
        except asyncio.CancelledError:
            conn.drop_request()
            self._discard(conn)
            raise
        if code == _OK:
            status = conn.status
            nbytes = conn.body_bytes
            if conn.keep_alive and not prepared.close:
                conn.reused = True
                if self._waiters:
                    self._release(conn)
                else:  # _release's common case, inline
                    conn.idle = True
                    idle.append(conn)
            else:
                self._discard(conn)
            return (status, nbytes, _OK)
        return await self._failed(prepared, conn, code)

    async def _failed(self, prepared: _Prepared, conn: _Connection, code: int) -> tuple[int, int, int]:
        if code == _EARLY_CLOSE and conn.reused and not self._closed:
            # The server closed a kept-alive connection as we wrote to it: nothing of
            # ours was answered, so send it once more on a new connection in the same slot.
            self._discard(conn, keep_slot=True)
            got = await self._connect(prepared.origin, self._connect_timeout_s)
            if got.__class__ is int:
                return (0, 0, got)
            conn = got  # type: ignore[assignment]
            fut = conn.send(prepared.wire, prepared.is_head, self._tick)
            try:
                code = await fut
            except asyncio.CancelledError:
                conn.drop_request()
                self._discard(conn)
                raise
            if code == _OK:
                status, nbytes = conn.status, conn.body_bytes
                if conn.keep_alive and not prepared.close:
                    conn.reused = True
                    self._release(conn)
                else:
                    self._discard(conn)
                return (status, nbytes, _OK)
        self._discard(conn)
        return (0, 0, _RESET if code == _EARLY_CLOSE else code)

    # -- the pool

    def _release(self, conn: _Connection) -> None:
        waiters = self._waiters
        while waiters:
            origin, fut = waiters.popleft()
            if fut.done():  # timed out or cancelled
                continue
            if origin is conn.origin:
                fut.set_result(conn)
            else:  # the first in line wants another origin: its slot, a new connection
                self._close_conn(conn)
                fut.set_result(_SLOT)
            return
        conn.idle = True
        conn.origin.idle.append(conn)

    def _discard(self, conn: _Connection, keep_slot: bool = False) -> None:
        """Close a connection that was in use and give its slot to the next waiter."""
        conn.abort()
        if conn in self._conns:
            self._conns.remove(conn)
            if not keep_slot:
                self._free_slot()

    def _close_conn(self, conn: _Connection) -> None:
        """Close a healthy connection whose slot is taken over by the caller."""
        conn.idle = False
        conn.keep_alive = False
        if not conn.closed:
            conn.closed = True
            conn.transport.close()  # type: ignore[union-attr]
        self._conns.discard(conn)

    def _idle_lost(self, conn: _Connection) -> None:
        """The server closed an idle connection; the next request opens a new one."""
        conn.idle = False
        try:
            conn.origin.idle.remove(conn)
        except ValueError:
            pass
        if conn in self._conns:
            self._conns.remove(conn)
            self._free_slot()

    def _free_slot(self) -> None:
        waiters = self._waiters
        while waiters:
            _, fut = waiters.popleft()
            if not fut.done():
                fut.set_result(_SLOT)
                return
        if self._n_conns > 0:  # close() already forgot every slot
            self._n_conns -= 1

    def _give_back(self, got: object) -> None:
        """Return what a waiter was handed but can no longer use (it was cancelled)."""
        if got is _SLOT:
            self._free_slot()
        elif isinstance(got, _Connection):
            self._release(got)

    def _evict_idle(self) -> bool:
        """At the cap with no idle connection to this origin: close an idle one elsewhere."""
        for origin in self._origins.values():
            if origin.idle:
                self._close_conn(origin.idle.pop(0))  # the coldest
                return True
        return False

    async def _acquire(self, origin: _Origin) -> _Connection | int:
        """A connection to `origin` when none is idle: a new one under the cap, or wait."""
        loop = self._loop
        if self._closed or loop is None:
            return _OTHER
        deadline = loop.time() + self._connect_timeout_s
        if self._n_conns < self._max_connections:
            self._n_conns += 1
        elif not self._evict_idle():
            fut = loop.create_future()
            self._waiters.append((origin, fut))
            timer = loop.call_at(deadline, _expire_waiter, fut)
            try:
                got = await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._give_back(fut.result())
                raise
            finally:
                timer.cancel()
            if got is not _SLOT:
                return got  # a released connection, or an error class
        return await self._connect(origin, deadline - loop.time())

    async def _connect(self, origin: _Origin, timeout_s: float) -> _Connection | int:
        """Open a connection in a slot the caller holds; on failure the slot is freed."""
        loop = self._loop
        assert loop is not None
        if self._closed:
            self._free_slot()
            return _OTHER
        if timeout_s <= 0:
            self._free_slot()
            return _TIMEOUT
        attempt = loop.create_task(
            loop.create_connection(
                lambda: _Connection(self, origin),
                origin.host,
                origin.port,
                ssl=origin.ssl,
                server_hostname=origin.server_hostname,
            )
        )
        expired: list[bool] = []
        timer = loop.call_later(timeout_s, lambda: (expired.append(True), attempt.cancel()))
        try:
            _, conn = await attempt
        except asyncio.CancelledError:
            self._free_slot()
            if not expired:  # our caller was cancelled, not the attempt timed out
                if attempt.done() and not attempt.cancelled() and attempt.exception() is None:
                    attempt.result()[0].abort()  # connected just as we were cancelled
                raise
            return _TIMEOUT
        except Exception as exc:  # every failure becomes a sample
            self._free_slot()
            return _classify_connect_error(exc)
        finally:
            timer.cancel()
        if self._closed:
            conn.abort()
            return _OTHER
        self._conns.add(conn)
        return conn


def _classify_connect_error(exc: BaseException) -> int:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return _TIMEOUT
    if isinstance(exc, (OSError, ssl.SSLError)):  # refused, unreachable, DNS (gaierror), TLS handshake
        return _CONNECT
    return _OTHER
