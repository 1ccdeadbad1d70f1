"""CPU time per request of HTTP clients against nginx: wrk, the fast engine, aiohttp.

    python bench/engine_cpu.py [--requests 100000] [--connections 64]

nginx runs one worker pinned to CPU 0 and serves a small static file; each client runs
in its own process pinned to CPU 1 with `connections` keep-alive connections and is
charged its process user+sys CPU time (wrk: its children rusage over a `-d5s` run).
Prints a table; asserts nothing. Needs /usr/sbin/nginx, wrk and taskset.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NGINX = "/usr/sbin/nginx"
BODY = b"x" * 612  # the size of nginx's default index.html

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
        location = /204 {{ return 204; }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nginx did not listen on {port}")


# --------------------------------------------------------------------------- clients
# Each runs inside its own pinned process (`--client NAME`) and prints
# "<requests> <errors> <cpu_s> <wall_s>".


Measured = tuple[int, float, float]  # errors, cpu_s, wall_s


async def _measured(one_request, requests: int, connections: int) -> Measured:
    """Run the fixed request count, charging this process's CPU for exactly that phase."""
    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    errors = await _workers(one_request, requests, connections)
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    return errors, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), t1 - t0


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
    sys.path.insert(0, str(ROOT))
    from agents.http import make_engine
    from agents.spec import RequestTemplate

    engine = make_engine(
        name, [RequestTemplate("static", "GET", url)], max_connections=connections, timeout_s=10.0, connect_timeout_s=5.0
    )
    await engine.open()
    request = engine.request

    async def one() -> bool:
        status, _, error = await request(0)
        return error == 0 and status == 200

    await _workers(one, connections, connections)  # warm: open every connection
    try:
        return await _measured(one, requests, connections)
    finally:
        await engine.close()


async def _run_session(url: str, requests: int, connections: int) -> Measured:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

        async def one() -> bool:
            async with session.get(url) as resp:
                await resp.read()
                return resp.status == 200

        await _workers(one, connections, connections)
        return await _measured(one, requests, connections)


def client_main(name: str, url: str, requests: int, connections: int) -> None:
    import uvloop

    if name == "session":
        run = _run_session(url, requests, connections)
    else:
        run = _run_engine(name, url, requests, connections)
    errors, cpu_s, wall_s = uvloop.run(run)
    print(requests, errors, f"{cpu_s:.6f}", f"{wall_s:.6f}")


# --------------------------------------------------------------------------- driver


def run_client(name: str, url: str, requests: int, connections: int) -> tuple[int, int, float, float]:
    out = subprocess.run(
        ["taskset", "-c", "1", sys.executable, __file__, "--client", name, "--url", url,
         "--requests", str(requests), "--connections", str(connections)],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    return int(out[0]), int(out[1]), float(out[2]), float(out[3])


def run_wrk(url: str, connections: int, duration_s: int) -> tuple[int, int, float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", url],
        check=True, capture_output=True, text=True,
    ).stdout
    wall_s = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(m.group(1)) if m else 0
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return requests, errors, cpu_s, wall_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100_000, help="per Python client")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--wrk-seconds", type=int, default=5)
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        client_main(args.client, args.url, args.requests, args.connections)
        return

    for tool in (NGINX, "wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"needs {tool}")
    with tempfile.TemporaryDirectory(prefix="horde-bench-") as d:
        port = _free_port()
        (Path(d) / "www").mkdir()
        (Path(d) / "www" / "index.html").write_bytes(BODY)
        (Path(d) / "nginx.conf").write_text(NGINX_CONF.format(d=d, port=port))
        nginx = subprocess.Popen(["taskset", "-c", "0", NGINX, "-p", d, "-c", f"{d}/nginx.conf"])
        try:
            _wait_listening(port)
            url = f"http://127.0.0.1:{port}/index.html"
            rows = [("wrk -t1", run_wrk(url, args.connections, args.wrk_seconds))]
            for label, name in (
                ("fast engine (uvloop)", "fast"),
                ("aiohttp engine (uvloop)", "aiohttp"),
                ("aiohttp.ClientSession (uvloop)", "session"),
            ):
                rows.append((label, run_client(name, url, args.requests, args.connections)))
        finally:
            os.kill(nginx.pid, signal.SIGQUIT)  # graceful stop of this nginx only
            try:
                nginx.wait(timeout=5)
            except subprocess.TimeoutExpired:
                nginx.kill()
                nginx.wait()

    print(f"nginx 1 worker on CPU 0, client on CPU 1, {args.connections} keep-alive connections, "
          f"GET of a {len(BODY)}-byte static file\n")
    print(f"{'client':32} {'requests':>9} {'errors':>7} {'cpu s':>7} {'req/s':>9} {'cpu us/req':>11}")
    for label, (requests, errors, cpu_s, wall_s) in rows:
        print(f"{label:32} {requests:9d} {errors:7d} {cpu_s:7.2f} {requests / wall_s:9.0f} {1e6 * cpu_s / requests:11.1f}")


if __name__ == "__main__":
    main()
