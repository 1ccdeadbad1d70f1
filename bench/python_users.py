"""CPU per request of a scripted (Python) user, beside the plain lean path and Locust.

    python bench/python_users.py [--users 32] [--short 2] [--long 6] [--json out.json]

Three generators, each in its own process, against one nginx (bench/nginx.py), closed model,
`--users` users back to back, one GET / per iteration:

- lean: horde's agent with a plain mix entry on the lean engine (the hot path);
- python: horde's agent with a Python user whose run() is `await client.get("/")`;
- locust: Locust's FastHttpUser (bench/peers/locustfile.py), the same GET per task.

Each generator runs twice, for --short and --long seconds; its CPU per request is
(CPU_long - CPU_short) / (requests_long - requests_short), with CPU the user+sys time of
its whole process (resource usage of the waited child). The difference cancels start-up
(imports, Locust's spawning) so the figure is the steady state's. The requirement (issue
15): python <= 3 x lean, and python <= locust / 5.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.nginx import Nginx

HERE = Path(__file__).resolve().parent

# A horde agent alone (no Ray, no coordinator): prints the requests it sent (sub-requests for
# the Python user, not iterations).
AGENT = textwrap.dedent("""
    import asyncio, sys, time
    from horde.agents.samples import decode_batch
    from horde.agents.runner import new_event_loop
    from horde.agents.traffic import TrafficAgent
    from horde.agents.wire import supports
    from horde.coordinator.plan import build_plan
    from horde.coordinator.scenario.load import load_scenario

    scenario, url, seconds = sys.argv[1], sys.argv[2], sys.argv[3]
    loaded = load_scenario(scenario, overrides=[f"target={url}", f"workload.stages[0].duration={seconds}s"])
    plan = build_plan(loaded.scenario, url, 2.0, agents=1, supports_fast=supports)
    assert set(plan.engines.values()) <= {"fast", "python"}, plan.engines
    out = []
    loop = new_event_loop()
    loop.run_until_complete(TrafficAgent(plan.agents[0]).run(time.time_ns(), out.append))
    names = plan.endpoints
    n = 0
    for p in out:
        b = decode_batch(p)
        if b.agg is not None:  # aggregated (the default): requests per (window, endpoint, stage)
            g = b.agg.groups
            pairs = zip(g["endpoint"].tolist(), g["requests"].tolist())
            n += sum(int(r) for e, r in pairs if "/" in names[e] or len(names) == 1)
        else:
            n += sum(1 for e in b.samples["endpoint"].tolist() if "/" in names[e] or len(names) == 1)
    print("REQUESTS", n)
""")

USER = "class OneGet:\n    async def run(self, client):\n        await client.get('/')\n"


def _scenario(dirpath: Path, kind: str, users: int) -> Path:
    entry = '{name: u, user: "one_get.py:OneGet"}' if kind == "python" else "{name: get, path: /}"
    path = dirpath / f"{kind}.yaml"
    path.write_text(
        f"name: bench-{kind}\ntarget: http://127.0.0.1:1\nrequests:\n  - {entry}\n"
        f"workload: {{model: closed, start: {users}, stages: [{{duration: 1s, target: {users}}}]}}\n"
        "engine: auto\nagents: 1\n"
    )
    return path


def _run_child(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """(user+sys CPU seconds of the child, its stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1):  # Locust exits 1 when a request failed; counted still
        raise RuntimeError(f"{cmd[:4]} exited {done.returncode}: {done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, done.stdout


def run_horde(kind: str, url: str, seconds: float, users: int, work: Path) -> tuple[float, int]:
    scenario = _scenario(work, kind, users)
    cpu, out = _run_child([sys.executable, "-c", AGENT, str(scenario), url, f"{seconds:g}"], dict(os.environ))
    line = next(ln for ln in out.splitlines() if ln.startswith("REQUESTS "))
    return cpu, int(line.split()[1])


def run_locust(url: str, seconds: float, users: int, work: Path) -> tuple[float, int]:
    out = work / f"locust-{seconds:g}"
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(HERE / "peers" / "locustfile.py"),
        "--headless",
        "--only-summary",
        "--loglevel",
        "WARNING",
        "-u",
        str(users),
        "-r",
        str(users),
        "--run-time",
        f"{seconds:g}s",
        "--stop-timeout",
        "1",
        "--host",
        url.rstrip("/"),
        "--json-file",
        str(out),
    ]
    cpu, _ = _run_child(cmd, dict(os.environ))
    entries = json.loads(Path(f"{out}.json").read_text())
    return cpu, sum(int(e["num_requests"]) for e in entries)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=32)
    ap.add_argument("--short", type=float, default=2.0)
    ap.add_argument("--long", type=float, default=6.0)
    ap.add_argument("--repeat", type=int, default=1, help="rounds (rotated order); the table shows medians")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="horde-bench-users-") as tmp, Nginx(cpu=0) as target:
        work = Path(tmp)
        (work / "one_get.py").write_text(USER)
        runs = {
            "lean": lambda s: run_horde("lean", target.url, s, args.users, work),
            "python": lambda s: run_horde("python", target.url, s, args.users, work),
            "locust": lambda s: run_locust(target.url, s, args.users, work),
        }
        per_round: dict[str, list[dict]] = {name: [] for name in runs}
        names = list(runs)
        for rnd in range(args.repeat):
            for name in names[rnd % len(names) :] + names[: rnd % len(names)]:  # rotated: drift is shared
                t0 = time.monotonic()
                cpu_a, n_a = runs[name](args.short)
                cpu_b, n_b = runs[name](args.long)
                per = (cpu_b - cpu_a) / (n_b - n_a) * 1e6 if n_b > n_a else float("nan")
                per_round[name].append(
                    {
                        "cpu_us_per_request": round(per, 2),
                        "requests": [n_a, n_b],
                        "cpu_s": [round(cpu_a, 3), round(cpu_b, 3)],
                        "wall_s": round(time.monotonic() - t0, 1),
                    }
                )
        for name, got in per_round.items():
            median = statistics.median(r["cpu_us_per_request"] for r in got)
            rows[name] = {"cpu_us_per_request": median, "requests": got[-1]["requests"], "rounds": got}
    lean, python, locust = (rows[k]["cpu_us_per_request"] for k in ("lean", "python", "locust"))
    print(f"{'generator':<10} {'us CPU/request':>15} {'requests (short, long)':>24}")
    for name, row in rows.items():
        print(f"{name:<10} {row['cpu_us_per_request']:>15.1f} {row['requests']!s:>24}")
    print(f"python / lean   = {python / lean:.2f}  (required <= 3)")
    print(f"python / locust = {python / locust:.2f}  (required <= 0.2)")
    if args.json:
        Path(args.json).write_text(json.dumps({"users": args.users, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
