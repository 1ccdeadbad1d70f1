"""glibc's malloc set for a process that runs for hours: few arenas, a fixed mmap threshold.

Measured on a real run (docs/scale.md, "horde's own memory"): the coordinator's resident
memory crept up in steps while the bytes malloc had handed out stayed flat. The growth was
memory malloc kept as free chunks inside its heaps (mallinfo2: `fordblks` 8-11 MiB and
rising): glibc raises its mmap threshold to the size of every large block freed (up to
32 MiB), so after the first large transient buffers (a batch, a numpy array, a gRPC
message) every later one comes from the heap instead of mmap and leaves holes behind it;
and each thread that contends gets an arena of its own (up to 8 per core), each with its own
holes. With the threshold fixed, large blocks go back to the system when freed and the free
space in the heaps stays under 0.5 MiB; with two arenas, Ray's threads share them.

`tune_allocator()` applies them to this process (mallopt through ctypes) and exports the
agents' values (`allocator_env()`) for the processes it starts, which glibc reads at their
start: the embedded Ray's raylet, GCS and workers (so every agent actor), `ray start` of
`horde up`. The coordinator's threshold is 128 KiB (glibc's starting value); an agent's is
1 MiB, above the 256 KiB socket reads of asyncio and uvloop: a block over the threshold is a
fresh mmap every time, and its page faults cost (a 256 KiB buffer 88 us of CPU instead of
5 us; docs/scale.md), which an agent must not pay a request. A value the user exported
before horde ran is kept. On a platform without glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

ARENA_MAX = 2
COORDINATOR_MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value, fixed (no dynamic raise)
AGENT_MMAP_THRESHOLD = 1024 * 1024  # above the 256 KiB socket reads of asyncio and uvloop

# The environment variables glibc reads at process start, and mallopt's parameter numbers
# (malloc.h: M_TRIM_THRESHOLD -1, M_MMAP_THRESHOLD -3, M_ARENA_MAX -8). ALLOCATOR_ENV is what
# horde's processes export to the processes they start (the agents); the coordinator sets
# COORDINATOR_ENV. An agent's trim threshold is twice its mmap threshold, glibc's own rule
# (else it stays at 128 KiB: the heap's top given back and faulted in again for every block
# between the two); the coordinator's stays at glibc's 128 KiB, the set-up its runs measured.
ALLOCATOR_ENV = {
    "MALLOC_ARENA_MAX": str(ARENA_MAX),
    "MALLOC_MMAP_THRESHOLD_": str(AGENT_MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(2 * AGENT_MMAP_THRESHOLD),
}
COORDINATOR_ENV = {
    "MALLOC_ARENA_MAX": str(ARENA_MAX),
    "MALLOC_MMAP_THRESHOLD_": str(COORDINATOR_MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(COORDINATOR_MMAP_THRESHOLD),  # glibc's default, as measured
}
_MALLOPT = {"MALLOC_ARENA_MAX": -8, "MALLOC_MMAP_THRESHOLD_": -3, "MALLOC_TRIM_THRESHOLD_": -1}
# What the user exported before horde ran (glibc applied it at this process's start): kept.
_USER_SET = frozenset(k for k in _MALLOPT if k in os.environ)


def allocator_env() -> dict[str, str]:
    """The variables for a process horde starts (a user's exported value wins)."""
    return {k: os.environ[k] if k in _USER_SET else v for k, v in ALLOCATOR_ENV.items()}


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def tune_allocator(
    libc: ctypes.CDLL | None = None, *, coordinator: bool = True, user_set: frozenset[str] | None = None
) -> dict[str, str]:
    """Apply COORDINATOR_ENV (an agent: ALLOCATOR_ENV) to this process with mallopt, and export
    ALLOCATOR_ENV for its children; a variable the user exported is left as it is. Returns
    what it applied here ({} when there is no glibc, or the user set everything)."""
    applied: dict[str, str] = {}
    lib = libc if libc is not None else _libc()
    kept = _USER_SET if user_set is None else user_set
    for name, value in (COORDINATOR_ENV if coordinator else ALLOCATOR_ENV).items():
        if name in kept:
            continue
        if lib is not None and lib.mallopt(_MALLOPT[name], int(value)) == 1:
            applied[name] = value
        os.environ[name] = ALLOCATOR_ENV[name]
    return applied
