"""The loop of `horde monitor` (coordinator/workflows/monitor.py says what it does): probes,
one scrape of the target's /metrics per interval, the rolling window
(coordinator/analysis/monitor_window.py), history, alerts, webhook and dashboard data.

State that lives as long as the monitor is ``MonitorLoop``, with named steps: ``run``
(set up, schedule intervals), ``_close_interval`` (one interval), ``_finish`` (the flush).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import aiohttp

from horde.agents.aiohttp_engine import read_body
from horde.agents.http import make_engine
from horde.agents.samples import ErrorClass, classify_status
from horde.agents.spec import DEFAULT_LIMITS, RequestTemplate
from horde.coordinator.analysis.monitor_window import (
    ProbeInterval,
    exposition_view,
    stats_view,
    target_figures,
    target_series_view,
    window_stats,
)
from horde.coordinator.judge.alerts import (
    CRITICAL,
    ESCALATED,
    WARNING,
    AlertEngine,
    AlertEvent,
    AlertRule,
    format_value,
    metric_key,
    metrics_from_stats,
)
from horde.coordinator.measure.aggregate import Stats
from horde.coordinator.run.exposition import Exposition, json_safe, write_json_atomic
from horde.coordinator.run.target_probe import has_process_metrics, process_gauges, scrape
from horde.coordinator.scenario.redact import Redactor
from horde.coordinator.workflows.monitor_trends import TrendWatch

log = logging.getLogger("horde.monitor")
Progress = Callable[[str], None]

WEBHOOK_TIMEOUT_S = 5.0
WEBHOOK_REPLY_MAX_BYTES = 64 * 1024  # the reply is only checked for its status; a longer one is a failed post
SCRAPE_TIMEOUT_S = 2.0
MAX_KEPT_ALERTS = 1000  # MonitorResult.alerts keeps at most this many (the history keeps all)
SNAPSHOT_VERSION = 1
_STOP_POLL_S = 0.05


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


@dataclass
class MonitorConfig:
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
    redactor: Redactor = field(default_factory=Redactor)  # for the snapshot, webhooks and logs


class MonitorLoop:
    """target: what monitor.py resolved (source, timeout_s, connect_timeout_s)."""

    def __init__(
        self, cfg: MonitorConfig, target: Any, templates: tuple[RequestTemplate, ...], target_url: str, metrics_url: str
    ) -> None:
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
        self.rolling: list[deque[ProbeInterval]] = [deque(maxlen=n_windows) for _ in templates]
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
        self.trends: TrendWatch | None = None
        self.started_wall_s = 0.0
        self.interval_started_wall_s = 0.0
        self.exposition: Exposition | None = None
        self.http: aiohttp.ClientSession | None = None
        self.history: Any = None
        self.engine: Any = None
        self.running = False  # set up completely: from here on a stop flushes

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> MonitorResult:
        cfg = self.cfg
        stop_reason = "duration"
        try:
            await self._open()
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
        return MonitorResult(
            source=self.source,
            target_url=self.target_url,
            started_wall_s=self.started_wall_s,
            ended_wall_s=time.time(),
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

    async def _open(self) -> None:
        from horde.coordinator.workflows.history import History

        cfg = self.cfg
        self.history = History(cfg.history_path)
        self.trends = TrendWatch(self.history, self.source, cfg.interval_s)
        self.engine = make_engine(
            "aiohttp",
            self.templates,
            max_connections=len(self.templates) + 1,
            timeout_s=self.target.timeout_s,
            connect_timeout_s=self.target.connect_timeout_s,
            limits=_limits(self.target),
        )
        await self.engine.open()
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S))
        if cfg.prometheus_port is not None:
            self.exposition = Exposition(host=cfg.prometheus_host, port=cfg.prometheus_port)
            self.exposition.start()
        self.started_wall_s = self.interval_started_wall_s = time.time()
        self.trends.begin(self.started_wall_s)
        cfg.progress(
            f"horde monitor: {self.source} -> {self.target_url}, {len(self.templates)} endpoint(s) "
            f"every {cfg.interval_s:g}s"
            + (f" for {cfg.duration_s:g}s" if cfg.duration_s else " until stopped")
            + f"; history {cfg.history_path}"
            + (f"; metrics {self.exposition.url}" if self.exposition else "")
            + (f"; snapshot {cfg.snapshot_path}" if cfg.snapshot_path else "")
        )

    async def _finish(self, stop_reason: str) -> None:
        """Flush: the last probes, a last interval, closed alerts, webhooks, snapshot."""
        try:
            if self.in_flight:
                _done, pending = await asyncio.wait(set(self.in_flight.values()), timeout=self.cfg.grace_s)
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
                if self.trends is not None:
                    await self.trends.final(t_end)
                self._write_snapshot(t_end, done=True, stop_reason=stop_reason)
            if self.webhook_tasks:
                await asyncio.wait(set(self.webhook_tasks), timeout=WEBHOOK_TIMEOUT_S + 1.0)
            self.cfg.progress(
                f"horde monitor: {stop_reason} after {self.intervals} interval(s), {sum(self.probes_total)} probe(s), "
                f"{sum(self.errors_total)} error(s), {len(self.session_alerts)} alert(s)"
            )
        finally:
            await self._close()

    async def _close(self) -> None:
        tasks = list(self.in_flight.values()) + list(self.webhook_tasks)
        if self.trends is not None and self.trends.task is not None:
            tasks.append(self.trends.task)
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
        got = await scrape(self.http, self.metrics_url, timeout_s=min(SCRAPE_TIMEOUT_S, self.cfg.interval_s))
        if got.status is None:  # the target may be down: no reading this interval
            redact = self.cfg.redactor.text
            log.debug("scrape of %s failed: %s", redact(self.metrics_url), redact(str(got.error)))
            return
        if not has_process_metrics(got.values):
            if not self.target_metrics_seen:
                self.cfg.progress(
                    f"the target has no Prometheus /metrics ({self.metrics_url}: HTTP {got.status}); "
                    "target resources are not recorded"
                )
                self.metrics_url = None
            return
        self.target_metrics_seen = True
        self.target_now, self.last_cpu = target_figures(process_gauges(got.values), t_wall, self.last_cpu)

    # -- one interval ------------------------------------------------------------------------

    async def _close_interval(self, *, final: bool) -> None:
        t = time.time()
        await self._scrape(t)
        samples, self.completed = self.completed, []
        duration_s = max(1e-9, t - self.interval_started_wall_s)
        self.interval_started_wall_s = t
        per = [ProbeInterval(duration_s) for _ in self.templates]
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
            view = iv.view()
            if view is not None:
                metrics[metric_key("probe_latency_s", name)] = view["latency_s"]
                metrics[metric_key("probe_status", name)] = float(iv.last_status)
                interval_view[name] = view
        # Rolling statistics, computed once per interval for metrics, exposition and snapshot.
        self.window_stats = [window_stats(r) for r in self.rolling]
        self.window_all = window_stats([iv for r in self.rolling for iv in r], self.window_stats[0].duration_s)
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
        if self.trends is not None:
            self.trends.maybe_start(t)
        if self.exposition is not None:
            self.exposition.update(
                exposition_view(
                    self.names,
                    self.window_stats,
                    self.probes_total,
                    self.errors_total,
                    self.target_now,
                    self.alerts.active_counts(),
                )
            )
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
            event_data = {**event.to_dict(), "source": self.source, "time": _iso(event.t_s)}
            payload = json_safe(self.cfg.redactor.strings(event_data))
            task = asyncio.create_task(self._post(payload))
            self.webhook_tasks.add(task)
            task.add_done_callback(self.webhook_tasks.discard)

    async def _post(self, payload: dict[str, Any]) -> None:
        assert self.http is not None and self.cfg.webhook_url
        try:
            async with self.http.post(self.cfg.webhook_url, json=payload) as resp:
                await read_body(resp, WEBHOOK_REPLY_MAX_BYTES)
                if resp.status >= 300:
                    raise RuntimeError(f"HTTP {resp.status}")
            self.webhook_posts += 1
        except asyncio.CancelledError:
            self.webhook_failures += 1
            raise
        except Exception as exc:  # a webhook is best effort: logged and counted, never fatal
            self.webhook_failures += 1
            redact = self.cfg.redactor.text  # the URL often carries its token in the query
            log.warning("alert webhook %s failed: %s", redact(self.cfg.webhook_url), redact(str(exc)))

    # -- dashboard data ----------------------------------------------------------------------

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
            "totals": {
                name: {"probes": p, "errors": e} for name, p, e in zip(self.names, self.probes_total, self.errors_total)
            },
            "rolling": {
                "window_s": self.cfg.window_s,
                "endpoints": {name: stats_view(w) for name, w in zip(self.names, self.window_stats)},
                "all": stats_view(self.window_all),
                "target": target_series_view(self.target_rolling),
            },
            "alerts": {
                "active": self.alerts.active(),
                "counts": self.alerts.active_counts(),
                "fired_total": self.alerts.fired_total,
                "rules": [r.describe() for r in self.cfg.rules],
            },
        }
        if self.trends is not None and self.trends.latest is not None:
            snapshot["trends"] = self.trends.latest
        try:
            write_json_atomic(self.cfg.snapshot_path, json_safe(self.cfg.redactor.strings(snapshot)))
        except OSError as exc:  # a dashboard file is not worth stopping the monitor for
            log.warning("snapshot %s not written: %s", self.cfg.snapshot_path, exc)


def _rule_kind(rules: Sequence[AlertRule], name: str) -> str:
    return next((r.kind for r in rules if r.name == name), "number")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat()


def _limits(target: Any):
    """The response caps of the monitored scenario's `limits` (the defaults for bare URLs)."""
    scenario = getattr(target, "scenario", None)
    return scenario.limits.to_agent() if scenario is not None else DEFAULT_LIMITS
