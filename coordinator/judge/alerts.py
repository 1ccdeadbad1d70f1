"""Alert rules with warning and critical levels, evaluated on a stream of metric snapshots.

Pure: the caller passes the time (`t_s`, any clock it likes: seconds since a run's start,
or wall-clock seconds in `horde monitor`) and a flat dict of metric values; nothing here
reads a clock, sleeps or does I/O.

Rules (AlertRule, DEFAULT_RULES) and the metric keys they read are in alert_rules.py, the
written form (AlertRuleEntry, parse_rules) in alert_section.py, on the metric grammar and
unit table that thresholds share (judge/metrics.py, horde.coordinator.units); their names
are importable from here too. ``metrics_from_stats`` builds the keys from
horde.coordinator.measure.aggregate ``Stats``, so ``horde run`` and ``horde monitor`` feed
rules alike.

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
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from horde.coordinator.judge.alert_rules import (
    CRITICAL,
    DEFAULT_CLEAR_S,
    DEFAULT_FOR_S,
    DEFAULT_RULES,
    EACH_ENDPOINT,
    LEVELS,
    OPERATORS,
    QUANTILES,
    SERIES,
    WARNING,
    AlertRule,
    format_value,
    metric_key,
    parse_level,
    parse_metric,
    split_key,
)
from horde.coordinator.judge.alert_section import (
    AlertRuleEntry,
    AlertRuleError,
    AlertSection,
    format_loc,
    parse_rules,
    rule_problems,
    rules_of,
)
from horde.coordinator.judge.metrics import BYTES, FRACTION, NUMBER, SECONDS

__all__ = [
    "BYTES",
    "CRITICAL",
    "DEFAULT_CLEAR_S",
    "DEFAULT_FOR_S",
    "DEFAULT_RULES",
    "EACH_ENDPOINT",
    "ESCALATED",
    "FIRED",
    "FRACTION",
    "LEVELS",
    "NUMBER",
    "OPERATORS",
    "QUANTILES",
    "RESOLVED",
    "SECONDS",
    "SERIES",
    "WARNING",
    "AlertEngine",
    "AlertEvent",
    "AlertRule",
    "AlertRuleEntry",
    "AlertRuleError",
    "AlertSection",
    "format_loc",
    "format_value",
    "metric_key",
    "metrics_from_stats",
    "parse_level",
    "parse_metric",
    "parse_rules",
    "rule_problems",
    "rules_of",
    "split_key",
]

_LEVEL_RANK = {None: 0, WARNING: 1, CRITICAL: 2}

FIRED = "fired"
ESCALATED = "escalated"
RESOLVED = "resolved"

_EPSILON_S = 1e-9  # times are floats: 0.1 + 0.2 must count as having held for 0.3 s


# --- metrics from aggregate statistics ----------------------------------------------------

_STAT_QUANTILES = tuple(QUANTILES.items())


def metrics_from_stats(
    stats: Any, endpoint: str | None = None, *, series: Iterable[str] = SERIES, only: Collection[str] | None = None
) -> dict[str, float]:
    """The keys rules read, from a horde.coordinator.measure.aggregate.Stats (or anything shaped like it:
    histograms of nanoseconds under `latency` / `service_time`, `requests`, `errors`, `rps`).

    A series without samples gives no keys (no data); error_rate needs at least one request.
    `only`: the metric names (keys less the endpoint) wanted, as ``AlertEngine.reads`` gives
    them; the others are left out and not computed (each quantile of each scope, every window,
    was most of the alert rules' cost at many endpoints). The same values either way.
    """
    out: dict[str, float] = {}
    requests = int(getattr(stats, "requests", 0) or 0)
    out[metric_key("requests", endpoint)] = float(requests)
    out[metric_key("errors", endpoint)] = float(getattr(stats, "errors", 0) or 0)
    if requests:
        out[metric_key("error_rate", endpoint)] = float(stats.errors) / requests
    rps = getattr(stats, "rps", None)
    duration_s: Any = getattr(stats, "duration_s", 1.0)  # absent: rps stands on its own
    if rps is not None and duration_s:
        out[metric_key("rps", endpoint)] = float(rps)
    for name in series:
        labels = None if only is None else {k[len(name) + 1 : -2] for k in only if k.startswith(f"{name}_")}
        if labels == set():
            continue
        hist = getattr(stats, name, None)
        if hist is None or not hist.count:
            continue
        quantiles = [(label, q) for label, q in _STAT_QUANTILES if labels is None or label in labels]
        values = hist.quantiles([q for _, q in quantiles])
        for label, q in quantiles:
            if values[q] is not None:
                out[metric_key(f"{name}_{label}_s", endpoint)] = values[q] / 1e9
        for label, read in _STATISTICS:
            if labels is None or label in labels:
                v = read(hist)
                if v is not None:
                    out[metric_key(f"{name}_{label}_s", endpoint)] = float(v) / 1e9
    if only is not None:
        return {k: v for k, v in out.items() if split_key(k)[0] in only}
    return out


_STATISTICS: tuple[tuple[str, Callable[[Any], float | int | None]], ...] = (
    ("mean", lambda h: h.mean_ns()),
    ("stdev", lambda h: h.stdev_ns()),
    ("min", lambda h: h.min_ns),
    ("max", lambda h: h.max_ns),
)


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
        # What the rules read (observe() ignores every other key): metric names over all
        # endpoints together, over each endpoint ("*"), and over named endpoints.
        self.reads_total = frozenset(r.key for r in rules if r.endpoint is None)
        self.reads_each = frozenset(r.key for r in rules if r.endpoint == EACH_ENDPOINT)
        self._reads_named: dict[str, frozenset[str]] = {}
        for r in rules:
            if r.endpoint not in (None, EACH_ENDPOINT):
                self._reads_named[r.endpoint] = self._reads_named.get(r.endpoint, frozenset()) | {r.key}
        self._states: dict[tuple[int, str | None], _State] = {}
        self._serial: dict[tuple[int, str | None], int] = {}
        self.fired_total = 0

    def reads(self, endpoint: str | None) -> frozenset[str]:
        """The metric names the rules read for `endpoint` (None: all endpoints together)."""
        if endpoint is None:
            return self.reads_total
        return self.reads_each | self._reads_named.get(endpoint, frozenset())

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
            instances: list[tuple[str | None, float]]
            if rule.endpoint == EACH_ENDPOINT:
                instances = sorted((e, v) for e, v in values.items() if e is not None)
            elif rule.endpoint in values:
                instances = [(rule.endpoint, values[rule.endpoint])]
            else:
                instances = []
            for endpoint, value in instances:
                self._step(i, rule, endpoint, t_s, value, events)
        return events

    def _step(
        self, i: int, rule: AlertRule, endpoint: str | None, t: float, value: float, events: list[AlertEvent]
    ) -> None:
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

    def _new_alert(
        self, i: int, rule: AlertRule, endpoint: str | None, st: _State, t: float, level: str
    ) -> dict[str, Any]:
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
