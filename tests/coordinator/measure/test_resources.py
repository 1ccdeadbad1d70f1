"""horde.coordinator.measure.resources: per-window target and node resources from scraped readings."""

from __future__ import annotations

import numpy as np
import pytest

from horde.coordinator.measure.resources import (
    NODE_CPU_SATURATED,
    RESOURCE_SERIES,
    TARGET_CONNECTIONS,
    TARGET_CPU,
    TARGET_FDS,
    TARGET_MEMORY,
    NodeSeries,
    Reading,
    ResourceSeries,
    aggregate,
)


def _series(readings: list[Reading], window_s: float = 1.0) -> ResourceSeries:
    s = ResourceSeries(window_s=window_s)
    for r in readings:
        s.add(r)
    return s


def _cpu(s: ResourceSeries, windows: int) -> list[float | None]:
    return [s.window(w).get(TARGET_CPU) for w in range(windows)]


# -- CPU: a rate from a cumulative counter ---------------------------------------------------


@pytest.mark.parametrize(
    "points, window_s, expected",
    [
        # (t_s, cpu_seconds_total) per reading -> CPU cores per window
        ([(0.5, 10.0), (1.5, 10.5), (2.5, 12.5)], 1.0, [None, 0.5, 2.0]),  # the first reading has no rate
        ([(0.0, 0.0), (0.5, 0.1), (0.9, 0.5)], 1.0, [1.0]),  # two rates in one window: the peak
        ([(0.0, 0.0), (2.0, 1.0)], 1.0, [None, None, 0.5]),  # a gap: the rate lands in the later window
        ([(0.0, 0.0), (1.0, 0.25), (1.5, 0.75)], 0.5, [None, None, 0.25, 1.0]),  # half-second windows
        ([(0.0, 5.0), (1.0, 5.0)], 1.0, [None, 0.0]),  # an idle target: a rate of 0, not missing
    ],
)
def test_cpu_rate_from_the_counter(points, window_s, expected) -> None:
    s = _series([Reading(t_s=t, cpu_seconds_total=c) for t, c in points], window_s=window_s)
    assert _cpu(s, len(expected)) == pytest.approx(expected)


def test_a_counter_reset_is_never_a_negative_rate_and_the_next_interval_is_right() -> None:
    # The target restarted between 1 s and 2 s: its counter went from 12 back to 0.5.
    s = _series([Reading(t_s=t, cpu_seconds_total=c) for t, c in [(0.0, 10.0), (1.0, 12.0), (2.0, 0.5), (3.0, 1.5)]])
    cpu = _cpu(s, 4)
    assert cpu[1] == pytest.approx(2.0)
    # Clamped to 0 (what horde does) or the counter since the restart (Prometheus' rate()): never -11.5.
    assert cpu[2] is not None and 0.0 <= cpu[2] <= 0.5
    assert cpu[3] == pytest.approx(1.0)  # counted from the value after the reset


@pytest.mark.parametrize(
    "points",
    [
        [(1.0, 10.0), (1.0, 20.0)],  # two readings at the same instant: no division by zero
        [(2.0, 10.0), (1.5, 20.0)],  # time going backwards: no rate from it
    ],
)
def test_no_rate_without_time_passing(points) -> None:
    s = _series([Reading(t_s=t, cpu_seconds_total=c) for t, c in points])
    assert s.values(TARGET_CPU).tolist() == []


def test_missing_cpu_readings_give_no_rate() -> None:
    s = _series(
        [
            Reading(t_s=0.0, rss_bytes=1.0),  # no counter at all
            Reading(t_s=1.0, rss_bytes=1.0, cpu_seconds_total=3.0),  # the first counter: nothing to diff
            Reading(t_s=2.0, rss_bytes=1.0, cpu_seconds_total=4.0),
        ]
    )
    assert _cpu(s, 3) == [None, None, 1.0]


# -- gauges ----------------------------------------------------------------------------------


def test_a_window_keeps_the_peak_of_each_gauge() -> None:
    s = _series(
        [
            Reading(t_s=0.1, rss_bytes=100.0, open_connections=5.0, open_fds=20.0),
            Reading(t_s=0.6, rss_bytes=300.0, open_connections=2.0, open_fds=21.0),
            Reading(t_s=0.9, rss_bytes=200.0),  # a partial scrape adds what it has
            Reading(t_s=1.2, rss_bytes=50.0, open_connections=1.0),
        ]
    )
    assert s.window(0) == {TARGET_MEMORY: 300.0, TARGET_CONNECTIONS: 5.0, TARGET_FDS: 21.0}
    assert s.window(1) == {TARGET_MEMORY: 50.0, TARGET_CONNECTIONS: 1.0}  # no fds read: absent, not 0
    assert s.window(2) == {}  # past the last reading
    assert s.window(10_000) == {}


@pytest.mark.parametrize(
    "t_s, window_s, index",
    [
        (0.0, 1.0, 0),
        (0.999, 1.0, 0),
        (1.0, 1.0, 1),  # a window's end belongs to the next window
        (-0.5, 1.0, 0),  # a reading before the start instant counts in the first window
        (4.9, 2.5, 1),
        (5.0, 2.5, 2),
    ],
)
def test_window_of_a_reading(t_s: float, window_s: float, index: int) -> None:
    s = _series([Reading(t_s=t_s, rss_bytes=7.0)], window_s=window_s)
    assert s.window(index) == {TARGET_MEMORY: 7.0}
    assert [w for w in range(4) if s.window(w)] == [index]


def test_values_span_inclusive_windows_and_skip_the_gaps() -> None:
    s = _series([Reading(t_s=float(t), rss_bytes=float(10 * t)) for t in (0, 1, 3, 4)])  # no reading in window 2
    assert s.values(TARGET_MEMORY).tolist() == [0.0, 10.0, 30.0, 40.0]
    assert s.values(TARGET_MEMORY, 1, 3).tolist() == [10.0, 30.0]  # first..last inclusive
    assert s.values(TARGET_MEMORY, 3).tolist() == [30.0, 40.0]  # open end
    assert s.values(TARGET_MEMORY, None, 1).tolist() == [0.0, 10.0]  # open start
    assert s.values(TARGET_MEMORY, -5, 0).tolist() == [0.0]  # a negative first clamps to 0
    assert s.values(TARGET_MEMORY, 9, 12).tolist() == []  # past the end
    assert s.values(TARGET_FDS).tolist() == []  # a series never read
    assert s.values(TARGET_MEMORY).dtype == float


def test_values_are_a_copy() -> None:
    s = _series([Reading(t_s=0.0, rss_bytes=1.0)])
    v = s.values(TARGET_MEMORY)
    v[0] = 99.0
    assert s.window(0) == {TARGET_MEMORY: 1.0}


def test_summary_counts_scrapes_and_failures_and_describes_each_series() -> None:
    s = _series([Reading(t_s=float(t), rss_bytes=m) for t, m in [(0, 4.0), (1, 8.0), (2, 6.0)]])
    s.failed()
    s.failed()
    assert s.summary() == {
        "scrapes": 3,
        "failures": 2,
        TARGET_MEMORY: {"max": 8.0, "mean": 6.0, "min": 4.0, "last": 6.0, "windows": 3},
    }
    assert ResourceSeries().summary() == {"scrapes": 0, "failures": 0}  # nothing read: no series at all


def test_series_names() -> None:
    assert RESOURCE_SERIES == ("target_memory", "target_cpu", "target_connections", "target_fds")


# -- aggregate -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, how, quantile, expected",
    [
        ([3.0, 1.0, 2.0], "max", None, 3.0),
        ([3.0, 1.0, 2.0], "min", None, 1.0),
        ([3.0, 1.0, 2.0], "mean", None, 2.0),
        ([1.0, 2.0, 3.0, 4.0], "quantile", 0.5, 2.0),  # inverted CDF: a value of the series, no interpolation
        ([1.0, 2.0, 3.0, 4.0], "quantile", 0.51, 3.0),
        ([1.0, 2.0, 3.0, 4.0], "quantile", 1.0, 4.0),
        ([], "max", None, None),  # no windows: no value (not 0)
        ([], "quantile", 0.9, None),
    ],
)
def test_aggregate(values, how, quantile, expected) -> None:
    assert aggregate(np.asarray(values, dtype=float), how, quantile) == expected


def test_aggregate_rejects_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown aggregate 'median'"):
        aggregate(np.ones(3), "median")


# -- nodes -----------------------------------------------------------------------------------


def test_node_windows_keep_peaks_per_node() -> None:
    n = NodeSeries()
    long_id = "abcdef0123456789abcdef"
    n.add(long_id, {"t_s": 0.2, "cpu_fraction": 0.5, "cpus": 2.0, "tcp_connections": 10.0, "unknown": 1.0})
    n.add(long_id, {"t_s": 0.7, "cpu_fraction": 0.7, "tcp_connections": 4.0})
    n.add("b", {"t_s": 1.5, "mem_used_bytes": 5e8})
    n.add("b", {"cpu_fraction": 0.1})  # no time: the first window
    assert n.window(0) == {
        long_id[:12]: {"cpu_fraction": 0.7, "cpus": 2.0, "tcp_connections": 10.0},  # ids shortened for the bundle
        "b": {"cpu_fraction": 0.1},
    }
    assert n.window(1) == {"b": {"mem_used_bytes": 5e8}}
    assert n.window(2) == {}


@pytest.mark.parametrize(
    "cpu, saturated",
    [
        ([0.5, 0.7], False),
        ([0.9, 0.9], False),  # a mean of exactly 90% is not over the line
        ([0.95, 0.9], True),
        ([1.0, 0.2], False),  # a peak alone does not saturate a node: the mean does
    ],
)
def test_node_saturation_is_a_mean_over_90_percent(cpu: list[float], saturated: bool) -> None:
    assert NODE_CPU_SATURATED == 0.90
    n = NodeSeries()
    for t, c in enumerate(cpu):
        n.add("n1", {"t_s": float(t), "cpu_fraction": c})
    assert n.summary({})["saturated"] == (["n1"] if saturated else [])


def test_node_summary() -> None:
    n = NodeSeries(window_s=2.0)
    n.add("n1", {"t_s": 0.0, "cpu_fraction": 0.2, "mem_used_bytes": 1.5e9, "net_sent_bytes_per_s": 2e6})
    n.add("n1", {"t_s": 1.0, "cpu_fraction": 0.6, "net_recv_bytes_per_s": 3.5e6, "tcp_connections": 42.0})
    n.add("n1", {"t_s": 2.0, "cpu_fraction": 0.4, "mem_used_bytes": 1e9})
    n.add("n2", {"t_s": 0.0, "mem_used_bytes": 1e9})  # no CPU readings: left out
    out = n.summary({"n1": ["0", "1"]})
    assert out == {
        "nodes": {
            "n1": {
                "cpu_mean": 0.5,  # windows 0 (peak 0.6) and 1 (0.4)
                "cpu_max": 0.6,
                "mem_peak_mb": 1500.0,
                "net_tx_peak_mb_s": 2.0,
                "net_rx_peak_mb_s": 3.5,
                "tcp_connections_max": 42,
                "agents": ["0", "1"],
                "windows": 2,
            }
        },
        "saturated": [],
    }


def test_node_readings_take_the_same_room_however_long_the_run_and_sum_up_the_same() -> None:
    n = NodeSeries()
    cpu = [0.1 + (w % 10) / 20 for w in range(5000)]
    for w, c in enumerate(cpu):
        n.add("n1", {"t_s": w + 0.2, "cpu_fraction": c, "mem_used_bytes": 1e9 + w})
        n.add("n1", {"t_s": w + 0.7, "cpu_fraction": c / 2})  # a window keeps its peak
        if w == 100:
            room = n._nodes["n1"]._vals.nbytes
    assert n._nodes["n1"]._vals.nbytes == room  # 64 windows kept, at window 100 and at 5,000
    assert n.window(4999) == {"n1": {"cpu_fraction": cpu[-1], "mem_used_bytes": 1e9 + 4999}}
    assert n.window(10) == {}  # long let go: its figures live on in the totals
    n.add("n1", {"t_s": 3.0, "cpu_fraction": 1.0})  # a reading older than every window kept
    s = n.summary({})["nodes"]["n1"]
    assert s["windows"] == 5000 and s["cpu_max"] == round(max(cpu), 3)
    assert s["cpu_mean"] == round(sum(cpu) / len(cpu), 3) and s["mem_peak_mb"] == round((1e9 + 4999) / 1e6, 1)
