"""horde's own memory in a long run: coordinator and agents at minute 2 and at the end.

A real-time (uncompressed) run at a steady rate against the embedded automaton, on the
embedded Ray, through the public API (horde.coordinator.run.session.run_scenario). Every one-second
window of the bundle carries the coordinator's resident memory and each traffic agent's
(`windows.jsonl`: coordinator.rss_bytes, generator.<agent>.rss_bytes); this script reads
them back and prints, for each process, the memory at minute `--mark` and at the end, the
growth in between per minute, and the leak verdict (horde.coordinator.analysis.trends.leak_verdict) of
the whole series. For the coordinator it also prints what the kernel and glibc's malloc see
(driver_heap: anonymous and file-backed pages; malloc's bytes in use, free in its heaps and
mmapped) at the mark and at the end: a heap that keeps growing while the bytes in use do not
is the allocator's, not horde's. Like `horde`, it sets glibc's malloc up for a long run first
(horde.cluster.allocator).

    python bench/soak_memory.py [--minutes 10] [--mark 2] [--rate 200] [--json out.json]

A second part (on unless `--no-state`) shows what the coordinator retains per window
without waiting hours: a RunSession over a canned fleet (no Ray, no target) is fed canned
batches for `--state-windows` one-second windows (20,000 by default, 5.6 hours of run) and
tracemalloc reads what it holds after a quarter of them and at the end; the sites that grew
most in between are printed. Flat means under a few bytes a window.

A third part (on unless `--no-sizes`) writes canned bundles, three endpoints at 400/s for
`--size-windows` seconds and the wide case (200 endpoints at 5000/s for 30 s), and prints
each file's size and the MB per hour of run, beside what format 1 would have written
for the same records (docs/bundle-format.md, docs/scale.md).

    python bench/soak_memory.py --no-run --state-windows 20000 --size-windows 600
"""

from __future__ import annotations

import argparse
import ctypes
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


class _MallInfo2(ctypes.Structure):
    _fields_ = [  # what ctypes reads as the layout
        (n, ctypes.c_size_t)
        for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


_LIBC: list = []  # glibc, loaded once: a CDLL and a Structure class per reading are garbage the run counts


def driver_heap() -> dict[str, float] | None:
    """This process's memory in MiB as the kernel and glibc see it: resident anonymous and
    file-backed pages (/proc/self/smaps_rollup), and malloc's heaps (mallinfo2: bytes in use,
    free bytes kept in the heaps, blocks mmapped on their own). None off Linux/glibc."""
    try:
        rollup = {}
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                rollup[parts[0].rstrip(":")] = int(parts[1]) / 1024
        if not _LIBC:
            libc = ctypes.CDLL("libc.so.6")
            if hasattr(libc, "mallinfo2"):
                libc.mallinfo2.restype = _MallInfo2
            _LIBC.append(libc)
    except (OSError, ValueError):
        return None
    libc = _LIBC[0]
    if not hasattr(libc, "mallinfo2"):
        return None
    m = libc.mallinfo2()
    return {
        "anon_mib": rollup.get("Anonymous", 0.0),
        "file_mib": rollup.get("Rss", 0.0) - rollup.get("Anonymous", 0.0),
        "malloc_in_use_mib": m.uordblks / MIB,
        "malloc_free_in_heaps_mib": m.fordblks / MIB,
        "malloc_mmapped_mib": m.hblkhd / MIB,
    }


def run_load(
    minutes: float,
    rate: float,
    out: str,
    progress: bool,
    heap: dict | None = None,
    mark_s: float = 0,
    in_process: bool = False,
) -> Path:
    """Run the soak scenario; `heap` (when given) gets the driver's driver_heap() at the first
    window past `mark_s` ("mark") and at the last window ("end")."""
    from horde.coordinator.run.session import RunOptions, run_scenario
    from horde.coordinator.scenario.load import parse_scenario

    text = SCENARIO.format(rate=rate, hold_s=max(1.0, minutes * 60 - 10), out=out)
    loaded = parse_scenario(text, source="bench/soak_memory.py")
    last = [0.0]
    first_window: list[float] = []

    def show(line: str) -> None:
        now = time.monotonic()
        if heap is not None and line.startswith("["):
            first_window[:] = first_window or [now]
            if now - first_window[0] >= mark_s and "mark" not in heap:
                heap["mark"] = driver_heap()
            heap["end"] = driver_heap()
        if progress and (now - last[0] >= 30 or not line.startswith("[")):
            last[0] = now
            print(line, flush=True)

    result = run_scenario(loaded, RunOptions(progress=show, in_process=in_process))
    print(
        f"run: {result.outcome.value}, {result.summary['total']['requests']} requests, "
        f"{result.summary['total']['rps']:.1f} req/s, bundle {result.bundle}"
    )
    return result.bundle


def memory_figures(bundle: Path, mark_s: float, end_s: float | None = None) -> dict[str, Any]:
    """Per process: readings at mark_s and at end_s (default: the last window), growth
    after the mark, and the leak verdict of the series up to end_s."""
    from horde.coordinator.analysis.trends import generator_rss_series, leak_verdict, theil_sen, window_series
    from horde.coordinator.bundle.store import read_bundle

    windows = [w.model_dump(by_alias=True, mode="json") for w in read_bundle(bundle).windows()]
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


_ALLOC_COST = """
import sys, time
from horde.cluster.allocator import tune_allocator
if sys.argv[1] != "default":
    tune_allocator(coordinator=sys.argv[1] == "coordinator")
size = int(sys.argv[2])
b = bytearray(size * 4)
del b  # a larger block freed first: glibc's dynamic threshold rises past `size`
n = 5000
t0 = time.process_time()
for _ in range(n):
    x = bytearray(size)
    x[-1] = 1
    del x
print((time.process_time() - t0) / n * 1e6)
"""


def alloc_cost(sizes: tuple[int, ...] = (64 << 10, 256 << 10, 1 << 20)) -> dict[str, dict[int, float]]:
    """CPU microseconds to allocate, touch and free one buffer of each size, in a fresh process
    with glibc's defaults, with the coordinator's settings, and with an agent's."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out: dict[str, dict[int, float]] = {}
    for mode in ("default", "coordinator", "agent"):
        for size in sizes:
            argv = [sys.executable, "-c", _ALLOC_COST, mode, str(size)]
            run = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
            out.setdefault(mode, {})[size] = float(run.stdout.strip())
    return out


class _CannedFleet:
    """The fleet interface RunSession uses, with nothing behind it (batches are handed in)."""

    agents: list = []

    async def start(self, specs):  # type: ignore[no-untyped-def]
        from horde.cluster.events import AgentInfo

        self.agents = [AgentInfo(s.index, s.incarnation, 1000 + s.index, "node-0", "host") for s in specs]
        return list(self.agents)

    def begin(self, start_wall_ns: int, grace_s: float) -> None:
        pass

    async def close(self) -> None:
        pass


def canned_session(out: str, windows: int, rate: float, endpoints: int, stages: int = 1) -> Any:
    """A RunSession over a canned fleet (no Ray, no target) and a function feeding it window w."""
    import asyncio

    import numpy as np

    from horde.agents.samples import SAMPLE_DTYPE, GeneratorReadings, encode_batch
    from horde.cluster.events import BatchReceived, ClusterShape, NodeShape
    from horde.coordinator.plan import build_plan
    from horde.coordinator.run.session import RunOptions, RunSession
    from horde.coordinator.run.target import Target
    from horde.coordinator.scenario.load import parse_scenario

    url = "http://127.0.0.1:9"  # never contacted
    reqs = "\n".join(f"  - {{name: e{i}, method: GET, path: /e{i}, expect: [200]}}" for i in range(endpoints))
    per = max(1, windows // stages)
    st = ", ".join(f"{{name: s{i}, duration: {per}s, target: {rate}}}" for i in range(stages))
    text = (
        f"name: canned\ntarget: {url}\nrequests:\n{reqs}\nworkload:\n  model: open\n  stages: [{st}]\n"
        "agents: 1\nflush_interval: 1s\nthresholds: ['error_rate < 1%']\n"
    )
    loaded = parse_scenario(text, source="canned")
    plan = build_plan(loaded.scenario, url, 4.0, supports_fast=None)
    shape = ClusterShape("in-process", "", (NodeShape("local", "host", 4.0),))
    opts = RunOptions(out_dir=out, progress=lambda line: None, install_signal_handlers=False, on_window=lambda i: None)
    session = RunSession(loaded, plan, shape, _CannedFleet(), opts, Target(url=url, metrics_url=None))
    asyncio.run(session.start())
    rng = np.random.default_rng(0)
    n = max(1, int(rate))
    now = [0]
    session.now_ns = lambda: session.start_wall_ns + (now[0] + 1) * 1_000_000_000

    def feed(w: int, final: bool = False) -> None:
        now[0] = w
        s = np.zeros(n, SAMPLE_DTYPE)
        t0 = w * 1_000_000_000
        s["endpoint"] = rng.integers(0, endpoints, n)
        s["intended_ns"] = t0 + np.sort(rng.integers(0, 900_000_000, n))
        s["sent_ns"] = s["intended_ns"] + rng.integers(0, 100_000, n)
        s["end_ns"] = s["sent_ns"] + rng.lognormal(np.log(3e6), 0.5, n).astype(np.int64)
        s["status"] = 200
        s["bytes"] = 120
        payload = encode_batch(
            agent=0,
            incarnation=0,
            seq=w,
            watermark_ns=t0 + 1_000_000_000,
            records=s.tobytes(),
            readings=GeneratorReadings(cpu_s=0.01 * w, rss_bytes=50_000_000, level=float(rate)),
            final=final,
            engine="fast",
        )
        if not session.on_batch(BatchReceived(index=0, payload=payload)):
            raise RuntimeError(f"canned batch {w} was refused")
        session.close_ready_windows()

    return session, feed


def session_state(windows: int, rate: float, endpoints: int, marks: tuple[int, ...], out: str) -> dict[str, Any]:
    """Bytes the coordinator's RunSession retains (tracemalloc, after a collection) at each
    mark while canned batches fill `windows` one-second windows, and the sites that grew
    most between the first and the last mark."""
    import gc
    import tempfile

    with tempfile.TemporaryDirectory(dir=out) as tmp:
        session, feed = canned_session(tmp, windows, rate, endpoints)
        tracemalloc.start(3)
        base = tracemalloc.get_traced_memory()[0]
        at: dict[int, float] = {}
        first_snap = None
        t0 = time.process_time()
        for w in range(windows):
            feed(w)
            if w + 1 in marks:
                gc.collect()
                at[w + 1] = (tracemalloc.get_traced_memory()[0] - base) / MIB
                if first_snap is None:
                    first_snap = tracemalloc.take_snapshot()
        cpu_ms = (time.process_time() - t0) * 1e3 / windows
        growth = []
        if first_snap is not None:
            diff = tracemalloc.take_snapshot().compare_to(first_snap, "lineno")
            growth = [f"{d.size_diff / 1024:+.1f} KiB {d.traceback[0]}" for d in diff[:5]]
        tracemalloc.stop()
        asyncio_close(session)
    return {"retained_mib": at, "coordinator_ms_per_window": cpu_ms, "top_growth": growth}


def asyncio_close(session: Any) -> None:
    import asyncio

    session.on_stream_end()
    asyncio.run(session.close())


def bundle_size(windows: int, rate: float, endpoints: int, out: str, stages: int = 1) -> dict[str, Any]:
    """Bytes per file of a canned run's bundle (this horde's format), and what format 1
    (plain windows.jsonl, 12-byte sparse buckets, sends in summary.json) would have written."""
    import tempfile

    import msgpack

    from horde.coordinator.bundle.store import read_bundle

    with tempfile.TemporaryDirectory(dir=out) as tmp:
        session, feed = canned_session(tmp, windows, rate, endpoints, stages)
        for w in range(windows):
            feed(w, final=w == windows - 1)
        session.on_stream_end()
        import asyncio

        asyncio.run(session.close())
        path = session.finish().bundle
        sizes = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file() and p.name != "report.html"}
        b = read_bundle(path)
        v1_jsonl = sum(len(json.dumps(w.model_dump(by_alias=True, mode="json"))) + 1 for w in b.windows())
        v1_msgpack = sum(len(msgpack.packb(r, use_bin_type=True)) for r in b.window_histograms())
        v1_sends = len(json.dumps(b.sends()["counts"].tolist()))
        v1_summary = len(json.dumps(json.loads((path / "summary.json").read_text()), indent=2)) + v1_sends
        v1_hists = len(msgpack.packb(b.histograms(), use_bin_type=True))
    total = sum(sizes.values())
    replaced = ("windows.jsonl", "windows.msgpack", "sends.msgpack", "summary.json", "histograms.msgpack")
    v1_total = total - sum(sizes.get(k, 0) for k in replaced) + v1_jsonl + v1_msgpack + v1_summary + v1_hists
    return {
        "windows": windows,
        "rate_per_s": rate,
        "endpoints": endpoints,
        "bytes": sizes,
        "total_bytes": total,
        "mb_per_hour": total / windows * 3600 / 1e6,
        "format1_windows_jsonl": v1_jsonl,
        "format1_windows_msgpack": v1_msgpack,
        "format1_summary_json": v1_summary,
        "format1_histograms_msgpack": v1_hists,
        "format1_total_bytes": v1_total,
        "format1_mb_per_hour": v1_total / windows * 3600 / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="Length of the run (real minutes).")
    ap.add_argument("--mark", type=float, default=2.0, help="The earlier reading, in minutes from the start.")
    ap.add_argument("--rate", type=float, default=200.0, help="Requests per second (steady).")
    ap.add_argument("--out", default="results", help="Where the bundle goes.")
    ap.add_argument("--json", default=None, help="Also write the figures here.")
    ap.add_argument("--no-run", dest="run", action="store_false", help="Skip the real-time run.")
    ap.add_argument("--no-state", dest="state", action="store_false", help="Skip the canned-session memory part.")
    ap.add_argument("--no-sizes", dest="sizes", action="store_false", help="Skip the bundle-size part.")
    ap.add_argument("--state-windows", type=int, default=20000, help="Canned one-second windows to retain state over.")
    ap.add_argument("--state-rate", type=float, default=20.0, help="Samples per canned window.")
    ap.add_argument("--state-endpoints", type=int, default=3)
    ap.add_argument("--size-windows", type=int, default=600, help="Windows of the three-endpoint size run.")
    ap.add_argument("--bundle", default=None, help="Read this bundle instead of running (give its --minutes too).")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument(
        "--in-process", action="store_true", help="The agent on a thread of this process, no Ray (a bisection)."
    )
    ap.add_argument(
        "--alloc-cost", action="store_true", help="Also time one large allocation under each allocator set-up."
    )
    args = ap.parse_args(argv)
    if args.mark >= args.minutes:
        ap.error("--mark must be before the end (--minutes)")
    figures: dict[str, Any] = {"minutes": args.minutes, "mark_minute": args.mark, "rate_per_s": args.rate}

    if args.run or args.bundle:
        heap: dict[str, Any] = {}
        if args.bundle:
            bundle = Path(args.bundle)
        else:
            # As `horde` does at its start (coordinator/cli.py): glibc's malloc set for a long run.
            from horde.cluster.allocator import tune_allocator

            tune_allocator()
            bundle = run_load(args.minutes, args.rate, args.out, not args.quiet, heap, args.mark * 60, args.in_process)
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
                f"  {p['leak_verdict']} ({f(p['leak_slope_mib_per_h'], '+.2f').strip()} MiB/h, threshold"
                f" {f(p['leak_threshold_mib_per_h'], '.2f').strip()})"
            )
        if heap.get("mark") and heap.get("end"):
            figures["driver_heap"] = heap
            print(f"\ncoordinator (driver) memory, MiB at minute {args.mark:g} -> the last window")
            for key, label in (
                ("anon_mib", "resident anonymous"),
                ("file_mib", "resident file-backed"),
                ("malloc_in_use_mib", "malloc: in use"),
                ("malloc_free_in_heaps_mib", "malloc: free, kept in heaps"),
                ("malloc_mmapped_mib", "malloc: mmapped blocks"),
            ):
                a, b = heap["mark"][key], heap["end"][key]
                print(f"  {label:<28} {a:8.2f} -> {b:8.2f}  ({b - a:+.2f})")

    if args.state:
        n = args.state_windows
        marks = (n // 4, n)
        st = session_state(n, args.state_rate, args.state_endpoints, marks, args.out)
        figures["session_state"] = st
        a, b = (st["retained_mib"][m] for m in marks)
        print(
            f"\ncoordinator state (tracemalloc, RunSession fed canned batches: {args.state_endpoints} endpoints,"
            f" {args.state_rate:g} samples/s, {n} one-second windows; {st['coordinator_ms_per_window']:.1f} ms CPU"
            " a window, tracing on; loaded machine)"
        )
        print(
            f"  retained after {marks[0]} windows {a:7.3f} MiB, after {marks[1]} {b:7.3f} MiB:"
            f" {(b - a) * MIB / (marks[1] - marks[0]):+.1f} bytes a window"
            f" ({(b - a) * 3600 / (marks[1] - marks[0]):+.3f} MiB per hour of run)"
        )
        for line in st["top_growth"]:
            print(f"    {line}")

    if args.sizes:
        figures["bundle_sizes"] = rows = [
            bundle_size(args.size_windows, 400, 3, args.out, stages=2),
            bundle_size(30, 5000, 200, args.out, stages=2),
        ]
        print("\nbundle size (canned runs through RunSession; format 1 re-encoded from the same records)")
        print(
            f"  {'run':<28} {'total':>10} {'MB/h':>7} {'summary':>9} {'format 1':>10} {'MB/h':>7} {'summary':>9}  files"
        )
        for r in rows:
            label = f"{r['endpoints']} endpoints {r['rate_per_s']:g}/s {r['windows']} s"
            files_ = ", ".join(f"{k} {v / 1e3:.1f} kB" for k, v in r["bytes"].items() if v > 2000)
            print(
                f"  {label:<28} {r['total_bytes'] / 1e6:8.2f}MB {r['mb_per_hour']:7.2f}"
                f" {r['bytes']['summary.json'] / 1e3:7.1f}kB {r['format1_total_bytes'] / 1e6:8.2f}MB"
                f" {r['format1_mb_per_hour']:7.2f} {r['format1_summary_json'] / 1e3:7.1f}kB  {files_}"
            )

    if args.alloc_cost:
        figures["alloc_cost_us"] = cost = alloc_cost()
        print("\nCPU us to allocate, touch and free one buffer (after a larger one was freed; loaded machine)")
        for mode, row in cost.items():
            print(f"  {mode:<12} " + "  ".join(f"{size >> 10:5d} KiB {us:7.1f}" for size, us in row.items()))

    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
