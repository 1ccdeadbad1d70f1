"""CPU cost per request of horde's open model at fixed arrival rates, scheduling included.

    python bench/open_rate.py [--rates 5000,15000,25000] [--seconds 10] [--json rows.json]

One horde run per rate: `horde run <scenario> --target URL --out DIR -q` with
bench/scenarios/nginx_open.yaml rewritten to that rate (constant arrivals, flat from t = 0
for --seconds; one agent, the lean engine, max_in_flight 64, max_connections 64), against
bench/nginx.py's nginx (one worker pinned to --target-cpu, `location /` returns "ok"), the
run pinned to --generator-cpu and measured by bench/meter.py as in cpu_per_request.py
(whose metered run, steady window and per-process split are reused here, not copied).

Per rate, read back from the bundle's summary.json: requests, errors, the achieved rate,
the agent's CPU (from its start of traffic), late and generator-queued sends, latency p50 / p99 of
the whole run; from outside: the agent process's CPU per request over the steady window
(/proc, against nginx's own request count). Asserts nothing: it prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cpu_per_request import (
    SAMPLE_EVERY_S,
    TAIL_S,
    WARMUP_S,
    Sample,
    cpu_busy_s,
    machine_info,
    run_metered,
    steady_cpu_per_request,
    steady_parts_per_request,
    steady_window,
    tail,
)
from bench.nginx import Nginx
from bench.peers.base import Load, PeerFailed
from bench.peers.horde import Horde, find_summary, summary_agent_cpu_s, summary_requests, summary_run_s, write_scenario

SCENARIO = Path(__file__).resolve().parent / "scenarios" / "nginx_open.yaml"
DEFAULT_RATES = (5000, 15000, 25000)


# -- the scenario and the summary (pure) ----------------------------------------------------


def write_open_scenario(url: str, rate: int, seconds: int, workdir: Path, template: Path = SCENARIO) -> Path:
    """The open-model template at `rate` arrivals/s, flat from t = 0 for `seconds`, in workdir.

    peers/horde.py's write_scenario does the rewrite: its stage target and `start` are the
    load's level, which for an open-model template is the arrival rate.
    """
    return write_scenario(Load(url=url, users=rate, seconds=seconds, workdir=workdir), template=template)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def summary_sends(summary: dict[str, Any]) -> dict[str, int | None]:
    """The generator's send counters from summary["generator"]: late_sends (> 10 ms late
    although a sender was free: the generator lagged), generator_queued_sends (waited because
    every one of the agent's own slots was busy; "queued_sends" in older bundles),
    interrupted, unsent. None where absent."""
    generator = summary.get("generator")
    generator = generator if isinstance(generator, dict) else {}
    out: dict[str, int | None] = {}
    for key in ("late_sends", "generator_queued_sends", "interrupted", "unsent"):
        value = _number(generator.get(key, generator.get("queued_sends") if key == "generator_queued_sends" else None))
        out[key] = None if value is None else int(value)
    return out


def summary_latency_ms(summary: dict[str, Any]) -> tuple[float | None, float | None]:
    """(p50, p99) of the whole run's latency (from the intended send), ms; None if absent."""
    latency = summary.get("total", {}).get("latency_ms")
    if not isinstance(latency, dict):
        return None, None
    return _number(latency.get("p50")), _number(latency.get("p99"))


def read_summary(summary: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Every figure this benchmark takes from a bundle's summary.json.

    `seconds`: the planned load span, used when the summary states none.
    """
    requests, errors = summary_requests(summary)
    run_s = summary_run_s(summary) or float(seconds)
    agent_cpu_s = summary_agent_cpu_s(summary)
    p50, p99 = summary_latency_ms(summary)
    generator = summary.get("generator")
    generator = generator if isinstance(generator, dict) else {}
    return {
        "requests": requests,
        "errors": errors,
        "run_s": run_s,
        "rps": requests / run_s if run_s > 0 else 0.0,
        "agent_cpu_s": agent_cpu_s,
        "agent_us_per_request": (1e6 * agent_cpu_s / requests if agent_cpu_s is not None and requests else None),
        **summary_sends(summary),
        "latency_p50_ms": p50,
        "latency_p99_ms": p99,
        "saturated": bool(generator.get("saturated", False)),
        "saturation_reasons": list(generator.get("reasons") or []),
    }


# -- one run per rate -----------------------------------------------------------------------


@dataclass
class RateRun:
    rate: int  # planned arrivals per second
    status: str = "failed"  # "ok" or "failed"
    reason: str = ""
    command: list[str] = field(default_factory=list)
    exit_code: int | None = None
    # from summary.json (read_summary)
    requests: int = 0
    errors: int = 0
    run_s: float = 0.0
    rps: float = 0.0
    agent_cpu_s: float | None = None
    agent_us_per_request: float | None = None
    late_sends: int | None = None
    generator_queued_sends: int | None = None
    interrupted: int | None = None
    unsent: int | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    saturated: bool = False
    saturation_reasons: list[str] = field(default_factory=list)
    # from outside (meter, /proc, nginx's stub_status)
    wall_s: float = 0.0  # the `horde run` process's life
    tree_cpu_s: float = 0.0  # the whole process tree (Ray included), whole life
    nginx_requests: int = 0
    steady_window_s: float = 0.0
    steady_rps: float | None = None  # nginx's count over the steady window / its length
    steady_us_per_request: float | None = None  # the whole tree
    steady_parts_us_per_request: dict[str, float] | None = None  # agent, driver, ray, ...
    other_util: float | None = None  # CPU time on the generator's CPU that was not horde's

    @property
    def steady_agent_us_per_request(self) -> float | None:
        return (self.steady_parts_us_per_request or {}).get("agent")

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "steady_agent_us_per_request": self.steady_agent_us_per_request}


def steady_rps(samples: list[Sample]) -> float | None:
    """Requests nginx served per second over the steady window (cpu_per_request's)."""
    window = steady_window(samples)
    if window is None:
        return None
    a, b, requests = window
    return requests / (b.t_s - a.t_s)


def run_rate(rate: int, target: Nginx, args: argparse.Namespace, workroot: Path) -> RateRun:
    workdir = workroot / f"rate-{rate}"
    workdir.mkdir(parents=True)
    url = target.url.rstrip("/")
    run = RateRun(rate=rate)
    horde = shutil.which(args.horde) or args.horde
    scenario = write_open_scenario(url, rate, args.seconds, workdir)
    run.command = [horde, "run", str(scenario), "--target", url, "--out", str(workdir / "bundle"), "-q"]
    timeout_s = args.seconds + Horde.startup_slack_s
    try:
        served_before = target.requests_served()
        busy_before, span_t0 = cpu_busy_s(args.generator_cpu), time.monotonic()
        meter, samples = run_metered(run.command, args.generator_cpu, timeout_s, workdir, target, Horde.process_part)
        busy_s = cpu_busy_s(args.generator_cpu) - busy_before
        span_s = time.monotonic() - span_t0
        run.nginx_requests = target.requests_served() - served_before - len(samples) - 1
        run.exit_code = meter["exit_code"]
        run.wall_s, run.tree_cpu_s = meter["wall_s"], meter["cpu_s"]
        run.other_util = max(0.0, busy_s - run.tree_cpu_s) / span_s if span_s > 0 else None
        run.steady_us_per_request, run.steady_window_s = steady_cpu_per_request(samples)
        run.steady_parts_us_per_request = steady_parts_per_request(samples)
        run.steady_rps = steady_rps(samples)
        if meter["killed_at_timeout"] or meter["stopped_by_signal"]:
            raise PeerFailed(f"killed after {timeout_s:.0f}s")
        path = find_summary(workdir / "bundle")
        if path is None:
            raise PeerFailed(f"horde exited with {run.exit_code} and left no summary.json")
        try:
            figures = read_summary(json.loads(path.read_text()), args.seconds)
        except (KeyError, TypeError, ValueError) as e:
            raise PeerFailed(f"cannot read {path}: {e!r}") from e
    except PeerFailed as e:
        run.reason = f"{e}: {tail(workdir / 'stderr.txt', 1)[-300:]}"
        return run
    for key, value in figures.items():
        setattr(run, key, value)
    run.status = "ok"
    notes = []
    if run.exit_code != 0:
        notes.append(f"horde exited with {run.exit_code}")
    if run.requests and abs(run.nginx_requests - run.requests) > 0.02 * run.requests:
        notes.append(f"nginx counted {run.nginx_requests} requests, horde {run.requests}")
    if run.saturated:
        notes.append("generator saturated: " + "; ".join(run.saturation_reasons))
    run.reason = "; ".join(notes)
    return run


# -- reporting ------------------------------------------------------------------------------


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


HEAD = (
    "rate planned",
    "requests",
    "errors",
    "rps",
    "steady rps",
    "agent us/req",
    "steady agent us/req",
    "late sends",
    "generator-queued sends",
    "p50 ms",
    "p99 ms",
    "other on gen CPU",
)


def format_table(runs: list[RateRun]) -> str:
    lines: list[tuple[str, ...]] = [HEAD]
    notes = []
    for r in runs:
        if r.status != "ok":
            lines.append((str(r.rate), r.status) + ("",) * (len(HEAD) - 2))
            notes.append(f"{r.rate}/s: {r.status}: {r.reason}")
            continue
        lines.append(
            (
                str(r.rate),
                str(r.requests),
                str(r.errors),
                f"{r.rps:.0f}",
                _fmt(r.steady_rps, ".0f"),
                _fmt(r.agent_us_per_request, ".1f"),
                _fmt(r.steady_agent_us_per_request, ".1f"),
                _fmt(r.late_sends, "d"),
                _fmt(r.generator_queued_sends, "d"),
                _fmt(r.latency_p50_ms, ".2f"),
                _fmt(r.latency_p99_ms, ".2f"),
                "-" if r.other_util is None else f"{100 * r.other_util:.0f}%",
            )
        )
        if r.reason:
            notes.append(f"{r.rate}/s: {r.reason}")
        if r.steady_parts_us_per_request:
            notes.append(
                f"{r.rate}/s: steady us/req by process: "
                + ", ".join(f"{part} {us:.1f}" for part, us in r.steady_parts_us_per_request.items())
                + f" (whole tree {_fmt(r.steady_us_per_request, '.1f')}"
                f" over {r.steady_window_s:.1f} s)"
            )
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEAD))]
    out = []
    for i, line in enumerate(lines):
        out.append("  ".join(c.rjust(w) for c, w in zip(line, widths)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out + ([""] + notes if notes else []))


# -- main -----------------------------------------------------------------------------------


def parse_rates(text: str) -> list[int]:
    rates = []
    for part in text.split(","):
        if not part.strip():
            continue
        rate = int(part)
        if rate <= 0:
            raise ValueError(f"a rate must be positive: {rate}")
        rates.append(rate)
    if not rates:
        raise ValueError("no rate given")
    return rates


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--rates",
        default=",".join(map(str, DEFAULT_RATES)),
        help=f"comma-separated arrival rates, requests/s (default {','.join(map(str, DEFAULT_RATES))})",
    )
    ap.add_argument("--seconds", type=int, default=10, help="load duration per rate (default 10)")
    ap.add_argument("--target-cpu", type=int, default=0, help="CPU for nginx (default 0)")
    ap.add_argument("--generator-cpu", type=int, default=1, help="CPU for horde (default 1)")
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between runs (default 1)")
    ap.add_argument("--horde", default="horde", metavar="EXECUTABLE", help="the horde CLI (default: `horde` on PATH)")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    ap.add_argument("--keep", action="store_true", help="keep each run's folder (bundle included)")
    args = ap.parse_args(argv)
    try:
        args.rates = parse_rates(args.rates)
    except ValueError as e:
        ap.error(f"--rates: {e}")
    if args.seconds <= 0:
        ap.error("--seconds must be positive")
    allowed = os.sched_getaffinity(0)
    for flag in ("target_cpu", "generator_cpu"):
        if getattr(args, flag) not in allowed:
            ap.error(
                f"--{flag.replace('_', '-')} {getattr(args, flag)} is not one of the "
                f"CPUs this process may use: {sorted(allowed)}"
            )
    if args.target_cpu == args.generator_cpu:
        print("warning: target and generator share a CPU; figures will mix", file=sys.stderr)
    if shutil.which(args.horde) is None:
        ap.error(f"`{args.horde}` not found (pip install -e . puts `horde` on PATH)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The sampling (a few reads a second) goes on the target's CPU, not the generator's.
    os.sched_setaffinity(0, {args.target_cpu})
    workroot = Path(tempfile.mkdtemp(prefix="horde-open-rate-"))
    started_unix_s = time.time()
    runs: list[RateRun] = []
    try:
        with Nginx(cpu=args.target_cpu) as target:
            machine = machine_info(target)
            print(
                f"nginx {machine['nginx']} on CPU {args.target_cpu} at {target.url}; horde on "
                f"CPU {args.generator_cpu}; open model, {args.seconds} s per rate",
                file=sys.stderr,
            )
            for i, rate in enumerate(args.rates):
                if i:
                    time.sleep(args.pause)
                print(f"{rate}/s ...", file=sys.stderr, end=" ", flush=True)
                run = run_rate(rate, target, args, workroot)
                runs.append(run)
                print(
                    run.status
                    + (f": {run.requests} requests, {run.rps:.0f} rps" if run.status == "ok" else f": {run.reason}"),
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if args.keep:
            print(f"run folders kept in {workroot}", file=sys.stderr)
        else:
            shutil.rmtree(workroot, ignore_errors=True)
    print(format_table(runs))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "benchmark": "open_rate",
            "started_unix_s": started_unix_s,
            "protocol": {
                "target": 'nginx 1 worker, `return 200 "ok\\n"`, GET /',
                "target_cpu": args.target_cpu,
                "generator_cpu": args.generator_cpu,
                "seconds": args.seconds,
                "rates": args.rates,
                "scenario": "bench/scenarios/nginx_open.yaml: open model, constant arrivals, "
                "1 agent, engine fast, max_in_flight 64, max_connections 64",
                "steady_measure": "process CPU (from /proc) / requests nginx served "
                f"(stub_status), sampled every {SAMPLE_EVERY_S}s, from "
                f"{WARMUP_S}s after the first request to {TAIL_S}s "
                "before the last",
            },
            "machine": machine,
            "rows": [r.as_json() for r in runs],
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0 if any(r.status == "ok" for r in runs) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; nginx and horde were stopped", file=sys.stderr)
        sys.exit(130)
