"""horde.agents.histogram / horde.agents.aggregate: what an agent sends instead of every sample.

The grouped histograms are checked against the coordinator's own histograms of the same
values (bucket for bucket); a real agent's recorded stream is replayed raw and aggregated
into two aggregators that must agree on every window, stage and the generator queueing; a
real agent sends aggregated batches by default.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from horde.agents.aggregate import aggregate_records, stage_ends_ns
from horde.agents.histogram import CHUNK, HIGHEST_TRACKABLE_NS, group_histograms
from horde.agents.runner import AgentRunner
from horde.agents.samples import GENERATOR_QUEUED, SAMPLE_DTYPE, Batch, decode_batch, encode_batch
from horde.agents.spec import AgentSpec, RequestTemplate, Stage
from horde.coordinator.measure.aggregate import Aggregator
from horde.coordinator.measure.histogram import Histogram, histograms_by_group
from tests.agents.test_traffic import _server

S = 1_000_000_000
MS = 1_000_000


def _grouped_as_histograms(values: np.ndarray, groups: np.ndarray, n: int) -> list[Histogram]:
    gh = group_histograms(values, groups, n)
    return [Histogram().add_group(gh, g) for g in range(n)]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 4),
            st.one_of(
                st.integers(-(10**6), 10**10),
                st.sampled_from([0, 255, 256, HIGHEST_TRACKABLE_NS, HIGHEST_TRACKABLE_NS + 1, 2**50]),
            ),
        ),
        max_size=300,
    )
)
def test_grouped_histograms_are_the_coordinators_histograms(rows) -> None:
    groups = np.asarray([g for g, _ in rows], dtype=np.int64)
    values = np.asarray([v for _, v in rows], dtype=np.int64)
    assert _grouped_as_histograms(values, groups, 5) == histograms_by_group(values, groups, 5)


def test_many_sparse_groups_take_the_sorting_path() -> None:
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 2000, 500)
    values = rng.integers(0, 10**9, 500)
    assert _grouped_as_histograms(values, groups, 2000) == histograms_by_group(values, groups, 2000)


@pytest.mark.parametrize("n_groups", [3, 300])  # the dense and the sorting path
def test_values_over_several_chunks_are_the_coordinators_histograms(n_groups) -> None:
    rng = np.random.default_rng(4)
    n = 3 * CHUNK + 17
    groups = rng.integers(0, n_groups, n)
    values = rng.lognormal(np.log(5e6), 1.5, n).astype(np.int64) - 1000
    values[::997] = HIGHEST_TRACKABLE_NS + 3
    values[5::1001] = -5
    got = _grouped_as_histograms(values, groups, n_groups)
    assert got == histograms_by_group(values, groups, n_groups)
    assert sum(h.clamped for h in got) > 0 and sum(h.overflow for h in got) > 0


def test_a_sum_beyond_64_bits_is_refused_not_wrapped() -> None:
    values = np.full(5, 2**62, dtype=np.int64)
    with pytest.raises(OverflowError):
        group_histograms(values, np.zeros(5, dtype=np.int64), 1)


def test_stage_ends_are_the_plans() -> None:
    stages = (Stage(0.1, 5.0), Stage(1 / 3, 10.0), Stage(0.0, 10.0), Stage(2.5, 0.0))
    assert stage_ends_ns(stages).tolist() == [100_000_000, 433_333_333, 433_333_333, 2_933_333_333]


def _stream(n: int = 4000, seed: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = np.zeros(n, dtype=SAMPLE_DTYPE)
    s["endpoint"] = rng.integers(0, 2, n)
    s["intended_ns"] = np.sort(rng.integers(0, 3 * S, n))
    s["sent_ns"] = s["intended_ns"] + rng.integers(-1000, 30 * MS, n)
    s["end_ns"] = s["sent_ns"] + rng.integers(1, 900 * MS, n)
    s["end_ns"][:3] = s["sent_ns"][:3] + HIGHEST_TRACKABLE_NS + 5  # overflow
    s["error"] = np.where(rng.random(n) < 0.1, GENERATOR_QUEUED, 0) | rng.choice([0, 0, 0, 2, 5], n)
    return s[np.argsort(s["end_ns"], kind="stable")]


def _replay(batches: list[Batch], aggregated: bool | str, ends: np.ndarray) -> Aggregator:
    """`aggregated`: False (raw), True, or "mixed" (every other batch raw, as when a batch
    falls back to raw or one agent runs with HORDE_SAMPLES=raw)."""
    agg = Aggregator(["a", "b"], ends.tolist(), ["one", "two", "three"][: len(ends)])
    for i, b in enumerate(batches):
        if aggregated is True or (aggregated == "mixed" and i % 2):
            b = Batch(
                b.agent, b.incarnation, b.seq, b.watermark_ns, b.samples[:0], agg=aggregate_records(b.samples, ends)
            )
        agg.add(b)
        agg.close_until(b.watermark_ns)
    agg.close_all()
    return agg


def _compare(raw: Aggregator, agg: Aggregator) -> None:
    assert agg.closed_windows == raw.closed_windows
    for i in range(raw.closed_windows):
        rw, aw = raw.closed_window(i), agg.closed_window(i)
        assert (rw is None) == (aw is None)
        if rw is not None and aw is not None:
            assert aw.by_endpoint == rw.by_endpoint and aw.total == rw.total
    for endpoint in (None, "a", "b"):
        for stage in (None, *raw.stage_names):
            assert agg.snapshot(endpoint, stage) == raw.snapshot(endpoint, stage)
            assert agg.generator_queueing(endpoint, stage) == raw.generator_queueing(endpoint, stage)
    assert agg.late_samples == raw.late_samples


def test_a_stream_with_overflow_queueing_and_late_samples_aggregates_the_same() -> None:
    s = _stream()
    ends = np.asarray([1 * S, 2 * S, 3 * S])
    cuts = [0, 900, 1500, 1500, 3000, len(s)]  # an empty flush among them
    batches = [
        Batch(0, 0, k, int(s["end_ns"][b - 1]) if b else 0, s[a:b].copy())
        for k, (a, b) in enumerate(itertools.pairwise(cuts))
    ]
    # A batch for windows already closed: its samples count late, in the cumulative figures too.
    early = s[:50].copy()
    batches.append(Batch(1, 0, 0, int(s["end_ns"][-1]), early))
    raw, agg = _replay(batches, False, ends), _replay(batches, True, ends)
    _compare(raw, agg)
    _compare(raw, _replay(batches, "mixed", ends))
    assert raw.late_samples == 50
    assert raw.snapshot().latency.overflow == 3 + int(
        (early["end_ns"] - early["intended_ns"] > HIGHEST_TRACKABLE_NS).sum()
    )
    queued, unqueued = raw.generator_queueing()
    assert queued == int(((s["error"] & GENERATOR_QUEUED) != 0).sum()) + int(
        ((early["error"] & GENERATOR_QUEUED) != 0).sum()
    )
    assert unqueued.count == raw.snapshot().latency.count and unqueued != raw.snapshot().latency


def _spec(url: str) -> AgentSpec:
    return AgentSpec(
        index=0,
        count=1,
        incarnation=0,
        model="open",
        arrivals="constant",
        start_level=0.0,
        stages=(Stage(0.5, 200.0, "up"), Stage(0.5, 200.0, "hold")),
        requests=(
            RequestTemplate("ok", "GET", url + "/ok", expect=frozenset({200}), engine="fast"),
            RequestTemplate("missing", "GET", url + "/missing", expect=frozenset({200}), engine="fast"),
        ),
        weights=(3.0, 1.0),
        flush_interval_s=0.25,
        graceful_stop_s=2.0,
        max_in_flight=4,
        max_connections=4,
    )


async def _collect(spec: AgentSpec) -> list[bytes]:
    runner = AgentRunner(spec)
    return [p async for p in runner.stream(time.time_ns() + 200_000_000)]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", ["raw", "aggregated"])
def test_a_real_agents_stream_replayed_both_ways_gives_the_same_figures(mode, monkeypatch) -> None:
    """A real agent's recorded raw stream, and the default: the agent aggregates itself."""
    monkeypatch.setenv("HORDE_SAMPLES", mode)

    async def main():
        srv, url, served = await _server(handler_delay_s=0.002)
        try:
            return await _collect(_spec(url)), served
        finally:
            await srv.cleanup()

    payloads, served = asyncio.run(main())
    batches = [decode_batch(p) for p in payloads]
    requests = sum(b.requests for b in batches)
    assert requests == 150  # the area under the profile: 50 on the ramp, 100 on the hold
    assert sum(int(b.send_bins()[1].sum()) for b in batches) == requests
    ends = stage_ends_ns(_spec("http://x").stages)
    if mode == "aggregated":
        assert all(b.agg is not None and len(b.samples) == 0 for b in batches)
        agg = Aggregator(["ok", "missing"], ends.tolist(), ["up", "hold"])
        for b in batches:
            agg.add(b)
        assert agg.snapshot().requests == 150
        assert agg.snapshot(endpoint="missing").errors == agg.snapshot(endpoint="missing").requests > 0
        return
    assert all(b.agg is None for b in batches)
    raw, agg = _replay(batches, False, ends), _replay(batches, True, ends)
    _compare(raw, agg)
    # The wire form too: each batch encoded aggregated and decoded again.
    for b in batches:
        payload = encode_batch(
            agent=0,
            incarnation=0,
            seq=b.seq,
            watermark_ns=b.watermark_ns,
            readings=b.readings,
            agg=aggregate_records(b.samples, ends),
        )
        again = decode_batch(payload)
        assert again.requests == len(b.samples)
