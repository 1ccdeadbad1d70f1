"""Run the automaton as a server until told to stop."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any, Callable, Coroutine

from aiohttp import web

from automaton.app import bind_server, build_app
from automaton.config import AutomatonConfig
from automaton.faults import FaultConfig

# The kernel caps it at net.core.somaxconn; large so a burst of 1000+ connects is not refused.
LISTEN_BACKLOG = 4096
# How long shutdown waits for in-flight requests (stalled ones included) before closing.
SHUTDOWN_TIMEOUT_S = 5.0
# Linux refuses a soft limit above fs.nr_open (default 2**20) even when the hard limit is infinite.
_MAX_OPEN_FILES = 1 << 20

ReadyCallback = Callable[[str], None]


def raise_open_file_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit (1000+ connections need fds).

    Returns the soft limit in force afterwards (-1 where the platform has no such limit).
    """
    try:
        import resource
    except ImportError:  # Windows
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # keep the old limit: the server still runs, with fewer connections
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def format_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve_async(
    config: AutomatonConfig,
    host: str,
    port: int,
    stop: asyncio.Event,
    ready_callback: ReadyCallback | None = None,
) -> None:
    """Listen on host:port until `stop` is set, then close the server and the database."""
    app = build_app(config)
    # No access log: formatting a line per request would cost more than the handlers.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        assert runner.server is not None
        bind_server(app, runner.server)
        site = web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        if ready_callback is not None:
            ready_callback(format_url(bound_host, bound_port))
        await stop.wait()
    finally:
        await runner.cleanup()


def serve(
    host: str,
    port: int,
    faults: FaultConfig,
    db_path: str | None = None,
    ready_callback: ReadyCallback | None = None,
    *,
    async_workflows: bool = False,
) -> None:
    """Serve the automaton until SIGTERM or SIGINT (blocking; uvloop when available).

    `ready_callback(url)` is called once the socket listens, with the real port.
    """
    config = AutomatonConfig(faults=faults, db_path=db_path, async_workflows=async_workflows)
    raise_open_file_limit()
    _run_loop(_serve_until_signalled(config, host, port, ready_callback))


async def _serve_until_signalled(
    config: AutomatonConfig, host: str, port: int, ready_callback: ReadyCallback | None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
            pass
    try:
        await serve_async(config, host, port, stop, ready_callback)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    if sys.platform != "win32":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main)
            return
    asyncio.run(main)
