"""The one metric grammar of thresholds and alert rules, so `p99(latency)` means the same in both.

Grammar (whitespace is free between tokens; names are lower case)::

    metric      := aggregate "(" series ")"
                 | "error_rate" [ "(" error_class ")" ]
                 | "errors" [ "(" error_class ")" ]
                 | "rps" | "requests"
                 | resource                  alert rules: the latest reading
                 | KEY                       alert rules: any metrics key as recorded
    aggregate   := "p" NUMBER                quantile in percent, p0 .. p100 (p99, p99.9, p50)
                 | "avg" | "mean"            arithmetic mean
                 | "median"                  same as p50
                 | "stdev" | "min" | "max"
    series      := "latency"                 from the intended send time (coordinated omission corrected)
                 | "service_time"            from the actual send time
                 | "send_lag"                actual minus intended send time (generator overload)
                 | resource
    resource    := "target_memory"           the target's resident memory (bytes)
                 | "target_cpu"              the target's CPU, cores busy (1.0 = one core)
                 | "target_connections"      open connections the target reports
                 | "target_fds"              the target's open file descriptors
    error_class := "connect" | "timeout" | "reset" | "http_4xx" | "http_5xx"
                 | "unexpected_status" | "protocol" | "too_large" | "other"
    KEY         := [a-z_][a-z0-9_.]*         e.g. latency_p95_s, queue_depth

Every metric has a unit kind, which says how its limits are written (units: the one table in
horde.coordinator.units): SECONDS for the latency series, FRACTION for error_rate and
target_cpu ("5%" or 0.05), BYTES for target_memory ("1GB", "512MiB"), NUMBER for counts and
rps; a KEY's kind follows its suffix (_s seconds, _bytes bytes, _ratio / _rate fraction).

Which metrics a consumer takes is its own business: thresholds (judge/thresholds.py) take
aggregates of every series and resource, error rates and counts of one class, but neither
bare resources nor keys; alert rules (judge/alerts.py) read recorded keys, so they take the
recorded quantiles of latency and service_time, bare resources and keys. Pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from horde.agents.samples import ErrorClass

SERIES = ("latency", "service_time", "send_lag")
RESOURCES = ("target_memory", "target_cpu", "target_connections", "target_fds")
ERROR_CLASSES: dict[str, ErrorClass] = {e.label: e for e in ErrorClass if e is not ErrorClass.OK}

# Metric kinds.
SERIES_KIND = "series"  # an aggregate of a latency series
RESOURCE_KIND = "resource"  # an aggregate of a resource's readings
READING_KIND = "reading"  # a bare resource: its latest reading (alert rules)
ERROR_RATE = "error_rate"
ERRORS = "errors"
RPS = "rps"
REQUESTS = "requests"
KEY_KIND = "key"  # a metrics key as recorded (alert rules)

# Aggregates after parsing ("avg" becomes "mean", "median" and "pNN" become "quantile").
QUANTILE = "quantile"
MEAN = "mean"
STDEV = "stdev"
MIN = "min"
MAX = "max"
AGGREGATES = {"avg": MEAN, "mean": MEAN, "median": QUANTILE, "stdev": STDEV, "min": MIN, "max": MAX}

# Unit kinds: how a metric's limits are written and shown.
SECONDS = "seconds"
FRACTION = "fraction"
BYTES = "bytes"
NUMBER = "number"
RESOURCE_UNITS = {"target_memory": BYTES, "target_cpu": FRACTION, "target_connections": NUMBER, "target_fds": NUMBER}

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[0-9]+)?")
_KEY = re.compile(r"[a-z_][a-z0-9_.]*")
_QUANTILE_NAME = re.compile(r"p([0-9]+(?:\.[0-9]+)?)")

METRIC_HELP = "p99(latency), avg(service_time), error_rate, rps, requests or errors"
SERIES_HELP = "latency, service_time, send_lag, target_memory, target_cpu, target_connections or target_fds"


class MetricSyntaxError(ValueError):
    """What the parser expected, and the 1-based column where it did not find it."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(message)
        self.message = message
        self.column = column


@dataclass(frozen=True)
class Metric:
    """A parsed metric expression."""

    text: str  # as written (stripped)
    kind: str  # SERIES_KIND, RESOURCE_KIND, READING_KIND, ERROR_RATE, ERRORS, RPS, REQUESTS or KEY_KIND
    unit: str  # SECONDS, FRACTION, BYTES or NUMBER
    name: str  # the leading word as written: "p99.9", "avg", "error_rate", "target_cpu", a key
    aggregate: str | None = None  # SERIES_KIND and RESOURCE_KIND: QUANTILE, MEAN, STDEV, MIN or MAX
    quantile: float | None = None  # aggregate QUANTILE only, 0..1 (exact: p99.9 is 0.999)
    series: str | None = None  # a SERIES or RESOURCES name (READING_KIND: the resource)
    error_class: ErrorClass | None = None  # error_rate(...) / errors(...) only


class Cursor:
    """A position in an expression, with errors that name their column."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    @property
    def column(self) -> int:
        return self.pos + 1

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def found(self) -> str:
        token = self.text[self.pos :].split(maxsplit=1)
        return repr(token[0][:12]) if token else "end of text"

    def match(self, pattern: re.Pattern[str]) -> str | None:
        self.skip_ws()
        m = pattern.match(self.text, self.pos)
        if m is None:
            return None
        self.pos = m.end()
        return m.group(0)

    def literal(self, char: str) -> bool:
        self.skip_ws()
        if self.text.startswith(char, self.pos):
            self.pos += len(char)
            return True
        return False

    def fail(self, what: str, column: int | None = None, hint: str = "") -> MetricSyntaxError:
        column = self.column if column is None else column
        return MetricSyntaxError(f"{what} at column {column}" + (f"; {hint}" if hint else ""), column)

    def expected(self, what: str) -> MetricSyntaxError:
        self.skip_ws()
        return self.fail(f"expected {what}", hint=f"found {self.found()}")


def read_metric(cur: Cursor, *, readings: bool = False, keys: bool = False) -> Metric:
    """Read one metric at the cursor. `readings`: bare resources are allowed; `keys`: so are
    metrics keys (alert rules). MetricSyntaxError says what was expected where."""
    cur.skip_ws()
    if cur.at_end():
        raise MetricSyntaxError(
            f"empty metric at column {cur.column}; expected a metric such as {METRIC_HELP}", cur.column
        )
    start, column = cur.pos, cur.column
    name = cur.match(_WORD)
    if name is None:
        raise cur.expected(f"a metric such as {METRIC_HELP}")
    quantile_name = _QUANTILE_NAME.fullmatch(name)
    if quantile_name or name in AGGREGATES:
        return _aggregate(cur, start, name, column)
    if name in (ERROR_RATE, ERRORS):
        return _counted(cur, start, name)
    if name in (RPS, REQUESTS):
        cur.skip_ws()
        if cur.text.startswith("(", cur.pos):
            raise cur.fail(f"{name!r} takes no argument", hint="expected an operator")
        return Metric(text=name, kind=name, unit=NUMBER, name=name)
    if name in RESOURCES and readings:
        return Metric(text=name, kind=READING_KIND, unit=RESOURCE_UNITS[name], name=name, series=name)
    if name in SERIES or name in RESOURCES:
        what = "series" if name in SERIES else "resource"
        raise cur.fail(
            f"{name!r} is a {what} and needs an aggregate",
            column,
            f"expected e.g. {'p99' if name in SERIES else 'max'}({name}) or avg({name})",
        )
    if keys:
        cur.pos = start
        key = cur.match(_KEY)
        if key is not None:
            return Metric(text=key, kind=KEY_KIND, unit=unit_of_key(key), name=key)
    raise cur.fail(f"unknown metric {name!r}", column, f"expected {METRIC_HELP}")


def _aggregate(cur: Cursor, start: int, name: str, column: int) -> Metric:
    quantile_name = _QUANTILE_NAME.fullmatch(name)
    quantile: float | None = None
    if quantile_name:
        percent = Decimal(quantile_name.group(1))
        if percent > 100:
            raise cur.fail(f"quantile {name!r} is above p100", column)
        aggregate, quantile = QUANTILE, float(percent / 100)
    else:
        aggregate = AGGREGATES[name]
        quantile = 0.5 if name == "median" else None
    if not cur.literal("("):
        raise cur.expected(f"'(' and a series after {name!r}")
    cur.skip_ws()
    series_column = cur.column
    series = cur.match(_WORD)
    if series is None:
        raise cur.expected(f"a series: {SERIES_HELP}")
    if series not in SERIES and series not in RESOURCES:
        raise cur.fail(f"unknown series {series!r}", series_column, f"expected {SERIES_HELP}")
    if not cur.literal(")"):
        raise cur.expected(f"')' after {series!r}")
    kind, unit = (SERIES_KIND, SECONDS) if series in SERIES else (RESOURCE_KIND, RESOURCE_UNITS[series])
    return Metric(
        text=_written(cur, start),
        kind=kind,
        unit=unit,
        name=name,
        aggregate=aggregate,
        quantile=quantile,
        series=series,
    )


def _counted(cur: Cursor, start: int, name: str) -> Metric:
    error_class: ErrorClass | None = None
    if cur.literal("("):
        cur.skip_ws()
        class_column = cur.column
        label = cur.match(_WORD)
        if label is None:
            raise cur.expected(f"an error class: {', '.join(ERROR_CLASSES)}")
        if label not in ERROR_CLASSES:
            raise cur.fail(f"unknown error class {label!r}", class_column, f"expected {', '.join(ERROR_CLASSES)}")
        error_class = ERROR_CLASSES[label]
        if not cur.literal(")"):
            raise cur.expected(f"')' after {label!r}")
    unit = FRACTION if name == ERROR_RATE else NUMBER
    return Metric(text=_written(cur, start), kind=name, unit=unit, name=name, error_class=error_class)


def _written(cur: Cursor, start: int) -> str:
    return cur.text[start : cur.pos].strip()


def parse_metric(text: str, *, readings: bool = False, keys: bool = False) -> Metric:
    """A whole text that is one metric; MetricSyntaxError otherwise."""
    cur = Cursor(text)
    metric = read_metric(cur, readings=readings, keys=keys)
    cur.skip_ws()
    if not cur.at_end():
        raise cur.fail(f"unexpected {cur.found()} after the metric", hint="expected the end of the metric")
    return metric


def unit_of_key(key: str) -> str:
    """A recorded key's unit kind, by its name or suffix."""
    if key == ERROR_RATE:
        return FRACTION
    if key in RESOURCE_UNITS:
        return RESOURCE_UNITS[key]
    if key.endswith("_s"):
        return SECONDS
    if key.endswith("_bytes"):
        return BYTES
    if key.endswith(("_ratio", "_rate")):
        return FRACTION
    return NUMBER
