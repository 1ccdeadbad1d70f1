# Over 500 lines on purpose: this is the measured hot path. Every request of the lean
# engine runs through _Connection and FastEngine, and the per-request path is inlined across
# the two (FastEngine._completed's common case inside _Connection.data_received, the idle
# pool and the sweep read the connection's slots directly); splitting along those lines
# would turn it back into calls and attribute hops per request. What is not per request is
# already outside (agents/wire.py). The benchmark that justifies it and checks every change:
# bench/cpu_per_request.py (figures in bench/README.md, 2026-11-27, steady medians: horde's
# agent 20.6 us/request, wrk 14.1, the asyncio+httptools floor 14.7, plain aiohttp 190.1).
"""The lean HTTP/1.1 keep-alive engine: pre-encoded requests, llhttp responses, a small pool.

Two ways in. ``submit(index, token, done)`` sends template `index` and later calls
``done(token, status, body bytes, ErrorClass)`` from the event loop (never from inside
submit), which is how the traffic agent drives it: the response's parser callback
records the sample and sends the next request, with no future, task or coroutine per
request. ``request(index)`` is the same as a coroutine returning ``(status, body bytes,
ErrorClass)``, the contract of the aiohttp engine (agents/http.py). Neither raises for a
failed request. It serves the plain requests that make up most load (any method, a fixed
body or none, http or https) at a fraction of aiohttp's CPU per request; `supports()`
says which templates qualify.

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
- CONNECT: connection refused/unreachable, DNS failure.
- TLS: the TLS handshake failed (certificate not verified, or refused by the server);
  the context comes from the scenario's `tls` (agents/tls.py, through make_engine).
- TIMEOUT: no connection (pool wait + connect) within `connect_timeout_s`, the response
  head not in within `limits.header_timeout_s` of sending (when that is the shorter), or
  the whole response not in within `timeout_s` of sending (both checked by a periodic
  sweep: it fires at most two ticks late, a tick being min(100 ms, timeout_s / 20)).
- RESET: reset, or closed before the response was complete. A request whose *reused*
  keep-alive connection closed before any response byte is retried once on a fresh
  connection (the server closed an idle connection as we wrote; browsers do the same).
- PROTOCOL: anything llhttp rejects (bad status line, bad chunk size, ...), a status
  below 100 (``000``), an upgrade we never asked for, and a response head over
  `max_header_bytes` (the class aiohttp's header-line limit gives too, so both engines agree).
- TOO_LARGE: a body over `max_response_bytes`.
The table both engines are held to: tests/agents/test_engine_parity.py, docs/measurement.md.
"""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
import struct
from collections import deque
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpResponseParser

from horde.agents.samples import MAX_BYTES, ErrorClass
from horde.agents.spec import DEFAULT_LIMITS, Limits, RequestTemplate
from horde.agents.stamped import READ_SIZE, available, clock_offset, open_stamped
from horde.agents.wire import DEFAULT_HEADERS, encode_request, supports, unsupported_reason  # noqa: F401 (re-exported)

DEFAULT_MAX_RESPONSE_BYTES = DEFAULT_LIMITS.max_response_bytes
DEFAULT_MAX_HEADER_BYTES = DEFAULT_LIMITS.max_header_bytes

# Plain ints in the hot path: IntEnum members compare and hash slower.
_OK = int(ErrorClass.OK)
_CONNECT = int(ErrorClass.CONNECT)
_TIMEOUT = int(ErrorClass.TIMEOUT)
_RESET = int(ErrorClass.RESET)
_PROTOCOL = int(ErrorClass.PROTOCOL)
_TOO_LARGE = int(ErrorClass.TOO_LARGE)
_OTHER = int(ErrorClass.OTHER)
_TLS = int(ErrorClass.TLS)
_EARLY_CLOSE = -1  # internal: the connection closed before any byte of the response
_HEAD_DONE = -2  # internal: the head of a HEAD response is complete (see on_headers_complete)

# A request's completion callback: done(token, status, body bytes, error class).
Done = Callable[[int, int, int, int], None]


# SO_LINGER on, 0 s: close() then discards what the kernel still holds unsent and sends
# RST. Without it a fenced agent's requests queued in the send buffer of a partitioned
# host reach the target when the partition heals (issue 12).
_LINGER_RESET = struct.pack("ii", 1, 0)


def linger_reset(transport: asyncio.BaseTransport | None) -> None:
    """Make the next close of `transport`'s socket abortive (RST, unsent data discarded)."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:  # already closed, or not a TCP socket: nothing queued to discard
        pass


class _Stop(Exception):
    """Raised from a parser callback to make llhttp stop where it is."""


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

    `done` is the completion callback of the request in flight (None when idle); the
    engine calls it once, through `FastEngine._completed` or `FastEngine._failed`.
    """

    __slots__ = (
        "engine",
        "origin",
        "transport",
        "parser",
        "done",
        "token",
        "prepared",
        "sent_tick",
        "status",
        "body_bytes",
        "headers_done",
        "complete",
        "head_data",
        "error",
        "keep_alive",
        "reused",
        "idle",
        "closed",
        "max_body",
        "max_head",
    )

    def __init__(self, engine: FastEngine, origin: _Origin) -> None:
        self.engine = engine
        self.origin = origin
        # Typed as always there: connection_made sets it before any request is written.
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # until connection_made
        self.parser = HttpResponseParser(self)
        self.done: Done | None = None
        self.token = 0
        # Typed as always there: start() sets it before any response can arrive.
        self.prepared: _Prepared = None  # type: ignore[assignment]  # until the first start()
        self.sent_tick = 0  # the engine's sweep tick when the request went out (timeouts)
        self.status = 0
        self.body_bytes = 0
        self.headers_done = False
        self.complete = False  # the response is in; data_received hands it over after the parser returns
        self.head_data: bytes | bytearray | None = None  # the response head so far (size cap, rare EOF check)
        self.error = 0  # set by a parser callback just before it stops the parser
        self.keep_alive = False
        self.reused = False  # has completed a response before: a close-before-response may be retried
        self.idle = False
        self.closed = False
        self.max_body = engine._max_response_bytes
        self.max_head = engine._max_header_bytes

    # -- driving one request

    def start(self, prepared: _Prepared, token: int, done: Done, tick: int) -> bool:
        """Send `prepared`; False when the connection turned out to be closed (nothing sent)."""
        self.done = done
        self.token = token
        self.prepared = prepared
        self.sent_tick = tick
        self.body_bytes = 0
        self.headers_done = False
        self.complete = False
        self.head_data = None
        if not self.closed:
            try:
                self.transport.write(prepared.wire)
                return True
            except (OSError, RuntimeError):  # uvloop refuses writes on a transport it closed
                self.abort()
        return False

    def abort(self) -> None:
        self.keep_alive = False
        if not self.closed:
            self.closed = True
            self.transport.abort()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # create_connection's are stream Transports

    def data_received(self, data: bytes | memoryview) -> None:
        done = self.done
        if done is None:
            # Bytes nobody asked for (e.g. a 408 before an idle close): the connection is
            # out of step, so it cannot carry another request.
            if self.idle:
                self.engine._idle_lost(self)
            self.abort()
            return
        headers_done = self.headers_done
        try:
            self.parser.feed_data(data)
        except HttpParserCallbackError:
            self._stopped()
            return
        except (HttpParserError, HttpParserUpgrade):
            if self.complete:  # garbage after a complete response
                self.keep_alive = False
                self.engine._completed(self)
            else:
                self.engine._failed(self, _PROTOCOL)
            return
        if self.complete:
            # FastEngine._completed, inline: this is the path of every response.
            self.done = None
            if self.keep_alive and not self.prepared.close:
                self.reused = True
                if self.engine._waiters:
                    self.engine._release(self)
                else:
                    self.idle = True
                    self.origin.idle.append(self)
            else:
                self.engine._discard(self)
            done(self.token, self.status, self.body_bytes, _OK)
        elif not headers_done:
            # The head (or part of it) came in this piece: keep it, for the size cap and
            # for connection_lost (is a close the end of an EOF-delimited body?). Only a
            # response that does not complete in its first piece gets here.
            # Appended in place: a head trickled a byte at a time must not cost a copy of
            # the head so far per byte.
            head = self.head_data
            if head is None:
                # Only the head is needed, and it is at most max_head bytes: a first piece
                # that is mostly body is not kept whole while the body streams in (1000
                # big responses in flight would hold 1000 read buffers).
                # A copy: a stamped connection's `data` is a view of a buffer the next read reuses.
                self.head_data = head = bytes(data[: self.max_head + 1])
            else:
                if head.__class__ is not bytearray:
                    self.head_data = head = bytearray(head)
                head += data  # a bytearray here: extended in place
            if not self.headers_done and len(head) > self.max_head:
                self.engine._failed(self, _PROTOCOL)

    def _stopped(self) -> None:
        """A parser callback stopped llhttp (see `error`)."""
        error = self.error
        self.error = 0
        if self.complete:  # a second response after ours: ours stands, the connection is spent
            self.keep_alive = False
            self.engine._completed(self)
        elif error == _HEAD_DONE:
            # The parser stopped after the head of a HEAD response (there is no way to
            # tell httptools the body is absent); a fresh parser reads the next one.
            self.parser = HttpResponseParser(self)
            self.engine._completed(self)
        else:
            self.engine._failed(self, error or _PROTOCOL)

    def eof_received(self) -> bool:
        return False  # close; connection_lost decides what the EOF meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.engine.rx_ns = 0  # a completion here (EOF-delimited body) is read on the agent's clock
        self.closed = True
        self.keep_alive = False
        if self.done is not None:
            if self.headers_done:
                if exc is None and self._body_runs_to_eof():
                    self.status = self.parser.get_status_code()
                    if self.status < 100:  # no HTTP status (000): malformed, as on_message_complete says
                        self.engine._failed(self, _PROTOCOL)
                        return
                    self.engine._completed(self)
                else:
                    self.engine._failed(self, _RESET)
            elif self.head_data is None:
                self.engine._failed(self, _EARLY_CLOSE)
            else:
                self.engine._failed(self, _RESET)
        elif self.idle:
            self.engine._idle_lost(self)

    # -- httptools callbacks

    def on_headers_complete(self) -> None:
        if self.complete:
            # A second response after the one we asked for: stop before it overwrites
            # the first one's status and size (the connection is then closed).
            raise _Stop
        self.headers_done = True
        if self.prepared.is_head:
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
        parser = self.parser
        status = parser.get_status_code()
        if status < 200:  # 1xx interim response (100 Continue, 103 Early Hints): the real one follows
            if status < 100:  # no HTTP status at all (000): malformed, not an interim answer to wait past
                self.error = _PROTOCOL
                raise _Stop
            self.headers_done = False
            self.body_bytes = 0
            return
        self.status = status
        self.keep_alive = parser.should_keep_alive()
        self.complete = True

    def _body_runs_to_eof(self) -> bool:
        """Is the response in flight delimited by the close (no length, not chunked)?"""
        if self.parser.should_keep_alive():
            return False  # llhttp says the message is framed and the connection persists
        probe = _FramingProbe()
        probe.parser = HttpResponseParser(probe)
        try:
            probe.parser.feed_data(bytes(self.head_data or b""))
        except HttpParserError:
            pass
        return probe.runs_to_eof


class _UnstampedConnection(_Connection):
    """A connection read through uvloop's transport (TLS, or stamps off): no kernel stamp."""

    __slots__ = ()

    def data_received(self, data: bytes | memoryview) -> None:
        self.engine.rx_ns = 0
        _Connection.data_received(self, data)


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
        if self.parser.get_status_code() >= 200:  # type: ignore[union-attr]  # set right after construction
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
        max_response_bytes: int | None = None,
        max_header_bytes: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        limits: Limits = DEFAULT_LIMITS,
        rx_stamps: bool | None = None,
    ) -> None:
        """`limits` caps every response; `max_response_bytes` / `max_header_bytes`, when
        given, override its two sizes. `rx_stamps`: read plain-http responses through
        agents/stamped.py, for kernel receive times (None: where available)."""
        # The end time of the response being called back: CLOCK_MONOTONIC ns of the
        # kernel's arrival of its last packet, set right before each done() call; 0 when
        # unknown (TLS, errors, stamps off): the caller then reads its own clock.
        self.rx_ns = 0
        self.rx_stamps = available() if rx_stamps is None else rx_stamps
        self.rx_view = memoryview(bytearray(READ_SIZE if self.rx_stamps else 0))  # StampedTransport reads here
        self.rx_offset_ns = clock_offset()  # realtime - monotonic, refreshed every sweep tick
        if max_response_bytes is None:
            max_response_bytes = limits.max_response_bytes
        if max_header_bytes is None:
            max_header_bytes = limits.max_header_bytes
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
        # The head's own limit, checked by the same sweep; None when the whole-response
        # timeout is the shorter (it then bounds the head too).
        head_s = limits.header_timeout_s
        self._head_timeout_ticks = math.ceil(head_s / self._tick_s) if head_s < timeout_s else None
        self._tick = 0
        self._tick0_s = 0.0  # loop time of tick 0 (open())
        self._sweeper: asyncio.TimerHandle | None = None
        # Samples record body sizes in 32 bits (agents/samples.py), so a cap above that
        # would need a clamp on every request; it is clamped once here instead.
        self._max_response_bytes = min(max_response_bytes, MAX_BYTES)
        self._max_header_bytes = max_header_bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._aborting = False  # abort_all() was called: late connections are reset too
        self._n_conns = 0  # open or opening connections: the pool's slots in use
        self._conns: set[_Connection] = set()
        self._waiters: deque[tuple[_Origin, asyncio.Future]] = deque()
        self._tasks: set[asyncio.Task] = set()  # slow paths in progress (connect, wait, retry)
        self._task_done: dict[asyncio.Task, Done] = {}  # those still waiting, by their callback
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
        self.rx_offset_ns = clock_offset()
        if self._sweeper is None:
            self._tick0_s = self._loop.time() - self._tick * self._tick_s
            self._sweeper = self._loop.call_later(self._tick_s, self._sweep)

    def _sweep(self) -> None:
        # Ticks follow the loop's clock, not the count of sweeps: a loop saturated by
        # reads (1000 endless bodies) runs the sweep late, and a count would stretch
        # every timeout by as much.
        now_tick = int((self._loop.time() - self._tick0_s) / self._tick_s)  # type: ignore[union-attr]  # after open()
        self.rx_offset_ns = clock_offset()  # kernel stamps (realtime) to monotonic: see agents/stamped.py
        self._tick = tick = max(self._tick + 1, now_tick)
        limit = self._timeout_ticks
        head_limit = self._head_timeout_ticks
        if head_limit is None:
            expired = [c for c in self._conns if c.done is not None and tick - c.sent_tick > limit]
        else:  # a response whose head is still out times out sooner (slowloris)
            expired = [
                c
                for c in self._conns
                if c.done is not None
                and (tick - c.sent_tick > limit or (not c.headers_done and tick - c.sent_tick > head_limit))
            ]
        for conn in expired:
            if conn.done is not None:  # an earlier expiry's callback may have sent on it anew
                self._failed(conn, _TIMEOUT)
        self._sweeper = self._loop.call_later(self._tick_s, self._sweep)  # type: ignore[union-attr]  # after open()

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
                conn.transport.close()
            origin.idle.clear()
        for conn in list(self._conns):
            conn.abort()  # in-flight requests end as RESET
        self._conns.clear()
        self._n_conns = 0
        await asyncio.sleep(0)  # let the transports deliver connection_lost

    def abort_all(self) -> None:
        """Fencing: reset every connection now (linger_reset, then abort) so that nothing
        already written reaches the target later, and open no more; close() still follows."""
        self._closed = True
        self._aborting = True  # a connect that completes from here is reset too (_connect)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for origin in self._origins.values():
            for conn in origin.idle:
                conn.idle = False
            origin.idle.clear()
        for conn in list(self._conns):
            if not conn.closed:
                linger_reset(conn.transport)
            conn.abort()  # in-flight requests end as RESET (not recorded after a fence)
        self._conns.clear()
        self._n_conns = 0
        while self._waiters:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(_OTHER)

    def in_flight(self) -> int:
        """Requests submitted and not yet called back (sent, connecting or waiting for a slot)."""
        return sum(1 for c in self._conns if c.done is not None) + len(self._task_done)

    # -- the hot path

    def submit(self, index: int, token: int, done: Done) -> None:
        """Send template `index`; later call ``done(token, status, body bytes, error class)``.

        `done` is called exactly once, from an event-loop callback, never from inside
        submit() (so a caller may submit again from `done` without recursing). A caller
        that keeps one `done` for many requests tells them apart by `token`.
        """
        prepared = self._prepared[index]
        if prepared is None or self._closed:
            self._defer(done, token, _OTHER)
            return
        idle = prepared.origin.idle
        if idle:
            conn = idle.pop()
            conn.idle = False
            # _Connection.start, inline: this is the path of every request.
            conn.done = done
            conn.token = token
            conn.prepared = prepared
            conn.sent_tick = self._tick
            conn.body_bytes = 0
            conn.headers_done = False
            conn.complete = False
            conn.head_data = None
            if not conn.closed:
                try:
                    conn.transport.write(prepared.wire)
                    return
                except (OSError, RuntimeError):  # uvloop refuses writes on a transport it closed
                    conn.abort()
            # Closed while idle, found only now: retried on a fresh connection (_failed).
            if not self._closed:
                self._failed(conn, _EARLY_CLOSE)
                return
            conn.done = None
            self._discard(conn)
            self._defer(done, token, _OTHER)
            return
        self._spawn(self._acquire_and_start(prepared, token, done))

    async def request(self, index: int) -> tuple[int, int, int]:
        """submit() as a coroutine: ``(status, body bytes, error class)``. Cancelling it
        closes the connection the request was on."""
        fut = asyncio.get_running_loop().create_future()

        def done(_token: int, status: int, nbytes: int, error: int) -> None:
            if not fut.done():
                fut.set_result((status, nbytes, error))

        self.submit(index, 0, done)
        try:
            return await fut
        except asyncio.CancelledError:
            self._abandon(done)
            raise

    def _completed(self, conn: _Connection) -> None:
        """The response on `conn` is in: pool the connection, then call back."""
        done = conn.done
        conn.done = None
        status = conn.status
        nbytes = conn.body_bytes
        if conn.keep_alive and not conn.prepared.close:
            conn.reused = True
            if self._waiters:
                self._release(conn)
            else:  # _release's common case, inline
                conn.idle = True
                conn.origin.idle.append(conn)
        else:
            self._discard(conn)
        done(conn.token, status, nbytes, _OK)  # type: ignore[misc]  # a response in means a request in flight

    def _failed(self, conn: _Connection, code: int) -> None:
        """The request on `conn` failed with `code`: close it, retry or call back."""
        done = conn.done
        if done is None:  # already answered; whatever came after makes the connection unusable
            conn.abort()
            return
        conn.done = None
        self.rx_ns = 0
        if code == _EARLY_CLOSE and conn.reused and not self._closed:
            # The server closed a kept-alive connection as we wrote to it: nothing of
            # ours was answered, so send it once more on a new connection in the same slot.
            self._discard(conn, keep_slot=True)
            self._spawn(self._retry(conn.prepared, conn.token, done))
            return
        self._discard(conn)
        done(conn.token, 0, 0, _RESET if code == _EARLY_CLOSE else code)

    def _defer(self, done: Done, token: int, code: int) -> None:
        loop = self._loop or asyncio.get_running_loop()
        loop.call_soon(self._call_failed, done, token, code)

    def _call_failed(self, done: Done, token: int, code: int) -> None:
        """done() for a request that got no response (no kernel stamp)."""
        self.rx_ns = 0
        done(token, 0, 0, code)

    def _spawn(self, coro) -> None:
        """Run one request's slow path (connect, wait for a slot, retry) as a task."""
        task = self._loop.create_task(coro)  # type: ignore[union-attr]  # requests start after open()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _acquire_and_start(self, prepared: _Prepared, token: int, done: Done) -> None:
        self._task_done[asyncio.current_task()] = done  # type: ignore[index]  # always inside its task
        try:
            got = await self._acquire(prepared.origin)
        finally:
            self._task_done.pop(asyncio.current_task(), None)  # type: ignore[arg-type]  # always inside its task
        if got.__class__ is int:
            self._call_failed(done, token, got)
        elif not got.start(prepared, token, done, self._tick):  # type: ignore[union-attr]  # not an int: a _Connection
            self._failed(got, _EARLY_CLOSE)  # type: ignore[arg-type]  # not an int: a _Connection

    async def _retry(self, prepared: _Prepared, token: int, done: Done) -> None:
        self._task_done[asyncio.current_task()] = done  # type: ignore[index]  # always inside its task
        try:
            got = await self._connect(prepared.origin, self._connect_timeout_s)
        finally:
            self._task_done.pop(asyncio.current_task(), None)  # type: ignore[arg-type]  # always inside its task
        if got.__class__ is int:
            self._call_failed(done, token, got)
        elif not got.start(prepared, token, done, self._tick):  # type: ignore[union-attr]  # not an int: a _Connection
            self._failed(got, _EARLY_CLOSE)  # type: ignore[arg-type]  # a _Connection; fresh: ends as RESET

    def _abandon(self, done: Done) -> None:
        """The requester behind `done` gave up (cancelled): close its connection, stop its wait."""
        for conn in self._conns:
            if conn.done is done:
                conn.done = None
                self._discard(conn)
                return
        for task, task_done in list(self._task_done.items()):
            if task_done is done:
                task.cancel()
                return

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
            conn.transport.close()
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
        if origin.ssl is None and self.rx_stamps:
            opening = open_stamped(loop, lambda: _Connection(self, origin), origin.host, origin.port, self)
        else:
            opening = loop.create_connection(  # type: ignore[assignment]  # the same (transport, protocol) shape
                lambda: _UnstampedConnection(self, origin),
                origin.host,
                origin.port,
                ssl=origin.ssl,
                server_hostname=origin.server_hostname,
            )
        attempt = loop.create_task(opening)
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            attempt.cancel()

        timer = loop.call_later(timeout_s, expire)
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
            if self._aborting:
                linger_reset(conn.transport)
            conn.abort()
            return _OTHER
        self._conns.add(conn)
        return conn

    # -- ad-hoc requests (Python virtual users, agents/user_client.py)

    def add_request(
        self, method: str, url: str, headers: tuple[tuple[str, str], ...] = (), body: bytes | None = None
    ) -> int | None:
        """Pre-encode one more request, not from the plan's templates; its index for
        submit() / request(), or None when this engine cannot send it (aiohttp then does).
        The caller bounds how many it adds (each one is kept for the agent's life)."""
        t = RequestTemplate(name="", method=method, url=url, headers=headers, body=body)
        if unsupported_reason(t) is not None:
            return None
        close = any(n.lower() == "connection" and v.strip().lower() == "close" for n, v in headers)
        self._prepared.append(_Prepared(encode_request(t), self._origin(url), method == "HEAD", close))
        return len(self._prepared) - 1


def _classify_connect_error(exc: BaseException) -> int:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return _TIMEOUT
    if isinstance(exc, ssl.SSLError):  # verification failed or handshake refused: tls, as aiohttp's (agents/tls.py)
        return _TLS
    if isinstance(exc, OSError):  # refused, unreachable, DNS (gaierror)
        return _CONNECT
    return _OTHER
