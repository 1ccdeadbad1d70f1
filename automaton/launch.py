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
import urllib.request
from types import TracebackType
from typing import IO, Any

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_READY_PREFIX = "listening "
_STDERR_TAIL_LINES = 40


class AutomatonError(RuntimeError):
    """The automaton did not start (it exited, or never said it was listening)."""


class AutomatonProcess:
    """A running automaton subprocess. Stop it with `stop()` or use it as a context manager."""

    def __init__(self, process: subprocess.Popen[str], url: str, stderr_tail: collections.deque[str]) -> None:
        self.process = process
        self.url = url
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
) -> AutomatonProcess:
    """Start `python -m automaton serve` and return once it listens."""
    args = [sys.executable, "-m", "automaton", "serve", "--host", host, "--port", str(port)]
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
    process = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
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
    return AutomatonProcess(process, line[len(_READY_PREFIX):].strip(), stderr_tail)


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
