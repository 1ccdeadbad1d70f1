"""Kernel receive timestamps for the lean engine's plain-http connections.

A response's end time read from the agent's clock when its callback runs includes however
long the agent waited to be scheduled after the bytes arrived: on a node where the agent
shares its core with Ray's daemons and the coordinator, that wait reaches tens of
milliseconds and lands in the latency tail (issue 14). The kernel stamps each received
packet when it arrives (SO_TIMESTAMPNS; on loopback, while the sender's send runs), and
recvmsg hands the stamp of the last packet it read as ancillary data. uvloop's transports
give no ancillary data, so a plain-http connection of the lean engine reads through
`StampedTransport` instead: a raw non-blocking socket, `loop.add_reader`, and
`sock.recvmsg_into` into the engine's read buffer.

The stamp is CLOCK_REALTIME. It becomes the agent's CLOCK_MONOTONIC by subtracting the
offset realtime - monotonic, which the engine measures when it opens and again at every
sweep tick (at most every 100 ms; `clock_offset()`: a realtime read bracketed by two
monotonic reads, error under a microsecond). No clock is read per response. Between two
refreshes the offset drifts by the realtime clock's slew, at most 500 ppm (adjtime's
limit), so under 50 us per 100 ms tick, typically under 1 us (NTP corrects a few ppm); a
realtime step (someone sets the clock) skews the stamps of at most one tick, and the next
refresh corrects it.

TLS connections keep uvloop's transport (the TLS layer sits between the socket and the
response): their end time is the user-space read, as is every connection's when stamps
are off (`HORDE_RX_STAMPS=0`, or a platform without SO_TIMESTAMPNS).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

# Linux: SO_TIMESTAMPNS (the "old" value, a native 64-bit timespec on 64-bit platforms);
# CPython does not export it. The control message it produces has the same type number.
SO_TIMESTAMPNS = int(getattr(socket, "SO_TIMESTAMPNS", 35))
_TIMESPEC = struct.Struct("@ll")
_ANC_SIZE = socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0
READ_SIZE = 256 * 1024  # one read at most (uvloop reads up to 256 KiB too)
_unpack = _TIMESPEC.unpack_from


_P = TypeVar("_P", bound=asyncio.Protocol)


def clock_offset() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC now, ns (the realtime read bracketed by two monotonic ones)."""
    before = time.monotonic_ns()
    real = time.time_ns()
    after = time.monotonic_ns()
    return real - (before + after) // 2


def available() -> bool:
    """Kernel receive stamps can be used here, and are not switched off (HORDE_RX_STAMPS=0)."""
    return sys.platform == "linux" and _ANC_SIZE > 0 and os.environ.get("HORDE_RX_STAMPS", "1") != "0"


class StampSink(Protocol):
    """What a transport writes each read's stamp to (the engine): CLOCK_MONOTONIC ns, 0 unknown."""

    rx_ns: int
    rx_offset_ns: int  # CLOCK_REALTIME - CLOCK_MONOTONIC, refreshed by the sink (clock_offset())
    rx_view: memoryview  # the read buffer, shared by the connections of one engine (one thread)


class StampedTransport(asyncio.Transport):
    """The part of asyncio.Transport the lean engine uses, over a raw socket (see the module doc).

    Before each `data_received` the sink's `rx_ns` is the kernel's arrival time of the last
    packet in that piece. `connection_lost` is called once, from a loop callback, after
    `abort()`/`close()`, an EOF or a socket error, as uvloop's transports do.
    """

    __slots__ = ("_sock", "_fd", "_loop", "_protocol", "_sink", "_closed", "_wbuf", "_bufs", "_recv", "_send", "_data")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: asyncio.Protocol, sink: StampSink
    ) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = loop
        self._protocol = protocol
        self._sink = sink
        self._closed = False
        self._wbuf = bytearray()
        self._bufs = [sink.rx_view]
        self._recv = sock.recvmsg_into  # bound once: two lookups fewer per read and write
        self._send = sock.send
        self._data = protocol.data_received
        protocol.connection_made(self)
        loop.add_reader(self._fd, self._read_ready)

    def _read_ready(self) -> None:
        try:
            n, anc, _flags, _addr = self._recv(self._bufs, _ANC_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # reset, and the like
            self._close(exc)
            return
        if not n:
            if not self._protocol.eof_received():
                self._close(None)
            return
        sink = self._sink
        if anc:
            sec, nsec = _unpack(anc[0][2])
            sink.rx_ns = sec * 1_000_000_000 + nsec - sink.rx_offset_ns
        else:
            sink.rx_ns = 0
        # A view of the shared buffer, valid until the next read: the protocol copies what it keeps.
        self._data(sink.rx_view[:n])  # type: ignore[arg-type]  # the lean engine's protocol takes views

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise RuntimeError("write on a closed transport")
        if self._wbuf:
            self._wbuf += data
            return
        try:
            sent = self._send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:  # as uvloop: the failure arrives as connection_lost(exc)
            self._close(exc)
            return
        if sent < len(data):
            self._wbuf += memoryview(data)[sent:]
            self._loop.add_writer(self._fd, self._write_ready)

    def _write_ready(self) -> None:
        try:
            sent = self._sock.send(self._wbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close(exc)
            return
        del self._wbuf[:sent]
        if not self._wbuf:
            self._loop.remove_writer(self._fd)

    def _close(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        if self._wbuf:
            self._loop.remove_writer(self._fd)
            self._wbuf.clear()
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, exc)

    def abort(self) -> None:
        self._close(None)

    def close(self) -> None:
        """Close now (the engine closes only connections with nothing left to send)."""
        self._close(None)

    def is_closing(self) -> bool:
        return self._closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return None if self._closed else self._sock
        if name in ("peername", "sockname"):
            try:
                return self._sock.getpeername() if name == "peername" else self._sock.getsockname()
            except OSError:
                return default
        return default


async def open_stamped(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Callable[[], _P],
    host: str,
    port: int,
    sink: StampSink,
) -> tuple[StampedTransport, _P]:
    """A TCP connection to (host, port) read through StampedTransport (create_connection's shape).

    The connect is a non-blocking connect() and one wait for the socket to turn writable
    (`_connect`): ~20 us of CPU on loopback against ~60 us for `loop.sock_connect` on uvloop
    (bench: a connection per request pays it on every request)."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    error: OSError = OSError(f"no address for {host}:{port}")
    for family, kind, proto, _name, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as uvloop's TCP transports
            await _connect(loop, sock, address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:  # cancelled (connect timeout): leave no socket behind
            sock.close()
            raise
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:  # no stamps on this socket: every read then gives rx_ns 0
            pass
        protocol = protocol_factory()
        return StampedTransport(loop, sock, protocol, sink), protocol
    raise error


async def _connect(loop: asyncio.AbstractEventLoop, sock: socket.socket, address: Any) -> None:
    """Connect the non-blocking `sock`; OSError (ConnectionRefusedError, ...) when it fails."""
    err = sock.connect_ex(address)
    if err in _IN_PROGRESS:
        fd = sock.fileno()
        writable = loop.create_future()
        loop.add_writer(fd, _set_done, writable)
        try:
            await writable
        finally:
            loop.remove_writer(fd)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))  # OSError picks the subclass of the errno


def _set_done(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


# A connect interrupted by a signal goes on in the background, as one in progress (POSIX).
_IN_PROGRESS = (errno.EINPROGRESS, errno.EINTR)
