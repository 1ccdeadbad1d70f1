"""`horde monitor`: a low-rate monitoring loop against a target, recorded to the history.

Every ``interval_s`` the loop sends one probe per request entry of the scenario (or one GET
per URL), scrapes the target's Prometheus ``/metrics`` when it has one (the automaton does:
resident memory, CPU seconds, open connections, open file descriptors), and closes the
interval:

1. per-endpoint interval figures (``probe_latency_s``, ``probe_status``, ``probe_requests``,
   ``probe_errors``) and rolling-window statistics over the last ``window_s`` (latency
   quantiles from horde.coordinator.measure.histogram, mean, stdev, min, max, error rate, probe rate:
   ``horde.coordinator.judge.alerts.metrics_from_stats`` over merged ``aggregate.Stats``), per endpoint
   and over all endpoints; the target's gauges and its CPU rate;
2. all of these recorded to the History (source = the scenario's name, or the URL);
3. the alert rules evaluated on them (coordinator/judge/alerts.py), each event recorded in the
   history, logged to ``progress`` and POSTed as JSON to the webhook;
4. the dashboard data refreshed: the Prometheus exposition (coordinator/run/exposition.py) and
   the JSON snapshot file (rewritten atomically).

It stops at ``duration_s`` or when ``stop_event`` is set (the CLI sets it from SIGINT /
SIGTERM: ``stop_on_signals``). Stopping loses nothing: probes in flight get ``grace_s`` to
finish and land in a last, partial interval, which is recorded and evaluated like the
others; alerts still firing are closed with ``end`` = the stop time; pending webhook posts
are awaited; the snapshot is written one last time with ``"done": true``.

Times: alert and history times are wall-clock seconds (epoch); intervals are scheduled on
the monotonic clock. All I/O runs on one event loop of its own (uvloop when installed);
``run_monitor`` blocks until the monitor ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import math
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from horde.agents.http import make_engine
from horde.agents.samples import ERROR_LABELS, ErrorClass, classify_status
from horde.agents.spec import RequestTemplate
from horde.coordinator.measure.aggregate import Stats
from horde.coordinator.judge.alerts import (
    CRITICAL,
    DEFAULT_RULES,
    ESCALATED,
    WARNING,
    AlertEngine,
    AlertEvent,
    AlertRule,
    format_value,
    metric_key,
    metrics_from_stats,
    parse_rules,
)
from horde.coordinator.run.exposition import LOOPBACK, Exposition, json_safe, write_json_atomic

log = logging.getLogger("horde.monitor")
Progress = Callable[[str], None]

DEFAULT_INTERVAL_S = 5.0
DEFAULT_WINDOW_S = 60.0  # rolling statistics (and so the alert rules) look this far back
DEFAULT_GRACE_S = 5.0  # at stop, probes in flight get this long to finish
WEBHOOK_TIMEOUT_S = 5.0
SCRAPE_TIMEOUT_S = 2.0
TREND_EVERY_S = 30.0  # trend statistics are recomputed at most this often (and at the end)
TREND_LOOKBACK_S = 24 * 3600.0  # over this much recorded history of the source
MAX_KEPT_ALERTS = 1000  # MonitorResult.alerts keeps at most this many (the history keeps all)
_STOP_POLL_S = 0.05

SNAPSHOT_VERSION = 1
ROLLING_QUANTILES = (("0.5", "p50"), ("0.9", "p90"), ("0.95", "p95"), ("0.99", "p99"))
# Target figures: metrics key (as resources.py and the alert rules spell them) -> source.
TARGET_KEYS = ("target_memory", "target_cpu", "target_connections", "target_fds")
# Metrics whose trend over the recorded history goes into the snapshot, with their unit.
TREND_METRICS = (
    ("target_memory", "bytes"),
    ("target_cpu", "cpu"),
    ("target_connections", "connections"),
    ("target_fds", "fds"),
    ("latency_p95_s", "s"),
    ("error_rate", "fraction"),
)

# Prometheus sample names read from the target's /metrics.
_RSS = "process_resident_memory_bytes"
_CPU = "process_cpu_seconds_total"
_FDS = "process_open_fds"
_CONNECTIONS = ("automaton_open_connections", "http_server_open_connections", "nginx_connections_active")


@dataclass
class MonitorResult:
    source: str
    target_url: str
    started_wall_s: float
    ended_wall_s: float
    stop_reason: str  # "duration" or "stopped"
    intervals: int
    probes: int
    errors: int
    interrupted: int  # probes still in flight after the grace period at stop (not counted)
    alerts: list[dict[str, Any]]  # alerts of this session, final state (closed), oldest first
    history_path: str
    snapshot_path: str | None = None
    exposition_url: str | None = None
    target_metrics: bool = False  # the target served Prometheus /metrics
    webhook_posts: int = 0
    webhook_failures: int = 0
    rules: list[dict[str, Any]] = field(default_factory=list)

    @property
    def critical(self) -> bool:
        """Any critical alert in this session (the CLI may map it to an exit code)."""
        return any(a.get("level") == "critical" for a in self.alerts)


@contextlib.contextmanager
def stop_on_signals(signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[threading.Event]:
    """A stop_event set by SIGINT / SIGTERM while the block runs (main thread only).

    A second signal after the first raises KeyboardInterrupt: the way out of a monitor
    whose final flush is stuck. The previous handlers come back on exit.
    """
    event = threading.Event()

    def handler(signum: int, frame: object) -> None:
        if event.is_set():
            raise KeyboardInterrupt
        event.set()

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield event
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_monitor(
    scenario_or_urls: Any,
    *,
    history_path: str | os.PathLike[str],
    duration_s: float | None = None,
    interval_s: float = DEFAULT_INTERVAL_S,
    rules: Sequence[AlertRule] | None = None,
    webhook_url: str | None = None,
    prometheus_port: int | None = None,
    prometheus_host: str = LOOPBACK,
    snapshot_path: str | os.PathLike[str] | None = None,
    stop_event: threading.Event | None = None,
    progress: Progress | None = None,
    window_s: float | None = None,
    target_url: str | None = None,
    grace_s: float = DEFAULT_GRACE_S,
) -> MonitorResult:
    """Monitor a target until `duration_s` passes or `stop_event` is set. Blocking.

    scenario_or_urls: a scenario file path, a LoadedScenario or Scenario (its request
    entries are probed against its target; `target: embedded` starts the automaton for the
    monitor's lifetime), or an http(s) URL or a list of them (one GET each).
    rules: the alert rules; None takes the scenario's `alerts` when it has them, else
    DEFAULT_RULES. prometheus_port: serve the exposition there (0: any free port) on
    `prometheus_host` (loopback unless told otherwise); None: no endpoint.
    target_url: probe this base URL instead of the scenario's target. window_s: the
    rolling window of the statistics the rules read (default: 60 s, or one interval if longer).
    """
    if not interval_s > 0:
        raise ValueError(f"interval_s must be positive, got {interval_s!r}")
    if duration_s is not None and not duration_s > 0:
        raise ValueError(f"duration_s must be positive, got {duration_s!r}")
    if window_s is None:
        window_s = max(DEFAULT_WINDOW_S, interval_s)
    if not window_s >= interval_s:
        raise ValueError(f"window_s ({window_s!r}) must be at least interval_s ({interval_s!r})")
    target = _resolve_target(scenario_or_urls, target_url)
    if rules is None:
        rules = target.rules if target.rules is not None else DEFAULT_RULES
    config = _Config(
        history_path=os.fspath(history_path),
        duration_s=duration_s,
        interval_s=float(interval_s),
        window_s=float(window_s),
        rules=tuple(rules),
        webhook_url=webhook_url,
        prometheus_port=prometheus_port,
        prometheus_host=prometheus_host,
        snapshot_path=os.fspath(snapshot_path) if snapshot_path is not None else None,
        stop_event=stop_event or threading.Event(),
        progress=progress or (lambda line: None),
        grace_s=float(grace_s),
    )

    automaton = None
    try:
        base_url = target.base_url
        if target.embedded is not None:
            from horde.automaton.launch import start_automaton

            # The scenario's faults, stall included, as `horde run` passes them.
            automaton = start_automaton(faults=target.embedded.faults_config())
            base_url = automaton.url
        templates = target.templates(base_url)
        metrics_url = _origin(base_url or templates[0].url) + "/metrics"
        monitor = _Monitor(config, target, templates, base_url or templates[0].url, metrics_url)
        return _run_on_own_loop(monitor.run())
    finally:
        if automaton is not None:
            automaton.stop()


# --- what to probe ------------------------------------------------------------------------


@dataclass
class _Target:
    source: str
    base_url: str | None  # None for a URL list (each URL is absolute)
    scenario: Any = None
    urls: tuple[str, ...] = ()
    embedded: Any = None  # the scenario's EmbeddedTarget when it is `embedded`
    timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    rules: tuple[AlertRule, ...] | None = None

    def templates(self, base_url: str | None) -> tuple[RequestTemplate, ...]:
        if self.scenario is not None:
            from horde.coordinator.plan import build_templates

            assert base_url is not None
            return build_templates(self.scenario, base_url, None)
        names = _url_names(self.urls)
        return tuple(RequestTemplate(name=n, method="GET", url=u) for n, u in zip(names, self.urls))


def _is_url(x: Any) -> bool:
    return isinstance(x, str) and x.strip().lower().startswith(("http://", "https://"))


def _resolve_target(x: Any, target_url: str | None) -> _Target:
    from horde.coordinator.scenario.load import LoadedScenario, load_scenario
    from horde.coordinator.scenario.models import Scenario

    scenario = None
    if isinstance(x, LoadedScenario):
        scenario = x.scenario
    elif isinstance(x, Scenario):
        scenario = x
    elif isinstance(x, (str, os.PathLike)) and not _is_url(x):
        scenario = load_scenario(x).scenario
    if scenario is not None:
        embedded = None
        base = target_url
        if base is None:
            if scenario.target.is_embedded:
                embedded = scenario.target.embedded
            else:
                base = scenario.target.url
        return _Target(
            source=scenario.name,
            base_url=base,
            scenario=scenario,
            embedded=embedded,
            timeout_s=scenario.timeout,
            connect_timeout_s=scenario.connect_timeout,
            rules=_scenario_rules(scenario),
        )
    urls = (x,) if isinstance(x, str) else tuple(x)
    if target_url is not None:
        raise ValueError("target_url applies to a scenario; give the URLs themselves instead")
    if not urls or not all(_is_url(u) for u in urls):
        raise ValueError(f"expected a scenario (file, LoadedScenario, Scenario) or http(s) URLs, got {x!r}")
    urls = tuple(u.strip() for u in urls)
    origins = {_origin(u) for u in urls}
    source = urls[0] if len(urls) == 1 else (origins.pop() if len(origins) == 1 else ",".join(urls))
    return _Target(source=source, base_url=None, urls=urls)


def _scenario_rules(scenario: Any) -> tuple[AlertRule, ...] | None:
    """The scenario's `alerts:` section, when the scenario model has one."""
    alerts = getattr(scenario, "alerts", None)
    if alerts is None:
        return None
    if all(isinstance(r, AlertRule) for r in alerts):
        return tuple(alerts)
    return parse_rules(list(alerts), endpoints=[r.name for r in scenario.requests])


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _url_names(urls: Sequence[str]) -> list[str]:
    """Endpoint names for bare URLs: the path as a name ("/api/x" -> "api_x"), unique."""
    names: list[str] = []
    for u in urls:
        parts = urlsplit(u)
        raw = (parts.path.strip("/") or parts.hostname or "root").replace("/", "_")
        name = "".join(c if c.isalnum() or c in "_.-" else "_" for c in raw)[:60] or "root"
        candidate, n = name, 2
        while candidate in names:
            candidate, n = f"{name}-{n}", n + 1
        names.append(candidate)
    return names


# --- the loop -----------------------------------------------------------------------------


@dataclass
class _Config:
    history_path: str
    duration_s: float | None
    interval_s: float
    window_s: float
    rules: tuple[AlertRule, ...]
    webhook_url: str | None
    prometheus_port: int | None
    prometheus_host: str
    snapshot_path: str | None
    stop_event: threading.Event
    progress: Progress
    grace_s: float


def _run_on_own_loop(coro: Any) -> Any:
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


def _parse_prometheus(text: str) -> dict[str, float]:
    """Each sample name's value, summed over its label sets."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + float(s.value)
    return out


class _Monitor:
    def __init__(self, cfg: _Config, target: _Target, templates: tuple[RequestTemplate, ...],
                 target_url: str, metrics_url: str) -> None:
        self.cfg = cfg
        self.target = target
        self.templates = templates
        self.names = tuple(t.name for t in templates)
        self.target_url = target_url
        self.metrics_url: str | None = metrics_url
        self.source = target.source
        self.alerts = AlertEngine(cfg.rules, source=self.source)
        self.completed: list[tuple[int, int, int, int]] = []  # (endpoint, latency ns, status, error class)
        self.in_flight: dict[int, asyncio.Task[None]] = {}
        n_windows = max(1, math.ceil(cfg.window_s / cfg.interval_s - 1e-9))
        self.rolling: list[deque[_Interval]] = [deque(maxlen=n_windows) for _ in templates]
        self.window_stats: list[Stats] = [Stats() for _ in templates]
        self.window_all = Stats()
        self.target_rolling: deque[tuple[float, dict[str, float]]] = deque(maxlen=n_windows)
        self.last_interval: dict[str, Any] = {}
        self.target_now: dict[str, float] = {}
        self.last_cpu: tuple[float, float] | None = None  # (wall s, cpu seconds total)
        self.target_metrics_seen = False
        self.probes_total = [0] * len(templates)
        self.errors_total = [0] * len(templates)
        self.intervals = 0
        self.interrupted = 0
        self.session_alerts: dict[str, dict[str, Any]] = {}
        self.webhook_tasks: set[asyncio.Task[None]] = set()
        self.webhook_posts = 0
        self.webhook_failures = 0
        self.trends: dict[str, Any] | None = None
        self.trends_at = math.inf  # set at the start: the first trend comes TREND_EVERY_S in
        self.trend_task: asyncio.Task[None] | None = None
        self.trends_available = importlib.util.find_spec("horde.coordinator.analysis.trends") is not None
        self.started_wall_s = 0.0
        self.interval_started_wall_s = 0.0
        self.exposition: Exposition | None = None
        self.http: aiohttp.ClientSession | None = None
        self.history: Any = None
        self.engine: Any = None
        self.running = False  # set up completely: from here on a stop flushes

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> MonitorResult:
        from horde.coordinator.workflows.history import History

        cfg = self.cfg
        stop_reason = "duration"
        try:
            self.history = History(cfg.history_path)
            self.engine = make_engine(
                "aiohttp", self.templates, max_connections=len(self.templates) + 1,
                timeout_s=self.target.timeout_s, connect_timeout_s=self.target.connect_timeout_s,
            )
            await self.engine.open()
            self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S))
            if cfg.prometheus_port is not None:
                self.exposition = Exposition(host=cfg.prometheus_host, port=cfg.prometheus_port)
                self.exposition.start()
            self.started_wall_s = self.interval_started_wall_s = self.trends_at = time.time()
            cfg.progress(
                f"horde monitor: {self.source} -> {self.target_url}, {len(self.templates)} endpoint(s) "
                f"every {cfg.interval_s:g}s"
                + (f" for {cfg.duration_s:g}s" if cfg.duration_s else " until stopped")
                + f"; history {cfg.history_path}"
                + (f"; metrics {self.exposition.url}" if self.exposition else "")
                + (f"; snapshot {cfg.snapshot_path}" if cfg.snapshot_path else "")
            )
            await self._scrape(time.time())  # a first CPU reading, so the first interval has a rate
            self.running = True
            t0 = time.monotonic()
            end = t0 + cfg.duration_s if cfg.duration_s else math.inf
            k = 0
            while True:
                self._launch_probes()
                k += 1
                deadline = min(t0 + k * cfg.interval_s, end)
                if await self._sleep_until(deadline):
                    stop_reason = "stopped"
                    break
                await self._close_interval(final=False)
                now = time.monotonic()
                if now >= end - 1e-6:
                    break
                k = max(k, int((now - t0) / cfg.interval_s))  # a slow close skips ticks, never bunches them
        finally:
            await self._finish(stop_reason)
        ended = time.time()
        return MonitorResult(
            source=self.source,
            target_url=self.target_url,
            started_wall_s=self.started_wall_s,
            ended_wall_s=ended,
            stop_reason=stop_reason,
            intervals=self.intervals,
            probes=sum(self.probes_total),
            errors=sum(self.errors_total),
            interrupted=self.interrupted,
            alerts=sorted(self.session_alerts.values(), key=lambda a: (a["start"], a["id"])),
            history_path=cfg.history_path,
            snapshot_path=cfg.snapshot_path,
            exposition_url=self.exposition.url if self.exposition else None,
            target_metrics=self.target_metrics_seen,
            webhook_posts=self.webhook_posts,
            webhook_failures=self.webhook_failures,
            rules=[r.describe() for r in self.cfg.rules],
        )

    async def _finish(self, stop_reason: str) -> None:
        """Flush: the last probes, a last interval, closed alerts, webhooks, snapshot."""
        try:
            if self.in_flight:
                done, pending = await asyncio.wait(set(self.in_flight.values()), timeout=self.cfg.grace_s)
                for task in pending:
                    task.cancel()
                self.interrupted += len(pending)
                await asyncio.gather(*pending, return_exceptions=True)
            ready = self.running
            if ready and (stop_reason == "stopped" or self.completed):
                await self._close_interval(final=True)
            t_end = time.time()
            if ready:
                for event in self.alerts.finish(t_end):
                    self._alert_event(event)
                await self._final_trends(t_end)
                self._write_snapshot(t_end, done=True, stop_reason=stop_reason)
            if self.webhook_tasks:
                await asyncio.wait(set(self.webhook_tasks), timeout=WEBHOOK_TIMEOUT_S + 1.0)
            self.cfg.progress(
                f"horde monitor: {stop_reason} after {self.intervals} interval(s), {sum(self.probes_total)} probe(s), "
                f"{sum(self.errors_total)} error(s), {len(self.session_alerts)} alert(s)"
            )
        finally:
            tasks = list(self.in_flight.values()) + list(self.webhook_tasks)
            if self.trend_task is not None:
                tasks.append(self.trend_task)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.engine is not None:
                await self.engine.close()
            if self.http is not None:
                await self.http.close()
            if self.exposition is not None:
                self.exposition.close()
            if self.history is not None:
                self.history.close()

    async def _sleep_until(self, deadline: float) -> bool:
        """Sleep until the monotonic deadline; True when stopped first."""
        stop = self.cfg.stop_event
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(remaining, _STOP_POLL_S))
        return True

    # -- probing ---------------------------------------------------------------------------

    def _launch_probes(self) -> None:
        # One probe per endpoint at a time: a stalled endpoint is not probed again until its
        # probe ends (by response or timeout), so a slow target never piles probes up.
        for i in range(len(self.templates)):
            if i not in self.in_flight:
                self.in_flight[i] = asyncio.create_task(self._probe(i))

    async def _probe(self, i: int) -> None:
        try:
            t0 = time.perf_counter_ns()
            status, _, error = await self.engine.request(i)
            latency_ns = time.perf_counter_ns() - t0
            if error == ErrorClass.OK and status:
                error = classify_status(status, self.templates[i].expect)
            self.completed.append((i, latency_ns, status, int(error)))
        finally:
            self.in_flight.pop(i, None)

    async def _scrape(self, t_wall: float) -> None:
        """Read the target's /metrics into target_now (nothing when it has none)."""
        self.target_now = {}
        if self.metrics_url is None or self.http is None:
            return
        try:
            async with self.http.get(self.metrics_url, timeout=aiohttp.ClientTimeout(
                    total=min(SCRAPE_TIMEOUT_S, self.cfg.interval_s))) as resp:
                text = await resp.text()
                status = resp.status
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the target may be down: no reading this interval
            log.debug("scrape of %s failed: %s", self.metrics_url, exc)
            return
        values: dict[str, float] = {}
        if status == 200:
            try:
                values = _parse_prometheus(text)
            except Exception as exc:  # not Prometheus text
                log.debug("scrape of %s unparseable: %s", self.metrics_url, exc)
        if _RSS not in values and _CPU not in values:
            if not self.target_metrics_seen:
                self.cfg.progress(f"the target has no Prometheus /metrics ({self.metrics_url}: HTTP {status}); "
                                  "target resources are not recorded")
                self.metrics_url = None
            return
        self.target_metrics_seen = True
        now: dict[str, float] = {}
        if _RSS in values:
            now["target_memory"] = values[_RSS]
        if _FDS in values:
            now["target_fds"] = values[_FDS]
        conns = next((values[n] for n in _CONNECTIONS if n in values), None)
        if conns is not None:
            now["target_connections"] = conns
        if _CPU in values:
            cpu = values[_CPU]
            if self.last_cpu is not None and t_wall > self.last_cpu[0] and cpu >= self.last_cpu[1]:
                now["target_cpu"] = (cpu - self.last_cpu[1]) / (t_wall - self.last_cpu[0])
            self.last_cpu = (t_wall, cpu)
        self.target_now = now

    # -- one interval ------------------------------------------------------------------------

    async def _close_interval(self, *, final: bool) -> None:
        t = time.time()
        await self._scrape(t)
        samples, self.completed = self.completed, []
        duration_s = max(1e-9, t - self.interval_started_wall_s)
        self.interval_started_wall_s = t
        per = [_Interval(duration_s) for _ in self.templates]
        for i, latency_ns, status, error in samples:
            per[i].add(latency_ns, status, error)
        metrics: dict[str, float] = {}
        interval_view: dict[str, Any] = {}
        for i, name in enumerate(self.names):
            iv = per[i]
            self.rolling[i].append(iv)
            self.probes_total[i] += len(iv.latencies_ns)
            self.errors_total[i] += iv.errors
            metrics[metric_key("probe_requests", name)] = float(len(iv.latencies_ns))
            metrics[metric_key("probe_errors", name)] = float(iv.errors)
            if iv.latencies_ns:
                mean_s = sum(iv.latencies_ns) / len(iv.latencies_ns) / 1e9
                metrics[metric_key("probe_latency_s", name)] = mean_s
                metrics[metric_key("probe_status", name)] = float(iv.last_status)
                interval_view[name] = {
                    "latency_s": mean_s,
                    "status": iv.last_status,
                    "error": ERROR_LABELS[iv.last_error] if iv.last_error else None,
                    "requests": len(iv.latencies_ns),
                    "errors": iv.errors,
                }
        # Rolling statistics, computed once per interval for metrics, exposition and snapshot.
        self.window_stats = [_window_stats(r) for r in self.rolling]
        self.window_all = _window_stats([iv for r in self.rolling for iv in r], self.window_stats[0].duration_s)
        for name, window in zip(self.names, self.window_stats):
            metrics.update(metrics_from_stats(window, name, series=("latency",)))
        metrics.update(metrics_from_stats(self.window_all, None, series=("latency",)))
        metrics.update(self.target_now)
        if self.target_now:
            self.target_rolling.append((t, dict(self.target_now)))
        self.last_interval = interval_view
        self.intervals += 1

        self.history.record_metrics(self.source, t, metrics)
        for event in self.alerts.observe(t, metrics):
            self._alert_event(event)
        self._start_trends(t)
        self._update_exposition()
        self._write_snapshot(t, done=False, stop_reason=None)
        self._progress_line(final)

    def _progress_line(self, final: bool) -> None:
        parts = []
        for name in self.names:
            v = self.last_interval.get(name)
            if v is None:
                parts.append(f"{name} -")
            else:
                parts.append(f"{name} {v['latency_s'] * 1e3:.1f}ms {v['error'] or v['status']}")
        tn = self.target_now
        if "target_memory" in tn:
            parts.append(f"mem {format_value(tn['target_memory'], 'bytes')}")
        if "target_cpu" in tn:
            parts.append(f"cpu {tn['target_cpu'] * 100:.0f}%")
        counts = self.alerts.active_counts()
        if any(counts.values()):
            parts.append(f"alerts {counts['warning']}w/{counts['critical']}c")
        self.cfg.progress(("last " if final else "") + "  ".join(parts))

    # -- alerts ------------------------------------------------------------------------------

    def _alert_event(self, event: AlertEvent) -> None:
        alert = json_safe(event.alert)
        if event.kind == ESCALATED:
            # The history keys an alert by (source, rule, level, start): the warning row it
            # had so far ends here, superseded by the critical row recorded next.
            self.history.record_alert({**alert, "level": WARNING, "end": event.t_s, "superseded_by": CRITICAL})
        self.history.record_alert(alert)
        if alert["id"] in self.session_alerts or len(self.session_alerts) < MAX_KEPT_ALERTS:
            self.session_alerts[alert["id"]] = alert
        value = alert.get("peak")
        shown = format_value(value, _rule_kind(self.cfg.rules, alert["rule_name"])) if value is not None else "?"
        self.cfg.progress(f"ALERT {event.kind} {alert['level']}: {alert['text']} (peak {shown})")
        if self.cfg.webhook_url:
            payload = json_safe({**event.to_dict(), "source": self.source,
                                 "time": datetime.fromtimestamp(event.t_s, timezone.utc).isoformat()})
            task = asyncio.create_task(self._post(payload))
            self.webhook_tasks.add(task)
            task.add_done_callback(self.webhook_tasks.discard)

    async def _post(self, payload: dict[str, Any]) -> None:
        assert self.http is not None and self.cfg.webhook_url
        try:
            async with self.http.post(self.cfg.webhook_url, json=payload) as resp:
                await resp.read()
                if resp.status >= 300:
                    raise RuntimeError(f"HTTP {resp.status}")
            self.webhook_posts += 1
        except asyncio.CancelledError:
            self.webhook_failures += 1
            raise
        except Exception as exc:  # a webhook is best effort: logged and counted, never fatal
            self.webhook_failures += 1
            log.warning("alert webhook %s failed: %s", self.cfg.webhook_url, exc)

    # -- dashboard data ----------------------------------------------------------------------

    def _rolling_stats(self) -> dict[str, Any]:
        target: dict[str, Any] = {}
        for key in TARGET_KEYS:
            points = [(t, v[key]) for t, v in self.target_rolling if key in v]
            if points:
                target[key] = _series_view(points)
        return {
            "window_s": self.cfg.window_s,
            "endpoints": {name: _stats_view(w) for name, w in zip(self.names, self.window_stats)},
            "all": _stats_view(self.window_all),
            "target": target,
        }

    def _update_exposition(self) -> None:
        if self.exposition is None:
            return
        latency, error_rate = {}, {}
        for name, window in zip(self.names, self.window_stats):
            if window.latency.count:
                values = window.latency.quantiles([float(q) for q, _ in ROLLING_QUANTILES])
                latency[name] = {q: values[float(q)] / 1e9 for q, _ in ROLLING_QUANTILES if values[float(q)] is not None}
            if window.requests:
                error_rate[name] = window.errors / window.requests
        tn = self.target_now
        self.exposition.update({
            "latency": latency,
            "error_rate": error_rate,
            "probes": dict(zip(self.names, self.probes_total)),
            "probe_errors": dict(zip(self.names, self.errors_total)),
            "target": {k: v for k, v in (("memory_bytes", tn.get("target_memory")),
                                         ("cpu_ratio", tn.get("target_cpu")),
                                         ("open_connections", tn.get("target_connections"))) if v is not None},
            "alerts_active": self.alerts.active_counts(),
        })

    def _write_snapshot(self, t: float, *, done: bool, stop_reason: str | None) -> None:
        if self.cfg.snapshot_path is None:
            return
        snapshot: dict[str, Any] = {
            "version": SNAPSHOT_VERSION,
            "source": self.source,
            "target": self.target_url,
            "started": _iso(self.started_wall_s),
            "updated": _iso(t),
            "t_wall_s": t,
            "interval_s": self.cfg.interval_s,
            "intervals": self.intervals,
            "done": done,
            "stop_reason": stop_reason,
            "history": self.cfg.history_path,
            "exposition_url": self.exposition.url if self.exposition else None,
            "current": {"endpoints": self.last_interval, "target": dict(self.target_now)},
            "totals": {name: {"probes": p, "errors": e}
                       for name, p, e in zip(self.names, self.probes_total, self.errors_total)},
            "rolling": self._rolling_stats(),
            "alerts": {
                "active": self.alerts.active(),
                "counts": self.alerts.active_counts(),
                "fired_total": self.alerts.fired_total,
                "rules": [r.describe() for r in self.cfg.rules],
            },
        }
        if self.trends is not None:
            snapshot["trends"] = self.trends
        try:
            write_json_atomic(self.cfg.snapshot_path, json_safe(snapshot))
        except OSError as exc:  # a dashboard file is not worth stopping the monitor for
            log.warning("snapshot %s not written: %s", self.cfg.snapshot_path, exc)

    def _start_trends(self, t: float) -> None:
        """Recompute the trend verdicts in a worker thread, at most every TREND_EVERY_S.

        In the background because the first use imports scipy.stats (seconds) and Theil-Sen
        is quadratic in the points: the intervals must keep their schedule meanwhile.
        """
        if not self.trends_available or t - self.trends_at < max(TREND_EVERY_S, self.cfg.interval_s):
            return
        if self.trend_task is not None and not self.trend_task.done():
            return
        self.trends_at = t
        self.trend_task = asyncio.create_task(self._trends(t))

    async def _trends(self, t: float) -> None:
        series = {name: self.history.metrics(self.source, name, t - TREND_LOOKBACK_S) for name, _ in TREND_METRICS}
        result = await asyncio.to_thread(_trend_verdicts, series)
        if result is not None:
            self.trends = result

    async def _final_trends(self, t: float) -> None:
        if not self.trends_available:
            return
        if self.trend_task is not None:
            await asyncio.gather(self.trend_task, return_exceptions=True)
        try:
            await self._trends(t)
        except Exception as exc:  # the history read failed: the snapshot goes without trends
            log.warning("trends not computed: %s", exc)


def _trend_verdicts(series: dict[str, list[tuple[float, float]]]) -> dict[str, Any] | None:
    """Trend verdicts per metric (and the leak verdict of target memory), when
    horde.coordinator.analysis.trends exists."""
    try:
        from horde.coordinator.analysis import trends as trends_module
    except ImportError:
        return None
    out: dict[str, Any] = {}
    for name, unit in TREND_METRICS:
        points = series.get(name) or []
        if not points:
            continue
        ts = [p[0] for p in points]
        ys = [p[1] for p in points]
        try:
            out[name] = _as_dict(trends_module.trend(ts, ys, unit=unit, per="hour"))
            if name == "target_memory" and hasattr(trends_module, "leak_verdict"):
                out["target_memory_leak"] = _as_dict(trends_module.leak_verdict(ts, ys))
        except Exception as exc:  # a statistics failure must not stop the monitor
            log.warning("trend of %s failed: %s", name, exc)
    return out


class _Interval:
    """One endpoint's probes in one interval: a few raw values (probes are one per interval
    per endpoint), so a rolling window costs bytes, not a histogram per interval."""

    __slots__ = ("duration_s", "latencies_ns", "error_classes", "errors", "last_status", "last_error")

    def __init__(self, duration_s: float) -> None:
        self.duration_s = duration_s
        self.latencies_ns: list[int] = []
        self.error_classes: list[int] = []
        self.errors = 0
        self.last_status = 0
        self.last_error = 0

    def add(self, latency_ns: int, status: int, error: int) -> None:
        self.latencies_ns.append(latency_ns)
        self.error_classes.append(error)
        self.errors += error != 0
        self.last_status, self.last_error = status, error


def _window_stats(intervals: Iterable[_Interval], duration_s: float | None = None) -> Stats:
    """aggregate.Stats of a rolling window (latency histogram from horde.coordinator.measure.histogram)."""
    intervals = list(intervals)
    s = Stats(duration_s if duration_s is not None else sum(iv.duration_s for iv in intervals))
    latencies = [v for iv in intervals for v in iv.latencies_ns]
    classes = [c for iv in intervals for c in iv.error_classes]
    s.requests = len(latencies)
    if latencies:
        s.latency.record_many(np.asarray(latencies, dtype=np.int64))
        by_class = np.bincount(np.asarray(classes, dtype=np.int64), minlength=len(s.errors_by_class))
        s.errors_by_class += by_class[: len(s.errors_by_class)]
        s.errors = int(s.requests - by_class[0])
    return s


def _stats_view(s: Stats) -> dict[str, Any]:
    """Rolling statistics of one scope, seconds and fractions."""
    out: dict[str, Any] = {
        "probes": s.requests,
        "errors": s.errors,
        "error_rate": s.errors / s.requests if s.requests else None,
        "rate_per_s": s.requests / s.duration_s if s.duration_s > 0 else None,
        "errors_by_class": {ERROR_LABELS[i]: int(n) for i, n in enumerate(s.errors_by_class.tolist()) if n},
    }
    h = s.latency
    if h.count:
        values = h.quantiles([float(q) for q, _ in ROLLING_QUANTILES])
        latency = {label: values[float(q)] / 1e9 for q, label in ROLLING_QUANTILES if values[float(q)] is not None}
        mean, stdev = h.mean_ns(), h.stdev_ns()
        latency.update(
            mean=None if mean is None else mean / 1e9,
            stdev=None if stdev is None else stdev / 1e9,
            min=None if h.min_ns is None else h.min_ns / 1e9,
            max=None if h.max_ns is None else h.max_ns / 1e9,
        )
        out["latency_s"] = latency
    return out


def _series_view(points: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """Mean, deviation, range and rate of change of a gauge over the window."""
    ys = [v for _, v in points]
    n = len(ys)
    mean = sum(ys) / n
    stdev = math.sqrt(sum((y - mean) ** 2 for y in ys) / n)
    span = points[-1][0] - points[0][0]
    return {
        "last": ys[-1],
        "mean": mean,
        "stdev": stdev,
        "min": min(ys),
        "max": max(ys),
        "n": n,
        "change_per_s": (ys[-1] - ys[0]) / span if span > 0 else None,
    }


def _rule_kind(rules: Sequence[AlertRule], name: str) -> str:
    return next((r.kind for r in rules if r.name == name), "number")


def _as_dict(x: Any) -> Any:
    if hasattr(x, "to_dict"):
        return x.to_dict()
    if hasattr(x, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(x)
    return x


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat()
