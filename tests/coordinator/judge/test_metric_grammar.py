"""judge/metrics.py: one metric grammar and one unit table for thresholds and alert rules. Pure."""

from __future__ import annotations

import pytest

from horde.agents.samples import ErrorClass
from horde.coordinator.judge import alert_rules, metrics, thresholds
from horde.coordinator.judge.metrics import MetricSyntaxError, parse_metric
from horde.coordinator.units import parse_duration, parse_size

# The same metric text in a threshold and in an alert rule: (text, kind, aggregate, quantile, series, unit)
SHARED = [
    ("p99(latency)", "series", "quantile", 0.99, "latency", "seconds"),
    ("p99.9(service_time)", "series", "quantile", 0.999, "service_time", "seconds"),
    ("median(latency)", "series", "quantile", 0.5, "latency", "seconds"),
    ("avg(latency)", "series", "mean", None, "latency", "seconds"),
    ("mean(service_time)", "series", "mean", None, "service_time", "seconds"),
    ("max(latency)", "series", "max", None, "latency", "seconds"),
    ("stdev(latency)", "series", "stdev", None, "latency", "seconds"),
    ("error_rate", "error_rate", None, None, None, "fraction"),
    ("errors", "errors", None, None, None, "number"),
    ("rps", "rps", None, None, None, "number"),
    ("requests", "requests", None, None, None, "number"),
]


@pytest.mark.parametrize(("text", "kind", "aggregate", "quantile", "series", "unit"), SHARED)
def test_a_metric_means_the_same_in_thresholds_and_alert_rules(text, kind, aggregate, quantile, series, unit):
    metric = parse_metric(text)
    assert (metric.kind, metric.aggregate, metric.quantile, metric.series, metric.unit) == (
        kind,
        aggregate,
        quantile,
        series,
        unit,
    )
    # A threshold on it reads the same statistic...
    threshold = thresholds.parse_threshold(f"{text} < 1")
    assert (threshold.kind, threshold.aggregate, threshold.quantile, threshold.series) == (
        kind,
        aggregate,
        quantile,
        series,
    )
    # ...and an alert rule on it reads the key of that statistic, in the same unit kind.
    key, alert_unit = alert_rules.parse_metric(text)
    assert alert_unit == unit
    if kind == "series":
        label = "p50" if text.startswith("median") else text.split("(")[0].replace("avg", "mean")
        assert key == f"{series}_{label}_s"
    else:
        assert key == text


def test_resources_aggregated_for_thresholds_read_bare_for_alerts():
    metric = parse_metric("max(target_memory)")
    assert (metric.kind, metric.aggregate, metric.series, metric.unit) == ("resource", "max", "target_memory", "bytes")
    assert thresholds.parse_threshold("max(target_memory) < 1GB").value == 1e9
    assert alert_rules.parse_metric("target_memory") == ("target_memory", "bytes")
    with pytest.raises(MetricSyntaxError, match="'target_memory' is a resource and needs an aggregate at column 1"):
        thresholds.parse_threshold("target_memory < 1GB")
    with pytest.raises(ValueError, match="latest reading: write target_memory"):
        alert_rules.parse_metric("max(target_memory)")


def test_error_classes_and_keys():
    metric = parse_metric("error_rate(timeout)")
    assert (metric.kind, metric.error_class) == ("error_rate", ErrorClass.TIMEOUT)
    with pytest.raises(ValueError, match="over every error class"):
        alert_rules.parse_metric("error_rate(timeout)")
    assert parse_metric("latency_p99.9_s", keys=True).name == "latency_p99.9_s"
    with pytest.raises(MetricSyntaxError, match="unknown metric 'queue_depth' at column 1"):
        parse_metric("queue_depth")  # keys are the alert rules' alone
    assert alert_rules.parse_metric("queue_depth") == ("queue_depth", "number")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("latency", "'latency' is a series and needs an aggregate at column 1; expected e.g. p99(latency)"),
        ("p99(latncy)", "unknown series 'latncy' at column 5"),
        ("p101(latency)", "quantile 'p101' is above p100 at column 1"),
        ("P99(latency)", "unknown metric 'P99' at column 1"),
        ("error_rate(tmeout)", "unknown error class 'tmeout' at column 12"),
        ("rps(health)", "'rps' takes no argument at column 4"),
        ("", "empty metric at column 1"),
    ],
)
def test_both_report_the_same_problem(text, message):
    with pytest.raises(MetricSyntaxError) as info:
        parse_metric(text)
    assert info.value.message.startswith(message)
    with pytest.raises(ValueError) as alert_info:
        alert_rules.parse_metric(text)
    assert str(alert_info.value) == info.value.message
    if text:
        with pytest.raises(MetricSyntaxError) as threshold_info:
            thresholds.parse_threshold(f"{text} < 1")
        assert threshold_info.value.message == info.value.message


@pytest.mark.parametrize(
    ("unit", "seconds"),
    [("ns", 1e-9), ("us", 1e-6), ("µs", 1e-6), ("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0)],
)
def test_durations_come_from_the_one_unit_table(unit, seconds):
    threshold_ns = thresholds.parse_threshold(f"p99(latency) < 3{unit}").value
    level_s = alert_rules.parse_level(f"> 3{unit}", "seconds")[1]
    assert threshold_ns == pytest.approx(parse_duration(f"3{unit}") * 1e9)
    assert level_s == pytest.approx(parse_duration(f"3{unit}")) == pytest.approx(3 * seconds)


@pytest.mark.parametrize("unit", ["B", "KB", "kb", "MB", "GB", "KiB", "MiB", "GiB", "gib"])
def test_sizes_come_from_the_one_unit_table(unit):
    threshold_bytes = thresholds.parse_threshold(f"max(target_memory) < 2{unit}").value
    level_bytes = alert_rules.parse_level(f"> 2{unit}", "bytes")[1]
    assert threshold_bytes == level_bytes == parse_size(f"2{unit}")


def test_percent_means_a_fraction_in_both():
    assert thresholds.parse_threshold("error_rate < 5%").value == pytest.approx(0.05)
    assert alert_rules.parse_level("> 5%", "fraction")[1] == pytest.approx(0.05)
    assert thresholds.parse_threshold("avg(target_cpu) < 80%").value == pytest.approx(0.8)
    assert alert_rules.parse_level("80%", "fraction")[1] == pytest.approx(0.8)


def test_whole_text_is_one_metric():
    with pytest.raises(MetricSyntaxError, match="unexpected '<' after the metric at column 14"):
        parse_metric("p99(latency) < 5ms")
    assert metrics.unit_of_key("heap_bytes") == "bytes"
