"""Coordinator ingest: samples decoded and aggregated per second of coordinator CPU.

Synthetic batches as agents send them (msgpack, 10k samples, 5 endpoints, lognormal
latencies, 1% errors), fed through decode_batch + BatchChecker.check + Aggregator.add + close_until as
coordinator/run/session.py does. CPU time (process_time) rather than wall time: the machine is
shared and noisy.

    python bench/ingest.py [--batches 300] [--batch 10000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from horde.agents.samples import RECORD, SAMPLE_DTYPE, GeneratorReadings, decode_batch, encode_batch
from horde.coordinator.measure.aggregate import Aggregator
from horde.coordinator.measure.batch_check import BatchChecker, RunBounds


def make_payloads(n_batches: int, batch: int, agents: int = 2, endpoints: int = 5) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    t = [0] * agents
    for b in range(n_batches):
        a = b % agents
        s = np.zeros(batch, SAMPLE_DTYPE)
        intended = t[a] + np.sort(rng.integers(0, 1_000_000_000, batch))
        sent = intended + rng.exponential(200_000, batch).astype(np.int64)
        s["endpoint"] = rng.integers(0, endpoints, batch)
        s["intended_ns"], s["sent_ns"] = intended, sent
        s["end_ns"] = sent + rng.lognormal(np.log(5e6), 0.8, batch).astype(np.int64)
        s["status"] = 200
        err = rng.random(batch) < 0.01
        s["error"][err] = rng.integers(1, 10, err.sum())
        s["bytes"] = rng.integers(100, 5000, batch)
        t[a] += 1_000_000_000
        out.append(
            encode_batch(
                agent=a,
                incarnation=0,
                seq=b // agents,
                watermark_ns=t[a] + 50_000_000,
                records=s.tobytes(),
                readings=GeneratorReadings(cpu_s=float(b), in_flight=10),
            )
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    payloads = make_payloads(args.batches, args.batch)
    n = args.batches * args.batch
    print(f"{args.batches} batches x {args.batch} samples ({RECORD.size} B/sample on the wire)")
    best = 0.0
    for rep in range(args.repeat):
        agg = Aggregator([f"e{i}" for i in range(5)], [60_000_000_000, 120_000_000_000, 10**13], ["a", "b", "c"])
        marks: dict[int, int] = {}
        checker = BatchChecker(RunBounds(endpoints=5))
        incarnations = {0: 0, 1: 0}
        now_ns = (args.batches // 2 + 1) * 1_000_000_000  # the run time when the last batch arrives
        c0 = time.process_time()
        for p in payloads:
            b = decode_batch(p)
            checker.check(b, sender=b.agent, incarnations=incarnations, now_ns=now_ns)
            agg.add(b)
            marks[b.agent] = b.watermark_ns
            agg.close_until(min(marks.values()))
        agg.close_all()
        cpu = time.process_time() - c0
        rate = n / cpu
        best = max(best, rate)
        print(f"  run {rep + 1}: {cpu:.2f} s CPU, {rate / 1e6:.2f} M samples/s")
    print(f"ingest: {best / 1e6:.2f} M samples per CPU-second (best of {args.repeat})")


if __name__ == "__main__":
    main()
