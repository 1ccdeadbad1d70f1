"""What the Ray driver (horde's coordinator) keeps per streamed batch and per actor call.

Only the Ray part of a run, sped up: the embedded Ray as horde starts it
(horde.cluster.connect), one actor that yields small batches from a streaming generator (as a
traffic agent's `stream` does, with the same backpressure), and the driver awaiting each
item and, unless `--no-ack`, sending the actor one fire-and-forget call per batch (as
cluster/fleet.py acks). `--calls` adds awaited calls instead (the probes). Every
`--every` seconds it reads the driver's memory as the kernel and glibc see it
(bench/soak_memory.py driver_heap) and at the end prints the growth of malloc's bytes in use
between the first sample after `--warm` seconds and the last, per thousand batches and per
thousand calls, so a bisection (a Ray setting on or off, exported as RAY_<name> before the
run) is read in a few minutes instead of hours.

    python bench/ray_driver_memory.py [--seconds 120] [--rate 400] [--no-stream] [--no-ack]
                                      [--segment 3600] [--calls 10]

What it showed (docs/scale.md, "horde's own memory"): malloc's bytes in use stay flat for
streamed items and acks alike, but malloc's mmapped blocks grow in doubling steps with the
items of one stream (Ray's driver records every item id of a live stream) and drop back when
the stream ends; with `--segment` they stay flat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from soak_memory import driver_heap


def _actor_class():  # type: ignore[no-untyped-def]
    import ray

    @ray.remote(max_restarts=0, max_task_retries=0)
    class Source:
        def __init__(self) -> None:
            self.acked = 0

        async def stream(self, count: int, period_s: float, size: int):
            payload = b"x" * size
            start = time.monotonic()
            for i in range(count):
                delay = start + i * period_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                yield payload

        async def ack(self, seq: int) -> None:
            self.acked = seq

        async def ping(self) -> int:
            return self.acked

    return Source


async def drive(args: argparse.Namespace, samples: list[dict]) -> dict[str, int]:
    source = _actor_class().remote()  # type: ignore[attr-defined]
    await source.ping.remote()
    count = int(args.seconds * args.rate)
    done = {"batches": 0, "acks": 0, "calls": 0}
    t0 = time.monotonic()

    async def sample_loop() -> None:
        while True:
            heap = driver_heap() or {}
            samples.append({"t": round(time.monotonic() - t0, 1), **done, **heap})
            await asyncio.sleep(args.every)

    async def consume() -> None:
        stream = source.stream.options(_generator_backpressure_num_objects=16)
        left = count
        while left > 0:  # one stream, or (--segment) one after another as cluster/nodes.py does
            n = min(left, args.segment or left)
            async for ref in stream.remote(n, 1.0 / args.rate, args.size):
                await ref
                done["batches"] += 1
                if args.ack:
                    source.ack.remote(done["batches"])  # fire and forget, as cluster/fleet.py
                    done["acks"] += 1
            left -= n

    async def ack_only() -> None:
        period = 1.0 / args.rate
        for i in range(count):
            delay = t0 + i * period - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            source.ack.remote(i)
            done["acks"] += 1

    async def calls() -> None:
        period = 1.0 / args.calls
        for i in range(int(args.seconds * args.calls)):
            delay = t0 + i * period - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await source.ping.remote()
            done["calls"] += 1

    sampler = asyncio.create_task(sample_loop())
    work = [consume()] if args.stream else ([ack_only()] if args.ack else [])
    if args.calls:
        work.append(calls())
    if not work:
        work.append(asyncio.sleep(args.seconds))  # an idle driver: what grows with time alone
    await asyncio.gather(*work)
    await asyncio.sleep(args.every)  # a last sample after the work
    sampler.cancel()
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--rate", type=float, default=400.0, help="batches (or acks, --no-stream) a second")
    p.add_argument("--size", type=int, default=600, help="bytes a batch")
    p.add_argument("--segment", type=int, default=0, help="items a stream before the next one (0: one stream)")
    p.add_argument("--calls", type=float, default=0.0, help="awaited actor calls a second beside")
    p.add_argument("--no-stream", dest="stream", action="store_false")
    p.add_argument("--no-ack", dest="ack", action="store_false")
    p.add_argument("--every", type=float, default=10.0)
    p.add_argument("--warm", type=float, default=30.0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    from horde.cluster.connect import connect

    conn = connect(num_cpus=1)
    samples: list[dict] = []
    try:
        done = asyncio.run(drive(args, samples))
    finally:
        conn.close()
    first = next((s for s in samples if s["t"] >= args.warm), samples[0])
    last = samples[-1]
    grew = last.get("malloc_in_use_mib", 0.0) - first.get("malloc_in_use_mib", 0.0)
    anon = last.get("anon_mib", 0.0) - first.get("anon_mib", 0.0)
    mmapped = last.get("malloc_mmapped_mib", 0.0) - first.get("malloc_mmapped_mib", 0.0)
    batches = last["batches"] - first["batches"]
    acks = last["acks"] - first["acks"]
    ncalls = last["calls"] - first["calls"]
    ray_env = {k: v for k, v in os.environ.items() if k.startswith("RAY_")}
    for s in samples:
        print(
            f"t={s['t']:7.1f}s batches={s['batches']:7d} acks={s['acks']:7d} calls={s['calls']:6d}"
            f" in_use={s.get('malloc_in_use_mib', 0):8.2f} free={s.get('malloc_free_in_heaps_mib', 0):6.2f}"
            f" mmapped={s.get('malloc_mmapped_mib', 0):6.2f} anon={s.get('anon_mib', 0):8.2f} MiB"
        )
    per = {
        "per_1000_batches_kib": grew * 1024 / batches * 1000 if batches else None,
        "per_1000_acks_kib": grew * 1024 / acks * 1000 if acks else None,
        "per_1000_calls_kib": grew * 1024 / ncalls * 1000 if ncalls else None,
    }
    print(
        f"env {ray_env} stream={args.stream} segment={args.segment} ack={args.ack} calls/s={args.calls}: "
        f"malloc in use +{grew:.2f} MiB, mmapped +{mmapped:.2f} MiB, anon +{anon:.2f} MiB"
        f" over {last['t'] - first['t']:.0f} s "
        f"({batches} batches, {acks} acks, {ncalls} calls); "
        + ", ".join(f"{k} {v:.2f}" for k, v in per.items() if v is not None)
    )
    if args.json:
        args.json.write_text(json.dumps({"env": ray_env, "done": done, "samples": samples, **per}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
