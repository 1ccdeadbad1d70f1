"""Time from `horde run` (process start) to the first request at the target.

A local aiohttp target on a thread notes when its first request arrives; `horde run`
starts as a subprocess (its own embedded Ray unless --address or --warm is given). Each run
also prints the CPU its summary reports outside the steady state (summary.json `cpu`), and
the agents' worst send lag and late sends (a start lead too short would show there).

    python bench/first_request.py [--repeat 3] [--address ADDR]
    python bench/first_request.py --warm [--repeat 3]   # `horde up` first, `horde down` after
    python bench/first_request.py --warm --pool 0       # the warm Ray without its agent pool

--warm uses a state directory of its own (HORDE_STATE_DIR), so it never touches a warm Ray
the user has up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

from aiohttp import web

SCENARIO = """
name: first-request
target: http://127.0.0.1:1
requests:
  - {name: root, path: /, expect: [200]}
workload:
  model: open
  start: 20
  stages: [{duration: 2s, target: 20}]
agents: 1
"""


class Target:
    def __init__(self) -> None:
        self.first: float | None = None
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        if self.first is None:
            self.first = time.monotonic()
        return web.Response(text="ok")

    def start(self) -> None:
        threading.Thread(target=self._main, daemon=True).start()
        self._ready.wait(10)

    def _main(self) -> None:
        self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_get("/", self._handle)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--address", default=None)
    ap.add_argument("--warm", action="store_true", help="attach to a warm Ray started by `horde up` for the bench")
    ap.add_argument("--pool", type=int, default=None, help="with --warm: `horde up --pool N` (default: up's own)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="horde-first-"))
    scen = tmp / "s.yaml"
    scen.write_text(textwrap.dedent(SCENARIO))
    env = dict(os.environ)
    if args.warm:
        env["HORDE_STATE_DIR"] = str(tmp / "state")
        pool = [] if args.pool is None else ["--pool", str(args.pool)]
        up = subprocess.run(_horde("up", *pool), capture_output=True, text=True, timeout=180, env=env)
        print(up.stdout.strip() or up.stderr.strip())
        if up.returncode != 0:
            return
    else:
        env["HORDE_STATE_DIR"] = str(tmp / "no-state")  # never attach to a warm Ray the user has up
    try:
        results = _runs(args, scen, tmp, env)
    finally:
        if args.warm:
            down = subprocess.run(_horde("down"), capture_output=True, text=True, timeout=120, env=env)
            print(down.stdout.strip() or down.stderr.strip())
    if results:
        how = (
            "warm Ray of `horde up`"
            if args.warm
            else "attached to " + args.address
            if args.address
            else "embedded Ray started by the run"
        )
        print(f"time to first request: median {statistics.median(results):.2f} s over {len(results)} runs ({how})")


def _horde(*argv: str) -> list[str]:
    return [sys.executable, "-m", "horde.coordinator.cli", *argv]


def _newest(out: Path, name: str) -> dict:
    bundles = sorted((p for p in out.iterdir() if (p / "summary.json").exists()), key=lambda p: p.stat().st_mtime)
    return json.loads((bundles[-1] / name).read_text()) if bundles else {}


def _runs(args, scen: Path, tmp: Path, env: dict) -> list[float]:
    results = []
    for i in range(args.repeat):
        target = Target()
        target.start()
        cmd = [
            sys.executable,
            "-m",
            "horde.coordinator.cli",
            "run",
            str(scen),
            "-q",
            "--out",
            str(tmp / "out"),
            "--target",
            f"http://127.0.0.1:{target.port}",
        ]
        if args.address:
            cmd += ["--address", args.address]
        t0 = time.monotonic()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        if target.first is None:
            print(f"run {i + 1}: no request arrived (exit {r.returncode})\n{r.stderr[-2000:]}")
            continue
        results.append(target.first - t0)
        summary = _newest(tmp / "out", "summary.json")
        cpu = summary.get("cpu") or {}
        gen = summary.get("generator") or {}
        pool = (_newest(tmp / "out", "manifest.json").get("cluster") or {}).get("pool")
        figures = ", ".join(f"{k} {v}" for k, v in cpu.items() if k != "scope")
        first_s = target.first - t0
        print(
            f"run {i + 1}: first request {first_s:.2f} s after `horde run` started; send lag max "
            f"{max((a.get('send_lag_max_ms', 0) for a in (gen.get('agents') or {}).values()), default=0):.3f} ms, "
            f"late sends {gen.get('late_sends')}; cpu: {figures}"
        )
        if pool:
            print(f"       agents: {pool}")
    return results


if __name__ == "__main__":
    main()
