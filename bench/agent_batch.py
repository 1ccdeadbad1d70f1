"""The agent's per-flush batch build: aggregating a flush's records and encoding the batch.

What ``TrafficAgent._batch`` (agents/traffic.py) does on the agent's event loop at every
flush: read the process probe, aggregate the flush's records per (window, endpoint, stage)
(agents/aggregate.py) and encode the batch (agents/samples.py). Synthetic flushes of a 1 s
flush interval: records ending over one second that crosses a window boundary, lognormal
latencies around 5 ms, 1% errors, a few generator-queued sends, three stages of which the
flush straddles a boundary. Time per build (the median and the 90th percentile of many
builds, GC off while timing) in CPU time of the timing thread (``time.thread_time_ns``):
on a shared machine the wall time also holds the other processes' turns. Compare rows of
one run.

    python bench/agent_batch.py [--sizes 200,1000,10000,40000] [--endpoints 3,50] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from horde.agents.aggregate import aggregate_records
from horde.agents.probe import ProcessProbe
from horde.agents.samples import GENERATOR_QUEUED, SAMPLE_DTYPE, GeneratorReadings, encode_batch

S = 1_000_000_000
STAGE_ENDS_NS = np.asarray([60 * S + 500_000_000, 120 * S, 180 * S], dtype=np.int64)


def flush_records(n: int, endpoints: int, seed: int = 0) -> np.ndarray:
    """`n` records of one flush ending between 59.3 s and 60.3 s of run time."""
    rng = np.random.default_rng(seed)
    s = np.zeros(n, SAMPLE_DTYPE)
    intended = 59 * S + 300_000_000 + np.sort(rng.integers(0, S, n))
    sent = intended + rng.exponential(50_000, n).astype(np.int64)
    s["endpoint"] = rng.integers(0, endpoints, n)
    s["intended_ns"], s["sent_ns"] = intended, sent
    s["end_ns"] = sent + rng.lognormal(np.log(5e6), 0.8, n).astype(np.int64)
    s["status"] = 200
    err = rng.random(n) < 0.01
    s["error"][err] = rng.integers(1, 10, int(err.sum()))
    s["status"][err] = 500
    s["error"][rng.random(n) < 0.005] |= GENERATOR_QUEUED
    s["bytes"] = rng.integers(100, 5000, n)
    return s


def build(records: np.ndarray, probe: ProcessProbe | None) -> bytes:
    """The batch build of one flush as _batch does it (the probe read optional)."""
    cpu_s, rss = probe.read() if probe is not None else (1.0, 1)
    agg = aggregate_records(records, STAGE_ENDS_NS)
    return encode_batch(
        agent=3,
        incarnation=0,
        seq=60,
        watermark_ns=60 * S + 400_000_000,
        readings=GeneratorReadings(cpu_s=cpu_s, rss_bytes=rss, in_flight=5, level=200.0),
        agg=agg,
        engine="fast",
        data_rows={},
    )


def time_parts(records: np.ndarray, reps: int) -> dict[str, list[float]]:
    """Per-build thread CPU times in us of: the probe read, aggregate_records, encode_batch, whole."""
    probe = ProcessProbe()
    out: dict[str, list[float]] = {"probe": [], "aggregate": [], "encode": [], "build": []}
    gc.disable()
    try:
        for _ in range(reps):
            t0 = time.thread_time_ns()
            probe.read()
            t1 = time.thread_time_ns()
            agg = aggregate_records(records, STAGE_ENDS_NS)
            t2 = time.thread_time_ns()
            encode_batch(
                agent=3,
                incarnation=0,
                seq=60,
                watermark_ns=60 * S,
                readings=GeneratorReadings(cpu_s=1.0),
                agg=agg,
                engine="fast",
            )
            t3 = time.thread_time_ns()
            build(records, probe)
            t4 = time.thread_time_ns()
            out["probe"].append((t1 - t0) / 1e3)
            out["aggregate"].append((t2 - t1) / 1e3)
            out["encode"].append((t3 - t2) / 1e3)
            out["build"].append((t4 - t3) / 1e3)
    finally:
        gc.enable()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="200,1000,10000,40000", help="records per flush, comma-separated")
    p.add_argument("--endpoints", default="3,50", help="endpoints, comma-separated")
    p.add_argument("--budget-s", type=float, default=1.0, help="seconds of timing per row (bounded)")
    p.add_argument("--profile", action="store_true", help="cProfile each row's aggregate+encode, top 12 by tottime")
    a = p.parse_args()
    sizes = [int(x) for x in a.sizes.split(",")]
    endpoints = [int(x) for x in a.endpoints.split(",")]
    print("thread CPU us per flush (median / p90); probe = the process probe read; build = probe + aggregate + encode")
    head = f"{'records':>8} {'endp':>5} {'groups':>6} {'bytes':>7} {'probe':>13} {'aggregate':>15}"
    print(head + f" {'encode':>13} {'build':>15}")
    for n in sizes:
        for e in endpoints:
            rec = flush_records(n, e)
            payload = build(rec, None)
            groups = len(aggregate_records(rec, STAGE_ENDS_NS).groups)
            t0 = time.perf_counter()
            build(rec, None)
            one = max(time.perf_counter() - t0, 1e-6)
            reps = int(min(2000, max(5, a.budget_s / (2.2 * one))))
            parts = time_parts(rec, reps)
            cells = []
            for k in ("probe", "aggregate", "encode", "build"):
                v = np.asarray(parts[k])
                cells.append(f"{np.median(v):7.0f}/{np.percentile(v, 90):<7.0f}")
            print(f"{n:>8} {e:>5} {groups:>6} {len(payload):>7} " + " ".join(cells), flush=True)
            if a.profile:
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(reps):
                    build(rec, None)
                prof.disable()
                print(f"--- cProfile, {reps} builds of {n} records x {e} endpoints")
                pstats.Stats(prof).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
