"""RunSession's steps with canned batches and fleet events: no Ray, no agents, no target.

The batches are real wire batches (horde.agents.samples.encode_batch), so the session decodes
and aggregates them exactly as it does in a run.
"""

from __future__ import annotations

import asyncio
import json
import signal
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from horde.agents.lease import replacement_hold_s
from horde.agents.samples import ErrorClass, GeneratorReadings, SampleBuffer, encode_batch
from horde.cluster.events import AgentEnded, AgentInfo, AgentLost, BatchReceived, ClusterShape, NodeShape
from horde.coordinator.bundle.outcome import Outcome
from horde.coordinator.bundle.store import read_bundle
from horde.coordinator.plan import build_plan
from horde.coordinator.run import losses
from horde.coordinator.run.session import START_LEAD_S, RunOptions, RunSession, run, start_lead_s
from horde.coordinator.run.target import Target
from horde.coordinator.scenario.load import parse_scenario

S = 1_000_000_000
URL = "http://127.0.0.1:9"  # never contacted: the fleet is canned
HOLD_S = replacement_hold_s(1.0)  # a lost agent's lease has surely lapsed this long after its last batch (flush 1 s)


class Clock:
    """run/losses.py's monotonic clock, moved by the test (when a lost agent's lease lapses)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(losses, "time", SimpleNamespace(monotonic=c.monotonic))
    return c


async def _lose(s: RunSession, clock: Clock, ev: AgentLost) -> bool:
    """Report `ev`, then let its lease lapse and the session declare it."""
    fresh = await s.on_agent_lost(ev)
    clock.now += HOLD_S
    await s.declare_lapsed()
    return fresh


def _scenario_text(agents: int, duration_s: int, thresholds: str) -> str:
    return textwrap.dedent(f"""
        name: canned
        target: {URL}
        requests:
          - {{name: health, method: GET, path: /health, expect: [200]}}
          - {{name: items, method: GET, path: /items, expect: [200]}}
        workload:
          model: open
          start: 10
          stages: [{{duration: {duration_s}s, target: 10}}]
        agents: {agents}
        flush_interval: 1s
        thresholds: {thresholds}
    """)


class CannedFleet:
    """The fleet interface RunSession uses, with canned events and a recorded conversation."""

    def __init__(self, events=(), replace_error: Exception | None = None) -> None:
        self.agents: list[AgentInfo] = []
        self._events = list(events)
        self.replace_error = replace_error
        self.replaced: list[tuple[int, int]] = []
        self.forgotten: list[tuple[int, int]] = []
        self.holds: list[tuple[float, int | None]] = []  # (hold_s, resume_ns) of each replace()
        self.stopped = self.closed = False

    async def start(self, specs):
        self.agents = [AgentInfo(s.index, s.incarnation, 1000 + s.index, f"node-{s.index}", "host") for s in specs]
        return list(self.agents)

    def begin(self, start_wall_ns: int, grace_s: float) -> None:
        self.start_wall_ns = start_wall_ns

    async def replace(self, spec, grace_s: float, hold_s: float = 0.0, resume_ns: int | None = None) -> AgentInfo:
        if self.replace_error is not None:
            raise self.replace_error
        self.replaced.append((spec.index, spec.incarnation))
        self.holds.append((hold_s, resume_ns))
        info = AgentInfo(spec.index, spec.incarnation, 2000 + spec.index, "node-new", "host")
        self.agents.append(info)
        return info

    def forget(self, index: int, incarnation: int) -> None:
        self.forgotten.append((index, incarnation))

    async def _stream(self):
        for ev in self._events:
            yield ev

    def events(self):
        return self._stream()

    async def stop(self) -> None:
        self.stopped = True

    async def close(self) -> None:
        self.closed = True


def _batch(
    agent: int,
    *,
    inc: int = 0,
    seq: int = 0,
    from_s: float,
    to_s: float,
    n: int,
    errors: int = 0,
    final: bool = False,
    latency_ms: float = 5.0,
) -> BatchReceived:
    """n samples sent evenly over [from_s, to_s), the first `errors` of them failed; watermark at to_s."""
    buf = SampleBuffer(capacity=max(n, 1))
    for i in range(n):
        sent = int((from_s + (to_s - from_s) * i / n) * S)
        failed = i < errors
        buf.record(
            i % 2,
            sent,
            sent,
            sent + int(latency_ms * 1e6),
            0 if failed else 200,
            ErrorClass.CONNECT if failed else ErrorClass.OK,
            0 if failed else 2,
        )
    payload = encode_batch(
        agent=agent,
        incarnation=inc,
        seq=seq,
        watermark_ns=int(to_s * S),
        records=buf.take(),
        readings=GeneratorReadings(cpu_s=0.01 * (seq + 1), rss_bytes=50_000_000, level=10.0),
        final=final,
        engine="fast",
    )
    return BatchReceived(index=agent, payload=payload)


class Harness:
    def __init__(self, tmp_path: Path, *, agents=1, duration_s=5, thresholds="[]", fleet=None) -> None:
        loaded = parse_scenario(_scenario_text(agents, duration_s, thresholds))
        self.loaded = loaded
        self.plan = build_plan(loaded.scenario, URL, 4.0, supports_fast=None)
        self.shape = ClusterShape("in-process", "", (NodeShape("local", "host", 4.0),))
        self.fleet = fleet or CannedFleet()
        self.lines: list[str] = []
        self.options = RunOptions(
            out_dir=str(tmp_path / "out"), progress=self.lines.append, install_signal_handlers=False
        )
        self.target = Target(url=URL, metrics_url=None)

    def session(self) -> RunSession:
        return RunSession(self.loaded, self.plan, self.shape, self.fleet, self.options, self.target)


def _alerts(session: RunSession) -> list[dict]:
    path = session.writer.path / "alerts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_batches_become_windows_and_the_summary_counts_every_sample(tmp_path):
    h = Harness(tmp_path, agents=2, duration_s=3)
    batches = [
        _batch(0, seq=0, from_s=0, to_s=1, n=10),
        _batch(1, seq=0, from_s=0, to_s=1, n=7, errors=2),
        _batch(0, seq=1, from_s=1, to_s=2, n=12),
        _batch(1, seq=1, from_s=1, to_s=2, n=9),
        _batch(0, seq=2, from_s=2, to_s=3, n=11, final=True),
        _batch(1, seq=2, from_s=2, to_s=3, n=8, final=True),
    ]

    async def go():
        s = h.session()
        await s.start()
        closed = []
        for b in batches:
            assert s.on_batch(b)
            before = s.closed_until_ns
            s.close_ready_windows()
            closed.append(s.closed_until_ns > before)
        s.on_stream_end()
        await s.close()
        return closed, s.finish()

    closed, result = asyncio.run(go())
    # A window closes once both agents reported past it, not before.
    assert closed[:4] == [False, True, False, True]
    assert result.outcome is Outcome.PASSED
    b = read_bundle(result.bundle)
    assert b.complete
    assert b.summary["total"]["requests"] == 57
    assert b.summary["total"]["errors"] == 2
    assert sum(e["requests"] for e in b.summary["endpoints"].values()) == 57
    assert sum(w["total"]["requests"] for w in b.windows()) == 57
    assert [w["index"] for w in b.windows()] == [0, 1, 2]
    assert sum(b.sends()["counts"]) == 57 == b.summary["sends"]["sends"]  # sends.msgpack, not summary.json
    assert set(b.summary["generator"]["agents"]) == {"0", "1"}
    assert len([line for line in h.lines if line.startswith("[")]) == 3  # a plain line per window
    assert h.fleet.closed


def test_a_stale_or_malformed_batch_is_dropped(tmp_path):
    h = Harness(tmp_path)

    async def go():
        s = h.session()
        await s.start()
        assert s.on_batch(_batch(0, seq=0, from_s=0, to_s=1, n=5))
        stale = s.on_batch(_batch(0, seq=0, from_s=0, to_s=1, n=5))  # the same batch again: dropped quietly
        unknown = s.on_batch(_batch(0, inc=1, seq=1, from_s=1, to_s=2, n=5))  # no such incarnation: bad
        bad = s.on_batch(BatchReceived(index=0, payload=b"\x00not msgpack"))
        return s, stale, unknown, bad

    s, stale, unknown, bad = asyncio.run(go())
    assert (stale, unknown, bad) == (False, False, False)
    assert s.agg.snapshot().requests == 5
    assert [a["kind"] for a in _alerts(s)] == ["bad_batch", "bad_batch"]


def test_a_lost_agent_is_recorded_replaced_and_restored(tmp_path, clock):
    h = Harness(tmp_path, agents=2, duration_s=10)

    async def go():
        s = h.session()
        await s.start()
        s.now_ns = lambda: s.start_wall_ns + 3 * S  # the loss is noticed 3 s into the run
        s.on_batch(_batch(0, from_s=0, to_s=2, n=20))
        s.on_batch(_batch(1, from_s=0, to_s=2, n=20))
        s.close_ready_windows()
        fresh = await _lose(s, clock, AgentLost(index=1, incarnation=0, reason="died", detail="exit 9"))
        stale_again = await _lose(s, clock, AgentLost(index=1, incarnation=0, reason="died"))
        late_old = s.on_batch(_batch(1, inc=0, seq=1, from_s=2, to_s=3, n=5))  # the dead one's late batch
        new_first = s.on_batch(_batch(1, inc=1, seq=0, from_s=3, to_s=4, n=8))
        return s, fresh, stale_again, late_old, new_first

    s, fresh, stale_again, late_old, new_first = asyncio.run(go())
    assert (fresh, stale_again, late_old, new_first) == (True, False, False, True)
    assert h.fleet.forgotten == [(1, 0)]
    assert h.fleet.replaced == [(1, 1)]
    assert s.incarnations == {0: 0, 1: 1}
    assert s.outcome is Outcome.PASSED
    (loss,) = s.lost
    assert loss["agent"] == 1 and loss["reason"] == "died" and loss["detail"] == "exit 9"
    assert loss["at_s"] == 3.0 and loss["last_batch_s"] == 2.0 and loss["share"] == "1/2"
    assert loss["node"] == "node-1"
    assert loss["replaced"] is True and loss["replacement_incarnation"] == 1 and loss["replacement_node"] == "node-new"
    assert loss["restored_at_s"] == 4.0 and loss["windows_affected"] == [2, 4]
    assert [a["kind"] for a in _alerts(s)] == ["agent_lost", "agent_restored"]
    assert "1#1" in s.totals  # the replacement's own totals
    assert s.agg.snapshot().requests == 48  # 20 + 20 + 8: the stale batch is not counted


def test_a_loss_that_cannot_be_replaced_aborts_the_run(tmp_path, clock):
    h = Harness(tmp_path, agents=2, duration_s=10, fleet=CannedFleet(replace_error=RuntimeError("no room")))

    async def go():
        s = h.session()
        await s.start()
        s.now_ns = lambda: s.start_wall_ns + 2 * S
        await _lose(s, clock, AgentLost(index=0, incarnation=0, reason="node lost"))
        return s

    s = asyncio.run(go())
    assert s.outcome is Outcome.ABORTED
    assert s.stop_reason == "lost agent 0 could not be replaced: no room"
    assert s.stop_event.is_set()
    assert s.lost[0]["replaced"] is False
    assert any(line.startswith("ABORT: agent 0 cannot be replaced") for line in h.lines)


def test_losing_the_last_agent_after_the_planned_end_is_an_error_without_replacement(tmp_path, clock):
    h = Harness(tmp_path, agents=1, duration_s=5)

    async def go():
        s = h.session()
        await s.start()
        s.now_ns = lambda: s.start_wall_ns + 6 * S  # past the planned 5 s: no replacement
        await _lose(s, clock, AgentLost(index=0, incarnation=0, reason="silent"))
        return s

    s = asyncio.run(go())
    assert h.fleet.replaced == []
    assert s.lost[0]["replaced"] is False
    assert (s.outcome, s.stop_reason) == (Outcome.ERROR, "every agent was lost")
    assert not s.stop_event.is_set()


def test_an_ended_agent_no_longer_holds_windows_open(tmp_path):
    h = Harness(tmp_path, agents=2, duration_s=5)

    async def go():
        s = h.session()
        await s.start()
        s.on_batch(_batch(0, from_s=0, to_s=3, n=30))
        s.close_ready_windows()
        held = s.closed_until_ns
        s.on_agent_ended(AgentEnded(index=1, incarnation=0))
        s.close_ready_windows()
        return held, s.closed_until_ns

    held, after = asyncio.run(go())
    assert held == 0 and after == 3 * S


def test_a_window_over_an_abort_threshold_stops_the_run(tmp_path):
    h = Harness(tmp_path, duration_s=10, thresholds='[{expr: "error_rate < 10%", abort: true}]')
    shown: list[dict] = []
    h.options.on_window = shown.append

    async def go():
        s = h.session()
        await s.start()
        s.on_batch(_batch(0, from_s=0, to_s=1, n=10))  # clean
        s.close_ready_windows()
        clean = (s.outcome, s.stop_event.is_set())
        s.on_batch(_batch(0, seq=1, from_s=1, to_s=2, n=10, errors=10))  # every request fails
        s.close_ready_windows()
        return s, clean

    s, clean = asyncio.run(go())
    assert clean == (Outcome.PASSED, False)
    assert s.outcome is Outcome.ABORTED and s.stop_reason == "abort rule"
    assert s.stop_event.is_set()
    aborts = [a for a in _alerts(s) if a["kind"] == "abort"]
    assert len(aborts) == 1 and aborts[0]["rule"] == "error_rate < 10%" and aborts[0]["at_s"] == 2.0
    assert [i["t_s"] for i in shown] == [1, 2]  # the live view got both windows
    assert shown[1]["errors"] == 10 and shown[1]["total_requests"] == 20


def test_a_signal_interrupts_once(tmp_path):
    h = Harness(tmp_path)
    s = h.session()
    s.on_signal(signal.SIGINT)
    s.on_signal(signal.SIGTERM)  # a second signal changes nothing
    assert (s.outcome, s.stop_reason) == (Outcome.INTERRUPTED, "SIGINT")
    assert s.stop_event.is_set()
    s.on_abort("abort rule")  # nor does a later abort
    assert (s.outcome, s.stop_reason) == (Outcome.INTERRUPTED, "SIGINT")


def test_run_drives_a_canned_stream_to_a_bundle(tmp_path):
    events = [
        _batch(0, seq=0, from_s=0, to_s=1, n=10),
        _batch(0, seq=1, from_s=1, to_s=2, n=10),
        BatchReceived(index=0, payload=b"garbage"),
        _batch(0, seq=2, from_s=2, to_s=3, n=10, final=True),
        AgentEnded(index=0, incarnation=0),
    ]
    h = Harness(tmp_path, duration_s=3, thresholds='["error_rate < 1%", "p99(latency) < 1ms"]')
    h.fleet = CannedFleet(events)
    result = asyncio.run(run(h.loaded, h.plan, h.shape, h.fleet, h.options, h.target))
    # the latency threshold fails (5 ms per request): the run completed, its thresholds did not hold
    assert result.outcome is Outcome.THRESHOLDS_FAILED and result.exit_code != 0
    b = read_bundle(result.bundle)
    assert b.summary["total"]["requests"] == 30
    assert [t["ok"] for t in b.summary["thresholds"]] == [True, False]
    assert b.summary["duration_s"] == 3.0  # rates over the planned duration
    assert b.manifest["outcome"] == "thresholds_failed" and b.manifest["complete"] is True
    assert [a["pid"] for a in b.manifest["agents"]] == [1000]
    assert h.fleet.closed and not h.fleet.stopped


def test_summary_and_manifest_keep_their_keys_in_order(tmp_path):
    h = Harness(tmp_path, duration_s=1)
    h.fleet = CannedFleet([_batch(0, from_s=0, to_s=1, n=4, final=True)])
    result = asyncio.run(run(h.loaded, h.plan, h.shape, h.fleet, h.options, h.target))
    assert list(result.summary) == [
        "outcome",
        "stop_reason",
        "duration_s",
        "total",
        "endpoints",
        "stages",
        "thresholds",
        "generator",
        "lost_agents",
        "target_resources",
        "nodes",
        "sends",
        "late_samples",
        "engines",
        "alerts",
        "time",
        "load",
        "user_errors",
        "cpu",
    ]
    manifest = json.loads((result.bundle / "manifest.json").read_text())
    assert list(manifest) == [
        "horde_version",
        "bundle_format",
        "scenario",
        "scenario_file",
        "outcome",
        "complete",
        "started",
        "target",
        "cluster",
        "plan",
        "versions",
        "argv",
        "user_code",
        "agents",
        "start_wall_ns",
        "stop_reason",
        "ended",
        "duration_s",
    ]


class _TimedFleet(CannedFleet):
    """A fleet that says when each agent's last batch arrived (the test's monotonic clock)."""

    def __init__(self, clock: Clock, ago_s: float) -> None:
        super().__init__()
        self.clock, self.ago_s = clock, ago_s
        self.noticed_at = clock.now

    def last_batch_at(self, index: int, incarnation: int) -> float | None:
        return self.noticed_at - self.ago_s


@pytest.mark.parametrize("ago_s", [None, 1.0])
def test_a_loss_is_declared_once_its_lease_has_lapsed_and_accounted(tmp_path, clock, ago_s):
    from horde.coordinator.run.ledger import planned_arrivals

    fleet = CannedFleet() if ago_s is None else _TimedFleet(clock, ago_s)
    h = Harness(tmp_path, agents=2, duration_s=10, fleet=fleet)
    noticed_at = clock.now
    # no batch arrival known: a whole hold from the notice; else the rest of it from that arrival
    lapse_s = HOLD_S if ago_s is None else HOLD_S - ago_s

    async def go():
        s = h.session()
        await s.start()
        s.now_ns = lambda: s.start_wall_ns + 3 * S + int((clock.now - noticed_at) * S)  # noticed 3 s in
        s.on_batch(_batch(0, from_s=0, to_s=2, n=6))
        s.on_batch(_batch(1, from_s=0, to_s=2, n=6))
        assert await s.on_agent_lost(AgentLost(index=1, incarnation=0, reason="silent"))
        suspected = (list(s.lost), list(fleet.replaced), _alerts(s))
        s.on_batch(_batch(0, seq=1, from_s=2, to_s=3, n=3))
        s.close_ready_windows()  # windows go on without the suspect
        windows_closed_s = s.closed_until_ns / S
        clock.now = noticed_at + lapse_s - 0.01
        early = await s.declare_lapsed()
        clock.now = noticed_at + lapse_s + 0.001
        declared = await s.declare_lapsed()
        return s, suspected, windows_closed_s, early, declared

    s, suspected, windows_closed_s, early, declared = asyncio.run(go())
    assert suspected == ([], [], []) and h.fleet.forgotten == [(1, 0)]  # killed at once, declared later
    assert windows_closed_s == 3.0
    assert (early, declared) == (False, True)
    ((hold_s, resume_ns),) = fleet.holds
    assert hold_s == 0.0  # declared after the lapse: the replacement sends at once
    lapsed_s = 3 + lapse_s
    assert resume_ns == pytest.approx(lapsed_s * S, abs=2e6)
    (loss,) = s.lost
    assert loss["at_s"] == pytest.approx(lapsed_s, abs=0.01)
    assert loss["missed_from_s"] == pytest.approx(lapsed_s, abs=0.002)
    assert loss["missed_until_s"] == round(resume_ns / 1e9, 3)
    # what it had planned until its lease lapsed may have gone out unreported; nothing after
    assert loss["lost_samples"] + loss["missed"] == planned_arrivals(h.plan.agents[1], 0, resume_ns) - 6
    assert loss["lost_samples"] > 0 and loss["missed"] <= 1  # missed: its arrivals in the last 1 ms
    assert next(a for a in _alerts(s) if a["kind"] == "agent_lost")["lost_samples"] == loss["lost_samples"]


def test_agents_lost_together_are_all_declared_before_any_replacement_is_placed(tmp_path, clock):
    """Placing a replacement may take long (a cut-off cluster): it must not delay the others' declaration."""
    order: list[str] = []

    class SlowFleet(CannedFleet):
        async def replace(self, spec, grace_s, hold_s=0.0, resume_ns=None):
            order.append(f"replace {spec.index}")
            return await super().replace(spec, grace_s, hold_s, resume_ns)

    h = Harness(tmp_path, agents=3, duration_s=10, fleet=SlowFleet())

    async def go():
        s = h.session()
        await s.start()
        s.now_ns = lambda: s.start_wall_ns + 3 * S
        s.progress = lambda line: order.append("LOST") if line.startswith("LOST") else None
        await s.on_agent_lost(AgentLost(index=0, incarnation=0, reason="silent"))
        await s.on_agent_lost(AgentLost(index=2, incarnation=0, reason="ray_error"))
        clock.now += HOLD_S
        assert await s.declare_lapsed()
        return s

    s = asyncio.run(go())
    assert order == ["LOST", "LOST", "replace 0", "replace 2"]
    assert [loss["agent"] for loss in s.lost] == [0, 2] and s.suspects == {}
    assert s.outcome is Outcome.PASSED


def test_run_declares_a_suspect_between_events_and_reads_its_replacement(tmp_path, clock, monkeypatch):
    """The drive loop declares a suspect when its lease lapses, while the stream is quiet, and
    reads the replacement's stream even when the lost agent's was the last one."""

    class ReplacingFleet(CannedFleet):
        def __init__(self) -> None:
            super().__init__(events=[AgentLost(index=0, incarnation=0, reason="silent")])

        async def replace(self, spec, grace_s, hold_s=0.0, resume_ns=None):
            info = await super().replace(spec, grace_s, hold_s, resume_ns)
            self._events = [_batch(0, inc=1, seq=0, from_s=0, to_s=3, n=9, final=True)]
            return info

    monkeypatch.setattr(losses, "replacement_hold_s", lambda flush_s: 0.05)
    clock.monotonic = time.monotonic  # real time: the loop waits for the lapse
    monkeypatch.setattr(losses, "time", time)
    h = Harness(tmp_path, agents=1, duration_s=3, fleet=ReplacingFleet())
    result = asyncio.run(run(h.loaded, h.plan, h.shape, h.fleet, h.options, h.target))
    b = read_bundle(result.bundle)
    assert h.fleet.replaced == [(0, 1)]
    assert [loss["agent"] for loss in b.summary["lost_agents"]] == [0]
    assert b.summary["total"]["requests"] == 9


def test_the_start_lead_is_short_on_this_machine_grows_with_the_agents_and_is_a_second_attached() -> None:
    one = start_lead_s("embedded", 1)
    assert one < 0.25  # the call that begins an agent reached it in 6 ms here (bench/first_request.py)
    assert one < start_lead_s("embedded", 8) < start_lead_s("embedded", 40)  # the calls go one after another
    assert start_lead_s("in-process", 10_000) == START_LEAD_S  # never past the attached lead
    assert start_lead_s("attached", 1) == START_LEAD_S == 1.0
