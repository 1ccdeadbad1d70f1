"""End times from kernel receive stamps (agents/stamped.py), and the agent's priority.

A response that arrives while the agent's loop is busy must still end when it arrived:
the loop is blocked for 150 ms after a response that comes 20 ms after the request, and
the engine's rx_ns must say ~20 ms, where the agent's own clock says 150 ms. Against a
plain aiohttp app and the embedded automaton (any HTTP service, not one server's quirk).
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time

import pytest
import uvloop
from aiohttp import web

from horde.agents.fast_http import FastEngine
from horde.agents.runner import raise_priority
from horde.agents.spec import RequestTemplate

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="kernel receive stamps are Linux's")


async def _slow_app_url(delay_s: float) -> tuple[web.AppRunner, str]:
    async def handle(_request: web.Request) -> web.Response:
        await asyncio.sleep(delay_s)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/"


def _served_in_thread(delay_s: float) -> tuple[str, threading.Event]:
    """The app on its own loop in a thread (the test's loop is blocked on purpose)."""
    ready: list[str] = []
    stop = threading.Event()

    def main() -> None:
        async def serve() -> None:
            runner, url = await _slow_app_url(delay_s)
            ready.append(url)
            while not stop.is_set():
                await asyncio.sleep(0.01)
            await runner.cleanup()

        uvloop.run(serve())

    threading.Thread(target=main, daemon=True).start()
    deadline = time.monotonic() + 10
    while not ready and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ready, "the app did not start"
    return ready[0], stop


async def _one_request(url: str, stamps: bool, block_s: float) -> tuple[int, int, int, int]:
    """(error, sent, rx_ns at done, own clock at done) for one GET, the loop blocked after sending."""
    engine = FastEngine(
        [RequestTemplate("root", "GET", url)], max_connections=1, timeout_s=5, connect_timeout_s=2, rx_stamps=stamps
    )
    await engine.open()
    try:
        for _ in range(50):  # connect first (the measured request reuses it), and let stamping start
            assert await engine.request(0) == (200, 2, 0)
            if engine.rx_ns or not stamps:
                break
        fut = asyncio.get_running_loop().create_future()

        def done(_token: int, _status: int, _nbytes: int, err: int) -> None:
            fut.set_result((err, engine.rx_ns, time.monotonic_ns()))

        sent = time.monotonic_ns()
        engine.submit(0, 0, done)
        time.sleep(block_s)  # the agent's loop busy (or not scheduled) while the response arrives
        err, rx, own = await fut
        return err, sent, rx, own
    finally:
        await engine.close()


@pytest.mark.parametrize("stamps", [True, False])
def test_end_time_is_the_arrival_not_the_late_read(stamps: bool) -> None:
    url, stop = _served_in_thread(0.02)
    try:
        err, sent, rx, own = uvloop.run(_one_request(url, stamps, 0.15))
    finally:
        stop.set()
    assert err == 0
    assert (own - sent) / 1e6 >= 150  # read late, on the agent's clock
    if stamps:
        assert 19 <= (rx - sent) / 1e6 < 100, (rx - sent) / 1e6  # ~20 ms: when it arrived
        assert rx <= own
    else:
        assert rx == 0  # unknown: the agent reads its own clock


def test_failed_request_has_no_stamp() -> None:
    async def go() -> int:
        runner, url = await _slow_app_url(0.0)
        engine = FastEngine(
            [RequestTemplate("root", "GET", url), RequestTemplate("gone", "GET", "http://127.0.0.1:9/")],
            max_connections=2,
            timeout_s=5,
            connect_timeout_s=2,
            rx_stamps=True,
        )
        await engine.open()
        try:
            for _ in range(50):  # the kernel turns stamping on for the first such socket a moment late
                assert (await engine.request(0))[2] == 0
                if engine.rx_ns:
                    break
                await asyncio.sleep(0.02)
            assert engine.rx_ns > 0  # a stamp from the response just read
            fut = asyncio.get_running_loop().create_future()
            engine.submit(1, 0, lambda *_: fut.set_result(engine.rx_ns))  # refused: no response, no stamp
            return await fut
        finally:
            await engine.close()
            await runner.cleanup()

    assert uvloop.run(go()) == 0


def test_stamped_connect_that_never_completes_is_a_timeout() -> None:
    """A listener whose accept queue is full drops the SYN: the raw-socket connect waits
    until connect_timeout_s and the request is a timeout (not a connect error, not a hang)."""
    from horde.agents.fast_conn import _TIMEOUT

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):  # fill the accept queue (never accepted); further SYNs are dropped
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(("127.0.0.1", port))
        fillers.append(f)
    time.sleep(0.05)

    async def go() -> tuple[int, float]:
        engine = FastEngine(
            [RequestTemplate("root", "GET", f"http://127.0.0.1:{port}/")],
            max_connections=1,
            timeout_s=5,
            connect_timeout_s=0.3,
            rx_stamps=True,
        )
        await engine.open()
        try:
            t0 = time.monotonic()
            _status, _nbytes, err = await engine.request(0)
            return err, time.monotonic() - t0
        finally:
            await engine.close()

    try:
        err, took = uvloop.run(go())
    finally:
        for f in fillers:
            f.close()
        listener.close()
    assert err == _TIMEOUT
    assert 0.25 <= took < 3.0, took


def test_stamped_connect_to_a_live_server_after_a_refusal() -> None:
    """A refused address, then a live one: the raw-socket connect reports the first as a
    connect error (errno's own OSError) and connects the second (an aiohttp app)."""
    from horde.agents.fast_conn import _CONNECT
    from horde.agents.stamped import open_stamped

    class _Sink:
        rx_ns = 0
        rx_offset_ns = 0
        rx_view = memoryview(bytearray(1024))

    async def go() -> tuple[str, bool]:
        runner, url = await _slow_app_url(0.0)
        loop = asyncio.get_running_loop()
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))  # bound, never listening: refused
                refused_port = s.getsockname()[1]
                try:
                    await open_stamped(loop, asyncio.Protocol, "127.0.0.1", refused_port, _Sink())
                    refused = "connected"
                except ConnectionRefusedError:
                    refused = "refused"
            port = int(url.rsplit(":", 1)[1].rstrip("/"))
            transport, _ = await open_stamped(loop, asyncio.Protocol, "127.0.0.1", port, _Sink())
            live = transport.get_extra_info("peername")[1] == port
            transport.abort()
            return refused, live
        finally:
            await runner.cleanup()

    assert _CONNECT  # the engine's class for every OSError of a connect
    assert uvloop.run(go()) == ("refused", True)


def test_automaton_responses_are_stamped() -> None:
    """The automaton (a subprocess, a different server stack) through the stamped path."""
    from horde.automaton.launch import start_automaton

    async def go(url: str) -> tuple[int, int]:
        engine = FastEngine(
            [RequestTemplate("health", "GET", url)], max_connections=1, timeout_s=5, connect_timeout_s=2
        )
        await engine.open()
        try:
            for _ in range(50):  # the kernel turns stamping on for the first such socket a moment late
                before = time.monotonic_ns()
                status, _, _err = await engine.request(0)
                if engine.rx_ns:
                    break
                await asyncio.sleep(0.02)
            return status, engine.rx_ns - before
        finally:
            await engine.close()

    with start_automaton() as target:
        status, age = uvloop.run(go(target.url.rstrip("/") + "/health"))
    assert status == 200
    assert 0 < age < 5_000_000_000  # stamped, after the send


def test_priority_is_set_and_reported() -> None:
    got: list[dict] = []
    t = threading.Thread(target=lambda: got.append(raise_priority(nice=5)))  # raising nice needs no privilege
    t.start()
    t.join()
    assert got == [{"nice": 5, "threads": 1}]
    assert raise_priority(nice=0)["threads"] == 0  # 0: not asked, nothing changed
