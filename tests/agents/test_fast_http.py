"""The fast engine against a local aiohttp server and a scripted raw-socket server.

All traffic goes to 127.0.0.1. Each test runs its own event loop (stdlib asyncio and
uvloop where the loop matters) and starts its servers inside it.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import ipaddress
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager

import psutil
import pytest
import uvloop
from aiohttp import web

from horde.agents.aiohttp_engine import AiohttpEngine
from horde.agents.fast_http import FastEngine, encode_request, supports, unsupported_reason
from horde.agents.samples import ErrorClass
from horde.agents.spec import RequestTemplate

OK, CONNECT, TIMEOUT, RESET = ErrorClass.OK, ErrorClass.CONNECT, ErrorClass.TIMEOUT, ErrorClass.RESET
PROTOCOL, TOO_LARGE, OTHER = ErrorClass.PROTOCOL, ErrorClass.TOO_LARGE, ErrorClass.OTHER


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable], object]:
    """Run a coroutine to completion on a fresh loop of the parametrised kind."""
    if request.param == "uvloop":
        return uvloop.run  # type: ignore[return-value]
    return asyncio.run  # type: ignore[return-value]


def _engine(base: str, paths: list[str | tuple[str, str] | RequestTemplate], **kwargs) -> FastEngine:
    kwargs = {"max_connections": 4, "timeout_s": 5.0, "connect_timeout_s": 2.0, **kwargs}
    return FastEngine(_templates(base, paths), **kwargs)


def _templates(base: str, paths: list) -> list[RequestTemplate]:
    out = []
    for p in paths:
        if isinstance(p, RequestTemplate):
            out.append(p)
        elif isinstance(p, tuple):
            out.append(RequestTemplate(p[1], p[0], base + p[1]))
        else:
            out.append(RequestTemplate(p, "GET", base + p))
    return out


# --------------------------------------------------------------------------- aiohttp server


class ServerStats:
    def __init__(self) -> None:
        self.peers: list[int] = []  # client port of every request, in arrival order
        self.paths: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def connections(self) -> int:
        return len(set(self.peers))


def _aiohttp_app(stats: ServerStats) -> web.Application:
    async def track(request: web.Request, handler):
        stats.peers.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        stats.paths.append(request.path)
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            return await handler(request)
        finally:
            stats.in_flight -= 1

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read() or b"hello")

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]))

    async def not_modified(request: web.Request) -> web.Response:
        return web.Response(status=304, headers={"ETag": '"x"'})

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(10):
            await resp.write(b"%d" % i * 100)
        await resp.write_eof()
        return resp

    async def large(request: web.Request) -> web.Response:
        return web.Response(body=b"L" * (3 * 1024 * 1024 + 7))

    async def close(request: web.Request) -> web.Response:
        resp = web.Response(body=b"bye")
        resp.force_close()
        return resp

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.05)
        return web.Response(body=b"slow")

    app = web.Application(middlewares=[web.middleware(track)])
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/304", not_modified)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/large", large)
    app.router.add_get("/close", close)
    app.router.add_get("/slow/{name}", slow)
    return app


@asynccontextmanager
async def aiohttp_server(ssl_context: ssl.SSLContext | None = None):
    stats = ServerStats()
    runner = web.AppRunner(_aiohttp_app(stats), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}", stats
    finally:
        await runner.cleanup()


MIX = [
    ("GET", "/echo"),
    RequestTemplate("post", "POST", "", body=b"x" * 1000),
    ("HEAD", "/echo"),
    ("GET", "/status/204"),
    ("GET", "/304"),
    ("GET", "/chunked"),
    ("GET", "/large"),
    ("GET", "/status/404"),
    ("DELETE", "/echo"),
]


def _mix(base: str) -> list[RequestTemplate]:
    with_urls = [
        RequestTemplate(t.name, t.method, base + "/echo", body=t.body) if isinstance(t, RequestTemplate) else t
        for t in MIX
    ]
    return _templates(base, with_urls)


def test_basic_requests(run) -> None:
    async def main():
        async with aiohttp_server() as (base, stats):
            engine = FastEngine(_mix(base), max_connections=2, timeout_s=5, connect_timeout_s=2)
            await engine.open()
            got = [await engine.request(i) for i in range(len(MIX))]
            await engine.close()
            return got, stats

    got, stats = run(main())
    assert got == [
        (200, 5, OK),  # GET echo: "hello"
        (200, 1000, OK),  # POST body echoed
        (200, 0, OK),  # HEAD: Content-Length 5, no body
        (204, 0, OK),
        (304, 0, OK),
        (200, 1000, OK),  # chunked, 10 chunks of 100
        (200, 3 * 1024 * 1024 + 7, OK),
        (404, 0, OK),  # the engine reports statuses; the agent classifies them
        (200, 5, OK),
    ]
    assert stats.connections == 1  # all on one keep-alive connection, HEAD/204/304 included


def test_same_results_as_aiohttp_engine() -> None:
    async def main():
        async with aiohttp_server() as (base, _):
            results = {}
            for cls in (FastEngine, AiohttpEngine):
                engine = cls(_mix(base), max_connections=4, timeout_s=5, connect_timeout_s=2)
                await engine.open()
                results[cls.name] = [await engine.request(i) for i in range(len(MIX))]
                results[cls.name] += await asyncio.gather(*(engine.request(i % len(MIX)) for i in range(40)))
                await engine.close()
            return results

    results = uvloop.run(main())
    assert results["fast"] == results["aiohttp"]


def test_keep_alive_reuse_is_lifo(run) -> None:
    async def main():
        async with aiohttp_server() as (base, stats):
            engine = _engine(base, ["/slow/a", "/echo"], max_connections=8)
            await engine.open()
            await asyncio.gather(*(engine.request(0) for _ in range(8)))  # opens 8 connections
            stats.peers.clear()
            got = [await engine.request(1) for _ in range(50)]
            await engine.close()
            return got, stats

    got, stats = run(main())
    assert got == [(200, 5, OK)] * 50
    # Sequential requests take the most recently released connection every time: one
    # connection serves all 50 (FIFO reuse would rotate through all 8).
    assert stats.connections == 1


def test_max_connections_is_respected(run) -> None:
    async def main():
        async with aiohttp_server() as (base, stats):
            engine = _engine(base, ["/slow/a"], max_connections=3)
            await engine.open()
            got = await asyncio.gather(*(engine.request(0) for _ in range(30)))
            await engine.close()
            return got, stats

    got, stats = run(main())
    assert got == [(200, 4, OK)] * 30
    assert stats.max_in_flight == 3  # the cap is reached, never passed
    assert stats.connections == 3


def test_waiters_are_served_in_order(run) -> None:
    async def main():
        async with aiohttp_server() as (base, stats):
            engine = _engine(base, [f"/slow/{i}" for i in range(8)], max_connections=1)
            await engine.open()
            got = await asyncio.gather(*(engine.request(i) for i in range(8)))
            await engine.close()
            return got, stats

    got, stats = run(main())
    assert got == [(200, 4, OK)] * 8
    assert stats.paths == [f"/slow/{i}" for i in range(8)]


def test_connection_close_from_server(run) -> None:
    async def main():
        async with aiohttp_server() as (base, stats):
            engine = _engine(base, ["/close"], max_connections=2)
            await engine.open()
            got = [await engine.request(0) for _ in range(10)]
            open_conns = engine._n_conns
            await engine.close()
            return got, stats, open_conns

    got, stats, open_conns = run(main())
    assert got == [(200, 3, OK)] * 10
    assert stats.connections == 10  # a new connection after each close, no error sample
    assert open_conns == 0


def _self_signed(tmp_path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) for 127.0.0.1."""
    pytest.importorskip("cryptography", reason="cryptography generates the test certificate")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = tmp_path / "cert.pem"
    key_pem = tmp_path / "key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_pem, key_pem)
    client = ssl.create_default_context(cafile=str(cert_pem))
    return server, client


def test_https(run, tmp_path) -> None:
    server_ctx, client_ctx = _self_signed(tmp_path)

    async def main():
        async with aiohttp_server(server_ctx) as (base, stats):
            trusting = _engine(base, ["/echo", "/chunked"], ssl_context=client_ctx)
            default = _engine(base, ["/echo"])  # verifies against the system CAs
            await trusting.open()
            await default.open()
            got = [await trusting.request(i % 2) for i in range(6)]
            untrusted = await default.request(0)
            await trusting.close()
            await default.close()
            return got, untrusted, stats

    got, untrusted, stats = run(main())
    assert got == [(200, 5, OK), (200, 1000, OK)] * 3
    assert stats.connections == 1
    assert untrusted == (0, 0, ErrorClass.TLS)  # certificate verification failure: tls, not connect


# --------------------------------------------------------------------------- raw server


class RawServer:
    """HTTP/1.1 by hand, so a test can script exactly what goes on the wire.

    Requests are read as a head (plus a Content-Length body); the path picks the
    response script. A script returns False to close the connection afterwards.
    """

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[str] = []
        self.open_connections = 0
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        self.connections += 1
        self.open_connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":")[1]))
                path = head.split(b" ", 2)[1].decode()
                self.requests.append(path)
                keep = await SCRIPTS[path](reader, writer, served)
                served += 1
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:  # the test is over (a cancelled handler task would be logged)
            pass
        finally:
            self.open_connections -= 1
            self._tasks.discard(asyncio.current_task())  # type: ignore[arg-type]
            writer.transport.abort()


async def _send(writer: asyncio.StreamWriter, *parts: bytes, pause_s: float = 0.0) -> None:
    for part in parts:
        writer.write(part)
        await writer.drain()
        if pause_s:
            await asyncio.sleep(pause_s)


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
DRIP = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"


async def s_ok(r, w, served):
    await _send(w, OK_RESPONSE)
    return True


async def s_truncated(r, w, served):
    await _send(w, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part of it")
    return False


async def s_truncated_close(r, w, served):  # framed by length even though it says close
    await _send(w, b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 100\r\n\r\nonly part")
    return False


async def s_until_eof(r, w, served):  # no length, not chunked: the body ends at the close
    await _send(w, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello ", b"world", pause_s=0.01)
    return False


async def s_http10(r, w, served):
    await _send(w, b"HTTP/1.0 200 OK\r\n\r\nold style")
    return False


async def s_garbage(r, w, served):
    await _send(w, b"SMTP ready, not HTTP\r\n\r\n")
    return True


async def s_big_header(r, w, served):
    await _send(w, b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (1024 * 1024) + b"\r\nContent-Length: 2\r\n\r\nok")
    return True


async def s_chunk_ext_trailer(r, w, served):
    await _send(
        w,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
        b"5;name=value\r\nhello\r\n6;flag\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n",
    )
    return True


async def s_chunk_split(r, w, served):  # the zero-length last chunk split across packets
    await _send(
        w,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n",
        b"0",
        b"\r\n",
        b"\r",
        b"\n",
        pause_s=0.02,
    )
    return True


async def s_chunk_bad_size(r, w, served):
    await _send(w, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
    return True


async def s_drip(r, w, served):  # 10 pieces, 40 ms apart: ~0.4 s
    step = len(DRIP) // 10 + 1
    await _send(w, *(DRIP[i : i + step] for i in range(0, len(DRIP), step)), pause_s=0.04)
    return True


async def s_drip_slow(r, w, served):  # ~2 s, past the timeout
    step = len(DRIP) // 20 + 1
    await _send(w, *(DRIP[i : i + step] for i in range(0, len(DRIP), step)), pause_s=0.1)
    return True


async def s_close_early(r, w, served):
    return False


async def s_rst_early(r, w, served):
    _rst(w)
    return False


async def s_rst_mid(r, w, served):
    await _send(w, b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\npartial")
    await asyncio.sleep(0.02)
    _rst(w)
    return False


async def s_huge(r, w, served):  # 2 MiB body; the tests cap responses at 1 MiB
    await _send(w, b"HTTP/1.1 200 OK\r\nContent-Length: 2097152\r\n\r\n", b"z" * 2097152)
    return True


async def s_head_length(r, w, served):  # a HEAD answer announcing a body it doesn't have
    await _send(w, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    return True


async def s_head_chunked(r, w, served):
    await _send(w, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    return True


async def s_continue(r, w, served):
    await _send(w, b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK_RESPONSE)
    return True


async def s_upgrade(r, w, served):
    await _send(w, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
    return True


async def s_two_answers(r, w, served):  # a second, unasked-for response right behind the first
    await _send(w, OK_RESPONSE + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra")
    return True


async def s_once(r, w, served):  # answers a connection's first request, closes on the next
    if served:
        return False
    await _send(w, OK_RESPONSE)
    return True


async def s_answer_then_close(r, w, served):  # keep-alive answer, then an immediate close
    await _send(w, OK_RESPONSE)
    return False


async def s_never(r, w, served):  # never answers; returns when the client closes
    await r.read(1)
    return False


async def s_idle_close(r, w, served):  # keep-alive answer, then the server drops the idle connection
    await _send(w, OK_RESPONSE)
    await asyncio.sleep(0.05)
    return False


async def s_unsolicited(r, w, served):  # answer, then a stray 408 on the idle connection
    await _send(w, OK_RESPONSE)
    await asyncio.sleep(0.05)
    await _send(w, b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
    return True


async def s_large_ok(r, w, served):
    await _send(w, b"HTTP/1.1 200 OK\r\nContent-Length: 262144\r\n\r\n" + b"q" * 262144)
    return True


SCRIPTS = {name[2:].replace("_", "-"): fn for name, fn in globals().items() if name.startswith("s_")}
SCRIPTS = {f"/{k}": v for k, v in SCRIPTS.items()}


# One row per misbehaviour: (path, method, expected (status, bytes, error), engine kwargs).
CASES = [
    ("/truncated", "GET", (0, 0, RESET), {}),  # Content-Length body cut short by a close
    ("/truncated-close", "GET", (0, 0, RESET), {}),  # same, though the response said close
    ("/until-eof", "GET", (200, 11, OK), {}),  # close-delimited body is complete at EOF
    ("/http10", "GET", (200, 9, OK), {}),
    ("/garbage", "GET", (0, 0, PROTOCOL), {}),  # not a status line
    # A 1 MiB header is over max_header_bytes (64 KiB): PROTOCOL, the class aiohttp gives
    # for header lines over its own limit, not TOO_LARGE (which is about bodies).
    ("/big-header", "GET", (0, 0, PROTOCOL), {}),
    ("/chunk-ext-trailer", "GET", (200, 11, OK), {}),  # chunk extensions and trailers are fine
    ("/chunk-split", "GET", (200, 4, OK), {}),  # last chunk in four packets
    ("/chunk-bad-size", "GET", (0, 0, PROTOCOL), {}),
    ("/drip", "GET", (200, 10, OK), {"timeout_s": 2.0}),  # slow but within the timeout
    ("/drip-slow", "GET", (0, 0, TIMEOUT), {"timeout_s": 0.5}),  # the whole response counts
    ("/close-early", "GET", (0, 0, RESET), {}),  # fresh connection: no retry
    ("/rst-early", "GET", (0, 0, RESET), {}),
    ("/rst-mid", "GET", (0, 0, RESET), {}),
    ("/huge", "GET", (0, 0, TOO_LARGE), {"max_response_bytes": 1024 * 1024}),
    ("/head-length", "HEAD", (200, 0, OK), {}),  # no body despite Content-Length
    ("/head-chunked", "HEAD", (200, 0, OK), {}),
    ("/continue", "GET", (200, 2, OK), {}),  # 100 and 103 are skipped
    ("/upgrade", "GET", (0, 0, PROTOCOL), {}),  # we never asked to switch protocols
    ("/two-answers", "GET", (200, 2, OK), {}),  # the first answer counts; the connection goes
]


@pytest.mark.parametrize("path,method,expected,kwargs", CASES, ids=[c[0] for c in CASES])
def test_misbehaving_server(run, path, method, expected, kwargs) -> None:
    async def main():
        async with RawServer() as server:
            engine = _engine(server.base, [(method, path), "/ok"], max_connections=2, **kwargs)
            await engine.open()
            bad = await engine.request(0)
            after = [await engine.request(1) for _ in range(3)]
            conns = engine._n_conns
            await engine.close()
            return bad, after, conns

    bad, after, conns = run(main())
    assert bad == expected
    assert after == [(200, 2, OK)] * 3  # the engine keeps working
    assert conns == 1


def test_head_keeps_the_connection(run) -> None:
    async def main():
        async with RawServer() as server:
            engine = _engine(server.base, [("HEAD", "/head-length"), ("HEAD", "/head-chunked"), "/ok"])
            await engine.open()
            got = [await engine.request(i % 3) for i in range(9)]
            await engine.close()
            return got, server.connections

    got, connections = run(main())
    assert got == [(200, 0, OK), (200, 0, OK), (200, 2, OK)] * 3
    assert connections == 1  # the parser was not left waiting for a HEAD body


def test_refused_port_is_connect_error(run) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused

        async def main():
            engine = _engine(f"http://127.0.0.1:{port}", ["/"])
            await engine.open()
            got = [await engine.request(0) for _ in range(3)]
            conns = engine._n_conns
            await engine.close()
            return got, conns

        got, conns = run(main())
    assert got == [(0, 0, CONNECT)] * 3
    assert conns == 0  # failed attempts give their slot back


def test_tls_handshake_that_never_completes_is_a_connect_timeout(run) -> None:
    async def main():
        async with RawServer() as server:  # speaks no TLS: the handshake hangs
            engine = _engine(f"https://127.0.0.1:{server.port}", ["/"], connect_timeout_s=0.3)
            await engine.open()
            got = await engine.request(0)
            conns = engine._n_conns
            await engine.close()
            return got, conns

    got, conns = run(main())
    assert got == (0, 0, TIMEOUT)
    assert conns == 0


def test_waiting_for_a_connection_times_out(run) -> None:
    async def main():
        async with RawServer() as server:
            # The stuck request's own connect must beat connect_timeout_s even on a busy
            # machine, and its read timeout must come well after the waiter's deadline.
            engine = _engine(server.base, ["/never", "/ok"], max_connections=1, timeout_s=1.5, connect_timeout_s=0.5)
            await engine.open()
            stuck = asyncio.ensure_future(engine.request(0))
            await asyncio.sleep(0.05)
            waited = await engine.request(1)  # the only connection is busy
            stuck_result = await stuck
            after = await engine.request(1)
            await engine.close()
            return waited, stuck_result, after

    waited, stuck_result, after = run(main())
    assert waited == (0, 0, TIMEOUT)
    assert stuck_result == (0, 0, TIMEOUT)
    assert after == (200, 2, OK)


def test_reused_connection_closed_before_answer_is_retried_once(run) -> None:
    async def main():
        async with RawServer() as server:
            engine = _engine(server.base, ["/once"], max_connections=1)
            await engine.open()
            got = [await engine.request(0) for _ in range(4)]
            await engine.close()
            return got, server.connections

    got, connections = run(main())
    assert got == [(200, 2, OK)] * 4  # each second request on a connection is resent once
    assert connections == 4


def test_retry_is_not_repeated(run) -> None:
    async def main():
        async with RawServer() as server:
            engine = _engine(server.base, ["/ok", "/close-early"], max_connections=1)
            await engine.open()
            first = await engine.request(0)
            failed = await engine.request(1)  # reused -> closed -> retried fresh -> closed again
            await engine.close()
            return first, failed, server.requests

    first, failed, requests = run(main())
    assert (first, failed) == ((200, 2, OK), (0, 0, RESET))
    assert requests == ["/ok", "/close-early", "/close-early"]


def test_connection_closed_while_handed_to_a_waiter(run) -> None:
    async def main():
        async with RawServer() as server:
            engine = _engine(server.base, ["/answer-then-close"], max_connections=1, timeout_s=3.0)
            await engine.open()
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            got = await asyncio.gather(*(engine.request(0) for _ in range(5)))
            elapsed_s = loop.time() - t0
            await engine.close()
            return got, elapsed_s

    got, elapsed_s = run(main())
    assert got == [(200, 2, OK)] * 5  # each waiter gets a closed connection and resends on a new one
    assert elapsed_s < 1.5  # not stuck until the read timeout


def test_send_on_a_connection_lost_after_hand_off(run) -> None:
    # White-box: a released connection handed to a waiter can lose its transport before
    # the waiter's task runs; connection_lost then finds neither a request nor a pool entry.
    async def main():
        async with RawServer() as server:
            engine = _engine(server.base, ["/ok"], max_connections=1, timeout_s=1.0)
            await engine.open()
            first = await engine.request(0)
            (origin,) = engine._origins.values()
            conn = origin.idle.pop()
            conn.idle = False  # now as a waiter holds it
            conn.transport.abort()
            await asyncio.sleep(0.05)
            assert conn.closed
            conn.idle = True  # hand it over
            origin.idle.append(conn)
            second = await engine.request(0)
            await engine.close()
            return first, second

    assert run(main()) == ((200, 2, OK), (200, 2, OK))  # resent on a new connection, no timeout


def test_server_closed_idle_connections_are_replaced(run) -> None:
    async def main():
        async with RawServer() as server:
            engine = _engine(server.base, ["/idle-close", "/unsolicited", "/ok"], max_connections=1)
            await engine.open()
            got = []
            for index in (0, 1):
                got.append(await engine.request(index))
                await asyncio.sleep(0.15)  # the server closes it / sends a stray 408 meanwhile
                got.append(await engine.request(2))
            await engine.close()
            return got, server.connections

    got, connections = run(main())
    assert got == [(200, 2, OK)] * 4  # no error sample for an idle connection the server dropped
    assert connections == 3


def test_cancelled_request_closes_its_connection(run) -> None:
    async def main():
        async with RawServer() as server:
            engine = _engine(server.base, ["/never", "/ok"], max_connections=1)
            await engine.open()
            task = asyncio.ensure_future(engine.request(0))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(50):  # the server sees the close (bounded wait)
                if server.open_connections == 0:
                    break
                await asyncio.sleep(0.01)
            closed = server.open_connections == 0
            after = await engine.request(1)
            conns = engine._n_conns
            await engine.close()
            return closed, after, conns

    closed, after, conns = run(main())
    assert closed
    assert after == (200, 2, OK)
    assert conns == 1


def test_cancelled_waiter_gives_its_turn_away(run) -> None:
    async def main():
        async with RawServer() as server:
            engine = _engine(server.base, ["/drip", "/ok"], max_connections=1)
            await engine.open()
            busy = asyncio.ensure_future(engine.request(0))
            await asyncio.sleep(0.02)
            waiter = asyncio.ensure_future(engine.request(1))
            await asyncio.sleep(0.02)
            waiter.cancel()
            got = [await busy, await engine.request(1)]
            await engine.close()
            return got, waiter.cancelled()

    got, cancelled = run(main())
    assert cancelled
    assert got == [(200, 10, OK), (200, 2, OK)]


def test_read_timeout_fires_on_time(run) -> None:
    async def main():
        async with RawServer() as server:
            engine = _engine(server.base, ["/never", "/ok"], timeout_s=0.3)
            await engine.open()
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            got = await engine.request(0)
            elapsed_s = loop.time() - t0
            after = await engine.request(1)
            await engine.close()
            return got, elapsed_s, after

    got, elapsed_s, after = run(main())
    assert got == (0, 0, TIMEOUT)
    assert 0.3 <= elapsed_s < 0.3 + 2 * 0.015 + 0.2  # never early; late by two sweep ticks at most (+ slack)
    assert after == (200, 2, OK)


def test_close_ends_requests_in_flight(run) -> None:
    async def main():
        async with RawServer() as server:
            engine = _engine(server.base, ["/ok", "/never"], max_connections=2)
            await engine.open()
            await engine.request(0)  # a reused connection would otherwise be retried
            in_flight = [asyncio.ensure_future(engine.request(1)) for _ in range(3)]  # one waits for a slot
            await asyncio.sleep(0.05)
            await engine.close()
            return await asyncio.gather(*in_flight)

    assert sorted(run(main())) == [(0, 0, RESET), (0, 0, RESET), (0, 0, OTHER)]


def test_two_origins_share_the_connection_cap(run) -> None:
    async def main():
        async with RawServer() as a, RawServer() as b:
            engine = _engine("", [a.base + "/ok", b.base + "/ok", a.base + "/drip"], max_connections=1)
            await engine.open()
            sequential = [await engine.request(i % 2) for i in range(4)]  # each evicts the other's idle one
            concurrent = await asyncio.gather(*(engine.request(i % 3) for i in range(9)))
            conns = engine._n_conns
            await engine.close()
            return sequential, concurrent, conns, a.connections + b.connections

    sequential, concurrent, conns, connections = run(main())
    assert sequential == [(200, 2, OK)] * 4
    assert concurrent == [(200, 2, OK), (200, 2, OK), (200, 10, OK)] * 3
    assert conns == 1
    assert connections >= 4


def test_rss_stays_bounded_under_bad_responses() -> None:
    async def main():
        async with RawServer() as server:
            engine = _engine(
                server.base,
                ["/garbage", "/huge", "/large-ok", "/truncated", "/ok"],
                max_connections=8,
                max_response_bytes=1024 * 1024,
            )
            await engine.open()

            async def burst(n: int) -> None:
                for start in range(0, n, 50):
                    await asyncio.gather(*(engine.request(i % 5) for i in range(start, start + 50)))

            await burst(200)  # warm up allocators
            gc.collect()
            before = psutil.Process().memory_info().rss
            await burst(2000)
            gc.collect()
            after = psutil.Process().memory_info().rss
            await engine.close()
            return before, after

    before, after = uvloop.run(main())
    assert after - before < 40 * 1024 * 1024, f"RSS grew {(after - before) / 2**20:.1f} MiB"


# --------------------------------------------------------------------------- templates


def test_encode_request_bytes() -> None:
    t = RequestTemplate("p", "POST", "http://example.test:8080/a/b?x=1#frag", headers=(("X-Id", "7"),), body=b"{}")
    assert encode_request(t) == (
        b"POST /a/b?x=1 HTTP/1.1\r\nHost: example.test:8080\r\nUser-Agent: horde\r\nAccept: */*\r\n"
        b"Accept-Encoding: gzip, deflate\r\nX-Id: 7\r\nContent-Length: 2\r\n"
        b"Content-Type: application/octet-stream\r\nConnection: keep-alive\r\n\r\n{}"
    )
    t = RequestTemplate("g", "GET", "https://example.test:443", headers=(("user-agent", "mine"), ("Host", "h")))
    assert encode_request(t) == (
        b"GET / HTTP/1.1\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\nuser-agent: mine\r\nHost: h\r\n"
        b"Connection: keep-alive\r\n\r\n"
    )
    t = RequestTemplate("e", "PUT", "http://[::1]:81/")
    assert b"Host: [::1]:81\r\n" in encode_request(t) and b"Content-Length: 0\r\n" in encode_request(t)


@pytest.mark.parametrize(
    "template,ok",
    [
        (RequestTemplate("a", "GET", "http://h/"), True),
        (RequestTemplate("a", "PATCH", "https://h:8443/x", body=b"1"), True),
        (RequestTemplate("a", "GET", "http://h/", headers=(("Connection", "close"),)), True),
        (RequestTemplate("a", "GET", "ftp://h/"), False),
        (RequestTemplate("a", "GET", "http://user:pw@h/"), False),
        (RequestTemplate("a", "GET", "http://h/caf\u00e9"), False),  # needs percent-encoding
        (RequestTemplate("a", "GET", "http://h/", headers=(("Content-Length", "3"),)), False),
        (RequestTemplate("a", "GET", "http://h/", headers=(("Transfer-Encoding", "chunked"),)), False),
        (RequestTemplate("a", "GET", "http://h/", headers=(("X", "a\r\nInjected: 1"),)), False),
        (RequestTemplate("a", "GET", "http://h/", headers=(("Connection", "Upgrade"),)), False),
        (RequestTemplate("a", "GET /x", "http://h/"), False),
    ],
)
def test_supports(template: RequestTemplate, ok: bool) -> None:
    assert supports(template) is ok
    assert (unsupported_reason(template) is None) is ok


def test_unsupported_templates() -> None:
    ftp = RequestTemplate("f", "GET", "ftp://h/")
    engine = FastEngine([ftp], max_connections=1, timeout_s=1, connect_timeout_s=1)
    assert list(engine.unsupported) == [0]
    assert asyncio.run(engine.request(0)) == (0, 0, OTHER)
    with pytest.raises(ValueError, match="cannot use engine 'fast'"):
        FastEngine(
            [RequestTemplate("f", "GET", "ftp://h/", engine="fast")],
            max_connections=1,
            timeout_s=1,
            connect_timeout_s=1,
        )


# --------------------------------------------------------------------------- submit (callbacks)


def test_submit_calls_back_once_later_with_the_token(run) -> None:
    """done(token, ...) comes from a loop callback, never from inside submit(): a caller
    may submit again from done without recursing, even when the answer is immediate."""

    async def main():
        async with RawServer() as server:
            unsupported = RequestTemplate("bad", "GET", "ftp://127.0.0.1/x")
            engine = _engine(server.base, ["/ok", unsupported])
            await engine.open()
            calls: list[tuple[int, int, int, int]] = []
            finished = asyncio.get_running_loop().create_future()

            def done(token: int, status: int, nbytes: int, error: int) -> None:
                calls.append((token, status, nbytes, error))
                if len(calls) == 2:
                    finished.set_result(None)

            engine.submit(0, 7, done)
            engine.submit(1, 9, done)
            inside = list(calls)  # what was called back before submit() returned
            await asyncio.wait_for(finished, 5)
            await asyncio.sleep(0.05)  # nothing more comes
            await engine.close()
            return inside, calls

    inside, calls = run(main())
    assert inside == []
    assert sorted(calls) == [(7, 200, 2, OK), (9, 0, 0, OTHER)]


def test_submit_from_the_callback_reuses_the_connection(run) -> None:
    """The agent's closed-model loop: each completion submits the next request."""

    async def main():
        async with RawServer() as server:
            engine = _engine(server.base, ["/ok"], max_connections=1)
            await engine.open()
            results: list[tuple[int, int, int]] = []
            finished = asyncio.get_running_loop().create_future()

            def done(token: int, status: int, nbytes: int, error: int) -> None:
                results.append((status, nbytes, error))
                if token < 49:
                    engine.submit(0, token + 1, done)
                else:
                    finished.set_result(None)

            engine.submit(0, 0, done)
            await asyncio.wait_for(finished, 10)
            in_flight = engine.in_flight()
            await engine.close()
            return results, server.connections, in_flight

    results, connections, in_flight = run(main())
    assert results == [(200, 2, OK)] * 50
    assert connections == 1
    assert in_flight == 0


def test_in_flight_counts_sent_and_waiting_requests(run) -> None:
    async def main():
        async with RawServer() as server:
            engine = _engine(server.base, ["/never"], max_connections=1)
            await engine.open()
            got: list[int] = []

            def done(_token: int, _status: int, _nbytes: int, error: int) -> None:
                got.append(error)

            engine.submit(0, 0, done)  # connects, then waits for an answer that never comes
            engine.submit(0, 1, done)  # waits for the one connection
            await asyncio.sleep(0.1)
            during = engine.in_flight()
            await engine.close()
            await asyncio.sleep(0.05)
            return during, got, engine.in_flight()

    during, got, after = run(main())
    assert during == 2
    assert sorted(got) == [RESET, OTHER]  # the sent one is reset by close, the waiting one never went out
    assert after == 0


def test_submit_after_close_answers_other(run) -> None:
    async def main():
        async with RawServer() as server:
            engine = _engine(server.base, ["/ok"])
            await engine.open()
            await engine.close()
            got: list[int] = []
            engine.submit(0, 0, lambda _t, _s, _n, e: got.append(e))
            before = list(got)
            await asyncio.sleep(0.01)
            return before, got

    before, got = run(main())
    assert before == [] and got == [OTHER]
