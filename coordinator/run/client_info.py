"""The summary's `client` section: what the scenario's HTTP client options did in the run.

    client:
      tls_verify: false
      warnings: ["TLS certificate verification is off (tls.verify: false): ..."]
      data:
        accounts: {file: accounts.csv, order: unique, rows: 100, rows_used: 100, exhausted: 20, ran_out: true}

Rows are counted where they are taken: each agent counts the rows its data files hand out
and the requests refused for want of one (agents/data.py), whether a YAML entry, a flow
iteration or a Python user's `client.data()` asked, and each batch carries the counts since
the last (the batch field `data`); the session sums them. A lost agent's rows taken after
its last batch are never reported: they are not in the count. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from horde.coordinator.plan import Plan

VERIFY_OFF = "TLS certificate verification is off (tls.verify: false): the target's identity was not checked"


def client_summary(plan: Plan, data_rows: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """`data_rows`: data file -> [rows used, exhausted], summed over the run's batches."""
    data: dict[str, dict[str, Any]] = {}
    for name, info in plan.data_files.items():
        used, exhausted = data_rows.get(name, (0, 0))
        data[name] = {**info, "rows_used": used, "exhausted": exhausted, "ran_out": exhausted > 0}
    warnings = [] if plan.tls_verify else [VERIFY_OFF]
    for name, d in data.items():
        if d["ran_out"]:
            warnings.append(f"data file {name!r} ran out of rows: {d['exhausted']} requests not sent (data_exhausted)")
    return {"tls_verify": plan.tls_verify, "warnings": warnings, "data": data}
