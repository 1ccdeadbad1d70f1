"""The client floor: the least a Python HTTP/1.1 client on uvloop can do per request.

One asyncio Protocol per keep-alive connection writes one pre-encoded GET, feeds whatever
arrives to httptools' HttpResponseParser (llhttp), counts body bytes in `on_body`, and
writes the next request straight from `on_message_complete`: no coroutine, future, timer
or object per request. A fixed number of requests is shared by all connections. What a
real engine spends beyond this (timeouts, scheduling, recording) is its own overhead.

    floor = await Floor.open(url, connections)
    errors = await floor.phase(requests)  # then floor.body_bytes
    floor.close()

No HTTP is parsed here beyond what httptools does; the request line is built once.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httptools


def encode_get(url: str) -> tuple[str, int, bytes]:
    """(host, port, the request bytes) of a plain keep-alive GET of `url`."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return host, port, f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()


class _Connection(asyncio.Protocol):
    def __init__(self, floor: Floor) -> None:
        self.floor = floor
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a request written, its response not complete

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()  # type: ignore[union-attr]  # counted in connection_lost

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.busy:
            self.busy = False
            self.floor.errors += 1
            self.floor.retire()

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.floor.body_bytes += len(body)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() != 200:
            self.floor.errors += 1
        self.send_next()

    def send_next(self) -> None:
        floor = self.floor
        if floor.left > 0 and self.transport is not None:
            floor.left -= 1
            self.busy = True
            self.transport.write(floor.request)
        else:
            self.busy = False
            floor.retire()


class Floor:
    def __init__(self, request: bytes) -> None:
        self.request = request
        self.connections: list[_Connection] = []
        self.left = 0  # requests of the current phase not yet written
        self.active = 0  # connections with a request in flight
        self.errors = 0
        self.body_bytes = 0
        self._done: asyncio.Future[None] | None = None

    @classmethod
    async def open(cls, url: str, connections: int) -> Floor:
        host, port, request = encode_get(url)
        floor = cls(request)
        loop = asyncio.get_running_loop()
        for _ in range(connections):
            _, conn = await loop.create_connection(lambda: _Connection(floor), host, port)
            floor.connections.append(conn)
        return floor

    async def phase(self, requests: int) -> int:
        """Send exactly `requests` GETs over the open connections, back to back.

        Returns the phase's errors (non-200 responses, requests lost with a connection);
        `body_bytes` then holds the phase's body bytes.
        """
        self._done = asyncio.get_running_loop().create_future()
        self.left, self.active, self.errors, self.body_bytes = requests, 0, 0, 0
        for conn in self.connections:
            if conn.transport is not None:
                self.active += 1
                conn.send_next()
        if self.active > 0:
            await self._done
        return self.errors

    def retire(self) -> None:
        """A connection found no request left (or was lost): the phase ends with the last."""
        self.active -= 1
        if self.active == 0 and self._done is not None and not self._done.done():
            self._done.set_result(None)

    def close(self) -> None:
        for conn in self.connections:
            if conn.transport is not None:
                conn.transport.close()
