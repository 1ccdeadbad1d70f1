"""glibc's malloc settings for long runs (cluster/allocator.py): applied, exported, and in effect.

The effect is checked on glibc itself, in a subprocess of its own (the settings are
process-wide): after a large block is freed, a later large allocation still goes to mmap
(and back to the system when freed) instead of the heap, where it left holes behind it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from horde.cluster import allocator
from horde.cluster.allocator import ALLOCATOR_ENV, allocator_env, tune_allocator

_NAMES = tuple(ALLOCATOR_ENV)
_NONE: frozenset[str] = frozenset()


class _FakeLibc:
    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.answer


@pytest.fixture
def clean_env(monkeypatch):
    for name in _NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(allocator, "_USER_SET", _NONE)
    return monkeypatch


def test_the_coordinator_gets_both_settings_and_exports_the_agents(clean_env):
    libc = _FakeLibc()
    applied = tune_allocator(libc)  # type: ignore[arg-type]
    # M_ARENA_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    assert sorted(libc.calls) == [(-8, 2), (-3, 128 << 10), (-1, 128 << 10)]
    assert applied == {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    # For the processes it starts (Ray's, the agents): their threshold is above a socket read.
    expected = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(1 << 20), "MALLOC_TRIM_THRESHOLD_": str(2 << 20)}
    assert {k: os.environ[k] for k in _NAMES} == expected
    assert allocator_env() == expected
    assert tune_allocator(libc) == applied  # again (connect after the CLI): the same, not skipped


def test_an_agent_gets_its_own_threshold(clean_env):
    libc = _FakeLibc()
    applied = tune_allocator(libc, coordinator=False)  # type: ignore[arg-type]
    assert applied == dict(ALLOCATOR_ENV)
    assert sorted(libc.calls) == [(-8, 2), (-3, 1 << 20), (-1, 2 << 20)]


def test_a_value_the_user_exported_is_kept(clean_env):
    clean_env.setenv("MALLOC_ARENA_MAX", "4")
    clean_env.setattr(allocator, "_USER_SET", frozenset({"MALLOC_ARENA_MAX"}))
    libc = _FakeLibc()
    applied = tune_allocator(libc)  # type: ignore[arg-type]
    assert sorted(libc.calls) == [(-3, 128 << 10), (-1, 128 << 10)]  # glibc read the user's arena limit
    assert applied == {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    assert os.environ["MALLOC_ARENA_MAX"] == "4"
    assert allocator_env()["MALLOC_ARENA_MAX"] == "4"


def test_without_glibc_the_settings_are_still_exported(clean_env):
    clean_env.setattr(allocator, "_libc", lambda: None)
    assert tune_allocator() == {}
    assert {k: os.environ[k] for k in _NAMES} == dict(ALLOCATOR_ENV)
    refused = _FakeLibc(answer=0)  # mallopt said no: not reported as applied
    assert tune_allocator(refused) == {}  # type: ignore[arg-type]


_MMAP_PROBE = textwrap.dedent(
    """
    import ctypes, json, sys
    from horde.cluster.allocator import tune_allocator

    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        print(json.dumps(None)); sys.exit(0)

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")]

    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    if sys.argv[1] != "default":
        tune_allocator(coordinator=sys.argv[1] == "coordinator")
    big = libc.malloc(8 << 20)  # mmapped (over every threshold); freeing it raises glibc's
    libc.free(big)              # dynamic threshold to 8 MiB, unless the threshold is fixed
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(int(sys.argv[2]))
    mapped = libc.mallinfo2().hblkhd - before
    libc.free(block)
    print(json.dumps(mapped))
    """
)


def _mapped_bytes(mode: str, size: int) -> int | None:
    env = {k: v for k, v in os.environ.items() if k not in _NAMES}
    argv = [sys.executable, "-c", _MMAP_PROBE, mode, str(size)]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_large_blocks_stay_mmapped_after_a_larger_one_was_freed():
    untuned = _mapped_bytes("default", 512 << 10)
    if untuned is None:
        pytest.skip("no mallinfo2 (glibc older than 2.33, or not glibc)")
    # glibc's default: the block came from the heap (the threshold rose to 8 MiB).
    assert untuned == 0
    assert _mapped_bytes("default", 2 << 20) == 0
    assert _mapped_bytes("coordinator", 512 << 10) >= 512 << 10
    # An agent: a 256 KiB socket read stays in the heap, a 2 MiB block does not.
    assert _mapped_bytes("agent", 512 << 10) == 0
    assert _mapped_bytes("agent", 2 << 20) >= 2 << 20


def test_an_attached_cluster_job_carries_the_settings_to_its_workers(clean_env):
    """The job's runtime_env ships horde and the allocator settings to every worker of the job."""
    import ray

    from horde.cluster import connect as connect_mod

    seen: dict = {}

    def fake_init(**kwargs):
        seen.update(kwargs)

    clean_env.setattr(ray, "is_initialized", lambda: False)
    clean_env.setattr(ray, "init", fake_init)
    clean_env.setattr(connect_mod, "cluster_shape", lambda kind, address="": kind)
    clean_env.delenv("RAY_ADDRESS", raising=False)
    clean_env.delenv(connect_mod.JOB_ID_ENV, raising=False)
    conn = connect_mod.connect("198.18.0.1:6379")
    assert conn.shape == "attached"
    assert seen["runtime_env"]["env_vars"] == dict(ALLOCATOR_ENV)
    assert seen["runtime_env"]["py_modules"]
    assert {k: os.environ[k] for k in _NAMES} == dict(ALLOCATOR_ENV)  # tune_allocator ran in the driver


_EMBEDDED = textwrap.dedent(
    """
    import json, os
    import ray
    from horde.cluster.connect import connect

    conn = connect(None, num_cpus=1)

    @ray.remote(num_cpus=0)
    class Probe:
        def env(self):
            return {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}

    print("ENV " + json.dumps(ray.get(Probe.remote().env.remote())), flush=True)
    conn.close()
    """
)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_embedded_rays_workers_start_with_the_settings(tmp_path):
    """An actor of the embedded Ray (as every traffic agent is) started under the agents'
    settings: glibc read them at the worker's start, before any of its threads."""
    env = {k: v for k, v in os.environ.items() if k not in _NAMES and k != "RAY_ADDRESS"}
    env.update(HOME=str(tmp_path), RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run(
        [sys.executable, "-c", _EMBEDDED], env=env, capture_output=True, text=True, timeout=150, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("ENV "))
    assert json.loads(line[4:]) == dict(ALLOCATOR_ENV)


@pytest.mark.parametrize("config", ["ray-config.yaml", "docs/ray-config.local.yaml"])
def test_the_cluster_configs_start_ray_with_hordes_allocator_settings(config: str) -> None:
    # A node started from the cluster config runs its agents with the settings the embedded
    # Ray and submitted jobs get; a config edited apart from ALLOCATOR_ENV fails here.
    import pathlib

    import yaml

    root = pathlib.Path(__file__).resolve().parents[2]
    doc = yaml.safe_load((root / config).read_text())
    starts = [
        c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in doc[key] if "ray start" in c
    ]
    assert len(starts) == 2
    for command in starts:
        for name, value in ALLOCATOR_ENV.items():
            assert f"{name}={value}" in command.split(), (config, name, command)
