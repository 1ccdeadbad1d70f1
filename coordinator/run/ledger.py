"""Where every planned arrival went: sent, missed (a lost agent's) or unsent.

An open-model run plans a fixed set of arrivals (agents/arrivals.py, reproducible from the
plan). Each one ends up as exactly one of:

- sent: reported as a sample, interrupted (in flight when its agent gave up waiting), or
  lost: a lost agent's arrivals planned before its lease surely lapsed and not accounted
  for by its batches (in flight at its last report, due and unsent then, or due after
  it). It may have sent any of them, unreported; a killed agent sent fewer: lost is an
  upper bound of what went out unreported;
- missed: a lost agent's arrivals after its lease lapsed until its replacement resumed
  the schedule (or the end, when not replaced): never sent, since a fenced agent cannot;
- unsent: reported unsent by an agent (due when its run stopped, or skipped by a
  replacement that began after its resume point).

so that planned = sent + missed + unsent for a run that ran its course (a run stopped
early plans arrivals after the stop that nobody counts). Closed-model runs plan no
arrivals: their totals have `planned` and `missed` None.

Pure: the session feeds it decoded batches and the run times it chose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from horde.agents.arrivals import ConstantArrivals, PoissonArrivals
from horde.agents.spec import AgentSpec
from horde.agents.stages import Profile, users_for_agent

_CHUNK = 1 << 16


def planned_arrivals(spec: AgentSpec, from_ns: int = 0, until_ns: int | None = None) -> int:
    """The open-model arrivals of `spec`'s agent intended in [from_ns, until_ns) of the run
    (until None: to the end), drawn from the very schedule the agent follows."""
    import numpy as np

    profile = Profile(spec.start_level, spec.stages)
    if spec.arrivals != "poisson" and from_ns <= 0 and until_ns is None:
        return users_for_agent(int(profile.total), spec.index, spec.count)  # closed form
    sched: ConstantArrivals | PoissonArrivals
    if spec.arrivals == "poisson":
        sched = PoissonArrivals(profile, spec.index, spec.count, spec.seed)
    else:
        sched = ConstantArrivals(profile, spec.index, spec.count)
    if from_ns > 0:
        sched.skip_until(from_ns / 1e9)
    n = 0
    while True:
        t = sched.next_batch(_CHUNK)
        if len(t) == 0:
            return n
        if until_ns is None:
            n += len(t)
            continue
        # The agent compares these integer ns (traffic.py _peek) with its clock.
        k = int(np.searchsorted((np.asarray(t) * 1e9).astype(np.int64), until_ns, side="left"))
        n += k
        if k < len(t):
            return n


@dataclass
class _Incarnation:
    resumed_ns: int  # where its share of the schedule began (0, or the coordinator's resume point)
    reported: int = 0
    interrupted: int = 0
    unsent: int = 0
    last_report_ns: int = 0
    in_flight: int = 0  # what its latest batch said was in flight
    final: bool = False


class LoadLedger:
    def __init__(self, specs: list[AgentSpec], *, counts_arrivals: bool) -> None:
        """`counts_arrivals`: an open model with one sample per arrival (no flows)."""
        self._specs = {s.index: s for s in specs}
        self._open = counts_arrivals and all(s.model == "open" for s in specs)
        self._current = {s.index: _Incarnation(0) for s in specs}
        self.reported = self.interrupted = self.unsent = self.lost = self.missed = 0

    def batch(self, agent: int, samples: int, readings: Any, watermark_ns: int, final: bool) -> None:
        """A batch of the agent's current incarnation."""
        inc = self._current[agent]
        inc.reported += samples
        inc.interrupted += readings.interrupted
        inc.unsent += readings.unsent
        inc.last_report_ns = max(inc.last_report_ns, watermark_ns)
        inc.in_flight = readings.in_flight
        inc.final = inc.final or final
        self.reported += samples
        self.interrupted += readings.interrupted
        self.unsent += readings.unsent

    def last_report_ns(self, agent: int) -> int:
        inc = self._current[agent]
        return max(inc.last_report_ns, inc.resumed_ns)

    def lose(self, agent: int, resume_ns: int | None, lapsed_ns: int | None = None) -> dict:
        """The agent's current incarnation is lost; its replacement resumes the schedule at
        `resume_ns` (None: not replaced). `lapsed_ns`: the point of the run by which its lease
        had surely lapsed (its last acked batch's arrival + the term and margin; None: take
        its last report). Until then it may have sent what it had planned, unreported: those
        are `lost_samples` (an upper bound); its arrivals after that are `missed`.
        The loss record's accounting fields."""
        inc = self._current[agent]
        reported_until_ns = max(inc.last_report_ns, inc.resumed_ns)
        lapse_ns = reported_until_ns if lapsed_ns is None else max(reported_until_ns, lapsed_ns)
        if resume_ns is not None:
            lapse_ns = min(lapse_ns, max(resume_ns, reported_until_ns))
        # A final batch (a fenced agent's) counted its dropped requests as interrupted, and
        # the agent sends nothing after it.
        final = inc.final
        if final:
            lapse_ns = reported_until_ns
        lost = 0 if final else inc.in_flight
        record: dict = {
            "lost_samples": lost,
            "missed_from_s": round(lapse_ns / 1e9, 3),
            "missed_until_s": None if resume_ns is None else round(resume_ns / 1e9, 3),
            "missed": None,
        }
        if self._open:
            accounted = inc.reported + inc.interrupted + inc.unsent
            planned = planned_arrivals(self._specs[agent], inc.resumed_ns, resume_ns)
            if not final:
                # Everything planned before the lapse and not accounted for may have gone out
                # (its in-flight requests, its backlog, its sends after the last flush).
                may_have_sent = planned_arrivals(self._specs[agent], inc.resumed_ns, lapse_ns) - accounted
                lost = max(0, min(max(lost, may_have_sent), planned - accounted))
            missed = max(0, planned - accounted - lost)
            self.missed += missed
            record["missed"] = missed
            record["lost_samples"] = lost
        self.lost += lost
        if resume_ns is not None:
            self._current[agent] = _Incarnation(resume_ns)
        return record

    def totals(self) -> dict:
        """summary.json's `load`: planned = sent + missed + unsent (open model)."""
        planned = sum(planned_arrivals(s) for s in self._specs.values()) if self._open else None
        return {
            "planned": planned,
            "sent": self.reported + self.interrupted + self.lost,
            "reported": self.reported,
            "interrupted": self.interrupted,
            "lost": self.lost,
            "missed": self.missed if self._open else None,
            "unsent": self.unsent,
        }
