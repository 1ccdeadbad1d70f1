"""The quantiles of many sparse histograms in one vectorised pass.

A window's record holds five quantiles of three histograms for every endpoint: at 1,000
endpoints x stages that was 15,000 quantiles a second, one numpy scan of a 4,992-bucket
array per histogram (~60% of the coordinator's per-window work, docs/scale.md). Here the
non-empty buckets of all the histograms (their ``Histogram.to_sparse()`` form, which the
aggregator stores at every window's close anyway) are laid end to end, counted up once,
and every rank of every histogram is found by one ``searchsorted``: each histogram's rank
is offset by the counts of the histograms before it.

Same figures as ``Histogram.quantiles``, value for value (tests/coordinator/measure/
test_quantiles.py): the highest equivalent value of the bucket holding rank
``max(1, ceil(q * count))``, clamped to [min, max]; ``min`` at q = 0, ``max`` at q = 1 or
when the rank falls in the overflow; None for an empty histogram.

Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from horde.agents.histogram import highest_equivalent_value


def sparse_quantiles(hists: Sequence[dict[str, Any]], qs: Sequence[float]) -> list[dict[float, int | None]]:
    """``Histogram.from_sparse(h).quantiles(qs)`` for each of `hists`, without building them."""
    for q in qs:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile {q!r} outside [0, 1]")
    n = len(hists)
    if n == 0:
        return []
    count = np.array([int(h["count"]) for h in hists], dtype=np.int64)
    in_range = count - np.array([int(h["overflow"]) for h in hists], dtype=np.int64)
    lows = [h["min"] for h in hists]
    highs = [h["max"] for h in hists]
    idx_parts = [np.frombuffer(h["idx"], dtype="<u4") for h in hists]
    cnt_parts = [np.frombuffer(h["cnt"], dtype="<i8") for h in hists]
    sizes = np.array([len(p) for p in cnt_parts], dtype=np.int64)
    idx = np.concatenate(idx_parts).astype(np.int64) if sizes.any() else np.zeros(0, dtype=np.int64)
    cumulative = np.cumsum(np.concatenate(cnt_parts)) if sizes.any() else np.zeros(0, dtype=np.int64)
    ends = np.cumsum(sizes)
    before = np.zeros(n, dtype=np.int64)  # the counts of the histograms laid before each
    has_before = ends - sizes > 0
    before[has_before] = cumulative[(ends - sizes)[has_before] - 1]

    columns: list[list[int | None]] = []
    for q in qs:
        # float64 product and ceil: the same as math.ceil(q * count) for each histogram
        rank = np.maximum(1, np.ceil(q * count.astype(np.float64)).astype(np.int64))
        inside = (rank <= in_range) & (q != 0.0) & (q != 1.0) & (count > 0)
        values: list[int | None] = [None] * n
        if inside.any():
            at = np.searchsorted(cumulative, before[inside] + rank[inside], side="left")
            found = highest_equivalent_value(idx[at]).tolist()
            for i, v in zip(np.flatnonzero(inside).tolist(), found):
                values[i] = min(max(v, lows[i]), highs[i])
        for i in range(n):
            if values[i] is None and count[i] > 0:
                values[i] = lows[i] if q == 0.0 else highs[i]
        columns.append(values)
    return [{q: columns[j][i] for j, q in enumerate(qs)} for i in range(n)]
