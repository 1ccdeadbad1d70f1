"""Coordinator ingest: requests decoded and aggregated per second of coordinator CPU.

Synthetic batches (10k samples, 5 endpoints, lognormal latencies, 1% errors) in both wire
forms: raw samples (HORDE_SAMPLES=raw) and aggregated as agents send them by default
(agents/aggregate.py, done before timing: that is the agents' work). Each is fed through
decode_batch + BatchChecker.check + Aggregator.add + SendCounter.add_counts + close_until
as coordinator/run/session.py does. CPU time (process_time) rather than wall time: the
machine is shared and noisy.

    python bench/ingest.py [--batches 300] [--batch 10000] [--form raw|aggregated|both]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from horde.agents.aggregate import aggregate_records
from horde.agents.samples import RECORD, SAMPLE_DTYPE, GeneratorReadings, decode_batch, encode_batch
from horde.coordinator.measure.aggregate import Aggregator
from horde.coordinator.measure.batch_check import BatchChecker, RunBounds
from horde.coordinator.run.summary import SendCounter

STAGE_ENDS_NS = [60_000_000_000, 120_000_000_000, 10**13]


def make_payloads(
    n_batches: int, batch: int, agents: int = 2, endpoints: int = 5, aggregated: bool = False
) -> list[bytes]:
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
        form = {"agg": aggregate_records(s, np.asarray(STAGE_ENDS_NS))} if aggregated else {"records": s.tobytes()}
        out.append(
            encode_batch(
                agent=a,
                incarnation=0,
                seq=b // agents,
                watermark_ns=t[a] + 50_000_000,
                readings=GeneratorReadings(cpu_s=float(b), in_flight=10),
                **form,
            )
        )
    return out


def ingest_rate(payloads: list[bytes], n: int, repeat: int, label: str) -> float:
    """Best requests per CPU-second over `repeat` passes of the session's ingest path."""
    best = 0.0
    for rep in range(repeat):
        agg = Aggregator([f"e{i}" for i in range(5)], STAGE_ENDS_NS, ["a", "b", "c"])
        sends = SendCounter()
        marks: dict[int, int] = {}
        checker = BatchChecker(RunBounds(endpoints=5, stages=3))
        incarnations = {0: 0, 1: 0}
        now_ns = (len(payloads) // 2 + 1) * 1_000_000_000  # the run time when the last batch arrives
        c0 = time.process_time()
        for p in payloads:
            b = decode_batch(p)
            checker.check(b, sender=b.agent, incarnations=incarnations, now_ns=now_ns)
            agg.add(b)
            sends.add_counts(*b.send_bins())
            marks[b.agent] = b.watermark_ns
            agg.close_until(min(marks.values()))
        agg.close_all()
        cpu = time.process_time() - c0
        rate = n / cpu
        best = max(best, rate)
        print(f"  {label} run {rep + 1}: {cpu:.3f} s CPU, {rate / 1e6:.2f} M requests/s")
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--form", choices=["raw", "aggregated", "both"], default="both")
    args = ap.parse_args()
    n = args.batches * args.batch
    forms = ["raw", "aggregated"] if args.form == "both" else [args.form]
    print(f"{args.batches} batches x {args.batch} samples, 5 endpoints x 3 stages")
    for form in forms:
        payloads = make_payloads(args.batches, args.batch, aggregated=form == "aggregated")
        per_sample = sum(len(p) for p in payloads) / n
        best = ingest_rate(payloads, n, args.repeat, form)
        print(
            f"ingest {form}: {best / 1e6:.2f} M requests per CPU-second (best of {args.repeat}), "
            f"{1e6 / best * 1e3:.1f} ns/request, {per_sample:.2f} B/request on the wire"
            + (f" ({RECORD.size} B a record)" if form == "raw" else "")
        )


if __name__ == "__main__":
    main()
