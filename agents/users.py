"""Python virtual users: a class whose `async def run(self, client)` is one iteration.

The code travels in the agent's spec (`UserTemplate.source`, checked against its sha256)
and is loaded when the agent is built, before the common start instant: a file that does
not load fails the agent's start, so no load is sent anywhere (docs/python-users.md).

One instance of the class per virtual user, with its own client (cookies) and state:
per closed-model user, and per open-model sender slot (an arrival takes a free slot, so a
user object serves one iteration at a time and is reused by later arrivals). `on_start`
runs once per object, before its first iteration; `on_stop` once when the agent ends.

User code is trusted code: it runs in the agent's process with the agent's rights. Its
failures are contained: an exception is the iteration's `user_error` (its type counted),
an iteration still running after the entry's timeout is cut off as a `timeout`.

`python -m horde.agents.users check FILE CLASS` prints the problems of a user file as JSON
(`horde validate` runs it in a subprocess, so that importing user code cannot touch the
coordinator's process).
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import inspect
import json
import sys
import traceback
import types
from collections.abc import Callable
from typing import Any

import aiohttp

from horde.agents.aiohttp_engine import new_connector
from horde.agents.samples import ErrorClass
from horde.agents.spec import DEFAULT_TLS, Limits, TlsSpec, UserTemplate
from horde.agents.tls import is_default, make_ssl_context
from horde.agents.user_client import FAIL_KEY, USER_ERROR_KEYS, DataSource, Record, Stopped, UserClient, UserIO

MAX_USER_FILE_BYTES = 1024 * 1024


class UserCodeError(Exception):
    """A user file that cannot be used; the message names the file and line."""


# -- loading and checking ------------------------------------------------------------------


def _where(path: str, exc: BaseException) -> str:
    """`path:line` of the deepest frame of `exc` in the user file (or just the path)."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f"{path}:{exc.lineno}"
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
    return f"{path}:{lines[-1]}" if lines else path


def _class_line(source: str, class_name: str) -> int | None:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return node.lineno
    return None


def signature_problems(cls: type, path: str) -> list[str]:
    """What is wrong with the class's run / on_start / on_stop, each with file:line."""
    problems = []

    def line(fn: Any) -> str:
        code = getattr(fn, "__code__", None)
        return f"{path}:{code.co_firstlineno}" if code is not None else path

    def takes_client(fn: Any) -> bool:
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return False
        params = [p for p in sig.parameters.values() if p.default is inspect.Parameter.empty]
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        return (len(positional) == 2 and len(params) == 2) or (
            any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values()) and len(positional) <= 2
        )

    run = inspect.getattr_static(cls, "run", None)
    if run is None:
        problems.append(f"{path}: class {cls.__name__} has no run method: expected `async def run(self, client)`")
    elif not inspect.iscoroutinefunction(run):
        problems.append(f"{line(run)}: {cls.__name__}.run must be `async def run(self, client)`")
    elif not takes_client(run):
        problems.append(f"{line(run)}: {cls.__name__}.run must take (self, client)")
    for hook in ("on_start", "on_stop"):
        fn = inspect.getattr_static(cls, hook, None)
        if fn is not None and (not callable(fn) or not takes_client(fn)):
            problems.append(f"{line(fn)}: {cls.__name__}.{hook} must take (self, client)")
    try:
        cls()
    except Exception as exc:
        problems.append(f"{_where(path, exc)}: {cls.__name__}() failed: {type(exc).__name__}: {exc}")
    return problems


def load_user_class(path: str, class_name: str, source: str, sha256: str | None = None) -> type:
    """The class, from the file's text; UserCodeError (file:line) when it cannot be used."""
    if sha256 is not None and hashlib.sha256(source.encode()).hexdigest() != sha256:
        raise UserCodeError(f"{path}: the code received does not match its sha256 (damaged on the way)")
    module_name = f"horde_user_{hashlib.sha256(source.encode()).hexdigest()[:16]}"
    module = sys.modules.get(module_name)
    if module is None:
        module = types.ModuleType(module_name)
        module.__file__ = path
        try:
            code = compile(source, path, "exec")
            sys.modules[module_name] = module  # dataclasses and pickling look modules up
            exec(code, module.__dict__)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt from a module body too
            sys.modules.pop(module_name, None)
            what = "has a syntax error" if isinstance(exc, SyntaxError) else "failed to import"
            detail = exc.msg if isinstance(exc, SyntaxError) else f"{type(exc).__name__}: {exc}"
            raise UserCodeError(f"{_where(path, exc)}: {what}: {detail}") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        found = sorted(n for n, v in vars(module).items() if isinstance(v, type) and v.__module__ == module_name)
        listed = f"; classes defined there: {', '.join(found)}" if found else "; it defines no class"
        raise UserCodeError(f"{path}: no class {class_name!r}{listed}")
    if problems := signature_problems(cls, path):
        raise UserCodeError("\n".join(problems))
    return cls


def check_user_file(file: str, class_name: str, shown: str | None = None) -> list[str]:
    """Every problem of the user class `class_name` in `file` (read here), as text lines."""
    shown = shown or file
    try:
        with open(file, "rb") as f:
            data = f.read(MAX_USER_FILE_BYTES + 1)
    except OSError as exc:
        return [f"{shown}: cannot read the user file: {exc.strerror or exc}"]
    if len(data) > MAX_USER_FILE_BYTES:
        return [f"{shown}: larger than {MAX_USER_FILE_BYTES} bytes (1 MiB), the limit for a user file"]
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [f"{shown}: not UTF-8 text (byte offset {exc.start})"]
    try:
        load_user_class(shown, class_name, source)
    except UserCodeError as exc:
        return str(exc).splitlines()
    return []


# -- running -------------------------------------------------------------------------------


class _VirtualUser:
    __slots__ = ("obj", "client", "started", "cut")

    def __init__(self, obj: Any, client: UserClient) -> None:
        self.obj = obj
        self.client = client
        self.started = False
        self.cut = False  # the watchdog cancelled its iteration (timeout)


async def _call(fn: Any, client: UserClient) -> None:
    out = fn(client)
    if inspect.isawaitable(out):
        await out


async def _quietly(vu: _VirtualUser) -> None:
    """on_stop, whose failures nobody can act on any more (the run's figures are complete)."""
    try:
        await _call(vu.obj.on_stop, vu.client)
    except asyncio.CancelledError:
        raise
    except BaseException:  # Stopped, or the user's own error: the agent is ending
        pass


class UserRunner:
    """Runs the iterations of an agent's Python users. Has the engines' lifecycle (open,
    close, abort_all), so the agent opens, fences and closes it with its engines."""

    name = "python"

    def __init__(
        self,
        users: tuple[UserTemplate | None, ...],
        *,
        record: Record,
        clock_ns: Callable[[], int],
        sleep_until: Callable[[int], Any],
        max_connections: int,
        timeout_s: float,
        connect_timeout_s: float,
        limits: Limits,
        lean: bool = True,
        data: DataSource | None = None,
        tls: TlsSpec = DEFAULT_TLS,
    ) -> None:
        # Loaded now: before the start instant, on every node (UserCodeError stops the agent).
        self._classes = {t.name: load_user_class(t.path, t.class_name, t.source, t.sha256) for t in users if t}
        self._names = {t.name: dict(t.requests) for t in users if t}
        self._timeout_ns = {t.name: int(t.timeout_s * 1e9) for t in users if t}
        self._record = record
        self._clock = clock_ns
        self._sleep_until = sleep_until
        self._max_connections = max_connections
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s)
        self._connect_timeout_s = connect_timeout_s
        self._limits = limits
        self._lean = lean
        self._data = data
        self._tls = tls
        self._base = next(t.base_url for t in users if t)
        self._session: aiohttp.ClientSession | None = None
        self._connector: aiohttp.TCPConnector | None = None  # read by AiohttpEngine.abort_all (fencing)
        self._fast: Any = None
        self._io: UserIO | None = None
        self._vus: dict[tuple[str, int], _VirtualUser] = {}
        self._running: dict[asyncio.Task, tuple[int, _VirtualUser]] = {}  # iterations -> (deadline ns, user)
        self._tick_s = min(0.1, max(0.005, min(t.timeout_s for t in users if t) / 20))
        self._watchdog: asyncio.TimerHandle | None = None
        self.errors: dict[str, int] = {}  # exception type name -> iterations it ended (since last taken)

    async def open(self) -> None:
        limits = self._limits
        # the scenario's tls (agents/tls.py); the session owns it (closed with it)
        self._connector = new_connector(self._max_connections, self._tls)
        self._session = aiohttp.ClientSession(
            connector=self._connector,
            timeout=self._timeout,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # each user has its own jar (UserClient)
            max_line_size=limits.max_header_bytes,
            max_field_size=limits.max_header_bytes,
        )
        if self._lean:
            from horde.agents.fast_http import FastEngine

            self._fast = FastEngine(
                (),
                max_connections=self._max_connections,
                timeout_s=self._timeout.total or 10.0,
                connect_timeout_s=self._connect_timeout_s,
                limits=limits,
                ssl_context=None if is_default(self._tls) else make_ssl_context(self._tls),
            )
            await self._fast.open()
        self._watchdog = asyncio.get_running_loop().call_later(self._tick_s, self._watch)
        total = self._timeout.total or 10.0
        self._io = UserIO(
            base_url=self._base,
            session=self._session,
            fast=self._fast,
            record=self._record,
            clock_ns=self._clock,
            sleep_until=self._sleep_until,
            max_response_bytes=limits.max_response_bytes,
            head_timeout_s=limits.header_timeout_s if limits.header_timeout_s < total else None,
            data=self._data,
        )

    async def close(self) -> None:
        """on_stop for every user that started (bounded; its requests go unrecorded), then
        the connections."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        started = [vu for vu in self._vus.values() if vu.started]
        self._vus.clear()
        if started and self._session is not None and not self._session.closed:
            stops = [asyncio.ensure_future(_quietly(vu)) for vu in started if hasattr(vu.obj, "on_stop")]
            if stops:
                _, late = await asyncio.wait(stops, timeout=self._timeout.total or 10.0)
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
        if self._fast is not None:
            await self._fast.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
            self._connector = None

    def abort_all(self) -> None:
        """Fencing: no request leaves any more, and every connection is reset at once (as
        the engines do)."""
        from horde.agents.aiohttp_engine import AiohttpEngine

        if self._io is not None:
            self._io.fenced = True
        AiohttpEngine.abort_all(self)  # type: ignore[arg-type]  # it reads only self._connector
        if self._fast is not None:
            self._fast.abort_all()

    def _user(self, t: UserTemplate, slot: int) -> _VirtualUser:
        key = (t.name, slot)
        vu = self._vus.get(key)
        if vu is None:
            assert self._io is not None, "user runner not opened"
            client = UserClient(self._io, self._names[t.name], t.other)
            vu = self._vus[key] = _VirtualUser(self._classes[t.name](), client)
        return vu

    def _count(self, key: str) -> None:
        errors = self.errors
        if key not in errors and len(errors) >= USER_ERROR_KEYS:
            key = "other"
        errors[key] = errors.get(key, 0) + 1

    def take_errors(self) -> dict[str, int]:
        out, self.errors = self.errors, {}
        return out

    def _watch(self) -> None:
        """The iteration timeout: one periodic sweep cancels the iterations past their
        deadline (a timer per iteration would cost more than the rest of its overhead)."""
        now = self._clock()
        for task, (deadline, vu) in list(self._running.items()):
            if now >= deadline and not vu.cut:
                vu.cut = True
                task.cancel()
        self._watchdog = asyncio.get_running_loop().call_later(self._tick_s, self._watch)

    async def iterate(self, t: UserTemplate, slot: int, intended: int) -> None:
        """One iteration of user `slot`, due at `intended`: its requests are recorded as they
        end, the iteration as one sample of its own endpoint (not when the agent stopped it)."""
        vu = self._vus.get((t.name, slot)) or self._user(t, slot)
        client = vu.client
        client.begin(intended)
        err = 0
        task = asyncio.current_task()
        running = self._running
        running[task] = (self._clock() + self._timeout_ns[t.name], vu)  # type: ignore[index]  # always in a task
        try:
            if not vu.started:
                vu.started = True
                if hasattr(vu.obj, "on_start"):
                    await _call(vu.obj.on_start, client)
            await vu.obj.run(client)
        except Stopped:
            return
        except asyncio.CancelledError:
            if not vu.cut:  # the agent's own cancel: passed on
                raise
            err = ErrorClass.TIMEOUT
        except Exception as exc:  # user code: contained, classified, its type counted
            if client.error == ErrorClass.DATA_EXHAUSTED:
                err = ErrorClass.DATA_EXHAUSTED
            else:
                err = ErrorClass.USER_ERROR
                self._count(type(exc).__name__)
        finally:
            del running[task]  # type: ignore[arg-type]  # see above
            if vu.cut:  # cancelled by the watchdog (even if the user code swallowed it)
                vu.cut = False
                task.uncancel()  # type: ignore[union-attr]  # see above
                err = ErrorClass.TIMEOUT
        if not err and client.failures:
            err = ErrorClass.USER_ERROR
            self._count(FAIL_KEY)
        if not err:
            err = client.error
        sent = client.first_sent if client.first_sent >= 0 else intended
        self._record(t.endpoint, intended, sent, client.status, client.nbytes, err)


def _main(argv: list[str]) -> int:
    if len(argv) not in (3, 4) or argv[0] != "check":
        print("usage: python -m horde.agents.users check FILE CLASS [SHOWN-PATH]", file=sys.stderr)
        return 2
    print(json.dumps({"problems": check_user_file(argv[1], argv[2], argv[3] if len(argv) > 3 else None)}))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
