"""How fast the open model reaches a spike's planned rate: time to 90% for 10x and 100x steps.

Each case is one horde run (embedded Ray, the automaton started once and shared, GET
/health, constant arrivals): a base rate for a few seconds, an instant step to the peak,
a hold, and back. The figure is coordinator/analysis/spike.py's time to 90%: from the step to the
end of the first of two consecutive 100 ms bins in which the actual sends reach 90% of the
planned ones (resolution: one bin, 0.1 s).

    python bench/spike_reach.py [--repeat 3] [--peak 500] [--hold 3] [--engine aiohttp]

The issue's check: a 100x step reaches 90% within 1 s on 2 cores, to a target that keeps
up (the automaton serves 500 req/s of /health on this machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCENARIO = """
name: spike-reach-{factor}x
target: http://127.0.0.1:1
engine: {engine}
requests:
  - {{name: health, method: GET, path: /health, expect: [200]}}
workload:
  model: open
  arrivals: constant
  start: {base}
  stages:
    - {{name: before, duration: {before}s, target: {base}}}
    - {{name: spike, duration: 0s, target: {peak}}}
    - {{name: spike-hold, duration: {hold}s, target: {peak}}}
    - {{name: drop, duration: 0s, target: {base}}}
    - {{name: after, duration: 2s, target: {base}}}
  max_in_flight: 2000
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--peak", type=float, default=500.0, help="the spike's rate, req/s")
    ap.add_argument("--hold", type=float, default=3.0, help="seconds at the peak")
    ap.add_argument("--before", type=float, default=3.0, help="seconds at the base rate first")
    ap.add_argument("--engine", default="aiohttp", choices=("aiohttp", "fast", "auto"))
    ap.add_argument("--address", default=None, help="a Ray cluster to attach to (default: embedded)")
    args = ap.parse_args()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from horde.automaton.launch import start_automaton
    from horde.cluster.connect import connect
    from horde.coordinator.analysis.spike import spikes_for_run
    from horde.coordinator.bundle.store import read_bundle
    from horde.coordinator.run.session import RunOptions, run_scenario
    from horde.coordinator.scenario.load import parse_scenario

    out = Path(tempfile.mkdtemp(prefix="horde-spike-reach-"))
    conn = connect(args.address)
    target = start_automaton()
    rows: dict[int, list[float | None]] = {}
    try:
        for factor in (10, 100):
            base = args.peak / factor
            text = SCENARIO.format(
                factor=factor,
                engine=args.engine,
                base=f"{base:g}",
                peak=f"{args.peak:g}",
                hold=f"{args.hold:g}",
                before=f"{args.before:g}",
            )
            loaded = parse_scenario(text, overrides=[f"target={target.url}"])
            for i in range(args.repeat):
                t0 = time.monotonic()
                result = run_scenario(loaded, RunOptions(out_dir=str(out), install_signal_handlers=False))
                bundle = read_bundle(result.bundle)
                [spike] = spikes_for_run(loaded.scenario.workload, list(bundle.windows()), bundle.sends())
                ttr = spike["time_to_90_s"]
                rows.setdefault(factor, []).append(ttr)
                gen = result.summary["generator"]
                print(
                    f"{factor:>4}x  {base:g} -> {args.peak:g} req/s  run {i + 1}: time to 90% "
                    f"{'never' if ttr is None else f'{ttr:.1f} s'}"
                    f"  (errors during the spike {spike['during']['errors']}, "
                    f"generator {'SATURATED: ' + '; '.join(gen['reasons']) if gen['saturated'] else 'ok'}, "
                    f"{time.monotonic() - t0:.0f} s wall)",
                    flush=True,
                )
    finally:
        target.stop()
        conn.close()
    print(
        f"\ntime to 90% of the planned rate after an instant step ({args.engine} engine, "
        f"{os.cpu_count()} CPUs, automaton /health):"
    )
    for factor, values in rows.items():
        got = [v for v in values if v is not None]
        med = f"median {statistics.median(got):.1f} s, max {max(got):.1f} s" if got else "never reached"
        missed = len(values) - len(got)
        print(f"  {factor:>4}x: {med} over {len(values)} runs" + (f" ({missed} never reached 90%)" if missed else ""))


if __name__ == "__main__":
    main()
