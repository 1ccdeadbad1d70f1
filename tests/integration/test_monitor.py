"""`horde monitor` end to end against the automaton, on loopback: history, alerts, webhook,
Prometheus exposition, JSON snapshot, and a stop that loses nothing. No Ray."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from horde.automaton.launch import start_automaton
from horde.coordinator.judge.alerts import DEFAULT_RULES, AlertRule, metric_key
from horde.coordinator.scenario.load import parse_scenario
from horde.coordinator.workflows.history import History
from horde.coordinator.workflows.monitor import MonitorResult, run_monitor

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

INTERVAL_S = 0.5
# Fires on every probe (no loopback answer takes under 100 us), once per endpoint.
ALWAYS = AlertRule("always", "p95(latency)", warning=0.0001, endpoint="*")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def scenario_text(target: str) -> str:
    return f"""
name: monitor-test
target: {target}
requests:
  - {{name: health, path: /health, expect: [200]}}
  - {{name: agents, path: /api/agents, expect: [200]}}
  - {{name: missing, path: /no-such-page, expect: [200]}}
workload: {{model: open, stages: [{{duration: 1s, target: 1}}]}}
"""


@pytest.fixture(scope="module")
def automaton():
    proc = start_automaton()
    yield proc
    proc.stop()


class WebhookReceiver:
    """A local aiohttp server on its own thread that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.url = ""

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def hook(request: web.Request) -> web.Response:
            self.received.append(await request.json())
            return web.Response(status=204)

        async def start() -> web.AppRunner:
            app = web.Application()
            app.router.add_post("/hook", hook)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"http://127.0.0.1:{port}/hook"
            return runner

        self._runner = self._loop.run_until_complete(start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def in_thread(**kwargs) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def target() -> None:
        try:
            out["result"] = run_monitor(**kwargs)
        except BaseException as exc:  # re-raised by the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def wait_for(predicate, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def read_snapshot(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def finished(thread: threading.Thread, out: dict, timeout_s: float) -> MonitorResult:
    thread.join(timeout_s)
    assert not thread.is_alive(), "run_monitor did not return in time"
    if "error" in out:
        raise out["error"]
    return out["result"]


def last_records(alerts: list[dict]) -> dict[str, dict]:
    """The latest record of each alert id (a history may keep one row per event)."""
    latest: dict[str, dict] = {}
    for a in alerts:
        latest[a["id"]] = a
    return latest


def test_monitor_records_alerts_and_serves_dashboard_data(automaton, tmp_path):
    history_path = tmp_path / "history.sqlite"
    snapshot_path = tmp_path / "snapshot.json"
    loaded = parse_scenario(scenario_text(automaton.url))
    lines: list[str] = []
    with WebhookReceiver() as hook:
        started = time.time()
        thread, out = in_thread(
            scenario_or_urls=loaded,
            history_path=history_path,
            duration_s=5.0,
            interval_s=INTERVAL_S,
            rules=(*DEFAULT_RULES, ALWAYS),
            webhook_url=hook.url,
            prometheus_port=0,
            snapshot_path=snapshot_path,
            progress=lines.append,
        )
        # While it runs: the Prometheus endpoint on loopback serves the gauges.
        snap = wait_for(lambda: (s := read_snapshot(snapshot_path)) and s["intervals"] >= 2 and s)
        url = snap["exposition_url"]
        assert url.startswith("http://127.0.0.1:")
        text = _NO_PROXY.open(url, timeout=5).read().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        latency = {
            (s.labels["endpoint"], s.labels["quantile"]) for s in families["horde_monitor_latency_seconds"].samples
        }
        assert {("health", "0.5"), ("health", "0.99"), ("agents", "0.95"), ("missing", "0.9")} <= latency
        rates = {s.labels["endpoint"]: s.value for s in families["horde_monitor_error_rate"].samples}
        assert rates["health"] == 0.0 and rates["missing"] == 1.0
        (memory,) = families["horde_monitor_target_memory_bytes"].samples
        assert memory.value > 1e6
        assert "horde_monitor_target_cpu_ratio" in families
        active = {s.labels["level"]: s.value for s in families["horde_monitor_alerts_active"].samples}
        assert active["warning"] >= 3  # "always" on each of the three endpoints
        assert active["critical"] >= 1  # error_rate of "missing" is 100%

        result = finished(thread, out, 60)
        # Webhook posts are awaited before run_monitor returns.
        received = list(hook.received)
    ended = time.time()

    assert result.stop_reason == "duration"
    assert 8 <= result.intervals <= 11
    assert result.target_metrics and result.interrupted == 0
    assert result.probes >= 3 * 8 and result.errors >= 8  # /no-such-page answers 404
    assert result.webhook_failures == 0 and result.webhook_posts == len(received)

    history = History(str(history_path))
    try:
        for endpoint in ("health", "agents", "missing"):
            lat = history.metrics("monitor-test", metric_key("probe_latency_s", endpoint))
            assert len(lat) >= 8 and all(0 < v < 5 for _, v in lat)
            assert all(started <= t <= ended for t, _ in lat)
        errors = history.metrics("monitor-test", metric_key("error_rate", "missing"))
        assert errors and errors[-1][1] == 1.0
        assert len(history.metrics("monitor-test", "target_memory")) >= 8
        assert history.metrics("monitor-test", "target_cpu")
        assert history.metrics("monitor-test", "latency_p95_s")  # the rolling figure over all endpoints
        alerts = last_records(history.alerts("monitor-test"))
    finally:
        history.close()

    always = {a["endpoint"]: a for a in alerts.values() if a["rule_name"] == "always"}
    assert set(always) == {"health", "agents", "missing"}
    for a in always.values():
        assert a["level"] == "warning" and a["source"] == "monitor-test"
        assert started < a["start"] <= a["end"] <= ended
        assert a["peak"] > 0.0001 and a["closed_by"] == "finish"
    (err,) = [a for a in alerts.values() if a["rule"] == "error_rate[missing]" and a["level"] == "critical"]
    assert (err["endpoint"], err["level"], err["peak"]) == ("missing", "critical", 1.0)
    assert {a["id"] for a in result.alerts} == set(alerts)

    events = {(p["event"], p["alert"]["rule_name"], p["alert"]["endpoint"]) for p in received}
    for endpoint in ("health", "agents", "missing"):
        assert ("fired", "always", endpoint) in events
        assert ("resolved", "always", endpoint) in events
    assert ("fired", "error_rate", "missing") in events
    first = next(p for p in received if p["event"] == "fired")
    assert first["source"] == "monitor-test" and first["alert"]["start"] is not None and "time" in first

    snap = json.loads(snapshot_path.read_text())
    assert snap["done"] is True and snap["stop_reason"] == "duration"
    assert snap["alerts"]["active"] == [] and snap["alerts"]["fired_total"] == len(alerts)
    rolling = snap["rolling"]["endpoints"]["health"]
    assert rolling["probes"] >= 8 and rolling["error_rate"] == 0.0
    assert set(rolling["latency_s"]) >= {"p50", "p90", "p95", "p99", "mean", "stdev", "min", "max"}
    assert snap["rolling"]["target"]["target_memory"]["n"] >= 8
    assert snap["current"]["endpoints"]["missing"]["error"] == "http_4xx"
    if "trends" in snap:  # coordinator/analysis/trends.py present
        assert snap["trends"]["target_memory"]["verdict"] in ("rising", "falling", "flat", "inconclusive")
    assert any(line.startswith("ALERT fired") for line in lines)


def test_stop_event_flushes_the_last_interval_and_closes_alerts(tmp_path):
    """An embedded target, stopped early by stop_event; an unreachable webhook is not fatal."""
    history_path = tmp_path / "history.sqlite"
    snapshot_path = tmp_path / "snapshot.json"
    loaded = parse_scenario(scenario_text("embedded"))
    stop = threading.Event()
    thread, out = in_thread(
        scenario_or_urls=loaded,
        history_path=history_path,
        duration_s=60.0,
        interval_s=INTERVAL_S,
        rules=(ALWAYS,),
        webhook_url=f"http://127.0.0.1:{_free_port()}/hook",
        snapshot_path=snapshot_path,
        stop_event=stop,
    )
    snap = wait_for(lambda: (s := read_snapshot(snapshot_path)) and s["intervals"] >= 3 and s, timeout_s=30)
    assert snap["done"] is False and len(snap["alerts"]["active"]) == 3
    t_stop = time.time()
    stop.set()
    result = finished(thread, out, 30)
    assert time.time() - t_stop < 15  # stops promptly (a final flush, trends, webhook timeouts)

    assert result.stop_reason == "stopped"
    assert result.webhook_failures >= 3 and result.webhook_posts == 0  # logged, not fatal
    with pytest.raises(OSError):  # the embedded automaton was stopped with the monitor
        _NO_PROXY.open(result.target_url, timeout=2)

    history = History(str(history_path))
    try:
        requests = history.metrics("monitor-test", metric_key("probe_requests", "health"))
        alerts = last_records(history.alerts("monitor-test"))
    finally:
        history.close()
    # The last, partial interval was recorded after the stop.
    assert len(requests) == result.intervals
    last_t = requests[-1][0]
    assert t_stop <= last_t <= result.ended_wall_s
    # Every alert is closed, at the stop.
    assert len(alerts) == 3
    for a in alerts.values():
        assert a["end"] == pytest.approx(last_t, abs=1.0) and a["end"] >= t_stop
        assert a["closed_by"] == "finish"
    snap = json.loads(snapshot_path.read_text())
    assert snap["done"] is True and snap["stop_reason"] == "stopped" and snap["alerts"]["active"] == []
    assert snap["intervals"] == result.intervals


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bare_urls_and_signal_stop(automaton, tmp_path):
    """A list of URLs instead of a scenario; stop_on_signals turns SIGTERM into a stop."""
    import os
    import signal

    from horde.coordinator.workflows.monitor import stop_on_signals

    history_path = tmp_path / "history.sqlite"
    url = automaton.url + "/health"
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as stop:
        thread, out = in_thread(
            scenario_or_urls=[url], history_path=history_path, duration_s=30.0, interval_s=0.3, stop_event=stop
        )
        wait_for(lambda: history_path.exists() and _count(history_path, url) >= 2)
        os.kill(os.getpid(), signal.SIGTERM)  # the handler only sets the event
        result = finished(thread, out, 30)
    assert signal.getsignal(signal.SIGTERM) is before
    assert result.stop_reason == "stopped" and result.source == url and result.errors == 0
    assert result.alerts == []  # the default rules: a healthy automaton raises nothing
    with History(str(history_path)) as history:
        assert len(history.metrics(url, metric_key("probe_latency_s", "health"))) == result.intervals
        assert history.metrics(url, "target_memory")  # the URL's origin serves /metrics


def _count(history_path: Path, source: str) -> int:
    with History(str(history_path)) as history:
        return len(history.metrics(source, metric_key("probe_requests", "health")))


def test_an_embedded_target_is_started_through_the_run_seam_with_the_scenario_seed(monkeypatch, tmp_path):
    """`horde monitor` starts `target: embedded` as `horde run` does: the scenario's faults
    with its seed (the monitor's own start once dropped the seed)."""
    import horde.automaton.launch as launch

    started: list[dict] = []
    real_start = launch.start_automaton

    def recording_start(**kwargs):
        started.append(kwargs)
        return real_start(**kwargs)

    monkeypatch.setattr(launch, "start_automaton", recording_start)
    text = scenario_text("{embedded: {faults: {latency: 1ms}}}").replace("name: monitor-test", "name: seeded\nseed: 11")
    result = run_monitor(
        parse_scenario(text),
        history_path=tmp_path / "h.sqlite3",
        duration_s=INTERVAL_S,
        interval_s=INTERVAL_S,
        rules=DEFAULT_RULES,
    )
    [kwargs] = started
    assert kwargs["faults"]["seed"] == 11
    assert kwargs["faults"]["latency"]  # the scenario's own faults, not a default automaton
    assert result.target_metrics and result.probes >= 2  # it answered, and its /metrics was read


def test_one_scraper_reads_a_service_whatever_it_answers():
    """coordinator/run/target_probe.py's `scrape`, shared by `horde run` and `horde monitor`:
    figures from Prometheus text, an error (never an exception) otherwise."""
    from horde.coordinator.run.target_probe import has_process_metrics, process_gauges, reading_from_metrics, scrape

    texts = {
        "/metrics": "process_resident_memory_bytes 1048576\nprocess_cpu_seconds_total 2.5\n"
        'automaton_open_connections{kind="a"} 3\nautomaton_open_connections{kind="b"} 4\n',
        "/garbage": "this is { not prometheus\n",
    }

    async def handler(request: web.Request) -> web.Response:
        text = texts.get(request.path)
        return web.Response(text=text) if text is not None else web.Response(status=404)

    async def scrape_all() -> dict:
        app = web.Application()
        app.router.add_get("/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        import aiohttp

        try:
            async with aiohttp.ClientSession() as session:
                return {
                    path: await scrape(session, base + path, timeout_s=2.0)
                    for path in ("/metrics", "/garbage", "/none")
                } | {"down": await scrape(session, f"http://127.0.0.1:{_free_port()}/metrics", timeout_s=2.0)}
        finally:
            await runner.cleanup()

    got = asyncio.run(scrape_all())
    ok = got["/metrics"]
    assert ok.ok and has_process_metrics(ok.values)
    assert process_gauges(ok.values) == {"memory_bytes": 1048576.0, "cpu_seconds_total": 2.5, "open_connections": 7.0}
    reading = reading_from_metrics(1.0, ok.values)
    assert (reading.rss_bytes, reading.cpu_seconds_total, reading.open_connections, reading.open_fds) == (
        1048576.0,
        2.5,
        7.0,
        None,
    )
    assert not got["/garbage"].ok and got["/garbage"].status == 200 and got["/garbage"].values == {}
    assert got["/none"].status == 404 and got["/none"].error == "HTTP 404"
    assert got["down"].status is None and got["down"].error


def test_run_and_monitor_expose_through_the_one_server():
    from horde.coordinator.run.exposition import Exposition, ExpositionServer
    from horde.coordinator.run.prometheus import RunMetrics

    run_metrics, monitor = RunMetrics(), Exposition()
    assert isinstance(run_metrics, ExpositionServer) and isinstance(monitor, ExpositionServer)
    try:
        run_url, monitor_url = run_metrics.start(), monitor.start()
        run_metrics.update(
            {
                "total_requests": 10,
                "total_errors": 1,
                "rps": 5,
                "p99_ms": 20.0,
                "users": 0,
                "in_flight": 2,
                "planned": 5,
            }
        )
        monitor.update({"probes": {"health": 3}, "target": {"memory_bytes": 2048}})
        families = {}
        for url in (run_url, monitor_url):
            text = _NO_PROXY.open(url, timeout=5).read().decode()
            families |= {s.name: s for f in text_string_to_metric_families(text) for s in f.samples}
    finally:
        run_metrics.close()
        monitor.close()
    assert families["horde_run_requests_total"].value == 10
    assert families["horde_run_latency_seconds"].labels == {"quantile": "0.99"}
    assert families["horde_run_latency_seconds"].value == pytest.approx(0.020)
    assert families["horde_monitor_probes_total"].value == 3
    assert families["horde_monitor_target_memory_bytes"].value == 2048
