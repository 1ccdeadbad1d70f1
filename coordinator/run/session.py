"""One run: target -> cluster -> plan -> fleet streams -> aggregate -> limits -> bundle.

`run_scenario` is the public entry point (the CLI and the performance suite call it). It
starts the target (run/target.py) and the cluster (run/fleet.py), then `run` hands each
event of the fleet's stream to one `RunSession`'s named steps: `on_batch`, `on_agent_ended`,
`on_agent_lost` (with the replacement; run/losses.py), `on_window` (a closed window: recorded by
run/windows.py, shown, checked against the abort rules), `on_abort` / `on_signal` /
`on_timeout` (stopping early), and `finish` (summary and bundle). Each step is a method over
the session's attributes, so a test can call it with canned batches and events, without Ray.
The figures themselves are pure functions elsewhere (run/summary.py, run/manifest.py, plan,
aggregate, thresholds, health).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from horde.agents.samples import MAX_USER_ERROR_TYPES, BatchFormatError, decode_batch
from horde.cluster.events import AgentEnded, AgentLost, BatchReceived, ClusterShape
from horde.coordinator.bundle.outcome import Outcome
from horde.coordinator.bundle.store import BundleWriter
from horde.coordinator.judge.alerts import AlertEngine, parse_rules
from horde.coordinator.judge.thresholds import LiveEvaluator
from horde.coordinator.measure.aggregate import Aggregator
from horde.coordinator.measure.batch_check import BadBatches, BatchChecker, RunBounds, StaleBatchError
from horde.coordinator.measure.health import AgentTotals
from horde.coordinator.measure.resources import NodeSeries, ResourceSeries
from horde.coordinator.plan import Plan, build_plan
from horde.coordinator.report.text import junit_xml
from horde.coordinator.run import losses
from horde.coordinator.run.cpu_phases import CpuPhases
from horde.coordinator.run.drive import drive
from horde.coordinator.run.fleet import ClusterStarting, connect_cluster, silence_s
from horde.coordinator.run.ledger import LoadLedger
from horde.coordinator.run.live import format_line
from horde.coordinator.run.manifest import build_manifest
from horde.coordinator.run.options import Progress, RunOptions, RunResult
from horde.coordinator.run.summary import (
    ScopeView,
    SendCounter,
    abort_record,
    agent_label,
    histogram_records,
    restored_record,
    session_summary,
    threshold_dict,
)
from horde.coordinator.run.target import RunError, Target, start_target_in_background
from horde.coordinator.run.windows import ALERT_WINDOWS, WindowRecorder, sliding_spans, span_windows
from horde.coordinator.scenario.load import LoadedScenario

if TYPE_CHECKING:
    from horde.coordinator.run.prometheus import RunMetrics

__all__ = ["Progress", "RunError", "RunOptions", "RunResult", "RunSession", "run", "run_scenario"]

# The common start instant is this far after the agents are ready: time for the call that begins
# each agent's stream to reach it. Attached to a cluster (its calls may cross a network): 1 s.
# Local on this machine (in-process, embedded, `horde up`): the first call reached its agent
# 6 ms after it was made and the eighth of eight 28 ms after (bench/first_request.py), so
# LOCAL_START_LEAD_S and LOCAL_LEAD_PER_AGENT_S leave three times that, up to START_LEAD_S.
# A call that came after the instant anyway costs no request: the agent sends what fell due
# meanwhile at once, as late sends, their lateness in their latency (agents/traffic.py).
START_LEAD_S = 1.0
LOCAL_START_LEAD_S = 0.1
LOCAL_LEAD_PER_AGENT_S = 0.01
WINDOW_S = 1.0  # the aggregator's window


def start_lead_s(kind: str, agents: int = 1) -> float:
    if kind == "attached":
        return START_LEAD_S
    return min(START_LEAD_S, LOCAL_START_LEAD_S + LOCAL_LEAD_PER_AGENT_S * max(0, agents - 1))


def run_scenario(
    loaded: LoadedScenario, options: RunOptions | None = None, cluster_starting: ClusterStarting | None = None
) -> RunResult:
    """Run a loaded scenario to the end and write its bundle. Blocking. `cluster_starting`: the
    cluster already being connected on a thread (by the CLI); None: connected here."""
    options = options or RunOptions()
    scenario = loaded.scenario
    cluster = None
    cpu = CpuPhases()
    starting = start_target_in_background(scenario)  # the automaton starts while Ray starts
    try:
        if cluster_starting is not None:
            cluster = cluster_starting.result(scenario)
        else:
            cluster = connect_cluster(scenario, options)
        target = starting.result()
        if target.process is not None:
            cpu.exclude_pid = target.process.pid
        plan = build_plan(
            scenario,
            target.url,
            cluster.shape.cpus,
            supports_fast=_fast_supports(),
            attachments=getattr(loaded, "attachments", None),  # the files it names (tls, data)
        )
        return asyncio.run(
            run(loaded, plan, cluster.shape, cluster.make_fleet(plan), options, target, release=cluster.close, cpu=cpu)
        )
    finally:
        starting.close()  # stops the automaton, also when the run failed before taking it
        if cluster is not None:
            cluster.close()
        elif cluster_starting is not None:
            cluster_starting.close()


def _fast_supports() -> Any:
    try:
        from horde.agents.wire import supports
    except ImportError:
        return None
    return supports


async def run(
    loaded: LoadedScenario,
    plan: Plan,
    shape: ClusterShape,
    fleet: Any,
    options: RunOptions,
    target: Target,
    release: Callable[[], None] | None = None,
    cpu: CpuPhases | None = None,
) -> RunResult:
    """Drive one RunSession: start the agents, hand each fleet event to its step, write the bundle.
    `release` stops the Ray the run started once its agents have, so the bundle's `cpu` counts it."""
    session = RunSession(loaded, plan, shape, fleet, options, target)
    if cpu is not None:
        session.cpu = cpu
    session.install_signal_handlers()
    try:
        await session.start()
        stop_task = asyncio.create_task(session.stop_fleet_when_asked())
        try:
            await drive(session, fleet.events().__aiter__())
        finally:
            stop_task.cancel()
            await asyncio.gather(stop_task, return_exceptions=True)
        session.on_stream_end()
    finally:
        await session.close()
        if release is not None:
            try:
                release()
            except Exception as exc:  # the bundle matters more than a clean stop of Ray
                session.progress(f"warning: stopping Ray failed: {type(exc).__name__}: {exc}")
        session.cpu.mark("stopped")
    return session.finish()


def _no_progress(line: str) -> None:
    pass


class RunSession:
    """One run's state, and the steps that change it as the fleet's events arrive."""

    def __init__(
        self, loaded: LoadedScenario, plan: Plan, shape: ClusterShape, fleet: Any, options: RunOptions, target: Target
    ) -> None:
        scenario = self.scenario = loaded.scenario
        self.plan, self.shape, self.fleet, self.options, self.target = plan, shape, fleet, options, target
        self.progress: Progress = options.progress or _no_progress
        self.now_ns: Callable[[], int] = time.time_ns  # the wall clock (a test gives its own)
        self.started = datetime.now(timezone.utc)
        self.writer = BundleWriter(options.out_dir or scenario.output, scenario.name, self.started)
        self.manifest = build_manifest(loaded, plan, shape, target.url, self.started, target.process)
        self.writer.write_manifest(self.manifest)

        # Closed windows are on disk (windows.jsonl / windows.msgpack); memory keeps only what
        # sliding thresholds and alert rules look back over, so a long run stays flat.
        longest_window_s = max([t.window or 0 for t in scenario.thresholds] + [ALERT_WINDOWS])
        self.agg = Aggregator(
            plan.endpoints,
            plan.stage_ends_ns,
            plan.stage_names,
            not_in_total=[name for name, engine in plan.engines.items() if engine in ("flow", "python")],
            keep_windows=int(longest_window_s) + 60,
            sliding=sliding_spans(scenario.thresholds),  # kept as running sums (measure/sliding.py)
        )
        self.live = LiveEvaluator([t.rule() for t in scenario.thresholds])
        self.totals: dict[str, AgentTotals] = {}
        self.resources = ResourceSeries()
        self.sends = SendCounter(sink=self.writer.append_sends)  # the run's sends stream to the bundle
        bounds = RunBounds(len(plan.endpoints), len(plan.stage_names), data_files=frozenset(plan.data_files))
        self.checker = BatchChecker(bounds)
        self.bad_batches = BadBatches()
        self.user_errors: dict[str, int] = {}  # exception type name -> iterations it ended
        self.data_rows = {name: [0, 0] for name in plan.data_files}  # file -> [rows used, exhausted], as measured
        self.faulty: list[AgentLost] = []  # agents to declare lost as faulty (lose_faulty)
        # planned = sent + missed + unsent (run/ledger.py); one sample per arrival unless flows
        self.ledger = LoadLedger(list(plan.agents), counts_arrivals=not {"flow", "python"} & set(plan.engines.values()))
        self.node_series = NodeSeries()
        self.run_metrics: RunMetrics | None = None
        if options.prometheus_port is not None:
            from horde.coordinator.run.prometheus import RunMetrics  # prometheus_client: only when asked for

            self.run_metrics = RunMetrics(host=options.prometheus_host, port=options.prometheus_port)
            self.progress(f"live metrics at {self.run_metrics.start()}")
        alert_engine = AlertEngine(parse_rules(getattr(scenario, "alerts", None)), source=scenario.name)
        self.windows = WindowRecorder(
            plan, self.agg, self.resources, self.node_series, self.writer, alert_engine, self.progress
        )
        self.probe_task: asyncio.Task | None = None

        self.specs = {s.index: s for s in plan.agents}
        self.incarnations: dict[int, int] = {}  # agent index -> its current incarnation
        self.watermarks: dict[int, int] = {}  # live agents -> their latest watermark
        self.restoring: dict[int, dict] = {}  # agent index -> its loss record, until the replacement's first batch
        self.lost: list[dict] = []
        self.suspects: dict[int, losses.Suspect] = {}  # reported lost, declared once its lease lapsed
        self.closed_until_ns = 0  # every window ending at or before this is closed
        self.silence_s = silence_s(scenario)
        self.start_wall_ns = 0
        self.hard_deadline_s = 0.0  # time.monotonic() by which the stream must have ended
        self.run_span_s: float | None = None  # set at the end: the planned duration of a run that completed
        self.outcome = Outcome.PASSED
        self.stop_reason = ""
        self.stop_event = asyncio.Event()
        self._signals: list[int] = []
        self.cpu = CpuPhases()  # the run's CPU outside its steady state (run/cpu_phases.py)
        self.start_lead_s = start_lead_s(shape.kind, plan.count)

    # -- start and stop --------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        if not self.options.install_signal_handlers:
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.on_signal, sig)
                self._signals.append(sig)

    async def start(self) -> None:
        """Start the agents, fix the common start instant, start the target probe."""
        plan, manifest, writer = self.plan, self.manifest, self.writer
        try:
            infos = await self.fleet.start(plan.agents)
        except Exception as exc:
            raise RunError(f"agents could not start: {exc}") from exc
        manifest["agents"] = [i.__dict__ for i in infos]
        if getattr(self.fleet, "pool_note", ""):  # agents leased from the pool of `horde up`
            manifest["cluster"]["pool"] = self.fleet.pool_note
        writer.write_manifest(manifest)
        self.start_wall_ns = self.now_ns() + int(self.start_lead_s * 1e9)
        manifest["start_wall_ns"] = self.start_wall_ns
        writer.write_manifest(manifest)
        self.fleet.begin(self.start_wall_ns, grace_s=self.start_lead_s + 2.0)
        self.cpu.mark("started")
        for s in plan.agents:
            self.watermarks[s.index] = 0
            self.incarnations[s.index] = 0
            self.totals[agent_label(s.index, 0)] = AgentTotals()
        if hasattr(self.fleet, "monitor_nodes"):
            self.fleet.monitor_nodes(self.node_series.add)
        metrics_url = self.target.metrics_url
        if metrics_url:
            from horde.coordinator.run.target_probe import TargetProbe  # aiohttp's client: only with a /metrics

            probe = TargetProbe(metrics_url=metrics_url)
            manifest["target"]["metrics"] = metrics_url
            self.probe_task = asyncio.create_task(
                probe.run(self.start_wall_ns, self.resources.add, lambda why: self.resources.failed())
            )
        shape = self.shape
        self.progress(
            f"horde: {self.scenario.name} -> {self.target.url}  {plan.count} agent(s) on {shape.kind} Ray "
            f"({shape.cpus:g} CPUs), {plan.duration_s:g}s planned; bundle {writer.path}"
        )
        graceful_s = self.scenario.workload.graceful_stop
        self.hard_deadline_s = time.monotonic() + self.start_lead_s + plan.duration_s + graceful_s + 30.0

    async def stop_fleet_when_asked(self) -> None:
        await self.stop_event.wait()
        await self.fleet.stop()

    def wait_budget_s(self) -> float:
        """How long to wait for the next event before giving up on the agents."""
        budget = self.hard_deadline_s - time.monotonic()
        if self.stop_event.is_set():
            # After a stop, agents get their graceful time, then we stop waiting.
            budget = min(budget, self.scenario.workload.graceful_stop + 5.0)
        return max(0.1, budget)

    async def close(self) -> None:
        """Release what the run holds: metrics server, target probe, fleet, signal handlers."""
        if self.run_metrics is not None:
            self.run_metrics.close()
        if self.probe_task is not None:
            self.probe_task.cancel()
            await asyncio.gather(self.probe_task, return_exceptions=True)
        await self.fleet.close()
        if self._signals:
            loop = asyncio.get_running_loop()
            for sig in self._signals:
                loop.remove_signal_handler(sig)

    def _end_as(self, outcome: Outcome, reason: str) -> None:
        # The first reason a run ends early is the one the bundle gives.
        if self.outcome is Outcome.PASSED:
            self.outcome, self.stop_reason = outcome, reason

    def on_abort(self, reason: str) -> None:
        """Stop the run: the agents stop (stop_fleet_when_asked), the bundle says why."""
        self._end_as(Outcome.ABORTED, reason)
        self.stop_event.set()

    def on_signal(self, signum: int) -> None:
        if self.stop_event.is_set():
            return
        self.outcome = Outcome.INTERRUPTED
        self.stop_reason = signal.Signals(signum).name
        self.progress(f"{self.stop_reason}: stopping agents, writing the bundle (incomplete)")
        self.stop_event.set()

    def on_timeout(self) -> None:
        self.progress("agents did not finish in time; closing the fleet")
        self._end_as(Outcome.ERROR, "agents did not finish in time")

    # -- the fleet's events ----------------------------------------------------------------

    def on_batch(self, ev: BatchReceived) -> bool:
        """Aggregate one batch of samples. False when it was dropped (bad, stale or a duplicate)."""
        try:
            b = decode_batch(ev.payload)
            now_ns = self.now_ns() - self.start_wall_ns
            self.checker.check(b, sender=ev.index, incarnations=self.incarnations, now_ns=now_ns)
        except StaleBatchError:
            return False  # a replaced agent's late batch (its share is someone else's now), or a repeat
        except BatchFormatError as exc:
            self.on_bad_batch(ev.index, exc)
            return False
        if self.bad_batches.is_faulty(b.agent, b.incarnation):
            return False  # declared faulty: nothing more of it counts
        self.agg.add(b)
        self.sends.add_counts(*b.send_bins())
        self.totals[agent_label(b.agent, b.incarnation)].add(b.readings, b.watermark_ns, b.engine, b.timing)
        self.ledger.batch(b.agent, b.requests, b.readings, b.watermark_ns, b.final)
        for name, n in b.user_errors.items():  # Python users' exception types (bounded per batch)
            if name in self.user_errors or len(self.user_errors) < MAX_USER_ERROR_TYPES:
                self.user_errors[name] = self.user_errors.get(name, 0) + n
            else:
                self.user_errors["other"] = self.user_errors.get("other", 0) + n
        for name, (used, exhausted) in b.data_rows.items():  # names checked: the scenario's data files
            self.data_rows[name][0] += used
            self.data_rows[name][1] += exhausted
        if b.agent in self.restoring:
            loss = self.restoring.pop(b.agent)
            loss["restored_at_s"] = round(b.watermark_ns / 1e9, 3)
            loss["windows_affected"] = [int(loss["last_batch_s"]), int(b.watermark_ns // 1_000_000_000)]
            self.writer.append_alert(restored_record(b.agent, b.incarnation, loss["restored_at_s"]))
        watermarks = self.watermarks
        if b.agent in watermarks:
            watermarks[b.agent] = max(watermarks[b.agent], b.watermark_ns)
        if b.final:
            watermarks.pop(b.agent, None)
        return True

    def on_bad_batch(self, index: int, exc: BatchFormatError) -> None:
        """A batch that failed its checks: a bad_batch alert and a count; the run goes on. A few
        from one incarnation (batch_check.FAULTY_AFTER) make it faulty: lose_faulty replaces it."""
        losses.note_bad_batch(self, index, exc)

    async def lose_faulty(self) -> bool:
        """Declare the faulty agents lost at once (alive, answering, and killed now), their
        replacements held until the lease of each has lapsed."""
        fresh = False
        while self.faulty:
            ev = self.faulty.pop(0)
            if losses.suspect_agent(self, ev):
                fresh = await self.declare_lapsed(now=ev.index) or True
        return fresh

    def on_agent_ended(self, ev: AgentEnded) -> None:
        if ev.incarnation == self.incarnations.get(ev.index):
            self.watermarks.pop(ev.index, None)

    async def on_agent_lost(self, ev: AgentLost) -> bool:
        """A lost agent: suspected at once (windows close without it), declared lost and
        replaced once its lease has surely lapsed (declare_lapsed; run/losses.py).
        False when the loss is of an agent already replaced or suspected."""
        if not losses.suspect_agent(self, ev):
            return False
        await self.declare_lapsed()
        return True

    async def declare_lapsed(self, now: int | None = None) -> bool:
        """Declare lost (and replace) the suspects whose leases have surely lapsed, and agent
        `now` whatever its lease. False: none."""
        if not await losses.declare_lapsed(self, now):
            return False
        if not self.watermarks and not self.suspects and not self.stop_event.is_set():
            self._end_as(Outcome.ERROR, "every agent was lost")
        return True

    # -- windows -----------------------------------------------------------------------------

    def close_ready_windows(self) -> None:
        """Close every window all live agents have reported past."""
        if self.watermarks:
            self.on_windows(self.agg.close_each(min(self.watermarks.values())))

    def on_stream_end(self) -> None:
        """The stream ended: close what is left, and end the alerts still firing."""
        self.cpu.mark("steady_end")
        self.on_windows(self.agg.close_each())
        self.windows.finish_alerts(self.closed_until_ns / 1e9)

    def on_windows(self, windows: Any) -> None:
        for w in windows:
            self.on_window(w)

    def on_window(self, w: Any) -> None:
        """A window closed: record it, show it, evaluate the abort rules over it."""
        self.closed_until_ns = max(self.closed_until_ns, w.end_ns)
        info = self.windows.record(w, len(self.lost))
        if self.run_metrics is not None:
            self.run_metrics.update(info)
        if self.options.on_window is not None:
            self.options.on_window(info)
        else:
            self.progress(format_line(info))
        if self.outcome is Outcome.PASSED:
            aborts = self.live.evaluate((w.index + 1) * WINDOW_S, self.stats_for)
            for a in aborts:
                self.writer.append_alert(abort_record(a))
                self.progress(f"ABORT: {a.reason}")
            if aborts:
                self.on_abort("abort rule")

    def stats_for(self, endpoint: str | None, stage: str | None, window_s: float | None) -> ScopeView:
        """A scope's figures for the threshold rules: the run, a stage, or the last `window_s`."""
        plan = self.plan
        if stage is not None and stage not in plan.stage_names:
            stage = plan.stage_names[self.scenario.stage_index(stage)]  # an index given as text
        if window_s:
            n = span_windows(window_s)
            newest = self.closed_until_ns // 1_000_000_000 - 1
            return ScopeView(self.agg.recent(n, endpoint=endpoint), self.resources, newest - n + 1, newest)
        s = self.agg.snapshot(endpoint=endpoint, stage=stage)
        if stage is None and self.run_span_s is not None:
            s.duration_s = self.run_span_s
        first: int | None = None
        last: int | None = None
        if stage is not None:
            i = plan.stage_names.index(stage)
            first = (plan.stage_ends_ns[i - 1] if i else 0) // 1_000_000_000
            last = max(first, -(-plan.stage_ends_ns[i] // 1_000_000_000) - 1)
        return ScopeView(s, self.resources, first, last)

    # -- the end -----------------------------------------------------------------------------

    def finish(self) -> RunResult:
        """The final figures, the summary and the bundle; the HTML report beside it."""
        if self.outcome in (Outcome.PASSED, Outcome.THRESHOLDS_FAILED):
            # Rates over the planned duration: the last responses may complete a little after it.
            self.run_span_s = self.plan.duration_s
        th_results = [threshold_dict(r) for r in self.live.evaluate_final(self.stats_for)]
        if self.outcome is Outcome.PASSED and any(not r["ok"] for r in th_results):
            self.outcome = Outcome.THRESHOLDS_FAILED
        summary = session_summary(self, th_results)
        self.cpu.mark("analysed")
        summary["cpu"] = self.cpu.summary(summary["load"]["sent"])
        ended = datetime.now(timezone.utc)
        manifest = self.manifest
        manifest.update(
            outcome=self.outcome.value,
            complete=self.outcome is not Outcome.INTERRUPTED,
            stop_reason=self.stop_reason,
            ended=ended.isoformat(),
            duration_s=round((ended - self.started).total_seconds(), 3),
        )
        if self.target.process is not None:
            with contextlib.suppress(Exception):
                manifest["target"]["served"] = self.target.process.stats()
        histograms = histogram_records(self.agg, self.plan)
        path = self.writer.finish(
            manifest=manifest,
            summary=summary,
            histograms=histograms,
            junit_xml=junit_xml(self.scenario.name, th_results, summary["duration_s"]),
        )
        try:
            from horde.coordinator.report.html import write_html

            write_html(path)
        except Exception as exc:  # the report is a view of the bundle: never fail the run for it
            self.progress(f"warning: report.html was not written: {type(exc).__name__}: {exc}")
        return RunResult(outcome=self.outcome, bundle=path, summary=summary)
