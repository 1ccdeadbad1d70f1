"""Runs survive lost agents: a killed agent process, a frozen one (SIGSTOP)."""

from __future__ import annotations

import json
import math
import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from horde.coordinator.bundle.outcome import Outcome
from horde.coordinator.bundle.store import read_bundle
from horde.coordinator.run.session import RunOptions, run_scenario
from horde.coordinator.scenario.load import load_scenario

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RATE = 100
DURATION_S = 14


def _scenario(tmp_path: Path) -> Path:
    p = tmp_path / "loss.yaml"
    p.write_text(
        textwrap.dedent(f"""
        name: loss
        target: embedded
        requests:
          - {{name: health, path: /health, expect: [200]}}
        workload:
          model: open
          start: {RATE}
          stages: [{{duration: {DURATION_S}s, target: {RATE}}}]
        agents: 1
    """)
    )
    return p


def _agent_pid(out: Path, deadline_s: float = 60) -> int:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        for mf in out.glob("*.incomplete/manifest.json"):
            try:
                agents = json.loads(mf.read_text()).get("agents")
            except json.JSONDecodeError:
                continue
            if agents:
                return agents[0]["pid"]
        time.sleep(0.2)
    raise AssertionError("the run never recorded its agents")


def _run_and_hit(tmp_path: Path, hit) -> tuple:
    out = tmp_path / "out"
    loaded = load_scenario(_scenario(tmp_path))
    result: dict = {}

    def target():
        result["r"] = run_scenario(
            loaded, RunOptions(out_dir=str(out), install_signal_handlers=False, progress=lambda line: None)
        )

    th = threading.Thread(target=target)
    th.start()
    pid = _agent_pid(out)
    time.sleep(4.0)  # ~3 s into the run (1 s start lead)
    hit(pid)
    th.join(timeout=120)
    assert not th.is_alive()
    return result["r"], pid


def _check_restored(r, *, max_detect_s: float) -> dict:
    b = read_bundle(r.bundle)
    assert r.outcome is Outcome.PASSED, b.summary["stop_reason"]
    lost = b.summary["lost_agents"]
    assert len(lost) == 1, lost
    loss = lost[0]
    assert loss["replaced"] is True and loss["replacement_incarnation"] == 1
    assert loss["at_s"] - loss["last_batch_s"] <= max_detect_s
    assert "restored_at_s" in loss
    windows = {w["index"]: w for w in b.windows()}
    first_full = math.ceil(loss["restored_at_s"]) + 1
    after = [windows[i]["total"]["requests"] for i in range(first_full, DURATION_S) if i in windows]
    assert len(after) >= 3, (loss, sorted(windows))
    for n in after:
        assert abs(n - RATE) <= 0.1 * RATE, (after, loss)
    # nothing counted twice: what horde counts was served; what it misses is the lost
    # agent's last unreported flush interval (samples that died with it)
    served = b.manifest["target"]["served"]["total"]
    assert b.summary["total"]["requests"] <= served <= b.summary["total"]["requests"] + 1.5 * RATE
    assert loss["windows_affected"][0] <= int(loss["last_batch_s"])
    assert any(a["kind"] == "agent_lost" for a in b.alerts())
    return loss


@pytest.mark.timeout(240)
def test_agent_killed_by_pid_is_replaced_and_load_restored(ray_cluster, tmp_path):
    r, pid = _run_and_hit(tmp_path, lambda pid: os.kill(pid, signal.SIGKILL))
    loss = _check_restored(r, max_detect_s=2.5)
    assert loss["reason"] == "actor_died"


@pytest.mark.timeout(240)
def test_frozen_agent_is_noticed_by_the_watchdog(ray_cluster, tmp_path):
    frozen: list[int] = []

    def freeze(pid: int) -> None:
        os.kill(pid, signal.SIGSTOP)
        frozen.append(pid)

    try:
        r, pid = _run_and_hit(tmp_path, freeze)
        loss = _check_restored(r, max_detect_s=3.0)
        assert loss["reason"] == "silent"
        # the frozen agent was killed, not left to wake up and send load
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        for p in frozen:  # never leave a stopped process behind
            try:
                os.kill(p, signal.SIGCONT)
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
