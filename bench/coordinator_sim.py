"""One coordinator fed by N simulated agents: how far does aggregation carry it?

    python bench/coordinator_sim.py [--agents 8,64,256] [--groups 10,1000]
                                    [--rates 5000,20000,40000] [--seconds 4] [--actors 4]

Simulated agents are Ray actors replaying realistic aggregated batches (no HTTP): each
actor hosts several simulated agents, each with its own agent index and batch stream
(256 actor processes would not fit this machine). For each step an actor aggregates
synthetic records at the step's per-agent rate (lognormal latencies, 1% errors, spread over
`groups` endpoints in one stage, a few crossing into the next window) with the agents' own
code (agents/aggregate.py); every flush interval (1 s) it stamps each of its agents' batch
with its window, sequence and watermark and yields it from a Ray streaming generator, as
the real fleet does. The coordinator (this process) runs the session's ingest path:
decode_batch, BatchChecker.check, Aggregator.add, SendCounter.add_counts, close_until the
agents' low watermark, and for every closed window the work WindowRecorder does with it
(Window.to_dict and each endpoint's Stats.to_sparse).

Per step it prints the coordinator's CPU per million requests (its whole process: Ray's
driver threads included), the bytes per second per agent, how late the last window closed
after its end (on time: within one flush interval), and the projected one-core ceiling
(the aggregate rate at which this process would use a whole core). The machine has 2 cores
shared by the actors and the coordinator, so a step can be late because the actors took the
CPU: the CPU per million requests is the steadier figure.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

S = 1_000_000_000
FLUSH_NS = S
STAGE_ENDS_NS = [10**13]  # one stage: the groups are the endpoints


def make_template(rate: int, groups: int, seed: int):
    """One agent's aggregate for one second at `rate` requests/s over `groups` endpoints."""
    from horde.agents.aggregate import aggregate_records
    from horde.agents.samples import SAMPLE_DTYPE

    rng = np.random.default_rng(seed)
    s = np.zeros(rate, SAMPLE_DTYPE)
    s["endpoint"] = rng.integers(0, groups, rate)
    s["intended_ns"] = np.sort(rng.integers(0, S, rate))
    s["sent_ns"] = s["intended_ns"] + rng.exponential(100_000, rate).astype(np.int64)
    s["end_ns"] = s["sent_ns"] + rng.lognormal(np.log(5e6), 0.8, rate).astype(np.int64)
    s["status"] = 200
    err = rng.random(rate) < 0.01
    s["error"][err] = rng.integers(1, 6, int(err.sum()))
    s["bytes"] = rng.integers(100, 5000, rate)
    return aggregate_records(s, np.asarray(STAGE_ENDS_NS))


def stamped(template, window: int):
    """The template moved to `window` (its groups' windows and its send bins)."""
    import dataclasses

    groups = template.groups.copy()
    groups["window"] += window
    return dataclasses.replace(template, groups=groups, sends_first_bin=template.sends_first_bin + 10 * window)


class SimAgents:
    """Several simulated agents in one actor process."""

    def __init__(self, indices: list[int]) -> None:
        self.indices = indices
        self.templates: list = []

    def prepare(self, rate: int, groups: int) -> int:
        # A few distinct batch streams per actor, shared round-robin by its agents.
        self.templates = [make_template(rate, groups, seed=self.indices[0] * 7 + k) for k in range(3)]
        return len(self.templates)

    async def stream(self, start_wall_ns: int, seconds: int):
        from horde.agents.samples import GeneratorReadings, encode_batch

        for t in range(seconds):
            delay = (start_wall_ns + (t + 1) * FLUSH_NS - time.time_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            for agent in self.indices:
                tpl = self.templates[(agent + t) % len(self.templates)]
                yield encode_batch(
                    agent=agent,
                    incarnation=0,
                    seq=t,
                    watermark_ns=(t + 1) * FLUSH_NS,
                    readings=GeneratorReadings(cpu_s=0.5 * (t + 1), rss_bytes=80_000_000, level=1.0),
                    agg=stamped(tpl, t),
                    final=t == seconds - 1,
                    engine="fast",
                )


async def coordinate(actors, n_agents: int, groups: int, seconds: int) -> dict:
    """The coordinator's side of one step; returns its figures."""
    from horde.agents.samples import decode_batch
    from horde.coordinator.measure.aggregate import Aggregator
    from horde.coordinator.measure.batch_check import BatchChecker, RunBounds
    from horde.coordinator.run.summary import SendCounter

    agg = Aggregator([f"e{i}" for i in range(groups)], STAGE_ENDS_NS, ["main"], keep_windows=60)
    checker = BatchChecker(RunBounds(endpoints=groups, stages=1))
    sends = SendCounter()
    incarnations = dict.fromkeys(range(n_agents), 0)
    marks = dict.fromkeys(range(n_agents), 0)
    finals: set[int] = set()
    start_wall_ns = time.time_ns() + S // 2
    figures = {"requests": 0, "bytes": 0, "lags_s": []}

    def ingest(payload: bytes) -> None:
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
        for w in agg.close_until(min(live)) if live else agg.close_all():
            w.to_dict()
            for st in w.by_endpoint.values():
                st.to_sparse()
            figures["lags_s"].append((time.time_ns() - start_wall_ns - w.end_ns) / 1e9)

    async def consume(actor) -> None:
        async for ref in actor.stream.remote(start_wall_ns, seconds):
            ingest(await ref)

    c0 = time.process_time()
    await asyncio.gather(*(consume(a) for a in actors))
    agg.close_all()
    figures["cpu_s"] = time.process_time() - c0
    return figures


def run_step(ray, actors, n_agents: int, groups: int, rate: int, seconds: int) -> dict:
    ray.get([a.prepare.remote(rate, groups) for a in actors])
    f = asyncio.run(coordinate(actors, n_agents, groups, seconds))
    total_rate = n_agents * rate
    lags = f["lags_s"][1:] or f["lags_s"]  # window 0 waits for the step to start
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
        "on_time": bool(lags) and max(lags) <= FLUSH_NS / S,
        "cpu_fraction": cpu_per_s,
        "ceiling": total_rate / cpu_per_s if cpu_per_s > 0 else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", default="8,64,256", help="simulated agents per configuration")
    ap.add_argument("--groups", default="10,1000", help="endpoints x stages per configuration")
    ap.add_argument("--rates", default="5000,20000,40000", help="per-agent requests/s, raised step by step")
    ap.add_argument("--seconds", type=int, default=4, help="flush intervals per step")
    ap.add_argument("--actors", type=int, default=4, help="Ray actors hosting the simulated agents")
    ap.add_argument("--lags", action="store_true", help="print how late each window closed (s), in order")
    args = ap.parse_args()

    from horde.cluster.connect import connect

    conn = connect(num_cpus=max(2, args.actors))
    import ray

    sim = ray.remote(num_cpus=0)(SimAgents)
    print(
        "agents  endpoints x stages  rate (req/s)  coordinator CPU  us per M req  bytes/s per agent"
        "  last window closed  on time  1-core ceiling (req/s)"
    )
    try:
        for n_agents in [int(x) for x in args.agents.split(",")]:
            n_actors = min(args.actors, n_agents)
            actors = [sim.remote(list(range(i, n_agents, n_actors))) for i in range(n_actors)]
            for groups in [int(x) for x in args.groups.split(",")]:
                for rate in [int(x) for x in args.rates.split(",")]:
                    r = run_step(ray, actors, n_agents, groups, rate, args.seconds)
                    print(
                        f"{r['agents']:>6}  {r['groups']:>18}  {r['rate']:>12,}  {r['cpu_fraction']:>14.0%}"
                        f"  {r['cpu_us_per_m']:>12,.0f}  {r['bytes_per_agent_s']:>17,.0f}"
                        f"  {r['lag_max_s']:>16.3f} s  {'yes' if r['on_time'] else 'LATE':>7}"
                        f"  {r['ceiling']:>22,.0f}" + (f"   lags {r['lags_s']}" if args.lags else ""),
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
