"""Shared helpers: an in-process automaton on 127.0.0.1 behind aiohttp's test client."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from horde.automaton.app import bind_server, build_app
from horde.automaton.config import AutomatonConfig

InProcess = Callable[..., contextlib.AbstractAsyncContextManager[tuple[TestClient, web.Application]]]


@contextlib.asynccontextmanager
async def _in_process(
    config: AutomatonConfig | None = None,
) -> AsyncIterator[tuple[TestClient, web.Application]]:
    app = build_app(config or AutomatonConfig())
    async with TestServer(app, host="127.0.0.1") as server:
        assert server.runner is not None and server.runner.server is not None
        bind_server(app, server.runner.server)
        async with TestClient(server) as client:
            yield client, app


@pytest.fixture
def in_process() -> InProcess:
    """`async with in_process(config) as (client, app):` inside a test's asyncio.run()."""
    return _in_process
