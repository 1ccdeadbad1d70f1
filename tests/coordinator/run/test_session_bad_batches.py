"""A bad batch in a run: an alert and a count, never the end of the run (canned fleet, no Ray).

The harness is test_session.py's: real wire batches through RunSession's steps.
"""

from __future__ import annotations

import asyncio

import msgpack
import numpy as np

from horde.agents.samples import SAMPLE_DTYPE
from horde.cluster.events import AgentEnded, BatchReceived
from horde.coordinator.bundle.outcome import Outcome
from horde.coordinator.bundle.store import read_bundle
from horde.coordinator.measure.batch_check import FAULTY_AFTER
from horde.coordinator.run.session import run
from tests.coordinator.run.test_session import CannedFleet, Harness, _batch


def _mutated(ev: BatchReceived, **changes) -> BatchReceived:
    """The same batch with header fields changed, or with one sample's field changed (`sample_<name>`)."""
    m = msgpack.unpackb(ev.payload, raw=False)
    for key, value in changes.items():
        if key.startswith("sample_"):
            s = np.frombuffer(m["rec"], dtype=SAMPLE_DTYPE).copy()
            s[key.removeprefix("sample_")][0] = value
            m["rec"] = s.tobytes()
        else:
            m[key] = value
    return BatchReceived(index=ev.index, payload=msgpack.packb(m, use_bin_type=True))


def _run(h: Harness, events: list) -> tuple:
    h.fleet = CannedFleet(events)
    result = asyncio.run(run(h.loaded, h.plan, h.shape, h.fleet, h.options, h.target))
    return result, read_bundle(result.bundle)


def test_a_bad_batch_among_good_ones_is_an_alert_and_the_run_completes(tmp_path):
    h = Harness(tmp_path, agents=2, duration_s=3)
    events = [
        _batch(0, seq=0, from_s=0, to_s=1, n=10),
        _batch(1, seq=0, from_s=0, to_s=1, n=10),
        # The batch: one sent_ns of 2^62 (it used to ask for a 344 GiB array).
        _mutated(_batch(1, seq=1, from_s=1, to_s=2, n=10), sample_sent_ns=2**62),
        _batch(0, seq=1, from_s=1, to_s=2, n=10),
        _batch(1, seq=2, from_s=1, to_s=2, n=7),
        _batch(1, seq=2, from_s=1, to_s=2, n=7),  # a duplicate: dropped quietly
        _batch(0, seq=2, from_s=2, to_s=3, n=10, final=True),
        _batch(1, seq=3, from_s=2, to_s=3, n=10, final=True),
        AgentEnded(index=0, incarnation=0),
        AgentEnded(index=1, incarnation=0),
    ]
    result, b = _run(h, events)
    assert result.outcome is Outcome.PASSED
    assert b.manifest["complete"] is True and b.manifest["outcome"] == "passed"
    assert b.summary["total"]["requests"] == 30 + 10 + 7 + 10  # every good sample, the bad batch's none
    assert sum(w["total"]["requests"] for w in b.windows()) == 57
    bad = [a for a in b.alerts() if a.kind == "bad_batch"]
    assert [(a.agent, a.incarnation) for a in bad] == [(1, 0)]
    assert "'sent_ns'" in (bad[0].detail or "")  # the reason names the field
    assert b.summary["generator"]["bad_batches"] == 1
    assert [a["kind"] for a in b.summary["alerts"]] == ["bad_batch"]
    assert b.summary["lost_agents"] == []  # one bad batch is not a fault
    assert any("BAD BATCH from agent 1" in line for line in h.lines)


def test_an_agent_that_keeps_sending_bad_batches_is_faulty_lost_and_replaced(tmp_path):
    h = Harness(tmp_path, agents=2, duration_s=3)
    events = [
        _batch(0, seq=0, from_s=0, to_s=1, n=10),
        _batch(1, seq=0, from_s=0, to_s=1, n=10),
        _mutated(_batch(1, seq=1, from_s=1, to_s=2, n=5), agent=0),  # claims another agent's id
        BatchReceived(index=1, payload=b"\xc1 garbage"),
        _mutated(_batch(1, seq=2, from_s=1, to_s=2, n=5), sample_endpoint=9),  # no endpoint 9
        _batch(1, seq=3, from_s=1, to_s=2, n=5),  # good, but from an agent already declared faulty
        _batch(0, seq=1, from_s=1, to_s=2, n=10),
        _batch(1, inc=1, seq=0, from_s=1, to_s=2, n=4),  # the replacement
        _batch(0, seq=2, from_s=2, to_s=3, n=10, final=True),
        _batch(1, inc=1, seq=1, from_s=2, to_s=3, n=6, final=True),
        AgentEnded(index=0, incarnation=0),
        AgentEnded(index=1, incarnation=1),
    ]
    result, b = _run(h, events)
    assert b.manifest["complete"] is True
    assert result.outcome is Outcome.PASSED
    assert h.fleet.replaced == [(1, 1)]
    assert (1, 0) in h.fleet.forgotten  # the faulty agent is stopped
    bad = [a for a in b.alerts() if a.kind == "bad_batch"]
    assert len(bad) == FAULTY_AFTER and {a.agent for a in bad} == {1}
    assert [d.split(":")[0] for d in (a.detail or "" for a in bad)] == [
        "batch field 'agent'",
        "not a msgpack batch",
        "sample field 'endpoint'",
    ]
    lost = b.summary["lost_agents"]
    assert [(x["agent"], x["incarnation"], x["reason"], x["replaced"]) for x in lost] == [(1, 0, "faulty", True)]
    assert b.summary["generator"]["bad_batches"] == FAULTY_AFTER
    # agent 0's 30, agent 1's first 10, its replacement's 10; nothing of the faulty agent after its fault
    assert b.summary["total"]["requests"] == 30 + 10 + 10
