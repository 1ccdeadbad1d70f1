"""One recorded sample stream, sent raw and sent aggregated (as agents do by default), gives
the same bundle: every window, histogram, count, stage and summary figure.

The stream is what three agents recorded over a two-stage run on three endpoints, with
what makes aggregation easy to get wrong: samples whose window (by end) and stage (by
intended time) differ, a batch that spans windows, a late batch for a window already
closed, errors of several classes, generator-queued sends and negative send lags
(clamped). Overflow (values above the histogram's range) is in
tests/coordinator/measure/test_aggregated_batches.py: a run's bounds refuse such times here.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path

import msgpack
import numpy as np
import pytest

from horde.agents.aggregate import aggregate_records, stage_ends_ns
from horde.agents.samples import (
    GENERATOR_QUEUED,
    SAMPLE_DTYPE,
    GeneratorReadings,
    decode_batch,
    encode_batch,
)
from horde.cluster.events import AgentEnded, BatchReceived, ClusterShape, NodeShape
from horde.coordinator.bundle.store import read_bundle
from horde.coordinator.plan import build_plan
from horde.coordinator.run.session import RunOptions, run
from horde.coordinator.run.target import Target
from horde.coordinator.scenario.load import parse_scenario
from tests.coordinator.run.test_session import URL, CannedFleet

S = 1_000_000_000
MS = 1_000_000
AGENTS = 3
DURATION_S = 6

SCENARIO = textwrap.dedent(f"""
    name: agg-vs-raw
    target: {URL}
    requests:
      - {{name: health, method: GET, path: /health, expect: [200]}}
      - {{name: items, method: GET, path: /items, expect: [200]}}
      - {{name: orders, method: POST, path: /orders, expect: [201]}}
    workload:
      model: open
      start: 50
      stages:
        - {{duration: 3s, target: 50, name: warm}}
        - {{duration: 3s, target: 200, name: peak}}
    agents: {AGENTS}
    flush_interval: 1s
    thresholds:
      - "p99(latency) < 500ms"
      - "error_rate < 50%"
      - {{expr: "p95(latency) < 100ms", window: 2s}}
""")


def _recorded_stream(seed: int = 16, flush_s: int = 1) -> dict[int, list[tuple[int, np.ndarray]]]:
    """Per agent, its flushes every `flush_s` seconds: (watermark, the records that ended at or
    before it since the last)."""
    rng = np.random.default_rng(seed)
    out: dict[int, list[tuple[int, np.ndarray]]] = {}
    for agent in range(AGENTS):
        n = 3000 + 500 * agent
        s = np.zeros(n, dtype=SAMPLE_DTYPE)
        s["endpoint"] = rng.integers(0, 3, n)
        s["intended_ns"] = np.sort(rng.integers(0, DURATION_S * S - 200 * MS, n))
        lag = rng.exponential(0.5 * MS, n).astype(np.int64)
        lag[:7] = -rng.integers(1, 50_000, 7)  # a clock that stepped back: clamped to 0
        s["sent_ns"] = s["intended_ns"] + lag
        service = rng.lognormal(np.log(5 * MS), 0.8, n).astype(np.int64)
        service[rng.random(n) < 0.01] += 400 * MS  # a slow tail across window edges
        s["end_ns"] = s["sent_ns"] + service
        err = rng.choice([0, 1, 2, 4, 5, 10, 11], n, p=[0.9, 0.02, 0.02, 0.02, 0.02, 0.01, 0.01]).astype(np.uint8)
        queued = rng.random(n) < 0.05
        s["error"] = err | np.where(queued, GENERATOR_QUEUED, 0).astype(np.uint8)
        s["status"] = np.where(err == 0, 200, np.where(err == 4, 404, np.where(err == 5, 503, 0)))
        s["bytes"] = rng.integers(0, 5000, n)
        s = s[np.argsort(s["end_ns"], kind="stable")]  # records are written as requests end
        flushes = []
        for k in range(1, (DURATION_S + 1) // flush_s + 2):
            wm = k * flush_s * S + 37 * MS * agent
            lo = flushes[-1][0] if flushes else -(2**62)
            flushes.append((wm, s[(s["end_ns"] > lo) & (s["end_ns"] <= wm)]))
        last = s[s["end_ns"] > flushes[-1][0]]
        flushes.append((int(s["end_ns"].max()) + 1 if len(last) else flushes[-1][0] + S, last))
        if agent == 1:  # five records of window 0 reach the coordinator only with the flush at 4 s: late
            wm, rec = flushes[0]
            flushes[0] = (wm, rec[5:])
            k = next(i for i, (w, _) in enumerate(flushes) if w >= 4 * S)
            flushes[k] = (flushes[k][0], np.concatenate([flushes[k][1], rec[:5]]))
        out[agent] = flushes
    return out


def _payload(agent: int, seq: int, wm: int, records: np.ndarray, final: bool, aggregated: bool, ends) -> bytes:
    readings = GeneratorReadings(cpu_s=0.02 * (seq + 1), rss_bytes=60_000_000 + agent, level=50.0 / AGENTS)
    common = dict(agent=agent, incarnation=0, seq=seq, watermark_ns=wm, readings=readings, final=final, engine="fast")
    if aggregated:
        return encode_batch(agg=aggregate_records(records, ends), **common)
    return encode_batch(records=records.tobytes(), **common)


def _events(aggregated: bool, ends: np.ndarray, flush_s: int = 1) -> list:
    stream = _recorded_stream(flush_s=flush_s)
    per_agent = {
        a: [
            BatchReceived(a, _payload(a, seq, wm, rec, seq == len(fl) - 1, aggregated, ends))
            for seq, (wm, rec) in enumerate(fl)
        ]
        for a, fl in stream.items()
    }
    order = []  # interleaved as a fan-in would
    for seq in range(max(len(v) for v in per_agent.values())):
        for a in range(AGENTS):
            if seq < len(per_agent[a]):
                order.append(per_agent[a][seq])
    order += [AgentEnded(index=a, incarnation=0) for a in range(AGENTS)]
    return order


def _run(tmp_path: Path, aggregated: bool, flush_s: int = 1):
    loaded = parse_scenario(SCENARIO.replace("flush_interval: 1s", f"flush_interval: {flush_s}s"))
    plan = build_plan(loaded.scenario, URL, 4.0, supports_fast=None)
    ends = stage_ends_ns(plan.agents[0].stages)
    assert ends.tolist() == list(plan.stage_ends_ns)  # the agent stages samples as the coordinator does
    out = tmp_path / (("agg" if aggregated else "raw") + f"-{flush_s}s")
    options = RunOptions(out_dir=str(out), progress=lambda line: None, install_signal_handlers=False)
    shape = ClusterShape("in-process", "", (NodeShape("local", "host", 4.0),))
    result = asyncio.run(
        run(
            loaded,
            plan,
            shape,
            CannedFleet(_events(aggregated, ends, flush_s)),
            options,
            Target(url=URL, metrics_url=None),
        )
    )
    return result, read_bundle(result.bundle)


def _plain(items) -> list:
    return [i.model_dump() if hasattr(i, "model_dump") else i for i in items]


def _figures(window) -> dict:
    """A window record less the coordinator's own readings (its CPU and memory at the time)."""
    return {k: v for k, v in window.model_dump().items() if k != "coordinator"}


_VOLATILE = ("time", "load", "cpu")  # readings of the coordinator itself (wall clock, its own CPU)


def test_aggregated_batches_give_the_same_bundle_as_raw_samples(tmp_path: Path) -> None:
    raw_result, raw = _run(tmp_path, aggregated=False)
    agg_result, agg = _run(tmp_path, aggregated=True)
    assert agg_result.outcome == raw_result.outcome
    raw_summary = {k: v for k, v in raw.summary.model_dump().items() if k not in _VOLATILE}
    agg_summary = {k: v for k, v in agg.summary.model_dump().items() if k not in _VOLATILE}
    assert raw_summary["total"]["requests"] == sum(
        len(r) for fl in _recorded_stream().values() for _, r in fl
    )  # the stream reached the bundle whole
    assert raw_summary["late_samples"] > 0  # the late batch was late
    assert set(raw_summary["stages"]) == {"warm", "peak"}
    assert json.dumps(agg_summary, sort_keys=True) == json.dumps(raw_summary, sort_keys=True)
    raw_windows, agg_windows = list(raw.windows()), list(agg.windows())
    assert len(raw_windows) >= DURATION_S
    assert [_figures(w) for w in agg_windows] == [_figures(w) for w in raw_windows]
    # Histograms bucket for bucket: the per-window ones and the run's.
    assert _plain(agg.window_histograms()) == _plain(raw.window_histograms())
    assert _plain(agg.histograms()) == _plain(raw.histograms())
    assert [a.model_dump() for a in agg.alerts()] == [a.model_dump() for a in raw.alerts()]


def test_flushes_every_2_s_give_the_same_figures_as_every_second(tmp_path: Path) -> None:
    """`flush_interval: 2s` halves the batches the coordinator handles a second (its cost
    follows batches: bench/coordinator_sim.py --flush-s 2); the same requests give the same
    windows, histograms and summary figures. What differs is only what describes the
    agents' flushes themselves: their readings land in every other window."""
    _, every_1s = _run(tmp_path, aggregated=True, flush_s=1)
    _, every_2s = _run(tmp_path, aggregated=True, flush_s=2)

    def figures(bundle) -> tuple:
        summary = bundle.summary.model_dump()
        kept = {k: summary[k] for k in ("total", "endpoints", "stages", "thresholds", "late_samples", "alerts")}
        windows = [{k: v for k, v in _figures(w).items() if k != "generator"} for w in bundle.windows()]
        return kept, windows, _plain(bundle.window_histograms()), _plain(bundle.histograms())

    one, two = figures(every_1s), figures(every_2s)
    assert one[0]["total"]["requests"] == sum(len(r) for fl in _recorded_stream().values() for _, r in fl)
    assert one[0]["late_samples"] > 0 and two[0]["late_samples"] > 0
    assert len(one[1]) >= DURATION_S
    for a, b in zip(one, two):  # part by part: a failure's diff stays readable
        assert json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)
    alerts_1s = [a.model_dump() for a in every_1s.alerts()]
    assert alerts_1s == [a.model_dump() for a in every_2s.alerts()]


def test_an_aggregated_batch_is_far_smaller_than_its_records() -> None:
    # One second of 50,000 requests/s from one agent: the records grow with requests, the
    # aggregate with groups x occupied buckets.
    rng = np.random.default_rng(3)
    n = 50_000
    records = np.zeros(n, dtype=SAMPLE_DTYPE)
    records["endpoint"] = rng.integers(0, 3, n)
    records["intended_ns"] = np.sort(rng.integers(2 * S, 3 * S, n))
    records["sent_ns"] = records["intended_ns"] + rng.integers(0, 200_000, n)
    records["end_ns"] = records["sent_ns"] + rng.lognormal(np.log(2 * MS), 0.5, n).astype(np.int64)
    ends = np.asarray([3 * S, 6 * S])
    wm = int(records["end_ns"].max())
    raw = _payload(0, 3, wm, records, False, False, ends)
    agg = _payload(0, 3, wm, records, False, True, ends)
    assert len(agg) * 20 < len(raw)
    batch = decode_batch(agg)
    assert batch.requests == n and len(batch.samples) == 0
    first, sends = batch.send_bins()
    assert int(sends.sum()) == n and first == 20
    assert msgpack.unpackb(agg, raw=False)["v"] == 2


@pytest.mark.parametrize("mode, raw", [("raw", True), ("RAW ", True), ("aggregated", False), ("", False)])
def test_raw_samples_are_an_environment_switch(mode: str, raw: bool) -> None:
    from horde.agents.aggregate import raw_samples_requested

    assert raw_samples_requested({"HORDE_SAMPLES": mode}) is raw
    assert raw_samples_requested({}) is False
