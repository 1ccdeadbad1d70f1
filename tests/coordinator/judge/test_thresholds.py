"""Threshold grammar, checks against a statistics snapshot, live and final evaluation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from horde.agents.samples import ErrorClass
from horde.coordinator.judge.thresholds import (
    OPERATORS,
    LiveEvaluator,
    ScopedThreshold,
    ThresholdSyntaxError,
    all_passed,
    parse_threshold,
)

MS = 1_000_000
S = 1_000_000_000


# --- fakes: the duck-typed statistics a threshold reads -----------------------------------


class FakeHistogram:
    """Exact quantiles of a list of nanosecond values (nearest rank)."""

    def __init__(self, values_ns: list[int] = ()) -> None:  # type: ignore[assignment]
        self.values = sorted(values_ns)
        self.count = len(self.values)
        self.min_ns = self.values[0] if self.values else None
        self.max_ns = self.values[-1] if self.values else None

    def value_at_quantile(self, q: float) -> int | None:
        if not self.values:
            return None
        rank = max(1, math.ceil(q * self.count))
        return self.values[rank - 1]

    def mean_ns(self) -> float | None:
        return sum(self.values) / self.count if self.values else None


@dataclass
class FakeStats:
    latency: FakeHistogram = field(default_factory=FakeHistogram)
    service_time: FakeHistogram = field(default_factory=FakeHistogram)
    send_lag: FakeHistogram = field(default_factory=FakeHistogram)
    rps: float | None = 0.0
    requests: int = 0
    errors: int = 0
    errors_by_class: dict[int, int] = field(default_factory=dict)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


def ms(*values: float) -> FakeHistogram:
    return FakeHistogram([int(v * MS) for v in values])


# 100 requests, 2 errors (1 timeout, 1 http_5xx), latencies 1..100 ms.
BUSY = FakeStats(
    latency=ms(*range(1, 101)),
    service_time=ms(*(v / 2 for v in range(1, 101))),
    send_lag=ms(0.1, 0.2, 0.3),
    rps=250.0,
    requests=100,
    errors=2,
    errors_by_class={int(ErrorClass.TIMEOUT): 1, int(ErrorClass.HTTP_5XX): 1},
)
EMPTY = FakeStats(rps=None)


# --- parsing ------------------------------------------------------------------------------

GOOD = [
    # (text, kind, aggregate, quantile, series, op, value, error_class)
    ("p99(latency) < 500ms", "series", "quantile", 0.99, "latency", "<", 500 * MS, None),  # the common case
    ("p99.9(service_time) <= 1s", "series", "quantile", 0.999, "service_time", "<=", 1 * S, None),  # decimal quantile
    ("p50(send_lag) < 5ms", "series", "quantile", 0.5, "send_lag", "<", 5 * MS, None),  # send lag series
    ("p100(latency) < 2s", "series", "quantile", 1.0, "latency", "<", 2 * S, None),  # p100 is the max
    ("median(latency) < 20", "series", "quantile", 0.5, "latency", "<", 20 * MS, None),  # bare number = ms
    ("avg(latency) < 100ms", "series", "mean", None, "latency", "<", 100 * MS, None),  # avg is mean
    ("mean(latency) < 0.5s", "series", "mean", None, "latency", "<", 500 * MS, None),  # fractional seconds
    ("max(latency) < 2s", "series", "max", None, "latency", "<", 2 * S, None),
    ("min(service_time) >= 250us", "series", "min", None, "service_time", ">=", 250_000, None),  # microseconds
    ("max(latency) < 1m", "series", "max", None, "latency", "<", 60 * S, None),  # minutes
    ("p99(latency) < 500 ms", "series", "quantile", 0.99, "latency", "<", 500 * MS, None),  # space before unit
    ("  p99( latency )<500ms  ", "series", "quantile", 0.99, "latency", "<", 500 * MS, None),  # free whitespace
    ("error_rate < 1%", "error_rate", None, None, None, "<", 0.01, None),  # percent
    ("error_rate < 0.01", "error_rate", None, None, None, "<", 0.01, None),  # bare fraction
    ("error_rate <= .5%", "error_rate", None, None, None, "<=", 0.005, None),  # leading-dot number
    ("error_rate(timeout) == 0", "error_rate", None, None, None, "==", 0.0, ErrorClass.TIMEOUT),  # one class
    ("error_rate(http_5xx) < 2%", "error_rate", None, None, None, "<", 0.02, ErrorClass.HTTP_5XX),
    ("rps > 1000", "rps", None, None, None, ">", 1000.0, None),
    ("rps >= 99.5", "rps", None, None, None, ">=", 99.5, None),  # fractional rps
    ("requests >= 100", "requests", None, None, None, ">=", 100.0, None),
    ("errors == 0", "errors", None, None, None, "==", 0.0, None),
    ("errors(connect) != 3", "errors", None, None, None, "!=", 3.0, ErrorClass.CONNECT),  # per-class count
]


@pytest.mark.parametrize("text,kind,aggregate,quantile,series,op,value,error_class", GOOD)
def test_parse_good(text, kind, aggregate, quantile, series, op, value, error_class):
    t = parse_threshold(text)
    assert (t.kind, t.aggregate, t.series, t.op, t.error_class) == (kind, aggregate, series, op, error_class)
    assert t.quantile == quantile  # exact: p99.9 is 0.999, not 0.9990000000000001
    assert t.value == pytest.approx(value, rel=1e-12)
    assert t.text == text.strip()


BAD = [
    # (text, fragment of the message, column)
    (
        "p99(latncy) < 500ms",
        (
            "unknown series 'latncy' at column 5; expected latency, service_time, send_lag, "
            "target_memory, target_cpu, target_connections or target_fds"
        ),
        5,
    ),
    ("p99 latency < 5", "expected '(' and a series after 'p99' at column 5", 5),  # missing parenthesis
    ("p99(latency < 5", "expected ')' after 'latency' at column 13", 13),  # unclosed parenthesis
    ("latency < 5ms", "'latency' is a series and needs an aggregate at column 1", 1),
    ("lat < 5ms", "unknown metric 'lat' at column 1", 1),
    ("p150(latency) < 5", "quantile 'p150' is above p100 at column 1", 1),
    ("p99(latency) 500ms", "expected an operator", 14),  # operator missing
    ("p99(latency) = 500", "expected an operator: <, <=, >, >=, == or != at column 14; found '='", 14),
    ("p99(latency) =< 500", "expected an operator", 14),  # reversed operator
    ("p99(latency) <", "expected a number at column 15; found end of text", 15),
    ("p99(latency) < fast", "expected a number at column 16", 16),
    ("p99(latency) < -5ms", "expected a number at column 16", 16),  # no negative limits
    ("p99(latency) < 5kg", "unknown duration unit 'kg' at column 17", 17),
    ("p99(latency) < 5%", "unknown duration unit '%' at column 17", 17),  # percent is not a duration
    ("p99(latency) < 5ms and more", "unexpected 'and' after the value at column 20", 20),
    ("error_rate < 5", "error rate 5 is above 1 at column 14; a bare number is a fraction, write 5%", 14),
    ("error_rate < 150%", "error rate 150% is above 100% at column 14", 14),
    ("error_rate < 1ms", "unknown unit 'ms' at column 15", 15),
    ("error_rate(tmeout) == 0", "unknown error class 'tmeout' at column 12; expected connect, timeout", 12),
    ("error_rate(ok) == 0", "unknown error class 'ok'", 12),  # OK is not an error class
    ("error_rate() == 0", "expected an error class", 12),
    ("rps(list) > 5", "'rps' takes no argument at column 4", 4),
    ("rps > 5/s", "unexpected '/s' after the value at column 8", 8),
    ("requests >= 10.5", "'requests' is a count: expected a whole number at column 13", 13),
    ("errors == 1ms", "unexpected unit 'ms' at column 12; 'errors' takes a plain number", 12),
    ("", "empty threshold at column 1", 1),
    ("   ", "empty threshold at column 1", 1),
    ("< 5", "expected a metric", 1),
]


@pytest.mark.parametrize("text,fragment,column", BAD)
def test_parse_bad(text, fragment, column):
    with pytest.raises(ThresholdSyntaxError) as info:
        parse_threshold(text)
    assert fragment in info.value.message
    assert info.value.column == column
    assert str(info.value) == info.value.message


@given(st.text(alphabet="p9.()<>=!% latencyservice_timerps0123456789ms_errorsxyz", max_size=30))
def test_parse_only_raises_syntax_errors_with_a_column_inside_the_text(text):
    try:
        parse_threshold(text)
    except ThresholdSyntaxError as exc:
        assert 1 <= exc.column <= len(text) + 1
        assert f"column {exc.column}" in exc.message


@given(
    q=st.decimals(min_value=0, max_value=100, places=2),
    number=st.decimals(min_value=0, max_value=10_000, places=3),
    unit=st.sampled_from([("us", 1e3), ("ms", 1e6), ("s", 1e9), ("", 1e6)]),
)
def test_parsed_quantile_and_value_match_the_text(q, number, unit):
    t = parse_threshold(f"p{q}(latency) < {number}{unit[0]}")
    assert t.quantile == pytest.approx(float(q) / 100)
    assert t.value == pytest.approx(float(number) * unit[1])


# --- check --------------------------------------------------------------------------------

CHECKS = [
    # (expression, stats, ok, observed_text)
    ("p99(latency) < 500ms", BUSY, True, "99ms"),  # pass
    ("p99(latency) < 50ms", BUSY, False, "99ms"),  # fail
    ("p99(latency) < 50ms", EMPTY, False, "no data"),  # empty histogram fails
    ("p50(service_time) <= 25ms", BUSY, True, "25ms"),  # boundary is inclusive for <=
    ("p50(service_time) < 25ms", BUSY, False, "25ms"),  # and exclusive for <
    ("avg(latency) < 60ms", BUSY, True, "50.5ms"),  # mean
    ("avg(latency) < 50ms", BUSY, False, "50.5ms"),
    ("max(latency) < 2s", BUSY, True, "100ms"),
    ("min(latency) > 2ms", BUSY, False, "1ms"),
    ("max(send_lag) < 1ms", BUSY, True, "0.3ms"),
    ("min(send_lag) < 1ms", EMPTY, False, "no data"),
    ("error_rate < 5%", BUSY, True, "2%"),  # overall rate
    ("error_rate < 1%", BUSY, False, "2%"),
    ("error_rate < 1%", EMPTY, False, "no data"),  # a rate over zero requests is no data
    ("error_rate(timeout) < 2%", BUSY, True, "1%"),  # one class
    ("error_rate(reset) == 0", BUSY, True, "0%"),  # a class absent from the mapping counts 0
    ("error_rate(http_5xx) == 0", BUSY, False, "1%"),
    ("rps > 100", BUSY, True, "250/s"),
    ("rps > 1000", BUSY, False, "250/s"),
    ("rps > 1", EMPTY, False, "no data"),  # no rps figure at all
    ("rps > 1", FakeStats(rps=0.0), False, "0/s"),  # zero rps is an observation, not "no data"
    ("requests >= 100", BUSY, True, "100"),
    ("requests >= 101", BUSY, False, "100"),
    ("requests >= 1", EMPTY, False, "0"),  # counts: empty is zero, not "no data"
    ("errors == 0", EMPTY, True, "0"),
    ("errors == 0", BUSY, False, "2"),
    ("errors(timeout) <= 1", BUSY, True, "1"),
    ("errors(connect) != 0", BUSY, False, "0"),
]


@pytest.mark.parametrize("text,stats,ok,observed_text", CHECKS)
def test_check(text, stats, ok, observed_text):
    verdict = parse_threshold(text).check(stats)
    assert (verdict.ok, verdict.observed_text) == (ok, observed_text)
    assert (verdict.observed is None) == (observed_text == "no data")


def test_errors_by_class_may_be_a_sequence():
    stats = FakeStats(requests=10, errors=3, errors_by_class=[0, 0, 3, 0])  # type: ignore[arg-type]
    assert parse_threshold("error_rate(timeout) < 50%").observe(stats) == pytest.approx(0.3)
    assert parse_threshold("errors(other) == 0").observe(stats) == 0  # beyond the sequence: zero


@given(op=st.sampled_from(OPERATORS), observed=st.integers(0, 2000), limit=st.integers(0, 2000))
def test_check_agrees_with_python_comparison(op, observed, limit):
    stats = FakeStats(requests=observed)
    expected = eval(f"{observed} {op} {limit}")
    assert parse_threshold(f"requests {op} {limit}").check(stats).ok is expected


def test_limit_text_uses_the_observed_units():
    assert parse_threshold("p99(latency) < 0.5s").limit_text == "< 500ms"
    assert parse_threshold("error_rate < 0.015").limit_text == "< 1.5%"


# --- live and final evaluation ------------------------------------------------------------


def rule(text: str, **kw) -> ScopedThreshold:
    return ScopedThreshold(parse_threshold(text), **kw)


class Stats:
    """get_stats that serves given snapshots by window and records what was asked."""

    def __init__(self, cumulative: FakeStats, windowed: FakeStats | None = None) -> None:
        self.cumulative = cumulative
        self.windowed = windowed or cumulative
        self.calls: list[tuple] = []

    def __call__(self, endpoint, stage, window_s):
        self.calls.append((endpoint, stage, window_s))
        return self.cumulative if window_s is None else self.windowed


GOOD_STATS = FakeStats(latency=ms(10, 20), rps=100.0, requests=50)
SLOW_STATS = FakeStats(latency=ms(900, 1000), rps=100.0, requests=50)


def test_abort_only_after_delay():
    evaluator = LiveEvaluator([rule("p99(latency) < 500ms", abort=True, delay_s=10.0)])
    stats = Stats(SLOW_STATS)
    assert evaluator.evaluate(9.99, stats) == []  # before the delay: not even evaluated
    assert stats.calls == []
    aborts = evaluator.evaluate(10.0, stats)
    assert [a.rule.threshold.text for a in aborts] == ["p99(latency) < 500ms"]
    assert aborts[0].verdict.observed_text == "1000ms"
    assert aborts[0].elapsed_s == 10.0
    assert "failed at 10s: observed 1000ms" in aborts[0].reason


def test_only_abort_rules_are_evaluated_live():
    evaluator = LiveEvaluator([rule("p99(latency) < 500ms", abort=False)])
    stats = Stats(SLOW_STATS)
    assert evaluator.evaluate(100.0, stats) == []
    assert stats.calls == []


def test_window_vs_cumulative():
    # Cumulative latency is fine, the last 5 s are slow: only the windowed rule aborts.
    windowed = rule("p99(latency) < 500ms", abort=True, window_s=5.0, endpoint="list", stage="ramp")
    cumulative = rule("p99(latency) < 500ms", abort=True)
    evaluator = LiveEvaluator([windowed, cumulative])
    stats = Stats(cumulative=GOOD_STATS, windowed=SLOW_STATS)
    aborts = evaluator.evaluate(30.0, stats)
    assert [a.rule for a in aborts] == [windowed]
    assert stats.calls == [("list", "ramp", 5.0), (None, None, None)]


def test_no_data_does_not_abort_live_but_fails_finally():
    evaluator = LiveEvaluator([rule("p99(latency) < 500ms", abort=True, stage="1")])
    stats = Stats(EMPTY)
    assert evaluator.evaluate(60.0, stats) == []
    [result] = evaluator.evaluate_final(stats)
    assert (result.verdict.ok, result.verdict.observed_text) == (False, "no data")


def test_evaluate_final_is_cumulative_for_every_rule_in_order():
    rules = [
        rule("p99(latency) < 500ms", abort=True, window_s=5.0, endpoint="list"),  # window ignored at the end
        rule("rps > 1000"),  # not an abort rule: still judged
        rule("requests >= 10", stage="0"),
    ]
    stats = Stats(cumulative=GOOD_STATS, windowed=SLOW_STATS)
    results = LiveEvaluator(rules).evaluate_final(stats)
    assert [r.rule for r in results] == rules
    assert [r.verdict.ok for r in results] == [True, False, True]
    assert [r.verdict.observed_text for r in results] == ["20ms", "100/s", "50"]
    assert stats.calls == [("list", None, None), (None, None, None), (None, "0", None)]
    assert not all_passed(results)
    assert all_passed(results[:1])


def test_scoped_rule_text_names_its_scope():
    assert rule("rps > 1", endpoint="list", stage="ramp").text == "rps > 1 [endpoint=list, stage=ramp]"
    assert rule("rps > 1").text == "rps > 1"


# --- target resources ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, series, aggregate, value",
    [
        ("max(target_memory) < 2000MB", "target_memory", "max", 2e9),  # MB are powers of 1000
        ("max(target_memory) < 1GiB", "target_memory", "max", 1024**3),
        ("max(target_memory) < 500", "target_memory", "max", 5e8),  # bare number: MB
        ("avg(target_cpu) < 90%", "target_cpu", "mean", 0.9),  # % of one core
        ("p95(target_cpu) < 1.5", "target_cpu", "quantile", 1.5),  # bare: cores
        ("max(target_connections) >= 1000", "target_connections", "max", 1000),
    ],
)
def test_resource_thresholds_parse(text, series, aggregate, value):
    t = parse_threshold(text)
    assert (t.kind, t.series, t.aggregate) == ("resource", series, aggregate)
    assert t.value == pytest.approx(value)


@pytest.mark.parametrize(
    "text, column",
    [
        ("max(target_memory) < 2 parsecs", 24),  # unknown size unit
        ("avg(target_cpu) < 90ms", 21),  # a duration is not a CPU unit
        ("max(target_connections) > 10%", 29),  # a count takes no unit
    ],
)
def test_resource_thresholds_reject_wrong_units(text, column):
    with pytest.raises(ThresholdSyntaxError) as e:
        parse_threshold(text)
    assert e.value.column == column


class _Resources:
    def __init__(self, by_series):
        self._by = by_series

    def resource_values(self, series):
        return self._by.get(series, [])


def test_resource_thresholds_check_per_window_values():
    stats = _Resources({"target_memory": [1.0e9, 2.5e9, 1.2e9], "target_cpu": [0.5, 0.7, 0.9]})
    peak = parse_threshold("max(target_memory) < 2000MB").check(stats)
    assert not peak.ok and peak.observed == 2.5e9 and peak.observed_text == "2500MB"
    assert parse_threshold("avg(target_cpu) < 80%").check(stats).ok  # mean 0.7
    assert not parse_threshold("avg(target_cpu) < 60%").check(stats).ok
    # no readings: no data, which fails
    assert parse_threshold("max(target_connections) >= 1").check(stats).observed_text == "no data"
    # a plain Stats object without resources: no data, never a crash
    assert parse_threshold("max(target_memory) < 1GB").check(object()).ok is False
