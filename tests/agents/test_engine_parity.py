"""Both request engines against one misbehaving server: the same failure, the same class.

The server (tests/agents/misbehaving.py) runs in its own process on 127.0.0.1, so the
memory this process gains is the engines' alone. Every case of `CASES` goes through the
aiohttp engine and the lean engine with the same small caps; the table is the one in
docs/measurement.md ("Error classes").
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from horde.agents.aiohttp_engine import AiohttpEngine
from horde.agents.fast_http import FastEngine
from horde.agents.flows import FlowRunner
from horde.agents.samples import ErrorClass
from horde.agents.spec import FlowStepTemplate, FlowTemplate, Limits, RequestTemplate

SERVER = Path(__file__).with_name("misbehaving.py")
E = ErrorClass

CAP_BYTES = 1024 * 1024  # max_response_bytes for these tests: the server's over_cap body is 4 MiB
HEAD_CAP_BYTES = 64 * 1024  # max_header_bytes: the huge header is 1 MiB
HEADER_TIMEOUT_S = 1.0  # well under the request timeout, so a slow head is told by its own limit
TIMEOUT_S = 4.0
LIMITS = Limits(max_response_bytes=CAP_BYTES, max_header_bytes=HEAD_CAP_BYTES, header_timeout_s=HEADER_TIMEOUT_S)

# case -> (error class both engines must give, status both must give)
CASES: dict[str, tuple[int, int]] = {
    "ok": (E.OK, 200),  # the control: a valid 200 with a 5-byte body
    "malformed_status": (E.PROTOCOL, 0),  # "HTTP/1.1 2x0": not a status line
    "status_000": (E.PROTOCOL, 0),  # a status below 100 is no HTTP status (was a timeout on the lean engine)
    "huge_header": (E.PROTOCOL, 0),  # a 1 MiB header line, over max_header_bytes (aiohttp's line limit says protocol)
    "endless_header": (E.TIMEOUT, 0),  # slowloris: the head never completes within header_timeout
    "endless_chunked": (E.TOO_LARGE, 0),  # the body passes max_response_bytes and the request ends there
    "short_length": (E.RESET, 0),  # closed before Content-Length bytes arrived
    "reset_mid": (E.RESET, 0),  # TCP reset after part of the response
    "reset_before": (E.RESET, 0),  # TCP reset instead of a response (was `connect` on aiohttp)
    "close_before": (E.RESET, 0),  # clean close instead of a response
    "over_cap": (E.TOO_LARGE, 0),  # a Content-Length body of 4 MiB, over max_response_bytes
    "no_response": (E.TIMEOUT, 0),  # connected, never answered: no head within header_timeout either
}


@pytest.fixture(scope="module")
def server_port() -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "--port", "0", "--max-seconds", "120"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.fullmatch(r"PORT (\d+)\n", line)
        assert m, f"misbehaving server said {line!r}"
        yield int(m.group(1))
    finally:
        proc.kill()
        proc.wait(10)


def _engine(
    name: str, port: int, cases: list[str], *, max_connections: int = 0, timeout_s: float = TIMEOUT_S, limits=LIMITS
):
    templates = [RequestTemplate(c, "GET", f"http://127.0.0.1:{port}/case/{c}") for c in cases]
    cls = AiohttpEngine if name == "aiohttp" else FastEngine
    conns = max_connections or len(cases) + 1
    return cls(templates, max_connections=conns, timeout_s=timeout_s, connect_timeout_s=2.0, limits=limits)


async def _run_all(name: str, port: int) -> tuple[dict[str, tuple[int, int, int]], dict[str, float]]:
    """Each case's (status, bytes, class), and how long it took (loop seconds)."""
    cases = list(CASES)
    engine = _engine(name, port, cases)
    loop = asyncio.get_running_loop()
    took: dict[str, float] = {}

    async def one(i: int) -> tuple[int, int, int]:
        t0 = loop.time()
        got = await engine.request(i)
        took[cases[i]] = loop.time() - t0
        return got

    await engine.open()
    try:
        results = await asyncio.gather(*(one(i) for i in range(len(cases))))
    finally:
        await engine.close()
    return dict(zip(cases, results)), took


@pytest.mark.parametrize("engine", ["aiohttp", "fast"])
def test_every_case_gets_the_tabled_class(engine: str, server_port: int) -> None:
    got, took = asyncio.run(_run_all(engine, server_port))
    wrong = {
        case: (E(err).label, status, E(want).label, want_status)
        for case, (status, _, err) in got.items()
        for want, want_status in [CASES[case]]
        if err != want or status != want_status
    }
    assert not wrong, f"{engine}: case -> (got class, status, expected class, status): {wrong}"
    assert got["ok"][1] == 5  # body bytes are counted on success
    # A head trickled byte by byte, or none at all, ends at header_timeout, not at the timeout.
    assert max(took["endless_header"], took["no_response"]) < (HEADER_TIMEOUT_S + TIMEOUT_S) / 2, took


def test_flow_steps_follow_the_same_table(server_port: int) -> None:
    """A flow step reads its response whole (to capture from it): the same caps, the same classes."""

    async def main() -> dict[str, int]:
        runner = FlowRunner(
            max_connections=len(CASES) + 1,
            timeout_s=TIMEOUT_S,
            connect_timeout_s=2.0,
            clock_ns=lambda: 0,
            limits=LIMITS,
        )
        await runner.open()
        got: dict[str, int] = {}

        async def one(case: str) -> None:
            url = f"http://127.0.0.1:{server_port}/case/{case}"
            flow = FlowTemplate(case, 0, (FlowStepTemplate(case, "GET", url, endpoint=1),))

            def record(endpoint: int, intended: int, sent: int, status: int, nbytes: int, err: int) -> None:
                if endpoint == 1:
                    got[case] = err

            await runner.run(flow, 0, record, lambda t: asyncio.sleep(0, True))

        try:
            await asyncio.gather(*(one(c) for c in CASES))
        finally:
            await runner.close()
        return got

    got = asyncio.run(main())
    assert {c: E(e).label for c, e in got.items()} == {c: E(want).label for c, (want, _) in CASES.items()}


def test_refused_is_connect_on_both() -> None:
    """Nobody listening: the one failure that needs no server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: a connect is refused

        async def one(name: str) -> int:
            engine = _engine(name, port, ["ok"])
            await engine.open()
            try:
                return (await engine.request(0))[2]
            finally:
                await engine.close()

        assert {name: E(asyncio.run(one(name))).label for name in ("aiohttp", "fast")} == {
            "aiohttp": "connect",
            "fast": "connect",
        }


@pytest.mark.parametrize("engine", ["aiohttp", "fast"])
def test_endless_bodies_keep_memory_bounded(engine: str, server_port: int) -> None:
    """64 requests in flight on endless chunked bodies, each read up to its 1 MiB cap, for
    several rounds: the process grows by well under what the bodies add up to."""
    rounds, in_flight = 4, 64
    bound_bytes = 48 * 1024 * 1024  # against 4 x 64 x 1 MiB = 256 MiB read
    proc = psutil.Process()

    async def go() -> tuple[list[int], int]:
        # Heads get the whole timeout here: 64 connects at once to a Python server on a busy
        # machine can take longer than the table's short header_timeout.
        limits = Limits(max_response_bytes=CAP_BYTES, header_timeout_s=TIMEOUT_S * 5)
        eng = _engine(
            engine, server_port, ["endless_chunked"], max_connections=in_flight, timeout_s=TIMEOUT_S * 5, limits=limits
        )
        await eng.open()
        peak = [0]

        async def sample() -> None:
            while True:
                peak[0] = max(peak[0], proc.memory_info().rss)
                await asyncio.sleep(0.01)

        sampler = asyncio.create_task(sample())
        classes: list[int] = []
        try:
            for _ in range(rounds):
                got = await asyncio.gather(*(eng.request(0) for _ in range(in_flight)))
                classes += [err for _, _, err in got]
        finally:
            sampler.cancel()
            await eng.close()
        return classes, max(peak[0], proc.memory_info().rss)

    before = proc.memory_info().rss
    classes, peak = asyncio.run(go())
    assert set(classes) == {E.TOO_LARGE}, Counter(E(c).label for c in classes)
    assert peak - before < bound_bytes, f"{engine}: RSS grew by {(peak - before) / 2**20:.0f} MiB"


def test_a_metrics_scrape_is_capped_too(server_port: int) -> None:
    """The coordinator's /metrics scrape reads through the same capped reader."""
    import aiohttp

    from horde.coordinator.run.target_probe import scrape

    async def main():
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{server_port}/case/"
            cases = ("endless_chunked", "over_cap")
            return [await scrape(session, base + c, timeout_s=5.0, max_bytes=CAP_BYTES) for c in cases]

    proc = psutil.Process()
    before = proc.memory_info().rss
    got = asyncio.run(main())
    assert [(s.status, (s.error or "").split(":")[0]) for s in got] == [(None, "ResponseTooLarge")] * 2
    assert proc.memory_info().rss - before < 32 * 1024 * 1024
