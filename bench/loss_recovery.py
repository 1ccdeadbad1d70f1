"""Time from a lost agent to restored load: detection, replacement, first batch of the new
incarnation, and the first full window back at the planned rate.

Embedded Ray, the bundled automaton, one agent at a steady open-model rate; the agent
process is killed by PID (SIGKILL) or frozen (SIGSTOP) a few seconds in.

    python bench/loss_recovery.py [--rate 200] [--how kill|freeze|both] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import tempfile
import textwrap
import threading
import time
from pathlib import Path

from horde.coordinator.bundle.store import read_bundle
from horde.coordinator.run.session import RunOptions, run_scenario
from horde.coordinator.scenario.load import load_scenario

SCENARIO = """
name: loss-bench
target: embedded
requests:
  - {{name: health, path: /health, expect: [200]}}
workload:
  model: open
  start: {rate}
  stages: [{{duration: {duration}s, target: {rate}}}]
agents: 1
"""


def one(rate: int, how: str, workdir: Path) -> dict:
    scen = workdir / "s.yaml"
    scen.write_text(textwrap.dedent(SCENARIO.format(rate=rate, duration=16)))
    out = workdir / "out"
    result: dict = {}
    th = threading.Thread(
        target=lambda: result.setdefault(
            "r",
            run_scenario(
                load_scenario(scen),
                RunOptions(out_dir=str(out), install_signal_handlers=False, progress=lambda _line: None),
            ),
        )
    )
    th.start()
    pid = None
    start_wall = None
    while pid is None:
        for mf in out.glob("*.incomplete/manifest.json"):
            try:
                m = json.loads(mf.read_text())
            except ValueError:
                continue
            if m.get("agents") and m.get("start_wall_ns"):
                pid, start_wall = m["agents"][0]["pid"], m["start_wall_ns"]
        time.sleep(0.1)
    while time.time_ns() < start_wall + 5_000_000_000:
        time.sleep(0.05)
    hit_s = (time.time_ns() - start_wall) / 1e9
    os.kill(pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
    th.join()
    if how == "freeze":
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    b = read_bundle(result["r"].bundle)
    loss = b.summary["lost_agents"][0]
    windows = {w["index"]: w["total"]["requests"] for w in b.windows()}
    first_full = next(
        (
            i
            for i in range(math.ceil(hit_s), 16)
            if abs(windows.get(i, 0) - rate) <= 0.1 * rate and i > loss.get("restored_at_s", 1e9) - 1
        ),
        None,
    )
    return {
        "how": how,
        "detected_s": round(loss["at_s"] - hit_s, 3),
        "replaced_s": round(loss.get("replaced_at_s", float("nan")) - hit_s, 3),
        "first_batch_s": round(loss.get("restored_at_s", float("nan")) - hit_s, 3),
        "full_window_s": None if first_full is None else round(first_full + 1 - hit_s, 3),
        "reason": loss["reason"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--how", choices=["kill", "freeze", "both"], default="both")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    hows = ["kill", "freeze"] if args.how == "both" else [args.how]
    rows = []
    for how in hows:
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="horde-loss-") as d:
                r = one(args.rate, how, Path(d))
            rows.append(r)
            print(
                f"{how:7} detected +{r['detected_s']:.2f}s  replaced +{r['replaced_s']:.2f}s  "
                f"first batch +{r['first_batch_s']:.2f}s  full window by +{r['full_window_s']}s  ({r['reason']})"
            )
    for how in hows:
        sel = [r for r in rows if r["how"] == how]
        print(
            f"{how}: median loss -> restored load (first batch of the replacement) "
            f"{statistics.median(r['first_batch_s'] for r in sel):.2f} s over {len(sel)} runs"
        )


if __name__ == "__main__":
    main()
