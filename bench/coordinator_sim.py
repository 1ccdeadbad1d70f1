"""One coordinator fed by N simulated agents: how far does aggregation carry it?

    python bench/coordinator_sim.py [--agents 8,64,256] [--groups 10,1000]
                                    [--rates 5000,20000,40000] [--seconds 4] [--actors 4]
                                    [--flush-s 1] [--exact-alerts] [--no-ack | --ack-calls K]
                                    [--lags] [--pin] [--multiplex] [--build-at-flush]

Simulated agents are Ray actors replaying realistic aggregated batches (no HTTP): each
actor hosts several simulated agents, each with its own agent index and batch stream, a
streaming generator task of its own as in the fleet (256 actor processes would not fit this
machine; `--multiplex`: one stream per actor carrying its agents' batches in turn, as the
simulation did before; with the lease's backpressure of one object that stream's batches
wait for each other, which the fleet's do not). For each step an actor aggregates
synthetic records at the step's per-agent rate (lognormal latencies, 1% errors, spread over
`groups` endpoints in one stage, a few crossing into the next window) with the agents' own
code (agents/aggregate.py); every flush interval (`--flush-s`, 1 s as scenarios default
to; 2 s is `flush_interval: 2s`) it stamps each of its agents' batch with its windows,
sequence and watermark and yields it from a Ray streaming generator, and is acked as the
real fleet acks (the lease, agents/lease.py): the stream has a backpressure of one object
(cluster/fleet.py STREAM_BACKPRESSURE_OBJECTS), and when a yield returns (the coordinator
took that batch's reference) the actor acks the batch before it, no call from the
coordinator. `--no-ack` leaves the lease out (no backpressure, no acks); `--ack-calls K` is
the old way, for comparison: the coordinator acks every K-th batch of each agent with a
fire-and-forget actor call, staggered across agents. The coordinator (this
process) runs the session's ingest path: decode_batch, BatchChecker.check, Aggregator.add,
SendCounter.add_counts, close_each up to the agents' low watermark, and for every closed
window the work WindowRecorder does with it
(Window.to_dict, its sparse histograms, and the default alert rules over the last 10
windows of the total and of every endpoint: running sums and only the metrics the rules
read, or with `--exact-alerts` the re-merge of 10 windows per endpoint and every metric, as
the session did before).

Per step it prints the coordinator's CPU per million requests (its whole process: Ray's
driver threads included), the main thread's CPU per batch and per window (the session's
own work, without Ray's), the bytes per second per agent, how late the last window closed
after its end (on time: within one flush interval), how long after the batch that closed
it was made the last window closed (the coordinator's side alone: Ray's transport, the
driver's queue and the coordinator's work, without the simulated agents' own lateness,
which 256 agents sharing one core add and a fleet of agents on cores of their own does not;
on time again within one flush interval), how busy the coordinator's main thread
was over those lags (busy: the share of the time from a window's end to its close its CPU
counted; the rest it waited: for the last agent's batch, i.e. the producers, or for the
interpreter lock held by Ray's driver threads), and the projected one-core ceiling (the
aggregate rate at which this process would use a whole core). The machine has 2 cores
shared by the actors and the coordinator, so a step can be late because the actors took the
CPU: the CPU per million requests is the steadier figure.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

S = 1_000_000_000
STAGE_ENDS_NS = [10**13]  # one stage: the groups are the endpoints


def make_template(rate: int, groups: int, seed: int, flush_s: int = 1):
    """One agent's aggregate for one flush of `flush_s` seconds at `rate` requests/s over `groups` endpoints."""
    from horde.agents.aggregate import aggregate_records
    from horde.agents.samples import SAMPLE_DTYPE

    rng = np.random.default_rng(seed)
    n = rate * flush_s
    s = np.zeros(n, SAMPLE_DTYPE)
    s["endpoint"] = rng.integers(0, groups, n)
    s["intended_ns"] = np.sort(rng.integers(0, flush_s * S, n))
    s["sent_ns"] = s["intended_ns"] + rng.exponential(100_000, n).astype(np.int64)
    s["end_ns"] = s["sent_ns"] + rng.lognormal(np.log(5e6), 0.8, n).astype(np.int64)
    s["status"] = 200
    err = rng.random(n) < 0.01
    s["error"][err] = rng.integers(1, 6, int(err.sum()))
    s["bytes"] = rng.integers(100, 5000, n)
    return aggregate_records(s, np.asarray(STAGE_ENDS_NS))


def stamped(template, window: int):
    """The template moved on by `window` windows (its groups' windows and its send bins)."""
    import dataclasses

    groups = template.groups.copy()
    groups["window"] += window
    return dataclasses.replace(template, groups=groups, sends_first_bin=template.sends_first_bin + 10 * window)


ACK_CALLS = 0  # --ack-calls K: the coordinator acks every K-th batch of each agent by a call (0: never)
MULTIPLEX = False  # --multiplex: one stream per actor carrying its agents' batches in turn
PREBUILD = True  # each flush's batches built before its instant; --build-at-flush: at it (before)


class SimAgents:
    """Several simulated agents in one actor process."""

    def __init__(self, indices: list[int], cpus: list[int] | None = None) -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)  # --pin: the producers keep off the coordinator's core
        self.indices = indices
        self.templates: list = []
        self.acks = 0  # batches acked, by the stream's consumption or by calls (--ack-calls)
        self.lock = threading.Lock()

    def ack(self, agent: int, seq: int) -> None:
        """A lease ack: the agent's runner takes it on its loop (agents/runner.py ack)."""
        with self.lock:
            self.acks += 1

    def acked(self) -> int:
        with self.lock:
            n, self.acks = self.acks, 0
        return n

    def prepare(self, rate: int, groups: int, flush_s: int) -> int:
        # A few distinct batch streams per actor, shared round-robin by its agents.
        self.templates = [make_template(rate, groups, self.indices[0] * 7 + k, flush_s) for k in range(3)]
        return len(self.templates)

    def stream(self, agents: list[int] | None, start_wall_ns: int, flushes: int, flush_s: int, self_ack: bool = True):
        """The batches of `agents` (None: all of this actor's, in turn, in one stream). With
        `self_ack` (and the fleet's backpressure of one object) each yield returns once the
        coordinator took that batch's reference, after it received the batch before, which is
        then acked (cluster/fleet.py TrafficAgentActor.stream). A thread of its own for each
        stream (a threaded actor): while one yield waits for the coordinator the other
        agents' batches go on, as each agent of the fleet has a process of its own (an async
        generator's yields wait in turn, on one reporting thread of the actor)."""
        from horde.agents.samples import GeneratorReadings, encode_batch

        def build(agent: int, t: int) -> bytes:
            tpl = self.templates[(agent + t) % len(self.templates)]
            return encode_batch(
                agent=agent,
                incarnation=0,
                seq=t,
                watermark_ns=(t + 1) * flush_s * S,
                readings=GeneratorReadings(cpu_s=0.5 * (t + 1), rss_bytes=80_000_000, level=1.0),
                agg=stamped(tpl, t * flush_s),
                final=t == flushes - 1,
                engine="fast",
            )

        mine = self.indices if agents is None else agents
        before: tuple[int, int] | None = None
        for t in range(flushes):
            # PREBUILD: this flush's batches are built before its instant (a real agent builds
            # its own on a core of its own in a few ms; here a whole actor's agents would build
            # theirs at the same instant on one shared core, and the last came 0.2-0.35 s late)
            ready = {agent: build(agent, t) for agent in mine} if PREBUILD else {}
            delay = (start_wall_ns + (t + 1) * flush_s * S - time.time_ns()) / 1e9
            if delay > 0:
                time.sleep(delay)
            for agent in mine:
                payload = ready.pop(agent) if PREBUILD else build(agent, t)
                # with the wall time it was produced at: how late the producers themselves were
                yield t, agent, time.time_ns(), payload
                if self_ack and before is not None:
                    self.ack(*before)
                before = (agent, t)


async def coordinate(
    actors, n_agents: int, groups: int, seconds: int, flush_s: int, exact_alerts: bool, ack: bool = True
) -> dict:
    """The coordinator's side of one step; returns its figures."""
    from horde.agents.samples import decode_batch
    from horde.cluster.fleet import STREAM_BACKPRESSURE_OBJECTS
    from horde.coordinator.judge.alerts import DEFAULT_RULES, AlertEngine, metrics_from_stats
    from horde.coordinator.measure.aggregate import Aggregator
    from horde.coordinator.measure.batch_check import BatchChecker, RunBounds
    from horde.coordinator.run.summary import SendCounter
    from horde.coordinator.run.windows import ALERT_WINDOWS

    names = [f"e{i}" for i in range(groups)]
    agg = Aggregator(names, STAGE_ENDS_NS, ["main"], keep_windows=60, sliding=() if exact_alerts else [ALERT_WINDOWS])
    checker = BatchChecker(RunBounds(endpoints=groups, stages=1))
    sends = SendCounter()
    incarnations = dict.fromkeys(range(n_agents), 0)
    marks = dict.fromkeys(range(n_agents), 0)
    finals: set[int] = set()
    start_wall_ns = time.time_ns() + S // 2
    figures = {"requests": 0, "bytes": 0, "lags_s": [], "batch_cpu_s": 0.0, "batches": 0, "window_cpu_s": 0.0}
    # per closed window: from when the batch that closed it was made to the close (Ray's
    # transport, the driver's queue and the coordinator's work; not the producers' lateness)
    figures["own_s"] = []
    every = ACK_CALLS
    self_ack = ack and not every  # the fleet's way: the stream's consumption acks
    figures["made_s"] = {}  # flush -> how long after its due time its last batch was produced
    # (run time ns, the main thread's CPU so far) at each batch's start: how busy the
    # coordinator was between a window's end and its close (busy_s), against waiting for batches.
    marks_cpu: list[tuple[int, float]] = []
    busy_s: list[float] = []

    def cpu_at(t_ns: int) -> float:
        i = bisect.bisect_right(marks_cpu, (t_ns, float("inf"))) - 1
        return marks_cpu[i][1] if i >= 0 else 0.0

    engine = AlertEngine(DEFAULT_RULES)  # a scenario without an `alerts:` section

    def window_work(w) -> None:
        """What WindowRecorder.record does with a closed window, less the writing."""
        w.to_dict()
        _ = w.sparse if w.sparse is not None else {k: v.to_sparse() for k, v in w.by_endpoint.items()}
        if exact_alerts:  # as the recorder did before: re-merged, every metric of every scope
            m = metrics_from_stats(agg.recent(ALERT_WINDOWS, exact=True))
            for e in names:
                m.update(metrics_from_stats(agg.recent(ALERT_WINDOWS, endpoint=e, exact=True), e))
        else:  # as run/windows.py does: running sums, only the scopes and metrics the rules read
            m = metrics_from_stats(agg.recent(ALERT_WINDOWS), only=engine.reads(None)) if engine.reads(None) else {}
            for e in names:
                m.update(metrics_from_stats(agg.recent(ALERT_WINDOWS, endpoint=e), e, only=engine.reads(e)))
        engine.observe(float(w.index + 1), m)

    def ingest(payload: bytes, made_ns: int) -> None:
        c0 = time.thread_time()
        marks_cpu.append((time.time_ns() - start_wall_ns, c0 - t0))
        b = decode_batch(payload)
        checker.check(b, sender=b.agent, incarnations=incarnations, now_ns=time.time_ns() - start_wall_ns)
        agg.add(b)
        sends.add_counts(*b.send_bins())
        figures["requests"] += b.requests
        figures["bytes"] += len(payload)
        marks[b.agent] = b.watermark_ns
        if b.final:
            finals.add(b.agent)
        live = [m for a, m in marks.items() if a not in finals]
        c1 = time.thread_time()
        figures["batch_cpu_s"] += c1 - c0
        figures["batches"] += 1
        for w in agg.close_each(min(live) if live else None):
            window_work(w)
            now_ns = time.time_ns() - start_wall_ns
            figures["lags_s"].append((now_ns - w.end_ns) / 1e9)
            figures["own_s"].append((now_ns + start_wall_ns - made_ns) / 1e9)
            busy_s.append(time.thread_time() - t0 - cpu_at(w.end_ns))
        figures["window_cpu_s"] += time.thread_time() - c1

    async def consume(actor, agents: list[int] | None) -> None:
        call = (
            actor.stream.options(_generator_backpressure_num_objects=STREAM_BACKPRESSURE_OBJECTS)
            if self_ack
            else actor.stream
        )
        async for ref in call.remote(agents, start_wall_ns, seconds // flush_s, flush_s, self_ack):
            flush, agent, made_ns, payload = await ref
            due_ns = start_wall_ns + (flush + 1) * flush_s * S
            made = figures["made_s"]
            made[flush] = max(made.get(flush, -1.0), (made_ns - due_ns) / 1e9)
            # --ack-calls: the old way (fire and forget, before ingest), staggered across agents
            if ack and every and (flush + agent) % every == every - 1:
                actor.ack.remote(agent, flush)
            ingest(payload, made_ns)

    c0 = time.process_time()
    t0 = time.thread_time()
    if MULTIPLEX:  # one stream per actor, its agents' batches in turn
        await asyncio.gather(*(consume(a, None) for a in actors))
    else:  # a stream per agent, as the fleet (each agent an actor of its own there)
        n_actors = len(actors)
        await asyncio.gather(*(consume(actors[i % n_actors], [i]) for i in range(n_agents)))
    agg.close_all()
    figures["cpu_s"] = time.process_time() - c0
    figures["busy_s"] = busy_s
    return figures


def run_step(
    ray, actors, n_agents: int, groups: int, rate: int, seconds: int, flush_s: int, exact: bool, ack: bool
) -> dict:
    ray.get([a.prepare.remote(rate, groups, flush_s) for a in actors])
    f = asyncio.run(coordinate(actors, n_agents, groups, seconds, flush_s, exact, ack))
    acks = sum(ray.get([a.acked.remote() for a in actors]))
    total_rate = n_agents * rate
    lags = f["lags_s"][flush_s:] or f["lags_s"]  # the first flush's windows wait for the step to start
    busy = f["busy_s"][flush_s:] or f["busy_s"]
    own = f["own_s"][flush_s:] or f["own_s"]
    late = [(lag, b) for lag, b in zip(lags, busy) if lag > 0]
    cpu_per_s = f["cpu_s"] / seconds
    return {
        "agents": n_agents,
        "groups": groups,
        "rate": total_rate,
        "requests": f["requests"],
        "cpu_us_per_m": f["cpu_s"] / f["requests"] * 1e12 if f["requests"] else None,
        "bytes_per_agent_s": f["bytes"] / seconds / n_agents,
        "lag_max_s": max(lags) if lags else None,
        "lags_s": [round(x, 2) for x in f["lags_s"]],
        # the producers' side: how long after its due time each flush's last batch was made
        # (on a shared machine the simulated agents can be what is late, not the coordinator)
        "made_s": [round(f["made_s"][k], 2) for k in sorted(f["made_s"])],
        "on_time": bool(lags) and max(lags) <= flush_s,
        # the coordinator's side alone: each window closed within a flush interval of the
        # closing batch being made (what a fleet of agents on cores of their own would see)
        "own_max_s": max(own) if own else None,
        "own_on_time": bool(own) and max(own) <= flush_s,
        # of the time between a window's end and its close, the share the coordinator's main
        # thread was working (the rest it waited for the last agent's batch to arrive)
        "busy_share": sum(b for _, b in late) / sum(lag for lag, _ in late) if late else None,
        "ms_per_batch": f["batch_cpu_s"] / max(f["batches"], 1) * 1e3,
        "ms_per_window": f["window_cpu_s"] / max(len(f["lags_s"]), 1) * 1e3,
        "cpu_fraction": cpu_per_s,
        "acks": acks,
        "ceiling": total_rate / cpu_per_s if cpu_per_s > 0 else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", default="8,64,256", help="simulated agents per configuration")
    ap.add_argument("--groups", default="10,1000", help="endpoints x stages per configuration")
    ap.add_argument("--rates", default="5000,20000,40000", help="per-agent requests/s, raised step by step")
    ap.add_argument("--seconds", type=int, default=4, help="seconds per step")
    ap.add_argument("--actors", type=int, default=4, help="Ray actors hosting the simulated agents")
    ap.add_argument("--lags", action="store_true", help="print how late each window closed (s), in order")
    ap.add_argument("--flush-s", type=int, default=1, help="seconds between an agent's batches (flush_interval)")
    ap.add_argument("--exact-alerts", action="store_true", help="alert rules re-merge 10 windows (the old way)")
    ap.add_argument("--no-ack", action="store_true", help="leave the lease out: no backpressure, no acks")
    ap.add_argument(
        "--pin",
        action="store_true",
        help="pin the coordinator to CPU 0 and the simulated agents to the other CPUs (one core each side)",
    )
    ap.add_argument(
        "--ack-calls",
        type=int,
        default=0,
        help="the old acks: a call for every K-th batch of each agent (0: the fleet's way)",
    )
    ap.add_argument(
        "--multiplex",
        action="store_true",
        help="one stream per actor for its agents in turn (before: a stream per agent, as the fleet)",
    )
    ap.add_argument(
        "--build-at-flush",
        action="store_true",
        help="the simulated agents build each batch at its flush instant, all at once on the shared "
        "core (before: their own lateness then shows in the last window's close)",
    )
    args = ap.parse_args()
    global ACK_CALLS, MULTIPLEX, PREBUILD
    ACK_CALLS = max(0, args.ack_calls)
    MULTIPLEX = args.multiplex
    PREBUILD = not args.build_at_flush
    producer_cpus = sorted(os.sched_getaffinity(0) - {0}) if args.pin else None
    if args.pin:
        os.sched_setaffinity(0, {0})  # threads started from here on (Ray's driver threads) inherit it

    from horde.cluster.connect import connect

    conn = connect(num_cpus=max(2, args.actors))
    import ray

    sim = ray.remote(num_cpus=0)(SimAgents)
    print(
        "agents  endpoints x stages  rate (req/s)  coordinator CPU  ms per M req  ms a batch  ms a window"
        "  bytes/s per agent  last window closed  busy  on time  after closing batch made  1-core ceiling (req/s)"
    )
    try:
        for n_agents in [int(x) for x in args.agents.split(",")]:
            n_actors = min(args.actors, n_agents)
            per_actor = -(-n_agents // n_actors)  # a thread for each of its agents' streams, and the calls
            actors = [
                sim.options(max_concurrency=per_actor + 4).remote(list(range(i, n_agents, n_actors)), producer_cpus)
                for i in range(n_actors)
            ]
            for groups in [int(x) for x in args.groups.split(",")]:
                for rate in [int(x) for x in args.rates.split(",")]:
                    r = run_step(
                        ray,
                        actors,
                        n_agents,
                        groups,
                        rate,
                        args.seconds,
                        args.flush_s,
                        args.exact_alerts,
                        not args.no_ack,
                    )
                    print(
                        f"{r['agents']:>6}  {r['groups']:>18}  {r['rate']:>12,}  {r['cpu_fraction']:>14.0%}"
                        f"  {r['cpu_us_per_m'] / 1000:>12,.1f}  {r['ms_per_batch']:>10.2f}  {r['ms_per_window']:>11.1f}"
                        f"  {r['bytes_per_agent_s']:>17,.0f}"
                        f"  {r['lag_max_s']:>16.3f} s  {r['busy_share'] or 0:>4.0%}"
                        f"  {'yes' if r['on_time'] else 'LATE':>7}"
                        f"  {r['own_max_s'] or 0:>9.3f} s {'yes' if r['own_on_time'] else 'LATE':>4}"
                        f"  {r['ceiling']:>22,.0f}"
                        + (
                            f"   lags {r['lags_s']}   last batch made {r['made_s']}   acks {r['acks']}"
                            if args.lags
                            else ""
                        ),
                        flush=True,
                    )
                    if not r["on_time"]:
                        break  # the highest rate on time is the step before
            for a in actors:
                ray.kill(a)
    finally:
        conn.close()


if __name__ == "__main__":
    main()
