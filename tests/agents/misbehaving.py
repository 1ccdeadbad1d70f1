"""A misbehaving HTTP/1.1 server on 127.0.0.1: one raw asyncio TCP server, one case per path.

    python tests/agents/misbehaving.py [--port 0] [--over-cap-bytes N] [--max-seconds S]

prints ``PORT <n>`` once it listens, then serves until killed or `max_seconds` pass (it
stops by itself). A request for ``/case/<name>`` gets that case's answer; anything else a
404. It runs in its own process so that a test or bench measuring the client's memory
measures the client alone (tests/agents/test_engine_parity.py, bench/endless_body.py).

Cases (what the server does after reading the request head):
  ok                 a valid 200 with a 5-byte body (keep-alive: the control)
  malformed_status   a status line that is not HTTP
  status_000         ``HTTP/1.1 000`` with an empty body
  huge_header        a 1 MiB header line, sent at once
  endless_header     a head trickled one byte every 5 ms, never ending (slowloris)
  endless_chunked    a chunked body that never ends, as fast as the client reads it
  short_length       Content-Length 1000, 10 bytes, then a clean close
  reset_mid          Content-Length 1000, 10 bytes, then a TCP reset
  reset_before       a TCP reset instead of any response
  close_before       a clean close instead of any response
  over_cap           a 200 whose Content-Length body is `over_cap_bytes` long
  no_response        the connection stays open and silent
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import sys

TRICKLE_S = 0.005
CHUNK = b"x" * 65536
_HEAD_END = b"\r\n\r\n"


class Misbehaving:
    def __init__(self, over_cap_bytes: int = 4 * 1024 * 1024) -> None:
        self.over_cap_bytes = over_cap_bytes

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(_HEAD_END)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                path = head.split(b" ", 2)[1].decode("latin-1") if head.count(b" ") >= 2 else ""
                case = path.removeprefix("/case/")
                keep = await getattr(self, "case_" + case, self.case_unknown)(writer)
                if not keep:
                    return
        except (ConnectionError, OSError):
            return
        finally:
            if not writer.is_closing():
                writer.close()

    # Each case returns True when the connection can carry another request.

    async def case_unknown(self, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        return True

    async def case_ok(self, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        return True

    async def case_malformed_status(self, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 2x0 Bad\r\nContent-Length: 0\r\n\r\n")
        await _linger(w)
        return False

    async def case_status_000(self, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n")
        await _linger(w)
        return False

    async def case_huge_header(self, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (1024 * 1024) + b"\r\nContent-Length: 0\r\n\r\n")
        await _linger(w)
        return False

    async def case_endless_header(self, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\n")
        i = 0
        while not w.is_closing():
            for byte in b"X-Slow-%d: v\r\n" % i:
                w.write(bytes((byte,)))
                await w.drain()  # raises once the client has gone: the trickle ends with it
                await asyncio.sleep(TRICKLE_S)
            i += 1
        return False

    async def case_endless_chunked(self, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n"
        while True:
            w.write(piece)
            await w.drain()  # as fast as the client reads, never faster: the server stays small

    async def case_short_length(self, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"y" * 10)
        await w.drain()
        return False

    async def case_reset_mid(self, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"y" * 10)
        await w.drain()
        await asyncio.sleep(0.05)  # let the head and the first bytes arrive before the reset
        _reset(w)
        return False

    async def case_reset_before(self, w: asyncio.StreamWriter) -> bool:
        _reset(w)
        return False

    async def case_close_before(self, w: asyncio.StreamWriter) -> bool:
        return False

    async def case_over_cap(self, w: asyncio.StreamWriter) -> bool:
        n = self.over_cap_bytes
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
        sent = 0
        while sent < n:
            piece = CHUNK[: n - sent]
            w.write(piece)
            sent += len(piece)
            await w.drain()
        return True

    async def case_no_response(self, w: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(3600)
        return False


async def _linger(w: asyncio.StreamWriter) -> None:
    """Give the client a moment to read what was written before the close."""
    await w.drain()
    await asyncio.sleep(0.05)


def _reset(w: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
    sock = w.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()


async def serve(port: int, over_cap_bytes: int, max_seconds: float) -> None:
    server = await asyncio.start_server(
        Misbehaving(over_cap_bytes).handle, "127.0.0.1", port, backlog=4096, limit=1 << 20
    )
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await asyncio.sleep(max_seconds)  # bounded: the server stops by itself


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--over-cap-bytes", type=int, default=4 * 1024 * 1024)
    ap.add_argument("--max-seconds", type=float, default=600.0)
    args = ap.parse_args(argv)
    try:
        asyncio.run(serve(args.port, args.over_cap_bytes, args.max_seconds))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
