"""The admin endpoint: read and replace the faults while the automaton runs.

A separate aiohttp application, served on its own site bound to 127.0.0.1 only (see
server.serve_async), so neither load nor a connection limit on the main port gets in the
way, and only this machine can reach it. Every request needs `Authorization: Bearer
<token>`; anything else is 401. A malformed request is a 400 (401 without the token, 404
or 405 for a wrong path or method), never a 500: a body over ADMIN_MAX_BODY_BYTES, not
JSON, not UTF-8, nested too deeply, or not a fault configuration.

    GET /admin/faults   -> 200, the faults in force (the wire form of fault_model.TargetFaults)
    PUT /admin/faults   JSON body: the new faults, replacing all of the old ones; the wire
                        form or the scenario form (`leak_per_request: "10KB"`), one model
                        -> 200 with the faults now in force,
                           400 {"error": ..., "problems": ["key.path: message", ...]}
                           when invalid (nothing changes)
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import HttpVersion11, web

from horde.automaton.app import STATE, AutomatonState
from horde.automaton.fault_model import FaultConfigError, fault_config_from_dict

# Loopback only, whatever host the main site listens on.
ADMIN_HOST = "127.0.0.1"
# A fault configuration is a few hundred bytes; aiohttp's own default would be 1 MiB.
ADMIN_MAX_BODY_BYTES = 64 * 1024

_FAULTS_PATH = "/admin/faults"
_ADMIN_TOKEN = web.AppKey("automaton_admin_token", str)
_TARGET = web.AppKey("automaton_admin_target", AutomatonState)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def new_admin_token() -> str:
    return secrets.token_urlsafe(24)


def build_admin_app(app: web.Application, token: str) -> web.Application:
    """The admin application for the automaton `app` (from build_app)."""
    if not token:
        raise ValueError("the admin token must not be empty")
    admin = web.Application(middlewares=[_require_token], client_max_size=ADMIN_MAX_BODY_BYTES)
    admin[_ADMIN_TOKEN] = token
    admin[_TARGET] = app[STATE]
    admin.router.add_get(_FAULTS_PATH, _get_faults, expect_handler=_expect_continue_only)
    admin.router.add_put(_FAULTS_PATH, _put_faults, expect_handler=_expect_continue_only)
    # Last, so it sees only what the routes above do not take: a 404 or 405 of our own, whose
    # expect handler (unlike aiohttp's for an unmatched request) answers no 417.
    admin.router.add_route("*", "/{tail:.*}", _no_such_route, expect_handler=_expect_continue_only)
    return admin


@web.middleware
async def _require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    expected = f"Bearer {request.app[_ADMIN_TOKEN]}".encode()
    # The header's raw bytes: a non-ASCII value need not survive decoding and encoding again.
    given = next((value for name, value in request.raw_headers if name.lower() == b"authorization"), b"")
    # Constant time, so the token cannot be guessed a character at a time.
    if not hmac.compare_digest(given, expected):
        return web.json_response(
            {"error": "missing or wrong admin token"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="automaton-admin"'},
        )
    return await handler(request)


async def _get_faults(request: web.Request) -> web.Response:
    return web.json_response(request.app[_TARGET].injector.faults.as_dict())


async def _no_such_route(request: web.Request) -> web.Response:
    if request.path == _FAULTS_PATH:
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD", "PUT"])
    raise web.HTTPNotFound()


async def _expect_continue_only(request: web.Request) -> None:
    """aiohttp's handling of `Expect: 100-continue`, with 400 rather than 417 for any other.

    (It runs before the middleware, so even without the token.)
    """
    expect = request.headers.get("Expect", "")
    if request.version == HttpVersion11:
        if expect.lower() != "100-continue":
            raise web.HTTPBadRequest(text=f"unsupported Expect header {expect[:40]!r}")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim answer is not part of the response


def _bad_request(error: str) -> web.Response:
    return web.json_response({"error": error, "problems": []}, status=400)


async def _put_faults(request: web.Request) -> web.Response:
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _bad_request(f"body larger than {ADMIN_MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body)
    except ValueError as exc:  # UnicodeDecodeError is one: the body must be UTF-8 JSON
        return _bad_request(f"body is not valid JSON: {exc}")
    except RecursionError:
        return _bad_request("body is not valid JSON: nested too deeply")
    try:
        faults = fault_config_from_dict(data)
    except FaultConfigError as exc:
        return web.json_response({"error": "invalid fault configuration", "problems": exc.problems}, status=400)
    injector = request.app[_TARGET].injector
    injector.apply(faults)
    return web.json_response(injector.faults.as_dict())
