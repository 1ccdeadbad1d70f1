"""`horde monitor`'s trend verdicts over the recorded history of its source, recomputed in
the background at most every TREND_EVERY_S (coordinator/analysis/trends.py does the statistics)."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import logging
import math
from typing import Any

log = logging.getLogger("horde.monitor")

TREND_EVERY_S = 30.0  # trend statistics are recomputed at most this often (and at the end)
TREND_LOOKBACK_S = 24 * 3600.0  # over this much recorded history of the source
# Metrics whose trend over the recorded history goes into the snapshot, with their unit.
TREND_METRICS = (
    ("target_memory", "bytes"),
    ("target_cpu", "cpu"),
    ("target_connections", "connections"),
    ("target_fds", "fds"),
    ("latency_p95_s", "s"),
    ("error_rate", "fraction"),
)


class TrendWatch:
    """The latest trend verdicts of one source (``latest``; None until the first is in)."""

    def __init__(self, history: Any, source: str, interval_s: float) -> None:
        self.history = history
        self.source = source
        self.interval_s = interval_s
        self.latest: dict[str, Any] | None = None
        self.at_s = math.inf  # set by begin(): the first trend comes TREND_EVERY_S in
        self.task: asyncio.Task[None] | None = None
        self.available = importlib.util.find_spec("horde.coordinator.analysis.trends") is not None

    def begin(self, t_s: float) -> None:
        self.at_s = t_s

    def maybe_start(self, t_s: float) -> None:
        """Recompute the verdicts in a worker thread, at most every TREND_EVERY_S.

        In the background because the first use imports scipy.stats (seconds) and Theil-Sen
        is quadratic in the points: the intervals must keep their schedule meanwhile.
        """
        if not self.available or t_s - self.at_s < max(TREND_EVERY_S, self.interval_s):
            return
        if self.task is not None and not self.task.done():
            return
        self.at_s = t_s
        self.task = asyncio.create_task(self._compute(t_s))

    async def _compute(self, t_s: float) -> None:
        series = {name: self.history.metrics(self.source, name, t_s - TREND_LOOKBACK_S) for name, _ in TREND_METRICS}
        result = await asyncio.to_thread(trend_verdicts, series)
        if result is not None:
            self.latest = result

    async def final(self, t_s: float) -> None:
        """The verdicts at the end, after any computation under way."""
        if not self.available:
            return
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
        try:
            await self._compute(t_s)
        except Exception as exc:  # the history read failed: the snapshot goes without trends
            log.warning("trends not computed: %s", exc)


def trend_verdicts(series: dict[str, list[tuple[float, float]]]) -> dict[str, Any] | None:
    """Trend verdicts per metric (and the leak verdict of target memory), when
    horde.coordinator.analysis.trends exists."""
    try:
        from horde.coordinator.analysis import trends as trends_module
    except ImportError:
        return None
    out: dict[str, Any] = {}
    for name, unit in TREND_METRICS:
        points = series.get(name) or []
        if not points:
            continue
        ts = [p[0] for p in points]
        ys = [p[1] for p in points]
        try:
            out[name] = _as_dict(trends_module.trend(ts, ys, unit=unit, per="hour"))
            if name == "target_memory" and hasattr(trends_module, "leak_verdict"):
                out["target_memory_leak"] = _as_dict(trends_module.leak_verdict(ts, ys))
        except Exception as exc:  # a statistics failure must not stop the monitor
            log.warning("trend of %s failed: %s", name, exc)
    return out


def _as_dict(x: Any) -> Any:
    if hasattr(x, "to_dict"):
        return x.to_dict()
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.asdict(x)
    return x
