"""The run history's SQLite schema: its tables, the columns a valid file has, and the types a
run row must hold (SQLite stores any type in any column). horde.coordinator.workflows.history
is the store that uses it."""

from __future__ import annotations

import functools
import math
import sqlite3
from typing import Any

from horde.coordinator.analysis.tracking import HEADLINE

SCHEMA_VERSION = 1

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    bundle_path TEXT NOT NULL UNIQUE,
    scenario TEXT NOT NULL,
    started TEXT,
    ended TEXT,
    outcome TEXT,
    complete INTEGER NOT NULL,
    duration_s REAL,
    {", ".join(f"{c} REAL" for c in HEADLINE)},
    thresholds_total INTEGER,
    thresholds_failed INTEGER,
    saturated INTEGER,
    target_memory_max_bytes REAL,
    horde_version TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_scenario ON runs (scenario, started);
CREATE TABLE IF NOT EXISTS run_endpoints (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    endpoint TEXT NOT NULL,
    {", ".join(f"{c} REAL" for c in HEADLINE)},
    PRIMARY KEY (run_id, endpoint)
);
CREATE TABLE IF NOT EXISTS run_thresholds (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    expr TEXT NOT NULL,
    endpoint TEXT,
    stage TEXT,
    ok INTEGER NOT NULL,
    observed REAL,
    observed_text TEXT,
    PRIMARY KEY (run_id, position)
);
CREATE TABLE IF NOT EXISTS metrics (
    source TEXT NOT NULL,
    name TEXT NOT NULL,
    t_wall_s REAL NOT NULL,
    value REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_by_name ON metrics (source, name, t_wall_s);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    rule TEXT NOT NULL,
    level TEXT NOT NULL,
    start,
    "end",
    peak,
    data TEXT NOT NULL,
    UNIQUE (source, rule, level, start)
);
"""


@functools.cache
def expected_columns() -> dict[str, frozenset[str]]:
    """The columns of each table as SCHEMA makes them (read from a scratch in-memory copy)."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(SCHEMA)
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: frozenset(r[1] for r in db.execute(f"PRAGMA table_info({t})")) for t in tables}
    finally:
        db.close()


def check_row_types(d: dict[str, Any]) -> None:
    """SQLite stores any type in any column: a run row's numbers must be numbers (or NULL)
    and its texts texts before they are formatted."""
    for col in (*HEADLINE, "duration_s", "thresholds_total", "thresholds_failed", "target_memory_max_bytes"):
        v = d.get(col)
        if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise ValueError(f"{col} is {type(v).__name__} {str(v)[:40]!r}, not a number")
    for col in ("bundle_path", "scenario"):
        if not isinstance(d.get(col), str):
            raise ValueError(f"{col} is not text")
    for col in ("started", "ended", "outcome", "horde_version"):
        if d.get(col) is not None and not isinstance(d[col], str):
            raise ValueError(f"{col} is not text")
