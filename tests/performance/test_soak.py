"""Soak: compressed time, memory-leak verdicts, resource trends, horde's own memory.

Each run is a compressed soak on the session's Ray against the automaton. CI size: the
hold stage is shortened so a run takes ~40 s real (>= 30 one-second windows, so the run's
soak analysis runs) while it still stands for ~40 simulated minutes at 60x; full size
(HORDE_PERF_FULL=1 / --perf-full) runs soak-short (1 h simulated) and soak-medium (12 h
simulated, 720x) as written.

Ground truth: the healthy automaton keeps no memory per request once warm, and with the
`leak_per_request` fault it keeps exactly that many bytes per answered request, so the
leak's slope is known in advance (rate x bytes per real second; per simulated hour that
is x 3600 / compression).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from horde.coordinator.analysis.trends import generator_rss_series, leak_verdict, trend, window_series
from horde.coordinator.bundle.outcome import Outcome
from horde.coordinator.bundle.store import read_bundle
from horde.coordinator.run.session import RunOptions, RunResult, run_scenario
from horde.coordinator.scenario.load import load_scenario

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
MIB = 1024 * 1024
# CI: 2 simulated minutes of ramp + 36 of hold at 60x = 38 s real, 38 windows.
CI_HOLD = ["workload.stages[1].duration=36m"]
# The automaton's allocator grows by ~0.5 MB over its first ~10,000 requests of this mix
# and is flat after (measured: 46.2 -> 46.7 MB, then flat for 3 minutes at 200 req/s).
# A 40 s CI soak at 100 req/s would see only that warm-up; like any soak, this one measures
# a target that has already served traffic.
WARMUP_REQUESTS = 10_000
LEAK_BYTES = 20 * 1024  # soak-leak.yaml: leak_per_request 20KiB
LEAK_RATE_PER_S = 100.0  # soak-leak.yaml: the hold's rate (real seconds)


def scenario(name: str, overrides: list[str]) -> Any:
    return load_scenario(SCENARIOS / f"{name}.yaml", overrides=overrides)


def at(url: str) -> str:
    """--set value pointing a scenario at a running automaton, its /metrics included."""
    return f'target={{url: "{url}", metrics: "{url}/metrics"}}'


def windows_of(result: RunResult) -> list[dict]:
    # Through the reader: windows.jsonl is a gzip stream since bundle format 2.
    return [w.model_dump(by_alias=True, mode="json") for w in read_bundle(result.bundle).windows()]


def leak_figures(soak: dict) -> dict:
    def one(v: dict) -> dict:
        slope = v.get("slope_bytes_per_simulated_hour")
        return {
            "verdict": v["verdict"],
            "slope_mib_per_sim_h": None if slope is None else round(slope / MIB, 3),
            "threshold_mib_per_sim_h": round((v.get("threshold_bytes_per_hour") or 0) / MIB, 3),
            "reason": v["reason"],
        }

    leaks = soak["leaks"]
    out = {k: one(v) for k, v in leaks.items() if k != "agents"}
    out["agents"] = {a: one(v) for a, v in leaks.get("agents", {}).items()}
    return out


async def _warm(url: str, requests: list[tuple[str, str, Any]], n: int, concurrency: int = 8) -> None:
    import aiohttp

    sent = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal sent
        while sent < n:
            method, path, body = requests[sent % len(requests)]
            sent += 1
            async with session.request(method, url + path, json=body) as r:
                await r.read()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))


@pytest.fixture(scope="module")
def warm_automaton():
    """A healthy automaton that has served WARMUP_REQUESTS of soak-short's mix."""
    from horde.automaton.launch import start_automaton

    mix = [(r.method, r.path, r.json) for r in scenario("soak-short", []).scenario.requests]
    proc = start_automaton()
    try:
        asyncio.run(_warm(proc.url, mix, WARMUP_REQUESTS))
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def healthy_soak(ray_cluster, warm_automaton, tmp_path_factory, perf_full) -> RunResult:
    out = tmp_path_factory.mktemp("soak-healthy")
    loaded = scenario("soak-short", ([] if perf_full else CI_HOLD) + [at(warm_automaton.url)])
    return run_scenario(loaded, RunOptions(out_dir=str(out), install_signal_handlers=False))


def test_healthy_soak_finds_no_leak(healthy_soak, report) -> None:
    s = healthy_soak.summary
    assert "soak" in s, f"no soak analysis: {len(windows_of(healthy_soak))} windows"
    soak = s["soak"]
    report(
        healthy_soak_leaks=leak_figures(soak),
        time=s["time"],
        trends={
            k: {"verdict": v["verdict"], "slope_per_sim_h": v["slope"], "unit": v["unit"]}
            for k, v in soak["trends"].items()
        },
        requests=s["total"]["requests"],
        error_rate=s["total"]["error_rate"],
    )
    assert healthy_soak.outcome is Outcome.PASSED, s["thresholds"]
    leaks = soak["leaks"]
    assert leaks["target"]["verdict"] == "no leak", leaks["target"]
    assert leaks["coordinator"]["verdict"] == "no leak", leaks["coordinator"]
    assert leaks["agents"] and all(v["verdict"] == "no leak" for v in leaks["agents"].values()), leaks["agents"]
    assert soak["leak_found"] is False
    # Resource and error-rate trends are there, each with its verdict; nothing healthy is
    # an error-rate trend.
    for name in (
        "target_memory",
        "target_cpu",
        "target_connections",
        "target_fds",
        "error_rate",
        "latency_p99_ms",
        "rps",
    ):
        assert soak["trends"][name]["verdict"] in ("rising", "falling", "flat", "inconclusive"), name
    assert soak["trends"]["error_rate"]["verdict"] != "rising"
    assert soak["trends"]["target_memory"]["verdict"] != "rising"


def test_windows_and_trend_rates_speak_simulated_time(healthy_soak, report) -> None:
    s = healthy_soak.summary
    compression = s["time"]["compression"]
    assert compression == 60.0
    assert s["time"]["simulated_duration_s"] == pytest.approx(s["time"]["real_duration_s"] * compression)
    soak = s["soak"]
    assert soak["time_scale"] == compression
    assert all(v["per"] == "hour" for v in soak["trends"].values())
    windows = windows_of(healthy_soak)
    # One-second windows of real time: each stands for `compression` simulated seconds.
    assert len(windows) >= 30
    last_sim_s = windows[-1]["end_s"] * compression
    assert last_sim_s == pytest.approx(s["time"]["simulated_duration_s"], abs=2 * compression)
    # A simulated hour lasts 1/compression real hours, so the slope per simulated hour is
    # the slope per real hour divided by the compression (Theil-Sen is equivariant):
    # recompute it from the bundle's own windows.
    t, rss = window_series(windows, "coordinator", "rss_bytes")
    real = leak_verdict(t, rss, time_scale=1.0)
    simulated = soak["leaks"]["coordinator"]
    assert simulated["time_scale"] == compression
    assert simulated["slope_bytes_per_simulated_hour"] == pytest.approx(
        real.slope_bytes_per_simulated_hour / compression, rel=1e-9
    )
    report(
        compression=compression,
        windows=len(windows),
        simulated_hours=round(last_sim_s / 3600, 3),
        coordinator_slope_real_mib_per_h=round(real.slope_bytes_per_simulated_hour / MIB, 3),
        coordinator_slope_mib_per_sim_h=round(simulated["slope_bytes_per_simulated_hour"] / MIB, 3),
    )


def test_horde_own_memory_stays_flat(healthy_soak, report) -> None:
    """The coordinator's and every agent's resident memory show no trend beyond noise."""
    windows = windows_of(healthy_soak)
    compression = healthy_soak.summary["time"]["compression"]
    series = {"coordinator": window_series(windows, "coordinator", "rss_bytes")}
    series.update({f"agent {a}": ts for a, ts in generator_rss_series(windows).items()})
    assert len(series) >= 2, "no agent memory readings in the windows"
    figures = {}
    for name, (t, rss) in series.items():
        tr = trend(t, rss, unit="bytes", time_scale=compression)
        figures[name] = {
            "first_mib": round(rss[0] / MIB, 1),
            "last_mib": round(rss[-1] / MIB, 1),
            "slope_mib_per_sim_h": None if tr.slope is None else round(tr.slope / MIB, 3),
            "relative_change": tr.relative_change,
            "verdict": tr.verdict,
        }
    report(horde_memory=figures)
    for name, f in figures.items():
        assert f["verdict"] != "rising", (name, f)
        # Over the whole soak, less than 5% growth (the trend's own practical floor).
        assert f["relative_change"] is None or f["relative_change"] < 0.05, (name, f)


def test_leak_fault_is_found_with_its_slope(ray_cluster, tmp_path, perf_full, report) -> None:
    loaded = scenario("soak-leak", [] if perf_full else CI_HOLD)
    compression = loaded.scenario.time_compression
    result = run_scenario(loaded, RunOptions(out_dir=str(tmp_path), install_signal_handlers=False))
    soak = result.summary["soak"]
    target = soak["leaks"]["target"]
    # rate x bytes per real second; one simulated hour lasts 3600 / compression real seconds.
    expected = LEAK_RATE_PER_S * LEAK_BYTES * 3600.0 / compression
    slope = target["slope_bytes_per_simulated_hour"]
    report(
        leak_run=leak_figures(soak),
        expected_mib_per_sim_h=round(expected / MIB, 2),
        measured_mib_per_sim_h=round(slope / MIB, 2),
        ratio=round(slope / expected, 3),
        ci_mib_per_sim_h=[round(x / MIB, 2) for x in target["ci"]],
    )
    assert target["verdict"] == "leak", target
    assert soak["leak_found"] is True
    assert 0.7 * expected <= slope <= 1.3 * expected, (slope, expected)
    assert soak["trends"]["target_memory"]["verdict"] == "rising"
    # The leak is the target's: horde's own processes are not blamed for it.
    assert soak["leaks"]["coordinator"]["verdict"] != "leak", soak["leaks"]["coordinator"]
    assert all(v["verdict"] != "leak" for v in soak["leaks"]["agents"].values()), soak["leaks"]["agents"]


@pytest.mark.full_only
@pytest.mark.timeout(600)
def test_twelve_simulated_hours_without_a_leak(ray_cluster, warm_automaton, tmp_path, report) -> None:
    result = run_scenario(
        scenario("soak-medium", [at(warm_automaton.url)]),
        RunOptions(out_dir=str(tmp_path), install_signal_handlers=False),
    )
    s = result.summary
    report(medium_leaks=leak_figures(s["soak"]), time=s["time"])
    assert s["time"]["simulated_duration_s"] == pytest.approx(12 * 3600)
    assert s["soak"]["time_scale"] == 720.0
    assert s["soak"]["leak_found"] is False, s["soak"]["leaks"]
    assert result.outcome is Outcome.PASSED, s["thresholds"]
