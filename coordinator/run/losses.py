"""A run's losses: bad batches, lost agents, and their replacements.

The steps RunSession.on_bad_batch and RunSession.on_agent_lost hand their work to, over the
session's attributes: the loss record (run/summary.py), fencing in the ledger, and a
replacement that holds its first send until the lost agent's lease has lapsed (agents/lease.py).
An agent reported lost is a suspect until its lease has surely lapsed; only then is it
declared (RunSession.declare_lapsed, from the drive loop's timer): two incarnations never send
at once, and the record counts what the lost one may have sent until then.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from horde.agents.lease import replacement_hold_s
from horde.agents.samples import BatchFormatError
from horde.cluster.events import AgentLost
from horde.coordinator.measure.health import AgentTotals
from horde.coordinator.run.summary import agent_label, loss_record

if TYPE_CHECKING:
    from horde.coordinator.run.session import RunSession


def note_bad_batch(session: RunSession, index: int, exc: BatchFormatError) -> None:
    """Alert and count a batch that failed its checks; mark its incarnation faulty after a few."""
    inc = session.incarnations.get(index)  # the fan-in names the stream's agent; its current incarnation sent it
    at_s = round((session.now_ns() - session.start_wall_ns) / 1e9, 3)
    record, faulty = session.bad_batches.add(index, inc, at_s, exc)
    if record is not None:
        session.writer.append_alert(record)
        session.windows.alerts_log.append(record)
        session.progress(f"BAD BATCH from agent {index} (incarnation {inc}): {exc}")
    if faulty and inc is not None:
        why = f"{session.bad_batches.faulty_after} bad batches; the last: {exc}"
        session.faulty.append(AgentLost(index, inc, "faulty", why))


@dataclass
class Suspect:
    """An agent the fan-in reported lost, not declared until its lease has surely lapsed."""

    ev: AgentLost
    lapse_at_s: float  # time.monotonic() by which its lease has surely lapsed
    last_s: float  # its last report, seconds into the run


def suspect_agent(session: RunSession, ev: AgentLost) -> bool:
    """The fan-in reports an agent lost (silent, hung, dead, faulty): windows close without
    it from now on and its actor is killed (it may be only frozen), but it is declared lost
    (record, alert, live view, replacement) only once its lease has surely lapsed
    (declare_lapsed): until then it may still be sending. A Ray error that proves it dead
    waits the same way: simpler, and safe. False when stale or already suspected."""
    if ev.incarnation != session.incarnations.get(ev.index) or ev.index in session.suspects:
        return False
    # The ledger keeps the last report also past a final batch (a fenced agent sends one).
    last_s = max(session.watermarks.pop(ev.index, 0), session.ledger.last_report_ns(ev.index), 0) / 1e9
    session.fleet.forget(ev.index, ev.incarnation)
    lapse_at_s = _lease_lapsed_at(session, ev)
    session.suspects[ev.index] = Suspect(ev, lapse_at_s, last_s)
    wait_s = max(0.0, lapse_at_s - time.monotonic())
    session.progress(
        f"agent {ev.index}.{ev.incarnation} suspected ({ev.reason}): declared lost when its lease lapses,"
        f" in {wait_s:.1f}s"
    )
    return True


def next_lapse_in_s(session: RunSession) -> float | None:
    """Seconds until the next suspect's lease has surely lapsed (None: no suspect)."""
    if not session.suspects:
        return None
    return max(0.0, min(s.lapse_at_s for s in session.suspects.values()) - time.monotonic())


async def declare_lapsed(session: RunSession, now_index: int | None = None) -> bool:
    """Declare lost every suspect whose lease has surely lapsed (and agent `now_index` at once:
    its replacement is held until its lease lapses), all of them before the first
    replacement is placed (placing one may take long: a cut-off cluster), then replace them
    while the run has time left. False when none was due."""
    now = time.monotonic()
    due = [s for s in session.suspects.values() if s.lapse_at_s <= now or s.ev.index == now_index]
    for s in due:
        del session.suspects[s.ev.index]
    declared = [(s, _declare(session, s)) for s in due]
    for s, loss in declared:
        # The run's time, read after each placement: a slow one may have used it up.
        now_s = (session.now_ns() - session.start_wall_ns) / 1e9
        if not session.stop_event.is_set() and now_s < session.plan.duration_s:
            await _replace(session, s, loss)
        else:
            loss["replaced"] = False
            loss.update(session.ledger.lose(s.ev.index, None, _run_ns(session, s.lapse_at_s)))
            session.writer.append_alert(loss)
    return bool(due)


def _declare(session: RunSession, s: Suspect) -> dict:
    ev = s.ev
    now_s = (session.now_ns() - session.start_wall_ns) / 1e9
    node = next(
        (a.node for a in reversed(session.fleet.agents) if a.index == ev.index and a.incarnation == ev.incarnation),
        None,
    )
    loss = loss_record(ev, now_s, s.last_s, session.plan.count, node)
    session.lost.append(loss)
    session.progress(f"LOST agent {ev.index}.{ev.incarnation} at {now_s:.1f}s: {ev.reason} {ev.detail}")
    return loss


async def _replace(session: RunSession, s: Suspect, loss: dict) -> None:
    ev = s.ev
    new = dataclasses.replace(session.specs[ev.index], incarnation=ev.incarnation + 1)
    hold_s = max(0.0, s.lapse_at_s - time.monotonic())  # declared after the lapse: ~0
    resume_ns = session.now_ns() - session.start_wall_ns + int(hold_s * 1e9)
    lapsed_ns = _run_ns(session, s.lapse_at_s)
    try:
        info = await session.fleet.replace(new, grace_s=session.silence_s, hold_s=hold_s, resume_ns=resume_ns)
    except Exception as exc:  # PlacementError, or the cluster is going away
        loss["replaced"] = False
        loss.update(session.ledger.lose(ev.index, None, lapsed_ns))
        session.writer.append_alert(loss)
        session.progress(f"ABORT: agent {ev.index} cannot be replaced: {exc}")
        session.on_abort(f"lost agent {ev.index} could not be replaced: {exc}")
        return
    session.incarnations[ev.index] = new.incarnation
    session.watermarks[ev.index] = session.closed_until_ns
    session.totals[agent_label(ev.index, new.incarnation)] = AgentTotals(
        began_ns=session.now_ns() - session.start_wall_ns
    )
    loss.update(
        replaced=True,
        replacement_incarnation=new.incarnation,
        replaced_at_s=round((session.now_ns() - session.start_wall_ns) / 1e9, 3),
        replacement_node=info.node,
        **session.ledger.lose(ev.index, resume_ns, lapsed_ns),
    )
    session.restoring[ev.index] = loss
    session.writer.append_alert(loss)
    session.progress(f"agent {ev.index} replaced (incarnation {new.incarnation}) on node {info.node[:12]}")


def _lease_lapsed_at(session: RunSession, ev: AgentLost) -> float:
    """time.monotonic() by which the agent's lease has surely lapsed (agents/lease.py): it
    ends at most a term after it sent the last batch we received (+ margin); no batch: a
    term after now at most."""
    hold_s = replacement_hold_s(session.specs[ev.index].flush_interval_s)
    last_batch_at = getattr(session.fleet, "last_batch_at", None)
    at = last_batch_at(ev.index, ev.incarnation) if last_batch_at is not None else None
    return (time.monotonic() if at is None else at) + hold_s


def _run_ns(session: RunSession, at_s: float) -> int:
    """A time.monotonic() reading as nanoseconds into the run (the session's clock)."""
    return session.now_ns() - session.start_wall_ns - int((time.monotonic() - at_s) * 1e9)
