"""Where a run's closed window goes: the bundle, the soak and spike series, the alert rules, the live view.

`RunSession.on_window` hands each closed window to `WindowRecorder.record`, then shows the
figures it returns and evaluates the abort rules over them. The recorder keeps what the end
of the run reads back: the resolved alerts, the soak series and the spike windows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psutil

from horde.agents.stages import Profile
from horde.coordinator.analysis.soak import SoakSeries
from horde.coordinator.analysis.soak import analyse as analyse_soak
from horde.coordinator.analysis.spike import find_spikes, spikes_for_run
from horde.coordinator.bundle.store import BundleWriter
from horde.coordinator.judge.alerts import AlertEngine, metrics_from_stats
from horde.coordinator.measure.aggregate import Aggregator
from horde.coordinator.measure.resources import NodeSeries, ResourceSeries
from horde.coordinator.plan import Plan
from horde.coordinator.run.summary import window_info

ALERT_WINDOWS = 10  # alert rules look at the last 10 s
SOAK_MIN_WINDOWS = 30  # leak and trend verdicts need at least this many windows
# Sliding spans up to this many windows are kept as running sums; a longer one is re-merged when
# read (its per-window minimum and maximum slots would cost span x endpoints x 48 bytes).
MAX_SLIDING_SUM = 300


def span_windows(window_s: float) -> int:
    """How many windows a sliding span of `window_s` covers (what the session asks recent() for)."""
    return max(1, round(window_s))


def sliding_spans(thresholds: Any) -> list[int]:
    """The spans recent() is asked for on every window: the alert rules' and the sliding thresholds'."""
    spans = (span_windows(t.window) for t in thresholds if t.window)
    return [ALERT_WINDOWS, *(n for n in spans if n <= MAX_SLIDING_SUM)]


class WindowRecorder:
    """Records each closed window and watches the alert rules over the last ALERT_WINDOWS."""

    def __init__(
        self,
        plan: Plan,
        agg: Aggregator,
        resources: ResourceSeries,
        node_series: NodeSeries,
        writer: BundleWriter,
        alert_engine: AlertEngine,
        progress: Callable[[str], None],
    ) -> None:
        self.plan, self.agg, self.resources, self.node_series = plan, agg, resources, node_series
        self.writer, self.alert_engine, self.progress = writer, alert_engine, progress
        self.profile = Profile(plan.agents[0].start_level, plan.agents[0].stages)
        self.soak_series = SoakSeries()
        # Kept only when the plan has spikes: the spike analysis reads every window at the end,
        # so each keeps what it reads (its bounds and totals, its merged histograms sparse).
        self.spike_windows: list[dict] | None = [] if find_spikes(self.profile) else None
        self.spike_totals: dict[int, dict] = {}
        self.cumulative = {"requests": 0, "errors": 0}
        self.agent_cpu: dict[str, tuple[float, int]] = {}  # agent label -> (cpu_s, window) last seen
        self.alerts_log: list[dict] = []  # resolved alerts, for the summary
        self._me = psutil.Process()

    def record(self, w: Any, lost: int) -> dict:
        """Write one closed window, feed the series and alert rules; its live-view figures."""
        wd = w.to_dict()
        wd["target"] = self.resources.window(w.index)
        wd["coordinator"] = {"rss_bytes": float(self._me.memory_info().rss)}
        self.soak_series.add(wd)
        if self.spike_windows is not None:
            self.spike_windows.append({k: wd[k] for k in ("index", "start_s", "end_s", "total")})
            self.spike_totals[w.index] = w.total.to_sparse()
        self._observe_alerts(w, wd)
        wd["nodes"] = self.node_series.window(w.index)
        sparse = w.sparse if w.sparse is not None else {k: v.to_sparse() for k, v in w.by_endpoint.items()}
        self.writer.append_window(wd, {"index": w.index, "endpoints": sparse})
        return window_info(w, self.plan, self.profile, self.cumulative, self.agent_cpu, self.alert_engine, lost)

    def _observe_alerts(self, w: Any, wd: dict) -> None:
        # The same warning / critical rules as `horde monitor`, over the last 10 windows; only
        # the scopes and metrics some rule reads are computed (observe() ignores the others).
        engine = self.alert_engine
        m: dict = {}
        if engine.reads(None):
            m.update(metrics_from_stats(self.agg.recent(ALERT_WINDOWS), only=engine.reads(None)))
        for e in self.plan.endpoints:
            if engine.reads(e):
                m.update(metrics_from_stats(self.agg.recent(ALERT_WINDOWS, endpoint=e), e, only=engine.reads(e)))
        m.update(wd["target"])
        for ev in self.alert_engine.observe(float(w.index + 1), m):
            self._record_alert_event(ev)

    def _record_alert_event(self, ev: Any) -> None:
        entry = {**ev.alert, "kind": "alert", "event": ev.kind, "event_t_s": ev.t_s}
        self.writer.append_alert(entry)
        if ev.kind in ("fired", "escalated"):
            self.progress(f"ALERT {ev.kind} {ev.alert.get('level')}: {ev.alert.get('text', ev.alert.get('rule'))}")
        if ev.kind == "resolved":
            self.alerts_log.append(ev.alert)

    def finish_alerts(self, t_s: float) -> None:
        """The run is over: alerts still firing end here."""
        for ev in self.alert_engine.finish(t_s):
            self._record_alert_event(ev)

    def soak(self, compression: float) -> dict:
        """{"soak": the leak and trend verdicts} once the run is long enough for them, else {}."""
        if self.soak_series.points("rps") >= SOAK_MIN_WINDOWS:
            return {"soak": analyse_soak(self.soak_series, time_scale=compression)}
        return {}

    def add_spikes(self, summary: dict) -> None:
        """summary["spikes"] when the plan has spikes; a failed analysis costs a warning, not the bundle."""
        if self.spike_windows is None:
            return
        try:
            summary["spikes"] = spikes_for_run(
                self.profile,
                self.spike_windows,
                self.writer.sends(),
                model=self.plan.agents[0].model,
                histograms=self.spike_totals,
            )
        except Exception as exc:  # an analysis, never a reason to lose the bundle
            self.progress(f"warning: spike analysis failed: {type(exc).__name__}: {exc}")
