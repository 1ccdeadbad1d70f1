"""The lean engine's connection pool, and the opening and abortive closing of a connection.

At most `max_connections` open; idle ones reused last-in first-out per origin (warm; the
cold ones age out on the server); requests that find none wait in FIFO order for a
released connection or a free slot. A plain-http connection is read through
agents/stamped.py (kernel receive times), the others through uvloop's transport (https,
or stamps off).

ConnectionPool is FastEngine's base class (agents/fast_http.py), not an object of its own:
the per-request path reads the pool's idle lists and waiters from the engine and the
connections directly.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections import deque
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

from horde.agents.fast_conn import _CONNECT, _OTHER, _TIMEOUT, _TLS, _Connection, _Origin, _UnstampedConnection
from horde.agents.stamped import open_stamped

if TYPE_CHECKING:
    from horde.agents.fast_http import FastEngine


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


_SLOT = object()  # handed to a waiter: "you may open a new connection"


def _expire_waiter(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(_TIMEOUT)


class ConnectionPool:
    """The pool's state and steps (see the module docstring); FastEngine is built on it."""

    def __init__(self, *, max_connections: int, connect_timeout_s: float, ssl_context: ssl.SSLContext | None) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self._max_connections = max_connections
        self._connect_timeout_s = connect_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._aborting = False  # abort_all() was called: late connections are reset too
        self._n_conns = 0  # open or opening connections: the pool's slots in use
        self._conns: set[_Connection] = set()
        self._waiters: deque[tuple[_Origin, asyncio.Future]] = deque()
        self._origins: dict[tuple[str, str, int], _Origin] = {}
        self._ssl_context = ssl_context  # None: a default (verifying) context when needed

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
        engine = cast("FastEngine", self)  # the pool is only ever FastEngine's base
        if origin.ssl is None and engine.rx_stamps:
            opening = open_stamped(loop, lambda: _Connection(engine, origin), origin.host, origin.port, engine)
        else:
            opening = loop.create_connection(  # type: ignore[assignment]  # the same (transport, protocol) shape
                lambda: _UnstampedConnection(engine, origin),
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


def _classify_connect_error(exc: BaseException) -> int:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return _TIMEOUT
    if isinstance(exc, ssl.SSLError):  # verification failed or handshake refused: tls, as aiohttp's (agents/tls.py)
        return _TLS
    if isinstance(exc, OSError):  # refused, unreachable, DNS (gaierror)
        return _CONNECT
    return _OTHER
