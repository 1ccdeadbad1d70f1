"""Every planned arrival accounted for: planned = sent + missed + unsent (run/ledger.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from horde.agents.spec import AgentSpec, RequestTemplate, Stage
from horde.coordinator.run.ledger import LoadLedger, planned_arrivals

S = 1_000_000_000


def _specs(count: int = 2, arrivals: str = "constant") -> list[AgentSpec]:
    # 10/s for 5 s: global arrival j at j/10 s; agent i gets j = i+1, i+1+count, ...
    return [
        AgentSpec(
            index=i,
            count=count,
            incarnation=0,
            model="open",
            arrivals=arrivals,
            start_level=10.0,
            stages=(Stage(5.0, 10.0, "hold"),),
            requests=(RequestTemplate("ok", "GET", "http://127.0.0.1:1/ok"),),
            weights=(1.0,),
            seed=3,
        )
        for i in range(count)
    ]


def _readings(in_flight: int = 0, interrupted: int = 0, unsent: int = 0) -> SimpleNamespace:
    return SimpleNamespace(in_flight=in_flight, interrupted=interrupted, unsent=unsent)


def test_planned_arrivals_counts_the_agents_own_schedule():
    a0, a1 = _specs()
    assert planned_arrivals(a0) == planned_arrivals(a1) == 25
    assert planned_arrivals(a1, 0, int(2.05 * S)) == 10  # 0.2, 0.4, ..., 2.0
    assert planned_arrivals(a1, int(2.05 * S)) == 15  # 2.2 ... 5.0
    assert planned_arrivals(a1, int(1.0 * S), int(2.0 * S)) == 5  # [1.0, 2.0): 1.0 ... 1.8
    p = _specs(1, "poisson")[0]
    whole = planned_arrivals(p)
    assert planned_arrivals(p, 0, int(2.5 * S)) + planned_arrivals(p, int(2.5 * S)) == whole


def test_a_lost_agent_s_arrivals_are_missed_or_lost_and_the_identity_holds():
    ledger = LoadLedger(_specs(), counts_arrivals=True)
    ledger.batch(0, 25, _readings(), 5 * S, final=True)
    # agent 1 reported 4 samples by 1.0 s with one request in flight, then was lost;
    # its replacement resumed the schedule at 2.05 s
    ledger.batch(1, 4, _readings(in_flight=1), 1 * S, final=False)
    assert ledger.last_report_ns(1) == 1 * S
    loss = ledger.lose(1, int(2.05 * S))
    assert loss == {"lost_samples": 1, "missed_from_s": 1.0, "missed_until_s": 2.05, "missed": 10 - 4 - 1}
    assert ledger.last_report_ns(1) == int(2.05 * S)  # the replacement's, before its first batch
    ledger.batch(1, 14, _readings(unsent=1), 5 * S, final=True)  # 15 planned from 2.05 s
    totals = ledger.totals()
    assert totals == {
        "planned": 50,
        "sent": 25 + 4 + 1 + 14,
        "reported": 43,
        "interrupted": 0,
        "lost": 1,
        "missed": 5,
        "unsent": 1,
    }
    assert totals["planned"] == totals["sent"] + totals["missed"] + totals["unsent"]


def test_what_a_lost_agent_had_planned_until_its_lease_lapsed_is_lost_and_the_rest_missed():
    ledger = LoadLedger(_specs(), counts_arrivals=True)
    ledger.batch(0, 25, _readings(), 5 * S, final=True)
    # agent 1 reported 4 samples by 1.0 s (one in flight); its lease surely lapsed at 1.5 s:
    # up to then it may have sent 0.2 ... 1.4 (7 planned), after it nothing: 1.6 ... 2.0 missed
    ledger.batch(1, 4, _readings(in_flight=1), 1 * S, final=False)
    loss = ledger.lose(1, int(2.05 * S), lapsed_ns=int(1.5 * S))
    assert loss == {"lost_samples": 7 - 4, "missed_from_s": 1.5, "missed_until_s": 2.05, "missed": 3}
    ledger.batch(1, 15, _readings(), 5 * S, final=True)
    t = ledger.totals()
    assert (t["lost"], t["missed"], t["sent"]) == (3, 3, 25 + 4 + 3 + 15)
    assert t["planned"] == t["sent"] + t["missed"] + t["unsent"] == 50


@pytest.mark.parametrize(
    "lapsed_s, resume_s, lost, missed",
    [
        # 3 reported by 1.0 s, of 0.2 ... 0.8 planned: the 4th was in flight
        (0.5, 2.05, 1, 6),  # a lapse before its last report counts from the report: its in-flight one
        (3.0, 2.05, 7, 0),  # a lapse after the replacement's resume point stops there (10 planned)
        (3.0, None, 11, 11),  # not replaced: lost up to the lapse (0.2 ... 2.8: 14 - 3), missed after
    ],
)
def test_the_lapse_is_bounded_by_the_last_report_and_the_resume_point(lapsed_s, resume_s, lost, missed):
    ledger = LoadLedger(_specs(), counts_arrivals=True)
    ledger.batch(1, 3, _readings(in_flight=1), 1 * S, final=False)
    resume_ns = None if resume_s is None else int(resume_s * S)
    loss = ledger.lose(1, resume_ns, lapsed_ns=int(lapsed_s * S))
    assert (loss["lost_samples"], loss["missed"]) == (lost, missed)
    planned = planned_arrivals(_specs()[1], 0, resume_ns)
    assert 3 + loss["lost_samples"] + loss["missed"] == planned


def test_an_unreplaced_loss_misses_to_the_end_and_a_fenced_agents_final_batch_loses_nothing():
    ledger = LoadLedger(_specs(), counts_arrivals=True)
    # a fenced agent's final batch: its dropped requests are interrupted, not lost
    ledger.batch(0, 10, _readings(in_flight=3, interrupted=2, unsent=1), int(2.5 * S), final=True)
    loss = ledger.lose(0, None)
    assert loss["lost_samples"] == 0 and loss["missed_until_s"] is None
    assert loss["missed"] == 25 - 10 - 2 - 1
    ledger.batch(1, 25, _readings(), 5 * S, final=True)
    t = ledger.totals()
    assert t["planned"] == t["sent"] + t["missed"] + t["unsent"] == 50


@pytest.mark.parametrize("model", ["closed", "flows"])
def test_without_a_fixed_arrival_count_nothing_is_planned_or_missed(model):
    specs = _specs()
    if model == "closed":
        import dataclasses

        specs = [dataclasses.replace(s, model="closed") for s in specs]
    ledger = LoadLedger(specs, counts_arrivals=model != "flows")
    ledger.batch(0, 7, _readings(in_flight=2), 1 * S, final=False)
    loss = ledger.lose(0, 2 * S)
    assert loss["missed"] is None and loss["lost_samples"] == 2
    t = ledger.totals()
    assert t["planned"] is None and t["missed"] is None and t["sent"] == 9
