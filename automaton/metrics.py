"""The automaton's own counters, exposed as Prometheus text (/metrics) and JSON (/stats).

Each app gets its own CollectorRegistry so several automatons (or tests) in one
process never share or clash over series.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, generate_latest

# The classic text format, which generate_latest() writes and every scraper reads.
EXPOSITION_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REJECT_REASONS: tuple[str, ...] = ("queue_full", "connection_limit", "injected_error")


class AutomatonMetrics:
    def __init__(self, endpoints: Iterable[str]) -> None:
        self.registry = CollectorRegistry()
        # Standard process_* names (resident memory, CPU seconds, open fds), so the
        # target's resources are read the same way as any Prometheus-scraped service.
        ProcessCollector(registry=self.registry)
        self._requests = Counter(
            "automaton_requests",
            "Requests served, by endpoint (route name).",
            ["endpoint"],
            registry=self.registry,
        )
        # Plain ints beside the Prometheus objects: /stats reads them without touching
        # prometheus_client internals, and the gauges read the same values at scrape time.
        self.requests_by_endpoint: dict[str, int] = {}
        self._request_children: dict[str, Counter] = {}
        for endpoint in endpoints:
            self._add_endpoint(endpoint)
        self.in_flight = 0
        self._connection_count: Callable[[], int] = lambda: 0
        Gauge(
            "automaton_in_flight_requests",
            "Requests received and not yet answered (stalled ones included).",
            registry=self.registry,
        ).set_function(lambda: self.in_flight)
        Gauge(
            "automaton_open_connections",
            "Client connections currently open (keep-alive idle ones included).",
            registry=self.registry,
        ).set_function(lambda: self._connection_count())
        # Fault state, read at scrape time from whoever holds it (count_faults_with).
        self._queue_length: Callable[[], int] = lambda: 0
        self._capacity: Callable[[], int | None] = lambda: None
        self._leaked_bytes: Callable[[], int] = lambda: 0
        Gauge(
            "automaton_queue_length",
            "Requests waiting for a worker under a concurrency limit.",
            registry=self.registry,
        ).set_function(lambda: self._queue_length())
        Gauge(
            "automaton_capacity_workers",
            "Requests the automaton processes at once (the global concurrency limit, as scaled); +Inf: no limit.",
            registry=self.registry,
        ).set_function(self._capacity_value)
        Gauge(
            "automaton_leaked_bytes",
            "Memory kept by the leak fault.",
            registry=self.registry,
        ).set_function(lambda: self._leaked_bytes())
        rejected = Counter(
            "automaton_rejected",
            "Requests or connections turned away, by reason: queue_full (503 past the queue), "
            "connection_limit (closed at accept), injected_error (the error-rate fault).",
            ["reason"],
            registry=self.registry,
        )
        self.rejected_by_reason: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)
        self._rejected_children = {reason: rejected.labels(reason=reason) for reason in REJECT_REASONS}

    def _add_endpoint(self, endpoint: str) -> None:
        # Creating every child up front exports each endpoint at 0 before its first request.
        self._request_children[endpoint] = self._requests.labels(endpoint=endpoint)
        self.requests_by_endpoint[endpoint] = 0

    def count_connections_with(self, count: Callable[[], int]) -> None:
        """Where the open-connection count comes from (the server, known only once it runs)."""
        self._connection_count = count

    def count_faults_with(
        self,
        queue_length: Callable[[], int],
        capacity: Callable[[], int | None],
        leaked_bytes: Callable[[], int],
    ) -> None:
        """Where the fault state comes from (the app's FaultInjector)."""
        self._queue_length = queue_length
        self._capacity = capacity
        self._leaked_bytes = leaked_bytes

    def _capacity_value(self) -> float:
        capacity = self._capacity()
        return math.inf if capacity is None else float(capacity)

    def rejected(self, reason: str) -> None:
        """One of REJECT_REASONS."""
        self._rejected_children[reason].inc()
        self.rejected_by_reason[reason] += 1

    def request_started(self) -> None:
        self.in_flight += 1

    def request_finished(self, endpoint: str) -> None:
        """Counted however the request ended (2xx, 4xx, 500): it was served."""
        self.in_flight -= 1
        if endpoint not in self._request_children:
            self._add_endpoint(endpoint)
        self._request_children[endpoint].inc()
        self.requests_by_endpoint[endpoint] += 1

    def open_connections(self) -> int:
        return self._connection_count()

    def stats(self) -> dict[str, object]:
        return {
            "requests": dict(self.requests_by_endpoint),
            "total": sum(self.requests_by_endpoint.values()),
            "in_flight": self.in_flight,
            "open_connections": self.open_connections(),
            "queue_length": self._queue_length(),
            "capacity_workers": self._capacity(),  # None: no concurrency limit
            "rejected": dict(self.rejected_by_reason),
            "leaked_bytes": self._leaked_bytes(),
        }

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
