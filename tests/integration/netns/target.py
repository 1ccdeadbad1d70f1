"""A counting target: every request is counted by wall-clock second and source address.

Run as a script inside a namespace: `python target.py --host 198.18.0.100 --port 8080`.
GET /counts (not itself counted) returns {"counts": [[second, source, n], ...]}.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from aiohttp import web

COUNTS_PATH = "/counts"


def make_app() -> web.Application:
    counts: Counter[tuple[int, str]] = Counter()

    async def hit(request: web.Request) -> web.Response:
        counts[(int(time.time()), request.remote or "?")] += 1
        return web.Response(text="ok")

    async def report(request: web.Request) -> web.Response:
        return web.json_response({"counts": [[s, src, n] for (s, src), n in sorted(counts.items())]})

    app = web.Application()
    app.router.add_get(COUNTS_PATH, report)
    app.router.add_route("*", "/{tail:.*}", hit)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
