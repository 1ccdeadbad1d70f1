"""bench/truth.py's target: an aiohttp server answering after a known delay, its own truth.

    python -m bench.peers.delay_target --delay-ms 20 [--freeze-s 1 --freeze-every-s 5]

`GET /` sleeps `--delay-ms` and answers "ok"; the time from the handler's entry to its
return is recorded (ns). With `--freeze-s F --freeze-every-s P` it is frozen for the first
F seconds of every P (counted from its start): a request that arrives while frozen waits
for the thaw, then the delay (the wait is recorded too). `GET /__truth` answers the
recorded handler times as JSON ({"ns": [...]}) and forgets them, so that each generator
of a run gets the truth of its own requests. The first line on stdout is the port.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import uvloop
from aiohttp import web


def build_app(delay_s: float, freeze_s: float, every_s: float) -> web.Application:
    times: list[int] = []
    t0 = time.monotonic()

    async def handle(_request: web.Request) -> web.Response:
        start = time.monotonic_ns()
        if freeze_s > 0:
            phase = (time.monotonic() - t0) % every_s
            if phase < freeze_s:
                await asyncio.sleep(freeze_s - phase)
        await asyncio.sleep(delay_s)
        times.append(time.monotonic_ns() - start)
        return web.Response(text="ok")

    async def truth(_request: web.Request) -> web.Response:
        out = list(times)
        times.clear()
        return web.json_response({"ns": out})

    app = web.Application()
    app.router.add_get("/", handle)
    app.router.add_get("/__truth", truth)
    return app


async def serve(port: int, delay_s: float, freeze_s: float, every_s: float) -> None:
    runner = web.AppRunner(build_app(delay_s, freeze_s, every_s), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    sockets = site._server.sockets if site._server is not None else ()  # type: ignore[union-attr]
    print(sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()  # until the bench stops this process


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay-ms", type=float, default=20.0)
    ap.add_argument("--freeze-s", type=float, default=0.0)
    ap.add_argument("--freeze-every-s", type=float, default=5.0)
    args = ap.parse_args()
    uvloop.run(serve(args.port, args.delay_ms / 1000, args.freeze_s, args.freeze_every_s))


if __name__ == "__main__":
    main()
