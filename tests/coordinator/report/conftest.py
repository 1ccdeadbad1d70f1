"""Helpers for the report tests: synthetic bundles without Ray, and a headless Chromium
driven over the DevTools protocol (aiohttp's websocket client, no extra dependency).

Both are exposed as fixtures (``make_bundle``, ``browser``) because test modules under
``--import-mode=importlib`` cannot import each other.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from horde.agents.samples import SAMPLE_DTYPE, Batch, ErrorClass, GeneratorReadings
from horde.coordinator.bundle.store import BundleWriter
from horde.coordinator.measure.aggregate import Aggregator
from horde.coordinator.measure.health import AgentTotals, generator_verdict
from horde.coordinator.report.text import junit_xml

S = 1_000_000_000
MS = 1_000_000

# -- synthetic bundles ------------------------------------------------------------------------

ENDPOINTS = ("health", "search <q>", "checkout & pay")  # markup characters on purpose
MEDIAN_MS = {"health": 2.0, "search <q>": 15.0, "checkout & pay": 60.0}
STAGES = (("ramp", 4), ("hold", 8), ("spike", 3), ("recover", 5))


@dataclass
class SynthSpec:
    """What a synthetic run looks like. ``rate_per_s`` is the hold level; the ramp goes
    from a tenth of it, the spike triples it; a stall during the spike holds back sends
    (so latency and service time part ways); errors of several classes appear mid-run."""

    rate_per_s: float = 60.0
    stages: tuple[tuple[str, int], ...] = STAGES
    endpoints: tuple[str, ...] = ENDPOINTS
    agents: int = 2
    seed: int = 7
    errors: bool = True
    alerts: bool = True
    finish: bool = True  # False: leave an .incomplete bundle without summary
    closed: bool = False
    name: str = "synthetic <run>"
    lose_agent_at_s: int | None = 14  # agent 1 stops sending from here on
    resources: bool = True  # target, node and coordinator readings per window, as run.py records them
    extra_alerts: list[dict] = field(default_factory=list)


def _level(spec: SynthSpec, t_s: float) -> float:
    start = 0.0
    for name, dur in spec.stages:
        if t_s < start + dur:
            frac = (t_s - start) / dur if dur else 1.0
            if name == "ramp":
                return spec.rate_per_s * (0.1 + 0.9 * frac)
            if name == "spike":
                return spec.rate_per_s * 3
            return spec.rate_per_s
        start += dur
    return 0.0


def _samples_for_second(spec: SynthSpec, rng: np.random.Generator, sec: int, agent: int) -> np.ndarray:
    n = int(round(_level(spec, sec + 0.5) / spec.agents))
    if n <= 0:
        return np.zeros(0, SAMPLE_DTYPE)
    out = np.zeros(n, SAMPLE_DTYPE)
    intended = sec * S + np.sort(rng.integers(0, S, n))
    ep = rng.integers(0, len(spec.endpoints), n)
    medians = np.array([MEDIAN_MS.get(e, 10.0) for e in spec.endpoints]) * MS
    service = (rng.lognormal(0.0, 0.6, n) * medians[ep]).astype(np.int64) + 200_000
    sent = intended.copy()
    total_s = sum(d for _, d in spec.stages)
    spike_start = sum(d for _, d in spec.stages[:2])
    if len(spec.stages) > 2 and sec == spike_start + 1:
        # a 700 ms stall: everything planned in it is sent when it ends
        stall_end = sec * S + 700 * MS
        sent = np.maximum(sent, stall_end)
    out["endpoint"] = ep
    out["intended_ns"] = intended
    out["sent_ns"] = sent
    out["end_ns"] = sent + service
    out["status"] = 200
    out["bytes"] = rng.integers(100, 5000, n)
    if spec.errors and 0.3 * total_s <= sec <= 0.8 * total_s:
        r = rng.random(n)
        err = np.where(r < 0.04, ErrorClass.HTTP_5XX, 0)
        err = np.where((r >= 0.04) & (r < 0.06), ErrorClass.TIMEOUT, err)
        err = np.where((r >= 0.06) & (r < 0.07), ErrorClass.CONNECT, err)
        out["error"] = err
        out["status"] = np.where(err == ErrorClass.HTTP_5XX, 503, np.where(err == 0, 200, 0))
    return out


def build_bundle(out_dir: str | Path, spec: SynthSpec | None = None) -> Path:
    """Write a bundle the way run.py does, from hand-made batches (no Ray, no network)."""
    spec = spec or SynthSpec()
    rng = np.random.default_rng(spec.seed)
    endpoints = list(spec.endpoints)
    ends, t = [], 0
    for _, d in spec.stages:
        t += d
        ends.append(t * S)
    names = [n for n, _ in spec.stages]
    duration_s = t
    started = datetime(2026, 11, 27, 5, 0, 0, tzinfo=timezone.utc)
    writer = BundleWriter(out_dir, spec.name.replace(" ", "-").replace("<", "").replace(">", ""), started)
    manifest: dict[str, Any] = {
        "horde_version": "0.1.0",
        "bundle_format": 1,
        "scenario": {
            "name": spec.name,
            "description": "synthetic <b>bundle</b> for report tests",
            "target": "http://127.0.0.1:9/",
            "requests": [{"name": e, "method": "GET", "path": "/" + str(i)} for i, e in enumerate(endpoints)],
            "workload": {
                "model": "closed" if spec.closed else "open",
                "arrivals": "constant",
                "stages": [{"name": n, "duration": f"{d}s", "target": spec.rate_per_s} for n, d in spec.stages],
            },
            "thresholds": ["p99(latency) < 250ms", "error_rate < 1%"],
        },
        "scenario_file": "scenarios/synthetic.yaml",
        "outcome": "running",
        "complete": False,
        "started": started.isoformat(),
        "target": {"url": "http://127.0.0.1:9/?a=<x>&b=1", "embedded": False, "pid": None},
        "cluster": {
            "kind": "embedded",
            "address": "",
            "cpus": 4.0,
            "nodes": [{"node": "n0", "host": "box-1", "cpus": 4.0, "alive": True}],
        },
        "plan": {
            "agents": spec.agents,
            "cpus_per_agent": 1.0,
            "duration_s": float(duration_s),
            "stages": [{"name": n, "end_s": e / S} for n, e in zip(names, ends)],
            "engines": dict.fromkeys(endpoints, "fast"),
            "max_in_flight": [1000] * spec.agents,
            "max_connections": [1000] * spec.agents,
        },
        "versions": {
            "python": "3.11.7",
            "ray": "2.60.0",
            "aiohttp": "3.14.5",
            "numpy": "2.4.6",
            "platform": "Linux-test",
        },
        "argv": ["horde", "run", "scenarios/synthetic.yaml"],
        "agents": [
            {"index": a, "incarnation": 0, "pid": 1000 + a, "node": "n0", "host": "box-1"} for a in range(spec.agents)
        ],
        "start_wall_ns": 1_795_750_000_000_000_000,
    }
    writer.write_manifest(manifest)
    agg = Aggregator(endpoints, ends, names)
    totals = {str(a): AgentTotals() for a in range(spec.agents)}
    cpu = [0.0] * spec.agents
    seq = [0] * spec.agents
    live = set(range(spec.agents))
    lost: list[dict] = []

    def emit(windows) -> None:
        for w in windows:
            wd = w.to_dict()
            if spec.resources:
                busy = min(1.0, w.total.requests / 400)
                wd["target"] = {
                    "target_memory": float((60 + w.index * 1.5) * 2**20),
                    "target_cpu": 0.05 + busy,
                    "target_connections": float(4 + w.index % 3),
                    "target_fds": float(20 + w.index % 5),
                }
                wd["coordinator"] = {"rss_bytes": float(140 * 2**20)}
                wd["nodes"] = {
                    "node0aaaaaaa": {
                        "cpu_fraction": 0.2 + busy / 2,
                        "cpus": 4.0,
                        "mem_used_bytes": 1.3e9,
                        "mem_total_bytes": 8e9,
                        "net_sent_bytes_per_s": 4e4,
                        "net_recv_bytes_per_s": 4e4,
                        "tcp_connections": 50.0,
                    }
                }
            writer.append_window(
                wd, {"index": w.index, "endpoints": {k: v.to_sparse() for k, v in w.by_endpoint.items()}}
            )

    for sec in range(duration_s + 1):
        for agent in sorted(live):
            if spec.lose_agent_at_s is not None and agent == 1 and sec >= spec.lose_agent_at_s:
                live.discard(agent)
                loss = {
                    "kind": "agent_lost",
                    "agent": agent,
                    "incarnation": 0,
                    "reason": "silent",
                    "detail": "no batch for 3 s <watchdog>",
                    "at_s": float(sec),
                    "share": f"1/{spec.agents}",
                }
                lost.append(loss)
                if spec.alerts:
                    writer.append_alert(loss)
                continue
            rows = _samples_for_second(spec, rng, sec, agent) if sec < duration_s else np.zeros(0, SAMPLE_DTYPE)
            cpu[agent] += 0.05 + len(rows) * 40e-6
            final = sec == duration_s
            readings = GeneratorReadings(
                cpu_s=cpu[agent],
                rss_bytes=int((110 + sec * 0.8 + agent * 6) * 2**20),
                loop_lag_max_ns=int((1 + (sec % 5)) * MS),
                loop_lag_mean_ns=300_000,
                late_sends=int(len(rows) * 0.01),
                send_lag_max_ns=2 * MS,
                in_flight=int(len(rows) * 0.02) + (30 if sec == 13 else 0),
                users=int(_level(spec, sec) / spec.agents) if spec.closed else 0,
                level=_level(spec, sec + 1) / spec.agents,
            )
            b = Batch(
                agent=agent,
                incarnation=0,
                seq=seq[agent],
                watermark_ns=(sec + 1) * S,
                samples=rows,
                readings=readings,
                final=final,
            )
            seq[agent] += 1
            agg.add(b)
            totals[str(agent)].add(readings, b.watermark_ns, "fast")
        if spec.alerts and sec == 9:
            writer.append_alert(
                {
                    "kind": "alert",
                    "level": "warning",
                    "at_s": 9.0,
                    "rule": "p99(latency) < 50ms",
                    "reason": "p99 over 10s was 61ms & rising",
                }
            )
        for a in spec.extra_alerts:
            if a.get("at_s") == sec:
                writer.append_alert(a)
        marks = [agg.watermarks.get(a, 0) for a in live if a not in agg.final_agents]
        if marks:
            emit(agg.close_until(min(marks)))
    emit(agg.close_all())
    if not spec.finish:
        return writer.path

    def stats_for(endpoint, stage):
        s = agg.snapshot(endpoint=endpoint, stage=stage)
        if stage is None:
            s.duration_s = float(duration_s)
        return s

    total = stats_for(None, None)
    thresholds = [
        {
            "expr": "p99(latency) < 250ms",
            "endpoint": None,
            "stage": None,
            "abort": False,
            "ok": (total.latency.value_at_quantile(0.99) or 0) < 250 * MS,
            "observed": 0.0,
            "observed_text": "x",
        },
        {
            "expr": "error_rate < 1%",
            "endpoint": None,
            "stage": None,
            "abort": True,
            "ok": total.error_rate < 0.01,
            "observed": total.error_rate,
            "observed_text": f"{100 * total.error_rate:.2f}%",
        },
        {
            "expr": "p95(latency) < 5ms",
            "endpoint": "health",
            "stage": "hold",
            "abort": False,
            "ok": True,
            "observed": 3.2e6,
            "observed_text": "3.2ms <ok>",
        },
    ]
    outcome = "passed" if all(t["ok"] for t in thresholds) else "thresholds_failed"
    summary = {
        "outcome": outcome,
        "stop_reason": "",
        "duration_s": float(duration_s),
        "total": total.to_dict(),
        "endpoints": {e: stats_for(e, None).to_dict() for e in endpoints},
        "stages": {
            s: {"total": stats_for(None, s).to_dict(), "endpoints": {e: stats_for(e, s).to_dict() for e in endpoints}}
            for s in names
        },
        "thresholds": thresholds,
        "generator": generator_verdict(totals, total.requests),
        "lost_agents": lost,
        "late_samples": agg.late_samples,
        "engines": dict.fromkeys(endpoints, "fast"),
    }
    if spec.resources:
        summary["target_resources"] = {
            "scrapes": duration_s,
            "failures": 0,
            "target_memory": {"max": 9e7, "mean": 8e7, "min": 6.3e7, "last": 9e7, "windows": duration_s},
            "target_cpu": {"max": 0.6, "mean": 0.2, "min": 0.05, "last": 0.1, "windows": duration_s},
        }
        summary["nodes"] = {
            "nodes": {
                "node0aaaaaaa": {
                    "cpu_mean": 0.35,
                    "cpu_max": 0.6,
                    "mem_peak_mb": 1300.0,
                    "net_tx_peak_mb_s": 0.04,
                    "net_rx_peak_mb_s": 0.04,
                    "tcp_connections_max": 50,
                    "agents": [str(a) for a in range(spec.agents)],
                    "windows": duration_s,
                }
            },
            "saturated": [],
        }
    manifest.update(
        outcome=outcome, complete=True, stop_reason="", ended=started.isoformat(), duration_s=float(duration_s) + 1.5
    )
    histograms = [
        {"endpoint": e, "stage": st, "stats": agg.snapshot(endpoint=e, stage=st).to_sparse()}
        for e in (None, *endpoints)
        for st in (None, *names)
    ]
    return writer.finish(
        manifest=manifest,
        summary=summary,
        histograms=histograms,
        junit_xml=junit_xml(spec.name, thresholds, float(duration_s)),
    )


@pytest.fixture(scope="session")
def shared_bundle(tmp_path_factory) -> Path:
    """One default synthetic bundle for the tests that only read it (built once)."""
    return build_bundle(tmp_path_factory.mktemp("shared"), SynthSpec())


@pytest.fixture(scope="session")
def smoke_bundle(tmp_path_factory) -> Path:
    """A bundle written by a real run: scenarios/smoke.yaml cut to 3 s, agents on threads of
    this process (no Ray), against the embedded automaton on 127.0.0.1. Built once."""
    from horde.coordinator.run.session import RunOptions, run_scenario
    from horde.coordinator.scenario.load import load_scenario

    scenario = Path(__file__).resolve().parents[3] / "scenarios" / "smoke.yaml"
    loaded = load_scenario(scenario, overrides=["workload.stages[0].duration=1s", "workload.stages[1].duration=2s"])
    out = tmp_path_factory.mktemp("smoke")
    result = run_scenario(loaded, RunOptions(in_process=True, out_dir=str(out), install_signal_handlers=False))
    return result.bundle


@pytest.fixture
def make_bundle(tmp_path):
    """make_bundle(**SynthSpec fields) -> bundle path under the test's tmp dir."""
    counter = iter(range(1000))

    def make(**kw: Any) -> Path:
        return build_bundle(tmp_path / f"bundles-{next(counter)}", SynthSpec(**kw))

    return make


# -- headless Chromium over the DevTools protocol --------------------------------------------

CHROMIUM = os.environ.get("HORDE_CHROMIUM", "/usr/bin/chromium")

# Every svg.chart must draw: a data element whose box is finite, non-empty and inside the
# chart, and path data without NaN/Infinity. A chart that says "no data" must say it.
CHECK_CHARTS_JS = r"""
(() => {
  const out = [];
  for (const svg of document.querySelectorAll('svg.chart')) {
    const t = svg.querySelector('title');
    const res = {title: t ? t.textContent : '', nodata: svg.hasAttribute('data-nodata'), drawn: 0, problems: []};
    const box = svg.getBoundingClientRect();
    if (!(box.width > 50 && box.height > 50)) res.problems.push(`chart not laid out (${box.width}x${box.height})`);
    if (res.nodata) {
      if (!svg.textContent.replace(res.title, '').trim()) res.problems.push('no-data chart without a message');
    } else {
      for (const el of svg.querySelectorAll('.data')) {
        if (el.tagName === 'path') {
          const d = el.getAttribute('d') || '';
          if (/nan|inf/i.test(d)) { res.problems.push('path data with NaN/Infinity'); continue; }
          if (!/[0-9]/.test(d)) continue;
        }
        let b;
        try { b = el.getBBox(); } catch (e) { continue; }
        if (![b.x, b.y, b.width, b.height].every(Number.isFinite)) continue;
        if (!(b.width > 0 || b.height > 0)) continue;
        const r = el.getBoundingClientRect();
        const inside = r.right >= box.left && r.left <= box.right && r.bottom >= box.top && r.top <= box.bottom;
        if (!inside) { res.problems.push('data drawn outside the chart'); continue; }
        res.drawn++;
      }
      if (!res.drawn) res.problems.push('nothing drawn');
    }
    out.push(res);
  }
  return out;
})()
"""


@dataclass
class PageCheck:
    charts: list[dict]
    console_errors: list[str]
    requests: list[str]
    screenshot: Path | None


class _CDP:
    """A minimal DevTools client: commands with ids, events kept in a list."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.next_id = 0
        self.pending: dict[int, asyncio.Future] = {}
        self.events: list[dict] = []
        self.changed = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        import aiohttp

        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self.pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    if "error" in data:
                        fut.set_exception(RuntimeError(f"CDP error: {data['error']}"))
                    else:
                        fut.set_result(data.get("result", {}))
            else:
                self.events.append(data)
                self.changed.set()

    async def send(
        self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 20.0
    ) -> dict:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        fut = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        await self.ws.send_str(json.dumps(msg))
        return await asyncio.wait_for(fut, timeout)

    async def wait_for_event(self, method: str, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events:
                if ev.get("method") == method:
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {method} event within {timeout} s")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                pass


class Browser:
    """One headless Chromium process; ``check(html_file, screenshot)`` loads a page and
    reports its charts, console errors and network requests."""

    def __init__(self, tmp: Path) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp))
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                f"--user-data-dir={self.profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr: list[str] = []
        found = threading.Event()
        self.ws_url = ""

        def drain() -> None:  # keep reading: a full stderr pipe would block the browser
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.stderr.append(line)
                if not self.ws_url and "DevTools listening on " in line:
                    self.ws_url = line.split("DevTools listening on ", 1)[1].strip()
                    found.set()
            found.set()

        threading.Thread(target=drain, daemon=True).start()
        if not found.wait(30) or not self.ws_url:
            self.close()
            raise RuntimeError("chromium did not print its DevTools address:\n" + "".join(self.stderr[-20:]))

    def check(self, html_file: Path, screenshot: Path | None = None, width: int = 1360) -> PageCheck:
        return asyncio.run(self._check(html_file, screenshot, width))

    async def _check(self, html_file: Path, screenshot: Path | None, width: int) -> PageCheck:
        import aiohttp

        url = html_file.resolve().as_uri()
        async with aiohttp.ClientSession() as http, http.ws_connect(self.ws_url, max_msg_size=0) as ws:
            cdp = _CDP(ws)
            try:
                target = await cdp.send("Target.createTarget", {"url": "about:blank"})
                attached = await cdp.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
                sid = attached["sessionId"]
                for domain in ("Page", "Runtime", "Log", "Network"):
                    await cdp.send(f"{domain}.enable", session=sid)
                await cdp.send(
                    "Emulation.setDeviceMetricsOverride",
                    {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                    session=sid,
                )
                cdp.events.clear()
                await cdp.send("Page.navigate", {"url": url}, session=sid)
                await cdp.wait_for_event("Page.loadEventFired")
                result = await cdp.send(
                    "Runtime.evaluate", {"expression": CHECK_CHARTS_JS, "returnByValue": True}, session=sid
                )
                if "exceptionDetails" in result:
                    raise RuntimeError(f"chart check script failed: {result['exceptionDetails']}")
                chart_results = result["result"]["value"]
                shot = None
                if screenshot is not None:
                    metrics = await cdp.send("Page.getLayoutMetrics", session=sid)
                    height = int(math_ceil(metrics.get("cssContentSize", metrics.get("contentSize"))["height"]))
                    await cdp.send(
                        "Emulation.setDeviceMetricsOverride",
                        {"width": width, "height": min(height, 16000), "deviceScaleFactor": 1, "mobile": False},
                        session=sid,
                    )
                    png = await cdp.send(
                        "Page.captureScreenshot",
                        {"format": "png", "captureBeyondViewport": True},
                        session=sid,
                        timeout=60,
                    )
                    import base64

                    screenshot.write_bytes(base64.b64decode(png["data"]))
                    shot = screenshot
                await asyncio.sleep(0.1)  # late console messages
                errors, requests = [], []
                for ev in cdp.events:
                    method, p = ev.get("method"), ev.get("params", {})
                    if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
                        errors.append(
                            f"console.{p.get('type')}: "
                            + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
                        )
                    elif method == "Runtime.exceptionThrown":
                        errors.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:500])
                    elif method == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
                        errors.append(
                            f"log {p['entry'].get('level')}: {p['entry'].get('text')} {p['entry'].get('url', '')}"
                        )
                    elif method == "Network.requestWillBeSent":
                        requests.append(p.get("request", {}).get("url", ""))
                await cdp.send("Target.closeTarget", {"targetId": target["targetId"]})
            finally:
                cdp.reader.cancel()
        return PageCheck(chart_results, errors, requests, shot)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # the browser process by its PID; it takes its children down
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.profile, ignore_errors=True)


def math_ceil(v: float) -> int:
    return int(-(-float(v) // 1))


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set HORDE_CHROMIUM)")
    if importlib.util.find_spec("aiohttp") is None:
        pytest.skip("aiohttp is needed to speak the DevTools protocol")
    b = Browser(tmp_path_factory.mktemp("chromium"))
    yield b
    b.close()
