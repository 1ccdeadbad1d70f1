"""No horde command writes through a link (issue 13: a shared bundle with `report.html.tmp`
-> ~/.ssh/authorized_keys). A link is planted at every name each command writes, pointing
at a file outside; the command refuses with the path named and its exit code, without a
traceback, and the file the link points to keeps its bytes.

Real subprocesses of the CLI; runs are in-process (no Ray) against the embedded automaton
on 127.0.0.1, a second or two each.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from horde.coordinator.bundle.store import INCOMPLETE_SUFFIX, bundle_name

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "scenarios" / "smoke.yaml"
SHORT = ("--set", "workload.stages[0].duration=1s", "--set", "workload.stages[1].duration=1s")
SECRET = b"ssh-ed25519 AAAA the user's key\n"
REFUSED = "is a symbolic link"


def horde(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "horde.coordinator.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
    )


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """The file a planted link points to (an ~/.ssh/authorized_keys)."""
    v = tmp_path / "home" / ".ssh" / "authorized_keys"
    v.parent.mkdir(parents=True)
    v.write_bytes(SECRET)
    return v


def untouched(victim: Path) -> bool:
    return victim.read_bytes() == SECRET and [p.name for p in victim.parent.iterdir()] == [victim.name]


def refused(r: subprocess.CompletedProcess, name: str) -> bool:
    return r.returncode == 1 and REFUSED in r.stderr and name in r.stderr and "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """One finished bundle from a real (short, in-process) run; each test works on a copy."""
    out = tmp_path_factory.mktemp("runs")
    r = horde("run", str(SMOKE), "--in-process", "-q", "--out", str(out), *SHORT)
    assert r.returncode == 0, r.stderr
    (path,) = [p for p in out.iterdir() if p.is_dir()]
    return path


@pytest.fixture
def shared(bundle: Path, tmp_path: Path) -> Path:
    """A copy of the bundle, as if someone had shared it."""
    copy = tmp_path / "shared" / bundle.name
    shutil.copytree(bundle, copy)
    return copy


def test_report_html_refuses_a_link_at_report_html(shared, victim):
    name = "report.html"
    (shared / name).unlink()  # the run rendered one; the shared bundle has a link instead
    (shared / name).symlink_to(victim)
    r = horde("report", str(shared), "--html")
    assert refused(r, name), r.stderr
    assert untouched(victim)


@pytest.mark.parametrize("cmd", [("report", "--html"), ("export", "--csv", "--hdr")])
def test_a_link_at_the_old_temporary_names_is_never_opened(cmd, shared, victim):
    for name in ("report.html.tmp", "windows.csv.tmp", "latency.hlog.tmp"):
        (shared / name).symlink_to(victim)
    r = horde(cmd[0], str(shared), *cmd[1:])
    assert r.returncode == 0, r.stderr
    assert untouched(victim)
    written = [Path(line) for line in r.stdout.split()]
    assert written and all(p.is_file() and not p.is_symlink() for p in written)


@pytest.mark.parametrize("name", ["windows.csv", "latency.hlog"])
def test_export_refuses_a_link_at_each_file_it_writes(name, shared, victim):
    (shared / name).symlink_to(victim)
    r = horde("export", str(shared), "--csv", "--hdr")
    assert refused(r, name), r.stderr
    assert untouched(victim)


def test_compare_html_refuses_a_link(shared, victim, tmp_path):
    out = tmp_path / "compare.html"
    out.symlink_to(victim)
    r = horde("compare", str(shared), str(shared), "--html", str(out))
    assert refused(r, "compare.html"), r.stderr
    assert untouched(victim)


def _plant_names(out: Path, names: list[str], target: Path) -> None:
    for name in names:
        (out / name).symlink_to(target, target_is_directory=target.is_dir())


def _stamps(span_s: int = 120) -> list[datetime]:
    """The next two minutes, second by second: a run started now gets one of them."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    return [now + timedelta(seconds=s) for s in range(-1, span_s)]


def test_run_refuses_a_link_at_its_bundle_directory(tmp_path, victim):
    out = tmp_path / "results"
    out.mkdir()
    stamps = _stamps()
    names = [bundle_name("smoke", t) + suffix for t in stamps for suffix in ("", INCOMPLETE_SUFFIX)]
    _plant_names(out, names, victim.parent)
    r = horde("run", str(SMOKE), "--in-process", "-q", "--out", str(out), *SHORT)
    assert r.returncode == 1 and REFUSED in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "smoke-" in r.stderr  # the bundle's name
    assert untouched(victim)
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # nothing written beside them


def test_run_does_not_record_through_a_linked_history(tmp_path, victim):
    """The run itself is fine; adding it to the history is refused, a warning as any failure to record."""
    out = tmp_path / "results"
    out.mkdir()
    (out / "history.sqlite3").symlink_to(victim)
    r = horde("run", str(SMOKE), "--in-process", "-q", "--out", str(out), *SHORT)
    assert r.returncode == 0, r.stderr
    assert "warning: the run was not added to the history" in r.stderr and "history.sqlite3" in r.stderr
    assert REFUSED in r.stderr and "Traceback" not in r.stderr
    assert untouched(victim)


@pytest.mark.parametrize("side", ["", "-wal"])
def test_history_refuses_a_linked_database(side, tmp_path, victim, bundle):
    results = tmp_path / "results"
    results.mkdir()
    if side:  # a real database beside a planted side file
        shutil.copy(bundle.parent / "history.sqlite3", results / "history.sqlite3")
    (results / f"history.sqlite3{side}").symlink_to(victim)
    r = horde("history", "--results", str(results))
    assert refused(r, f"history.sqlite3{side}"), r.stderr
    assert untouched(victim)


def test_bench_does_not_write_its_result_through_a_link(tmp_path, victim):
    """bench prints its figures whatever happens to the recording; a link where its result
    file or the history goes is refused and said, nothing is written through it."""
    out = tmp_path / "results"
    out.mkdir()
    names = [f"bench-smoke-{t.strftime('%Y%m%dT%H%M%SZ')}.json" for t in _stamps()]
    _plant_names(out, [*names, "history.sqlite3"], victim)
    r = horde("bench", str(SMOKE), "--group", "health", "--iterations", "5", "--warmup", "0", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "warning: the benchmark was not added to the history" in r.stderr and REFUSED in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert untouched(victim)


def test_monitor_refuses_a_linked_snapshot_before_it_starts(tmp_path, victim):
    snap = tmp_path / "snapshot.json"
    snap.symlink_to(victim)
    r = horde(
        "monitor",
        "http://127.0.0.1:9/",  # never probed: the refusal comes first
        "--duration",
        "1",
        "--snapshot",
        str(snap),
        "--history",
        str(tmp_path / "monitor.sqlite3"),
    )
    assert refused(r, "snapshot.json"), r.stderr
    assert untouched(victim)
