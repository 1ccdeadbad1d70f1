"""The agent's pre-drawn choices are drawn cyclically without growing the agent."""

from __future__ import annotations

import tracemalloc

from horde.agents.agent_state import CHOICES, cycled


def test_draws_wrap_around_in_order():
    values = [3, 1, 4, 1, 5]
    draw = cycled(values)
    assert [draw() for _ in range(12)] == values * 2 + values[:2]


def test_a_pass_over_the_draws_holds_no_copy_of_them():
    """itertools.cycle keeps a copy of everything it yields on its first pass: 8 bytes a
    request until 65,536 requests have gone (one pass), a creep that a soak at a low rate
    reads as a leak. The agent's draws must not allocate per draw."""
    values = [i % 7 for i in range(CHOICES)]
    draw = cycled(values)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(CHOICES + 10):
            draw()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 4096, grown  # itertools.cycle: ~560 kB
