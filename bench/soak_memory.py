"""horde's own memory in a long run: coordinator and agents at minute 2 and at the end.

A real-time (uncompressed) run at a steady rate against the embedded automaton, on the
embedded Ray, through the public API (horde.coordinator.run.session.run_scenario). Every one-second
window of the bundle carries the coordinator's resident memory and each traffic agent's
(`windows.jsonl`: coordinator.rss_bytes, generator.<agent>.rss_bytes); this script reads
them back and prints, for each process, the memory at minute `--mark` and at the end, the
growth in between per minute, and the leak verdict (horde.coordinator.analysis.trends.leak_verdict) of
the whole series.

    python bench/soak_memory.py [--minutes 10] [--mark 2] [--rate 200] [--json out.json]

A second part (`--state`, on by default) shows where coordinator growth comes from: the
aggregator's retained state measured with tracemalloc while synthetic batches for the
same rate and endpoints are folded into `--minutes` of one-second windows, once as
run.py builds it (every closed window kept) and once with `keep_windows` bounded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

MIB = 1024 * 1024

SCENARIO = """
name: soak-memory
description: Steady open-model load for horde's own memory over a long real-time run.
target: embedded
requests:
  - {{name: health, method: GET, path: /health, weight: 4, expect: [200]}}
  - {{name: agents, method: GET, path: /api/agents, weight: 2, expect: [200]}}
  - {{name: tool-invoke, method: POST, path: /api/tools/search/invoke, json: {{query: soak}}, expect: [200]}}
  - {{name: records-list, method: GET, path: "/api/records?limit=10", expect: [200]}}
  - {{name: records-create, method: POST, path: /api/records, json: {{kind: soak, value: 1}}, expect: [200, 201]}}
workload:
  model: open
  arrivals: constant
  stages:
    - {{name: ramp, duration: 10s, target: {rate}}}
    - {{name: hold, duration: {hold_s}s, target: {rate}}}
  max_in_flight: 200
  max_connections: 16
flush_interval: 1s
thresholds:
  - "error_rate < 1%"
output: {out}
"""
ENDPOINTS = 5


def _at(ts: list[float], vs: list[float], t: float) -> float | None:
    """The last value at or before t (the window that ended there)."""
    best = None
    for ti, v in zip(ts, vs):
        if ti <= t:
            best = v
    return best


def run_load(minutes: float, rate: float, out: str, progress: bool) -> Path:
    from horde.coordinator.run.session import RunOptions, run_scenario
    from horde.coordinator.scenario.load import parse_scenario

    text = SCENARIO.format(rate=rate, hold_s=max(1.0, minutes * 60 - 10), out=out)
    loaded = parse_scenario(text, source="bench/soak_memory.py")
    last = [0.0]

    def show(line: str) -> None:
        now = time.monotonic()
        if progress and (now - last[0] >= 30 or not line.startswith("[")):
            last[0] = now
            print(line, flush=True)

    result = run_scenario(loaded, RunOptions(progress=show))
    print(
        f"run: {result.outcome.value}, {result.summary['total']['requests']} requests, "
        f"{result.summary['total']['rps']:.1f} req/s, bundle {result.bundle}"
    )
    return result.bundle


def memory_figures(bundle: Path, mark_s: float, end_s: float | None = None) -> dict[str, Any]:
    """Per process: readings at mark_s and at end_s (default: the last window), growth
    after the mark, and the leak verdict of the series up to end_s."""
    from horde.coordinator.analysis.trends import generator_rss_series, leak_verdict, theil_sen, window_series

    with open(bundle / "windows.jsonl") as f:
        windows = [json.loads(line) for line in f if line.strip()]
    series = {"coordinator": window_series(windows, "coordinator", "rss_bytes")}
    series.update({f"agent {a}": s for a, s in generator_rss_series(windows).items()})
    out: dict[str, Any] = {}
    for name, (ts, vs) in series.items():
        if end_s is not None:
            # The windows after the planned end hold the run's wind-down (a collection at
            # the finish drops the coordinator's memory): not part of the steady state.
            keep = [i for i, t in enumerate(ts) if t <= end_s]
            ts, vs = [ts[i] for i in keep], [vs[i] for i in keep]
        if len(ts) < 3:
            continue
        at_mark, end = _at(ts, vs, mark_s), vs[-1]
        after = [(t, v) for t, v in zip(ts, vs) if t >= mark_s]
        slope_per_min = None
        if len(after) >= 3:
            slope_per_min = theil_sen([t for t, _ in after], [v for _, v in after])[0] * 60
        verdict = leak_verdict(ts, vs)
        out[name] = {
            "first_mib": vs[0] / MIB,
            "at_mark_mib": None if at_mark is None else at_mark / MIB,
            "end_mib": end / MIB,
            "end_s": ts[-1],
            "growth_after_mark_mib": None if at_mark is None else (end - at_mark) / MIB,
            "slope_after_mark_mib_per_min": None if slope_per_min is None else slope_per_min / MIB,
            "leak_verdict": verdict.verdict,
            "leak_slope_mib_per_h": None
            if verdict.slope_bytes_per_simulated_hour is None
            else verdict.slope_bytes_per_simulated_hour / MIB,
            "leak_threshold_mib_per_h": None
            if verdict.threshold_bytes_per_hour is None
            else verdict.threshold_bytes_per_hour / MIB,
        }
    return out


def aggregator_state(minutes: float, rate: float, keep_windows: int | None) -> dict[str, float]:
    """Bytes the Aggregator retains after `minutes` of one-second windows (tracemalloc)."""
    import numpy as np

    from horde.agents.samples import SAMPLE_DTYPE, GeneratorReadings, decode_batch, encode_batch
    from horde.coordinator.measure.aggregate import Aggregator

    rng = np.random.default_rng(0)
    n_windows = int(minutes * 60)
    per_window = max(1, int(rate))
    tracemalloc.start()
    agg = Aggregator(
        [f"e{i}" for i in range(ENDPOINTS)], [n_windows * 1_000_000_000], ["hold"], keep_windows=keep_windows
    )
    base = tracemalloc.get_traced_memory()[0]
    marks = {}
    for w in range(n_windows):
        s = np.zeros(per_window, SAMPLE_DTYPE)
        t0 = w * 1_000_000_000
        s["endpoint"] = rng.integers(0, ENDPOINTS, per_window)
        s["intended_ns"] = t0 + np.sort(rng.integers(0, 900_000_000, per_window))
        s["sent_ns"] = s["intended_ns"] + 50_000
        s["end_ns"] = s["sent_ns"] + rng.lognormal(np.log(3e6), 0.5, per_window).astype(np.int64)
        s["status"] = 200
        batch = decode_batch(
            encode_batch(
                agent=0,
                incarnation=0,
                seq=w,
                watermark_ns=t0 + 1_000_000_000,
                records=s.tobytes(),
                readings=GeneratorReadings(cpu_s=float(w)),
            )
        )
        agg.add(batch)
        agg.close_until(t0 + 1_000_000_000 - 1)
        if w + 1 in (60, 120, n_windows):
            marks[w + 1] = (tracemalloc.get_traced_memory()[0] - base) / MIB
    tracemalloc.stop()
    return {f"after_{k}_windows_mib": v for k, v in marks.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="Length of the run (real minutes).")
    ap.add_argument("--mark", type=float, default=2.0, help="The earlier reading, in minutes from the start.")
    ap.add_argument("--rate", type=float, default=200.0, help="Requests per second (steady).")
    ap.add_argument("--out", default="results", help="Where the bundle goes.")
    ap.add_argument("--json", default=None, help="Also write the figures here.")
    ap.add_argument("--no-run", dest="run", action="store_false", help="Only the aggregator-state part.")
    ap.add_argument("--no-state", dest="state", action="store_false", help="Only the run.")
    ap.add_argument("--bundle", default=None, help="Read this bundle instead of running (give its --minutes too).")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.mark >= args.minutes:
        ap.error("--mark must be before the end (--minutes)")
    figures: dict[str, Any] = {"minutes": args.minutes, "mark_minute": args.mark, "rate_per_s": args.rate}

    if args.run or args.bundle:
        bundle = Path(args.bundle) if args.bundle else run_load(args.minutes, args.rate, args.out, not args.quiet)
        figures["bundle"] = str(bundle)
        figures["processes"] = procs = memory_figures(bundle, args.mark * 60, args.minutes * 60)
        print(
            f"\nresident memory (MiB) at minute {args.mark:g} and at the end"
            f" ({args.minutes:g} min, {args.rate:g} req/s)"
        )
        print(
            f"  {'process':<14} {'start':>8} {'minute ' + format(args.mark, 'g'):>10} {'end':>8} {'growth':>8}"
            f" {'MiB/min':>8}  leak verdict (threshold MiB/h)"
        )
        for name, p in procs.items():

            def f(x: float | None, spec: str = "8.1f") -> str:
                return "-".rjust(8) if x is None else format(x, spec)

            print(
                f"  {name:<14} {f(p['first_mib'])} {f(p['at_mark_mib'], '10.1f')} {f(p['end_mib'])}"
                f" {f(p['growth_after_mark_mib'], '+8.2f')} {f(p['slope_after_mark_mib_per_min'], '+8.3f')}"
                f"  {p['leak_verdict']} ({p['leak_slope_mib_per_h']:+.2f} MiB/h, threshold"
                f" {p['leak_threshold_mib_per_h']:.2f})"
            )

    if args.state:
        t0 = time.monotonic()
        kept_all = aggregator_state(args.minutes, args.rate, None)
        bounded = aggregator_state(args.minutes, args.rate, 120)
        figures["aggregator_state"] = {"keep_all": kept_all, "keep_120": bounded}
        print(
            f"\naggregator state (tracemalloc, {ENDPOINTS} endpoints, {args.rate:g} samples/s,"
            f" {args.minutes:g} min of windows; {time.monotonic() - t0:.0f} s to measure)"
        )
        for label, marks in (("every window kept (run.py today)", kept_all), ("keep_windows=120", bounded)):
            print(f"  {label:<34} " + "  ".join(f"{k.split('_')[1]} windows {v:7.2f} MiB" for k, v in marks.items()))

    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
