"""The one scraper of a target's resources: a Prometheus /metrics URL (any service that
exposes the standard process metrics), or a local process by PID (psutil).

`horde run` samples it on a schedule (``TargetProbe``); `horde monitor` scrapes once per
interval (``scrape``) and reads the same figures through ``process_gauges``. A scrape reads
at most `max_bytes` (default MAX_SCRAPE_BYTES): a target cannot grow the coordinator.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
import psutil
from prometheus_client.parser import text_string_to_metric_families

from horde.agents.aiohttp_engine import read_body
from horde.coordinator.measure.resources import Reading

MAX_SCRAPE_BYTES = 16 * 1024 * 1024  # a /metrics page; real ones are kilobytes

# Standard process-collector names, plus the connection gauges of the automaton and of
# common servers (the first one present wins).
RSS = "process_resident_memory_bytes"
CPU = "process_cpu_seconds_total"
FDS = "process_open_fds"
CONNECTIONS = ("automaton_open_connections", "http_server_open_connections", "nginx_connections_active")


def parse_prometheus(text: str) -> dict[str, float]:
    """Sum of each metric's samples (labels summed), by sample name."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name] = out.get(s.name, 0.0) + float(s.value)
    return out


def process_gauges(m: Mapping[str, float]) -> dict[str, float]:
    """The process figures a scrape holds, by what they are: memory_bytes, cpu_seconds_total,
    open_fds, open_connections (absent when the target does not expose them)."""
    out = {
        key: m[name]
        for key, name in (("memory_bytes", RSS), ("cpu_seconds_total", CPU), ("open_fds", FDS))
        if name in m
    }
    conns = next((m[n] for n in CONNECTIONS if n in m), None)
    if conns is not None:
        out["open_connections"] = conns
    return out


def has_process_metrics(m: Mapping[str, float]) -> bool:
    """Whether a scrape is of a process collector at all (memory or CPU)."""
    return RSS in m or CPU in m


def reading_from_metrics(t_s: float, m: dict[str, float]) -> Reading:
    g = process_gauges(m)
    return Reading(
        t_s=t_s,
        rss_bytes=g.get("memory_bytes"),
        cpu_seconds_total=g.get("cpu_seconds_total"),
        open_connections=g.get("open_connections"),
        open_fds=g.get("open_fds"),
    )


@dataclass(frozen=True)
class Scrape:
    """One GET of a /metrics URL. `status` is None when no answer came (`error` says why);
    `values` is empty unless the answer was a 200 in Prometheus text."""

    status: int | None
    values: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


async def scrape(
    session: aiohttp.ClientSession, url: str, *, timeout_s: float | None = None, max_bytes: int = MAX_SCRAPE_BYTES
) -> Scrape:
    """GET `url` and parse it; never raises but for cancellation (a target may be down).
    A body over `max_bytes` is no answer (error "ResponseTooLarge: ...")."""
    timeout = aiohttp.ClientTimeout(total=timeout_s) if timeout_s is not None else None
    try:
        async with session.get(url, timeout=timeout) as resp:
            text = (await read_body(resp, max_bytes)).decode("utf-8", "replace")  # the exposition format is UTF-8
            status = resp.status
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # no answer: the caller counts it, nothing more
        return Scrape(None, error=_why(exc))
    if status != 200:
        return Scrape(status, error=f"HTTP {status}")
    try:
        return Scrape(status, parse_prometheus(text))
    except Exception as exc:  # an answer, but not Prometheus text
        return Scrape(status, error=_why(exc))


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


class TargetProbe:
    """Samples every `interval_s` until cancelled; calls on_reading / on_failure."""

    def __init__(
        self,
        *,
        metrics_url: str | None = None,
        pid: int | None = None,
        interval_s: float = 1.0,
        timeout_s: float = 2.0,
        max_bytes: int = MAX_SCRAPE_BYTES,
    ) -> None:
        if metrics_url is None and pid is None:
            raise ValueError("a target probe needs a metrics URL or a PID")
        self._url = metrics_url
        self._pid = pid
        self._interval_s = interval_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_bytes = max_bytes
        self.source = metrics_url or f"pid {pid}"

    async def run(
        self, start_wall_ns: int, on_reading: Callable[[Reading], None], on_failure: Callable[[str], None]
    ) -> None:
        proc = psutil.Process(self._pid) if self._url is None and self._pid else None
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            k = 0
            while True:
                t_next = start_wall_ns / 1e9 + k * self._interval_s
                delay = t_next - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                k = max(k + 1, int((time.time() - start_wall_ns / 1e9) / self._interval_s) + 1)
                t_s = time.time() - start_wall_ns / 1e9
                if proc is not None:
                    try:
                        reading = _process_reading(proc, t_s)
                    except Exception as exc:  # a failed sample is counted, never fatal to the run
                        on_failure(_why(exc))
                        continue
                else:
                    assert self._url is not None
                    got = await scrape(session, self._url, max_bytes=self._max_bytes)
                    if not got.ok:
                        on_failure(got.error or f"HTTP {got.status}")
                        continue
                    reading = reading_from_metrics(t_s, got.values)
                on_reading(reading)


def _process_reading(proc: psutil.Process, t_s: float) -> Reading:
    with proc.oneshot():
        ct = proc.cpu_times()
        return Reading(
            t_s=t_s,
            rss_bytes=float(proc.memory_info().rss),
            cpu_seconds_total=ct.user + ct.system,
            open_connections=float(len(proc.net_connections(kind="tcp"))),
            open_fds=float(proc.num_fds()),
        )
