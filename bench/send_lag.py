"""horde's own send lag (sent - intended) and CPU, by timer kind, in one run.

    python bench/send_lag.py [--kinds ms,precise,spin] [--rates 1,10,100,1000,5000]
                             [--priorities default,nice,fifo,rr] [--seconds 3]
                             [--slow-seconds 20] [--slack-ns N] [--nice N]
                             [--trace] [--json rows.json]

One TrafficAgent in this process (no Ray, no coordinator) on uvloop, the lean engine, 64
in flight, against a raw asyncio server in a subprocess on 127.0.0.1 that answers every
request at once ("ok"). Per rate of the open model (constant arrivals; 1/s runs
--slow-seconds, the others --seconds) and then for a closed model (20 users, think time
uniform 5-15 ms, --seconds), each timer kind of agents/timers.py runs in turn (kinds
interleaved per row, so they share the machine's load), and for each kind each agent
priority of --priorities (agents/priority.py, $HORDE_AGENT_PRIORITY; default: the
agent's default alone):

- ms: whole-millisecond loop timers, rounded up (horde before issue 14; HORDE_SEND_TIMERS=ms)
- precise: one timerfd, the heap of deadlines (the default)
- spin: the fallback without timerfd (loop timer to ~1 ms before, then call_soon spins)

Printed per run: requests sent (the lag figures are theirs), and apart from them those
held back by max_in_flight (queued: every slot was busy at their intended time, the
generator was saturated, which the issue's bound excludes), send lag p50 / p99 / max
(us), the process's CPU per request (us; this process is the agent alone, the server is another), its CPU as a
share of one core over the run (the cost of waiting, at low rates) and the share of a
core spent spinning to deadlines after an early wake (precise). The send lag is read
from the agent's own slot state as each request goes to the engine (a thin wrapper
around the engine's submit, the same cost for every kind), so it is exactly what the
agent records. The process takes an agent's priority first (--nice, default
HORDE_AGENT_NICE or -10, as agents/runner.py raise_priority; 0 leaves it; the target
keeps the default). --priorities: the agent's loop thread while it sends, per run
(agents/priority.py): "default" (the nice above), "nice" (-20), "fifo" / "rr" (SCHED_FIFO
/ SCHED_RR 1, given back if the loop is busy over half the time); each row prints the
priority the run had ("prio", with the guard's demotion if it happened). --fifo puts
the whole bench's thread at SCHED_FIFO 1 before anything (the agent then leaves it so).
--slack-ns sets the agent thread's timer slack (prctl
PR_SET_TIMERSLACK; the agent sets 1 ns itself, agents/timers.py hold_still).

--trace (precise only) splits the lateness of every send over 250 us late: garbage
collector passes and batch builds overlapping it, the thread's run-queue wait
(/proc/thread-self/schedstat: other processes had the core), a timerfd wake-up that
came after the send was due, the loop's own CPU meanwhile (busy with other callbacks),
and the rest; and prints the timerfd wake-ups' lateness and the leads learnt. It costs
a /proc read per send and wake-up, so its figures are not the untraced ones.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from horde.agents import priority
from horde.agents import timers as timers_mod
from horde.agents.http import make_engine
from horde.agents.runner import AGENT_NICE, new_event_loop, raise_priority
from horde.agents.spec import AgentSpec, RequestTemplate, Stage
from horde.agents.timers import KINDS, set_timer_slack_ns
from horde.agents.traffic import TrafficAgent

DEFAULT_RATES = (1, 10, 100, 1000, 5000)
CLOSED_USERS = 20
CLOSED_THINK_S = (0.005, 0.015)

# The target: answers each request as soon as its head is in, on uvloop, in its own process.
SERVER = r"""
import asyncio, sys
try:
    import uvloop; uvloop.install()
except ImportError:
    pass
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.buf = b""
    def data_received(self, d):
        self.buf += d
        n = self.buf.count(b"\r\n\r\n")
        if n:
            self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4:]
            self.t.write(RESP * n)
async def main():
    srv = await asyncio.get_running_loop().create_server(P, "127.0.0.1", 0, backlog=1024)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


class _Tap:
    """The engine, with each submit's send lag taken from the agent's slot state first."""

    def __init__(self, engine: Any, lags_ns: list[int]) -> None:
        self._engine = engine
        self._real_submit = engine.submit
        self._lags = lags_ns
        self.agent: TrafficAgent | None = None
        self.trace: Trace | None = None
        self.queued = 0

    def submit(self, ep: int, slot: int, done: Any) -> None:
        agent: Any = self.agent
        if agent.spec.model == "open" and agent._slot_queued[slot]:
            self.queued += 1  # every slot was busy at its time: max_in_flight held it, not the timers
            self._real_submit(ep, slot, done)
            return
        self._lags.append(agent._slot_sent[slot] - agent._slot_intended[slot])
        if self.trace is not None:
            self.trace.send(agent._slot_intended[slot] + agent._mono_start, agent._slot_sent[slot] + agent._mono_start)
        self._real_submit(ep, slot, done)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def _schedstat() -> tuple[int, int]:
    """This thread's (CPU ns, run-queue wait ns) from /proc/thread-self/schedstat."""
    with open("/proc/thread-self/schedstat", "rb") as f:
        cpu, wait = f.read().split()[:2]
    return int(cpu), int(wait)


def _longest(spans: list[tuple[int, int]]) -> int:
    return max((e - s for s, e in spans), default=0) // 1000


def _overlap(spans: list[tuple[int, int]], a: int, b: int) -> int:
    return sum(max(0, min(e, b) - max(s, a)) for s, e in spans if s < b and e > a)


class Trace:
    """--trace: where each late send's lateness went (precise timers only). Samples the
    thread's run-queue wait at every timer wake and send, times GC passes and batch
    builds, and keeps each timerfd wake-up's lateness (entered - armed)."""

    LATE_NS = 250_000

    def __init__(self) -> None:
        self.sends: list[tuple[int, int]] = []  # (intended, sent), monotonic ns
        self.samples: list[tuple[int, int, int]] = []  # (mono, cpu, runq wait)
        self.gcs: list[tuple[int, int]] = []
        self.flushes: list[tuple[int, int]] = []
        self.wakes: list[tuple[int, int, bool]] = []  # (armed, entered, early wake)
        self._gc_t0 = 0
        self._saved: Any = None
        self._saved_wake_at: Any = None

    def send(self, intended: int, sent: int) -> None:
        self.sends.append((intended, sent))
        self.samples.append((time.monotonic_ns(), *_schedstat()))

    def _gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_t0 = time.monotonic_ns()
        else:
            self.gcs.append((self._gc_t0, time.monotonic_ns()))

    def install(self, agent: TrafficAgent) -> None:
        gc.callbacks.append(self._gc)
        batch = agent._batch

        def timed_batch(*, final: bool) -> bytes:
            t0 = time.monotonic_ns()
            try:
                return batch(final=final)
            finally:
                self.flushes.append((t0, time.monotonic_ns()))

        agent._batch = timed_batch  # type: ignore[method-assign]
        cls = timers_mod.TimerfdTimers
        self._saved = on_readable = cls._on_readable

        def traced(timers: Any) -> None:
            now = time.monotonic_ns()
            self.wakes.append((timers._armed_ns, now, timers._lead))
            self.samples.append((now, *_schedstat()))
            on_readable(timers)

        cls._on_readable = traced  # type: ignore[method-assign]
        self._saved_wake_at = wake_at = cls._wake_at

        def arming(timers: Any, due_ns: int, now: int) -> None:
            self.samples.append((time.monotonic_ns(), *_schedstat()))
            wake_at(timers, due_ns, now)

        cls._wake_at = arming  # type: ignore[method-assign]

    def uninstall(self) -> None:
        gc.callbacks.remove(self._gc)
        if self._saved is not None:
            timers_mod.TimerfdTimers._on_readable = self._saved  # type: ignore[method-assign]
            timers_mod.TimerfdTimers._wake_at = self._saved_wake_at  # type: ignore[method-assign]

    def report(self, label: str, timers: Any) -> None:
        """Print how the sends later than LATE_NS split their lateness, and the send lag
        with the run-queue wait taken out (approximate: the wait between the samples
        around a send, scaled to its lag)."""
        samples = sorted(self.samples)
        times = [t for t, _, _ in samples]
        wake_at = sorted(self.wakes, key=lambda w: w[1])
        wake_times = [w[1] for w in wake_at]
        split = dict.fromkeys(("gc", "flush", "runq", "wake", "busy", "other"), 0)
        count = dict.fromkeys(split, 0)
        own = []
        for intended, sent in self.sends:
            dt = sent - intended
            k0 = max(0, bisect.bisect_right(times, intended) - 1)
            k1 = min(len(samples) - 1, bisect.bisect_left(times, sent))
            scale = min(1.0, dt / max(1, samples[k1][0] - samples[k0][0]))
            runq = int((samples[k1][2] - samples[k0][2]) * scale)
            own.append(max(0, dt - runq))
            if dt <= self.LATE_NS:
                continue
            parts = {"gc": _overlap(self.gcs, intended, sent), "flush": _overlap(self.flushes, intended, sent)}
            parts["runq"] = runq
            parts["busy"] = int((samples[k1][1] - samples[k0][1]) * scale)
            w = bisect.bisect_right(wake_times, sent) - 1
            if w >= 0 and intended - 5_000_000 < wake_at[w][0] <= intended < wake_at[w][1]:
                parts["wake"] = wake_at[w][1] - intended  # the kernel woke us after the send was due
            parts["other"] = max(0, dt - sum(parts.values()))
            count[max(parts, key=lambda k: parts[k])] += 1
            for k, v in parts.items():
                split[k] += v
        late = sum(count.values())
        q = np.percentile
        o = np.asarray(own or [0]) / 1000
        short = np.asarray([e - a for a, e, long in self.wakes if not long] or [0]) / 1000
        long = np.asarray([e - a for a, e, long in self.wakes if long] or [0]) / 1000
        print(
            f"  trace {label}: {late} of {len(self.sends)} sends over {self.LATE_NS // 1000} us late; "
            f"without the run-queue wait p50/p99 {q(o, 50):.1f}/{q(o, 99):.1f} us; "
            f"timerfd wake-ups late p50/p99 us: short sleeps {q(short, 50):.0f}/{q(short, 99):.0f} (n={len(short)}), "
            f"long {q(long, 50):.0f}/{q(long, 99):.0f} (n={len(long)}); gc passes {len(self.gcs)} "
            f"(max {_longest(self.gcs)} us), flushes {len(self.flushes)} (max {_longest(self.flushes)} us); "
            f"leads at the end: long {getattr(timers, 'lead_ns', 0) // 1000} us, "
            f"short {getattr(timers, 'short_lead_ns', 0) // 1000} us",
            flush=True,
        )
        if late:
            total = sum(s - i for i, s in self.sends if s - i > self.LATE_NS)
            shares = ", ".join(f"{k} {100 * v / total:.0f}% (top in {count[k]})" for k, v in split.items())
            print(f"    late time split: {shares}", flush=True)


@dataclasses.dataclass
class Row:
    model: str
    rate_per_s: float
    kind: str
    seconds: float
    sent: int
    queued: int
    lag_p50_us: float
    lag_p99_us: float
    lag_max_us: float
    cpu_us_per_request: float
    cpu_core_pct: float
    spin_core_pct: float
    priority: str = ""


def _spec(url: str, model: str, level: float, seconds: float) -> AgentSpec:
    return AgentSpec(
        index=0,
        count=1,
        incarnation=0,
        model=model,
        arrivals="constant",
        start_level=level,
        stages=(Stage(seconds, level, "hold"),),
        requests=(RequestTemplate("ok", "GET", url + "/", engine="fast"),),
        weights=(1.0,),
        think_time_s=CLOSED_THINK_S if model == "closed" else (0.0, 0.0),
        max_in_flight=64,
        max_connections=64,
        graceful_stop_s=2.0,
        engine="fast",
    )


def run_one(
    url: str, model: str, level: float, seconds: float, kind: str, trace: bool = False, prio: str | None = None
) -> Row:
    lags: list[int] = []
    used: list[str] = []  # the agent thread's priority at each batch (the last: after the guard, if it acted)
    taps: list[_Tap] = []

    def factory(name: str, requests: Any, **kw: Any) -> Any:
        tap = _Tap(make_engine(name, requests, **kw), lags)
        taps.append(tap)
        return tap

    agent = TrafficAgent(_spec(url, model, level, seconds), engine_factory=factory, timers=kind)
    tracer = Trace() if trace and kind == "precise" else None
    for tap in taps:
        tap.agent = agent
        tap.trace = tracer
    if tracer is not None:
        tracer.install(agent)
    loop = new_event_loop()
    if prio:
        os.environ[priority.ENV_MODE] = prio
    try:
        start_ns = time.time_ns() + 200_000_000
        t0, c0 = time.monotonic(), time.process_time()
        loop.run_until_complete(agent.run(start_ns, lambda _b: used.append(priority.in_use())))
        wall_s, cpu_s = time.monotonic() - t0, time.process_time() - c0
    finally:
        loop.close()
        if tracer is not None:
            tracer.uninstall()
            tracer.report(f"{model} {level:g}", agent._timers)
    queued = sum(t.queued for t in taps)
    a = np.asarray(lags, dtype=np.int64) / 1000.0
    if not len(a):
        a = np.zeros(1)
    return Row(
        model=model,
        rate_per_s=level,
        kind=kind,
        seconds=seconds,
        sent=len(lags),
        queued=queued,
        lag_p50_us=float(np.percentile(a, 50)),
        lag_p99_us=float(np.percentile(a, 99)),
        lag_max_us=float(a.max()),
        cpu_us_per_request=cpu_s / max(1, len(lags) + queued) * 1e6,
        cpu_core_pct=100.0 * cpu_s / wall_s,
        spin_core_pct=100.0 * getattr(agent._timers, "spun_ns", 0) / 1e9 / wall_s,
        priority=used[-1] if used else "",
    )


def _start_server() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.strip().isdigit():
        proc.kill()
        raise SystemExit(f"send_lag: the target did not start (printed {line!r})")
    return proc, f"http://127.0.0.1:{int(line)}"


def _print(row: Row) -> None:
    label = f"open {row.rate_per_s:g}/s" if row.model == "open" else f"closed {CLOSED_USERS} users"
    print(
        f"{label:<18} {row.kind:<8} {row.sent:>7} {row.queued:>6} {row.lag_p50_us:>9.1f} {row.lag_p99_us:>9.1f} "
        f"{row.lag_max_us:>9.1f} {row.cpu_us_per_request:>10.1f} {row.cpu_core_pct:>7.1f} {row.spin_core_pct:>7.2f}  "
        f"{row.priority}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", default="ms,precise,spin", help=f"timer kinds, of {','.join(KINDS)}")
    ap.add_argument("--rates", default=",".join(str(r) for r in DEFAULT_RATES))
    ap.add_argument("--seconds", type=float, default=3.0, help="per open-model rate above 1/s, and the closed model")
    ap.add_argument("--slow-seconds", type=float, default=20.0, help="the 1/s run (and any rate under 1/s)")
    ap.add_argument("--slack-ns", type=int, default=None, help="this thread's timer slack (default: leave it)")
    ap.add_argument(
        "--nice", type=int, default=AGENT_NICE, help=f"this process's nice, as an agent's (default {AGENT_NICE})"
    )
    ap.add_argument("--fifo", action="store_true", help="real-time priority 1: the timers apart from the load")
    ap.add_argument("--priorities", default="", help=f"agent priorities to alternate, of {','.join(priority.MODES)}")
    ap.add_argument("--no-closed", action="store_true")
    ap.add_argument("--trace", action="store_true", help="split late sends' lateness by cause (precise)")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = ap.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        ap.error(f"--kinds: {', '.join(bad)} not one of {', '.join(KINDS)}")
    rates = [float(r) for r in args.rates.split(",") if r]
    prios: list[str | None] = [p for p in args.priorities.split(",") if p] or [None]
    if any(p not in priority.MODES for p in prios):
        ap.error(f"--priorities: each one of {', '.join(priority.MODES)}")
    if args.slack_ns is not None and not set_timer_slack_ns(args.slack_ns):
        print("send_lag: could not set the timer slack", file=sys.stderr)
    proc, url = _start_server()  # the target keeps the default priority
    got = raise_priority(whole_process=True, nice=args.nice) if args.nice else {"nice": 0}
    print(f"send_lag: nice {got['nice']}" + (f" ({got['error']})" if got.get("error") else ""), flush=True)
    print("send_lag: load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
    if args.fifo:
        try:  # this thread only: the agent's loop runs here, the target is another process
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            print("send_lag: SCHED_FIFO 1 (the machine's load kept off the agent's thread)", flush=True)
        except (OSError, AttributeError) as exc:
            print(f"send_lag: no SCHED_FIFO here ({exc})", file=sys.stderr)
    rows: list[Row] = []
    try:
        head = ("load", "timers", "sent", "queued", "p50 us", "p99 us", "max us", "cpu us/req", "core %", "spin %")
        print("{:<18} {:<8} {:>7} {:>6} {:>9} {:>9} {:>9} {:>10} {:>7} {:>7}  prio".format(*head))
        plan = [("open", r, args.slow_seconds if r <= 1 else args.seconds) for r in rates]
        if not args.no_closed:
            plan.append(("closed", float(CLOSED_USERS), args.seconds))
        for model, level, seconds in plan:
            for kind in kinds:
                for prio in prios:
                    row = run_one(url, model, level, seconds, kind, args.trace, prio)
                    rows.append(row)
                    _print(row)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        print("send_lag: load average at the end {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
