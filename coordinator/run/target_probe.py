"""Scrape a target's resources while a run goes: a Prometheus /metrics URL (any service that
exposes the standard process metrics), or a local process by PID (psutil)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import psutil
from prometheus_client.parser import text_string_to_metric_families

from horde.coordinator.measure.resources import Reading

# Standard process-collector names, plus the automaton's connection gauge.
_RSS = "process_resident_memory_bytes"
_CPU = "process_cpu_seconds_total"
_FDS = "process_open_fds"
_CONNECTIONS = ("automaton_open_connections", "http_server_open_connections", "nginx_connections_active")


def parse_prometheus(text: str) -> dict[str, float]:
    """Sum of each metric's samples (labels summed), by sample name."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name] = out.get(s.name, 0.0) + float(s.value)
    return out


def reading_from_metrics(t_s: float, m: dict[str, float]) -> Reading:
    conns = next((m[n] for n in _CONNECTIONS if n in m), None)
    return Reading(t_s=t_s, rss_bytes=m.get(_RSS), cpu_seconds_total=m.get(_CPU), open_connections=conns,
                   open_fds=m.get(_FDS))


class TargetProbe:
    """Samples every `interval_s` until cancelled; calls on_reading / on_failure."""

    def __init__(
        self,
        *,
        metrics_url: str | None = None,
        pid: int | None = None,
        interval_s: float = 1.0,
        timeout_s: float = 2.0,
    ) -> None:
        if metrics_url is None and pid is None:
            raise ValueError("a target probe needs a metrics URL or a PID")
        self._url = metrics_url
        self._pid = pid
        self._interval_s = interval_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.source = metrics_url or f"pid {pid}"

    async def run(self, start_wall_ns: int, on_reading: Callable[[Reading], None], on_failure: Callable[[str], None]) -> None:
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
                try:
                    if proc is not None:
                        with proc.oneshot():
                            ct = proc.cpu_times()
                            reading = Reading(t_s=t_s, rss_bytes=float(proc.memory_info().rss),
                                              cpu_seconds_total=ct.user + ct.system,
                                              open_connections=float(len(proc.net_connections(kind="tcp"))),
                                              open_fds=float(proc.num_fds()))
                    else:
                        async with session.get(self._url) as resp:
                            text = await resp.text()
                            if resp.status != 200:
                                raise RuntimeError(f"HTTP {resp.status}")
                        reading = reading_from_metrics(t_s, parse_prometheus(text))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a failed scrape is counted, never fatal to the run
                    on_failure(f"{type(exc).__name__}: {exc}"[:200])
                    continue
                on_reading(reading)
