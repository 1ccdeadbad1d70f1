"""A run's CPU by phase (coordinator/run/cpu_phases.py): the phase arithmetic on canned
readings, the reading itself on real processes (one child burning CPU), and the summary of a
canned run carrying it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from horde.coordinator.run.cpu_phases import CpuPhases, HordeCpu
from horde.coordinator.run.session import run
from tests.coordinator.run.test_session import CannedFleet, Harness, _batch


class _Reader:
    """Canned whole-tree readings; own CPU and stop watches are not used by these cases."""

    def __init__(self, values):
        self._it = iter(values)

    def total(self, exclude_pid=None):
        return next(self._it), False

    def own(self):
        return 0.0

    def watch(self, exclude_pid=None):
        return None


def _reader(values):
    return _Reader(values)


@pytest.mark.parametrize(
    "marks, readings, requests, expected",
    [
        # every boundary reached: each phase is the difference of its two readings
        (
            ["started", "steady_end", "stopped"],
            [2.0, 2.5, 2.75],
            1000,
            {"startup_s": 2.0, "steady_s": 0.5, "per_request_us": 500.0, "shutdown_s": 0.25},
        ),
        # a run that ended before its agents began: only what was reached
        (["stopped"], [1.5], 0, {"startup_s": None, "steady_s": None, "per_request_us": None, "shutdown_s": None}),
        # no request sent: no per-request figure, the steady CPU still counts
        (["started", "steady_end"], [1.0, 1.25], 0, {"steady_s": 0.25, "per_request_us": None, "shutdown_s": None}),
    ],
)
def test_phases_are_differences_of_the_readings(marks, readings, requests, expected):
    cpu = CpuPhases(_reader(readings))
    for m in marks:
        cpu.mark(m)
    summary = cpu.summary(requests)
    assert {k: summary[k] for k in expected} == expected
    assert summary["scope"] == "coordinator"


def test_a_phase_marked_twice_keeps_its_first_reading_and_names_are_checked():
    cpu = CpuPhases(_reader([1.0, 9.0]))
    cpu.mark("started")
    cpu.mark("started")  # not read again
    assert cpu.readings == {"started": 1.0}
    with pytest.raises(ValueError, match="unknown CPU phase"):
        cpu.mark("warmup")


_BURN = (
    "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    "print('done', flush=True)\ntime.sleep(60)\n"
)


def test_reading_counts_a_live_child_unless_it_is_the_excluded_target():
    child = subprocess.Popen([sys.executable, "-c", _BURN], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "done"
        read = HordeCpu()
        without, _ = HordeCpu().total(exclude_pid=child.pid)
        with_child, counted = read.total(None)
        assert counted
        assert with_child - without >= 0.25  # the child's own 0.3 s of CPU (less clock granularity)
        child.kill()
        child.wait()  # reaped: its CPU is in this process's children times now
        after, _ = read.total(None)
        assert after >= with_child  # readings never go down
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_canned_run_reports_its_cpu_in_the_summary(tmp_path):
    h = Harness(tmp_path, duration_s=1)
    h.fleet = CannedFleet([_batch(0, from_s=0, to_s=1, n=4, final=True)])
    released = []
    t0 = time.process_time()
    result = asyncio.run(
        run(h.loaded, h.plan, h.shape, h.fleet, h.options, h.target, release=lambda: released.append(True))
    )
    cpu = result.summary["cpu"]
    assert released == [True]
    assert set(cpu) == {"startup_s", "steady_s", "per_request_us", "shutdown_s", "analyses_s", "scope"}
    assert cpu["startup_s"] >= t0 - 0.001 > 0  # all of this process's CPU up to the start instant
    assert all(cpu[k] is not None and cpu[k] >= 0 for k in ("steady_s", "shutdown_s", "analyses_s"))


def test_a_stop_is_watched_while_the_stopped_process_burns_cpu_and_exits():
    cpu = CpuPhases()
    cpu.mark("started")
    cpu.mark("steady_end")  # the stop watch starts here
    child = subprocess.Popen([sys.executable, "-c", _BURN], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "done"
    time.sleep(0.2)  # sampled at least once after its burn
    child.kill()
    child.wait()
    cpu.mark("stopped")
    cpu.mark("analysed")
    summary = cpu.summary(10)
    assert summary["shutdown_s"] >= 0.25  # the child's 0.3 s, though it is gone
    assert summary["analyses_s"] is not None and summary["analyses_s"] >= 0
