"""The client a Python virtual user gets: requests, think time, failures, test data.

One `UserClient` per virtual user (its own cookie jar and state); the agent-wide parts
(the aiohttp session, the lean engine, the endpoint table, the clock) are a `UserIO` shared
by every user of the agent (agents/users.py builds it).

Engines. A request with no body or a fixed one (`data` as bytes or text), no `json`, no
cookie to send and `read` not asked for goes through the lean engine (agents/fast_http.py),
as plain mix entries do: its response has a status and a size only, the body is counted and
dropped. Every other request goes through aiohttp and its response is read whole (capped
by the scenario's `limits`): `.headers`, `.content`, `.text` and `.json()` work. Reading the
body of a lean response raises `BodyNotRead`, whose message says to pass `read=True`.

Measurement (docs/measurement.md, "Python users"). Each request is a sample of its own
endpoint (`entry/name`), intended at its due time: the iteration's intended start for the
first request, then the end of the previous request, or the end of a `sleep()`: so a target
that holds a user back shows in the next request's latency, as for flows.
"""

from __future__ import annotations

import asyncio
import json as _json
from collections.abc import Callable, Coroutine, Mapping
from typing import Any
from urllib.parse import urlencode

import aiohttp
from yarl import URL

from horde.agents.aiohttp_engine import classify_exception, read_body
from horde.agents.data import DataExhausted
from horde.agents.samples import ERROR_LABELS, ErrorClass, classify_status

Record = Callable[[int, int, int, int, int, int], None]  # (endpoint, intended, sent, status, nbytes, err)
DataSource = Callable[[str], dict[str, str]]

_ANY: frozenset[int] = frozenset()  # no `expect`: any 2xx or 3xx
MAX_LEAN_REQUESTS = 1024  # distinct lean requests (method, URL, headers, body) an agent pre-encodes
USER_ERROR_KEYS = 32  # distinct exception type names kept per agent; more fold into "other"
FAIL_KEY = "client.fail"


class BodyNotRead(Exception):
    """The body of a request sent by the lean engine was not kept."""


class Stopped(BaseException):
    """The agent is stopping: the iteration ends here and is not recorded (not an Exception,
    so user code's `except Exception` does not swallow it)."""


class Response:
    """What a request got: `.status` (0: no response, see `.error`), `.ok`, and, when it was
    read (aiohttp), `.headers`, `.content`, `.text`, `.json()`."""

    __slots__ = ("status", "error", "_body", "_headers")

    def __init__(self, status: int, error: int, body: bytes | None, headers: Mapping[str, str] | None) -> None:
        self.status = status
        self.error = ERROR_LABELS[error] if error else ""  # "" or the error class (timeout, http_5xx, ...)
        self._body = body
        self._headers = headers

    @property
    def ok(self) -> bool:
        return not self.error

    def _read(self) -> bytes:
        if self._body is None:
            if self.status == 0:
                raise BodyNotRead(f"no response ({self.error}): nothing to read")
            raise BodyNotRead(
                "this request went through the lean engine, which keeps no body or headers; "
                "pass read=True to the request to read its response"
            )
        return self._body

    @property
    def content(self) -> bytes:
        return self._read()

    @property
    def text(self) -> str:
        return self._read().decode("utf-8", errors="replace")

    def json(self) -> Any:
        return _json.loads(self._read())

    @property
    def headers(self) -> Mapping[str, str]:
        self._read()
        return self._headers or {}

    def __repr__(self) -> str:
        return f"<Response {self.status}{' ' + self.error if self.error else ''}>"


class UserIO:
    """What every virtual user of an agent shares. `fast` is the lean engine (None: none)."""

    def __init__(
        self,
        *,
        base_url: str,
        session: aiohttp.ClientSession,
        fast: Any,
        record: Record,
        clock_ns: Callable[[], int],
        sleep_until: Callable[[int], Any],
        max_response_bytes: int,
        head_timeout_s: float | None,
        data: DataSource | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.fast = fast
        self.record = record
        self.now = clock_ns
        self.sleep_until = sleep_until
        self.max_response_bytes = max_response_bytes
        self.head_timeout_s = head_timeout_s
        self.data = data
        self.lean: dict[tuple, int | None] = {}  # request key -> the lean engine's index (None: it cannot)
        self.fenced = False  # the agent's lease lapsed: no request may leave any more
        self.loop = asyncio.get_running_loop()


class UserClient:
    """One virtual user's client. `names` maps a request name (given with name=, or
    "METHOD /path" when none is given) to its endpoint; any other goes to `other`."""

    def __init__(self, io: UserIO, names: Mapping[str, int], other: int) -> None:
        self._io = io
        self._names = names
        self._other = other
        self._jar = aiohttp.CookieJar(unsafe=True)  # this user's own sessions (IP hosts included)
        self._cookies = False  # the jar holds something: requests then go through aiohttp
        self._token = 0  # the lean request in flight (answers to an abandoned one are ignored)
        self._waiting: asyncio.Future | None = None
        self._due = 0
        self.first_sent = -1
        self.status = 0
        self.nbytes = 0
        self.error = 0  # the iteration's error class so far (the first failure)
        self.failures: list[str] = []  # fail() reasons (kept for the user's own code, never sent)

    def begin(self, intended: int) -> None:
        """A new iteration, due at `intended`."""
        self._due = intended
        self.first_sent = -1
        self.status = self.nbytes = self.error = 0
        self.failures = []

    # -- requests

    async def request(
        self,
        method: str,
        path: str,
        *,
        name: str | None = None,
        json: Any = None,
        data: bytes | str | Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        expect: tuple[int, ...] | list[int] | None = None,
        read: bool = False,
    ) -> Response:
        """Send one request and wait for its response. `path` is relative to the target;
        `expect`: the statuses that count as OK (default: any 2xx or 3xx); `read`: keep the
        body and headers even when the lean engine could have sent it."""
        # Every request of a scripted user passes here: kept lean (bench/python_users.py).
        io = self._io
        key = name
        if key is None:
            query = path.find("?")
            key = f"{method.upper()} {path if query < 0 else path[:query]}"
        if params:
            path += ("&" if "?" in path else "?") + urlencode(params, doseq=True)
        ep = self._names.get(key, self._other)
        index = None
        if (
            io.fast is not None
            and json is None
            and not read
            and not self._cookies
            and (data is None or data.__class__ is bytes or data.__class__ is str)
        ):
            lean_key = (method, path, tuple(headers.items()) if headers else (), data)
            index = io.lean.get(lean_key, -1)
            if index == -1:
                index = self._add_lean(lean_key)
        if io.fenced:  # nothing is sent after a lease lapsed (agents/lease.py)
            raise Stopped()
        intended = self._due
        sent = io.now()
        if self.first_sent < 0:
            self.first_sent = sent
        body = resp_headers = None
        if index is not None:
            # The lean engine's submit() with this user's own callback: no closure and no
            # coroutine per request. A cancelled wait (the iteration's timeout) leaves the
            # request to the engine's own timeout; its late answer is ignored (token).
            self._token = token = self._token + 1
            self._waiting = fut = io.loop.create_future()
            io.fast.submit(index, token, self._answered)
            status, nbytes, err = await fut
        else:
            url = io.base_url + path
            status, nbytes, err, body, resp_headers = await self._aiohttp(method, url, json, data, headers)
        if not err:
            if expect is None:
                if not 200 <= status < 400:
                    err = classify_status(status, _ANY)
            elif status not in expect:
                err = classify_status(status, frozenset(expect))
        io.record(ep, intended, sent, status, nbytes, err)
        self._due = io.now()
        self.status = status
        self.nbytes += nbytes
        if err and not self.error:
            self.error = err
        return Response(status, err, body, resp_headers)

    def _answered(self, token: int, status: int, nbytes: int, err: int) -> None:
        fut = self._waiting
        if token == self._token and fut is not None and not fut.done():
            fut.set_result((status, nbytes, err))

    def _add_lean(self, key: tuple) -> int | None:
        """Pre-encode a new lean request; None (aiohttp sends it) when the engine cannot or
        the agent has as many as it keeps."""
        io = self._io
        if len(io.lean) >= MAX_LEAN_REQUESTS:
            return None
        method, path, headers, data = key
        body = data.encode() if isinstance(data, str) else data
        io.lean[key] = index = io.fast.add_request(method.upper(), io.base_url + path, headers, body)
        return index

    async def _aiohttp(
        self, method: str, url: str, json: Any, data: Any, headers: Mapping[str, str] | None
    ) -> tuple[int, int, int, bytes | None, Mapping[str, str] | None]:
        io = self._io
        target = URL(url)
        hdrs = dict(headers) if headers else {}
        if self._cookies:
            cookies = self._jar.filter_cookies(target)
            if cookies:
                hdrs["Cookie"] = "; ".join(f"{k}={m.value}" for k, m in cookies.items())
        try:
            sending = io.session.request(
                method.upper(), target, headers=hdrs or None, json=json, data=data, allow_redirects=False
            )
            resp = await (sending if io.head_timeout_s is None else asyncio.wait_for(sending, io.head_timeout_s))
            async with resp:
                if resp.status < 100:
                    return 0, 0, ErrorClass.PROTOCOL, None, None
                body = await read_body(resp, io.max_response_bytes)
                if resp.cookies:
                    self._jar.update_cookies(resp.cookies, resp.url)
                    self._cookies = True  # from now on this user's requests carry them (aiohttp)
                return resp.status, len(body), 0, body, resp.headers
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # every failure is a sample, as in the engines
            return 0, 0, classify_exception(exc), None, None

    def get(self, path: str, **kw: Any) -> Coroutine[Any, Any, Response]:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Coroutine[Any, Any, Response]:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Coroutine[Any, Any, Response]:
        return self.request("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> Coroutine[Any, Any, Response]:
        return self.request("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Coroutine[Any, Any, Response]:
        return self.request("DELETE", path, **kw)

    # -- the rest

    async def sleep(self, seconds: float) -> None:
        """Think time: the next request is due when it ends."""
        io = self._io
        until = io.now() + max(0, int(seconds * 1e9))
        if not await io.sleep_until(until):
            raise Stopped()
        self._due = until

    def fail(self, why: str = "") -> None:
        """Mark this iteration as failed (user_error); the iteration goes on."""
        self.failures.append(str(why))

    def data(self, name: str) -> dict[str, str]:
        """The next row of the scenario's data file `name`."""
        source = self._io.data
        if source is None:
            raise LookupError(f"no data file {name!r}: the scenario names no data files")
        try:
            return source(name)
        except Exception as exc:
            if isinstance(exc, DataExhausted):
                self.error = ErrorClass.DATA_EXHAUSTED
            raise
