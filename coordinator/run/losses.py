"""A run's losses: bad batches, lost agents, and their replacements.

The steps RunSession.on_bad_batch and RunSession.on_agent_lost hand their work to, over the
session's attributes: the loss record (run/summary.py), fencing in the ledger, and a
replacement that holds its first send until the lost agent's lease has lapsed (agents/lease.py).
"""

from __future__ import annotations

import dataclasses
import time
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


async def lose_agent(session: RunSession, ev: AgentLost) -> bool:
    """Record a lost agent and start its replacement (while the run has time left).
    False when the loss is of an agent already replaced."""
    if ev.incarnation != session.incarnations.get(ev.index):
        return False
    now_s = (session.now_ns() - session.start_wall_ns) / 1e9
    # The ledger keeps the last report also past a final batch (a fenced agent sends one).
    last_s = max(session.watermarks.pop(ev.index, 0), session.ledger.last_report_ns(ev.index), 0) / 1e9
    session.fleet.forget(ev.index, ev.incarnation)
    node = next(
        (a.node for a in reversed(session.fleet.agents) if a.index == ev.index and a.incarnation == ev.incarnation),
        None,
    )
    loss = loss_record(ev, now_s, last_s, session.plan.count, node)
    session.lost.append(loss)
    session.progress(f"LOST agent {ev.index}.{ev.incarnation} at {now_s:.1f}s: {ev.reason} {ev.detail}")
    if not session.stop_event.is_set() and now_s < session.plan.duration_s:
        await _replace(session, ev, loss)
    else:
        loss["replaced"] = False
        loss.update(session.ledger.lose(ev.index, None))
        session.writer.append_alert(loss)
    return True


async def _replace(session: RunSession, ev: AgentLost, loss: dict) -> None:
    new = dataclasses.replace(session.specs[ev.index], incarnation=ev.incarnation + 1)
    hold_s = _replacement_hold_s(session, ev)
    resume_ns = session.now_ns() - session.start_wall_ns + int(hold_s * 1e9)
    try:
        info = await session.fleet.replace(new, grace_s=session.silence_s, hold_s=hold_s, resume_ns=resume_ns)
    except Exception as exc:  # PlacementError, or the cluster is going away
        loss["replaced"] = False
        loss.update(session.ledger.lose(ev.index, None))
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
        **session.ledger.lose(ev.index, resume_ns),
    )
    session.restoring[ev.index] = loss
    session.writer.append_alert(loss)
    session.progress(f"agent {ev.index} replaced (incarnation {new.incarnation}) on node {info.node[:12]}")


def _replacement_hold_s(session: RunSession, ev: AgentLost) -> float:
    """How long the replacement of a lost agent must wait before it sends: until the
    lost agent's lease has certainly lapsed (agents/lease.py). Its lease ends at most a
    term after it sent the last batch we received; no batch: a term after now at most."""
    hold_s = replacement_hold_s(session.specs[ev.index].flush_interval_s)
    last_batch_at = getattr(session.fleet, "last_batch_at", None)
    at = last_batch_at(ev.index, ev.incarnation) if last_batch_at is not None else None
    return hold_s if at is None else max(0.0, at + hold_s - time.monotonic())
