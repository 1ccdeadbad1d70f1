# The measured hot path: every request of the lean engine runs through FastEngine.submit
# and _Connection.data_received (agents/fast_conn.py), and its common end is inlined across
# the two. The pool (agents/fast_pool.py) is FastEngine's base class, so the split adds no
# hop per request. The benchmarks that check every change: bench/cpu_per_request.py and
# bench/engine_cpu.py (figures in bench/README.md).
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
- Responses are parsed by httptools (llhttp), one connection each (agents/fast_conn.py).
  Headers are not collected: the engine only needs the status and the body size, so the
  hot path has one callback per header block, one per body piece and one per message.
- Connections are a pool owned by the engine (agents/fast_pool.py): at most
  `max_connections` open, idle ones reused last-in first-out (warm, and the cold ones age
  out on the server), requests that find none wait in FIFO order for a released
  connection or a free slot.

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
import ssl
from collections.abc import Sequence

from horde.agents.fast_conn import (
    _EARLY_CLOSE,
    _OK,
    _OTHER,
    _RESET,
    _TIMEOUT,
    Done,
    _Connection,
    _Prepared,
)
from horde.agents.fast_pool import ConnectionPool, linger_reset
from horde.agents.samples import MAX_BYTES
from horde.agents.spec import DEFAULT_LIMITS, Limits, RequestTemplate
from horde.agents.stamped import READ_SIZE, available, clock_offset
from horde.agents.wire import DEFAULT_HEADERS, encode_request, supports, unsupported_reason  # noqa: F401 (re-exported)

DEFAULT_MAX_RESPONSE_BYTES = DEFAULT_LIMITS.max_response_bytes
DEFAULT_MAX_HEADER_BYTES = DEFAULT_LIMITS.max_header_bytes


class FastEngine(ConnectionPool):
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
        super().__init__(max_connections=max_connections, connect_timeout_s=connect_timeout_s, ssl_context=ssl_context)
        self._timeout_s = timeout_s
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
        self._tasks: set[asyncio.Task] = set()  # slow paths in progress (connect, wait, retry)
        self._task_done: dict[asyncio.Task, Done] = {}  # those still waiting, by their callback
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
