"""Continuous monitoring: `horde monitor` (horde.coordinator.workflows.monitor.run_monitor) against the
automaton, with faults switched on and off at runtime through its admin endpoint.

- the default alert rules stay quiet on a healthy target, while every metric is recorded;
- an injected error rate fires the error-rate alert (warning, escalating to critical) on
  the faulty endpoint only, with its start, end and peak in the history;
- a latency that grows while the monitor runs is found as a rising trend in the recorded
  history, and a steady endpoint beside it is not.

No Ray: the monitor is one process with its own event loop. Intervals of 0.25 s and a 2 s
rolling window stand in for the defaults (5 s and 60 s) so that each test takes seconds.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from horde.coordinator.analysis.trends import trend
from horde.coordinator.judge.alerts import DEFAULT_RULES, metric_key
from horde.coordinator.scenario.load import load_scenario
from horde.coordinator.workflows.history import History
from horde.coordinator.workflows.monitor import MonitorResult, run_monitor

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "monitor-automaton.yaml"
SOURCE = "monitor-automaton"
INTERVAL_S = 0.25
WINDOW_S = 2.0


@pytest.fixture(scope="module")
def automaton():
    from horde.automaton.launch import start_automaton

    proc = start_automaton()
    yield proc
    proc.stop()


@pytest.fixture
def healthy(automaton):
    """The module's automaton with no faults, and none left behind by the test."""
    automaton.set_faults({})
    yield automaton
    automaton.set_faults({})


def monitor_in_thread(url: str, history: Path, **kw: Any) -> tuple[threading.Thread, dict[str, Any], threading.Event]:
    stop = threading.Event()
    out: dict[str, Any] = {}

    def body() -> None:
        try:
            out["result"] = run_monitor(
                load_scenario(SCENARIO),
                history_path=history,
                interval_s=INTERVAL_S,
                window_s=WINDOW_S,
                target_url=url,
                stop_event=stop,
                **kw,
            )
        except BaseException as exc:  # re-raised by the test
            out["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, out, stop


def finished(thread: threading.Thread, out: dict[str, Any], timeout_s: float = 30.0) -> MonitorResult:
    thread.join(timeout_s)
    assert not thread.is_alive(), "run_monitor did not return in time"
    if "error" in out:
        raise out["error"]
    return out["result"]


def test_default_rules_stay_quiet_on_a_healthy_target(healthy, tmp_path, report) -> None:
    history, snapshot = tmp_path / "history.sqlite3", tmp_path / "monitor.json"
    result = run_monitor(
        load_scenario(SCENARIO),
        history_path=history,
        duration_s=4.0,
        interval_s=INTERVAL_S,
        window_s=WINDOW_S,
        target_url=healthy.url,
        snapshot_path=snapshot,
    )
    snap = json.loads(snapshot.read_text())
    rolling = snap["rolling"]["endpoints"]
    report(
        healthy_monitor={
            "intervals": result.intervals,
            "probes": result.probes,
            "errors": result.errors,
            "alerts": len(result.alerts),
            "p95_ms": {e: round(v["latency_s"]["p95"] * 1e3, 2) for e, v in rolling.items()},
            "target_memory_mb": round(snap["current"]["target"]["target_memory"] / 1e6, 1),
        }
    )
    # The scenario's rules are the defaults plus its own workflow-latency rule.
    names = {r["name"] for r in result.rules}
    assert {r.name for r in DEFAULT_RULES} <= names
    assert result.alerts == [], result.alerts
    assert result.errors == 0 and result.target_metrics
    assert result.intervals >= 12 and result.probes >= 6 * 12
    with History(history) as h:
        assert h.alerts(SOURCE) == []
        recorded = {name for _, name in h.metric_names(SOURCE)}
        for key in (
            "error_rate",
            "latency_p95_s",
            "target_memory",
            "target_cpu",
            "target_fds",
            metric_key("error_rate", "tool-invoke"),
            metric_key("latency_p99_s", "workflow-run"),
            metric_key("probe_latency_s", "health"),
        ):
            assert key in recorded, key
        assert all(v == 0.0 for _, v in h.metrics(SOURCE, "error_rate"))
        assert len(h.metrics(SOURCE, "target_memory")) >= 12
    assert snap["done"] is True and snap["alerts"]["counts"] == {"warning": 0, "critical": 0}


def test_injected_error_rate_fires_an_alert_with_start_end_and_peak(healthy, tmp_path, report) -> None:
    history = tmp_path / "history.sqlite3"
    lines: list[str] = []
    thread, out, stop = monitor_in_thread(healthy.url, history, progress=lines.append)
    time.sleep(1.5)  # healthy first
    t_on = time.time()
    healthy.set_faults({"endpoints": {"tool_invoke": {"error_rate": 1.0, "error_status": 503}}})
    time.sleep(2.5)  # longer than the window: it fills with errors
    t_off = time.time()
    healthy.set_faults({})
    time.sleep(WINDOW_S + 2.0)  # the errors leave the window: the condition clears
    stop.set()
    result = finished(thread, out)

    fired = [a for a in result.alerts if a["rule_name"] == "error_rate"]
    report(
        error_alerts=[{k: a.get(k) for k in ("rule", "level", "peak", "start", "end", "closed_by")} for a in fired],
        fault_on=t_on,
        fault_off=t_off,
        alert_lines=[line for line in lines if "ALERT" in line],
    )
    assert [a["endpoint"] for a in fired] == ["tool-invoke"], result.alerts  # the faulty endpoint only
    assert all(a["rule_name"] == "error_rate" for a in result.alerts), result.alerts
    alert = fired[0]
    assert alert["level"] == "critical"
    assert t_on - INTERVAL_S <= alert["start"] <= t_on + 1.0
    assert t_off <= alert["end"] <= t_off + WINDOW_S + 1.5
    assert alert["peak"] == pytest.approx(1.0)  # every probe in the window failed
    assert any("ALERT fired warning" in line or "ALERT fired critical" in line for line in lines), lines

    with History(history) as h:
        rows = [a for a in h.alerts(SOURCE) if a["rule"] == "error_rate[tool-invoke]"]
        rates = [v for _, v in h.metrics(SOURCE, metric_key("error_rate", "tool-invoke"))]
    levels = [r["level"] for r in rows]
    assert "critical" in levels, rows
    critical = next(r for r in rows if r["level"] == "critical")
    assert (critical["start"], critical["end"], critical["peak"]) == (alert["start"], alert["end"], alert["peak"])
    for warning in (r for r in rows if r["level"] == "warning"):
        # It fired at warning (the window's first failed probes: 1/8 = 12.5%) and escalated.
        assert warning["superseded_by"] == "critical" and warning["start"] == critical["start"], warning
    assert max(rates) == pytest.approx(1.0) and rates[-1] < 0.05


def test_a_growing_latency_is_a_rising_trend_in_the_history(healthy, tmp_path, report) -> None:
    history, snapshot = tmp_path / "history.sqlite3", tmp_path / "monitor.json"
    thread, out, stop = monitor_in_thread(healthy.url, history, snapshot_path=snapshot)
    step_s, step_delay_s, steps = 0.5, 0.010, 12
    for k in range(steps):  # /health gets 10 ms slower every half second: 20 ms per second
        healthy.set_faults({"endpoints": {"health": {"latency": {"dist": "fixed", "delay_s": k * step_delay_s}}}})
        time.sleep(step_s)
    stop.set()
    result = finished(thread, out)

    with History(history) as h:
        health = h.metrics(SOURCE, metric_key("probe_latency_s", "health"))
        steady = h.metrics(SOURCE, metric_key("probe_latency_s", "agents"))
    rising = trend([t for t, _ in health], [v for _, v in health], unit="s", per="second")
    control = trend([t for t, _ in steady], [v for _, v in steady], unit="s", per="second")
    snap = json.loads(snapshot.read_text())
    report(
        health_trend={
            "verdict": rising.verdict,
            "slope_ms_per_s": round(rising.slope * 1e3, 2),
            "expected_ms_per_s": step_delay_s / step_s * 1e3,
        },
        steady_trend={"verdict": control.verdict, "slope_ms_per_s": round((control.slope or 0) * 1e3, 3)},
        snapshot_latency_p95_trend=snap.get("trends", {}).get("latency_p95_s", {}).get("verdict"),
        alerts=len(result.alerts),
    )
    assert rising.verdict == "rising", rising
    expected = step_delay_s / step_s  # seconds of latency per second
    assert 0.5 * expected <= rising.slope <= 1.5 * expected, rising
    assert rising.ci[0] > 0
    # The endpoint beside it does not share the trend (noise is far below 20 ms/s).
    assert abs(control.slope or 0.0) < 0.1 * expected, control
    # The monitor's own dashboard data carries the same finding over its recorded history.
    assert snap["done"] is True
    assert snap["trends"]["latency_p95_s"]["verdict"] == "rising", snap["trends"]["latency_p95_s"]
    assert snap["trends"]["target_memory_leak"]["verdict"] in ("no leak", "inconclusive")
    assert result.alerts == []  # 110 ms at most: under the 1 s response-time warning
