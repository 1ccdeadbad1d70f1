"""What kernel receive stamps cost the lean engine: CPU per request with them and without.

    python bench/stamp_cpu.py [--repeat 5] [--requests 40000] [--close-requests 5000]

nginx (bench/nginx.py) on CPU 0 serves a 612-byte file; each client runs in its own
process pinned to CPU 1, once with `HORDE_RX_STAMPS=0` (uvloop's transport, the end read
on the agent's clock) and once with `HORDE_RX_STAMPS=1` (agents/stamped.py), alternating,
--repeat rounds; the table shows the medians and the stamps' extra. Clients:
- `keep-alive`: the lean engine alone, 64 keep-alive connections, the next request sent
  from each completion (bench/engine_cpu.py's `fast` client, charged over the measured
  phase only);
- `agent`: horde's traffic agent without Ray, a closed model of 64 users
  (bench/engine_cpu.py's `agent` client, connecting included);
- `close`: the lean engine with `Connection: close` on every request, 16 in flight: a
  new connection per request, so the stamped path's connect and close count per request.
Asserts nothing; prints figures. Needs /usr/sbin/nginx and taskset.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` importable
    sys.path.insert(0, str(ROOT))

from bench import engine_cpu  # noqa: E402
from bench.nginx import Nginx  # noqa: E402


async def _close_client(url: str, requests: int, in_flight: int) -> dict[str, float]:
    """CPU us per request of the lean engine, a new connection per request."""
    import asyncio
    import resource

    from horde.agents.fast_http import FastEngine
    from horde.agents.spec import RequestTemplate

    template = RequestTemplate("static", "GET", url, headers=(("Connection", "close"),))
    engine = FastEngine([template], max_connections=in_flight, timeout_s=10, connect_timeout_s=5)
    await engine.open()
    finished = asyncio.get_running_loop().create_future()
    left, done_n, errors = requests, 0, 0

    def done(_token: int, status: int, _nbytes: int, error: int) -> None:
        nonlocal left, done_n, errors
        done_n += 1
        errors += bool(error or status != 200)
        if left > 0:
            left -= 1
            engine.submit(0, 0, done)
        elif done_n == requests and not finished.done():
            finished.set_result(None)

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(min(in_flight, requests)):
        left -= 1
        engine.submit(0, 0, done)
    await finished
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    await engine.close()
    cpu_s = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    return {"us": cpu_s / requests * 1e6, "errors": errors}


def run_client(name: str, url: str, requests: int, stamps: bool) -> float:
    """CPU us per request of one client run, in its own pinned process."""
    env = dict(os.environ, HORDE_RX_STAMPS="1" if stamps else "0")
    if name == "close":
        argv = [sys.executable, __file__, "--client-close", url, "--requests", str(requests)]
        out = subprocess.run(["taskset", "-c", "1", *argv], env=env, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"close client failed: {out.stderr.strip()[-2000:]}")
        got = json.loads(out.stdout.strip().splitlines()[-1])
        if got["errors"]:
            sys.exit(f"close client: {got['errors']} errors")
        return float(got["us"])
    saved = os.environ.get("HORDE_RX_STAMPS")
    os.environ["HORDE_RX_STAMPS"] = env["HORDE_RX_STAMPS"]  # engine_cpu passes its environment on
    try:
        n, errors, user_s, sys_s, _wall = engine_cpu.run_client(name, url, requests, 64)
    finally:
        if saved is None:
            os.environ.pop("HORDE_RX_STAMPS", None)
        else:
            os.environ["HORDE_RX_STAMPS"] = saved
    if errors:
        sys.exit(f"{name}: {errors} errors")
    return (user_s + sys_s) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--requests", type=int, default=40_000, help="keep-alive and agent clients")
    ap.add_argument("--close-requests", type=int, default=5_000, help="the connection-per-request client")
    ap.add_argument("--clients", default="keep-alive,agent,close")
    ap.add_argument("--client-close", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client_close:
        import uvloop

        print(json.dumps(uvloop.run(_close_client(args.client_close, args.requests, 16))))
        return
    names = {"keep-alive": "fast", "agent": "agent", "close": "close"}
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = set(clients) - set(names)
    if unknown:
        ap.error(f"--clients: unknown {', '.join(sorted(unknown))} (known: {', '.join(names)})")
    runs: dict[tuple[str, bool], list[float]] = {}
    with Nginx(cpu=0, files={"index.html": engine_cpu.BODY}) as target:
        url = target.url_of(engine_cpu.BODY_PATH)
        for rnd in range(args.repeat):
            for client in clients:
                for stamps in (False, True) if rnd % 2 == 0 else (True, False):
                    n = args.close_requests if client == "close" else args.requests
                    us = run_client(names[client], url, n, stamps)
                    runs.setdefault((client, stamps), []).append(us)
                    print(
                        f"  round {rnd + 1} {client:<10} stamps {'on ' if stamps else 'off'} {us:7.2f} us/request",
                        file=sys.stderr,
                        flush=True,
                    )
    load = os.getloadavg()[0]
    print(f"nginx on CPU 0, client on CPU 1; {args.repeat} rounds, stamps off/on alternating; load {load:.1f}")
    print(f"{'client':<12} {'off us/req':>10} {'on us/req':>10} {'extra':>8} {'extra %':>8}  runs off | on")
    for client in clients:
        off, on = runs[(client, False)], runs[(client, True)]
        a, b = statistics.median(off), statistics.median(on)
        print(
            f"{client:<12} {a:10.2f} {b:10.2f} {b - a:+8.2f} {100 * (b / a - 1):+7.1f}%  "
            + " ".join(f"{v:.1f}" for v in off)
            + " | "
            + " ".join(f"{v:.1f}" for v in on)
        )


if __name__ == "__main__":
    main()
