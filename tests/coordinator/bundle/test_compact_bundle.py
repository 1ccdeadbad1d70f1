"""Bundle format 2 (issue 16, part 6): compact, gzip-streamed windows; sends in sends.msgpack.

- the compact histogram codec restores every histogram exactly;
- a format-1 bundle (fixtures/format1, written by horde at d95268d from the canned run
  below) still reads, and the same canned run written now gives the same figures;
- bytes per window stay bounded as a run gets longer, summary.json does not grow with it;
- readers stream: reading a bundle of 4x the windows takes no more memory;
- a damaged or torn gzip stream reads up to the damage, said clearly.
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import tracemalloc
from datetime import datetime
from pathlib import Path

import msgpack
import numpy as np
import pytest
from click.testing import CliRunner

from horde.agents.samples import SAMPLE_DTYPE, GeneratorReadings, encode_batch
from horde.cluster.events import AgentInfo, BatchReceived, ClusterShape, NodeShape
from horde.coordinator.bundle.codec import pack_histogram, unpack_histogram
from horde.coordinator.bundle.store import BundleWriter, read_bundle
from horde.coordinator.cli import cli
from horde.coordinator.measure.aggregate import Stats
from horde.coordinator.measure.histogram import Histogram
from horde.coordinator.plan import build_plan
from horde.coordinator.run.session import RunOptions, RunSession
from horde.coordinator.run.target import Target
from horde.coordinator.scenario.load import parse_scenario

S = 1_000_000_000
URL = "http://127.0.0.1:9"  # never contacted
FORMAT1 = Path(__file__).parent / "fixtures" / "format1"


# -- the codec -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        [],  # empty
        [0, 1, 2, 3],  # neighbouring buckets
        [5_000_000] * 255,  # a count that fits one byte
        [5_000_000] * 256 + [7],  # ... and one that does not
        [1, 2**43, 2**45],  # far apart, and one overflow (counted, not in a bucket)
        [-5, 10, 10],  # clamped
        list(range(1, 70_000, 7)),  # many buckets, counts over 255
    ],
)
def test_compact_histograms_restore_exactly(values: list[int]) -> None:
    h = Histogram()
    h.record_many(np.asarray(values, dtype=np.int64))
    sparse = h.to_sparse()
    packed = pack_histogram(sparse)
    assert unpack_histogram(msgpack.unpackb(msgpack.packb(packed, use_bin_type=True), raw=False)) == sparse
    assert Histogram.from_sparse(unpack_histogram(packed)) == h


def test_compact_histograms_use_three_bytes_a_bucket_in_a_usual_window() -> None:
    h = Histogram()
    h.record_many(np.random.default_rng(0).lognormal(np.log(3e6), 0.5, 150).astype(np.int64))
    sparse, packed = h.to_sparse(), pack_histogram(h.to_sparse())
    assert len(packed["d"]) + len(packed["c"]) == 3 * len(sparse["idx"]) // 4
    assert len(msgpack.packb(packed)) < len(msgpack.packb(sparse)) / 3


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ({"d": b"\x01", "c": b"", "w": 1}, "malformed"),  # half an index
        ({"d": b"\x01\x00", "c": b"\x01", "w": 3}, "malformed"),  # no such width
        ({"d": b"\xff\xff", "c": b"\x01", "w": 1}, "out of range"),  # past the last bucket
        ({"d": b"\x05\x00\x00\x00", "c": b"\x01\x01", "w": 1}, "out of range"),  # a repeated index
        ([1, 2], "not a map"),
    ],
)
def test_a_bad_compact_histogram_is_named(bad: object, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        unpack_histogram(bad)


# -- the canned run (fixtures/format1 was written from this by horde at d95268d) -----------


class _Fleet:
    agents: list[AgentInfo] = []

    async def start(self, specs):
        self.agents = [AgentInfo(s.index, s.incarnation, 1000, "node-0", "host") for s in specs]
        return list(self.agents)

    def begin(self, start_wall_ns: int, grace_s: float) -> None:
        pass

    async def close(self) -> None:
        pass


def canned_run(out: Path, *, windows: int = 12, rate: int = 10, endpoints: int = 2, seed: int = 1) -> Path:
    """A finished bundle of `windows` canned one-second windows (2 stages, one agent)."""
    reqs = "".join(f"  - {{name: {n}, method: GET, path: /{n}, expect: [200]}}\n" for n in _names(endpoints))
    ramp = max(1, windows // 3)
    hold = windows - ramp
    stages = f"[{{name: ramp, duration: {ramp}s, target: {rate}}}, {{name: hold, duration: {hold}s, target: {rate}}}]"
    text = (
        f"name: format1\ntarget: {URL}\nrequests:\n{reqs}workload:\n  model: open\n  stages: {stages}\n"
        "agents: 1\nflush_interval: 1s\nthresholds: ['error_rate < 50%']\n"
    )
    loaded = parse_scenario(text)
    plan = build_plan(loaded.scenario, URL, 4.0, supports_fast=None)
    shape = ClusterShape("in-process", "", (NodeShape("local", "host", 4.0),))
    opts = RunOptions(
        out_dir=str(out), progress=lambda line: None, install_signal_handlers=False, on_window=lambda i: None
    )
    s = RunSession(loaded, plan, shape, _Fleet(), opts, Target(url=URL, metrics_url=None))

    async def go() -> None:
        await s.start()
        rng = np.random.default_rng(seed)
        for w in range(windows):
            a = np.zeros(rate, SAMPLE_DTYPE)
            a["endpoint"] = np.arange(rate) % endpoints
            a["intended_ns"] = w * S + np.sort(rng.integers(0, 900_000_000, rate))
            a["sent_ns"] = a["intended_ns"] + rng.integers(0, 100_000, rate)
            a["end_ns"] = a["sent_ns"] + rng.lognormal(np.log(3e6), 0.5, rate).astype(np.int64)
            a["status"] = 200
            a["bytes"] = 100
            a["error"][0] = 5 if w % 4 == 0 else 0
            payload = encode_batch(
                agent=0,
                incarnation=0,
                seq=w,
                watermark_ns=(w + 1) * S,
                records=a.tobytes(),
                readings=GeneratorReadings(cpu_s=w * 0.1, rss_bytes=50_000_000, level=float(rate)),
                final=w == windows - 1,
                engine="fast",
            )
            s.now_ns = lambda w=w: s.start_wall_ns + (w + 1) * S
            assert s.on_batch(BatchReceived(index=0, payload=payload))
            s.close_ready_windows()
        s.on_stream_end()
        await s.close()

    asyncio.run(go())
    return s.finish().bundle


def _names(n: int) -> list[str]:
    return ["health", "items"] if n == 2 else [f"e{i}" for i in range(n)]


def _figures(b) -> dict:
    """What a bundle says, in plain values: windows, their histograms, the run's histograms, sends."""
    return {
        "windows": [
            (w.index, w.total.model_dump(), {k: v.model_dump() for k, v in w.endpoints.items()}) for w in b.windows()
        ],
        "window_histograms": list(b.window_histograms()),
        "histograms": b.histograms(),
        "sends": b.sends()["counts"].tolist(),
        "total": b.summary.total.model_dump(),
        "endpoints": {k: v.model_dump() for k, v in b.summary.endpoints.items()},
    }


def test_a_format_1_bundle_still_reads_and_its_commands_work(tmp_path: Path) -> None:
    bundle = shutil.copytree(FORMAT1, tmp_path / "format1")
    b = read_bundle(bundle)
    assert b.manifest.bundle_format == 1
    assert [w.index for w in b.windows()] == list(range(12)) and b.window_count() == 12
    assert sum(Stats.from_sparse(r["endpoints"]["health"]).requests for r in b.window_histograms()) == 60
    assert int(b.sends()["counts"].sum()) == 120  # from summary.json in format 1
    assert b.problems == []
    runner = CliRunner()
    for argv in (["report", str(bundle)], ["export", "--csv", str(bundle)], ["report", "--html", str(bundle)]):
        result = runner.invoke(cli, argv)
        assert result.exit_code == 0, (argv, result.output)


def test_the_same_run_in_format_2_says_exactly_what_format_1_said(tmp_path: Path) -> None:
    new = read_bundle(canned_run(tmp_path))
    old = read_bundle(FORMAT1)
    assert new.manifest.bundle_format == 2
    assert (new.path / "sends.msgpack").exists() and new.summary.sends.counts == []
    assert _figures(new) == _figures(old)
    assert new.problems == [] and old.problems == []


def _sizes(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in path.iterdir() if p.is_file()}


def test_bytes_per_window_are_bounded_and_the_summary_does_not_grow_with_the_run(tmp_path: Path) -> None:
    short = _sizes(canned_run(tmp_path / "short", windows=60, rate=300, endpoints=3))
    long = _sizes(canned_run(tmp_path / "long", windows=240, rate=300, endpoints=3))

    def per_window(sizes: dict[str, int], windows: int) -> float:
        return sum(sizes[f] for f in ("windows.jsonl", "windows.msgpack", "sends.msgpack")) / windows

    # The streams grow by the window, not faster (a shared compression context, no index).
    assert per_window(long, 240) <= 1.1 * per_window(short, 60)
    # Three endpoints at 300 requests a second: under 10 MB per hour of run for the streams.
    assert per_window(long, 240) * 3600 < 10e6, per_window(long, 240)
    # summary.json: the same size four times as long (format 1 grew 10 numbers a second).
    assert long["summary.json"] <= 1.05 * short["summary.json"]
    assert long["summary.json"] < 100_000


def _write_windows(path: Path, n: int) -> Path:
    """A writer's directory with n windows of three endpoints, each window's latencies drawn anew."""
    rng = np.random.default_rng(0)
    w = BundleWriter(path, "stream", datetime(2026, 1, 1))
    for i in range(n):
        stats = Stats(1.0)
        stats.latency.record_many(rng.lognormal(np.log(3e6), 0.5, 300).astype(np.int64))
        stats.requests = 300
        record = {"index": i, "endpoints": {f"e{e}": stats.to_sparse() for e in range(3)}}
        w.append_window({"index": i, "start_s": float(i), "end_s": i + 1.0, "total": stats.to_dict()}, record)
    w._windows.close()
    w._window_hists.close()
    return w.path


def _peak_reading(path: Path) -> int:
    b = read_bundle(path) if (path / "manifest.json").exists() else None
    assert b is None  # a writer's directory without a manifest: read through Bundle directly
    from horde.coordinator.bundle.schema import Manifest
    from horde.coordinator.bundle.store import Bundle

    bundle = Bundle(path=path, manifest=Manifest(), summary=None)
    gc.collect()
    tracemalloc.start()
    try:
        n = sum(1 for _ in bundle.windows()) + sum(1 for _ in bundle.window_histograms())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert bundle.problems == []
    return n, peak


def test_readers_stream_the_windows_in_bounded_memory(tmp_path: Path) -> None:
    n_small, small = _peak_reading(_write_windows(tmp_path / "small", 500))
    n_large, large = _peak_reading(_write_windows(tmp_path / "large", 2000))
    assert (n_small, n_large) == (1000, 4000)
    assert large < 1.3 * small, (small, large)  # loading them all would take 4x


def test_a_torn_gzip_stream_reads_to_its_last_whole_window(tmp_path: Path) -> None:
    path = _write_windows(tmp_path / "b", 200)
    for name in ("windows.jsonl", "windows.msgpack"):  # a coordinator killed mid-write
        data = (path / name).read_bytes()
        (path / name).write_bytes(data[: len(data) * 2 // 3])
    from horde.coordinator.bundle.schema import Manifest
    from horde.coordinator.bundle.store import Bundle

    b = Bundle(path=path, manifest=Manifest(), summary=None)
    windows, records = list(b.windows()), list(b.window_histograms())
    assert 100 <= len(windows) < 200 and 100 <= len(records) < 200
    assert [w.index for w in windows] == list(range(len(windows)))
    assert b.problems == []  # torn, not damaged: quiet


def test_damage_inside_a_gzip_stream_is_named_and_what_came_before_is_read(tmp_path: Path) -> None:
    path = _write_windows(tmp_path / "b", 400)
    for name in ("windows.jsonl", "windows.msgpack"):
        data = bytearray((path / name).read_bytes())
        middle = len(data) // 2
        data[middle : middle + 64] = b"\xff" * 64
        (path / name).write_bytes(bytes(data))
    from horde.coordinator.bundle.schema import Manifest
    from horde.coordinator.bundle.store import Bundle

    b = Bundle(path=path, manifest=Manifest(), summary=None)
    windows, records = list(b.windows()), list(b.window_histograms())
    assert 100 < len(windows) < 300 and 100 < len(records) < 300
    assert any(p.startswith("windows.jsonl: ") and "the rest is ignored" in p for p in b.problems), b.problems
    assert any(p.startswith("windows.msgpack: ") for p in b.problems), b.problems


def test_a_bad_sends_record_is_skipped_and_named(tmp_path: Path) -> None:
    bundle = canned_run(tmp_path)
    good = read_bundle(bundle).sends()["counts"]
    with open(bundle / "sends.msgpack", "ab") as f:
        f.write(msgpack.packb({"bin": -3, "w": 4, "c": b"\x01\x00\x00\x00"}))
        f.write(msgpack.packb({"bin": 10**12, "w": 4, "c": b"\x01\x00\x00\x00"}))
        f.write(msgpack.packb("not a record"))
        f.write(msgpack.packb({"bin": 0, "w": 4, "c": b"\x02\x00\x00\x00"}))  # records add up
    b = read_bundle(bundle)
    counts = b.sends()["counts"]
    assert counts[0] == good[0] + 2 and counts[1:].tolist() == good[1:].tolist()
    assert [p.split(":")[1].strip() for p in b.problems] == ["record 2", "record 3", "record 4"][: len(b.problems)]
    assert len(b.problems) == 3
