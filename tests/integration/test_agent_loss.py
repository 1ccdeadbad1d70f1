"""Runs survive lost agents: a killed agent process, a frozen one (SIGSTOP); a frozen agent
that thaws after its replacement started sends nothing (its lease lapsed), and every
planned arrival is accounted for: planned = sent + missed + unsent."""

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

from horde.agents.lease import replacement_hold_s
from horde.coordinator.bundle.outcome import Outcome
from horde.coordinator.bundle.store import read_bundle
from horde.coordinator.run.session import RunOptions, run_scenario
from horde.coordinator.scenario.load import load_scenario

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RATE = 100
DURATION_S = 14


def _scenario(tmp_path: Path, target: str = "embedded") -> Path:
    p = tmp_path / "loss.yaml"
    p.write_text(
        textwrap.dedent(f"""
        name: loss
        target: {target}
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


def _agent_pid(out: Path, deadline_s: float = 60) -> tuple[int, int]:
    """The agent's pid and the run's common start instant (wall ns), once the run recorded both."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        for mf in out.glob("*.incomplete/manifest.json"):
            try:
                manifest = json.loads(mf.read_text())
            except json.JSONDecodeError:
                continue
            if manifest.get("agents") and manifest.get("start_wall_ns"):
                return manifest["agents"][0]["pid"], manifest["start_wall_ns"]
        time.sleep(0.05)
    raise AssertionError("the run never recorded its agents and start instant")


def _run_and_hit(tmp_path: Path, hit, target: str = "embedded") -> tuple:
    out = tmp_path / "out"
    loaded = load_scenario(_scenario(tmp_path, target))
    result: dict = {}

    def target():
        result["r"] = run_scenario(
            loaded, RunOptions(out_dir=str(out), install_signal_handlers=False, progress=lambda line: None)
        )

    th = threading.Thread(target=target)
    th.start()
    pid, start_wall_ns = _agent_pid(out)
    time.sleep(max(0.0, (start_wall_ns - time.time_ns()) / 1e9 + 3.0))  # 3 s into the run
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
    # declared once its lease had surely lapsed (its last batch's arrival + the hold), and no
    # later than detection allows (the flush interval is 1 s)
    hold_s = replacement_hold_s(1.0)
    assert hold_s - 0.2 <= loss["at_s"] - loss["last_batch_s"] <= hold_s + max_detect_s
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
    assert served <= b.summary["total"]["requests"] + loss["lost_samples"]  # lost_samples bounds it
    assert loss["windows_affected"][0] <= int(loss["last_batch_s"])
    assert any(a["kind"] == "agent_lost" for a in b.alerts())
    _check_accounting(b, loss)
    return loss


def _check_accounting(b, loss: dict) -> None:
    """planned = sent + missed + unsent, and the loss carries its share of it."""
    load = b.summary["load"]
    assert load["planned"] == RATE * DURATION_S
    assert load["planned"] == load["sent"] + load["missed"] + load["unsent"], load
    assert load["sent"] == load["reported"] + load["interrupted"] + load["lost"]
    assert load["reported"] == b.summary["total"]["requests"]
    # lost: what it had planned until its lease lapsed (it may have sent it); missed: after that
    assert load["lost"] == loss["lost_samples"] > 0 and load["missed"] >= loss["missed"] >= 0
    # the replacement resumed the schedule no earlier than the lost agent's lease allowed
    assert loss["missed_until_s"] >= loss["last_batch_s"] + 4.0


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


class _CountingTarget:
    """A local HTTP target on its own thread: the time.monotonic_ns() of every arrival."""

    def __init__(self) -> None:
        self.arrivals: list[int] = []
        self._ready = threading.Event()
        self._loop = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _main(self) -> None:
        import asyncio

        from aiohttp import web

        async def health(request: web.Request) -> web.Response:
            self.arrivals.append(time.monotonic_ns())
            return web.Response(text="ok")

        async def serve() -> None:
            app = web.Application()
            app.router.add_get("/health", health)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]  # started
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(serve())
        self._loop.close()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)  # type: ignore[union-attr]  # running
        self._thread.join(10)


def _replacement_started(out: Path, deadline_s: float = 60) -> dict:
    """The agent_lost record of the running bundle, once its replacement resumed sending."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        for f in out.glob("*.incomplete/alerts.jsonl"):
            for line in f.read_text().splitlines():
                rec = json.loads(line)
                if rec.get("kind") == "agent_lost" and rec.get("replaced"):
                    return rec
        time.sleep(0.1)
    raise AssertionError("the frozen agent was never replaced")


@pytest.mark.timeout(240)
def test_a_frozen_agent_that_thaws_after_its_replacement_sends_nothing(ray_cluster, tmp_path, monkeypatch):
    """Ray's kill of the lost actor is switched off: only the agent's own lease stops it."""
    from horde.cluster import fleet as fleet_module

    real_kill = fleet_module._kill
    spared: list = []
    monkeypatch.setattr(fleet_module, "_kill", spared.append)
    target = _CountingTarget()
    thawed: dict = {}

    def freeze_then_thaw(pid: int) -> None:
        os.kill(pid, signal.SIGSTOP)
        try:
            rec = _replacement_started(tmp_path / "out")
            (mf,) = (tmp_path / "out").glob("*.incomplete/manifest.json")
            start_wall_ns = json.loads(mf.read_text())["start_wall_ns"]
            # thaw once the replacement sends (its hold outlasts the frozen agent's lease)
            resumed_wall_ns = start_wall_ns + int(rec["missed_until_s"] * 1e9)
            time.sleep(max(0.0, (resumed_wall_ns - time.time_ns()) / 1e9) + 1.0)
        finally:
            thawed["at_ns"] = time.monotonic_ns()
            os.kill(pid, signal.SIGCONT)

    try:
        r, pid = _run_and_hit(tmp_path, freeze_then_thaw, target=target.url)
    finally:
        target.close()
        for actor in spared:
            real_kill(actor)
    b = read_bundle(r.bundle)
    assert r.outcome is Outcome.PASSED, b.summary["stop_reason"]
    (loss,) = b.summary["lost_agents"]
    assert loss["reason"] == "silent" and loss["replaced"] is True
    _check_accounting(b, loss)
    # A thawed agent without fencing sends every arrival due while it was frozen at once
    # (~100 per frozen second) and then its share on top of the replacement's. With the
    # lease, each second after the thaw carries only the replacement's 100/s.
    t0 = thawed["at_ns"]
    per_s = [sum(1 for t in target.arrivals if t0 + k * 10**9 <= t < t0 + (k + 1) * 10**9) for k in range(3)]
    assert max(per_s) <= 1.25 * RATE, per_s
    # What the target saw: every reported sample, and nothing beyond what was planned and
    # not counted unsent (missed bounds what the frozen agent sent before it froze).
    load = b.summary["load"]
    assert load["reported"] <= len(target.arrivals) <= load["sent"] + load["missed"]
