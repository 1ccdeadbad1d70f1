"""Alert rules with warning and critical levels, evaluated on a stream of metric snapshots.

Pure: the caller passes the time (`t_s`, any clock it likes: seconds since a run's start,
or wall-clock seconds in `horde monitor`) and a flat dict of metric values; nothing here
reads a clock, sleeps or does I/O.

A rule, as written in a scenario's ``alerts:`` section (or in code, ``AlertRule``)::

    - name: response_time           # unique; default: the metric text (+ [endpoint])
      metric: p95(latency)          # grammar below
      endpoint: "*"                 # absent: all endpoints together; "*": each endpoint on its own;
                                    # a request entry's name: that endpoint
      warning: "> 1s"               # a level: [op] value; op is >, >=, < or <= (default >)
      critical: 5s                  # at least one of warning and critical; both use one op
      for: 0s                       # the condition must hold this long before the alert fires
      clear: 10s                    # ... and be gone this long before it resolves (hysteresis)

``for`` and ``clear`` default to 0 in a written rule (DEFAULT_RULES use clear 10 s).

Metric grammar (a small cousin of the threshold grammar in coordinator/judge/thresholds.py)::

    metric     := aggregate "(" series ")" | "error_rate" | "rps" | resource | KEY
    aggregate  := "p50" | "p75" | "p90" | "p95" | "p99" | "p99.9" | "median"
                | "avg" | "mean" | "stdev" | "min" | "max"
    series     := "latency" | "service_time"
    resource   := "target_memory" | "target_cpu" | "target_connections" | "target_fds"
    KEY        := any metrics key as recorded, e.g. latency_p95_s, rps (lower case, _ and digits)

Each metric reads one key of the metrics dict, in base units:

    p95(latency)        latency_p95_s          seconds        levels: durations with a unit, "1s", "250ms"
    avg(service_time)   service_time_mean_s    seconds
    error_rate          error_rate             fraction       levels: "5%" or 0.05
    target_cpu          target_cpu             CPU s per s    levels: "80%" or 0.8 (1.0 = one core busy)
    target_memory       target_memory          bytes          levels: "1GB" (10^9), "512MiB", or bytes
    target_connections  target_connections     count          levels: plain numbers
    rps, KEY            as written             by suffix: _s seconds, _bytes bytes, _ratio/_rate fraction

An endpoint's value lives under ``KEY{endpoint=NAME}`` (``metric_key``); the key without
braces is the figure over all endpoints. ``metrics_from_stats`` builds these keys from
horde.coordinator.measure.aggregate ``Stats``, so ``horde run`` and ``horde monitor`` feed rules alike.

Semantics of ``AlertEngine.observe(t_s, metrics)``, per rule and endpoint:

- Each observation has a level: critical if it breaks the critical level, else warning if it
  breaks the warning level, else clear. A missing or NaN value is *no data*: it changes
  nothing (neither starts, holds, nor clears anything).
- An alert's ``start`` is the first observation of an unbroken breach. It *fires* at the
  first observation at least ``for_s`` after ``start`` (at once when ``for_s`` is 0), at
  critical if the critical level has also held for ``for_s``, else at warning. A clear
  observation before it fires cancels it silently.
- A firing warning *escalates* to critical once the critical level has held for ``for_s``.
  The alert keeps the highest level it reached until it resolves.
- It *resolves* at the first observation at least ``clear_s`` after the first clear
  observation of an unbroken clear streak; its ``end`` is that first clear observation
  (when the condition went away), ``resolved`` is when the hysteresis let it go.
- ``peak`` is the worst value seen from ``start`` on (largest for > and >=, smallest for <).
- An alert's ``rule`` is the rule's name, with ``[endpoint]`` appended for a rule over each
  endpoint ("*"); ``rule_name`` is the rule's name alone; ``id`` adds a serial number.
- ``finish(t_s)`` closes alerts still firing: ``end`` is ``t_s``, or the start of a clear
  streak already under way; pending (not yet fired) breaches are dropped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
_LEVEL_RANK = {None: 0, WARNING: 1, CRITICAL: 2}

FIRED = "fired"
ESCALATED = "escalated"
RESOLVED = "resolved"

EACH_ENDPOINT = "*"
OPERATORS = (">", ">=", "<", "<=")

# Value kinds: how levels are written and shown.
SECONDS = "seconds"
FRACTION = "fraction"
BYTES = "bytes"
NUMBER = "number"

QUANTILES = {"p50": 0.5, "p75": 0.75, "p90": 0.9, "p95": 0.95, "p99": 0.99, "p99.9": 0.999}
_AGGREGATES = {**{k: k for k in QUANTILES}, "median": "p50", "avg": "mean", "mean": "mean",
               "stdev": "stdev", "min": "min", "max": "max"}
SERIES = ("latency", "service_time")
RESOURCES = {
    "target_memory": BYTES,
    "target_cpu": FRACTION,
    "target_connections": NUMBER,
    "target_fds": NUMBER,
}
_NAMED = {"error_rate": FRACTION, "rps": NUMBER, **RESOURCES}

_EPSILON_S = 1e-9  # times are floats: 0.1 + 0.2 must count as having held for 0.3 s
_KEY = re.compile(r"[a-z_][a-z0-9_.]*")
_CALL = re.compile(r"\s*([a-z0-9.]+)\s*\(\s*([a-z_]+)\s*\)\s*")
_LEVEL = re.compile(r"\s*(<=|>=|<|>)?\s*(.*?)\s*", re.DOTALL)
_ENDPOINT_KEY = re.compile(r"(.+)\{endpoint=([^}]*)\}")
_RULE_KEYS = ("name", "metric", "endpoint", "warning", "critical", "for", "clear")


# --- metric keys --------------------------------------------------------------------------


def metric_key(name: str, endpoint: str | None = None) -> str:
    """The metrics-dict key of `name` for one endpoint ("latency_p95_s{endpoint=health}") or all."""
    return name if endpoint is None else f"{name}{{endpoint={endpoint}}}"


def split_key(key: str) -> tuple[str, str | None]:
    """Inverse of metric_key: ("latency_p95_s", "health") or ("error_rate", None)."""
    m = _ENDPOINT_KEY.fullmatch(key)
    return (m.group(1), m.group(2)) if m else (key, None)


def parse_metric(text: str) -> tuple[str, str]:
    """A metric expression -> (metrics key, value kind); ValueError says what was expected."""
    s = text.strip()
    call = _CALL.fullmatch(s)
    if call:
        aggregate, series = call.groups()
        if aggregate not in _AGGREGATES:
            raise ValueError(
                f"unknown aggregate {aggregate!r}; expected one of {', '.join(_AGGREGATES)}"
            )
        if series not in SERIES:
            raise ValueError(f"unknown series {series!r}; expected {' or '.join(SERIES)}")
        return f"{series}_{_AGGREGATES[aggregate]}_s", SECONDS
    if s in SERIES:
        raise ValueError(f"{s!r} is a series and needs an aggregate, e.g. p95({s}) or avg({s})")
    if s in _NAMED:
        return s, _NAMED[s]
    if _KEY.fullmatch(s):
        return s, _kind_of_key(s)
    raise ValueError(
        "expected a metric such as p95(latency), error_rate, target_memory, target_cpu "
        "or a metrics key such as latency_p95_s"
    )


def _kind_of_key(key: str) -> str:
    if key in _NAMED:
        return _NAMED[key]
    if key.endswith("_s"):
        return SECONDS
    if key.endswith("_bytes"):
        return BYTES
    if key.endswith(("_ratio", "_rate")):
        return FRACTION
    return NUMBER


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
        if not isinstance(raw, str) or _is_plain_number(raw):
            if float(raw) != 0:
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


# --- rules --------------------------------------------------------------------------------


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
        return a > b if self.op in (">", ">=") else a < b

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
    AlertRule("response_time", "p95(latency)", warning=1.0, critical=5.0, endpoint=EACH_ENDPOINT,
              for_s=DEFAULT_FOR_S, clear_s=DEFAULT_CLEAR_S),
    AlertRule("error_rate", "error_rate", warning=0.05, critical=0.20, endpoint=EACH_ENDPOINT,
              for_s=DEFAULT_FOR_S, clear_s=DEFAULT_CLEAR_S),
    AlertRule("memory", "target_memory", warning=1e9, critical=2e9,
              for_s=DEFAULT_FOR_S, clear_s=DEFAULT_CLEAR_S),
    AlertRule("cpu", "target_cpu", warning=0.80, critical=0.95,
              for_s=DEFAULT_FOR_S, clear_s=DEFAULT_CLEAR_S),
)

Loc = tuple[str | int, ...]


class AlertRuleError(ValueError):
    """Every problem of an ``alerts:`` section, each with its key path."""

    def __init__(self, problems: Sequence[tuple[Loc, str]], path: str = "alerts") -> None:
        self.problems = list(problems)  # (location below the section, message)
        self.path = path
        super().__init__("\n".join(f"{format_loc(path, loc)}: {msg}" for loc, msg in self.problems))


def format_loc(path: str, loc: Loc) -> str:
    out = path
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_rules(value: Any, path: str = "alerts", *, endpoints: Sequence[str] | None = None) -> tuple[AlertRule, ...]:
    """An ``alerts:`` section -> rules, or AlertRuleError listing every problem.

    The section is a list; each entry is a rule mapping (module docstring) or the string
    "defaults", which stands for DEFAULT_RULES. A section replaces the defaults: ``alerts:
    []`` means no alert rules, ``[defaults, {...}]`` adds to them. None means the defaults.
    With `endpoints` (the scenario's request names) a rule's endpoint must be one of them.
    """
    rules, problems = _parse_rules(value, endpoints)
    if problems:
        raise AlertRuleError(problems, path)
    return rules


def rule_problems(value: Any, *, endpoints: Sequence[str] | None = None) -> list[tuple[Loc, str]]:
    """The problems of an ``alerts:`` section, locations relative to it (for scenario.py)."""
    return _parse_rules(value, endpoints)[1]


def _parse_rules(value: Any, endpoints: Sequence[str] | None) -> tuple[tuple[AlertRule, ...], list[tuple[Loc, str]]]:
    if value is None:
        return DEFAULT_RULES, []
    if not isinstance(value, list):
        return (), [((), f"expected a list of alert rules, got {type(value).__name__}")]
    rules: list[AlertRule] = []
    problems: list[tuple[Loc, str]] = []
    names: dict[str, Loc] = {}
    for i, entry in enumerate(value):
        if entry == "defaults":
            found: list[tuple[AlertRule, Loc]] = [(r, (i,)) for r in DEFAULT_RULES]
        elif isinstance(entry, Mapping):
            rule, entry_problems = _parse_rule(entry, endpoints)
            problems += [((i, *loc), msg) for loc, msg in entry_problems]
            found = [(rule, (i, "name"))] if rule is not None else []
        else:
            problems.append(((i,), f'expected a rule mapping or "defaults", got {type(entry).__name__}'))
            found = []
        for rule, loc in found:
            if rule.name in names:
                problems.append((loc, f"duplicate rule name {rule.name!r} (also at {format_loc('', names[rule.name])})"))
            else:
                names[rule.name] = loc
                rules.append(rule)
    return tuple(rules), problems


def _parse_rule(entry: Mapping[str, Any], endpoints: Sequence[str] | None) -> tuple[AlertRule | None, list[tuple[Loc, str]]]:
    problems: list[tuple[Loc, str]] = []
    for key in entry:
        if key not in _RULE_KEYS:
            problems.append(((str(key),), f"unknown key; expected one of: {', '.join(_RULE_KEYS)}"))

    metric = entry.get("metric")
    kind: str | None = None
    if metric is None:
        problems.append((("metric",), "required key is missing"))
    elif not isinstance(metric, str):
        problems.append((("metric",), f"expected a metric expression, got {type(metric).__name__}"))
    else:
        try:
            _, kind = parse_metric(metric)
        except ValueError as exc:
            problems.append((("metric",), str(exc)))

    endpoint = entry.get("endpoint")
    if endpoint is not None and not isinstance(endpoint, str):
        problems.append((("endpoint",), f'expected a request entry\'s name or "*", got {type(endpoint).__name__}'))
    elif endpoint is not None and endpoint != EACH_ENDPOINT and endpoints is not None and endpoint not in endpoints:
        known = ", ".join(dict.fromkeys(endpoints)) or "none"
        problems.append((("endpoint",), f'no request entry named {endpoint!r}; expected "*" or one of: {known}'))

    levels: dict[str, float] = {}
    ops: dict[str, str | None] = {}
    for level in LEVELS:
        if entry.get(level) is None:
            continue
        if kind is None:
            continue  # the metric's problem is reported; its unit is unknown
        try:
            ops[level], levels[level] = parse_level(entry[level], kind)
        except ValueError as exc:
            problems.append(((level,), str(exc)))
    if kind is not None and entry.get(WARNING) is None and entry.get(CRITICAL) is None:
        problems.append(((), "give a warning level, a critical level or both"))
    written = {lvl: op for lvl, op in ops.items() if op is not None}
    op = next(iter(written.values()), ">")
    if len(set(written.values())) > 1:
        problems.append(((CRITICAL,), f"must use the same comparison as warning ({written[WARNING]})"))
    elif len(levels) == 2:
        w, c = levels[WARNING], levels[CRITICAL]
        if (c < w) if op in (">", ">=") else (c > w):
            problems.append(((CRITICAL,), f"must be at least as severe as warning ({op} {format_value(w, kind or NUMBER)})"))

    seconds: dict[str, float] = {}
    for key, default in (("for", DEFAULT_FOR_S), ("clear", 0.0)):
        try:
            seconds[key] = parse_duration(entry.get(key, default))
        except ValueError as exc:
            problems.append(((key,), str(exc)))

    name = entry.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        problems.append((("name",), "expected a non-empty name"))
    if problems:
        return None, problems
    if name is None:
        name = metric.strip() + (f"[{endpoint}]" if endpoint is not None else "")
    rule = AlertRule(
        name=name,
        metric=metric,
        warning=levels.get(WARNING),
        critical=levels.get(CRITICAL),
        op=op,
        for_s=seconds["for"],
        clear_s=seconds["clear"],
        endpoint=endpoint,
    )
    return rule, []


# --- metrics from aggregate statistics ----------------------------------------------------

_STAT_QUANTILES = tuple(QUANTILES.items())


def metrics_from_stats(stats: Any, endpoint: str | None = None, *, series: Iterable[str] = SERIES) -> dict[str, float]:
    """The keys rules read, from a horde.coordinator.measure.aggregate.Stats (or anything shaped like it:
    histograms of nanoseconds under `latency` / `service_time`, `requests`, `errors`, `rps`).

    A series without samples gives no keys (no data); error_rate needs at least one request.
    """
    out: dict[str, float] = {}
    requests = int(getattr(stats, "requests", 0) or 0)
    out[metric_key("requests", endpoint)] = float(requests)
    out[metric_key("errors", endpoint)] = float(getattr(stats, "errors", 0) or 0)
    if requests:
        out[metric_key("error_rate", endpoint)] = float(stats.errors) / requests
    rps = getattr(stats, "rps", None)
    if rps is not None and getattr(stats, "duration_s", 1.0):
        out[metric_key("rps", endpoint)] = float(rps)
    for name in series:
        hist = getattr(stats, name, None)
        if hist is None or not hist.count:
            continue
        values = hist.quantiles([q for _, q in _STAT_QUANTILES])
        for label, q in _STAT_QUANTILES:
            if values[q] is not None:
                out[metric_key(f"{name}_{label}_s", endpoint)] = values[q] / 1e9
        for label, v in (("mean", hist.mean_ns()), ("stdev", hist.stdev_ns()), ("min", hist.min_ns), ("max", hist.max_ns)):
            if v is not None:
                out[metric_key(f"{name}_{label}_s", endpoint)] = float(v) / 1e9
    return out


# --- the engine ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertEvent:
    kind: str  # FIRED, ESCALATED or RESOLVED
    t_s: float  # when it happened (the observation that caused it)
    alert: dict[str, Any]  # a copy of the alert as it stood after the event

    def to_dict(self) -> dict[str, Any]:
        """The webhook / log payload: {"event", "t_s", "alert"}."""
        return {"event": self.kind, "t_s": self.t_s, "alert": dict(self.alert)}


class _State:
    __slots__ = ("breach_since", "critical_since", "clear_since", "peak", "peak_at", "alert")

    def __init__(self) -> None:
        self.breach_since: float | None = None
        self.critical_since: float | None = None
        self.clear_since: float | None = None
        self.peak: float | None = None
        self.peak_at: float | None = None
        self.alert: dict[str, Any] | None = None


class AlertEngine:
    """Rule state over a stream of observations; see the module docstring for the semantics.

    Memory is bounded by rules x endpoints: resolved alerts are handed out in events and
    not kept (``fired_total`` counts them).
    """

    def __init__(self, rules: Sequence[AlertRule] = DEFAULT_RULES, *, source: str = "") -> None:
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rule names must be unique: {names}")
        self.rules = tuple(rules)
        self.source = source
        self._states: dict[tuple[int, str | None], _State] = {}
        self._serial: dict[tuple[int, str | None], int] = {}
        self.fired_total = 0

    def observe(self, t_s: float, metrics: Mapping[str, float | None]) -> list[AlertEvent]:
        """Fold one snapshot of metrics taken at t_s; the events it caused, in rule order."""
        by_name: dict[str, dict[str | None, float]] = {}
        for key, value in metrics.items():
            if value is None:
                continue
            value = float(value)
            if math.isnan(value):
                continue
            name, endpoint = split_key(key)
            by_name.setdefault(name, {})[endpoint] = value
        events: list[AlertEvent] = []
        for i, rule in enumerate(self.rules):
            values = by_name.get(rule.key, {})
            if rule.endpoint == EACH_ENDPOINT:
                instances = sorted((e, v) for e, v in values.items() if e is not None)
            elif rule.endpoint in values:
                instances = [(rule.endpoint, values[rule.endpoint])]
            else:
                instances = []
            for endpoint, value in instances:
                self._step(i, rule, endpoint, t_s, value, events)
        return events

    def _step(self, i: int, rule: AlertRule, endpoint: str | None, t: float, value: float,
              events: list[AlertEvent]) -> None:
        st = self._states.get((i, endpoint))
        if st is None:
            st = self._states[(i, endpoint)] = _State()
        level = rule.level_of(value)
        if level is None:
            st.critical_since = None
            if st.alert is None:
                st.breach_since = st.peak = st.peak_at = None  # a pending breach that never fired
                return
            st.alert["last"] = value
            if st.clear_since is None:
                st.clear_since = t
            if t - st.clear_since >= rule.clear_s - _EPSILON_S:
                alert = st.alert
                alert.update(end=st.clear_since, resolved=t)
                events.append(AlertEvent(RESOLVED, t, dict(alert)))
                self._states[(i, endpoint)] = _State()
            return

        st.clear_since = None
        if st.breach_since is None:
            st.breach_since = t
        if level == CRITICAL and st.critical_since is None:
            st.critical_since = t
        elif level != CRITICAL:
            st.critical_since = None
        if st.peak is None or rule._worse(value, st.peak):
            st.peak, st.peak_at = value, t
        critical_held = st.critical_since is not None and t - st.critical_since >= rule.for_s - _EPSILON_S
        if st.alert is None:
            if t - st.breach_since >= rule.for_s - _EPSILON_S:
                st.alert = self._new_alert(i, rule, endpoint, st, t, CRITICAL if critical_held else WARNING)
                st.alert["last"] = value
                self.fired_total += 1
                events.append(AlertEvent(FIRED, t, dict(st.alert)))
            return
        alert = st.alert
        alert.update(peak=st.peak, peak_at=st.peak_at, last=value)
        if alert["level"] == WARNING and critical_held:
            alert.update(level=CRITICAL, escalated=t)
            events.append(AlertEvent(ESCALATED, t, dict(alert)))

    def _new_alert(self, i: int, rule: AlertRule, endpoint: str | None, st: _State, t: float,
                   level: str) -> dict[str, Any]:
        serial = self._serial.get((i, endpoint), 0) + 1
        self._serial[(i, endpoint)] = serial
        # A rule over each endpoint ("*") raises one alert per endpoint: its instance name
        # carries the endpoint, so (source, rule, level, start) tells any two alerts apart.
        instance = f"{rule.name}[{endpoint}]" if rule.endpoint == EACH_ENDPOINT else rule.name
        return {
            "kind": "alert",
            "id": f"{instance}#{serial}",
            "source": self.source,
            "rule": instance,
            "rule_name": rule.name,
            "metric": rule.metric,
            "key": metric_key(rule.key, endpoint),
            "endpoint": endpoint,
            "level": level,
            "start": st.breach_since,
            "at_s": st.breach_since,  # the bundle's alert-line time field (html_report markers)
            "fired": t,
            "escalated": t if level == CRITICAL else None,
            "end": None,
            "resolved": None,
            "peak": st.peak,
            "peak_at": st.peak_at,
            "op": rule.op,
            "warning": rule.warning,
            "critical": rule.critical,
            "text": rule.text(endpoint),
        }

    def active(self) -> list[dict[str, Any]]:
        """Alerts firing now (copies), oldest first."""
        out = [dict(st.alert) for st in self._states.values() if st.alert is not None]
        return sorted(out, key=lambda a: (a["start"], a["id"]))

    def active_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(LEVELS, 0)
        for st in self._states.values():
            if st.alert is not None:
                counts[st.alert["level"]] += 1
        return counts

    def finish(self, t_s: float) -> list[AlertEvent]:
        """Close every firing alert at t_s (the end of the run or monitor); resolved events."""
        events = []
        for key in sorted(self._states, key=lambda k: (k[0], k[1] or "")):
            st = self._states[key]
            if st.alert is not None:
                end = st.clear_since if st.clear_since is not None else t_s
                st.alert.update(end=end, resolved=t_s, closed_by="finish")
                events.append(AlertEvent(RESOLVED, t_s, dict(st.alert)))
        self._states.clear()
        return events
