"""Start the automaton as a subprocess and stop it again (tests, benchmarks, the CLI)."""

from __future__ import annotations

import collections
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from types import TracebackType
from typing import IO, Any

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_READY_PREFIX = "listening "
_ADMIN_PREFIX = "admin "
_ADMIN_TOKEN_ENV = "AUTOMATON_ADMIN_TOKEN"  # __main__.ADMIN_TOKEN_ENV (not imported: that pulls in the server)
_STDERR_TAIL_LINES = 40


class AutomatonError(RuntimeError):
    """The automaton did not start (it exited, or never said it was listening)."""


class AutomatonProcess:
    """A running automaton subprocess. Stop it with `stop()` or use it as a context manager.

    `url` is the service; `admin_url` and `admin_token` reach its admin endpoint
    (127.0.0.1 only), which `faults()` and `set_faults()` use.
    """

    def __init__(
        self,
        process: subprocess.Popen[str],
        url: str,
        stderr_tail: collections.deque[str],
        admin_url: str | None = None,
        admin_token: str | None = None,
    ) -> None:
        self.process = process
        self.url = url
        self.admin_url = admin_url
        self.admin_token = admin_token
        self._stderr_tail = stderr_tail
        # No proxy, whatever the environment says: the automaton is always local.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def pid(self) -> int:
        return self.process.pid

    def get_json(self, path: str, timeout_s: float = 10.0) -> Any:
        with self._opener.open(self.url + path, timeout=timeout_s) as response:
            return json.loads(response.read())

    def stats(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """GET /stats: {"requests": {route: count}, "total": n, "in_flight": n, ...}."""
        stats: dict[str, Any] = self.get_json("/stats", timeout_s)
        return stats

    def faults(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """GET /admin/faults: the faults in force (wire form, defaults left out)."""
        return self._admin("GET", None, timeout_s)

    def set_faults(self, faults: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
        """PUT /admin/faults: replace every fault; returns the faults now in force.

        Raises ValueError listing the server's problems when the configuration is invalid
        (the old faults then stay in force).
        """
        return self._admin("PUT", faults, timeout_s)

    def _admin(self, method: str, body: dict[str, Any] | None, timeout_s: float) -> dict[str, Any]:
        if self.admin_url is None or self.admin_token is None:
            raise AutomatonError("this automaton has no admin endpoint")
        request = urllib.request.Request(
            self.admin_url + "/admin/faults",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.admin_token}", "Content-Type": "application/json"},
        )
        try:
            with self._opener.open(request, timeout=timeout_s) as response:
                result: dict[str, Any] = json.loads(response.read())
                return result
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            if exc.code == 400:
                try:
                    problems = json.loads(detail).get("problems") or [detail]
                except ValueError:
                    problems = [detail]
                raise ValueError("invalid fault configuration: " + "; ".join(problems)) from None
            raise AutomatonError(f"admin endpoint answered {exc.code}: {detail}") from None

    def stderr_tail(self) -> str:
        return "".join(self._stderr_tail)

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within `timeout_s`; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # by PID, via Popen
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> AutomatonProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_automaton(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    stall_every_s: float | None = None,
    stall_for_s: float | None = None,
    startup_timeout_s: float = 20,
    db_path: str | None = None,
    async_workflows: bool = False,
    faults: dict[str, Any] | None = None,
    admin_port: int = 0,
    admin_token: str | None = None,
) -> AutomatonProcess:
    """Start `python -m automaton serve` and return once it listens.

    `faults` is the wire form of horde.automaton.faults.FaultConfig (plain JSON); the stall can
    be given there or by `stall_every_s`/`stall_for_s`, not both. The admin endpoint
    listens on 127.0.0.1:`admin_port` (0: a free one) with `admin_token` (None: the
    server makes one); the result knows both (`admin_url`, `admin_token`).
    """
    args = [sys.executable, "-m", "horde.automaton", "serve", "--host", host, "--port", str(port)]
    args += ["--admin-port", str(admin_port), "--stop-on-stdin-eof"]
    if faults is not None:
        args += ["--faults-json", json.dumps(faults)]
    if stall_every_s is not None:
        args += ["--stall-every", repr(float(stall_every_s))]
    if stall_for_s is not None:
        args += ["--stall-for", repr(float(stall_for_s))]
    if db_path is not None:
        args += ["--db", db_path]
    if async_workflows:
        args.append("--async-workflows")
    env = dict(os.environ)
    # Importable from a source checkout as well as from an installed horde.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop(_ADMIN_TOKEN_ENV, None)
    if admin_token is not None:
        env[_ADMIN_TOKEN_ENV] = admin_token
    # horde keeps the write end of the automaton's stdin open and never writes to it: when
    # horde exits, however it dies, the pipe closes and the automaton stops (no orphan).
    process = subprocess.Popen(
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None and process.stderr is not None
    # Both pipes are drained for the process's whole life, so it can never block on a full pipe.
    stdout_lines: queue.Queue[str] = queue.Queue()
    stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
    stderr_done = threading.Event()
    threading.Thread(target=_drain, args=(process.stdout, stdout_lines.put, None), daemon=True).start()
    threading.Thread(target=_drain, args=(process.stderr, stderr_tail.append, stderr_done), daemon=True).start()

    def fail(reason: str) -> AutomatonError:
        if process.poll() is None:
            process.kill()
        process.wait()
        stderr_done.wait(timeout=2.0)
        tail = "".join(stderr_tail).strip()
        return AutomatonError(f"automaton {reason} (exit code {process.returncode}); stderr:\n{tail}")

    try:
        line = stdout_lines.get(timeout=startup_timeout_s)
    except queue.Empty:
        raise fail(f"did not report listening within {startup_timeout_s} s") from None
    if not line.startswith(_READY_PREFIX):
        # "" is end of stream: the process exited before listening.
        raise fail(f"exited or printed {line!r} before listening")
    url = line[len(_READY_PREFIX) :].strip()
    try:
        admin_line = stdout_lines.get(timeout=startup_timeout_s)
    except queue.Empty:
        raise fail(f"did not report its admin endpoint within {startup_timeout_s} s") from None
    admin_url, admin_token_seen = _parse_admin_line(admin_line)
    if admin_url is None:
        raise fail(f"printed {admin_line!r} where its admin endpoint was expected")
    return AutomatonProcess(process, url, stderr_tail, admin_url=admin_url, admin_token=admin_token_seen)


def _parse_admin_line(line: str) -> tuple[str | None, str | None]:
    """`admin http://127.0.0.1:PORT token=TOKEN` -> (url, token); (None, None) otherwise."""
    if not line.startswith(_ADMIN_PREFIX):
        return None, None
    parts = line[len(_ADMIN_PREFIX) :].split()
    if len(parts) != 2 or not parts[1].startswith("token="):
        return None, None
    return parts[0], parts[1][len("token=") :]


def _drain(stream: IO[str], sink: Any, done: threading.Event | None) -> None:
    try:
        for line in stream:
            sink(line)
    except ValueError:  # stream closed under us
        pass
    finally:
        if done is None:
            sink("")  # end of stream marker for the startup wait
        else:
            done.set()
        stream.close()
