"""The warm head of `horde up`: a loopback-only Ray kept running between runs.

`horde up` starts this module as a process of its own (`python -m horde.cluster.head`). It
starts a Ray head exactly as a run starts its embedded Ray (cluster/connect.py: 127.0.0.1 only,
token auth on, the lean head), prints one JSON line on stdout (the address, its PID, Ray's
session directory), and waits. SIGTERM or SIGINT (what `horde down` sends, by PID) stops the
Ray it started (ray.shutdown stops the processes of its own node, nothing else) and ends it.
`horde run` attaches to the address as a driver of its own; its workers import horde from
this machine's files (they inherit this process's import path).

With `--pool N` (N > 0) it also starts the agent pool (cluster/pool.py): N traffic agents of
`--pool-cpus` CPU each, kept warm for the runs that attach, and prints their PIDs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m horde.cluster.head")
    ap.add_argument("--num-cpus", type=int, default=None)
    ap.add_argument("--pool", type=int, default=0, help="traffic agents kept warm for runs")
    ap.add_argument("--pool-cpus", type=float, default=1.0, help="CPUs of each pooled agent")
    args = ap.parse_args(argv)
    # Block the stop signals before Ray starts threads, so that sigwait below receives them.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    import ray

    from horde.cluster.connect import ClusterError, connect

    try:
        conn = connect(None, num_cpus=args.num_cpus)
    except ClusterError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 1
    pool: dict = {}
    if args.pool > 0:
        from horde.cluster.pool import start_pool

        try:
            pool = start_pool(args.pool, args.pool_cpus)
        except Exception as exc:  # the warm head still serves runs: they create their agents
            pool = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    node = ray._private.worker.global_worker.node  # the head this process started
    session_dir = node.get_session_dir_path() if node is not None else ""
    print(
        json.dumps(
            {
                "address": ray.get_runtime_context().gcs_address,
                "pid": os.getpid(),
                "session_dir": session_dir,
                "cpus": sum(n.cpus for n in conn.shape.nodes),
                # Ray's token auth (ray.init exported RAY_AUTH_MODE): a run attaching must use the same
                "auth": os.environ.get("RAY_AUTH_MODE", "token"),
                "pool": pool,  # the keeper's and the pooled agents' PIDs, or why there is none
            }
        ),
        flush=True,
    )
    # `horde up` reads that one line; what Ray may print later goes nowhere (stderr: the log).
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
