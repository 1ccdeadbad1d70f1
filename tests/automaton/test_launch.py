"""start_automaton: a real `python -m automaton serve` subprocess on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request

import psutil
import pytest

from horde.automaton.launch import AutomatonError, start_automaton

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get_json(url: str) -> dict:
    with _NO_PROXY.open(url, timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())


def test_start_serves_health_and_stop_ends_the_process() -> None:
    automaton = start_automaton()
    try:
        assert automaton.url.startswith("http://127.0.0.1:")
        assert not automaton.url.endswith(":0")
        assert _get_json(automaton.url + "/health")["status"] == "ok"
        assert psutil.pid_exists(automaton.pid)
        db_dir = os.path.dirname(automaton.stats()["db_path"])
        assert os.path.isdir(db_dir)
    finally:
        exit_code = automaton.stop()
    assert exit_code == 0, automaton.stderr_tail()
    assert not psutil.pid_exists(automaton.pid)  # reaped, not a zombie
    assert not os.path.exists(db_dir)  # the temporary database went with it
    assert automaton.stop() == 0  # idempotent


def test_context_manager_and_stats() -> None:
    with start_automaton(stall_every_s=2.0, stall_for_s=1.0) as automaton:
        health = _get_json(automaton.url + "/health")
        # The flags reached the server (timing of the stall itself: test_stall.py).
        assert health["faults"] == {"stall_every_s": 2.0, "stall_for_s": 1.0}
        _get_json(automaton.url + "/api/agents")
        _get_json(automaton.url + "/api/agents")
        stats = automaton.stats()
        assert stats["requests"]["health"] == 1
        assert stats["requests"]["agents_list"] == 2
        assert stats["total"] == 3
        pid = automaton.pid
    assert automaton.process.returncode == 0
    assert not psutil.pid_exists(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc limits")
def test_server_raises_its_open_file_limit() -> None:
    with start_automaton() as automaton:
        soft, hard = psutil.Process(automaton.pid).rlimit(psutil.RLIMIT_NOFILE)
        assert soft == hard or soft >= 1 << 20


def test_invalid_arguments_raise_with_stderr_tail() -> None:
    with pytest.raises(AutomatonError, match="given together"):
        start_automaton(stall_every_s=1.0)


def test_port_in_use_raises() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(AutomatonError, match="(?i)address already in use|errno 98"):
            start_automaton(port=port)


def test_startup_timeout_kills_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    started = []
    real_popen = __import__("subprocess").Popen

    def recording_popen(*args, **kwargs):
        process = real_popen(*args, **kwargs)
        started.append(process)
        return process

    monkeypatch.setattr("horde.automaton.launch.subprocess.Popen", recording_popen)
    # Far too short for any interpreter to start and listen.
    with pytest.raises(AutomatonError, match="did not report listening"):
        start_automaton(startup_timeout_s=0.001)
    (process,) = started
    assert process.returncode is not None
    assert not psutil.pid_exists(process.pid)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_also_exits_cleanly() -> None:
    automaton = start_automaton()
    db_dir = os.path.dirname(automaton.stats()["db_path"])
    automaton.process.send_signal(signal.SIGINT)
    assert automaton.process.wait(timeout=10) == 0, automaton.stderr_tail()
    assert not os.path.exists(db_dir)
    assert "Traceback" not in automaton.stderr_tail()


def test_package_exports_resolve_lazily() -> None:
    from horde import automaton

    assert sorted(automaton.__all__) == sorted(automaton._EXPORTS)
    for name in automaton.__all__:
        assert getattr(automaton, name) is not None
    with pytest.raises(AttributeError):
        automaton.no_such_name  # noqa: B018


_KILLED_PARENT = """
import time
from horde.automaton.launch import start_automaton
a = start_automaton()
print(a.pid, flush=True)
time.sleep(120)
"""


def test_the_automaton_stops_when_the_process_that_started_it_is_killed(tmp_path) -> None:
    # A `horde run` killed by SIGKILL runs no clean-up: its automaton must not be orphaned.
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _KILLED_PARENT,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert psutil.pid_exists(child_pid)
        child = psutil.Process(child_pid)
        parent.kill()
        parent.wait(timeout=10)
        child.wait(timeout=15)  # raises psutil.TimeoutExpired if the automaton outlives its parent
    finally:
        if parent.poll() is None:
            parent.kill()
