"""The coordinator's fast paths for wide runs give the plain paths' figures exactly.

- ``sparse_quantiles`` (a window's quantiles in one pass) against ``Histogram.quantiles``;
- ``scatter`` (a fancy update per ascending run) against ``ufunc.at``;
- window blocks reused through ``BlockPool`` against fresh blocks, and never while a
  closed window handed out still reads one;
- ``Window.to_dict`` from the stored sparse form against the per-endpoint Stats.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

from horde.agents.aggregate import aggregate_records
from horde.agents.histogram import COUNTS_LEN, highest_equivalent_int, highest_equivalent_value
from horde.agents.samples import SAMPLE_DTYPE, Batch, ErrorClass, GeneratorReadings
from horde.coordinator.measure.aggregate import WINDOWS_PER_BLOCK, Aggregator
from horde.coordinator.measure.blocks import BlockPool, scatter
from horde.coordinator.measure.histogram import HIGHEST_TRACKABLE_NS, Histogram
from horde.coordinator.measure.quantiles import sparse_quantiles

MS, S = 1_000_000, 1_000_000_000
QS = (0.0, 0.001, 0.5, 0.9, 0.99, 0.999, 1.0)
ENDPOINTS = tuple(f"e{i}" for i in range(12))
STAGE_ENDS = (5 * S, 400 * S)
STAGES = ("ramp", "steady")


def _histogram(rng: np.random.Generator, kind: int) -> Histogram:
    h = Histogram()
    if kind == 0:  # empty
        return h
    if kind == 1:  # one value
        h.record_many(np.array([int(rng.integers(0, 10**9))]))
        return h
    n = int(rng.integers(2, 3000))
    values = rng.lognormal(np.log(5 * MS), 1.5, n).astype(np.int64)
    if kind == 3:  # some above the trackable range: the overflow
        values[: max(1, n // 20)] = HIGHEST_TRACKABLE_NS + rng.integers(1, 10**9, max(1, n // 20))
    if kind == 4:  # all in the overflow
        values[:] = HIGHEST_TRACKABLE_NS + rng.integers(1, 10**9, n)
    if kind == 5:  # negative values are clamped to 0
        values[: n // 3] = -values[: n // 3]
    h.record_many(values)
    return h


@pytest.mark.parametrize("seed", range(5))
def test_sparse_quantiles_equal_each_histograms_own(seed: int) -> None:
    rng = np.random.default_rng(seed)
    hists = [_histogram(rng, int(rng.integers(0, 6))) for _ in range(60)]
    hists += [_histogram(rng, k) for k in range(6)]  # every kind at least once
    got = sparse_quantiles([h.to_sparse() for h in hists], QS)
    for h, found in zip(hists, got):
        assert found == h.quantiles(QS), h
    assert any(v is None for v in got[-6].values())  # the empty one reads None
    assert sparse_quantiles([], QS) == []
    with pytest.raises(ValueError, match="outside"):
        sparse_quantiles([hists[1].to_sparse()], (1.5,))


def test_the_scalar_highest_equivalent_value_matches_the_vectorised_one() -> None:
    every = np.arange(COUNTS_LEN)
    assert [highest_equivalent_int(i) for i in every.tolist()] == highest_equivalent_value(every).tolist()


@pytest.mark.parametrize("op", [np.add, np.minimum, np.maximum], ids=lambda o: o.__name__)
@pytest.mark.parametrize("runs", [1, 2, 5, 40])
def test_scatter_equals_ufunc_at(op: np.ufunc, runs: int) -> None:
    rng = np.random.default_rng(runs)
    # `runs` ascending runs (a batch's windows or stages), repeats across runs
    ix = np.concatenate([np.sort(rng.choice(500, int(rng.integers(1, 80)), replace=False)) for _ in range(runs)])
    for shape in [(500,), (500, 3)]:
        values = rng.integers(-1000, 1000, (len(ix), *shape[1:]))
        want = rng.integers(-5, 5, shape)
        got = want.copy()
        op.at(want, ix, values)
        scatter(op, got, ix, values)
        assert np.array_equal(got, want)
    scatter(np.add, got, ix[:0], values[:0])  # nothing to add
    assert np.array_equal(got, want)


def _batch(rng: np.random.Generator, agent: int, seq: int, late: bool) -> Batch:
    n = int(rng.integers(50, 400))
    rows = np.zeros(n, SAMPLE_DTYPE)
    lo = max(0, (seq - 1) * S)
    intended = rng.integers(lo, (seq + 1) * S, n)
    rows["endpoint"] = rng.integers(0, len(ENDPOINTS), n)
    rows["intended_ns"] = intended
    rows["sent_ns"] = intended + rng.integers(0, 3 * MS, n)
    rows["end_ns"] = np.minimum(
        rows["sent_ns"] + rng.lognormal(np.log(20 * MS), 1.0, n).astype(np.int64), (seq + 1) * S - 1
    )
    if late and seq > 3:  # a few ended in a window closed already
        rows["end_ns"][:5] = (seq - 2) * S + rng.integers(0, S // 2, 5)
        rows["intended_ns"][:5] = rows["sent_ns"][:5] = rows["end_ns"][:5] - MS
    rows["status"] = 200
    rows["error"] = np.where(rng.random(n) < 0.05, rng.integers(1, len(ErrorClass), n), 0)
    rows["bytes"] = rng.integers(0, 5000, n)
    agg = aggregate_records(rows, np.asarray(STAGE_ENDS))
    return Batch(
        agent=agent,
        incarnation=0,
        seq=seq,
        watermark_ns=(seq + 1) * S,
        samples=rows[:0],
        readings=GeneratorReadings(),
        agg=agg,
    )


def _run(pool: BlockPool, seed: int, windows: int = 7 * WINDOWS_PER_BLOCK) -> tuple[list[dict], list[dict], Aggregator]:
    """A run of three agents; each closed window's record and stored sparse form, taken as the session does."""
    rng = np.random.default_rng(seed)
    agg = Aggregator(ENDPOINTS, STAGE_ENDS, STAGES, window_ns=S, keep_windows=20, sliding=[10])
    agg._pool = pool
    records, sparse = [], []
    for t in range(windows):
        for agent in range(3):
            agg.add(_batch(rng, agent, t, late=agent == 2))
        for w in agg.close_each(t * S):
            records.append(w.to_dict())
            sparse.append(w.sparse)
    for w in agg.close_each():
        records.append(w.to_dict())
        sparse.append(w.sparse)
    return records, sparse, agg


@pytest.mark.parametrize("seed", [1, 2])
def test_reused_window_blocks_give_the_fresh_blocks_figures(seed: int) -> None:
    fresh = BlockPool(keep=0)  # keeps nothing: every block fresh, as before
    reusing = BlockPool()
    want = _run(fresh, seed)
    got = _run(reusing, seed)
    assert fresh.reused == 0
    assert reusing.reused >= 4  # the blocks after the first two came back
    assert got[0] == want[0]
    assert got[1] == want[1]
    for n in (1, 10):  # the running sums and cumulative figures read the same
        for e in (None, *ENDPOINTS):
            assert got[2].recent(n, endpoint=e) == want[2].recent(n, endpoint=e)
    assert got[2].snapshot() == want[2].snapshot()


def test_a_block_is_not_reused_while_a_closed_window_still_reads_it() -> None:
    rng = np.random.default_rng(7)
    agg = Aggregator(ENDPOINTS, STAGE_ENDS, STAGES, window_ns=S, keep_windows=20)
    held = []  # the caller keeps every window, and one histogram on its own
    for t in range(4 * WINDOWS_PER_BLOCK):
        for agent in range(2):
            agg.add(_batch(rng, agent, t, late=False))
        held.extend((w, w.to_dict()) for w in agg.close_each(t * S))
    kept_histogram = held[1][0].by_endpoint["e3"].latency
    kept_quantiles = kept_histogram.quantiles(QS)
    assert agg._pool.reused == 0
    for w, record in held:
        assert w.to_dict() == record  # unchanged by the batches after it
    # Let go of the windows but keep the one histogram: the block it reads stays out of use.
    del held, w
    gc.collect()
    for t in range(4 * WINDOWS_PER_BLOCK, 7 * WINDOWS_PER_BLOCK):
        for agent in range(2):
            agg.add(_batch(rng, agent, t, late=False))
        for _ in agg.close_each(t * S):
            pass
    assert agg._pool.reused >= 1  # the others came back
    assert kept_histogram.quantiles(QS) == kept_quantiles


def test_a_windows_record_from_its_sparse_form_equals_its_stats_record() -> None:
    _, _, agg = _run(BlockPool(), 3, windows=6)
    window = agg.closed_window(4)
    assert window is not None and len(window.by_endpoint) > 1
    plain = window.to_dict()  # closed_window() rebuilds without the sparse form
    window.sparse = {e: s.to_sparse() for e, s in window.by_endpoint.items()}
    assert window.to_dict() == plain
