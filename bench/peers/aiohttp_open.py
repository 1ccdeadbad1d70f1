"""Peer generator for bench/truth.py: a plain aiohttp open-model loop on uvloop.

    python -m bench.peers.aiohttp_open --url URL --rate 200 --seconds 10

Request i is due at start + i / rate; a task is started for each when it is due (the loop
sleeps until then), whatever is still in flight. Latency is taken from the due time,
service time from the send. Prints one JSON object: {"requests", "errors",
"latency_ns": [...], "service_ns": [...]}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp
import uvloop


async def _one(session: aiohttp.ClientSession, url: str, due: int, out: dict) -> None:
    sent = time.monotonic_ns()
    try:
        async with session.get(url) as resp:
            await resp.read()
            ok = resp.status < 400
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        ok = False
    end = time.monotonic_ns()
    if ok:
        out["latency_ns"].append(end - due)
        out["service_ns"].append(end - sent)
    else:
        out["errors"] += 1


async def run(url: str, rate: float, seconds: float) -> dict:
    out: dict = {"requests": 0, "errors": 0, "latency_ns": [], "service_ns": []}
    n = int(rate * seconds)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = set()
        start = time.monotonic_ns() + 50_000_000
        for i in range(n):
            due = start + int(i * 1e9 / rate)
            wait = due - time.monotonic_ns()
            if wait > 0:
                await asyncio.sleep(wait / 1e9)
            task = asyncio.create_task(_one(session, url, due, out))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=30)
    out["requests"] = n
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    print(json.dumps(uvloop.run(run(args.url, args.rate, args.seconds))))


if __name__ == "__main__":
    main()
