"""On horde's embedded Ray an agent's batch up to STREAM_INLINE_BYTES travels inside its
stream's report to the driver, not through the object store (Ray's default limit is 100 KiB:
a 150 kB batch went through the store, and 256 simulated agents' windows closed late;
docs/scale.md). Larger items still go through the store."""

from __future__ import annotations

import pytest

from horde.cluster.connect import STREAM_INLINE_BYTES
from horde.cluster.fleet import STREAM_BACKPRESSURE_OBJECTS


@pytest.mark.timeout(120)
def test_a_streamed_batch_up_to_the_limit_is_inline_and_a_larger_one_in_the_store(ray_cluster):
    import ray

    @ray.remote(num_cpus=0)
    class Streamer:
        def stream(self, sizes: list[int]):
            for n in sizes:
                yield b"b" * n

    sizes = [300_000, STREAM_INLINE_BYTES - 4096, 3 * STREAM_INLINE_BYTES]
    actor = Streamer.remote()
    try:
        call = actor.stream.options(_generator_backpressure_num_objects=STREAM_BACKPRESSURE_OBJECTS)
        stored = []
        for ref in call.remote(sizes):
            assert len(ray.get(ref, timeout=60)) in sizes
            # asked once the item is here: a stored one's location is registered by then
            where = ray.experimental.get_object_locations([ref], timeout_ms=30_000)[ref]
            stored.append(bool(where["node_ids"]))
    finally:
        ray.kill(actor)
    assert stored == [False, False, True]
