"""The summary's `client` section: what the scenario's HTTP client options did in the run.

    client:
      tls_verify: false
      warnings: ["TLS certificate verification is off (tls.verify: false): ..."]
      data:
        accounts: {file: accounts.csv, order: unique, rows: 100, rows_used: 100, exhausted: 20, ran_out: true}

Rows used are counted from the samples: a request (or a flow iteration) that refers to a
data file took one row of it, unless it failed as data_exhausted. A flow iteration cut off
by the end of the run took a row but is not recorded, and rows a Python user takes with
`client.data()` are not tied to an endpoint: for those the count is a lower bound. Pure.
"""

from __future__ import annotations

from typing import Any

from horde.coordinator.plan import Plan

VERIFY_OFF = "TLS certificate verification is off (tls.verify: false): the target's identity was not checked"


def client_summary(plan: Plan, endpoints: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`endpoints`: the summary's per-endpoint figures (Stats.to_dict)."""
    data: dict[str, dict[str, Any]] = {}
    for name, info in plan.data_files.items():
        used = exhausted = 0
        for entry, files in plan.data_uses.items():
            if name not in files or entry not in endpoints:
                continue
            stats = endpoints[entry]
            out = int(stats.get("errors_by_class", {}).get("data_exhausted", 0))
            exhausted += out
            used += int(stats.get("requests", 0)) - out
        data[name] = {**info, "rows_used": used, "exhausted": exhausted, "ran_out": exhausted > 0}
    warnings = [] if plan.tls_verify else [VERIFY_OFF]
    for name, d in data.items():
        if d["ran_out"]:
            warnings.append(f"data file {name!r} ran out of rows: {d['exhausted']} requests not sent (data_exhausted)")
    return {"tls_verify": plan.tls_verify, "warnings": warnings, "data": data}
