"""The peers that are not horde: wrk, a bare aiohttp loop, Locust's FastHttpUser."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

from bench.peers.base import Count, Load, PeerFailed

HERE = Path(__file__).resolve().parent

_WRK_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h),", re.MULTILINE)
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_WRK_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_wrk(stdout: str) -> Count:
    """wrk's summary: '<n> requests in <t>, ...', plus its error lines when there were errors.

    wrk counts non-2xx responses among its requests; socket errors are not requests.
    """
    m = _WRK_TOTAL.search(stdout)
    if m is None:
        raise PeerFailed("no '<n> requests in <t>' line in wrk's output")
    requests = int(m.group(1))
    run_s = float(m.group(2)) * _WRK_UNIT_S[m.group(3)]
    errors = 0
    if n := _WRK_NON2XX.search(stdout):
        errors += int(n.group(1))
    if s := _WRK_SOCKET.search(stdout):
        errors += sum(int(g) for g in s.groups())
    return Count(requests=requests, errors=errors, run_s=run_s)


class Wrk:
    name = "wrk"
    startup_slack_s = 30.0

    def unavailable(self) -> str | None:
        return None if shutil.which("wrk") else "wrk not on PATH (apt-get install wrk)"

    def command(self, load: Load) -> list[str]:
        return ["wrk", "-t1", f"-c{load.users}", f"-d{load.seconds}s", load.url]

    def count(self, load: Load, stdout: str, exit_code: int) -> Count:
        if exit_code != 0:
            raise PeerFailed(f"wrk exited with {exit_code}")
        return parse_wrk(stdout)


class AiohttpLoop:
    """A Python script of peers/ that prints {"requests", "errors", "run_s"} as its last line."""

    name = "aiohttp"
    script = "aiohttp_loop.py"
    modules: tuple[str, ...] = ("aiohttp", "uvloop")
    startup_slack_s = 60.0

    def unavailable(self) -> str | None:
        missing = [m for m in self.modules if importlib.util.find_spec(m) is None]
        return f"not importable: {', '.join(missing)}" if missing else None

    def command(self, load: Load) -> list[str]:
        return [
            sys.executable,
            str(HERE / self.script),
            "--url",
            load.url,
            "--users",
            str(load.users),
            "--seconds",
            str(load.seconds),
        ]

    def count(self, load: Load, stdout: str, exit_code: int) -> Count:
        if exit_code != 0:
            raise PeerFailed(f"{self.script} exited with {exit_code}")
        lines = stdout.strip().splitlines()
        try:
            result = json.loads(lines[-1])
        except (IndexError, ValueError) as e:
            raise PeerFailed(f"{self.script} printed no JSON result: {e}") from e
        return Count(requests=int(result["requests"]), errors=int(result["errors"]), run_s=float(result["run_s"]))


class FloorLoop(AiohttpLoop):
    """The client floor (bench/floor.py): a bare asyncio Protocol + httptools on uvloop."""

    name = "floor"
    script = "floor_loop.py"
    modules = ("httptools", "uvloop")


def parse_locust_json(entries: list[dict[str, object]], seconds: float) -> Count:
    """Locust's --json-file: one entry per (method, name), none aggregated; failures included
    in num_requests. Locust reports no duration of its own here: the run time is used."""
    requests = sum(int(e["num_requests"]) for e in entries)  # type: ignore[call-overload]
    failures = sum(int(e["num_failures"]) for e in entries)  # type: ignore[call-overload]
    return Count(requests=requests, errors=failures, run_s=float(seconds))


class Locust:
    name = "locust"
    startup_slack_s = 60.0

    def unavailable(self) -> str | None:
        if importlib.util.find_spec("locust") is None:
            return "locust not importable (pip install locust, or the project's [bench] extra)"
        return None

    def command(self, load: Load) -> list[str]:
        # -r = users: Locust then starts all users within its first second.
        parts = urlsplit(load.url)
        host = f"{parts.scheme}://{parts.netloc}"
        path = parts.path or "/"
        return [
            "env",
            f"HORDE_BENCH_PATH={path}",
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(HERE / "locustfile.py"),
            "--headless",
            "--only-summary",
            "--loglevel",
            "WARNING",
            "-u",
            str(load.users),
            "-r",
            str(load.users),
            "--run-time",
            f"{load.seconds}s",
            "--stop-timeout",
            "1",
            "--host",
            host,
            "--json-file",
            str(load.workdir / "locust"),
        ]

    def count(self, load: Load, stdout: str, exit_code: int) -> Count:
        # Locust exits 1 when any request failed; the count is still valid then.
        path = load.workdir / "locust.json"
        if not path.exists():
            raise PeerFailed(f"locust exited with {exit_code} and wrote no {path.name}")
        return parse_locust_json(json.loads(path.read_text()), load.seconds)
