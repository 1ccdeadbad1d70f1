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

Here: what to probe and the entry point. The loop is coordinator/workflows/monitor_loop.py,
its rolling window coordinator/analysis/monitor_window.py (pure), its trend verdicts
coordinator/workflows/monitor_trends.py; the scrape is coordinator/run/target_probe.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from horde.agents.spec import RequestTemplate
from horde.coordinator import files
from horde.coordinator.judge.alerts import DEFAULT_RULES, AlertRule, parse_rules
from horde.coordinator.run.exposition import LOOPBACK
from horde.coordinator.run.target import start_target
from horde.coordinator.scenario.redact import Redactor, redact_url
from horde.coordinator.workflows.monitor_loop import MonitorConfig, MonitorLoop, MonitorResult, Progress

__all__ = ["MonitorResult", "run_monitor", "stop_on_signals"]

DEFAULT_INTERVAL_S = 5.0
DEFAULT_WINDOW_S = 60.0  # rolling statistics (and so the alert rules) look this far back
DEFAULT_GRACE_S = 5.0  # at stop, probes in flight get this long to finish


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
    if snapshot_path is not None:  # refused now, not as a warning each interval
        files.refuse_link(snapshot_path)
    target = _resolve_target(scenario_or_urls, target_url)
    if rules is None:
        rules = target.rules if target.rules is not None else DEFAULT_RULES
    config = MonitorConfig(
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
        progress=_redacting(progress or (lambda line: None), target.redactor),
        grace_s=float(grace_s),
        redactor=target.redactor,
    )

    started = None
    try:
        base_url, metrics_url = target.base_url, None
        if target.start_target:
            # The scenario's own target, through the seam `horde run` uses: the automaton
            # with the scenario's faults and seed, or a URL (which starts nothing).
            started = start_target(target.scenario)
            base_url, metrics_url = started.url, started.metrics_url
        templates = target.templates(base_url)
        # A target without a `metrics:` URL is tried at its origin's /metrics (dropped if absent).
        metrics_url = metrics_url or _origin(base_url or templates[0].url) + "/metrics"
        monitor = MonitorLoop(config, target, templates, base_url or templates[0].url, metrics_url)
        return _run_on_own_loop(monitor.run())
    finally:
        if started is not None:
            started.stop()


# --- what to probe ------------------------------------------------------------------------


@dataclass
class _Target:
    source: str
    base_url: str | None  # None for a URL list (each URL is absolute)
    scenario: Any = None
    urls: tuple[str, ...] = ()
    start_target: bool = False  # the scenario's own target is started (not replaced by target_url)
    timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    rules: tuple[AlertRule, ...] | None = None
    redactor: Redactor = field(default_factory=Redactor)  # the scenario's ${ENV} values, or none

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
    redactor = Redactor()
    if isinstance(x, LoadedScenario):
        scenario, redactor = x.scenario, x.redactor
    elif isinstance(x, Scenario):
        scenario = x
    elif isinstance(x, (str, os.PathLike)) and not _is_url(x):
        loaded = load_scenario(x)
        scenario, redactor = loaded.scenario, loaded.redactor
    if scenario is not None:
        return _Target(
            source=scenario.name,
            base_url=target_url,
            scenario=scenario,
            start_target=target_url is None,
            timeout_s=scenario.timeout,
            connect_timeout_s=scenario.connect_timeout,
            rules=_scenario_rules(scenario),
            redactor=redactor,
        )
    urls = (x,) if isinstance(x, str) else tuple(x)
    if target_url is not None:
        raise ValueError("target_url applies to a scenario; give the URLs themselves instead")
    if not urls or not all(_is_url(u) for u in urls):
        raise ValueError(f"expected a scenario (file, LoadedScenario, Scenario) or http(s) URLs, got {x!r}")
    urls = tuple(u.strip() for u in urls)
    origins = {_origin(u) for u in urls}
    source = urls[0] if len(urls) == 1 else (origins.pop() if len(origins) == 1 else ",".join(urls))
    # The source names the target in the history, the snapshot and webhooks: no credentials.
    return _Target(source=",".join(redact_url(u) for u in source.split(",")), base_url=None, urls=urls)


def _redacting(progress: Progress, redactor: Redactor) -> Progress:
    return lambda line: progress(redactor.text(line))


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


def _run_on_own_loop(coro: Any) -> Any:
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
