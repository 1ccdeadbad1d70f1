"""Run the automaton as a server until told to stop."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from horde.automaton.admin import ADMIN_HOST, build_admin_app, new_admin_token
from horde.automaton.app import STATE, build_app
from horde.automaton.config import AutomatonConfig
from horde.automaton.faults import FaultConfig
from horde.automaton.injector import ConnectionLimiter

# The kernel caps it at net.core.somaxconn; large so a burst of 1000+ connects is not refused.
LISTEN_BACKLOG = 4096
# How long shutdown waits for in-flight requests (stalled ones included) before closing.
SHUTDOWN_TIMEOUT_S = 5.0
# Linux refuses a soft limit above fs.nr_open (default 2**20) even when the hard limit is infinite.
_MAX_OPEN_FILES = 1 << 20

ReadyCallback = Callable[[str], None]
# (admin URL, admin token), once the admin site listens.
AdminCallback = Callable[[str, str], None]


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
    *,
    admin_port: int | None = 0,
    admin_token: str | None = None,
    admin_callback: AdminCallback | None = None,
) -> None:
    """Listen on host:port until `stop` is set, then close the server and the database.

    The admin endpoint (admin.py) listens on 127.0.0.1:`admin_port` (0: a free port;
    None: no admin endpoint) with `admin_token`, or a fresh random one. `ready_callback`
    gets the main URL once both listen, then `admin_callback` the admin URL and token.
    """
    app = build_app(config)
    state = app[STATE]
    # No access log: formatting a line per request would cost more than the handlers.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    listener: asyncio.AbstractServer | None = None
    admin_runner: web.AppRunner | None = None
    try:
        assert runner.server is not None
        # A listener of our own rather than a TCPSite: the connection limit wraps
        # aiohttp's protocol factory (its low-level Server), and counts connections.
        limiter = ConnectionLimiter(
            runner.server,
            limit=lambda: state.injector.faults.max_connections,
            on_refused=lambda: state.metrics.rejected("connection_limit"),
        )
        state.metrics.count_connections_with(lambda: limiter.open)
        listener = await asyncio.get_running_loop().create_server(limiter, host, port, backlog=LISTEN_BACKLOG)
        bound_host, bound_port = listener.sockets[0].getsockname()[:2]
        admin: tuple[str, str] | None = None
        if admin_port is not None:
            token = admin_token or new_admin_token()
            admin_runner = web.AppRunner(build_admin_app(app, token), access_log=None)
            await admin_runner.setup()
            await web.TCPSite(admin_runner, ADMIN_HOST, admin_port).start()
            admin = (format_url(ADMIN_HOST, admin_runner.addresses[0][1]), token)
        if ready_callback is not None:
            ready_callback(format_url(bound_host, bound_port))
        if admin is not None and admin_callback is not None:
            admin_callback(*admin)
        await stop.wait()
    finally:
        if listener is not None:
            listener.close()  # stop accepting; runner.cleanup closes the connections
        if admin_runner is not None:
            await admin_runner.cleanup()
        await runner.cleanup()


def serve(
    host: str,
    port: int,
    faults: FaultConfig,
    db_path: str | None = None,
    ready_callback: ReadyCallback | None = None,
    *,
    async_workflows: bool = False,
    admin_port: int | None = 0,
    admin_token: str | None = None,
    admin_callback: AdminCallback | None = None,
    stop_on_stdin_eof: bool = False,
) -> None:
    """Serve the automaton until SIGTERM or SIGINT (blocking; uvloop when available).

    `ready_callback(url)` is called once the socket listens, with the real port, then
    `admin_callback(admin_url, token)` (see serve_async). With `stop_on_stdin_eof` it also
    stops when its standard input reaches end of file: the parent holds the pipe's other end,
    so a parent that dies, even by SIGKILL, takes its automaton with it.
    """
    config = AutomatonConfig(faults=faults, db_path=db_path, async_workflows=async_workflows)
    raise_open_file_limit()
    admin = {"admin_port": admin_port, "admin_token": admin_token, "admin_callback": admin_callback}
    _run_loop(_serve_until_signalled(config, host, port, ready_callback, admin, stop_on_stdin_eof))


async def _serve_until_signalled(
    config: AutomatonConfig,
    host: str,
    port: int,
    ready_callback: ReadyCallback | None,
    admin: dict[str, Any],
    stop_on_stdin_eof: bool = False,
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
    stdin_fd = sys.stdin.fileno() if stop_on_stdin_eof and sys.stdin is not None else None
    if stdin_fd is not None:
        loop.add_reader(stdin_fd, _stop_at_eof, stdin_fd, stop)
    try:
        await serve_async(config, host, port, stop, ready_callback, **admin)
    finally:
        if stdin_fd is not None:
            loop.remove_reader(stdin_fd)
        for sig in installed:
            loop.remove_signal_handler(sig)


def _stop_at_eof(fd: int, stop: asyncio.Event) -> None:
    try:
        data = os.read(fd, 4096)
    except OSError:
        data = b""
    if not data:  # the parent closed its end, or died
        stop.set()


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
