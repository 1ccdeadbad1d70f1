"""horde.agents.probe.ProcessProbe: the agent's own readings, read directly, are psutil's."""

from __future__ import annotations

import os

import psutil

from horde.agents.probe import ProcessProbe


def test_own_readings_are_psutils() -> None:
    probe = ProcessProbe()
    proc = psutil.Process()
    sum(i * i for i in range(300_000))  # some CPU time to read
    for _ in range(20):
        t = proc.cpu_times()
        cpu_s, rss = probe.read()
        mem = proc.memory_info().rss
        t2 = proc.cpu_times()
        # The same counters: between two psutil reads taken around it (a tick may pass).
        assert t.user + t.system <= cpu_s <= t2.user + t2.system
        assert cpu_s > 0
        assert abs(rss - mem) <= 1 << 20


def test_another_process_is_read_through_psutil() -> None:
    parent = os.getppid()
    cpu_s, rss = ProcessProbe(parent).read()
    t = psutil.Process(parent).cpu_times()
    assert 0 <= cpu_s <= t.user + t.system and rss > 0
