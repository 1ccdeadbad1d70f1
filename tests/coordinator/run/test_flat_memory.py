"""The coordinator's memory does not grow with the windows of a run (issue 16, part 5).

A RunSession over a canned fleet (no Ray, no target) is fed canned wire batches, one per
one-second window, and tracemalloc reads what it retains (after a collection) at two
points of the run. Everything that grows with the run's length is bounded (sends bins
handed to the bundle, soak series thinned, closed windows dropped after the alert and
threshold look-back); the bounds are made small here so that a test of a few thousand
windows reaches them (bench/soak_memory.py measures the real ones over 20,000 windows).
The control run keeps every sends bin: the same measurement sees it grow.
"""

from __future__ import annotations

import asyncio
import gc
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from horde.agents.samples import SAMPLE_DTYPE, GeneratorReadings, encode_batch
from horde.cluster.events import AgentInfo, BatchReceived, ClusterShape, NodeShape
from horde.coordinator.analysis.soak import SoakSeries
from horde.coordinator.plan import build_plan
from horde.coordinator.run import session as session_module
from horde.coordinator.run.session import RunOptions, RunSession
from horde.coordinator.run.summary import SendCounter
from horde.coordinator.run.target import Target
from horde.coordinator.scenario.load import parse_scenario

S = 1_000_000_000
URL = "http://127.0.0.1:9"  # never contacted


class Fleet:
    agents: list[AgentInfo] = []

    async def start(self, specs):
        self.agents = [AgentInfo(s.index, s.incarnation, 1000, "node-0", "host") for s in specs]
        return list(self.agents)

    def begin(self, start_wall_ns: int, grace_s: float) -> None:
        pass

    async def close(self) -> None:
        pass


def _session(out: Path, windows: int) -> RunSession:
    text = textwrap.dedent(f"""
        name: flat
        target: {URL}
        requests:
          - {{name: a, method: GET, path: /a, expect: [200]}}
          - {{name: b, method: GET, path: /b, expect: [200]}}
        workload:
          model: open
          stages: [{{duration: {windows}s, target: 8}}]
        agents: 1
        flush_interval: 1s
        thresholds: ["error_rate < 1%", {{expr: "p99(latency) < 1s", abort: true, window: 10s}}]
    """)
    loaded = parse_scenario(text)
    plan = build_plan(loaded.scenario, URL, 4.0, supports_fast=None)
    shape = ClusterShape("in-process", "", (NodeShape("local", "host", 4.0),))
    opts = RunOptions(
        out_dir=str(out), progress=lambda line: None, install_signal_handlers=False, on_window=lambda info: None
    )
    s = RunSession(loaded, plan, shape, Fleet(), opts, Target(url=URL, metrics_url=None))
    asyncio.run(s.start())
    return s


def _feed(s: RunSession, w: int, rng: np.random.Generator) -> None:
    n = 8
    a = np.zeros(n, SAMPLE_DTYPE)
    a["endpoint"] = np.arange(n) % 2
    a["intended_ns"] = w * S + np.sort(rng.integers(0, 900_000_000, n))
    a["sent_ns"] = a["intended_ns"] + 10_000
    a["end_ns"] = a["sent_ns"] + rng.integers(1_000_000, 9_000_000, n)
    a["status"] = 200
    payload = encode_batch(
        agent=0,
        incarnation=0,
        seq=w,
        watermark_ns=(w + 1) * S,
        records=a.tobytes(),
        readings=GeneratorReadings(cpu_s=0.001 * w, rss_bytes=50_000_000 + w, level=8.0),
        engine="fast",
    )
    s.now_ns = lambda: s.start_wall_ns + (w + 1) * S
    assert s.on_batch(BatchReceived(index=0, payload=payload))
    s.close_ready_windows()


# Where horde's modules live (the checkout, or a staged horde/ tree): its parent of
# agents/, cluster/, coordinator/ and automaton/.
_HORDE_ROOT = Path(session_module.__file__).parents[2]  # as imported (tracemalloc keeps that path)


def _held_by_horde(snapshot: tracemalloc.Snapshot) -> int:
    """Bytes allocated by horde's own lines: numpy's internal caches (allocated inside numpy's
    Python wrappers, bounded, a few kB) are not the run's state."""
    own = [tracemalloc.Filter(True, f"{_HORDE_ROOT}/*"), tracemalloc.Filter(False, "*/tests/*")]
    horde = snapshot.filter_traces(own)
    return sum(t.size for t in horde.traces)


def _retained_per_window(tmp_path: Path, first: int, last: int, *, bounded: bool) -> float:
    """Bytes retained per window between window `first` and window `last`."""
    s = _session(tmp_path, last)
    if bounded:  # the bounds of a long run, scaled down to this test's length
        s.windows.soak_series.max_points = 64
        s.sends.RETAIN_BINS = 100
    else:  # format 1's way: every sends bin kept (the soak series take their room at once)
        s.sends._sink = None
    rng = np.random.default_rng(0)
    tracemalloc.start(1)
    try:
        at = {}
        for w in range(last):
            _feed(s, w, rng)
            if w + 1 in (first, last):
                gc.collect()
                at[w + 1] = _held_by_horde(tracemalloc.take_snapshot())
    finally:
        tracemalloc.stop()
        asyncio.run(s.close())
    return (at[last] - at[first]) / (last - first)


@pytest.mark.slow  # ~20 s alone, a minute on a loaded machine
def test_the_coordinator_retains_nothing_per_window_once_its_bounds_are_reached(tmp_path: Path) -> None:
    per_window = _retained_per_window(tmp_path / "bounded", 300, 900, bounded=True)
    control = _retained_per_window(tmp_path / "control", 150, 450, bounded=False)
    print(f"retained per window: bounded {per_window:.1f} bytes, control {control:.1f} bytes")
    # The control keeps 10 sends bins a window (~80 bytes): seen.
    assert control > 50, control
    # Bounded: what is left is allocator noise, under 5% of the control's growth
    # (at 5 bytes a window, a 72-hour run would grow 1.3 MB).
    assert per_window < control * 0.05, (per_window, control)


def test_sends_handed_off_add_up_to_every_send_and_memory_keeps_only_the_last_bins() -> None:
    handed: list[tuple[int, np.ndarray]] = []
    sends = SendCounter(sink=lambda first, counts: handed.append((first, counts.copy())))
    rng = np.random.default_rng(3)
    every = []
    for w in range(1000):  # 1,000 s: 10,000 bins of 100 ms
        sent = w * S + rng.integers(0, S, 50)
        if w % 100 == 99:  # a straggler for a bin handed off long ago
            sent = np.append(sent, 5 * S)
        every.append(sent)
        sends.add(sent)
        assert len(sends.counts()) <= 2 * SendCounter.RETAIN_BINS + 10
    summary = sends.summary()
    total = np.zeros(10_000, dtype=np.int64)
    for first, counts in handed:
        total[first : first + len(counts)] += counts
    expected = np.bincount(np.concatenate(every) // SendCounter.BIN_NS, minlength=10_000)
    assert total.tolist() == expected.tolist()
    assert summary == {"bin_s": 0.1, "file": "sends.msgpack", "bins": 10_000, "sends": int(expected.sum())}


def test_a_soak_series_keeps_at_most_its_points_and_the_same_slope() -> None:
    from horde.coordinator.analysis.trends import theil_sen

    s = SoakSeries(max_points=256)
    for w in range(10_000):
        s.add({"end_s": w + 1.0, "coordinator": {"rss_bytes": 1e8 + 1000.0 * w + (w % 7) * 50.0}})
    t, v = s.t_s["coordinator_rss"], s.values["coordinator_rss"]
    assert 128 <= len(t) < 256 and len(t) == len(v)
    assert list(t) == sorted(t) and t[0] < 100 and t[-1] > 9_900
    assert theil_sen(list(t), list(v))[0] == pytest.approx(1000.0, rel=1e-3)


def test_a_soak_series_takes_its_room_at_its_first_point_and_never_more() -> None:
    s = SoakSeries(max_points=64, max_agent_points=16)
    window = {"end_s": 1.0, "coordinator": {"rss_bytes": 1e8}, "generator": {"agent-0": {"rss_bytes": 5e7}}}
    s.add(window)
    rooms = {name: (id(a), a.buffer_info()[1]) for name, a in s._t.items()}
    assert rooms["coordinator_rss"][1] == 64 and rooms["agent_rss:agent-0"][1] == 16
    for w in range(2, 5000):
        s.add({**window, "end_s": float(w)})
    # the same buffers, the same length: filled, halved in place, filled again
    assert {name: (id(a), a.buffer_info()[1]) for name, a in s._t.items()} == rooms
    assert 32 <= s.points("coordinator_rss") <= 64 and 8 <= s.points("agent_rss:agent-0") <= 16
    t = s.t_s["coordinator_rss"]
    assert list(t) == sorted(t) and t[-1] > 4900
