"""Peer generator: the plainest aiohttp client loop, on uvloop.

One ClientSession, `--users` worker coroutines, each looping `GET url` (reading the body)
until the deadline; no think time, no per-request records. This is the floor for what any
aiohttp-based generator (horde's default engine included) can cost per request; everything
horde adds on top (scheduling, samples, streaming) shows up as the difference.

Prints one JSON object: {"requests", "ok", "errors", "run_s"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp
import uvloop


async def _worker(session: aiohttp.ClientSession, url: str, deadline: float, counts: list[int]) -> None:
    # counts = [ok, not-ok status, exceptions]: a list, not an object, to keep the loop bare
    while time.monotonic() < deadline:
        try:
            async with session.get(url) as resp:
                await resp.read()
                counts[0 if resp.status < 400 else 1] += 1
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            counts[2] += 1


async def run(url: str, users: int, seconds: float) -> dict[str, float]:
    counts = [0, 0, 0]
    connector = aiohttp.TCPConnector(limit=users, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = time.monotonic()
        deadline = t0 + seconds
        await asyncio.gather(*(_worker(session, url, deadline, counts) for _ in range(users)))
        run_s = time.monotonic() - t0
    return {"requests": counts[0] + counts[1], "ok": counts[0], "errors": counts[1] + counts[2], "run_s": run_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--users", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    result = uvloop.run(run(args.url, args.users, args.seconds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
