"""Thresholds: a small grammar parsed when the scenario loads, evaluated on statistics later.

Grammar (whitespace is free between tokens)::

    threshold   := metric op value
    metric      := the metric grammar shared with alert rules (coordinator/judge/metrics.py):
                   aggregate "(" series ")" | error_rate [ "(" error_class ")" ]
                 | errors [ "(" error_class ")" ] | rps | requests
                   where series is latency, service_time, send_lag or a resource
                   (target_memory, target_cpu, target_connections, target_fds)
    op          := "<" | "<=" | ">" | ">=" | "==" | "!="
    value       := NUMBER [ unit ]       NUMBER is decimal: 500, 1.5, .5 (no sign, no exponent)

Units by metric:

    series        "ns", "us" (or "µs"), "ms", "s", "m", "h"; a bare number is milliseconds
    target_memory "B", "KB", "MB", "GB" (powers of 1000), "KiB", "MiB", "GiB"; bare = MB
    target_cpu    "%" of one core (90% == 0.9); a bare number is cores
    target_connections, target_fds   none
    error_rate    "%" (1% == 0.01); a bare number is a fraction and must be at most 1
    rps           none (requests per second)
    requests      none; a whole number
    errors        none; a whole number

Resources are aggregated over the per-window readings of the scope (a window keeps its
peak): ``max(target_memory) < 2000MB``, ``avg(target_cpu) < 90%``,
``max(target_connections) >= 1000``.

Examples: ``p99(latency) < 500ms``, ``p99.9(service_time) <= 1s``, ``error_rate < 1%``,
``error_rate(timeout) == 0``, ``rps > 1000``, ``requests >= 100``, ``errors == 0``.

Units come from the one table in horde.coordinator.units (case as written there: "kb" and
"KB" are both 1000 bytes). Normalised values: durations in nanoseconds, rates as
fractions, memory in bytes, CPU in cores, counts and rps as is.

No-data rule: a threshold whose statistic has no data (an empty histogram, a rate over zero
requests, a missing rps) *fails* with observed text "no data", because a limit that saw
nothing proved nothing. The exceptions are the counts, ``requests`` and ``errors``: zero
is a real observation for them. During a run (``LiveEvaluator.evaluate``) "no data" never
aborts: a window before traffic reaches a stage or endpoint is not a breach; the final
verdict still fails it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from horde.agents.samples import ErrorClass
from horde.coordinator.judge.metrics import (
    ERROR_CLASSES,
    ERROR_RATE,
    ERRORS,
    MAX,
    MEAN,
    MIN,
    QUANTILE,
    REQUESTS,
    RESOURCE_KIND,
    RESOURCES,
    RPS,
    SERIES,
    SERIES_KIND,
    STDEV,
    Cursor,
    Metric,
    MetricSyntaxError,
    read_metric,
)
from horde.coordinator.units import duration_unit_s, size_unit_bytes

__all__ = [
    "ERRORS",
    "ERROR_CLASSES",
    "ERROR_RATE",
    "KINDS",
    "MAX",
    "MEAN",
    "MIN",
    "OPERATORS",
    "QUANTILE",
    "REQUESTS",
    "RESOURCES",
    "RESOURCE_KIND",
    "RPS",
    "SERIES",
    "SERIES_KIND",
    "STDEV",
    "Abort",
    "LiveEvaluator",
    "ScopedThreshold",
    "Threshold",
    "ThresholdResult",
    "ThresholdSyntaxError",
    "Verdict",
    "all_passed",
    "parse_threshold",
]

OPERATORS = ("<", "<=", ">", ">=", "==", "!=")
KINDS = (SERIES_KIND, ERROR_RATE, RPS, REQUESTS, ERRORS, RESOURCE_KIND)

# A threshold's syntax error is the metric grammar's: message and column.
ThresholdSyntaxError = MetricSyntaxError

_NS_PER_S = 1_000_000_000
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}

_OPERATOR = re.compile(r"<=|>=|==|!=|<|>")
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_UNIT = re.compile(r"[A-Za-zµ%]+")


@dataclass(frozen=True)
class Threshold:
    text: str  # the expression as written (stripped)
    kind: str  # one of KINDS
    aggregate: str | None  # series only: QUANTILE, MEAN, STDEV, MIN or MAX
    quantile: float | None  # aggregate QUANTILE only, 0..1
    series: str | None  # series only: one of SERIES
    op: str  # one of OPERATORS
    value: float  # ns for series, fraction for error_rate, plain for rps and counts
    error_class: ErrorClass | None = None  # error_rate(...) / errors(...) only

    def observe(self, stats: Any) -> float | None:
        """The statistic this threshold limits, normalised like `value`; None when no data."""
        if self.kind == SERIES_KIND:
            return _observe_series(getattr(stats, self.series), self.aggregate, self.quantile)  # type: ignore[arg-type]  # series kinds have an aggregate
        if self.kind == RESOURCE_KIND:
            values = getattr(stats, "resource_values", None)
            if values is None:
                return None
            return _aggregate_values(values(self.series), self.aggregate, self.quantile)
        if self.kind == ERROR_RATE:
            requests = stats.requests or 0
            if requests <= 0:
                return None
            if self.error_class is None:
                rate = stats.error_rate
                return None if rate is None else float(rate)
            return _class_count(stats, self.error_class) / requests
        if self.kind == RPS:
            rps = stats.rps
            return None if rps is None else float(rps)
        if self.kind == REQUESTS:
            return float(stats.requests or 0)
        if self.error_class is not None:
            return float(_class_count(stats, self.error_class))
        return float(stats.errors or 0)

    def check(self, stats: Any) -> Verdict:
        observed = self.observe(stats)
        if observed is None:
            return Verdict(ok=False, observed=None, observed_text="no data")
        ok = _COMPARE[self.op](observed, self.value)
        return Verdict(ok=ok, observed=observed, observed_text=self.format_value(observed))

    def format_value(self, value: float) -> str:
        """A value of this threshold's metric with its unit: "512.3ms", "1.25%", "980.5/s", "12"."""
        if self.kind == SERIES_KIND:
            return _trim(value / 1e6, 3) + "ms"
        if self.kind == RESOURCE_KIND:
            if self.series == "target_memory":
                return _trim(value / 1e6, 1) + "MB"
            if self.series == "target_cpu":
                return _trim(value * 100, 1) + "%"
            return _trim(value, 0)
        if self.kind == ERROR_RATE:
            return _trim(value * 100, 3) + "%"
        if self.kind == RPS:
            return _trim(value, 1) + "/s"
        return _trim(value, 0)

    @property
    def limit_text(self) -> str:
        """The limit in the same form as observed values, e.g. "< 500ms"."""
        return f"{self.op} {self.format_value(self.value)}"


@dataclass(frozen=True)
class Verdict:
    ok: bool
    observed: float | None
    observed_text: str


def _aggregate_values(values: Any, aggregate: str | None, quantile: float | None) -> float | None:
    import numpy as np

    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return None
    if aggregate == QUANTILE and quantile is not None:
        return float(np.quantile(v, quantile, method="inverted_cdf"))
    if aggregate == MEAN:
        return float(v.mean())
    if aggregate == STDEV:
        return float(v.std())
    if aggregate == MIN:
        return float(v.min())
    return float(v.max())


def _observe_series(hist: Any, aggregate: str, quantile: float | None) -> float | None:
    if not hist.count:
        return None
    if aggregate == QUANTILE:
        value = hist.value_at_quantile(quantile)
    elif aggregate == MEAN:
        value = hist.mean_ns()
    elif aggregate == STDEV:
        value = hist.stdev_ns()
    elif aggregate == MIN:
        value = hist.min_ns
    else:
        value = hist.max_ns
    return None if value is None else float(value)


def _class_count(stats: Any, error_class: ErrorClass) -> int:
    by_class = stats.errors_by_class
    if isinstance(by_class, Mapping):
        return int(by_class.get(int(error_class), 0))
    return int(by_class[int(error_class)]) if int(error_class) < len(by_class) else 0


def _trim(x: float, decimals: int) -> str:
    text = f"{x:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


# --- parser -------------------------------------------------------------------------------


def parse_threshold(text: str) -> Threshold:
    """Parse one threshold expression; ThresholdSyntaxError says what was expected where."""
    cur = Cursor(text)
    cur.skip_ws()
    if cur.at_end():
        raise ThresholdSyntaxError(
            "empty threshold at column 1; expected a metric such as p99(latency), avg(service_time), "
            "error_rate, rps, requests or errors",
            1,
        )
    metric = read_metric(cur)
    cur.skip_ws()
    op = cur.match(_OPERATOR)
    if op is None:
        raise cur.expected("an operator: <, <=, >, >=, == or !=")
    cur.skip_ws()
    number_column = cur.column
    number = cur.match(_NUMBER)
    if number is None:
        raise cur.expected("a number")
    cur.skip_ws()  # "500 ms" reads naturally too
    unit_column = cur.column
    unit = cur.match(_UNIT)
    cur.skip_ws()
    if not cur.at_end():
        raise cur.fail(f"unexpected {cur.found()} after the value", hint="expected the end of the threshold")
    value = _normalise(metric, float(number), unit, number_column, unit_column)
    return Threshold(
        text=text.strip(),
        kind=metric.kind,
        aggregate=metric.aggregate,
        quantile=metric.quantile,
        series=metric.series,
        op=op,
        value=value,
        error_class=metric.error_class,
    )


def _normalise(metric: Metric, number: float, unit: str | None, number_column: int, unit_column: int) -> float:
    """The limit in the threshold's normalised unit; the units are horde.coordinator.units'."""
    if metric.kind == SERIES_KIND:
        return _nanoseconds(number, unit, unit_column)
    if metric.kind == RESOURCE_KIND:
        return _resource_value(metric.series or "", number, unit, unit_column)
    if metric.kind == ERROR_RATE:
        return _fraction(number, unit, number_column, unit_column)
    if unit is not None:
        raise ThresholdSyntaxError(
            f"unexpected unit {unit!r} at column {unit_column}; {metric.name!r} takes a plain number", unit_column
        )
    if metric.kind in (REQUESTS, ERRORS) and not number.is_integer():
        raise ThresholdSyntaxError(
            f"{metric.name!r} is a count: expected a whole number at column {number_column}", number_column
        )
    return number


def _nanoseconds(number: float, unit: str | None, unit_column: int) -> float:
    if unit is None:
        unit = "ms"  # a bare number is milliseconds
    seconds_per_unit = duration_unit_s(unit)
    if seconds_per_unit is None:
        raise ThresholdSyntaxError(
            f"unknown duration unit {unit!r} at column {unit_column}; expected ns, us, ms, s, m or h", unit_column
        )
    # Whole nanoseconds per unit, so "1.1ms" is 1.1 * 1_000_000 exactly as written.
    return number * round(seconds_per_unit * _NS_PER_S)


def _resource_value(resource: str, number: float, unit: str | None, unit_column: int) -> float:
    if resource == "target_memory":
        if unit is None:
            return number * 1e6  # a bare number is MB
        bytes_per_unit = size_unit_bytes(unit)
        if bytes_per_unit is None:
            raise ThresholdSyntaxError(
                f"unknown size unit {unit!r} at column {unit_column}; expected B, KB, MB, GB, KiB, MiB or GiB",
                unit_column,
            )
        return number * bytes_per_unit
    if resource == "target_cpu":
        if unit == "%":
            return number / 100
        if unit is not None:
            raise ThresholdSyntaxError(
                f"unknown unit {unit!r} at column {unit_column}; target_cpu takes % or a number of cores", unit_column
            )
        return number
    if unit is not None:
        raise ThresholdSyntaxError(
            f"unexpected unit {unit!r} at column {unit_column}; {resource!r} takes a plain number", unit_column
        )
    return number


def _fraction(number: float, unit: str | None, number_column: int, unit_column: int) -> float:
    if unit == "%":
        if number > 100:
            raise ThresholdSyntaxError(f"error rate {number:g}% is above 100% at column {number_column}", number_column)
        return number / 100
    if unit is not None:
        raise ThresholdSyntaxError(
            f"unknown unit {unit!r} at column {unit_column}; an error rate takes % or no unit", unit_column
        )
    if number > 1:
        raise ThresholdSyntaxError(
            f"error rate {number:g} is above 1 at column {number_column}; "
            f"a bare number is a fraction, write {number:g}% for a percentage",
            number_column,
        )
    return number


# --- scoped rules and evaluation ----------------------------------------------------------


@dataclass(frozen=True)
class ScopedThreshold:
    """A threshold with what it applies to and what breaking it does.

    endpoint: a request entry's name, None = all endpoints. stage: a stage's name or its
    index as a string ("0"), None = the whole run. abort: stop the run when it fails live.
    delay_s: no live abort before this much run time. window_s: live evaluation over the
    last window_s seconds; None = cumulative since the start. The final verdict is always
    cumulative over the run (within endpoint and stage): the window only shapes aborts.
    """

    threshold: Threshold
    endpoint: str | None = None
    stage: str | None = None
    abort: bool = False
    delay_s: float = 0.0
    window_s: float | None = None

    @property
    def text(self) -> str:
        scope = [f"endpoint={self.endpoint}"] * (self.endpoint is not None) + [f"stage={self.stage}"] * (
            self.stage is not None
        )
        return self.threshold.text + (f" [{', '.join(scope)}]" if scope else "")


# get_stats(endpoint, stage, window_s) -> a statistics snapshot (see Threshold.observe).
StatsGetter = Callable[[str | None, str | None, float | None], Any]


@dataclass(frozen=True)
class Abort:
    rule: ScopedThreshold
    verdict: Verdict
    elapsed_s: float

    @property
    def reason(self) -> str:
        return f"{self.rule.text} failed at {self.elapsed_s:g}s: observed {self.verdict.observed_text}"


@dataclass(frozen=True)
class ThresholdResult:
    rule: ScopedThreshold
    verdict: Verdict


class LiveEvaluator:
    """Evaluates abort rules as windows arrive and every rule at the end; holds no clock."""

    def __init__(self, rules: Sequence[ScopedThreshold]) -> None:
        self.rules = tuple(rules)

    def evaluate(self, elapsed_s: float, get_stats: StatsGetter) -> list[Abort]:
        """Abort rules that fail now, once their delay has passed; "no data" never aborts."""
        aborts = []
        for rule in self.rules:
            if not rule.abort or elapsed_s < rule.delay_s:
                continue
            verdict = rule.threshold.check(get_stats(rule.endpoint, rule.stage, rule.window_s))
            if not verdict.ok and verdict.observed is not None:
                aborts.append(Abort(rule, verdict, elapsed_s))
        return aborts

    def evaluate_final(self, get_stats: StatsGetter) -> list[ThresholdResult]:
        """Every rule's verdict over the whole run, in rule order."""
        return [
            ThresholdResult(rule, rule.threshold.check(get_stats(rule.endpoint, rule.stage, None)))
            for rule in self.rules
        ]


def all_passed(results: Sequence[ThresholdResult]) -> bool:
    return all(r.verdict.ok for r in results)
