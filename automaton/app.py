"""The automaton's HTTP routes: `build_app(config)` gives an aiohttp Application.

Faults apply to the routes that do the system's work (catalog.ROUTE_NAMES), in one
place per request (`_with_faults`). /metrics and /stats observe the automaton: they are
neither counted nor faulted, so a stalled or overloaded automaton can still be watched
(the connection limit, decided before routing, is the exception).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.web_server import Server

from horde.automaton.catalog import ROUTE_NAMES, SIMULATED_AGENTS, TOOL_NAMES, WORKFLOWS, Workflow
from horde.automaton.config import AutomatonConfig
from horde.automaton.db import Database
from horde.automaton.faults import FaultConfig, plan_request, stall_hold_s
from horde.automaton.injector import FaultInjector, burn_cpu_s
from horde.automaton.metrics import EXPOSITION_CONTENT_TYPE, AutomatonMetrics
from horde.automaton.simulation import ToolInputError, agent_respond, tool_invoke

# Route names double as the `endpoint` label of automaton_requests_total.
COUNTED_ROUTES: tuple[str, ...] = ROUTE_NAMES
# Observation endpoints: reading them must not change what they report.
UNCOUNTED_ROUTES: frozenset[str] = frozenset({"metrics", "stats"})
# How often the scaling model looks at the queue: well inside any sensible scaling delay.
SCALING_TICK_S = 0.05

DEFAULT_RECORDS_LIMIT = 10
MAX_RECORDS_LIMIT = 1000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class AutomatonState:
    config: AutomatonConfig
    metrics: AutomatonMetrics
    # The faults in force: config.faults at start, replaceable through the admin endpoint.
    injector: FaultInjector
    db: Database | None = None
    started_monotonic_s: float = field(default_factory=time.monotonic)
    # Asynchronous workflow runs still going; cancelled at shutdown before the DB closes.
    background: set[asyncio.Task[None]] = field(default_factory=set)

    def uptime_s(self) -> float:
        return time.monotonic() - self.started_monotonic_s

    @property
    def database(self) -> Database:
        if self.db is None:
            raise RuntimeError("the automaton's database is not open (app not started)")
        return self.db


STATE = web.AppKey("automaton_state", AutomatonState)


def build_app(config: AutomatonConfig | None = None) -> web.Application:
    config = config or AutomatonConfig()
    app = web.Application(middlewares=[_observe_and_inject_faults])
    injector = FaultInjector(config.faults)
    metrics = AutomatonMetrics(COUNTED_ROUTES)
    metrics.count_faults_with(injector.queue_length, injector.capacity_workers, lambda: injector.leaked_bytes)
    app[STATE] = AutomatonState(config=config, metrics=metrics, injector=injector)
    app.cleanup_ctx.append(_lifecycle)
    router = app.router
    router.add_get("/health", _health, name="health")
    router.add_get("/api/agents", _agents_list, name="agents_list")
    router.add_post("/api/agents/{agent_id}/respond", _agent_respond, name="agent_respond")
    router.add_post("/api/tools/{name}/invoke", _tool_invoke, name="tool_invoke")
    router.add_post("/api/workflows/{name}/run", _workflow_run, name="workflow_run")
    router.add_get("/api/workflows/runs/{run_id}", _workflow_get, name="workflow_get")
    router.add_get("/api/records", _records_list, name="records_list")
    router.add_post("/api/records", _records_create, name="records_create")
    router.add_get("/metrics", _metrics, name="metrics")
    router.add_get("/stats", _stats, name="stats")
    return app


def bind_server(app: web.Application, server: Server) -> None:
    """Let automaton_open_connections count `server`'s connections.

    The app cannot see its server, so whoever runs it (serve(), a test's TestServer via
    `test_server.runner.server`) binds it once the runner is set up.
    """
    app[STATE].metrics.count_connections_with(lambda: len(server.connections))


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    state.db = Database.open(state.config.db_path, state.config.db_threads)
    state.injector.attach_database(state.db)
    # Stall windows are measured from here: the server is about to listen.
    state.started_monotonic_s = time.monotonic()
    scaler = asyncio.create_task(_scale_periodically(state))
    yield
    scaler.cancel()
    await asyncio.gather(scaler, return_exceptions=True)
    for task in state.background:
        task.cancel()
    await asyncio.gather(*state.background, return_exceptions=True)
    # close() waits for queued queries; keep that wait off the loop.
    await asyncio.get_running_loop().run_in_executor(None, state.db.close)


async def _scale_periodically(state: AutomatonState) -> None:
    while True:
        await asyncio.sleep(SCALING_TICK_S)
        state.injector.tick(state.uptime_s())


@web.middleware
async def _observe_and_inject_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    endpoint = request.match_info.route.name
    if endpoint is None or endpoint in UNCOUNTED_ROUTES:
        # Unrouted paths (their 404) and the observation endpoints.
        return await handler(request)
    state.metrics.request_started()
    try:
        return await _with_faults(state, endpoint, request, handler)
    finally:
        state.metrics.request_finished(endpoint)


async def _with_faults(
    state: AutomatonState, endpoint: str, request: web.Request, handler: Handler
) -> web.StreamResponse:
    """The one place a request's faults are applied, in this order.

    Admission (concurrency limits: run, wait in the queue, or 503 at once); then, holding
    a worker: CPU cost, added latency, the injected error or the handler, the stall hold
    before the response goes out, the leak.
    """
    injector = state.injector
    faults = injector.faults  # one configuration per request, even if replaced meanwhile
    gates = await injector.admit(endpoint)
    if gates is None:
        state.metrics.rejected("queue_full")
        return web.json_response({"error": "overloaded: the request queue is full"}, status=503)
    try:
        plan = plan_request(faults, endpoint, injector.rng)
        if plan.cpu_s > 0:
            burn_cpu_s(plan.cpu_s)
        if plan.delay_s > 0:
            await asyncio.sleep(plan.delay_s)
        try:
            if plan.error_status is not None:
                state.metrics.rejected("injected_error")
                response: web.StreamResponse = web.json_response({"error": "injected fault"}, status=plan.error_status)
            else:
                response = await handler(request)
        except web.HTTPException:  # a 4xx answer is a response too: held and leaked alike
            await _hold_for_stall(state, faults, endpoint)
            injector.leak(plan.leak_bytes)
            raise
        await _hold_for_stall(state, faults, endpoint)
        injector.leak(plan.leak_bytes)
        return response
    finally:
        for gate in gates:
            gate.leave()


async def _hold_for_stall(state: AutomatonState, faults: FaultConfig, endpoint: str) -> None:
    hold_s = stall_hold_s(faults, endpoint, state.uptime_s())
    if hold_s > 0:
        await asyncio.sleep(hold_s)


def _client_error(exc_class: type[web.HTTPException], message: str) -> web.HTTPException:
    return exc_class(text=json.dumps({"error": message}), content_type="application/json")


async def _json_body(request: web.Request, *, require_object: bool) -> Any:
    """The request's JSON body; an empty body counts as {} so bare POSTs work under load."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _client_error(web.HTTPBadRequest, f"body is not valid JSON: {exc}") from None
    if require_object and not isinstance(body, dict):
        raise _client_error(web.HTTPBadRequest, "body must be a JSON object")
    return body


async def _health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response({"status": "ok", "uptime_s": state.uptime_s(), "faults": state.injector.faults.as_dict()})


async def _agents_list(request: web.Request) -> web.Response:
    agents = [agent.as_dict() for agent in SIMULATED_AGENTS.values()]
    return web.json_response({"agents": agents, "count": len(agents)})


async def _agent_respond(request: web.Request) -> web.Response:
    agent = SIMULATED_AGENTS.get(request.match_info["agent_id"])
    if agent is None:
        raise _client_error(web.HTTPNotFound, f"unknown agent {request.match_info['agent_id']!r}")
    payload = await _json_body(request, require_object=True)
    return web.json_response(await agent_respond(agent, payload, request.app[STATE].config))


async def _tool_invoke(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in TOOL_NAMES:
        raise _client_error(web.HTTPNotFound, f"unknown tool {name!r}")
    payload = await _json_body(request, require_object=True)
    try:
        result = await tool_invoke(name, payload, request.app[STATE].config)
    except ToolInputError as exc:
        raise _client_error(web.HTTPBadRequest, str(exc)) from None
    return web.json_response(result)


async def _run_workflow_steps(state: AutomatonState, workflow: Workflow, payload: dict[str, Any]) -> dict[str, Any]:
    """Agent, then its tools, in order. Tool inputs come from payload["tool_inputs"][tool]."""
    tool_inputs = payload.get("tool_inputs") or {}
    if not isinstance(tool_inputs, dict):
        raise ToolInputError("tool_inputs must be an object keyed by tool name")
    steps: list[dict[str, Any]] = []
    agent = SIMULATED_AGENTS[workflow.agent_id]
    steps.append({"step": "agent", **await agent_respond(agent, payload, state.config)})
    for tool in workflow.tools:
        tool_payload = tool_inputs.get(tool) or {}
        if not isinstance(tool_payload, dict):
            raise ToolInputError(f"tool_inputs.{tool} must be an object")
        steps.append({"step": "tool", **await tool_invoke(tool, tool_payload, state.config)})
    return {"steps": steps}


async def _finish_workflow_in_background(
    state: AutomatonState, run_id: str, workflow: Workflow, payload: dict[str, Any]
) -> None:
    try:
        result = await _run_workflow_steps(state, workflow, payload)
    except ToolInputError as exc:
        await state.database.put_run(run_id, workflow.name, "failed", {"error": str(exc)})
        return
    await state.database.put_run(run_id, workflow.name, "completed", result)


async def _workflow_run(request: web.Request) -> web.Response:
    state = request.app[STATE]
    workflow = WORKFLOWS.get(request.match_info["name"])
    if workflow is None:
        raise _client_error(web.HTTPNotFound, f"unknown workflow {request.match_info['name']!r}")
    payload = await _json_body(request, require_object=True)
    run_id = uuid.uuid4().hex
    if state.config.async_workflows:
        await state.database.put_run(run_id, workflow.name, "running", None)
        task = asyncio.create_task(_finish_workflow_in_background(state, run_id, workflow, payload))
        state.background.add(task)
        task.add_done_callback(state.background.discard)
        return web.json_response({"run_id": run_id, "workflow": workflow.name, "status": "running"}, status=202)
    try:
        result = await _run_workflow_steps(state, workflow, payload)
    except ToolInputError as exc:
        raise _client_error(web.HTTPBadRequest, str(exc)) from None
    await state.database.put_run(run_id, workflow.name, "completed", result)
    return web.json_response({"run_id": run_id, "workflow": workflow.name, "status": "completed", "result": result})


async def _workflow_get(request: web.Request) -> web.Response:
    run = await request.app[STATE].database.get_run(request.match_info["run_id"])
    if run is None:
        raise _client_error(web.HTTPNotFound, f"unknown run {request.match_info['run_id']!r}")
    return web.json_response(run)


async def _records_list(request: web.Request) -> web.Response:
    raw_limit = request.query.get("limit", str(DEFAULT_RECORDS_LIMIT))
    try:
        limit = int(raw_limit)
    except ValueError:
        limit = -1
    if not 1 <= limit <= MAX_RECORDS_LIMIT:
        raise _client_error(
            web.HTTPBadRequest, f"limit must be an integer in 1..{MAX_RECORDS_LIMIT}, got {raw_limit!r}"
        )
    records = await request.app[STATE].database.list_records(limit)
    return web.json_response({"records": records, "count": len(records)})


async def _records_create(request: web.Request) -> web.Response:
    data = await _json_body(request, require_object=False)
    record = await request.app[STATE].database.insert_record(data)
    return web.json_response(record, status=201)


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.exposition()
    # aiohttp's content_type= argument rejects parameters (version, charset): set the header.
    return web.Response(body=body, headers={"Content-Type": EXPOSITION_CONTENT_TYPE})


async def _stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    stats = state.metrics.stats()
    stats["uptime_s"] = state.uptime_s()
    stats["db_path"] = state.database.path
    return web.json_response(stats)
