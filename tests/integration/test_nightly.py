"""`horde nightly`: two compressed nights build a history; a regression on the second exits non-zero."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from horde.coordinator.workflows.history import History, default_history_path

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ray, pytest.mark.slow]

SCENARIO = """
name: nightly
target: {embedded: {}}
time_compression: 120          # 30 simulated minutes run in 15 real seconds
requests:
  - {name: health, path: /health, expect: [200]}
  - {name: agents, path: /api/agents, expect: [200]}
workload:
  model: open
  start: 80
  stages: [{duration: 30m, target: 80}]
thresholds:
  - "error_rate < 1%"
"""


def _nightly(scen: Path, history: Path, address: str, *sets: str) -> subprocess.CompletedProcess:
    args = [
        sys.executable,
        "-m",
        "horde.coordinator.cli",
        "nightly",
        str(scen),
        "--history",
        str(history),
        "--address",
        address,
        "-q",
    ]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, timeout=240, cwd=REPO)


@pytest.mark.timeout(400)
def test_two_nights_build_a_history_and_a_regression_fails_the_second(ray_cluster, tmp_path):
    scen = tmp_path / "nightly.yaml"
    scen.write_text(textwrap.dedent(SCENARIO))
    history = tmp_path / "nights"

    first = _nightly(scen, history, ray_cluster)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "no regression, no leak" in first.stdout

    # The second night's target answers 25 ms slower: a latency regression.
    second = _nightly(scen, history, ray_cluster, "target.embedded.faults.latency=25ms")
    assert second.returncode == 6, second.stdout + second.stderr
    assert "regression against run 1" in second.stdout

    with History(default_history_path(history)) as h:
        runs = h.runs("nightly")
    assert [r.id for r in runs] == [2, 1]
    assert runs[0].p50_latency_ms > runs[1].p50_latency_ms + 20
    bundles = sorted(p for p in history.iterdir() if p.is_dir())
    assert len(bundles) == 2 and all((b / "report.html").exists() for b in bundles)
