"""The cost of distribution: the same scenario with one agent in-process (a thread of the
coordinator, no Ray) versus one agent as a Ray actor, against the same nginx.

Closed model, 64 users back to back, the same engine; throughput (requests per second of
the run) and agent CPU per request from the bundles. Alternates the two modes.

    python bench/distribution_cost.py [--seconds 10] [--repeat 2] [--engine fast|aiohttp]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: bench/ is not an installed package

from bench.nginx import Nginx  # noqa: E402


def run(url: str, seconds: int, engine: str, in_process: bool, out: Path) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "horde.coordinator.cli",
        "run",
        str(REPO / "bench" / "scenarios" / "nginx_closed.yaml"),
        "--target",
        url,
        "-q",
        "--out",
        str(out),
        "--set",
        f"engine={engine}",
        "--set",
        f"workload.stages[0].duration={seconds}s",
    ]
    if in_process:
        cmd.append("--in-process")
    subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 240, cwd=REPO)
    summary = json.loads(next(out.rglob("summary.json")).read_text())
    t = summary["total"]
    return {"rps": t["requests"] / seconds, "cpu_us": summary["generator"].get("cpu_us_per_request")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--engine", default="fast")
    args = ap.parse_args()
    res: dict[str, list[dict]] = {"in-process": [], "ray": []}
    with Nginx(cpu=0) as ng, tempfile.TemporaryDirectory(prefix="horde-dist-") as d:
        for i in range(args.repeat):
            for mode in ("in-process", "ray"):
                r = run(ng.url, args.seconds, args.engine, mode == "in-process", Path(d) / f"{mode}-{i}")
                res[mode].append(r)
                print(f"{mode:10} run {i + 1}: {r['rps']:8.0f} req/s   agent CPU {r['cpu_us']} us/request")
    ip = statistics.median(r["rps"] for r in res["in-process"])
    ray = statistics.median(r["rps"] for r in res["ray"])
    print(
        f"engine {args.engine}: in-process {ip:.0f} req/s, through Ray {ray:.0f} req/s: "
        f"Ray at {ray / ip:.1%} of in-process ({ray / ip - 1:+.1%})"
    )


if __name__ == "__main__":
    main()
