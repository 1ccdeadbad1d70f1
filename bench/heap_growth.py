"""Which call stacks hold more of malloc's memory at one time of a run than at another.

Reads a heaptrack (1.4) trace of the coordinator and prints, per allocation stack, the change
in live bytes between `--at` and `--until` seconds from the process's start, largest first:
what grows during a run, by the native frames (Ray's C++, numpy, CPython) that tracemalloc
does not see. Trace the driver only: heaptrack's LD_PRELOAD must not reach the processes Ray
starts, so the traced script drops it from its environment before Ray starts, e.g.

    cat > /tmp/ht_run.py <<'PY'
    import os, runpy, sys
    for k in ("LD_PRELOAD", "DUMP_HEAPTRACK_OUTPUT"):
        os.environ.pop(k, None)
    sys.argv = ["bench/soak_memory.py", *sys.argv[1:]]
    runpy.run_path("bench/soak_memory.py", run_name="__main__")
    PY
    heaptrack -o /tmp/h9 "$(python -c 'import sys; print(sys.executable)')" /tmp/ht_run.py \\
        --minutes 9 --rate 400 --no-state --no-sizes
    python bench/heap_growth.py /tmp/h9.zst --at 150 --until 530

(the real interpreter, not a pyenv shim: a shell script in front would take the preload.)
"""

from __future__ import annotations

import argparse
import collections
import subprocess


def growth(path: str, at_s: float, until_s: float) -> tuple[dict[int, int], list, list, list, float]:
    """Live bytes gained per trace between the two times; and the trace, ip and string tables."""
    strings: list[str] = [""]
    ips: list[list[int]] = [[]]
    traces: list[tuple[int, int]] = [(0, 0)]
    allocs: list[tuple[int, int]] = []
    live: collections.Counter[int] = collections.Counter()
    snaps: dict[str, collections.Counter[int]] = {}
    t_ms = 0
    with subprocess.Popen(["zstd", "-dc", path], stdout=subprocess.PIPE, text=True, errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            kind = line[:1]
            if kind == "+":
                live[int(line[2:], 16)] += 1
            elif kind == "-":
                live[int(line[2:], 16)] -= 1
            elif kind == "a":
                _, size, trace = line.split()
                allocs.append((int(size, 16), int(trace, 16)))
            elif kind == "c":
                t_ms = int(line[2:], 16)
                for name, when in (("at", at_s), ("until", until_s)):
                    if name not in snaps and t_ms >= when * 1000:
                        snaps[name] = live.copy()
            elif kind == "t":
                _, ip, parent = line.split()
                traces.append((int(ip, 16), int(parent, 16)))
            elif kind == "i":
                ips.append([int(x, 16) for x in line.split()[2:]])
            elif kind == "s":
                strings.append(line[2:].rstrip("\n").split(" ", 1)[-1])
    a, b = snaps.get("at", collections.Counter()), snaps.get("until", live)
    by_trace: collections.Counter[int] = collections.Counter()
    for idx in set(a) | set(b):
        if d := b.get(idx, 0) - a.get(idx, 0):
            size, trace = allocs[idx]
            by_trace[trace] += d * size
    return dict(by_trace), traces, ips, strings, t_ms / 1000


def frames(trace: int, traces: list, ips: list, strings: list, depth: int) -> list[str]:
    out = []
    while trace and len(out) < depth:
        ip, trace = traces[trace]
        info = ips[ip] if ip < len(ips) else []
        out.append(strings[info[1]][:70] if len(info) > 1 and info[1] < len(strings) else "?")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace", help="heaptrack's .zst file")
    ap.add_argument("--at", type=float, required=True, help="seconds from the process's start")
    ap.add_argument("--until", type=float, required=True)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--depth", type=int, default=8)
    args = ap.parse_args(argv)
    by_trace, traces, ips, strings, end_s = growth(args.trace, args.at, args.until)
    print(f"trace ends at {end_s:.0f} s; live bytes {args.at:g} s -> {args.until:g} s: {sum(by_trace.values()):+d}")
    ranked = sorted(by_trace.items(), key=lambda kv: -abs(kv[1]))[: args.top]
    for trace, d in ranked:
        print(f"{d:+10d}  " + " <- ".join(frames(trace, traces, ips, strings, args.depth)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
