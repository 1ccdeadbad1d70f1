"""What a run writes about itself: the summary, one window's live-view figures, sends per bin,
the histogram records and the alerts.jsonl records of losses and aborts.

Pure: no clock, no I/O. `RunSession` (run/session.py) feeds these from the aggregator and
the fleet's batches; what they return goes into the bundle and the live view unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from horde.agents.stages import Profile
from horde.cluster.events import AgentLost
from horde.coordinator.bundle.outcome import Outcome
from horde.coordinator.judge.thresholds import Abort
from horde.coordinator.measure.aggregate import Aggregator
from horde.coordinator.measure.health import generator_queueing, generator_verdict
from horde.coordinator.measure.resources import ResourceSeries
from horde.coordinator.plan import Plan
from horde.coordinator.run.client_info import client_summary

if TYPE_CHECKING:
    from horde.coordinator.run.session import RunSession


class SendCounter:
    """Actual sends per 100 ms (all endpoints): how fast the generator reached a planned level.

    Memory holds only the last RETAIN_BINS bins: older ones go to `sink(first_bin, counts)`
    (the bundle's sends.msgpack) once the newest send is RETAIN_BINS past them, and a
    straggler for a bin already handed off goes there as a one-bin record (records add up).
    A 72-hour run keeps ~20 s of bins, not 2.6 million. Without a sink every bin is kept
    (tests, tools that want the whole series in memory)."""

    BIN_NS = 100_000_000
    RETAIN_BINS = 1200  # 2 minutes: a response may complete (and be reported) this long after its send

    def __init__(self, sink: Callable[[int, np.ndarray], None] | None = None) -> None:
        self._sink = sink
        self._base = 0  # bin index of self._counts[0]; every bin below it went to the sink
        self._counts = np.zeros(0, dtype=np.int64)
        self._held = 0  # bins in use at the front of self._counts
        self.total = 0

    def add(self, sent_ns: np.ndarray) -> None:
        """Raw samples' send times (ns of run time; a send before the start counts in bin 0)."""
        if len(sent_ns) == 0:
            return
        bins = np.maximum(sent_ns, 0) // self.BIN_NS
        first = int(bins.min())
        self.add_counts(first, np.bincount(bins - first))

    def add_counts(self, first_bin: int, counts: np.ndarray) -> None:
        """Sends already counted per bin: counts[i] in bin first_bin + i (an agent's
        aggregated batch, or add() above)."""
        counts = np.asarray(counts, dtype=np.int64)
        if len(counts) == 0:
            return
        self.total += int(counts.sum())
        first_bin = max(int(first_bin), 0)
        late = max(0, min(self._base - first_bin, len(counts)))  # bins already handed off (a sink's; base is 0 without)
        if late and self._sink is not None:
            for k in np.flatnonzero(counts[:late]):  # a straggler: a one-bin record (records add up)
                self._sink(first_bin + int(k), counts[k : k + 1].copy())
        counts, first_bin = counts[late:], first_bin + late
        if len(counts) == 0:
            return
        start = first_bin - self._base
        end = start + len(counts)
        if end > len(self._counts):
            grown = np.zeros(max(end, 2 * len(self._counts)), np.int64)
            grown[: len(self._counts)] = self._counts
            self._counts = grown
        self._counts[start:end] += counts
        self._held = max(self._held, end)
        if self._sink is not None and self._held > 2 * self.RETAIN_BINS:
            self._hand_off(self._held - self.RETAIN_BINS)

    def _hand_off(self, n_bins: int) -> None:
        assert self._sink is not None
        self._sink(self._base, self._counts[:n_bins].copy())
        kept = self._counts[n_bins : self._held]
        self._counts = np.zeros(max(len(kept), 1) * 2, np.int64)
        self._counts[: len(kept)] = kept
        self._base += n_bins
        self._held -= n_bins

    def finish(self) -> None:
        """Hand every bin still held to the sink (the end of the run)."""
        if self._sink is not None and self._held:
            self._hand_off(self._held)

    def counts(self) -> list[int]:
        """The bins still held (all of them without a sink)."""
        return self._counts[: self._held].tolist()

    def summary(self) -> dict:
        """summary.json's `sends`: the series itself without a sink, else where it went."""
        if self._sink is None:
            return {"bin_s": self.BIN_NS / 1e9, "counts": self.counts()}
        self.finish()
        return {"bin_s": self.BIN_NS / 1e9, "file": "sends.msgpack", "bins": self._base, "sends": self.total}


class ScopeView:
    """Stats of a scope plus the target-resource readings of the same windows (for thresholds)."""

    def __init__(self, stats, resources: ResourceSeries, first: int | None, last: int | None) -> None:
        self._stats = stats
        self._resources = resources
        self._first, self._last = first, last

    def resource_values(self, series: str):
        return self._resources.values(series, self._first, self._last)

    def __getattr__(self, name: str):
        return getattr(self._stats, name)


def agent_label(index: int, incarnation: int) -> str:
    return str(index) if incarnation == 0 else f"{index}#{incarnation}"


def threshold_dict(r) -> dict:
    rule, verdict = r.rule, r.verdict
    return {
        "expr": rule.threshold.text,
        "endpoint": rule.endpoint,
        "stage": rule.stage,
        "abort": rule.abort,
        "ok": verdict.ok,
        "observed": verdict.observed,
        "observed_text": verdict.observed_text,
    }


def build_summary(
    stats_for,
    agg: Aggregator,
    plan: Plan,
    totals,
    lost,
    thresholds,
    outcome: Outcome,
    stop_reason: str,
    resources: ResourceSeries,
    sends: SendCounter,
    nodes_summary: dict,
    bad_batches: int = 0,
) -> dict:
    total = stats_for(None, None, None)
    generator = generator_verdict(totals, total.requests)
    generator["bad_batches"] = bad_batches  # batches refused by the checks (run/session.py on_bad_batch)
    scopes = {}
    for e in (None, *plan.endpoints):
        queued, unqueued = agg.generator_queueing(endpoint=e)
        scopes["total" if e is None else e] = (agg.snapshot(endpoint=e).latency, unqueued, queued)
    generator["generator_queueing"] = generator_queueing(scopes)
    for node in nodes_summary.get("saturated", []):
        info = nodes_summary["nodes"][node]
        if info["agents"]:
            generator["saturated"] = True
            generator["reasons"].append(
                f"node {node[:12]} (agents {', '.join(info['agents'])}) averaged {info['cpu_mean']:.0%} CPU"
            )
    return {
        "outcome": outcome.value,
        "stop_reason": stop_reason,
        "duration_s": total.duration_s,
        "total": total.to_dict(),
        "endpoints": {e: stats_for(e, None, None).to_dict() for e in plan.endpoints},
        "stages": {
            s: {
                "total": stats_for(None, s, None).to_dict(),
                "endpoints": {e: stats_for(e, s, None).to_dict() for e in plan.endpoints},
            }
            for s in plan.stage_names
        },
        "thresholds": thresholds,
        "generator": generator,
        "lost_agents": lost,
        "target_resources": resources.summary(),
        "nodes": nodes_summary,
        "sends": sends.summary(),
        "late_samples": agg.late_samples,
        "engines": plan.engines,
    }


def window_info(w, plan: Plan, profile: Profile, cumulative: dict, agent_cpu: dict, alert_engine, lost: int) -> dict:
    """One closed window as the live view and the live metrics show it."""
    t = w.total
    lat = t.latency
    cumulative["requests"] += t.requests
    cumulative["errors"] += t.errors
    stage_i = min(sum(1 for e in plan.stage_ends_ns if e <= w.index * 1e9), len(plan.stage_names) - 1)
    agents = {}
    for index, g in (w.generator or {}).items():
        label = agent_label(int(index), int(g.get("incarnation", 0)))
        prev = agent_cpu.get(label)
        cpu = None
        if prev is not None and w.index > prev[1]:
            cpu = max(0.0, (g.get("cpu_s", 0.0) - prev[0]) / (w.index - prev[1]))
        agent_cpu[label] = (g.get("cpu_s", 0.0), w.index)
        agents[label] = {
            "users": g.get("users", 0),
            "in_flight": g.get("in_flight", 0),
            "cpu_fraction": cpu,
            "loop_lag_max_ms": g.get("loop_lag_max_ns", 0) / 1e6,
            "rss_mb": g.get("rss_bytes", 0) / 1e6,
        }

    def ms(q):
        v = lat.value_at_quantile(q)
        return None if v is None else v / 1e6

    return {
        "t_s": w.index + 1,
        "duration_s": plan.duration_s,
        "stage": plan.stage_names[stage_i],
        "stage_index": stage_i,
        "stages": len(plan.stage_names),
        "model": plan.agents[0].model,
        "planned": round(float(profile.level(w.index + 0.5)), 3),
        "rps": t.requests,
        "errors": t.errors,
        "error_rate": t.error_rate,
        "p50_ms": ms(0.5),
        "p90_ms": ms(0.9),
        "p99_ms": ms(0.99),
        "max_ms": None if not lat.count else lat.max_ns / 1e6,
        "users": sum(a["users"] for a in agents.values()),
        "in_flight": sum(a["in_flight"] for a in agents.values()),
        "agents": agents,
        "alerts": [f"{a.get('level')}: {a.get('text', a.get('rule'))}" for a in alert_engine.active()],
        "lost": lost,
        "total_requests": cumulative["requests"],
        "total_errors": cumulative["errors"],
    }


def histogram_records(agg: Aggregator, plan: Plan) -> list[dict]:
    """histograms.msgpack: every endpoint (None: all) by every stage (None: the whole run)."""
    return [
        {"endpoint": e, "stage": st, "stats": agg.snapshot(endpoint=e, stage=st).to_sparse()}
        for e in (None, *plan.endpoints)
        for st in (None, *plan.stage_names)
    ]


# -- alerts.jsonl records --------------------------------------------------------------------


def loss_record(ev: AgentLost, now_s: float, last_s: float, agents: int, node: str | None) -> dict:
    """An agent lost at `now_s` (run time) whose last batch reached `last_s`; the run adds how it was replaced."""
    return {
        "kind": "agent_lost",
        "agent": ev.index,
        "incarnation": ev.incarnation,
        "reason": ev.reason,
        "detail": ev.detail,
        "at_s": round(now_s, 3),
        "last_batch_s": round(last_s, 3),
        "share": f"1/{agents}",
        "node": node,
    }


def restored_record(agent: int, incarnation: int, at_s: float) -> dict:
    return {"kind": "agent_restored", "agent": agent, "incarnation": incarnation, "at_s": at_s}


def abort_record(a: Abort) -> dict:
    """An abort rule that fired."""
    return {
        "kind": "abort",
        "at_s": a.elapsed_s,
        "rule": a.rule.text,
        "reason": a.reason,
        "observed": a.verdict.observed,
    }


def session_summary(self: RunSession, th_results: list[dict]) -> dict:
    """summary.json's content for a finished session (RunSession.finish)."""
    plan = self.plan
    compression = float(getattr(self.scenario, "time_compression", 1.0) or 1.0)
    summary_extra: dict[str, Any] = {
        "alerts": self.windows.alerts_log,
        "time": {
            "compression": compression,
            "real_duration_s": plan.duration_s,
            "simulated_duration_s": plan.duration_s * compression,
        },
        **self.windows.soak(compression),
    }
    agent_nodes: dict[str, list[str]] = {}
    for a in getattr(self.fleet, "agents", []):
        agent_nodes.setdefault(a.node, []).append(agent_label(a.index, a.incarnation))
    nodes_summary = self.node_series.summary(agent_nodes)
    summary = build_summary(
        self.stats_for,
        self.agg,
        plan,
        self.totals,
        self.lost,
        th_results,
        self.outcome,
        self.stop_reason,
        self.resources,
        self.sends,
        nodes_summary,
        bad_batches=self.bad_batches.total,
    )
    summary.update(summary_extra)
    summary["load"] = self.ledger.totals()
    if not plan.tls_verify or plan.data_files:  # the client options' section (run/client_info.py)
        summary["client"] = client_summary(plan, self.data_rows)
    # Python users: the iterations an exception ended, by type (client.fail: "client.fail")
    summary["user_errors"] = dict(sorted(self.user_errors.items()))
    self.windows.add_spikes(summary)
    return summary
