"""The run pipeline end to end on the session's embedded Ray, against the real automaton."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from horde.coordinator.bundle.outcome import Outcome
from horde.coordinator.bundle.store import read_bundle
from horde.coordinator.measure.aggregate import Stats
from horde.coordinator.run.session import RunOptions, run_scenario
from horde.coordinator.scenario.load import load_scenario

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "scenario.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def _run(path, tmp_path, *overrides):
    loaded = load_scenario(path, overrides=overrides)
    lines: list[str] = []
    result = run_scenario(
        loaded, RunOptions(out_dir=str(tmp_path / "out"), progress=lines.append, install_signal_handlers=False)
    )
    return result, lines


@pytest.mark.timeout(180)
def test_smoke_bundle_counts_match_what_the_automaton_served(ray_cluster, tmp_path):
    result, lines = _run(REPO / "scenarios" / "smoke.yaml", tmp_path)
    assert result.outcome is Outcome.PASSED, result.summary["thresholds"]
    b = read_bundle(result.bundle)
    assert b.complete and b.path.name.startswith("smoke-")
    for name in (
        "manifest.json",
        "summary.json",
        "windows.jsonl",
        "windows.msgpack",
        "histograms.msgpack",
        "junit.xml",
    ):
        assert (b.path / name).exists(), name
    total = b.summary["total"]
    served = b.manifest["target"]["served"]
    # Every request horde counted reached the automaton, and nothing was counted twice.
    assert total["requests"] == served["total"]
    # ramp 0->50/s over 3 s (75) + 7 s at 50/s (350) = 425 planned sends
    assert total["requests"] == 425
    assert total["errors"] == 0
    # the per-endpoint split adds up, and the windows add up to the total
    assert sum(e["requests"] for e in b.summary["endpoints"].values()) == 425
    assert sum(w["total"]["requests"] for w in b.windows()) == 425
    assert len(lines) >= 10  # a progress line per window
    # Each agent's summary says what its sends waited on and at what priority (agents/priority.py).
    timing = [a["timing"] for a in b.summary["generator"]["agents"].values()]
    assert timing and all(t.startswith("precise timers, ") for t in timing), timing
    junit = (b.path / "junit.xml").read_text()
    assert junit.count("<testcase") == 3 and 'failures="0"' in junit


@pytest.mark.timeout(180)
def test_histograms_read_back_give_the_summary_quantiles(ray_cluster, tmp_path):
    result, _ = _run(REPO / "scenarios" / "smoke.yaml", tmp_path, "workload.stages[1].duration=2s")
    b = read_bundle(result.bundle)
    for h in b.histograms():
        if h["endpoint"] is None and h["stage"] is None:
            stats = Stats.from_sparse(h["stats"])
            stats.duration_s = b.summary["total"]["rps"] and b.summary["duration_s"]
            again = stats.to_dict()
            for q in ("p50", "p90", "p99", "p99.9", "max"):
                assert again["latency_ms"][q] == b.summary["total"]["latency_ms"][q]
                assert again["service_time_ms"][q] == b.summary["total"]["service_time_ms"][q]
            assert again["requests"] == b.summary["total"]["requests"]
            break
    else:
        pytest.fail("no whole-run histogram in the bundle")
    # window histograms merge to the whole-run counts
    merged = None
    for w in b.window_histograms():
        for sp in w["endpoints"].values():
            s = Stats.from_sparse(sp)
            merged = s if merged is None else (merged.merge(s) or merged)
    assert merged.requests == b.summary["total"]["requests"]


@pytest.mark.timeout(240)
def test_thousand_concurrent_users_closed_model(ray_cluster, tmp_path):
    result, lines = _run(
        REPO / "scenarios" / "closed-1000.yaml",
        tmp_path,
        "workload.stages[0].duration=4s",
        "workload.stages[1].duration=6s",
    )
    b = read_bundle(result.bundle)
    windows = list(b.windows())
    peak_users = max(sum(g.get("users", 0) for g in w["generator"].values()) for w in windows)
    assert peak_users == 1000
    total = b.summary["total"]
    assert total["requests"] == b.manifest["target"]["served"]["total"]
    assert total["error_rate"] < 0.01
    assert result.outcome is Outcome.PASSED, b.summary["thresholds"]


@pytest.mark.timeout(180)
def test_stall_shows_in_latency_not_in_service_time(ray_cluster, tmp_path):
    """A target that freezes 1 s every 3 s, two connections, 200 req/s planned.

    While it freezes, the planned sends queue in the generator (both connections are
    held by the frozen target): latency from the intended send time shows the stall,
    service time from the actual send mostly does not (only the requests caught on
    the two connections).
    """
    path = _write(
        tmp_path,
        """
        name: stall
        target:
          embedded:
            stall: {every: 3s, for: 1s}
        requests:
          - {name: health, path: /health, expect: [200]}
        workload:
          model: open
          start: 200
          max_in_flight: 2
          stages:
            - {duration: 9s, target: 200}
        agents: 1
    """,
    )
    result, _ = _run(path, tmp_path)
    summary = read_bundle(result.bundle).summary
    t = summary["total"]
    # The sends that waited behind the frozen target are counted as queued (target-bound),
    # not as the generator's own lateness.
    g = summary["generator"]
    assert g["generator_queued_sends"] > 100 and g["generator_queued_sends"] > 5 * g["late_sends"]
    assert t["requests"] >= 1700
    assert t["latency_ms"]["p99"] > 500  # the stall, seen from the intended send time
    assert t["service_time_ms"]["p99"] < 100  # the target's own time per request
    assert t["latency_ms"]["p99"] > 10 * t["service_time_ms"]["p99"]
