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

`tune_allocator()` applies both to the coordinator (mallopt through ctypes) and exports the
arena limit (`allocator_env()`) for the processes it starts, which glibc reads at their
start: the embedded Ray's raylet, GCS and workers (so every agent actor), `ray start` of
`horde up`. The fixed threshold stays in the coordinator: there a large block is a batch a
second per agent, but an agent may allocate one a request (a large response body), and a
fresh mmap costs page faults each time (measured: a 256 KiB buffer 88 us of CPU instead of
5 us, a 1 MiB one 339 us instead of 21 us; docs/scale.md); the agents' own drift was the
arenas' (flat with MALLOC_ARENA_MAX=2 alone). A value the user exported
is kept. On a platform without glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

ARENA_MAX = 2
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value, fixed (no dynamic raise)

# The environment variables glibc reads at process start, and mallopt's parameter numbers
# (malloc.h: M_MMAP_THRESHOLD -3, M_ARENA_MAX -8). ALLOCATOR_ENV is what horde's processes
# export to the processes they start; COORDINATOR_ONLY is set in the coordinator alone.
ALLOCATOR_ENV = {"MALLOC_ARENA_MAX": str(ARENA_MAX)}
COORDINATOR_ONLY = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD_BYTES)}
_MALLOPT = {"MALLOC_ARENA_MAX": -8, "MALLOC_MMAP_THRESHOLD_": -3}


def allocator_env() -> dict[str, str]:
    """The variables for a process horde starts (a user's exported value wins)."""
    return {k: os.environ.get(k, v) for k, v in ALLOCATOR_ENV.items()}


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def tune_allocator(libc: ctypes.CDLL | None = None, *, coordinator: bool = True) -> dict[str, str]:
    """Apply ALLOCATOR_ENV (and, in the coordinator, COORDINATOR_ONLY) to this process with
    mallopt, for the values glibc did not read from the environment at its start, and export
    ALLOCATOR_ENV for its children. Returns what it applied here ({} when there is no glibc,
    or the user's environment already set everything)."""
    applied: dict[str, str] = {}
    lib = libc if libc is not None else _libc()
    wanted = {**ALLOCATOR_ENV, **(COORDINATOR_ONLY if coordinator else {})}
    for name, value in wanted.items():
        if name in os.environ:
            continue  # the user's value: glibc applied it at this process's start
        if lib is not None and lib.mallopt(_MALLOPT[name], int(value)) == 1:
            applied[name] = value
        if name in ALLOCATOR_ENV:
            os.environ[name] = value
    return applied
