"""CPU time per request of load generators, side by side, against one pinned nginx.

    python bench/cpu_per_request.py --seconds 10 [--only wrk,aiohttp,locust,horde]
                                    [--repeat 3] [--json results.json]

Protocol (see bench/README.md): nginx with one worker pinned to --target-cpu (0); each
generator in turn pinned to --generator-cpu (1), 64 keep-alive connections/users, back to
back, for --seconds. A generator's CPU is the user+sys time of its whole process tree,
measured by bench/meter.py (a child subreaper, so every descendant is counted once it is
reaped, plus the last reading of those the kernel reaps unwaited, as Ray's raylet has its
workers reaped). CPU per request = that CPU / the requests the generator itself reports.

With --repeat N the peers run in N rounds, each round in a rotated order, so that slow
drift of a noisy machine does not always land on the same peer; the table shows medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.meter import EXITED, tree_cpu_by, tree_cpu_s
from bench.nginx import Nginx
from bench.peers import Load, Peer, PeerFailed, peers

METER = Path(__file__).resolve().parent / "meter.py"
REPO_ROOT = Path(__file__).resolve().parent.parent  # generators run from here, as a user would
LINGER_S = 30.0  # how long a generator's leftover processes may outlive it before being ended
SAMPLE_EVERY_S = 0.25  # steady-state sampling of tree CPU and nginx's request count
WARMUP_S = 1.0  # left out of the steady window after the first requests (Locust's spawn, say)
TAIL_S = 0.5  # left out before the last requests


@dataclass
class PeerRun:
    """One run of one peer; every figure the table and the JSON show."""

    peer: str
    round: int
    status: str  # "ok", "skipped", "failed"
    reason: str = ""
    command: list[str] = field(default_factory=list)
    requests: int = 0
    errors: int = 0
    run_s: float = 0.0  # the load's span as the generator measured it
    wall_s: float = 0.0  # the generator process's lifetime, start-up and shutdown included
    cpu_s: float = 0.0  # user+sys of the whole process tree
    user_s: float = 0.0  # of the reaped processes (see bench/meter.py)
    sys_s: float = 0.0
    autoreaped_cpu_s: float = 0.0  # processes the kernel reaped unwaited (Ray's workers)
    agent_cpu_s: float | None = None  # horde only: the traffic-agent processes alone
    nginx_cpu_s: float = 0.0
    generator_cpu_busy_s: float = 0.0  # all CPU time on the generator's CPU during the run
    generator_cpu_span_s: float = 0.0  # the span over which generator_cpu_busy_s was read
    exit_code: int | None = None
    nginx_requests: int = 0  # requests nginx served during the run (stub_status, polls excluded)
    steady_us_per_request: float | None = None  # tree CPU / nginx requests, in the steady window
    steady_window_s: float = 0.0
    # the same figure split by process (horde: agent, driver, other actors, ray, exited)
    steady_parts_us_per_request: dict[str, float] | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.run_s if self.run_s > 0 else 0.0

    @property
    def us_per_request(self) -> float | None:
        return 1e6 * self.cpu_s / self.requests if self.requests else None

    @property
    def agent_us_per_request(self) -> float | None:
        if self.agent_cpu_s is None or not self.requests:
            return None
        return 1e6 * self.agent_cpu_s / self.requests

    @property
    def generator_util(self) -> float:
        """Share of its CPU the generator tree used over its lifetime."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def nginx_util(self) -> float:
        """Share of CPU 0 nginx used over the load span: near 1.0 means the target was the limit."""
        return self.nginx_cpu_s / self.run_s if self.run_s > 0 else 0.0

    @property
    def other_util(self) -> float:
        """CPU time on the generator's CPU that was not the generator's: noise from elsewhere."""
        if self.generator_cpu_span_s <= 0:
            return 0.0
        return max(0.0, self.generator_cpu_busy_s - self.cpu_s) / self.generator_cpu_span_s

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            rps=self.rps,
            us_per_request=self.us_per_request,
            agent_us_per_request=self.agent_us_per_request,
            generator_util=self.generator_util,
            nginx_util=self.nginx_util,
            other_util=self.other_util,
        )
        return d


# -- measuring one peer -------------------------------------------------------------------


def cpu_busy_s(cpu: int) -> float:
    """Non-idle CPU seconds of one CPU since boot, from /proc/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                # user nice system idle iowait irq softirq steal (guest is inside user)
                return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / tick
    raise ValueError(f"cpu{cpu} not in /proc/stat")


@dataclass(frozen=True)
class Sample:
    t_s: float
    tree_cpu_s: float
    nginx_requests: int  # stub_status's count, this sample's own query included
    # tree_cpu_s split by process, read at the same instant (meter.tree_cpu_by); {} if not
    parts: dict[str, float] = field(default_factory=dict)


def steady_window(
    samples: list[Sample], warmup_s: float = WARMUP_S, tail_s: float = TAIL_S
) -> tuple[Sample, Sample, int] | None:
    """(first sample, last sample, requests nginx served between them) of the steady part.

    The window starts `warmup_s` after nginx first saw requests and ends `tail_s` before it
    saw the last, so start-up and shutdown of the generator (Python imports, Ray, Locust's
    spawning) are outside it. Each sample's own status query is subtracted. None when the
    run has no steady part of at least a second.
    """
    active = [i for i in range(1, len(samples)) if samples[i].nginx_requests - samples[i - 1].nginx_requests > 1]
    if not active:
        return None
    first_t = samples[active[0] - 1].t_s
    last_t = samples[active[-1]].t_s
    inside = [s for s in samples if first_t + warmup_s <= s.t_s <= last_t - tail_s]
    if len(inside) < 2 or inside[-1].t_s - inside[0].t_s < 1.0:
        return None
    a, b = inside[0], inside[-1]
    polls = samples.index(b) - samples.index(a)
    requests = b.nginx_requests - a.nginx_requests - polls
    return (a, b, requests) if requests > 0 else None


def steady_cpu_per_request(
    samples: list[Sample], warmup_s: float = WARMUP_S, tail_s: float = TAIL_S
) -> tuple[float | None, float]:
    """(tree CPU per request in us, window length in s) over the steady part of a run.

    Both counts come from outside the generator: its tree's CPU from /proc, the requests
    from nginx. See steady_window for the window.
    """
    window = steady_window(samples, warmup_s, tail_s)
    if window is None:
        return None, 0.0
    a, b, requests = window
    return 1e6 * (b.tree_cpu_s - a.tree_cpu_s) / requests, b.t_s - a.t_s


def steady_parts_per_request(
    samples: list[Sample], warmup_s: float = WARMUP_S, tail_s: float = TAIL_S
) -> dict[str, float] | None:
    """steady_cpu_per_request's figure split by process part (us per request each).

    Over the same window; the parts add up to the whole. A part absent at one end of the
    window counts 0 there (a process that started or ended inside it). None without parts.
    """
    window = steady_window(samples, warmup_s, tail_s)
    if window is None:
        return None
    a, b, requests = window
    if not a.parts or not b.parts:
        return None
    return {
        part: 1e6 * (b.parts.get(part, 0.0) - a.parts.get(part, 0.0)) / requests
        for part in sorted(set(a.parts) | set(b.parts), key=lambda p: (p == EXITED, p))
    }


Label = Callable[[int, bool], str]  # (pid, is the meter's direct child) -> part name


def run_metered(
    argv: list[str], cpu: int, timeout_s: float, workdir: Path, target: Nginx, label: Label | None = None
) -> tuple[dict[str, Any], list[Sample]]:
    """Run argv under bench/meter.py, sampling its tree's CPU and nginx's count meanwhile.

    With `label`, each sample also has the tree's CPU by part (meter.tree_cpu_by).
    The meter's JSON result and the samples. stdout/stderr go to workdir.
    """
    result_path = workdir / "meter.json"
    cmd = [
        sys.executable,
        str(METER),
        "--cpu",
        str(cpu),
        "--result",
        str(result_path),
        "--timeout",
        str(timeout_s),
        "--linger",
        str(LINGER_S),
        "--",
        *argv,
    ]
    samples: list[Sample] = []
    with open(workdir / "stdout.txt", "wb") as out, open(workdir / "stderr.txt", "wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=REPO_ROOT)
        deadline = time.monotonic() + timeout_s + LINGER_S + 30.0
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    _stop_meter(proc)  # it ends its tree and still writes its result
                    break
                try:
                    parts = tree_cpu_by(proc.pid, label) if label is not None else {}
                    cpu_s = sum(parts.values()) if parts else tree_cpu_s(proc.pid)
                    samples.append(Sample(time.monotonic(), cpu_s, target.requests_served(), parts))
                except OSError:
                    pass  # the meter exited between poll() and the read
                time.sleep(SAMPLE_EVERY_S)
        except BaseException:  # Ctrl-C: leave nothing running, then stop the benchmark
            _stop_meter(proc)
            raise
    if not result_path.exists():
        raise PeerFailed(f"the meter wrote no result (exit {proc.returncode}): {tail(workdir / 'stderr.txt')}")
    return json.loads(result_path.read_text()), samples


def _stop_meter(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM: the meter ends and reaps its tree; SIGKILL only if it does not exit."""
    proc.terminate()
    try:
        proc.wait(timeout=30.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def run_peer(peer: Peer, rnd: int, target: Nginx, args: argparse.Namespace, workroot: Path) -> PeerRun:
    reason = peer.unavailable()
    if reason is not None:
        return PeerRun(peer=peer.name, round=rnd, status="skipped", reason=reason)
    workdir = workroot / f"{rnd:02d}-{peer.name}"
    workdir.mkdir(parents=True)
    url = target.url.rstrip("/") + args.path
    load = Load(url=url, users=args.users, seconds=args.seconds, workdir=workdir)
    run = PeerRun(peer=peer.name, round=rnd, status="failed")
    try:
        run.command = peer.command(load)
        nginx_before = target.cpu_seconds()
        served_before = target.requests_served()
        busy_before, span_t0 = cpu_busy_s(args.generator_cpu), time.monotonic()
        meter, samples = run_metered(
            run.command,
            args.generator_cpu,
            args.seconds + peer.startup_slack_s,
            workdir,
            target,
            getattr(peer, "process_part", None),
        )
        run.generator_cpu_busy_s = cpu_busy_s(args.generator_cpu) - busy_before
        run.generator_cpu_span_s = time.monotonic() - span_t0
        run.nginx_cpu_s = target.cpu_seconds() - nginx_before
        run.nginx_requests = target.requests_served() - served_before - len(samples) - 1
        run.steady_us_per_request, run.steady_window_s = steady_cpu_per_request(samples)
        run.steady_parts_us_per_request = steady_parts_per_request(samples)
        run.exit_code = meter["exit_code"]
        run.wall_s, run.cpu_s = meter["wall_s"], meter["cpu_s"]
        run.user_s, run.sys_s = meter["user_s"], meter["sys_s"]
        run.autoreaped_cpu_s = meter["autoreaped_cpu_s"]
        if meter["killed_at_timeout"] or meter["stopped_by_signal"]:
            raise PeerFailed(f"killed after {args.seconds + peer.startup_slack_s:.0f}s")
        stdout = (workdir / "stdout.txt").read_text(errors="replace")
        count = peer.count(load, stdout, meter["exit_code"])
    except PeerFailed as e:
        run.reason = f"{e}: {tail(workdir / 'stderr.txt', 1)[-300:]}"
        return run
    run.status = "ok"
    run.requests, run.errors, run.run_s = count.requests, count.errors, count.run_s
    run.agent_cpu_s = count.extra.get("agent_cpu_s")
    notes = []
    if meter["ended_stragglers"]:
        notes.append(f"ended {len(meter['ended_stragglers'])} leftover process(es)")
    if run.requests and abs(run.nginx_requests - run.requests) > 0.02 * run.requests:
        notes.append(f"nginx counted {run.nginx_requests} requests, the peer {run.requests}")
    run.reason = "; ".join(notes)
    return run


# -- reporting ----------------------------------------------------------------------------


def median_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def steady_parts_median(runs: list[PeerRun]) -> dict[str, float]:
    """Per part, the median over runs of its steady us/request (parts of runs that have them)."""
    per_part: dict[str, list[float]] = {}
    for r in runs:
        for part, us in (r.steady_parts_us_per_request or {}).items():
            per_part.setdefault(part, []).append(us)
    return {part: statistics.median(v) for part, v in per_part.items()}


def _both_parts(r: PeerRun, *parts: str) -> float | None:
    have = r.steady_parts_us_per_request or {}
    return sum(have[p] for p in parts) if all(p in have for p in parts) else None


def agent_rows(name: str, row: dict[str, Any], ok: list[PeerRun]) -> list[dict[str, Any]]:
    """horde's extra rows: the agent alone, and agent + coordinator (the driver).

    `(agent only)`: us/req from the bundle's agent CPU (from the agents' start of traffic),
    steady us/req from the agent processes' /proc CPU over the steady window.
    `(agent + coordinator)`: steady us/req of the agent processes plus the `horde run`
    process, over the same window; no whole-run figure (the driver's includes Ray's start).
    """
    rows: list[dict[str, Any]] = []
    blank = {
        "reason": "",
        "us_per_request_min": None,
        "us_per_request_max": None,
        "generator_util": None,
        "other_util": None,
    }
    agent_us = median_or_none([r.agent_us_per_request for r in ok])
    agent_steady = median_or_none([_both_parts(r, "agent") for r in ok])
    if agent_us is not None or agent_steady is not None:
        rows.append(
            {
                **row,
                **blank,
                "peer": f"{name} (agent only)",
                "us_per_request": agent_us,
                "cpu_s": median_or_none([r.agent_cpu_s for r in ok]),
                "steady_us_per_request": agent_steady,
            }
        )
    both = median_or_none([_both_parts(r, "agent", "driver") for r in ok])
    if both is not None:
        rows.append(
            {
                **row,
                **blank,
                "peer": f"{name} (agent + coordinator)",
                "us_per_request": None,
                "cpu_s": None,
                "steady_us_per_request": both,
            }
        )
    for r in rows:
        r.pop("steady_parts_us_per_request", None)
    return rows


def summarise(runs: list[PeerRun], names: list[str]) -> list[dict[str, Any]]:
    """One row per peer (and horde's agent rows, see agent_rows): medians over rounds."""
    rows: list[dict[str, Any]] = []
    for name in names:
        mine = [r for r in runs if r.peer == name]
        ok = [r for r in mine if r.status == "ok"]
        if not ok:
            last = mine[-1] if mine else None
            rows.append(
                {
                    "peer": name,
                    "status": last.status if last else "skipped",
                    "reason": last.reason if last else "",
                    "rounds": 0,
                }
            )
            continue
        us = [r.us_per_request for r in ok]
        row = {
            "peer": name,
            "status": "ok",
            "rounds": len(ok),
            "requests": statistics.median(r.requests for r in ok),
            "errors": sum(r.errors for r in ok),
            "rps": statistics.median(r.rps for r in ok),
            "cpu_s": statistics.median(r.cpu_s for r in ok),
            "wall_s": statistics.median(r.wall_s for r in ok),
            "us_per_request": median_or_none(us),
            "us_per_request_min": min(u for u in us if u is not None),
            "us_per_request_max": max(u for u in us if u is not None),
            "steady_us_per_request": median_or_none([r.steady_us_per_request for r in ok]),
            "nginx_requests": statistics.median(r.nginx_requests for r in ok),
            "generator_util": statistics.median(r.generator_util for r in ok),
            "nginx_util": statistics.median(r.nginx_util for r in ok),
            "other_util": statistics.median(r.other_util for r in ok),
            "reason": "; ".join(sorted({r.reason for r in mine if r.reason})),
        }
        parts = steady_parts_median(ok)
        if parts:
            row["steady_parts_us_per_request"] = parts
        rows.append(row)
        rows.extend(agent_rows(name, row, ok))
    wrk = next((r for r in rows if r["peer"] == "wrk" and r["status"] == "ok"), {})
    for key in ("us_per_request", "steady_us_per_request"):
        base = wrk.get(key)
        for r in rows:
            if base and r.get(key):
                r[f"{key}_x_wrk"] = r[key] / base
    return rows


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.0f}%"


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "peer",
        "requests",
        "rps",
        "CPU s",
        "us/req",
        "range",
        "x wrk",
        "steady us/req",
        "x wrk",
        "gen CPU",
        "nginx CPU",
        "other on gen CPU",
        "errors",
    )
    lines = [head]
    notes = []
    for r in rows:
        if r["status"] != "ok":
            lines.append((r["peer"], r["status"]) + ("",) * (len(head) - 2))
            notes.append(f"{r['peer']}: {r['status']}: {r['reason']}")
            continue
        lo, hi = r.get("us_per_request_min"), r.get("us_per_request_max")
        spread = f"{lo:.1f}-{hi:.1f}" if lo is not None and r["rounds"] > 1 else "-"
        lines.append(
            (
                r["peer"],
                f"{r['requests']:.0f}",
                f"{r['rps']:.0f}",
                _fmt(r["cpu_s"], ".2f"),
                _fmt(r["us_per_request"], ".1f"),
                spread,
                _fmt(r.get("us_per_request_x_wrk"), ".1f"),
                _fmt(r["steady_us_per_request"], ".1f"),
                _fmt(r.get("steady_us_per_request_x_wrk"), ".1f"),
                _pct(r["generator_util"]),
                _pct(r["nginx_util"]),
                _pct(r["other_util"]),
                f"{r['errors']:.0f}",
            )
        )
        if r["reason"]:
            notes.append(f"{r['peer']}: {r['reason']}")
        if r.get("steady_parts_us_per_request"):
            notes.append(
                f"{r['peer']}: steady us/req by process: "
                + ", ".join(f"{part} {us:.1f}" for part, us in r["steady_parts_us_per_request"].items())
            )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    out = []
    for i, line in enumerate(lines):
        cells = [str(c).ljust(w) if j == 0 else str(c).rjust(w) for j, (c, w) in enumerate(zip(line, widths))]
        out.append("  ".join(cells).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out + ([""] + notes if notes else []))


def machine_info(target: Nginx) -> dict[str, Any]:
    def version_of(module: str) -> str | None:
        try:
            from importlib.metadata import version

            return version(module)
        except Exception:
            return None

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": target.version(),
        "wrk": (wrk.stdout or wrk.stderr).split("[")[0].strip() or None,
        "aiohttp": version_of("aiohttp"),
        "uvloop": version_of("uvloop"),
        "locust": version_of("locust"),
        "loadavg_at_start": os.getloadavg(),
    }


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    names = [p.name for p in peers()]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=10, help="load duration per peer (default 10)")
    ap.add_argument("--users", type=int, default=64, help="connections / users (default 64)")
    ap.add_argument("--only", default=",".join(names), help=f"comma-separated peers to run, from {','.join(names)}")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of all peers (default 1)")
    ap.add_argument("--path", default="/", help="request path: / (return 200) or /static/small.txt (a file)")
    ap.add_argument("--target-cpu", type=int, default=0, help="CPU for nginx (default 0)")
    ap.add_argument("--generator-cpu", type=int, default=1, help="CPU for generators (default 1)")
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between peers (default 1)")
    ap.add_argument(
        "--horde",
        default="horde",
        metavar="EXECUTABLE",
        help="the horde CLI to run in the horde slot (default: `horde` on PATH)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write every run and the table here")
    ap.add_argument("--keep", action="store_true", help="keep each run's output folder")
    args = ap.parse_args(argv)
    chosen = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        ap.error(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    args.only = chosen
    allowed = os.sched_getaffinity(0)
    for flag in ("target_cpu", "generator_cpu"):
        if getattr(args, flag) not in allowed:
            ap.error(
                f"--{flag.replace('_', '-')} {getattr(args, flag)} is not one of the "
                f"CPUs this process may use: {sorted(allowed)}"
            )
    if args.target_cpu == args.generator_cpu:
        print("warning: target and generator share a CPU; figures will mix", file=sys.stderr)
    if not args.path.startswith("/"):
        ap.error("--path must start with /")
    return args


def run_rounds(selected: list[Peer], args: argparse.Namespace, target: Nginx, workroot: Path) -> list[PeerRun]:
    """Every selected peer, --repeat times, each round in a rotated order."""
    runs: list[PeerRun] = []
    for rnd in range(args.repeat):
        shift = rnd % len(selected)
        for peer in selected[shift:] + selected[:shift]:
            print(f"[round {rnd + 1}/{args.repeat}] {peer.name} ...", file=sys.stderr, end=" ", flush=True)
            run = run_peer(peer, rnd, target, args, workroot)
            runs.append(run)
            us = run.us_per_request
            print(
                run.status
                + (f": {run.requests} requests, {us:.1f} us/request" if us is not None else f": {run.reason}"),
                file=sys.stderr,
                flush=True,
            )
            if run.status != "skipped":
                time.sleep(args.pause)
    return runs


def report_json(
    args: argparse.Namespace,
    started_unix_s: float,
    machine: dict[str, Any],
    rows: list[dict[str, Any]],
    runs: list[PeerRun],
) -> dict[str, Any]:
    return {
        "benchmark": "cpu_per_request",
        "started_unix_s": started_unix_s,
        "protocol": {
            "target": 'nginx 1 worker, `return 200 "ok\\n"`',
            "path": args.path,
            "target_cpu": args.target_cpu,
            "generator_cpu": args.generator_cpu,
            "users": args.users,
            "seconds": args.seconds,
            "repeat": args.repeat,
            "cpu_measure": "user+sys of the generator's whole process tree: "
            "RUSAGE_CHILDREN of a child-subreaper meter after reaping all, "
            "plus the last /proc reading of processes reaped unwaited",
            "steady_measure": "tree CPU (from /proc) / requests nginx served (stub_status), "
            f"sampled every {SAMPLE_EVERY_S}s, from {WARMUP_S}s after "
            f"the first request to {TAIL_S}s before the last",
        },
        "machine": machine,
        "table": rows,
        "runs": [r.as_json() for r in runs],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    selected = [p for p in peers(args.horde) if p.name in args.only]
    # The runner's sampling (a few reads a second) goes on the target's CPU, not the generator's.
    os.sched_setaffinity(0, {args.target_cpu})
    workroot = Path(tempfile.mkdtemp(prefix="horde-cpu-per-request-"))
    started_unix_s = time.time()
    try:
        with Nginx(cpu=args.target_cpu) as target:
            machine = machine_info(target)
            print(
                f"nginx {machine['nginx']} on CPU {args.target_cpu} at {target.url}; "
                f"generators on CPU {args.generator_cpu}; {args.users} connections, "
                f"{args.seconds} s each, {args.repeat} round(s)",
                file=sys.stderr,
            )
            runs = run_rounds(selected, args, target, workroot)
    finally:
        if args.keep:
            print(f"run folders kept in {workroot}", file=sys.stderr)
        else:
            shutil.rmtree(workroot, ignore_errors=True)
    rows = summarise(runs, [p.name for p in selected])
    print(format_table(rows))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = report_json(args, started_unix_s, machine, rows, runs)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0 if any(r.status == "ok" for r in runs) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; nginx and the generator were stopped", file=sys.stderr)
        sys.exit(130)
