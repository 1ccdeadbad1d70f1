"""Checks of bench/truth.py: its pure parts, and a tiny run that prints its table.

The smoke run asserts what the bench prints (a row per generator, skipped or measured, and
the stall rows), never the figures' values: timings are the bench's business.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.truth import parse_k6_summary, parse_wrk_latency, quantiles_ms, stall_truth_ms

BENCH = Path(__file__).resolve().parent.parent

WRK_LATENCY = """\
Running 2s test @ http://127.0.0.1:40001/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    20.80ms  611.00us  26.50ms   90.00%
    Req/Sec    48.00      4.00    50.00     95.00%
  Latency Distribution
     50%   20.70ms
     75%   20.90ms
     90%   21.20ms
     99%    1.02s
  384 requests in 2.00s, 58.00KB read
"""


def test_stall_truth_is_the_open_model_mixture() -> None:
    t = stall_truth_ms(0.02, 1.0, 5.0)
    # 80% of arrivals find the target awake (20 ms); the frozen 20% wait F - u, u uniform.
    assert t["p50"] == pytest.approx(20.0)
    assert t["p90"] == pytest.approx(520.0)
    assert t["p99"] == pytest.approx(970.0)
    assert t["max"] == pytest.approx(1020.0)


def test_stall_truth_of_a_short_freeze_stays_at_the_delay() -> None:
    t = stall_truth_ms(0.02, 0.04, 5.0)  # frozen 0.8% of the time: p99 is not touched
    assert t["p99"] == pytest.approx(20.0)
    assert t["max"] == pytest.approx(60.0)


def test_quantiles_of_known_values() -> None:
    q = quantiles_ms([i * 1_000_000 for i in range(1, 101)])  # 1..100 ms
    assert q == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
    assert quantiles_ms([]) is None


def test_wrk_latency_distribution() -> None:
    assert parse_wrk_latency(WRK_LATENCY) == pytest.approx({"max": 26.5, "p50": 20.7, "p90": 21.2, "p99": 1020.0})
    assert parse_wrk_latency("  384 requests in 2.00s\n") is None


def test_k6_summary_export() -> None:
    export = {"metrics": {"http_req_duration": {"p(50)": 20.1, "p(90)": 20.5, "p(99)": 22.0, "max": 25.0}}}
    assert parse_k6_summary(export) == {"p50": 20.1, "p90": 20.5, "p99": 22.0, "max": 25.0}
    assert parse_k6_summary({"metrics": {}}) is None


@pytest.mark.skipif(shutil.which("horde") is None or shutil.which("taskset") is None, reason="needs horde and taskset")
def test_truth_runs_and_prints_its_table() -> None:
    argv = [sys.executable, str(BENCH / "truth.py"), "--seconds", "1", "--rate", "50"]
    argv += ["--stall-seconds", "1", "--stall-rate", "50", "--freeze-s", "0.1", "--freeze-every-s", "0.5"]
    argv += ["--stall-deployment", "in-process", "--generators", "horde-in-process,aiohttp-open,k6,wrk"]
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=240, cwd=BENCH.parent, env=dict(os.environ), check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert any(line.startswith("case") and "p99/h" in line and "p99/w" in line for line in lines)
    rows = [line for line in lines if line.startswith(("known delay", "stall"))]
    generators = {" ".join(line.split()[2:3]) for line in rows if line.startswith("known delay")}
    assert {"horde-in-process", "aiohttp-open", "k6", "wrk"} <= generators
    for name in ("horde-in-process", "aiohttp-open"):  # always there: measured, with ratios
        measured = [r for r in rows if r.split()[2] == name and r.split()[3] == "latency"]
        assert measured and "-" not in measured[0].split()[4:8], measured
    stall = [r for r in rows if r.startswith("stall")]
    assert len(stall) == 2 and "mif=10" in stall[1]
    assert any(line.startswith("  truth for stall") for line in lines)
