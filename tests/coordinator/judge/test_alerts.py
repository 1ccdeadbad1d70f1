"""Alert rules: metric timelines in, exact alert events out. Pure, tables of cases."""

from __future__ import annotations

import math

import pytest

from horde.agents.samples import ErrorClass
from horde.coordinator.judge.alerts import (
    CRITICAL,
    DEFAULT_RULES,
    ESCALATED,
    FIRED,
    RESOLVED,
    WARNING,
    AlertEngine,
    AlertRule,
    AlertRuleError,
    metric_key,
    metrics_from_stats,
    parse_level,
    parse_metric,
    parse_rules,
    rule_problems,
    split_key,
)
from horde.coordinator.measure.aggregate import Stats

LAT = "latency_p95_s"


def run(rule: AlertRule, timeline, *, finish_at: float | None = None, key: str = LAT):
    """Feed (t, value) pairs (value None = no data); the events as compact tuples."""
    engine = AlertEngine([rule], source="test")
    out = []
    for t, v in timeline:
        metrics = {} if v is None else {key: v}
        out += engine.observe(t, metrics)
    if finish_at is not None:
        out += engine.finish(finish_at)
    return [(e.kind, e.t_s, e.alert["level"], e.alert["start"], e.alert["end"], e.alert["peak"]) for e in out]


def lat_rule(**kw) -> AlertRule:
    return AlertRule("lat", "p95(latency)", **{"warning": 1.0, "critical": 5.0, **kw})


# --- timelines -> events --------------------------------------------------------------------

CASES = [
    # (id, rule kwargs, timeline, finish_at, expected events (kind, t, level, start, end, peak))
    ("never breaches", {}, [(0, 0.5), (1, 0.9), (2, 1.0)], 3, []),  # 1.0 is not > 1.0
    (
        "fires at once, resolves on the first clear sample",
        {},
        [(0, 0.5), (1, 2.0), (2, 3.0), (3, 0.5)],
        None,
        [(FIRED, 1, WARNING, 1, None, 2.0), (RESOLVED, 3, WARNING, 1, 3, 3.0)],
    ),
    (
        "straight to critical",
        {},
        [(0, 6.0), (1, 0.1)],
        None,
        [(FIRED, 0, CRITICAL, 0, None, 6.0), (RESOLVED, 1, CRITICAL, 0, 1, 6.0)],
    ),
    (
        "escalates, keeps its highest level while it eases",
        {},
        [(0, 2.0), (1, 6.0), (2, 2.0), (3, 0.0)],
        None,
        [(FIRED, 0, WARNING, 0, None, 2.0), (ESCALATED, 1, CRITICAL, 0, None, 6.0), (RESOLVED, 3, CRITICAL, 0, 3, 6.0)],
    ),
    ("for_s: a short blip never fires", {"for_s": 2}, [(0, 2.0), (1, 3.0), (2, 0.5), (3, 2.0)], 4, []),
    (
        "for_s: fires once held, start is when it began",
        {"for_s": 2},
        [(0, 0.5), (1, 2.0), (2, 4.0), (3, 3.0), (4, 0.5)],
        None,
        [(FIRED, 3, WARNING, 1, None, 4.0), (RESOLVED, 4, WARNING, 1, 4, 4.0)],
    ),
    (
        "for_s applies to critical too",
        {"for_s": 2},
        [(0, 2.0), (1, 6.0), (2, 7.0), (3, 6.5), (4, 0.0)],
        None,
        [(FIRED, 2, WARNING, 0, None, 7.0), (ESCALATED, 3, CRITICAL, 0, None, 7.0), (RESOLVED, 4, CRITICAL, 0, 4, 7.0)],
    ),
    (
        "for_s held at critical from the start fires at critical",
        {"for_s": 1},
        [(0, 6.0), (1, 6.0)],
        2,
        [(FIRED, 1, CRITICAL, 0, None, 6.0), (RESOLVED, 2, CRITICAL, 0, 2, 6.0)],
    ),
    (
        "a critical streak broken by a warning sample restarts its for_s",
        {"for_s": 1},
        [(0, 6.0), (1, 2.0), (2, 6.0), (3, 6.0)],
        None,
        [(FIRED, 1, WARNING, 0, None, 6.0), (ESCALATED, 3, CRITICAL, 0, None, 6.0)],
    ),
    (
        "clear_s: hysteresis holds through a dip, end is when it cleared",
        {"clear_s": 3},
        [(0, 2.0), (1, 0.1), (2, 2.5), (3, 0.1), (4, 0.1), (5, 0.1), (6, 0.1)],
        None,
        [(FIRED, 0, WARNING, 0, None, 2.0), (RESOLVED, 6, WARNING, 0, 3, 2.5)],
    ),
    (
        "clear_s not reached: finish closes it at the start of the clear streak",
        {"clear_s": 10},
        [(0, 2.0), (1, 0.1), (2, 0.1)],
        5,
        [(FIRED, 0, WARNING, 0, None, 2.0), (RESOLVED, 5, WARNING, 0, 1, 2.0)],
    ),
    (
        "finish closes a firing alert at the stop time",
        {},
        [(0, 2.0), (1, 3.0)],
        1.5,
        [(FIRED, 0, WARNING, 0, None, 2.0), (RESOLVED, 1.5, WARNING, 0, 1.5, 3.0)],
    ),
    ("finish drops a breach that has not fired yet", {"for_s": 5}, [(0, 2.0), (1, 3.0)], 2, []),
    (
        "no data neither holds nor clears",
        {"for_s": 2, "clear_s": 2},
        [(0, 2.0), (1, None), (2, 2.0), (3, None), (4, 0.1), (5, None), (6, 0.1)],
        None,
        [(FIRED, 2, WARNING, 0, None, 2.0), (RESOLVED, 6, WARNING, 0, 4, 2.0)],
    ),
    ("NaN is no data", {}, [(0, math.nan), (1, 0.5)], 2, []),
    (
        "fires again after it resolved, a new start",
        {},
        [(0, 2.0), (1, 0.1), (2, 3.0), (3, 0.1)],
        None,
        [
            (FIRED, 0, WARNING, 0, None, 2.0),
            (RESOLVED, 1, WARNING, 0, 1, 2.0),
            (FIRED, 2, WARNING, 2, None, 3.0),
            (RESOLVED, 3, WARNING, 2, 3, 3.0),
        ],
    ),
    (
        "float times: 0.1-second steps reach for_s 0.3",
        {"for_s": 0.3},
        [(0.1, 2.0), (0.2, 2.0), (0.30000000000000004, 2.0), (0.4, 2.0)],
        None,
        [(FIRED, 0.4, WARNING, 0.1, None, 2.0)],
    ),
]


@pytest.mark.parametrize("rule_kw, timeline, finish_at, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_timelines(rule_kw, timeline, finish_at, expected):
    assert run(lat_rule(**rule_kw), timeline, finish_at=finish_at) == expected


def test_warning_only_and_critical_only_rules():
    warn = AlertRule("w", "error_rate", warning=0.05)
    crit = AlertRule("c", "error_rate", critical=0.2)
    line = [(0, 0.5), (1, 0.0)]
    assert run(warn, line, key="error_rate") == [(FIRED, 0, WARNING, 0, None, 0.5), (RESOLVED, 1, WARNING, 0, 1, 0.5)]
    assert run(crit, line, key="error_rate") == [(FIRED, 0, CRITICAL, 0, None, 0.5), (RESOLVED, 1, CRITICAL, 0, 1, 0.5)]
    assert run(crit, [(0, 0.1)], key="error_rate", finish_at=1) == []  # below critical, no warning level


def test_below_rule_peak_is_the_lowest_value():
    rule = AlertRule("slow", "rps", warning=10.0, critical=1.0, op="<")
    events = run(rule, [(0, 20.0), (1, 5.0), (2, 0.5), (3, 3.0), (4, 50.0)], key="rps")
    assert events == [
        (FIRED, 1, WARNING, 1, None, 5.0),
        (ESCALATED, 2, CRITICAL, 1, None, 0.5),
        (RESOLVED, 4, CRITICAL, 1, 4, 0.5),
    ]


def test_each_endpoint_has_its_own_alert():
    rule = AlertRule("lat", "p95(latency)", warning=1.0, endpoint="*")
    engine = AlertEngine([rule], source="svc")
    ev = engine.observe(0, {metric_key(LAT, "a"): 2.0, metric_key(LAT, "b"): 0.1, LAT: 2.0})
    assert [(e.kind, e.alert["endpoint"], e.alert["rule"], e.alert["rule_name"], e.alert["id"]) for e in ev] == [
        (FIRED, "a", "lat[a]", "lat", "lat[a]#1")
    ]
    ev = engine.observe(1, {metric_key(LAT, "a"): 2.0, metric_key(LAT, "b"): 3.0})
    assert [(e.kind, e.alert["endpoint"]) for e in ev] == [(FIRED, "b")]
    assert [a["endpoint"] for a in engine.active()] == ["a", "b"]
    assert engine.active_counts() == {WARNING: 2, CRITICAL: 0}
    ev = engine.observe(2, {metric_key(LAT, "a"): 0.1})  # b: no data, stays
    assert [(e.kind, e.alert["endpoint"], e.alert["end"]) for e in ev] == [(RESOLVED, "a", 2)]
    assert [a["endpoint"] for a in engine.active()] == ["b"]


def test_scopes_all_and_one_endpoint():
    overall = AlertRule("all", "p95(latency)", warning=1.0)
    one = AlertRule("one", "p95(latency)", warning=1.0, endpoint="a")
    engine = AlertEngine([overall, one])
    ev = engine.observe(0, {LAT: 0.5, metric_key(LAT, "a"): 2.0, metric_key(LAT, "b"): 9.0})
    assert [(e.alert["rule"], e.alert["endpoint"], e.alert["key"]) for e in ev] == [
        ("one", "a", "latency_p95_s{endpoint=a}")  # one named endpoint: the rule's name as is
    ]


def test_alert_record_fields():
    engine = AlertEngine([lat_rule()], source="checkout")
    (fired,) = engine.observe(10.0, {LAT: 1.5})
    assert fired.to_dict()["event"] == FIRED
    a = fired.alert
    assert a == {
        "kind": "alert",
        "id": "lat#1",
        "source": "checkout",
        "rule": "lat",
        "rule_name": "lat",
        "metric": "p95(latency)",
        "key": LAT,
        "endpoint": None,
        "level": WARNING,
        "start": 10.0,
        "at_s": 10.0,
        "fired": 10.0,
        "escalated": None,
        "end": None,
        "resolved": None,
        "peak": 1.5,
        "peak_at": 10.0,
        "last": 1.5,
        "op": ">",
        "warning": 1.0,
        "critical": 5.0,
        "text": "p95(latency): warning > 1s, critical > 5s",
    }
    engine.observe(11.0, {LAT: 1.2})
    (done,) = engine.finish(12.0)
    assert (done.alert["end"], done.alert["resolved"], done.alert["closed_by"], done.alert["peak_at"]) == (
        12.0,
        12.0,
        "finish",
        10.0,
    )
    assert a["end"] is None  # events carry copies
    assert engine.active() == [] and engine.fired_total == 1


def test_defaults_are_the_suites():
    by_name = {r.name: r for r in DEFAULT_RULES}
    assert {n: (r.key, r.warning, r.critical, r.endpoint) for n, r in by_name.items()} == {
        "response_time": ("latency_p95_s", 1.0, 5.0, "*"),
        "error_rate": ("error_rate", 0.05, 0.20, "*"),
        "memory": ("target_memory", 1e9, 2e9, None),
        "cpu": ("target_cpu", 0.80, 0.95, None),
    }
    engine = AlertEngine(DEFAULT_RULES)
    ev = engine.observe(
        0, {"target_memory": 1.5e9, "target_cpu": 0.97, metric_key("error_rate", "x"): 0.1, metric_key(LAT, "x"): 0.2}
    )
    assert [(e.alert["rule"], e.alert["level"]) for e in ev] == [
        ("error_rate[x]", WARNING),
        ("memory", WARNING),
        ("cpu", CRITICAL),
    ]


# --- metric expressions, levels, rule parsing ------------------------------------------------


@pytest.mark.parametrize(
    "text, key, kind",
    [
        ("p95(latency)", "latency_p95_s", "seconds"),
        (" p99.9( latency ) ", "latency_p99.9_s", "seconds"),
        ("median(service_time)", "service_time_p50_s", "seconds"),
        ("avg(latency)", "latency_mean_s", "seconds"),
        ("stdev(latency)", "latency_stdev_s", "seconds"),
        ("max(latency)", "latency_max_s", "seconds"),
        ("error_rate", "error_rate", "fraction"),
        ("target_memory", "target_memory", "bytes"),
        ("target_cpu", "target_cpu", "fraction"),
        ("target_connections", "target_connections", "number"),
        ("rps", "rps", "number"),
        ("probe_latency_s", "probe_latency_s", "seconds"),
        ("heap_bytes", "heap_bytes", "bytes"),
        ("queue_depth", "queue_depth", "number"),
    ],
)
def test_parse_metric(text, key, kind):
    assert parse_metric(text) == (key, kind)


@pytest.mark.parametrize(
    "text, message",
    [
        ("latency", "needs an aggregate"),
        ("p42(latency)", "unknown aggregate 'p42'"),
        ("p95(send_time)", "unknown series 'send_time'"),
        ("P95(latency)", "unknown metric 'P95'"),  # names are lower case
        ("", "expected a metric"),
    ],
)
def test_parse_metric_errors(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_metric(text)


@pytest.mark.parametrize(
    "value, kind, expected",
    [
        ("> 1s", "seconds", (">", 1.0)),
        ("250ms", "seconds", (None, 0.25)),
        (0, "seconds", (None, 0.0)),
        (">= 5%", "fraction", (">=", 0.05)),
        (0.2, "fraction", (None, 0.2)),
        ("> 1GB", "bytes", (">", 1e9)),
        ("512MiB", "bytes", (None, 512 * 1024**2)),
        ("< 10", "number", ("<", 10.0)),
    ],
)
def test_parse_level(value, kind, expected):
    assert parse_level(value, kind) == expected


@pytest.mark.parametrize(
    "value, kind, message",
    [
        (1, "seconds", "needs a unit"),
        ("> 2", "seconds", "needs a unit"),
        (">", "seconds", "expected a value after the operator"),
        ("fast", "number", "plain number"),
        (True, "number", "got bool"),
        ("-5%", "fraction", "must not be negative"),
    ],
)
def test_parse_level_errors(value, kind, message):
    with pytest.raises(ValueError, match=message):
        parse_level(value, kind)


def test_parse_rules_section():
    rules = parse_rules(
        [
            {
                "name": "slow-health",
                "metric": "p99(latency)",
                "endpoint": "health",
                "warning": "> 200ms",
                "critical": "> 1s",
                "for": "10s",
                "clear": "30s",
            },
            {"metric": "target_memory", "warning": "1GB"},
            "defaults",
        ],
        endpoints=["health"],
    )
    assert rules[0] == AlertRule(
        "slow-health", "p99(latency)", warning=0.2, critical=1.0, for_s=10.0, clear_s=30.0, endpoint="health"
    )
    assert (rules[1].name, rules[1].warning, rules[1].critical, rules[1].for_s, rules[1].clear_s) == (
        "target_memory",
        1e9,
        None,
        0.0,
        0.0,
    )
    assert rules[2:] == DEFAULT_RULES
    assert parse_rules(None) == DEFAULT_RULES
    assert parse_rules([]) == ()


def test_parse_rules_reports_every_problem_with_its_path():
    with pytest.raises(AlertRuleError) as info:
        parse_rules(
            [
                {"metric": "p95(latency)", "warning": 1, "critical": "> 500ms", "bogus": 1},  # 0
                {"metric": "latency", "warning": "1s"},  # 1
                "everything",  # 2
                {"metric": "error_rate", "warning": "> 5%", "critical": "< 20%", "for": "soon"},  # 3
                {"metric": "target_cpu"},  # 4
                {"name": "memory", "metric": "target_memory", "warning": "1GB"},  # 5
                "defaults",  # 6: its "memory" clashes with 5
                {"warning": "1s", "endpoint": "nope"},  # 7
            ],
            path="alerts",
            endpoints=["health"],
        )
    assert str(info.value).splitlines() == [
        "alerts[0].warning: a duration needs a unit, e.g. 1s or 250ms (got 1)",
        "alerts[0].bogus: unknown key; expected one of: name, metric, endpoint, warning, critical, for, clear",
        (  # the message thresholds give (one grammar)
            "alerts[1].metric: 'latency' is a series and needs an aggregate at column 1; "
            "expected e.g. p99(latency) or avg(latency)"
        ),
        'alerts[2]: expected a rule mapping or "defaults", got str',
        "alerts[3].critical: must use the same comparison as warning (>)",
        (
            "alerts[3].for: invalid duration 'soon': expected a number with a unit (ns, us, ms, s, m, h) "
            "such as 30s, 250ms or 1m30s"
        ),
        "alerts[4]: give a warning level, a critical level or both",
        "alerts[6]: duplicate rule name 'memory' (also at [5].name)",
        "alerts[7].metric: required key is missing",
        "alerts[7].endpoint: no request entry named 'nope'; expected \"*\" or one of: health",
    ]
    assert info.value.problems[1] == ((0, "bogus"), info.value.problems[1][1])


def test_rule_problems_severity_order_and_section_shape():
    assert rule_problems({"metric": "rps"}) == [((), "expected a list of alert rules, got dict")]
    assert rule_problems([{"metric": "p95(latency)", "warning": "2s", "critical": "1s"}]) == [
        ((0, "critical"), "must be at least as severe as warning (> 2s)")
    ]
    assert rule_problems([{"metric": "rps", "warning": "< 10", "critical": "< 20"}]) == [
        ((0, "critical"), "must be at least as severe as warning (< 10)")
    ]


def test_rule_constructor_checks():
    with pytest.raises(ValueError, match="neither a warning nor a critical"):
        AlertRule("x", "rps")
    with pytest.raises(ValueError, match="less severe"):
        AlertRule("x", "rps", warning=5, critical=1)
    with pytest.raises(ValueError, match="unique"):
        AlertEngine([lat_rule(), lat_rule()])


# --- keys and metrics from aggregate statistics ----------------------------------------------


def test_metric_keys_round_trip():
    assert metric_key("error_rate") == "error_rate"
    assert metric_key("latency_p95_s", "api.v1-x") == "latency_p95_s{endpoint=api.v1-x}"
    assert split_key("latency_p95_s{endpoint=api.v1-x}") == ("latency_p95_s", "api.v1-x")
    assert split_key("error_rate") == ("error_rate", None)


def test_metrics_from_stats():
    import numpy as np

    s = Stats(duration_s=2.0)
    s.requests, s.errors = 4, 1
    s.errors_by_class[ErrorClass.TIMEOUT] = 1
    s.latency.record_many(np.array([100_000_000, 200_000_000, 300_000_000, 2_000_000_000], dtype=np.int64))
    m = metrics_from_stats(s, "api", series=("latency",))
    assert m[metric_key("requests", "api")] == 4
    assert m[metric_key("error_rate", "api")] == 0.25
    assert m[metric_key("rps", "api")] == 2.0
    assert m[metric_key("latency_max_s", "api")] == 2.0
    assert m[metric_key("latency_min_s", "api")] == 0.1
    assert m[metric_key("latency_p50_s", "api")] == pytest.approx(0.2, rel=0.01)
    assert m[metric_key("latency_p95_s", "api")] == pytest.approx(2.0, rel=0.01)
    assert m[metric_key("latency_mean_s", "api")] == pytest.approx(0.65)
    assert not any(k.startswith("service_time") for k in m)
    empty = metrics_from_stats(Stats(duration_s=1.0))
    assert empty == {"requests": 0.0, "errors": 0.0, "rps": 0.0}  # no error_rate, no latency: no data
    # what the rules read, end to end
    engine = AlertEngine(DEFAULT_RULES)
    assert [(e.alert["rule_name"], e.alert["endpoint"], e.alert["level"]) for e in engine.observe(0, m)] == [
        ("response_time", "api", WARNING),
        ("error_rate", "api", CRITICAL),
    ]


def _some_stats(seed: int) -> Stats:
    import numpy as np

    rng = np.random.default_rng(seed)
    s = Stats(duration_s=10.0)
    s.requests = 500
    s.errors = int(rng.integers(0, 50))
    s.latency.record_many(rng.lognormal(17, 1.0, 500).astype(np.int64))
    s.service_time.record_many(rng.lognormal(16, 1.0, 500).astype(np.int64))
    return s


@pytest.mark.parametrize(
    "only",
    [
        {"latency_p95_s"},
        {"error_rate", "service_time_p99.9_s", "latency_stdev_s"},
        {"latency_min_s", "latency_max_s", "rps", "requests"},
        {"target_memory_bytes"},  # none of a Stats's: nothing
        set(),
    ],
)
def test_metrics_from_stats_for_only_some_names_are_those_of_the_whole_set(only):
    s = _some_stats(7)
    full = metrics_from_stats(s, "api")
    assert metrics_from_stats(s, "api", only=only) == {k: v for k, v in full.items() if split_key(k)[0] in only}


def test_the_engine_says_what_its_rules_read_per_scope():
    rules = [
        AlertRule(name="all", metric="p95(latency)", warning=1.0),
        AlertRule(name="each", metric="error_rate", warning=0.1, endpoint="*"),
        AlertRule(name="one", metric="p99(service_time)", warning=1.0, endpoint="api"),
    ]
    engine = AlertEngine(rules)
    assert engine.reads(None) == {"latency_p95_s"}
    assert engine.reads("api") == {"error_rate", "service_time_p99_s"}
    assert engine.reads("health") == {"error_rate"}
    assert AlertEngine([rules[0]]).reads("api") == frozenset()


def test_observing_only_what_the_rules_read_gives_the_same_events():
    """The recorder computes only engine.reads(scope) (run/windows.py): the same alerts."""
    whole, lean = AlertEngine(DEFAULT_RULES), AlertEngine(DEFAULT_RULES)
    seen = []
    for t in range(30):
        full, part = {}, {}
        for i, e in enumerate(("api", "health")):
            s = _some_stats(t * 2 + i)
            full |= metrics_from_stats(s, e)
            part |= metrics_from_stats(s, e, only=lean.reads(e))
        full |= metrics_from_stats(_some_stats(100 + t))
        part |= metrics_from_stats(_some_stats(100 + t), only=lean.reads(None))
        assert len(part) < len(full)
        a, b = whole.observe(float(t), full), lean.observe(float(t), part)
        assert [x.to_dict() for x in a] == [x.to_dict() for x in b]
        seen += a
    assert seen  # the stats broke the default rules at least once
