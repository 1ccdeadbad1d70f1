"""Peak RSS of one traffic agent with 1000 requests in flight against endless response bodies.

    python bench/endless_body.py [--in-flight 1000] [--seconds 10] [--max-response-bytes 64MiB]

A misbehaving server (tests/agents/misbehaving.py, its own process on 127.0.0.1) answers
every request with a chunked body that never ends. The agent (horde.agents.traffic, in
process, no Ray) runs a closed model of `in_flight` users for `seconds`, each user sending
again as soon as a request ends, once with the lean engine and once with aiohttp, each in
a fresh process. Every request ends at the response cap (too_large) or at the request
timeout; nothing a body sends is kept. Prints each engine's RSS before the run and its
peak (sampled every 20 ms, and the kernel's ru_maxrss), and the requests by error class.
Bounded: the server stops itself after the runs' time plus a margin. Asserts nothing.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "tests" / "agents" / "misbehaving.py"


def _client(engine: str, url: str, in_flight: int, seconds: float, max_response_bytes: int, timeout_s: float) -> dict:
    """One agent run in this process; its RSS figures and error classes."""
    import psutil
    import uvloop

    from horde.agents.samples import ERROR_MASK, ErrorClass, decode_batch
    from horde.agents.spec import AgentSpec, Limits, RequestTemplate, Stage
    from horde.agents.traffic import TrafficAgent

    proc = psutil.Process()
    spec = AgentSpec(
        index=0,
        count=1,
        incarnation=0,
        model="closed",
        arrivals="constant",
        start_level=float(in_flight),
        stages=(Stage(seconds, float(in_flight), "hold"),),
        requests=(RequestTemplate("endless", "GET", url, engine=engine),),
        weights=(1.0,),
        max_in_flight=in_flight,
        max_connections=in_flight,
        timeout_s=timeout_s,
        connect_timeout_s=timeout_s,
        flush_interval_s=1.0,
        graceful_stop_s=1.0,
        limits=Limits(max_response_bytes=max_response_bytes),
    )
    agent = TrafficAgent(spec)
    batches: list[bytes] = []
    peak = [proc.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], proc.memory_info().rss)

    before = proc.memory_info().rss
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    uvloop.run(agent.run(time.time_ns() + 50_000_000, batches.append))
    wall_s = time.perf_counter() - t0
    stop.set()
    sampler.join()
    classes: collections.Counter[str] = collections.Counter()
    for b in batches:
        batch = decode_batch(b)
        if batch.agg is not None:  # the default: error classes counted per group
            for cls, n in enumerate(batch.agg.groups["errors"].sum(axis=0).tolist()):
                if n:
                    classes[ErrorClass(cls).label] += n
        for err in batch.samples["error"] & ERROR_MASK:  # HORDE_SAMPLES=raw
            classes[ErrorClass(int(err)).label] += 1
    return {
        "engine": engine,
        "rss_before_mib": before / 2**20,
        "rss_peak_mib": max(peak[0], proc.memory_info().rss) / 2**20,
        "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_s": wall_s,
        "classes": dict(classes),
    }


def main(argv: list[str] | None = None) -> int:
    from horde.coordinator.units import format_size, parse_size

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--in-flight", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--max-response-bytes", type=parse_size, default=64 * 1024 * 1024)
    ap.add_argument("--timeout", type=float, default=10.0, help="the request timeout, seconds")
    ap.add_argument("--engines", default="fast,aiohttp")
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.client:
        got = _client(args.client, args.url, args.in_flight, args.seconds, args.max_response_bytes, args.timeout)
        print(json.dumps(got))
        return 0

    engines = args.engines.split(",")
    budget_s = len(engines) * (args.seconds + args.timeout + 30)
    server = subprocess.Popen(
        [sys.executable, str(SERVER), "--max-seconds", str(budget_s)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        m = re.fullmatch(r"PORT (\d+)\n", server.stdout.readline())
        if not m:
            raise SystemExit("the misbehaving server did not start")
        url = f"http://127.0.0.1:{m.group(1)}/case/endless_chunked"
        print(
            f"{args.in_flight} in flight, endless chunked bodies, {args.seconds:g} s, "
            f"max_response_bytes {format_size(args.max_response_bytes)}, timeout {args.timeout:g} s"
        )
        header = f"{'engine':8} {'rss before MiB':>14} {'peak MiB':>9} {'ru_maxrss MiB':>14} {'wall s':>7}"
        print(header + "  requests by class")
        for engine in engines:
            out = subprocess.run(
                [sys.executable, __file__, "--client", engine, "--url", url]
                + ["--in-flight", str(args.in_flight), "--seconds", str(args.seconds)]
                + ["--max-response-bytes", str(args.max_response_bytes), "--timeout", str(args.timeout)],
                capture_output=True,
                text=True,
                timeout=args.seconds + args.timeout + 60,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{engine:8} {r['rss_before_mib']:14.0f} {r['rss_peak_mib']:9.0f} {r['maxrss_mib']:14.0f}"
                f" {r['wall_s']:7.1f}  {r['classes']}"
            )
    finally:
        server.kill()
        server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
