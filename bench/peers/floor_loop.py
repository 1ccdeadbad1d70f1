"""Peer generator: the client floor (bench/floor.py) for a fixed time, on uvloop.

An asyncio Protocol per keep-alive connection, pre-built GETs, httptools parsing, the next
request written from the parser's callback: the least any Python client on uvloop spends
per request. It sends in phases of `--phase` requests until the deadline (a phase ends
when its last response is in, so the run overshoots the deadline by at most one phase).

Prints one JSON object: {"requests", "ok", "errors", "run_s"}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make `bench` importable
    sys.path.insert(0, str(ROOT))

from bench.floor import Floor  # noqa: E402


async def run(url: str, users: int, seconds: float, phase: int) -> dict[str, float]:
    floor = await Floor.open(url, users)
    requests = errors = 0
    try:
        t0 = time.monotonic()
        deadline = t0 + seconds
        while time.monotonic() < deadline:
            errors += await floor.phase(phase)
            requests += phase
        run_s = time.monotonic() - t0
    finally:
        floor.close()
    return {"requests": requests, "ok": requests - errors, "errors": errors, "run_s": run_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--users", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--phase", type=int, default=5000)
    args = ap.parse_args()
    print(json.dumps(uvloop.run(run(args.url, args.users, args.seconds, args.phase))))


if __name__ == "__main__":
    main()
