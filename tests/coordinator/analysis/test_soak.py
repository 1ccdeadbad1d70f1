"""horde.coordinator.analysis.soak: per-window series of a run and their leak and trend verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from horde.coordinator.analysis.soak import SoakSeries, analyse
from horde.coordinator.analysis.trends import MB

N = 120  # one-second windows: two real minutes
T = np.arange(1.0, N + 1.0)  # each window's end
BASE = 200 * MB
RNG_NOISE_B = 100_000  # ~0.1 MB of jitter on every memory reading


def _noise(seed: int, sd: float = RNG_NOISE_B, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, sd, n)


def _window(i: int, *, memory=None, coordinator=None, agents=None, **total) -> dict:
    """A closed window as the run session hands it over: `total` keys, target and generator."""
    w: dict = {"index": i, "end_s": float(T[i]), "total": dict(total)}
    if memory is not None:
        w["target"] = {"target_memory": float(memory)}
    if coordinator is not None:
        w["coordinator"] = {"rss_bytes": float(coordinator)}
    if agents is not None:
        w["generator"] = agents
    return w


def _series(memory: np.ndarray | None = None, **per_window) -> SoakSeries:
    s = SoakSeries()
    for i in range(len(memory) if memory is not None else N):
        s.add(_window(i, memory=None if memory is None else memory[i], **{k: v[i] for k, v in per_window.items()}))
    return s


# MB per real hour at time_scale 1: 100 MB/h is ~28 kB a second, 3.3 MB over the run.
LEAK = BASE + 100 * MB * T / 3600 + _noise(1)
FLAT = BASE + _noise(2)
STEP = BASE + np.where(T > 40, 40 * MB, 0.0) + _noise(3)  # an allocation at 40 s, then a plateau
SHORT = (BASE + 100 * MB * T / 3600)[:8]  # a steady leak, but only eight windows


# -- leak verdicts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "memory, verdict, leak_found",
    [
        (LEAK, "leak", True),  # steady growth above the threshold: found
        (FLAT, "no leak", False),  # noise around a level: clean
        (np.full(N, float(BASE)), "no leak", False),  # constant to the byte
        (STEP, "no leak", False),  # a step then a plateau is not a leak
        (SHORT, "inconclusive", False),  # too few windows to tell either way
    ],
)
def test_target_leak_verdicts(memory: np.ndarray, verdict: str, leak_found: bool) -> None:
    out = analyse(_series(memory))
    assert out["leaks"]["target"]["verdict"] == verdict, out["leaks"]["target"]
    assert out["leak_found"] is leak_found
    assert out["self_leak"] is False  # no coordinator or agent readings
    assert out["time_scale"] == 1.0


def test_a_leak_is_measured_in_bytes_per_hour() -> None:
    target = analyse(_series(LEAK))["leaks"]["target"]
    assert target["slope_bytes_per_simulated_hour"] == pytest.approx(100 * MB, rel=0.1)
    assert target["ci"][0] < 100 * MB < target["ci"][1]


def test_time_compression_turns_slopes_into_simulated_time() -> None:
    # The same growth in a run compressed 60x is 60x slower per simulated hour: below the threshold.
    out = analyse(_series(LEAK), time_scale=60.0)
    target = out["leaks"]["target"]
    assert target["slope_bytes_per_simulated_hour"] == pytest.approx(100 * MB / 60, rel=0.1)
    assert target["verdict"] == "no leak"
    assert out["leak_found"] is False
    assert out["time_scale"] == 60.0


def test_no_memory_readings_no_target_verdict() -> None:
    out = analyse(_series(requests=np.full(N, 100.0)))
    assert "target" not in out["leaks"]
    assert out["leak_found"] is False


def test_an_empty_series_analyses_to_nothing() -> None:
    assert analyse(SoakSeries()) == {
        "time_scale": 1.0,
        "leak_found": False,
        "self_leak": False,
        "leaks": {},
        "trends": {},
    }


# -- horde's own processes: reported, never failing the run ----------------------------------


def test_a_coordinator_leak_is_a_self_leak_not_a_target_leak() -> None:
    out = analyse(_series(FLAT, coordinator=LEAK))
    assert out["leaks"]["coordinator"]["verdict"] == "leak"
    assert out["leaks"]["target"]["verdict"] == "no leak"
    assert (out["leak_found"], out["self_leak"]) == (False, True)


def test_each_agent_and_replacement_gets_its_own_verdict() -> None:
    agents = [
        {
            "0": {"rss_bytes": float(LEAK[i]), "incarnation": 0},  # leaks
            "1": {"rss_bytes": float(FLAT[i]), "incarnation": 2},  # agent 1's second replacement: clean
            "2": {"rss_bytes": 0},  # no reading (0): left out
        }
        for i in range(N)
    ]
    out = analyse(_series(FLAT, agents=agents))
    assert {k: v["verdict"] for k, v in out["leaks"]["agents"].items()} == {"0": "leak", "1#2": "no leak"}
    assert (out["leak_found"], out["self_leak"]) == (False, True)


def test_clean_own_processes_are_no_self_leak() -> None:
    agents = [{"0": {"rss_bytes": float(FLAT[i])}} for i in range(N)]
    out = analyse(_series(LEAK, coordinator=FLAT, agents=agents))
    assert (out["leak_found"], out["self_leak"]) == (True, False)


# -- trends ----------------------------------------------------------------------------------


def test_trends_of_every_series_with_their_units() -> None:
    i = np.arange(N)
    s = SoakSeries()
    for k in range(N):
        w = _window(
            k,
            memory=FLAT[k],
            requests=100.0 + _noise(4, 1.0)[k],  # steady load
            error_rate=0.001 * i[k],  # errors creep up
            latency_ms={"p99": 50.0 + 0.5 * i[k] + _noise(5, 1.0)[k], "p50": 20.0 - 0.1 * i[k]},
        )
        w["target"].update(target_cpu=0.5, target_connections=10.0, target_fds=30.0)
        s.add(w)
    trends = analyse(s)["trends"]
    assert {k: (v["verdict"], v["unit"]) for k, v in trends.items()} == {
        "target_memory": ("flat", "bytes"),
        "target_cpu": ("flat", "cores"),
        "target_connections": ("flat", "connections"),
        "target_fds": ("flat", "fds"),
        "error_rate": ("rising", "fraction"),
        "latency_p99_ms": ("rising", "ms"),
        "latency_p50_ms": ("falling", "ms"),
        "rps": ("flat", "req/s"),
    }
    assert trends["latency_p99_ms"]["slope"] == pytest.approx(0.5 * 3600, rel=0.1)  # ms per hour
    assert all(v["n"] == N for v in trends.values())


def test_too_few_windows_make_an_inconclusive_trend() -> None:
    s = SoakSeries()
    for k in range(5):
        s.add(_window(k, requests=10.0 * k))  # clearly rising, but five windows are too few
    trends = analyse(s)["trends"]
    assert list(trends) == ["rps"]  # only the series present
    assert (trends["rps"]["verdict"], trends["rps"]["n"]) == ("inconclusive", 5)


# -- collecting the series -------------------------------------------------------------------


@pytest.mark.parametrize(
    "window, expected",
    [
        # window dict -> {series: [(t, value)]}
        ({"end_s": 2.5, "total": {"requests": 7}}, {"rps": [(2.5, 7.0)]}),
        ({"index": 4, "total": {"requests": 7}}, {"rps": [(5.0, 7.0)]}),  # no end: the index's end
        ({"total": {"requests": 7}}, {"rps": [(1.0, 7.0)]}),  # neither: the first window's end
        ({"end_s": 1.0, "total": {"error_rate": True}}, {}),  # a bool is not a figure
        ({"end_s": 1.0, "total": {"error_rate": "0.1"}}, {}),  # nor is text
        ({"end_s": 1.0, "total": {"error_rate": None}, "target": None}, {}),  # null values and sections
        ({"end_s": 1.0, "total": {"latency_ms": {"p99": 9}}}, {"latency_p99_ms": [(1.0, 9.0)]}),
        ({"end_s": 1.0, "total": {"latency_ms": 9}}, {}),  # a path through a number stops there
        ({"end_s": 1.0, "coordinator": {"rss_bytes": 5}}, {"coordinator_rss": [(1.0, 5.0)]}),
        ({"end_s": 1.0, "generator": {"3": {"rss_bytes": 5, "incarnation": 1}}}, {"agent_rss:3#1": [(1.0, 5.0)]}),
        ({"end_s": 1.0, "generator": {"3": {"rss_bytes": 5, "incarnation": 0}}}, {"agent_rss:3": [(1.0, 5.0)]}),
        ({"end_s": 1.0, "generator": {"3": {"rss_bytes": 0}}}, {}),  # an agent with no reading yet
        ({"end_s": 1.0, "generator": None}, {}),
        ({"end_s": 1.0, "total": {"error_rate": 0}}, {"error_rate": [(1.0, 0.0)]}),  # zero is a reading
    ],
)
def test_add_collects_each_figure_of_a_window(window: dict, expected: dict) -> None:
    s = SoakSeries()
    s.add(window)
    got = {name: list(zip(s.t_s[name], s.values[name])) for name in s.values}
    assert got == expected
    assert set(s.t_s) == set(s.values)  # times and values stay paired


def test_series_stay_aligned_when_windows_miss_figures() -> None:
    s = SoakSeries()
    s.add({"end_s": 1.0, "total": {"requests": 1}, "target": {"target_memory": 10}})
    s.add({"end_s": 2.0, "total": {"requests": 2}})  # the target scrape failed this window
    s.add({"end_s": 3.0, "total": {"requests": 3}, "target": {"target_memory": 30}})
    assert (list(s.t_s["rps"]), list(s.values["rps"])) == ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert (list(s.t_s["target_memory"]), list(s.values["target_memory"])) == ([1.0, 3.0], [10.0, 30.0])
