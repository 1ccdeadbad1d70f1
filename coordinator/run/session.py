"""Orchestration: target -> cluster -> plan -> fleet streams -> aggregate -> limits -> bundle.

`run_scenario` is the public entry point (the CLI and the performance suite call it). It
owns the side effects of a run: starting the embedded automaton, connecting to Ray,
signal handling, and the bundle on disk. The decisions it makes along the way are pure
functions elsewhere (plan, aggregate, limits, health).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re

import psutil
import platform
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from horde.agents.samples import BatchFormatError, decode_batch
from horde.cluster.events import AgentEnded, AgentLost, BatchReceived, ClusterShape, NodeShape
from horde.coordinator.measure.aggregate import Aggregator
from horde.coordinator.bundle.store import BundleWriter
from horde.coordinator.measure.health import AgentTotals, generator_verdict
from horde.coordinator.judge.thresholds import LiveEvaluator
from horde.coordinator.bundle.outcome import EXIT_CODES, Outcome
from horde.coordinator.plan import Plan, build_plan
from horde.coordinator.report.text import junit_xml
from horde.agents.stages import Profile
from horde.coordinator.judge.alerts import AlertEngine, metrics_from_stats, parse_rules
from horde.coordinator.run.live import format_line
from horde.coordinator.run.prometheus import RunMetrics
from horde.coordinator.measure.resources import NodeSeries, ResourceSeries
from horde.coordinator.analysis.soak import SoakSeries
from horde.coordinator.analysis.spike import find_spikes, spikes_for_run
from horde.coordinator.analysis.soak import analyse as analyse_soak
from horde.coordinator.run.target_probe import TargetProbe
from horde.coordinator.scenario.load import LoadedScenario

START_LEAD_S = 1.0
ALERT_WINDOWS = 10  # alert rules look at the last 10 s
SOAK_MIN_WINDOWS = 30  # leak and trend verdicts need at least this many windows  # the common start instant is this far after the agents are ready
Progress = Callable[[str], None]


class RunError(RuntimeError):
    """A run that could not start (target, cluster, placement); the message says why."""


@dataclass
class RunOptions:
    address: str | None = None  # Ray address; None = embedded
    in_process: bool = False  # agents on threads of this process, no Ray
    out_dir: str | None = None  # overrides scenario.output
    progress: Progress | None = None
    install_signal_handlers: bool = True
    ready_timeout_s: float = 60.0
    on_window: Callable[[dict], None] | None = None  # a live view; None: progress() gets a line per window
    prometheus_port: int | None = None  # serve live run metrics on 127.0.0.1:PORT (0 = any free port)
    prometheus_host: str = "127.0.0.1"


@dataclass
class RunResult:
    outcome: Outcome
    bundle: Path
    summary: dict
    exit_code: int = field(init=False)

    def __post_init__(self) -> None:
        self.exit_code = EXIT_CODES[self.outcome]


def run_scenario(loaded: LoadedScenario, options: RunOptions | None = None) -> RunResult:
    """Run a loaded scenario to the end and write its bundle. Blocking."""
    options = options or RunOptions()
    scenario = loaded.scenario
    target_proc = None
    connection = None
    try:
        target_future = None
        if scenario.target.is_embedded:
            # Start the automaton while Ray starts: both take seconds, neither needs the other.
            from concurrent.futures import ThreadPoolExecutor

            from horde.automaton.launch import start_automaton

            embedded = scenario.target.embedded
            faults = embedded.faults_config() if embedded else None
            if faults is not None:
                faults.setdefault("seed", scenario.seed)  # the scenario's seed drives the faults too
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="horde-target")
            target_future = pool.submit(start_automaton, faults=faults)
            pool.shutdown(wait=False)

        if options.in_process:
            import os
            import socket

            from horde.cluster.local import LocalFleet

            shape = ClusterShape(
                kind="in-process",
                address="",
                nodes=(NodeShape(node="local", host=socket.gethostname(), cpus=float(os.cpu_count() or 1)),),
            )
            fleet_factory = lambda plan: LocalFleet(silence_s=_silence_s(scenario))  # noqa: E731
        else:
            from horde.cluster.connect import ClusterError, connect
            from horde.cluster.fleet import RayFleet

            try:
                connection = connect(options.address)
            except ClusterError as exc:
                raise RunError(str(exc)) from exc
            shape = connection.shape
            fleet_factory = lambda plan: RayFleet(  # noqa: E731
                cpus_per_agent=plan.cpus_per_agent,
                ready_timeout_s=options.ready_timeout_s,
                silence_s=1.5 * scenario.flush_interval,
                probe_timeout_s=0.5 * scenario.flush_interval,
            )

        if target_future is not None:
            from horde.automaton.launch import AutomatonError

            try:
                target_proc = target_future.result()
            except AutomatonError as exc:
                raise RunError(f"the embedded automaton did not start: {exc}") from exc
            base_url = target_proc.url
        else:
            base_url = scenario.target.url

        plan = build_plan(scenario, base_url, shape.cpus, supports_fast=_fast_supports())
        return asyncio.run(
            _run(loaded, plan, shape, base_url, fleet_factory(plan), options, target_proc)
        )
    finally:
        if target_proc is None and target_future is not None:
            with contextlib.suppress(Exception):  # started, but the run failed before taking it
                target_proc = target_future.result(timeout=60)
        if target_proc is not None:
            target_proc.stop()
        if connection is not None:
            connection.close()


def _silence_s(scenario) -> float:
    # An agent silent for 1.5 flush intervals is pinged; no answer within half an interval
    # more and it is lost: noticed within two flush intervals (Ray itself raises nothing for
    # a frozen or partitioned agent for about a minute).
    return 2 * scenario.flush_interval


def _fast_supports():
    try:
        from horde.agents.wire import supports
    except ImportError:
        return None
    return supports


async def _run(loaded, plan: Plan, shape: ClusterShape, base_url: str, fleet, options: RunOptions, target_proc) -> RunResult:
    scenario = loaded.scenario
    progress = options.progress or (lambda line: None)
    started = datetime.now(timezone.utc)
    writer = BundleWriter(options.out_dir or scenario.output, scenario.name, started)
    manifest = _manifest(loaded, plan, shape, base_url, started, target_proc)
    writer.write_manifest(manifest)

    # Closed windows are on disk (windows.jsonl / windows.msgpack); memory keeps only what
    # sliding thresholds and alert rules look back over, so a long run stays flat.
    longest_window_s = max([t.window or 0 for t in scenario.thresholds] + [ALERT_WINDOWS])
    agg = Aggregator(plan.endpoints, plan.stage_ends_ns, plan.stage_names,
                     not_in_total=[name for name, engine in plan.engines.items() if engine == "flow"],
                     keep_windows=int(longest_window_s) + 60)
    rules = [t.rule() for t in scenario.thresholds]
    live = LiveEvaluator(rules)
    totals: dict[str, AgentTotals] = {}
    resources = ResourceSeries()
    sends = SendCounter()
    node_series = NodeSeries()
    me = psutil.Process()
    soak_series = SoakSeries()
    profile = Profile(plan.agents[0].start_level, plan.agents[0].stages)
    spike_windows: list[dict] | None = [] if find_spikes(profile) else None  # kept only when the plan has spikes
    spike_totals: dict[int, object] = {}
    cumulative = {"requests": 0, "errors": 0}
    agent_cpu: dict[str, tuple[float, int]] = {}  # agent label -> (cpu_s, window) last seen
    run_metrics = None
    if options.prometheus_port is not None:
        run_metrics = RunMetrics(host=options.prometheus_host, port=options.prometheus_port)
        progress(f"live metrics at {run_metrics.start()}")
    alert_engine = AlertEngine(parse_rules(getattr(scenario, "alerts", None)), source=scenario.name)
    alerts_log: list[dict] = []
    probe_task: asyncio.Task | None = None
    incarnations: dict[int, int] = {}  # agent index -> its current incarnation
    specs = {s.index: s for s in plan.agents}
    closed_until_ns = 0  # every window ending at or before this is closed
    restoring: dict[int, dict] = {}  # agent index -> its loss record, until the replacement's first batch
    watermarks: dict[int, int] = {}  # live agents -> their latest watermark
    lost: list[dict] = []
    outcome = Outcome.PASSED
    stop_reason = ""
    stop_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[int] = []

    def on_signal(signum: int) -> None:
        nonlocal outcome, stop_reason
        if stop_event.is_set():
            return
        outcome = Outcome.INTERRUPTED
        stop_reason = signal.Signals(signum).name
        progress(f"{stop_reason}: stopping agents, writing the bundle (incomplete)")
        stop_event.set()

    if options.install_signal_handlers:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, on_signal, sig)
                installed.append(sig)

    run_span_s: float | None = None  # set at the end: the planned duration of a run that completed

    def stats_for(endpoint, stage, window_s):
        if stage is not None and stage not in plan.stage_names:
            stage = plan.stage_names[scenario.stage_index(stage)]  # an index given as text
        if window_s:
            n = max(1, round(window_s))
            last = closed_until_ns // 1_000_000_000 - 1
            return _View(agg.recent(n, endpoint=endpoint), resources, last - n + 1, last)
        s = agg.snapshot(endpoint=endpoint, stage=stage)
        if stage is None and run_span_s is not None:
            s.duration_s = run_span_s
        first = last = None
        if stage is not None:
            i = plan.stage_names.index(stage)
            first = (plan.stage_ends_ns[i - 1] if i else 0) // 1_000_000_000
            last = max(first, -(-plan.stage_ends_ns[i] // 1_000_000_000) - 1)
        return _View(s, resources, first, last)

    def observe_alerts(w, wd) -> None:
        # The same warning / critical rules as `horde monitor`, over the last 10 windows.
        m = metrics_from_stats(agg.recent(ALERT_WINDOWS))
        for e in plan.endpoints:
            m.update(metrics_from_stats(agg.recent(ALERT_WINDOWS, endpoint=e), e))
        m.update(wd["target"])
        for ev in alert_engine.observe(float(w.index + 1), m):
            record_alert_event(ev)

    def record_alert_event(ev) -> None:
        entry = {**ev.alert, "kind": "alert", "event": ev.kind, "event_t_s": ev.t_s}
        writer.append_alert(entry)
        if ev.kind in ("fired", "escalated"):
            progress(f"ALERT {ev.kind} {ev.alert.get('level')}: {ev.alert.get('text', ev.alert.get('rule'))}")
        if ev.kind == "resolved":
            alerts_log.append(ev.alert)

    def handle_windows(windows) -> None:
        nonlocal outcome, stop_reason, closed_until_ns
        for w in windows:
            closed_until_ns = max(closed_until_ns, w.end_ns)
            wd = w.to_dict()
            wd["target"] = resources.window(w.index)
            wd["coordinator"] = {"rss_bytes": float(me.memory_info().rss)}
            soak_series.add(wd)
            if spike_windows is not None:
                spike_windows.append(wd)
                spike_totals[w.index] = w.total
            observe_alerts(w, wd)
            wd["nodes"] = node_series.window(w.index)
            writer.append_window(wd, {"index": w.index, "endpoints": {k: v.to_sparse() for k, v in w.by_endpoint.items()}})
            info = _window_info(w, plan, profile, cumulative, agent_cpu, alert_engine, len(lost))
            if run_metrics is not None:
                run_metrics.update(info)
            if options.on_window is not None:
                options.on_window(info)
            else:
                progress(format_line(info))
            if outcome in (Outcome.PASSED,):
                aborts = live.evaluate((w.index + 1) * agg_window_s, stats_for)
                for a in aborts:
                    alert = {"kind": "abort", "at_s": a.elapsed_s, "rule": a.rule.text, "reason": a.reason,
                             "observed": a.verdict.observed}
                    writer.append_alert(alert)
                    progress(f"ABORT: {a.reason}")
                if aborts and not stop_event.is_set():
                    outcome = Outcome.ABORTED
                    stop_reason = "abort rule"
                    stop_event.set()

    agg_window_s = 1.0
    try:
        try:
            infos = await fleet.start(plan.agents)
        except Exception as exc:
            raise RunError(f"agents could not start: {exc}") from exc
        manifest["agents"] = [i.__dict__ for i in infos]
        writer.write_manifest(manifest)
        start_wall_ns = time.time_ns() + int(START_LEAD_S * 1e9)
        manifest["start_wall_ns"] = start_wall_ns
        writer.write_manifest(manifest)
        fleet.begin(start_wall_ns, grace_s=START_LEAD_S + 2.0)
        for s in plan.agents:
            watermarks[s.index] = 0
            incarnations[s.index] = 0
            totals[_label(s.index, 0)] = AgentTotals()
        silence_s = _silence_s(scenario)
        if hasattr(fleet, "monitor_nodes"):
            fleet.monitor_nodes(node_series.add)
        metrics_url = getattr(scenario.target, "metrics", None) or (
            base_url.rstrip("/") + "/metrics" if target_proc is not None else None
        )
        if metrics_url:
            probe = TargetProbe(metrics_url=metrics_url)
            manifest["target"]["metrics"] = metrics_url
            probe_task = asyncio.create_task(
                probe.run(start_wall_ns, resources.add, lambda why: resources.failed())
            )
        progress(
            f"horde: {scenario.name} -> {base_url}  {plan.count} agent(s) on {shape.kind} Ray "
            f"({shape.cpus:g} CPUs), {plan.duration_s:g}s planned; bundle {writer.path}"
        )

        async def stopper() -> None:
            await stop_event.wait()
            await fleet.stop()

        stop_task = asyncio.create_task(stopper())
        hard_deadline = time.monotonic() + START_LEAD_S + plan.duration_s + scenario.workload.graceful_stop + 30.0
        events = fleet.events().__aiter__()
        try:
            while True:
                budget = hard_deadline - time.monotonic()
                if stop_event.is_set():
                    # After a stop, agents get their graceful time, then we stop waiting.
                    budget = min(budget, scenario.workload.graceful_stop + 5.0)
                try:
                    ev = await asyncio.wait_for(events.__anext__(), max(0.1, budget))
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    progress("agents did not finish in time; closing the fleet")
                    if outcome is Outcome.PASSED:
                        outcome = Outcome.ERROR
                        stop_reason = "agents did not finish in time"
                    break
                if isinstance(ev, BatchReceived):
                    try:
                        b = decode_batch(ev.payload)
                    except BatchFormatError as exc:
                        writer.append_alert({"kind": "bad_batch", "agent": ev.index, "detail": str(exc)})
                        continue
                    if b.incarnation != incarnations.get(b.agent):
                        continue  # a replaced agent's late batch: its share is someone else's now
                    agg.add(b)
                    sends.add(b.samples["sent_ns"])
                    totals[_label(b.agent, b.incarnation)].add(b.readings, b.watermark_ns, b.engine)
                    if b.agent in restoring:
                        loss = restoring.pop(b.agent)
                        loss["restored_at_s"] = round(b.watermark_ns / 1e9, 3)
                        loss["windows_affected"] = [int(loss["last_batch_s"]), int(b.watermark_ns // 1_000_000_000)]
                        writer.append_alert({"kind": "agent_restored", "agent": b.agent,
                                             "incarnation": b.incarnation, "at_s": loss["restored_at_s"]})
                    if b.agent in watermarks:
                        watermarks[b.agent] = max(watermarks[b.agent], b.watermark_ns)
                    if b.final:
                        watermarks.pop(b.agent, None)
                elif isinstance(ev, AgentEnded):
                    if ev.incarnation == incarnations.get(ev.index):
                        watermarks.pop(ev.index, None)
                elif isinstance(ev, AgentLost):
                    if ev.incarnation != incarnations.get(ev.index):
                        continue
                    now_s = (time.time_ns() - start_wall_ns) / 1e9
                    last_s = max(watermarks.pop(ev.index, 0), 0) / 1e9
                    fleet.forget(ev.index, ev.incarnation)
                    loss = {"kind": "agent_lost", "agent": ev.index, "incarnation": ev.incarnation,
                            "reason": ev.reason, "detail": ev.detail, "at_s": round(now_s, 3),
                            "last_batch_s": round(last_s, 3), "share": f"1/{plan.count}",
                            "node": next((a.node for a in reversed(fleet.agents)
                                          if a.index == ev.index and a.incarnation == ev.incarnation), None)}
                    lost.append(loss)
                    progress(f"LOST agent {ev.index}.{ev.incarnation} at {now_s:.1f}s: {ev.reason} {ev.detail}")
                    if not stop_event.is_set() and now_s < plan.duration_s:
                        new = dataclasses.replace(specs[ev.index], incarnation=ev.incarnation + 1)
                        try:
                            info = await fleet.replace(new, grace_s=silence_s)
                        except Exception as exc:  # PlacementError, or the cluster is going away
                            loss["replaced"] = False
                            writer.append_alert(loss)
                            progress(f"ABORT: agent {ev.index} cannot be replaced: {exc}")
                            if outcome is Outcome.PASSED:
                                outcome = Outcome.ABORTED
                                stop_reason = f"lost agent {ev.index} could not be replaced: {exc}"
                            stop_event.set()
                        else:
                            incarnations[ev.index] = new.incarnation
                            watermarks[ev.index] = closed_until_ns
                            t = AgentTotals(began_ns=time.time_ns() - start_wall_ns)
                            totals[_label(ev.index, new.incarnation)] = t
                            loss.update(replaced=True, replacement_incarnation=new.incarnation,
                                        replaced_at_s=round((time.time_ns() - start_wall_ns) / 1e9, 3),
                                        replacement_node=info.node)
                            restoring[ev.index] = loss
                            writer.append_alert(loss)
                            progress(f"agent {ev.index} replaced (incarnation {new.incarnation}) on node {info.node[:12]}")
                    else:
                        loss["replaced"] = False
                        writer.append_alert(loss)
                    if not watermarks and not stop_event.is_set() and outcome is Outcome.PASSED:
                        outcome = Outcome.ERROR
                        stop_reason = "every agent was lost"
                if watermarks:
                    handle_windows(agg.close_until(min(watermarks.values())))
        finally:
            stop_task.cancel()
            await asyncio.gather(stop_task, return_exceptions=True)
        handle_windows(agg.close_all())
        for ev in alert_engine.finish(closed_until_ns / 1e9):
            record_alert_event(ev)
    finally:
        if run_metrics is not None:
            run_metrics.close()
        if probe_task is not None:
            probe_task.cancel()
            await asyncio.gather(probe_task, return_exceptions=True)
        await fleet.close()
        for sig in installed:
            loop.remove_signal_handler(sig)

    # -- final figures ---------------------------------------------------------------------
    if outcome in (Outcome.PASSED, Outcome.THRESHOLDS_FAILED):
        # Rates over the planned duration: the last responses may complete a little after it.
        run_span_s = plan.duration_s
    final = live.evaluate_final(stats_for)
    th_results = [_threshold_dict(r) for r in final]
    if outcome is Outcome.PASSED and any(not r["ok"] for r in th_results):
        outcome = Outcome.THRESHOLDS_FAILED
    compression = float(getattr(scenario, "time_compression", 1.0) or 1.0)
    summary_extra = {"alerts": alerts_log,
                     "time": {"compression": compression, "real_duration_s": plan.duration_s,
                              "simulated_duration_s": plan.duration_s * compression}}
    if len(soak_series.t_s.get("rps", [])) >= SOAK_MIN_WINDOWS:
        summary_extra["soak"] = analyse_soak(soak_series, time_scale=compression)
    agent_nodes: dict[str, list[str]] = {}
    for a in getattr(fleet, "agents", []):
        agent_nodes.setdefault(a.node, []).append(_label(a.index, a.incarnation))
    nodes_summary = node_series.summary(agent_nodes)
    summary = _summary(stats_for, agg, plan, totals, lost, th_results, outcome, stop_reason, resources, sends,
                       nodes_summary)
    summary.update(summary_extra)
    if spike_windows is not None:
        try:
            summary["spikes"] = spikes_for_run(profile, spike_windows, summary["sends"], model=plan.agents[0].model,
                                               histograms=spike_totals)
        except Exception as exc:  # an analysis, never a reason to lose the bundle
            progress(f"warning: spike analysis failed: {type(exc).__name__}: {exc}")
    ended = datetime.now(timezone.utc)
    manifest.update(
        outcome=outcome.value,
        complete=outcome is not Outcome.INTERRUPTED,
        stop_reason=stop_reason,
        ended=ended.isoformat(),
        duration_s=round((ended - started).total_seconds(), 3),
    )
    if target_proc is not None:
        with contextlib.suppress(Exception):
            manifest["target"]["served"] = target_proc.stats()
    histograms = [
        {"endpoint": e, "stage": st, "stats": agg.snapshot(endpoint=e, stage=st).to_sparse()}
        for e in (None, *plan.endpoints)
        for st in (None, *plan.stage_names)
    ]
    path = writer.finish(
        manifest=manifest,
        summary=summary,
        histograms=histograms,
        junit_xml=junit_xml(scenario.name, th_results, summary["duration_s"]),
    )
    try:
        from horde.coordinator.report.html import write_html

        write_html(path)
    except Exception as exc:  # the report is a view of the bundle: never fail the run for it
        progress(f"warning: report.html was not written: {type(exc).__name__}: {exc}")
    return RunResult(outcome=outcome, bundle=path, summary=summary)


class SendCounter:
    """Actual sends per 100 ms (all endpoints): how fast the generator reached a planned level."""

    BIN_NS = 100_000_000

    def __init__(self) -> None:
        import numpy as np

        self._np = np
        self._counts = np.zeros(0, dtype=np.int64)

    def add(self, sent_ns) -> None:
        np = self._np
        if len(sent_ns) == 0:
            return
        bins = np.maximum(sent_ns, 0) // self.BIN_NS
        c = np.bincount(bins)
        if len(c) > len(self._counts):
            self._counts = np.concatenate([self._counts, np.zeros(len(c) - len(self._counts), np.int64)])
        self._counts[: len(c)] += c

    def counts(self) -> list[int]:
        return self._counts.tolist()


class _View:
    """Stats of a scope plus the target-resource readings of the same windows (for thresholds)."""

    def __init__(self, stats, resources: ResourceSeries, first: int | None, last: int | None) -> None:
        self._stats = stats
        self._resources = resources
        self._first, self._last = first, last

    def resource_values(self, series: str):
        return self._resources.values(series, self._first, self._last)

    def __getattr__(self, name: str):
        return getattr(self._stats, name)


def _label(index: int, incarnation: int) -> str:
    return str(index) if incarnation == 0 else f"{index}#{incarnation}"


def _threshold_dict(r) -> dict:
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


def _summary(stats_for, agg: Aggregator, plan: Plan, totals, lost, thresholds, outcome: Outcome, stop_reason: str,
             resources: ResourceSeries, sends: "SendCounter", nodes_summary: dict) -> dict:
    total = stats_for(None, None, None)
    generator = generator_verdict(totals, total.requests)
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
        "sends": {"bin_s": SendCounter.BIN_NS / 1e9, "counts": sends.counts()},
        "late_samples": agg.late_samples,
        "engines": plan.engines,
    }


def _window_info(w, plan: Plan, profile: Profile, cumulative: dict, agent_cpu: dict, alert_engine, lost: int) -> dict:
    """One closed window as the live view and the live metrics show it."""
    t = w.total
    lat = t.latency
    cumulative["requests"] += t.requests
    cumulative["errors"] += t.errors
    stage_i = min(sum(1 for e in plan.stage_ends_ns if e <= w.index * 1e9), len(plan.stage_names) - 1)
    agents = {}
    for index, g in (w.generator or {}).items():
        label = _label(int(index), int(g.get("incarnation", 0)))
        prev = agent_cpu.get(label)
        cpu = None
        if prev is not None and w.index > prev[1]:
            cpu = max(0.0, (g.get("cpu_s", 0.0) - prev[0]) / (w.index - prev[1]))
        agent_cpu[label] = (g.get("cpu_s", 0.0), w.index)
        agents[label] = {"users": g.get("users", 0), "in_flight": g.get("in_flight", 0), "cpu_fraction": cpu,
                         "loop_lag_max_ms": g.get("loop_lag_max_ns", 0) / 1e6, "rss_mb": g.get("rss_bytes", 0) / 1e6}

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


def _fmt_ms(ns) -> str:
    if ns is None:
        return "     -"
    return f"{ns / 1e6:6.2f}ms"


_SECRET_KEY = re.compile(r"token|secret|password|passwd|key|authorization|cookie", re.I)


def _redacted_argv(argv: list[str]) -> list[str]:
    """The command line with the values of secret-looking --set keys (and URL passwords) hidden."""
    out = []
    for i, a in enumerate(argv):
        prev = argv[i - 1] if i else ""
        if prev == "--set" or a.startswith("--set="):
            body = a[len("--set="):] if a.startswith("--set=") else a
            key, eq, _ = body.partition("=")
            if eq and (_SECRET_KEY.search(key) or "${" in body):
                a = ("--set=" if a.startswith("--set=") else "") + f"{key}=***"
        out.append(re.sub(r"(://[^/:@\s]+:)[^@/\s]+@", r"\1***@", a))
    return out


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def _manifest(loaded: LoadedScenario, plan: Plan, shape: ClusterShape, base_url: str, started: datetime, target_proc) -> dict:
    import aiohttp
    import numpy
    from horde.coordinator import __version__

    return {
        "horde_version": __version__,
        "bundle_format": 1,
        "scenario": loaded.as_run,
        "scenario_file": str(loaded.source),
        "outcome": "running",
        "complete": False,
        "started": started.isoformat(),
        "target": {"url": base_url, "embedded": target_proc is not None,
                   "pid": getattr(target_proc, "pid", None),
                   "admin_url": getattr(target_proc, "admin_url", None),  # never the admin token
                   "faults": target_proc.faults() if target_proc is not None else None},
        "cluster": shape.to_dict(),
        "plan": {
            "agents": plan.count,
            "cpus_per_agent": plan.cpus_per_agent,
            "duration_s": plan.duration_s,
            "stages": [{"name": n, "end_s": e / 1e9} for n, e in zip(plan.stage_names, plan.stage_ends_ns)],
            "engines": plan.engines,
            "max_in_flight": [s.max_in_flight for s in plan.agents],
            "max_connections": [s.max_connections for s in plan.agents],
        },
        "versions": {
            "python": platform.python_version(),
            "ray": _version("ray"),  # from package metadata: only cluster/ imports Ray
            "aiohttp": aiohttp.__version__,
            "numpy": numpy.__version__,
            "platform": platform.platform(),
        },
        "argv": _redacted_argv(sys.argv),
    }
