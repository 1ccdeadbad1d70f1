"""One keep-alive connection of the lean engine: its Protocol and its response parser.

A _Connection (an asyncio Protocol) holds the state of its one in-flight response and the
llhttp (httptools) callbacks that read it; the engine is agents/fast_http.py.

The common end of every response (the connection back to its origin's idle list, then the
caller's done()) is written out inline in data_received, as FastEngine._completed: the
per-request path crosses the two classes without a call it can do without. The
underscored names here are the engine's internals, shared by the three fast_* modules.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpResponseParser

from horde.agents.samples import ErrorClass

if TYPE_CHECKING:
    from horde.agents.fast_http import FastEngine

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
