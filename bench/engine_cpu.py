"""CPU time per request of HTTP clients against nginx: wrk, a minimal floor, the engines.

    python bench/engine_cpu.py [--requests 100000] [--connections 64] [--only agent,agent-null]

nginx (bench/nginx.py) runs one worker pinned to CPU 0 and serves a small static file;
each client runs in its own process pinned to CPU 1 with `connections` keep-alive
connections and is charged its process user and sys CPU time over exactly the measured
phase (wrk: its children rusage over a `-d5s` run). The clients: wrk; the floor
(bench/floor.py: an asyncio Protocol per connection on uvloop, pre-built requests,
httptools parsing, the next request written from on_message_complete); horde's lean and
aiohttp engines; horde's agent over the lean engine, and over a null engine (no network:
the agent's own Python per request, the steadier figure on a loaded machine); a bare
aiohttp.ClientSession. Prints a table; asserts nothing.
Needs /usr/sbin/nginx, wrk and taskset.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `agents` importable
    sys.path.insert(0, str(ROOT))

from bench.nginx import NGINX_BIN, Nginx  # noqa: E402

BODY = b"x" * 612  # the size of nginx's default index.html
BODY_PATH = "/static/index.html"


# --------------------------------------------------------------------------- clients
# Each runs inside its own pinned process (`--client NAME`) and prints
# "<requests> <errors> <user_s> <sys_s> <wall_s>".


Measured = tuple[int, float, float, float]  # errors, user_s, sys_s, wall_s


async def _measured_phase(phase, *args) -> Measured:
    """Await phase(*args), charging this process's CPU for exactly that phase.

    phase returns its error count.
    """
    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    errors = await phase(*args)
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    return errors, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, t1 - t0


async def _workers(one_request, requests: int, connections: int) -> int:
    """`connections` workers sharing a fixed request count; returns errors."""
    left = requests
    errors = 0

    async def worker() -> None:
        nonlocal left, errors
        while left > 0:
            left -= 1
            if not await one_request():
                errors += 1

    await asyncio.gather(*(worker() for _ in range(connections)))
    return errors


async def _run_engine(name: str, url: str, requests: int, connections: int) -> Measured:
    from horde.agents.http import make_engine
    from horde.agents.spec import RequestTemplate

    engine = make_engine(
        name,
        [RequestTemplate("static", "GET", url)],
        max_connections=connections,
        timeout_s=10.0,
        connect_timeout_s=5.0,
    )
    await engine.open()
    try:
        if hasattr(engine, "submit"):  # the lean engine, driven by callbacks as the agent drives it
            await _submitted(engine, connections, connections)  # warm: open every connection
            return await _measured_phase(_submitted, engine, requests, connections)
        request = engine.request

        async def one() -> bool:
            status, _, error = await request(0)
            return error == 0 and status == 200

        await _workers(one, connections, connections)  # warm: open every connection
        return await _measured_phase(_workers, one, requests, connections)
    finally:
        await engine.close()


async def _submitted(engine, requests: int, connections: int) -> int:
    """`connections` requests in flight through engine.submit(), the next one sent from
    each completion callback, until `requests` are done; returns errors."""
    finished = asyncio.get_running_loop().create_future()
    left, done_n, errors = requests, 0, 0

    def done(_token: int, status: int, _nbytes: int, error: int) -> None:
        nonlocal left, done_n, errors
        done_n += 1
        if error or status != 200:
            errors += 1
        if left > 0:
            left -= 1
            engine.submit(0, 0, done)
        elif done_n == requests and not finished.done():
            finished.set_result(None)

    for _ in range(min(connections, requests)):
        left -= 1
        engine.submit(0, 0, done)
    await finished
    return errors


async def _run_agent(url: str, requests: int, connections: int, *, null: bool = False) -> Measured:
    """horde's traffic agent itself (no Ray): a closed model of `connections` users with
    no think time, for about as long as `requests` take at 30k/s; records, batches and
    all. Charged over its whole run (connecting included); requests = samples recorded.
    `null`: over _NullEngine instead of the lean engine, for as long as they take at 200k/s."""
    from horde.agents.samples import decode_batch
    from horde.agents.spec import AgentSpec, RequestTemplate, Stage
    from horde.agents.traffic import TrafficAgent

    seconds = max(2.0, requests / (200_000 if null else 30_000))
    spec = AgentSpec(
        index=0,
        count=1,
        incarnation=0,
        model="closed",
        arrivals="constant",
        start_level=float(connections),
        stages=(Stage(seconds, float(connections), "hold"),),
        requests=(RequestTemplate("static", "GET", url, engine="fast", expect=frozenset({200})),),
        weights=(1.0,),
        flush_interval_s=1.0,
        graceful_stop_s=2.0,
        max_in_flight=connections,
        max_connections=connections,
    )
    agent = TrafficAgent(spec, engine_factory=_NullEngine) if null else TrafficAgent(spec)
    batches: list[bytes] = []
    measured = await _measured_phase(_agent_phase, agent, batches)
    global _agent_samples
    _agent_samples = sum(decode_batch(b).requests for b in batches)
    return measured


_agent_samples = 0


class _NullEngine:
    """A lean engine with no network: submit() answers 200 from the loop's next turn.

    What the agent spends per request over it is its own Python (recording, the next
    send, the callbacks), without the kernel's share, which dominates and varies on a
    loaded machine: the steadier figure for a change to the agent's per-request path."""

    name = "fast"
    rx_ns = 0  # no kernel stamp: the agent reads its own clock, as over TLS

    def __init__(self, *_args, **_kwargs) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = 0

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()

    def submit(self, index: int, token: int, done) -> None:
        self._pending += 1
        self._loop.call_soon(self._answer, token, done)  # type: ignore[union-attr]  # after open()

    def _answer(self, token: int, done) -> None:
        self._pending -= 1
        done(token, 200, len(BODY), 0)

    async def request(self, index: int) -> tuple[int, int, int]:
        return 200, len(BODY), 0

    def in_flight(self) -> int:
        return self._pending

    def abort_all(self) -> None:
        pass

    async def close(self) -> None:
        pass


async def _agent_phase(agent, batches: list[bytes]) -> int:
    await agent.run(time.time_ns() + 50_000_000, batches.append)
    return 0


async def _run_session(url: str, requests: int, connections: int) -> Measured:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

        async def one() -> bool:
            async with session.get(url) as resp:
                await resp.read()
                return resp.status == 200

        await _workers(one, connections, connections)
        return await _measured_phase(_workers, one, requests, connections)


async def _run_floor(url: str, requests: int, connections: int) -> Measured:
    from bench.floor import Floor

    floor = await Floor.open(url, connections)
    try:
        await floor.phase(connections)  # warm: one request on every connection
        measured = await _measured_phase(floor.phase, requests)
    finally:
        floor.close()
    if floor.body_bytes != requests * len(BODY):
        raise SystemExit(f"floor: {floor.body_bytes} body bytes for {requests} responses of {len(BODY)}")
    return measured


def client_main(name: str, url: str, requests: int, connections: int) -> None:
    import uvloop

    if name == "session":
        run = _run_session(url, requests, connections)
    elif name == "floor":
        run = _run_floor(url, requests, connections)
    elif name == "agent":
        run = _run_agent(url, requests, connections)
    elif name == "agent-null":
        run = _run_agent(url, requests, connections, null=True)
    else:
        run = _run_engine(name, url, requests, connections)
    errors, user_s, sys_s, wall_s = uvloop.run(run)
    if name in ("agent", "agent-null"):
        requests = _agent_samples
    print(requests, errors, f"{user_s:.6f}", f"{sys_s:.6f}", f"{wall_s:.6f}")


# --------------------------------------------------------------------------- driver

Row = tuple[int, int, float, float, float]  # requests, errors, user_s, sys_s, wall_s


def run_client(name: str, url: str, requests: int, connections: int) -> Row:
    proc = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            sys.executable,
            __file__,
            "--client",
            name,
            "--url",
            url,
            "--requests",
            str(requests),
            "--connections",
            str(connections),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.exit(f"client {name} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    out = proc.stdout.split()
    return int(out[0]), int(out[1]), float(out[2]), float(out[3]), float(out[4])


def run_wrk(url: str, connections: int, duration_s: int) -> Row:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    wall_s = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(m.group(1)) if m else 0
    return (requests, errors, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, wall_s)


CLIENTS = (  # (label, --client name), in table order after wrk
    ("minimal Protocol + httptools (uvloop)", "floor"),
    ("fast engine (uvloop)", "fast"),
    ("horde agent, fast engine (no Ray)", "agent"),
    ("horde agent, null engine (no network)", "agent-null"),
    ("aiohttp engine (uvloop)", "aiohttp"),
    ("aiohttp.ClientSession (uvloop)", "session"),
)


def format_rows(rows: list[tuple[str, Row]]) -> str:
    lines = [
        (
            f"{'client':38} {'requests':>9} {'errors':>7} {'cpu s':>7} {'req/s':>9} "
            f"{'cpu us/req':>11} {'user us/req':>12} {'sys us/req':>11}"
        )
    ]
    for label, (requests, errors, user_s, sys_s, wall_s) in rows:
        us = 1e6 / requests
        lines.append(
            f"{label:38} {requests:9d} {errors:7d} {user_s + sys_s:7.2f} "
            f"{requests / wall_s:9.0f} {us * (user_s + sys_s):11.1f} "
            f"{us * user_s:12.1f} {us * sys_s:11.1f}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100_000, help="per Python client")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--wrk-seconds", type=int, default=5)
    names = ["wrk", *(name for _, name in CLIENTS)]
    ap.add_argument("--only", default=",".join(names), help=f"comma-separated clients to run, from {','.join(names)}")
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        client_main(args.client, args.url, args.requests, args.connections)
        return

    only = set(args.only.split(","))
    if only - set(names):
        sys.exit(f"--only: unknown client(s) {', '.join(sorted(only - set(names)))}; known: {', '.join(names)}")
    for tool in (NGINX_BIN, "wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"needs {tool}")
    with Nginx(cpu=0, files={BODY_PATH.rsplit("/", 1)[1]: BODY}) as target:
        url = target.url_of(BODY_PATH)
        rows = [("wrk -t1", run_wrk(url, args.connections, args.wrk_seconds))] if "wrk" in only else []
        for label, name in CLIENTS:
            if name in only:
                rows.append((label, run_client(name, url, args.requests, args.connections)))

    print(
        f"nginx 1 worker on CPU 0, client on CPU 1, {args.connections} keep-alive connections, "
        f"GET of a {len(BODY)}-byte static file\n"
    )
    print(format_rows(rows))


if __name__ == "__main__":
    main()
