"""What a running `horde run` exposes in Prometheus format (opt-in port, loopback default),
served by the one exposition server (coordinator/run/exposition.py).

Series (from the last closed window unless said otherwise)::

    horde_run_requests_total             counter: requests completed so far
    horde_run_errors_total               counter: failed requests so far
    horde_run_window_requests            requests in the last window (= rps for 1 s windows)
    horde_run_latency_seconds{quantile}  latency from the intended send time, last window
    horde_run_users                      active virtual users (closed model)
    horde_run_in_flight                  requests in flight
    horde_run_planned_level              the planned rate or user count
    horde_run_alerts_active              firing alerts
    horde_run_lost_agents_total          counter: agents lost so far
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from horde.coordinator.run.exposition import LOOPBACK, ExpositionServer, ViewCollector

PREFIX = "horde_run_"


class RunCollector(ViewCollector):
    """The run's series from its latest progress info (the live view's dict)."""

    def collect(self) -> Iterator[Metric]:
        i = self.view
        if not i:
            return
        yield CounterMetricFamily(PREFIX + "requests", "Requests completed so far.", value=i["total_requests"])
        yield CounterMetricFamily(PREFIX + "errors", "Failed requests so far.", value=i["total_errors"])
        yield CounterMetricFamily(PREFIX + "lost_agents", "Agents lost so far.", value=i.get("lost", 0))
        yield GaugeMetricFamily(PREFIX + "window_requests", "Requests in the last window.", value=i["rps"])
        lat = GaugeMetricFamily(
            PREFIX + "latency_seconds", "Latency from the intended send, last window.", labels=["quantile"]
        )
        for q, key in (("0.5", "p50_ms"), ("0.9", "p90_ms"), ("0.99", "p99_ms"), ("1", "max_ms")):
            if i.get(key) is not None:
                lat.add_metric([q], i[key] / 1e3)
        yield lat
        yield GaugeMetricFamily(PREFIX + "users", "Active virtual users.", value=i["users"])
        yield GaugeMetricFamily(PREFIX + "in_flight", "Requests in flight.", value=i["in_flight"])
        yield GaugeMetricFamily(PREFIX + "planned_level", "Planned rate or users.", value=i["planned"])
        yield GaugeMetricFamily(PREFIX + "alerts_active", "Firing alerts.", value=len(i.get("alerts", [])))


class RunMetrics(ExpositionServer):
    """`horde run --prometheus-port`: the server with RunCollector; ``update(info)`` takes the
    run's progress info whole."""

    def __init__(self, *, host: str = LOOPBACK, port: int = 0) -> None:
        super().__init__(RunCollector(), host=host, port=port)

    def update(self, info: Mapping[str, Any]) -> None:
        super().update(dict(info))  # a copy: the caller may go on mutating its dict
