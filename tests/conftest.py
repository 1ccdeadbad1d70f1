"""Session-wide test set-up: a private HOME for Ray, one embedded Ray per session."""

from __future__ import annotations

import os
import tempfile

import pytest

# Ray (2.60) turns token auth on for a local ray.init and keeps the token in ~/.ray:
# give the whole session, and every horde subprocess it starts, a HOME of its own.
_HOME = tempfile.mkdtemp(prefix="horde-test-home-")
os.environ["HOME"] = _HOME
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_cluster():
    """One embedded Ray for the whole session (ray.init costs seconds and ~1 GiB)."""
    import ray

    from horde.cluster.connect import connect

    conn = connect(None)
    yield ray.get_runtime_context().gcs_address
    conn.close()


# Property tests check behaviour, not speed: on a loaded 2-core machine a single example
# can take far longer than hypothesis' default 200 ms deadline.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("horde", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("horde")
