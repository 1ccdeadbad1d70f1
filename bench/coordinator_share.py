"""The coordinator's share of a real run's steady state: its CPU per request.

    python bench/coordinator_share.py [--rate 3000] [--seconds 15] [--agents 2] [--endpoints 3]

Runs an open-model scenario (`--rate` requests/s over `--endpoints` GET endpoints of the
embedded automaton, `--agents` agents, an alert rule and a sliding threshold as a scenario
would have) through `run_scenario` on an embedded Ray, in this process. At every closed
window it reads this process's CPU (the coordinator: its event loop and Ray's driver
threads; not the agents, not Ray's daemons, not the target) and its main thread's CPU (the
session's own work: decode, checks, merge, windows, alert rules, bundle writes). Over the
steady windows (the first two and the last left out) it prints both per request, beside
the run's summary.cpu (whole tree: agents and Ray included). The machine is shared: CPU per
request is the figure to compare, before and after a change, in the same conditions.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PATHS = ("/health", "/api/agents", "/api/records?limit=10", "/api/tools", "/api/workflows")


def scenario_text(rate: int, seconds: int, agents: int, endpoints: int, out: str) -> str:
    lines = ["name: coordinator-share", "target: embedded", "requests:"]
    lines += [
        f"  - {{name: e{i}, method: GET, path: '{PATHS[i % len(PATHS)]}', expect: [200, 404]}}"
        for i in range(endpoints)
    ]
    lines += [
        "workload:",
        "  model: open",
        f"  start: {rate}",
        "  stages:",
        f"    - {{duration: {seconds}s, target: {rate}, name: hold}}",
        f"agents: {agents}",
        "thresholds:",
        '  - "error_rate < 50%"',
        '  - {expr: "p99(latency) < 5s", window: 5s}',
        "alerts:",
        "  - defaults",
        f"output: {out}",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=3000, help="requests/s, open model")
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--agents", type=int, default=2)
    ap.add_argument("--endpoints", type=int, default=3)
    args = ap.parse_args()

    from horde.coordinator.run.options import RunOptions
    from horde.coordinator.run.session import run_scenario
    from horde.coordinator.scenario.load import parse_scenario

    readings: list[tuple[int, int, float, float]] = []  # (window end s, requests, process CPU, main thread CPU)

    def on_window(info: dict) -> None:
        readings.append((int(info["t_s"]), int(info["rps"]), time.process_time(), time.thread_time()))

    with tempfile.TemporaryDirectory(prefix="horde-share-") as out:
        text = scenario_text(args.rate, args.seconds, args.agents, args.endpoints, out)
        loaded = parse_scenario(text, source="coordinator_share")
        result = run_scenario(loaded, RunOptions(out_dir=out, on_window=on_window, install_signal_handlers=False))
    steady = readings[2:-1]
    if len(steady) < 2:
        print(f"too few windows ({len(readings)}): run longer")
        return
    requests = sum(r for _, r, _, _ in steady[1:])
    process_s = steady[-1][2] - steady[0][2]
    thread_s = steady[-1][3] - steady[0][3]
    cpu = result.summary.get("cpu", {})
    for t in result.summary.get("thresholds", []):
        if not t.get("ok"):
            print(f"threshold failed: {t.get('expr')} ({t.get('scope', '')}): {t.get('value')}")
    print(
        f"outcome {result.outcome.value}; windows {steady[0][0] + 1}-{steady[-1][0]}: {requests:,} requests "
        f"({requests / (len(steady) - 1):,.0f}/s)\n"
        f"coordinator process: {process_s / requests * 1e6:.3f} us a request ({process_s / (len(steady) - 1):.1%} "
        f"of a core); its main thread: {thread_s / requests * 1e6:.3f} us a request "
        f"({thread_s / (len(steady) - 1):.1%} of a core)\n"
        f"summary.cpu (whole tree, agents and Ray included): steady {cpu.get('steady_s')} s, "
        f"{cpu.get('per_request_us')} us a request"
    )


if __name__ == "__main__":
    main()
