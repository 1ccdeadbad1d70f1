"""The admin endpoint: read and replace the faults while the automaton runs.

A separate aiohttp application, served on its own site bound to 127.0.0.1 only (see
server.serve_async), so neither load nor a connection limit on the main port gets in the
way, and only this machine can reach it. Every request needs `Authorization: Bearer
<token>`; anything else is 401.

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

from aiohttp import web

from horde.automaton.app import STATE, AutomatonState
from horde.automaton.fault_model import FaultConfigError, fault_config_from_dict

# Loopback only, whatever host the main site listens on.
ADMIN_HOST = "127.0.0.1"

_ADMIN_TOKEN = web.AppKey("automaton_admin_token", str)
_TARGET = web.AppKey("automaton_admin_target", AutomatonState)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def new_admin_token() -> str:
    return secrets.token_urlsafe(24)


def build_admin_app(app: web.Application, token: str) -> web.Application:
    """The admin application for the automaton `app` (from build_app)."""
    if not token:
        raise ValueError("the admin token must not be empty")
    admin = web.Application(middlewares=[_require_token])
    admin[_ADMIN_TOKEN] = token
    admin[_TARGET] = app[STATE]
    admin.router.add_get("/admin/faults", _get_faults)
    admin.router.add_put("/admin/faults", _put_faults)
    return admin


@web.middleware
async def _require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    expected = f"Bearer {request.app[_ADMIN_TOKEN]}".encode()
    given = request.headers.get("Authorization", "").encode()
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


async def _put_faults(request: web.Request) -> web.Response:
    try:
        data = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        return web.json_response({"error": f"body is not valid JSON: {exc}", "problems": []}, status=400)
    try:
        faults = fault_config_from_dict(data)
    except FaultConfigError as exc:
        return web.json_response({"error": "invalid fault configuration", "problems": exc.problems}, status=400)
    injector = request.app[_TARGET].injector
    injector.apply(faults)
    return web.json_response(injector.faults.as_dict())
