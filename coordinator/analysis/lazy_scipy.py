"""scipy.stats, imported on first use.

Importing scipy.stats costs about 0.5-0.7 s of CPU on a 2-core machine, and a run shorter than
the soak analysis's minimum never calls it: `horde run` imports the analyses at start-up, so
they reach scipy through `sps` here and pay for it only when a statistic is computed.
"""

from __future__ import annotations

from typing import Any


class _LazyStats:
    def __getattr__(self, name: str) -> Any:
        from scipy import stats

        return getattr(stats, name)


sps = _LazyStats()
