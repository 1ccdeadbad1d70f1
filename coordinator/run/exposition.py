"""The one Prometheus exposition server of horde, and the dashboard data of `horde monitor`.

``ExpositionServer`` serves a private CollectorRegistry (nothing registered at import,
nothing in prometheus_client's global registry) from prometheus_client's own threaded HTTP
server, bound to 127.0.0.1 unless a host is given. Its one collector renders the latest
view handed to ``update`` at scrape time, so a scrape never sees a half-updated set of
gauges and a figure nobody measured yet is absent, not 0. What a command exposes is its
collector: ``MonitorCollector`` here (``Exposition`` = the server with it, for `horde
monitor`), ``RunCollector`` in coordinator/run/prometheus.py (for `horde run --prometheus-port`).

`horde monitor`'s series (gauges unless said otherwise)::

    horde_monitor_latency_seconds{endpoint,quantile}   rolling-window probe latency quantiles
    horde_monitor_error_rate{endpoint}                  rolling-window error rate (0..1)
    horde_monitor_probes_total{endpoint}                counter: probes sent
    horde_monitor_probe_errors_total{endpoint}          counter: probes that failed
    horde_monitor_target_memory_bytes                   target resident memory
    horde_monitor_target_cpu_ratio                      target CPU seconds per second (1 = one core)
    horde_monitor_target_open_connections               connections the target reports open
    horde_monitor_alerts_active{level}                  firing alerts, level = warning | critical

its ``view`` (what the monitor passes to ``update``)::

    {"latency": {endpoint: {"0.5": s, "0.9": s, "0.95": s, "0.99": s}},
     "error_rate": {endpoint: fraction}, "probes": {endpoint: n}, "probe_errors": {endpoint: n},
     "target": {"memory_bytes": x, "cpu_ratio": x, "open_connections": x},   # keys optional
     "alerts_active": {"warning": n, "critical": n}}

The JSON snapshot helpers (``write_json_atomic``, ``json_safe``) are the monitor's other
dashboard output.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from horde.coordinator import files

LOOPBACK = "127.0.0.1"
PREFIX = "horde_monitor_"


class ViewCollector(Collector):
    """A collector of the latest view; the view is replaced whole, never mutated (scrapes
    run on the server's threads)."""

    def __init__(self) -> None:
        self.view: Mapping[str, Any] = {}

    def collect(self) -> Iterator[Metric]:
        raise NotImplementedError


class MonitorCollector(ViewCollector):
    """`horde monitor`'s series (the module doc)."""

    def collect(self) -> Iterator[Metric]:
        v = self.view
        latency = GaugeMetricFamily(
            PREFIX + "latency_seconds",
            "Probe latency quantiles over the rolling window.",
            labels=["endpoint", "quantile"],
        )
        for endpoint, quantiles in sorted(v.get("latency", {}).items()):
            for q, seconds in quantiles.items():
                if _finite(seconds):
                    latency.add_metric([endpoint, str(q)], float(seconds))
        yield latency
        rate = GaugeMetricFamily(
            PREFIX + "error_rate", "Probe error rate over the rolling window (0..1).", labels=["endpoint"]
        )
        for endpoint, value in sorted(v.get("error_rate", {}).items()):
            if _finite(value):
                rate.add_metric([endpoint], float(value))
        yield rate
        for key, name, doc in (
            ("probes", "probes", "Probes sent."),
            ("probe_errors", "probe_errors", "Probes that failed."),
        ):
            counter = CounterMetricFamily(PREFIX + name, doc, labels=["endpoint"])
            for endpoint, value in sorted(v.get(key, {}).items()):
                counter.add_metric([endpoint], float(value))
            yield counter
        target = v.get("target", {})
        for key, doc in (
            ("memory_bytes", "Target resident memory in bytes."),
            ("cpu_ratio", "Target CPU seconds per second (1 = one core busy)."),
            ("open_connections", "Connections the target reports open."),
        ):
            value = target.get(key)
            if _finite(value):
                yield GaugeMetricFamily(PREFIX + "target_" + key, doc, value=float(value))
        active = GaugeMetricFamily(PREFIX + "alerts_active", "Alerts firing now, by level.", labels=["level"])
        counts = v.get("alerts_active", {})
        for level in ("warning", "critical"):
            active.add_metric([level], float(counts.get(level, 0)))
        yield active


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class ExpositionServer:
    """A private registry with one view collector and, once started, an HTTP server for it
    (loopback by default)."""

    def __init__(self, collector: ViewCollector, *, host: str = LOOPBACK, port: int = 0) -> None:
        self.host = host
        self.port = port
        self.registry = CollectorRegistry(auto_describe=False)
        self._collector = collector
        self.registry.register(self._collector)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        """Serve /metrics; returns its URL (port 0 picks a free port)."""
        self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        self.port = int(self._server.server_port)
        return self.url

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def update(self, view: Mapping[str, Any]) -> None:
        self._collector.view = view

    def render(self) -> bytes:
        """The exposition text, without a server (tests, snapshots)."""
        return generate_latest(self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None


class Exposition(ExpositionServer):
    """`horde monitor`'s endpoint: the server with MonitorCollector."""

    def __init__(self, *, host: str = LOOPBACK, port: int = 0) -> None:
        super().__init__(MonitorCollector(), host=host, port=port)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON to a temporary file beside `path`, then rename it over `path`: a reader
    sees the old snapshot or the new one, never a torn file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with files.replacing(target, "w", perm=files.PRIVATE_MODE) as f:
        json.dump(data, f, indent=1, default=_json_default, allow_nan=False)
        f.write("\n")


def _json_default(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    if hasattr(x, "to_dict"):
        return x.to_dict()
    return str(x)


def json_safe(x: Any) -> Any:
    """NaN and infinities -> None, recursively (JSON has neither)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x
