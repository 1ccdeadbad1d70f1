"""The node monitors' readings go on past one stream segment (cluster/nodes.py STREAM_SEGMENT):
the coordinator opens the next stream on the same actor, which carries on from its tick."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap

import pytest

_RUN = textwrap.dedent(
    """
    import asyncio, json
    from horde.cluster.connect import connect
    from horde.cluster.nodes import NodeMonitors

    conn = connect(None, num_cpus=1)
    seen = []

    async def main():
        monitors = NodeMonitors(lambda node, reading: seen.append(reading), segment=3)
        monitors.start(__import__("time").time_ns(), interval_s=0.1)
        for _ in range(300):
            if len(seen) >= 10:
                break
            await asyncio.sleep(0.1)
        await monitors.close()

    asyncio.run(main())
    print("SEEN " + json.dumps([r["t_s"] for r in seen]), flush=True)
    print("KEYS " + json.dumps(sorted(seen[-1])), flush=True)
    conn.close()
    """
)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_readings_continue_across_stream_segments(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(HOME=str(tmp_path), RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run(
        [sys.executable, "-c", _RUN], env=env, capture_output=True, text=True, timeout=150, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {ln[:4]: ln[5:] for ln in proc.stdout.splitlines() if ln[:4] in ("SEEN", "KEYS")}
    t_s = json.loads(lines["SEEN"])
    assert len(t_s) >= 10  # past three segments of three
    assert all(b > a for a, b in itertools.pairwise(t_s))  # each segment carries on, no tick read twice
    assert {"cpu_fraction", "net_sent_bytes_per_s", "t_s"} <= set(json.loads(lines["KEYS"]))
