"""Issue 12's fault table, measured on a Ray cluster in network namespaces (root only).

    python bench/netns_faults.py [FAULT ...]      # default: every fault of tests/integration/netns/faults.py

Per fault: loss detected and load restored (s after the fault, from the bundle's loss
records), requests the target received from an agent after its lease must have lapsed,
served vs planned, the busiest second, and the bundle's requests and missed/lost counts.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests.integration.netns helpers

from tests.integration.netns.cluster import NetnsCluster
from tests.integration.netns.faults import FAULTS, run_fault
from tests.integration.netns.net import netns_available


def main(argv: list[str]) -> int:
    faults = argv or list(FAULTS)
    why = netns_available()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    began = time.monotonic()
    cluster = NetnsCluster.start()
    rows = []
    try:
        work = Path(tempfile.mkdtemp(prefix="netns-faults-"))
        for fault in faults:
            t = time.monotonic()
            outcome = run_fault(cluster, fault, work / fault)
            row = outcome.row() | {"case_s": round(time.monotonic() - t, 1)}
            rows.append(row)
            detail = {
                "row": row,
                "by_source": outcome.by_source,
                "fault_wall": outcome.fault_wall,
                "heal_wall": outcome.heal_wall,
                "run_start_wall": outcome.run_start_wall,
                "losses": outcome.losses(),
                "log_tail": outcome.log_tail,
            }
            (work / f"{fault}.json").write_text(json.dumps(detail, indent=1))
            print(json.dumps(row), flush=True)
    finally:
        left = cluster.close()
        if left:
            print(f"left behind: {left}", file=sys.stderr)
    print(f"\ntotal {time.monotonic() - began:.0f}s; bundles under {work}")
    cols = (
        "fault",
        "detected_s",
        "restored_s",
        "after_lease",
        "served",
        "planned",
        "max_second",
        "over_plan",
        "bundle_requests",
        "missed",
        "lost",
        "unaccounted",
        "outcome",
    )
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
