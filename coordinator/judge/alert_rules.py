"""Alert rules as the engine uses them (``AlertRule``, DEFAULT_RULES), the metric keys they
read and how their levels are written. The written form, a pydantic model with key paths
and a JSON schema, is in alert_section.py.

A rule, as written in a scenario's ``alerts:`` section (``AlertRuleEntry``)::

    - name: response_time           # unique; default: the metric text (+ [endpoint])
      metric: p95(latency)          # the metric grammar of coordinator/judge/metrics.py
      endpoint: "*"                 # absent: all endpoints together; "*": each endpoint on its own;
                                    # a request entry's name: that endpoint
      warning: "> 1s"               # a level: [op] value; op is >, >=, < or <= (default >)
      critical: 5s                  # at least one of warning and critical; both use one op
      for: 0s                       # the condition must hold this long before the alert fires
      clear: 10s                    # ... and be gone this long before it resolves (hysteresis)

The section is a list of rules and the string "defaults" (DEFAULT_RULES); rule names are
unique across it. ``for`` and ``clear`` default to 0 in a written rule (DEFAULT_RULES use
clear 10 s).

Alert rules read recorded metrics keys, so of the shared grammar they take the recorded
quantiles (p50 p75 p90 p95 p99 p99.9, median) and avg, mean, stdev, min, max of latency
and service_time, error_rate, rps, requests, errors, a resource's latest reading
(target_memory, ...), or any recorded KEY. Each reads one key of the metrics dict, in base
units, and its levels are written in the metric's units (horde.coordinator.units):

    p95(latency)        latency_p95_s          seconds        levels: durations with a unit, "1s", "250ms"
    avg(service_time)   service_time_mean_s    seconds
    error_rate          error_rate             fraction       levels: "5%" or 0.05
    target_cpu          target_cpu             CPU s per s    levels: "80%" or 0.8 (1.0 = one core busy)
    target_memory       target_memory          bytes          levels: "1GB" (10^9), "512MiB", or bytes
    target_connections  target_connections     count          levels: plain numbers
    rps, KEY            as written             by suffix: _s seconds, _bytes bytes, _ratio/_rate fraction

An endpoint's value lives under ``KEY{endpoint=NAME}`` (``metric_key``); the key without
braces is the figure over all endpoints. Pure.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from horde.coordinator.judge import metrics as grammar
from horde.coordinator.judge.metrics import BYTES, FRACTION, SECONDS, MetricSyntaxError
from horde.coordinator.units import (
    format_duration,
    format_size,
    parse_duration,
    parse_percent,
    parse_size,
)

WARNING = "warning"
CRITICAL = "critical"
LEVELS = (WARNING, CRITICAL)
EACH_ENDPOINT = "*"
OPERATORS = (">", ">=", "<", "<=")

QUANTILES = {"p50": 0.5, "p75": 0.75, "p90": 0.9, "p95": 0.95, "p99": 0.99, "p99.9": 0.999}
SERIES = ("latency", "service_time")  # the series whose figures are recorded as keys
_STATISTICS = (*QUANTILES, "mean", "stdev", "min", "max")
_LEVEL = re.compile(r"\s*(<=|>=|<|>)?\s*(.*?)\s*", re.DOTALL)
_ENDPOINT_KEY = re.compile(r"(.+)\{endpoint=([^}]*)\}")

Loc = tuple[str | int, ...]


# --- metric keys, levels and values ---------------------------------------------------------


def metric_key(name: str, endpoint: str | None = None) -> str:
    """The metrics-dict key of `name` for one endpoint ("latency_p95_s{endpoint=health}") or all."""
    return name if endpoint is None else f"{name}{{endpoint={endpoint}}}"


def split_key(key: str) -> tuple[str, str | None]:
    """Inverse of metric_key: ("latency_p95_s", "health") or ("error_rate", None)."""
    m = _ENDPOINT_KEY.fullmatch(key)
    return (m.group(1), m.group(2)) if m else (key, None)


def parse_metric(text: str) -> tuple[str, str]:
    """A metric expression -> (metrics key, unit kind); ValueError says what was expected."""
    try:
        metric = grammar.parse_metric(text, readings=True, keys=True)
    except MetricSyntaxError as exc:
        raise ValueError(exc.message) from None
    if metric.kind == grammar.RESOURCE_KIND:
        raise ValueError(f"alert rules read a resource's latest reading: write {metric.series}, not {metric.text}")
    if metric.kind == grammar.SERIES_KIND:
        if metric.aggregate == grammar.QUANTILE:
            statistic = "p50" if metric.name == "median" else metric.name
        else:
            statistic = metric.aggregate or ""
        if statistic not in _STATISTICS:
            raise ValueError(
                f"unknown aggregate {metric.name!r} for an alert rule; the recorded ones are "
                f"{', '.join(_STATISTICS)} (and median)"
            )
        if metric.series not in SERIES:
            raise ValueError(f"unknown series {metric.series!r} for an alert rule; expected {' or '.join(SERIES)}")
        return f"{metric.series}_{statistic}_s", SECONDS
    if metric.error_class is not None:
        raise ValueError(f"alert rules read {metric.name} over every error class: write {metric.name}")
    return (metric.series or metric.name), metric.unit


def parse_level(value: Any, kind: str) -> tuple[str | None, float]:
    """A level as written -> (operator or None when not written, value in base units)."""
    op: str | None = None
    raw: Any = value
    if isinstance(value, str):
        m = _LEVEL.fullmatch(value)
        assert m is not None  # the pattern matches any text
        op, raw = m.group(1), m.group(2)
        if raw == "":
            raise ValueError("expected a value after the operator")
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a value such as {_example(kind)}, got {type(value).__name__}")
    if kind == SECONDS:
        if (not isinstance(raw, str) or _is_plain_number(raw)) and float(raw) != 0:
            raise ValueError(f"a duration needs a unit, e.g. 1s or 250ms (got {raw!r})")
        number = parse_duration(raw)
    elif kind == FRACTION:
        number = parse_percent(raw)
    elif kind == BYTES:
        number = float(parse_size(raw))
    else:
        try:
            number = float(raw)
        except ValueError:
            raise ValueError(f"expected a plain number, got {raw!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {raw!r}")
    return op, number


def _is_plain_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _example(kind: str) -> str:
    return {SECONDS: '"> 1s"', FRACTION: '"> 5%"', BYTES: '"> 1GB"'}.get(kind, '"> 100"')


def format_value(value: float, kind: str) -> str:
    """A value in a rule's unit: "1.2s", "5%", "1.5GiB", "12"."""
    if kind == SECONDS:
        return format_duration(value)
    if kind == FRACTION:
        return f"{value * 100:.4g}%"
    if kind == BYTES:
        return format_size(int(value))
    return f"{value:.6g}"


def _worse(op: str, a: float, b: float) -> bool:
    """a is strictly worse than b under `op`."""
    return a > b if op in (">", ">=") else a < b


# --- the rule the engine uses -----------------------------------------------------------------


@dataclass(frozen=True)
class AlertRule:
    """One rule. `metric` is the expression as written; `key` and `kind` are derived from it."""

    name: str
    metric: str
    warning: float | None = None
    critical: float | None = None
    op: str = ">"
    for_s: float = 0.0
    clear_s: float = 0.0
    endpoint: str | None = None  # None: all endpoints together; "*": each endpoint on its own
    key: str = field(default="", compare=False)
    kind: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        key, kind = parse_metric(self.metric)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "kind", kind)
        if self.op not in OPERATORS:
            raise ValueError(f"op must be one of {', '.join(OPERATORS)}, got {self.op!r}")
        if self.warning is None and self.critical is None:
            raise ValueError(f"rule {self.name!r} has neither a warning nor a critical level")
        if self.warning is not None and self.critical is not None and self._worse(self.warning, self.critical):
            raise ValueError(f"rule {self.name!r}: the critical level is less severe than the warning level")
        if self.for_s < 0 or self.clear_s < 0:
            raise ValueError(f"rule {self.name!r}: for_s and clear_s must not be negative")

    def _worse(self, a: float, b: float) -> bool:
        """a is strictly worse than b."""
        return _worse(self.op, a, b)

    def _breaks(self, value: float, level: float | None) -> bool:
        if level is None:
            return False
        if self.op == ">":
            return value > level
        if self.op == ">=":
            return value >= level
        if self.op == "<":
            return value < level
        return value <= level

    def level_of(self, value: float) -> str | None:
        """CRITICAL, WARNING or None (clear) for one observed value."""
        if self._breaks(value, self.critical):
            return CRITICAL
        if self._breaks(value, self.warning):
            return WARNING
        return None

    def describe(self) -> dict[str, Any]:
        """The rule as plain values (for alerts, snapshots and docs)."""
        return {
            "name": self.name,
            "metric": self.metric,
            "key": self.key,
            "endpoint": self.endpoint,
            "op": self.op,
            "warning": self.warning,
            "critical": self.critical,
            "for_s": self.for_s,
            "clear_s": self.clear_s,
        }

    def text(self, endpoint: str | None = None) -> str:
        levels = ", ".join(
            f"{lvl} {self.op} {format_value(v, self.kind)}"
            for lvl, v in ((WARNING, self.warning), (CRITICAL, self.critical))
            if v is not None
        )
        scope = f" [endpoint={endpoint}]" if endpoint is not None else ""
        return f"{self.metric}{scope}: {levels}"


DEFAULT_FOR_S = 0.0
DEFAULT_CLEAR_S = 10.0

# The suite's defaults: response time (p95 over the caller's window, each endpoint), error
# rate (each endpoint), target memory (resident bytes, GB = 10^9) and target CPU (of one core).
DEFAULT_RULES: tuple[AlertRule, ...] = (
    AlertRule(
        "response_time",
        "p95(latency)",
        warning=1.0,
        critical=5.0,
        endpoint=EACH_ENDPOINT,
        for_s=DEFAULT_FOR_S,
        clear_s=DEFAULT_CLEAR_S,
    ),
    AlertRule(
        "error_rate",
        "error_rate",
        warning=0.05,
        critical=0.20,
        endpoint=EACH_ENDPOINT,
        for_s=DEFAULT_FOR_S,
        clear_s=DEFAULT_CLEAR_S,
    ),
    AlertRule("memory", "target_memory", warning=1e9, critical=2e9, for_s=DEFAULT_FOR_S, clear_s=DEFAULT_CLEAR_S),
    AlertRule("cpu", "target_cpu", warning=0.80, critical=0.95, for_s=DEFAULT_FOR_S, clear_s=DEFAULT_CLEAR_S),
)
