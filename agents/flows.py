"""Flows: a mix entry made of steps, with captured variables and bounded polling.

A flow runs its steps in order on one aiohttp session (URLs and bodies change per run, so
the lean engine's pre-encoded requests do not apply). Each step attempt is a sample of
its own endpoint (`flow/step`); the whole flow is one more sample of the flow's endpoint:
intended at the flow's intended time, ended with its last step, failed if any step failed
or a poll ran out of tries (poll_exhausted).

Each virtual user has its own cookie jar: a closed-model user keeps one for as long as it
runs (`run(..., user=j)`, `end_user(j)`), an open-model flow iteration starts with an
empty one (`user=-1`), and all share one connection pool. A step may set its own
`timeout` and `follow_redirects`. An iteration takes one row of each data file its steps
refer to (`${data.NAME.COLUMN}`, agents/data.py) before its first step; with none left it
sends nothing and is recorded as data_exhausted.

A step's response is read whole (its JSON may be captured), so it is capped as every
response is (`Limits`, the scenario's `limits`): a body over `max_response_bytes` fails
the step as too_large, a head not in within `header_timeout_s` as a timeout.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

import aiohttp

from horde.agents.aiohttp_engine import classify_exception, new_connector, read_body, user_session
from horde.agents.data import DataExhausted, DataFeeds
from horde.agents.samples import ErrorClass, classify_status
from horde.agents.spec import DEFAULT_LIMITS, DEFAULT_TLS, FlowStepTemplate, FlowTemplate, Limits, TlsSpec

# ${var} (a capture) or ${data.NAME.COLUMN} (a data file's column, agents/data.py)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*|data\.[A-Za-z0-9_-]+\.[^}]+)\}")
_PATH_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")

Record = Callable[[int, int, int, int, int, int], None]  # (endpoint, intended, sent, status, nbytes, err)


def dig(doc: Any, path: str) -> Any:
    """The value at a dot path (`a.b[0].c`) of a JSON document; None when absent."""
    for name, index in _PATH_TOKEN.findall(path):
        if name:
            doc = doc.get(name) if isinstance(doc, dict) else None
        else:
            doc = doc[int(index)] if isinstance(doc, list) and int(index) < len(doc) else None
        if doc is None:
            return None
    return doc


def fill(text: str, variables: dict[str, str]) -> str:
    """`text` with ${var} from `variables` (data columns are there as `data.NAME.COLUMN`)."""
    if "${" not in text:
        return text
    return _VAR.sub(lambda m: variables.get(m.group(1), m.group(0)), text)


class FlowRunner:
    def __init__(
        self,
        *,
        max_connections: int,
        timeout_s: float,
        connect_timeout_s: float,
        clock_ns: Callable[[], int],
        limits: Limits = DEFAULT_LIMITS,
        tls: TlsSpec = DEFAULT_TLS,
        data: DataFeeds | None = None,
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s)
        self._connect_timeout_s = connect_timeout_s
        self._limits = limits
        # None: the whole-step timeout is the shorter and bounds the head too.
        self._head_timeout_s = limits.header_timeout_s if limits.header_timeout_s < timeout_s else None
        self._max_connections = max_connections
        self._tls = tls
        self._data = data
        self._connector: aiohttp.TCPConnector | None = None
        self._users: dict[int, aiohttp.ClientSession] = {}  # closed model: a cookie jar per user
        self._now = clock_ns  # ns since the run's start instant

    async def open(self) -> None:
        self._connector = new_connector(self._max_connections, self._tls)

    def _new_session(self) -> aiohttp.ClientSession:
        assert self._connector is not None, "flow runner not opened"
        return user_session(self._connector, timeout=self._timeout, limits=self._limits)

    def end_user(self, user: int) -> None:
        """User `user` left: its cookies go."""
        session = self._users.pop(user, None)
        if session is not None:
            session.detach()

    async def close(self) -> None:
        for session in self._users.values():
            session.detach()
        self._users.clear()
        if self._connector is not None:
            await self._connector.close()
            self._connector = None

    async def _send(
        self, session: aiohttp.ClientSession, step: FlowStepTemplate, variables: dict[str, str]
    ) -> tuple[int, int, int, Any]:
        url = fill(step.url, variables)
        headers = {k: fill(v, variables) for k, v in step.headers} or None
        body = fill(step.body.decode(), variables).encode() if step.body is not None else None
        kw: dict[str, Any] = {"allow_redirects": step.follow_redirects}
        if step.timeout_s is not None:
            kw["timeout"] = aiohttp.ClientTimeout(
                total=step.timeout_s, connect=min(self._connect_timeout_s, step.timeout_s)
            )
        try:
            sending = session.request(step.method, url, headers=headers, data=body, **kw)
            resp = await (sending if self._head_timeout_s is None else asyncio.wait_for(sending, self._head_timeout_s))
            async with resp:
                if resp.status < 100:  # no HTTP status ("000"): malformed, as both engines say
                    return 0, 0, ErrorClass.PROTOCOL, None
                data = await read_body(resp, self._limits.max_response_bytes)
                status = resp.status
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # every failure is a sample
            return 0, 0, classify_exception(exc), None
        err = classify_status(status, step.expect)
        doc = None
        if not err and (step.capture or step.until):
            try:
                doc = json.loads(data)
            except ValueError:
                err = ErrorClass.PROTOCOL  # a step that must be read as JSON was not JSON
        return status, len(data), err, doc

    async def run(
        self,
        flow: FlowTemplate,
        intended: int,
        record: Record,
        sleep_until: Callable[[int], Any],
        user: int = -1,
    ) -> None:
        """One iteration of `flow` as closed-model user `user` (its cookie jar), or, with
        -1, as a new visitor (an empty jar, gone after the iteration)."""
        variables: dict[str, str] = {}
        if flow.data:
            try:
                rows = self._data.rows_for(flow.data) if self._data is not None else {}
            except DataExhausted:
                record(flow.endpoint, intended, intended, 0, 0, ErrorClass.DATA_EXHAUSTED)
                return
            for name, row in rows.items():
                variables.update((f"data.{name}.{col}", value) for col, value in row.items())
        if user >= 0:
            session = self._users.get(user)
            if session is None:
                session = self._users[user] = self._new_session()
            await self._steps(session, flow, intended, record, sleep_until, variables)
            return
        session = self._new_session()
        try:
            await self._steps(session, flow, intended, record, sleep_until, variables)
        finally:
            session.detach()

    async def _steps(
        self,
        session: aiohttp.ClientSession,
        flow: FlowTemplate,
        intended: int,
        record: Record,
        sleep_until: Callable[[int], Any],
        variables: dict[str, str],
    ) -> None:
        first_sent = None
        status = nbytes = 0
        err: int = ErrorClass.OK
        step_intended = intended
        for step in flow.steps:
            polls = 0
            while True:
                sent = self._now()
                if first_sent is None:
                    first_sent = sent
                status, nbytes, err, doc = await self._send(session, step, variables)
                record(step.endpoint, step_intended, sent, status, nbytes, err)
                polls += 1
                if err:
                    break
                if step.until is None or dig(doc, step.until[0]) == step.until[1]:
                    break
                if polls >= step.max_polls:
                    err = ErrorClass.POLL_EXHAUSTED
                    break
                step_intended = self._now() + int(step.every_s * 1e9)
                if not await sleep_until(step_intended):
                    return  # the agent is stopping: an unfinished flow is not recorded
            if err:
                break
            for var, path in step.capture:
                value = dig(doc, path)
                if value is None:
                    err = ErrorClass.PROTOCOL  # nothing to capture: later steps cannot run
                    break
                variables[var] = value if isinstance(value, str) else json.dumps(value)
            if err:
                break
            step_intended = self._now()
        record(flow.endpoint, intended, first_sent if first_sent is not None else intended, status, nbytes, err)
