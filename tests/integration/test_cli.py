"""horde's CLI in real subprocesses: the README's main command, validation, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import pytest

from horde.coordinator.bundle.store import read_bundle

REPO = Path(__file__).resolve().parents[2]


def horde(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "horde.coordinator.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=kw.pop("timeout", 240),
        **kw,
    )


def test_validate_lists_every_problem_with_its_path_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        textwrap.dedent("""
        name: bad one
        target: embedded
        requests:
          - {name: a, path: no-slash, weight: -1}
        workload:
          model: sideways
          stages: [{duration: 5x, target: 10}]
        thresholds: ["p99(latncy) < 5ms"]
    """)
    )
    r = horde("validate", str(bad))
    assert r.returncode == 3, r.stderr
    err = r.stderr
    for path in (
        "name",
        "requests[0].path",
        "requests[0].weight",
        "workload.model",
        "workload.stages[0].duration",
        "thresholds[0]",
    ):
        assert path in err, (path, err)
    assert "Traceback" not in err


def test_validate_accepts_the_shipped_scenarios():
    for f in sorted((REPO / "scenarios").glob("*.yaml")):
        r = horde("validate", str(f))
        assert r.returncode == 0, (f, r.stderr)


def test_missing_file_and_bad_yaml_are_clear_errors(tmp_path):
    r = horde("run", str(tmp_path / "nope.yaml"))
    assert r.returncode == 3 and "nope.yaml" in r.stderr and "Traceback" not in r.stderr
    y = tmp_path / "broken.yaml"
    y.write_text("name: x\nrequests: [\n")
    r = horde("validate", str(y))
    assert r.returncode == 3 and "broken.yaml:" in r.stderr and "Traceback" not in r.stderr


def test_report_of_a_missing_bundle_is_an_error(tmp_path):
    r = horde("report", str(tmp_path))
    assert r.returncode == 1 and "manifest.json" in r.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_readme_main_command_runs_smoke_on_embedded_ray(tmp_path):
    """`horde run scenarios/smoke.yaml`: its own embedded Ray, its own automaton, exit 0."""
    r = horde("run", "scenarios/smoke.yaml", "--out", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    bundles = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(bundles) == 1 and not bundles[0].name.endswith(".incomplete")
    b = read_bundle(bundles[0])
    assert b.manifest["outcome"] == "passed" and b.manifest["cluster"]["kind"] == "embedded"
    assert "health" in r.stdout and "PASS" in r.stdout
    assert "[    1s]" in r.stderr or "[    2s]" in r.stderr  # progress lines
    r2 = horde("report", str(bundles[0]))
    assert r2.returncode == 0 and "p99" in r2.stdout


def _lines_so_far(path: Path) -> int:
    """Lines written so far to a windows.jsonl that is still being written: bundle format 2
    writes one gzip stream flushed per window (the stream's end is not there yet)."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = zlib.decompressobj(wbits=31).decompress(data)
    return data.count(b"\n")


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(300)
def test_ctrl_c_leaves_an_incomplete_bundle_with_every_window(ray_cluster, tmp_path):
    scen = tmp_path / "long.yaml"
    scen.write_text(
        textwrap.dedent("""
        name: long
        target: embedded
        requests:
          - {name: health, path: /health, expect: [200]}
        workload:
          model: open
          start: 20
          stages: [{duration: 120s, target: 20}]
        agents: 1
    """)
    )
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "horde.coordinator.cli", "run", str(scen), "--out", str(out), "--address", ray_cluster],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        seen = 0
        while time.monotonic() < deadline:
            time.sleep(0.5)
            partial = list(out.glob("*.incomplete/windows.jsonl")) if out.exists() else []
            if partial:
                seen = _lines_so_far(partial[0])
                if seen >= 4:
                    break
        assert seen >= 4, "no windows written while running"
        os.kill(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    bundles = [p for p in out.iterdir() if p.is_dir()]
    assert len(bundles) == 1
    b = read_bundle(bundles[0])
    assert b.manifest["outcome"] == "interrupted" and b.manifest["complete"] is False
    assert not b.complete
    windows = list(b.windows())
    assert len(windows) >= seen
    # every sample received is in the summary: windows add up to the total
    assert sum(w["total"]["requests"] for w in windows) == b.summary["total"]["requests"] > 0
    assert "INCOMPLETE" in stdout
