"""Fencing closes abortively (issue 12): a fenced agent's connections are reset (SO_LINGER
(1, 0), then abort), so that requests still queued in a socket's buffers are discarded
rather than delivered when a partition heals. A normal end keeps the graceful close."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import struct
import threading
import time

import pytest

from horde.agents import fast_http
from horde.agents.http import make_engine
from horde.agents.lease import LeaseLapsed
from horde.agents.runner import AgentRunner, new_event_loop
from horde.agents.spec import AgentSpec, RequestTemplate, Stage

_BODY = b"x" * (256 * 1024)  # several of these fill a peer's receive and our send buffers


class _DeafServer:
    """A raw TCP server on 127.0.0.1 that accepts and never reads until told to drain; then
    it reads each connection to its end and notes how that end came: 'fin' or 'reset'."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small: data stays queued
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.05)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(conn)

    def ends(self, timeout_s: float = 5.0) -> list[str]:
        """Read every accepted connection to its end: 'fin', 'reset' or 'open' (no end in time)."""
        out = []
        deadline = time.monotonic() + timeout_s
        for conn in list(self.accepted):
            end = "open"
            while time.monotonic() < deadline:
                conn.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    if not conn.recv(1 << 20):
                        end = "fin"
                        break
                except ConnectionResetError:
                    end = "reset"
                    break
                except TimeoutError:
                    break
            out.append(end)
        return out

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def deaf():
    server = _DeafServer()
    yield server
    server.close()


@pytest.fixture
def lingers(monkeypatch):
    """Every SO_LINGER read back from a socket just after linger_reset set it (before the close)."""
    seen: list[tuple[int, int]] = []
    real = fast_http.linger_reset

    def spy(transport):
        real(transport)
        sock = transport.get_extra_info("socket")
        seen.append(struct.unpack("ii", sock.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)))

    monkeypatch.setattr(fast_http, "linger_reset", spy)
    return seen


def _templates(port: int, name: str) -> tuple[RequestTemplate, ...]:
    url = f"http://127.0.0.1:{port}/upload"
    return (RequestTemplate("up", "POST", url, body=_BODY, expect=frozenset({200}), engine=name),)


def _run(coro):
    loop = new_event_loop()  # uvloop, as the agent's own loop
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


@pytest.mark.parametrize("engine_name", ["fast", "aiohttp"])
@pytest.mark.parametrize("abort", [True, False], ids=["abort_all", "close"])
def test_abort_all_resets_every_connection_and_close_stays_graceful(deaf, lingers, engine_name, abort):
    n = 4

    async def main() -> None:
        engine = make_engine(
            engine_name, _templates(deaf.port, engine_name), max_connections=n, timeout_s=30, connect_timeout_s=5
        )
        await engine.open()
        tasks = [asyncio.ensure_future(engine.request(0)) for _ in range(n)]
        deadline = time.monotonic() + 5
        while len(deaf.accepted) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # the bodies are written as far as the buffers take them
        if abort:
            engine.abort_all()
        else:
            for t in tasks:  # what a normal end does with requests it gives up on
                t.cancel()
        await engine.close()
        await asyncio.gather(*tasks, return_exceptions=True)

    _run(main())
    assert len(deaf.accepted) == n
    ends = deaf.ends()
    if abort:
        assert ends == ["reset"] * n
        assert lingers and all(linger == (1, 0) for linger in lingers)
    else:
        assert ends == ["fin"] * n  # a normal end: what was written is delivered, then FIN
        assert lingers == []


def _spec(port: int, name: str, **kw) -> AgentSpec:
    base: dict = dict(
        index=0,
        count=1,
        incarnation=0,
        model="open",
        arrivals="constant",
        start_level=20.0,
        stages=(Stage(3.0, 20.0, "hold"),),
        requests=_templates(port, name),
        weights=(1.0,),
        flush_interval_s=0.1,
        graceful_stop_s=0.5,
        max_in_flight=8,
        max_connections=8,
        timeout_s=30.0,
    )
    base.update(kw)
    return AgentSpec(**base)


async def _take_nothing_for(runner: AgentRunner, pause_s: float) -> None:
    """Consume the runner's stream, but once its first batch is out take nothing for
    `pause_s`: nothing is acked meanwhile (agents/runner.py stream), so a lease shorter than
    that lapses. Then drain the stream to its end."""
    paused = False
    async for _ in runner.stream(time.time_ns()):
        if not paused:
            paused = True
            await asyncio.sleep(pause_s)


def _agent_errors(caplog, capfd) -> str:
    logged = "\n".join(r.getMessage() + (str(r.exc_info[1]) if r.exc_info else "") for r in caplog.records)
    return logged + capfd.readouterr().err


@pytest.mark.parametrize("engine_name", ["fast", "aiohttp"])
@pytest.mark.parametrize("model", ["open", "closed"])
def test_a_fenced_agent_resets_its_connections(deaf, lingers, engine_name, model, caplog, capfd):
    """An agent whose batches are not taken (so not acked) fences itself: its connections to
    a target that never answers end in RST, and nothing logs 'Event loop is closed'."""
    kw: dict = {}
    if model == "closed":
        kw = dict(model="closed", start_level=4.0, stages=(Stage(3.0, 4.0, "hold"),), think_time_s=(0.01, 0.01))
    runner = AgentRunner(_spec(deaf.port, engine_name, **kw), lease_term_s=0.5)
    caplog.set_level(logging.DEBUG)

    async def main() -> BaseException | None:
        try:
            await _take_nothing_for(runner, 0.8)
        except LeaseLapsed as exc:
            return exc
        return None

    t0 = time.monotonic()
    raised = asyncio.run(main())
    assert isinstance(raised, LeaseLapsed)
    assert time.monotonic() - t0 < 2.5  # fenced well before the 3 s schedule ends
    assert deaf.accepted
    assert deaf.ends() == ["reset"] * len(deaf.accepted)
    assert lingers and all(linger == (1, 0) for linger in lingers)
    time.sleep(0.2)  # anything the agent's loop left behind fails now, if at all
    gc.collect()
    assert "Event loop is closed" not in _agent_errors(caplog, capfd)


@pytest.mark.parametrize("engine_name", ["fast", "aiohttp"])
def test_an_agent_stopped_mid_flight_logs_no_closed_loop_errors(deaf, engine_name, caplog, capfd):
    """A stop while requests hang: the agent ends after its graceful stop, gracefully, and
    nothing it left on its loop fires after the loop closed."""
    runner = AgentRunner(_spec(deaf.port, engine_name))
    caplog.set_level(logging.DEBUG)

    async def main() -> None:
        async def stop_soon() -> None:
            await asyncio.sleep(0.5)
            runner.stop()

        stopper = asyncio.ensure_future(stop_soon())
        async for _ in runner.stream(time.time_ns()):
            pass
        await stopper

    asyncio.run(main())
    assert deaf.accepted
    time.sleep(0.2)
    gc.collect()
    assert "Event loop is closed" not in _agent_errors(caplog, capfd)


class _FullBacklog:
    """A listener on 127.0.0.1 that never accepts, its accept queue filled: the kernel drops
    further SYNs, so new connections hang in connect (as to a partitioned target)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers = []
        for _ in range(3):  # the queue holds backlog + 1; a spare one in case
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(c)
        time.sleep(0.1)

    def close(self) -> None:
        for c in self.fillers:
            c.close()
        self.sock.close()


@pytest.mark.parametrize("engine_name", ["fast", "aiohttp"])
@pytest.mark.parametrize("end", ["fence", "stop"])
def test_connects_pending_when_the_agent_ends_log_nothing_after_its_loop_closed(engine_name, end, caplog, capfd):
    """Connections still connecting when the agent ends (a partition) must not call back
    into the closed loop ("RuntimeError: Event loop is closed", issue 12)."""
    target = _FullBacklog()
    caplog.set_level(logging.DEBUG)
    runner = AgentRunner(
        _spec(target.port, engine_name, connect_timeout_s=20.0, graceful_stop_s=0.2),
        lease_term_s=0.5 if end == "fence" else None,
    )

    async def main() -> None:
        async def stop_soon() -> None:
            await asyncio.sleep(0.6)
            runner.stop()

        stopper = asyncio.ensure_future(stop_soon()) if end == "stop" else None
        try:
            await _take_nothing_for(runner, 0.8 if end == "fence" else 0.0)
        except LeaseLapsed:
            assert end == "fence"
        if stopper is not None:
            await stopper

    try:
        t0 = time.monotonic()
        asyncio.run(main())
        assert time.monotonic() - t0 < 3.0  # no pending connect held the agent up
        time.sleep(0.3)
        gc.collect()
        errors = _agent_errors(caplog, capfd)
    finally:
        target.close()
    assert "Event loop is closed" not in errors
