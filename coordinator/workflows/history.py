"""The run history: one SQLite file in the results directory (stdlib sqlite3, WAL mode).

It holds, per finished bundle, the headline figures of the run and of each endpoint and the
threshold verdicts (``add_run``, idempotent on the bundle path), the samples of continuous
monitoring (``record_metrics``) and alerts (``record_alert``). ``track`` reads a headline
metric across the runs of a scenario and says whether the last run regressed or improved
against the runs before it, and where the metric trends (the judgement itself is pure:
horde.coordinator.analysis.tracking; the text is horde.coordinator.report.history_text).

The store is small and bounded by what is put in it: a run is one row plus one per endpoint
and per threshold, never its samples; monitoring samples can be trimmed (``trim_metrics``).
Bundle paths inside the history's directory are stored relative to it, so a results
directory can be moved or copied whole.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from horde.coordinator import files
from horde.coordinator.analysis.tracking import (
    ENDPOINT_METRICS,
    HEADLINE,
    RUN_METRICS,
    RunRow,
    finite_number,
    headline,
    track_series,
)
from horde.coordinator.bundle.schema import Summary, as_manifest, as_summary

# Re-exported: `horde history` (coordinator/cli.py, coordinator/commands/history.py after its
# split) imports the text from here; it may import it from report.history_text instead.
from horde.coordinator.report.history_text import text_history as text_history
from horde.coordinator.report.history_text import text_track as text_track
from horde.coordinator.workflows.history_schema import SCHEMA, SCHEMA_VERSION, check_row_types, expected_columns

DEFAULT_FILENAME = "history.sqlite3"
BUSY_TIMEOUT_S = 30.0  # how long to wait for another process's write lock


class HistoryError(RuntimeError):
    pass


def _summary_from_windows(bundle: Any) -> Summary | None:
    """Totals rebuilt from the per-window histograms of a bundle without summary.json
    (its coordinator was killed): every figure can be recomputed from the bundle."""
    from horde.coordinator.analysis.compare import bundle_scopes  # deferred: scipy is only needed here

    scopes = bundle_scopes(bundle)
    if (None, None) not in scopes:
        return None
    return Summary.model_validate(
        {
            "duration_s": scopes[(None, None)].duration_s,
            "total": scopes[(None, None)].to_dict(),
            "endpoints": {e: s.to_dict() for (e, st), s in scopes.items() if e is not None and st is None},
        }
    )


class History:
    """The history store. Safe to share between threads of one process; several processes
    may use one file (WAL, a busy timeout)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm", "-journal"):  # SQLite opens its side files by name, following links
            files.refuse_link(self.path.with_name(self.path.name + suffix))
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                str(self.path), timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None
            )
        except sqlite3.Error as exc:  # a directory there, no permission, ...
            raise HistoryError(f"{self.path}: cannot open the history: {exc}") from None
        self._db.row_factory = sqlite3.Row
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            with self._tx():
                for stmt in SCHEMA.split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
                row = self._db.execute("SELECT version FROM schema_version").fetchone()
                if row is None:
                    self._db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                elif not isinstance(row["version"], int) or row["version"] < 1:
                    raise HistoryError(
                        f"{self.path}: history schema version {str(row['version'])[:40]!r} is not one horde writes"
                    )
                elif row["version"] > SCHEMA_VERSION:
                    raise HistoryError(
                        f"{self.path}: history schema {row['version']} is newer than this horde's ({SCHEMA_VERSION})"
                    )
                self._check_columns()
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            self._db.close()
            raise HistoryError(f"{self.path}: not a usable history file: {exc}") from None
        except HistoryError:
            self._db.close()
            raise

    def _check_columns(self) -> None:
        """Every table has the columns horde reads: a damaged schema (a flipped byte renames
        a column) is a clear error here, not a KeyError in a later query."""
        for table, wanted in expected_columns().items():
            have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})").fetchall()}
            if missing := wanted - have:
                raise HistoryError(
                    f"{self.path}: not a usable history file: table {table} lacks {', '.join(sorted(missing))}"
                )

    # -- plumbing ------------------------------------------------------------------------

    class _Tx:
        def __init__(self, h: History) -> None:
            self.h = h

        def __enter__(self) -> sqlite3.Connection:
            self.h._lock.acquire()
            try:
                self.h._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:  # locked longer than BUSY_TIMEOUT_S, or not a database
                self.h._lock.release()
                raise HistoryError(f"{self.h.path}: {exc}") from None
            return self.h._db

        def __exit__(self, exc_type, exc, tb) -> None:
            try:
                self.h._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
            except sqlite3.Error as end_exc:
                if exc is None or isinstance(exc, sqlite3.Error):
                    raise HistoryError(f"{self.h.path}: {end_exc}") from None
            finally:
                self.h._lock.release()
            if isinstance(exc, (sqlite3.Error, UnicodeDecodeError)):  # damage found mid-transaction: the file
                raise HistoryError(f"{self.h.path}: not a usable history file: {exc}") from None

    def _tx(self) -> History._Tx:
        return History._Tx(self)

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except (sqlite3.Error, UnicodeDecodeError) as exc:  # a damaged page or text, another layout, a lock
                raise HistoryError(f"{self.path}: not a usable history file: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- runs ----------------------------------------------------------------------------

    def _stored_path(self, bundle_path: str | Path) -> str:
        p = Path(bundle_path).resolve()
        try:
            return str(p.relative_to(self.path.parent.resolve()))
        except ValueError:
            return str(p)

    def _absolute(self, stored: str) -> str:
        p = Path(stored)
        return str(p if p.is_absolute() else (self.path.parent / p).resolve())

    def add_run(self, bundle: Any) -> int:
        """Record a bundle's run; adding the same bundle path again updates it in place and
        returns the same id."""
        m = as_manifest(bundle.manifest)
        s = as_summary(bundle.summary) if bundle.summary is not None else _summary_from_windows(bundle)
        scenario = m.scenario_name or Path(bundle.path).name.rsplit("-", 1)[0]
        thresholds = list(s.thresholds) if s is not None else []
        resources = s.target_resources if s is not None else None
        memory = resources.target_memory if resources is not None else None
        run: dict[str, Any] = {
            "bundle_path": self._stored_path(bundle.path),
            "scenario": scenario,
            "started": m.started,
            "ended": m.ended,
            "outcome": m.outcome,
            "complete": int(bool(bundle.complete)),
            "duration_s": finite_number(s.duration_s) if s is not None else None,
            **headline(s.total if s is not None else None),
            "thresholds_total": len(thresholds),
            "thresholds_failed": sum(1 for t in thresholds if not t.ok),
            # unknown (None) for a summary rebuilt from windows: no generator readings in it
            "saturated": int(s.generator.saturated) if s is not None and "generator" in s.model_fields_set else None,
            "target_memory_max_bytes": finite_number(memory.max) if memory is not None else None,
            "horde_version": m.horde_version,
        }
        cols = list(run)
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c != "bundle_path")
        with self._tx() as db:
            db.execute(
                f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)}) "
                f"ON CONFLICT (bundle_path) DO UPDATE SET {updates}",
                [run[c] for c in cols],
            )
            run_id = int(db.execute("SELECT id FROM runs WHERE bundle_path = ?", (run["bundle_path"],)).fetchone()[0])
            db.execute("DELETE FROM run_endpoints WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM run_thresholds WHERE run_id = ?", (run_id,))
            for name, scope in (s.endpoints if s is not None else {}).items():
                h = headline(scope)
                marks = ", ".join("?" for _ in h)
                db.execute(
                    f"INSERT INTO run_endpoints (run_id, endpoint, {', '.join(h)}) VALUES (?, ?, {marks})",
                    [run_id, name, *h.values()],
                )
            for i, t in enumerate(thresholds):
                db.execute(
                    "INSERT INTO run_thresholds (run_id, position, expr, endpoint, stage, ok, observed, observed_text)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, i, t.expr, t.endpoint, t.stage, int(t.ok), finite_number(t.observed), t.observed_text),
                )
        return run_id

    def _rows(self, where: str, args: Sequence[Any], limit: int | None) -> list[RunRow]:
        sql = f"SELECT * FROM runs {where} ORDER BY started DESC, id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows = self._query(sql, args)
        if not rows:
            return []
        ids = [r["id"] for r in rows]
        marks = ", ".join("?" for _ in ids)
        endpoints: dict[int, dict[str, dict[str, float | None]]] = {i: {} for i in ids}
        for e in self._query(f"SELECT * FROM run_endpoints WHERE run_id IN ({marks}) ORDER BY rowid", ids):
            # .setdefault: a damaged index can answer a run_id that was not asked for
            endpoints.setdefault(e["run_id"], {})[e["endpoint"]] = {c: e[c] for c in HEADLINE}
        thresholds: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
        for t in self._query(f"SELECT * FROM run_thresholds WHERE run_id IN ({marks}) ORDER BY run_id, position", ids):
            thresholds.setdefault(t["run_id"], []).append(
                {
                    "expr": t["expr"],
                    "endpoint": t["endpoint"],
                    "stage": t["stage"],
                    "ok": bool(t["ok"]),
                    "observed": t["observed"],
                    "observed_text": t["observed_text"],
                }
            )
        out = []
        for r in rows:
            d = dict(r)
            try:
                check_row_types(d)
                d["complete"] = bool(d["complete"])
                d["saturated"] = None if d["saturated"] is None else bool(d["saturated"])
                d["bundle_path"] = self._absolute(d["bundle_path"])
                for c in ("requests", "errors"):
                    d[c] = None if d[c] is None else int(d[c])
                out.append(RunRow(**d, endpoints=endpoints[r["id"]], thresholds=thresholds[r["id"]]))
            except (TypeError, ValueError, KeyError, OverflowError) as exc:  # SQLite keeps whatever was stored
                raise HistoryError(f"{self.path}: run {d.get('id')}: unexpected content: {exc}") from None
        return out

    def runs(self, scenario: str | None = None, limit: int = 50) -> list[RunRow]:
        """Runs, newest first (by start time), of one scenario or all."""
        if scenario is None:
            return self._rows("", (), limit)
        return self._rows("WHERE scenario = ?", (scenario,), limit)

    def run(self, run_id: int) -> RunRow:
        rows = self._rows("WHERE id = ?", (int(run_id),), None)
        if not rows:
            raise KeyError(f"no run {run_id} in {self.path}")
        return rows[0]

    def scenarios(self) -> list[str]:
        return [r[0] for r in self._query("SELECT DISTINCT scenario FROM runs ORDER BY scenario")]

    def series_rows(
        self, scenario: str, metric: str, endpoint: str | None = None, *, complete_only: bool = True
    ) -> list[tuple[int, str, float]]:
        """(run id, started, value) of a headline metric, oldest first; runs without it skipped."""
        allowed = ENDPOINT_METRICS if endpoint is not None else RUN_METRICS
        if metric not in allowed:
            raise ValueError(f"unknown metric {metric!r}; one of {', '.join(allowed)}")
        done = " AND r.complete = 1" if complete_only else ""
        if endpoint is None:
            sql = (
                f"SELECT r.id, r.started, r.{metric} FROM runs r WHERE r.scenario = ?{done} AND r.{metric} IS NOT NULL"
            )
            args: tuple[Any, ...] = (scenario,)
        else:
            sql = (
                f"SELECT r.id, r.started, e.{metric} FROM runs r JOIN run_endpoints e ON e.run_id = r.id"
                f" WHERE r.scenario = ? AND e.endpoint = ?{done} AND e.{metric} IS NOT NULL"
            )
            args = (scenario, endpoint)
        rows = self._query(sql + " ORDER BY r.started, r.id", args)
        bad = next((r for r in rows if not isinstance(r[2], (int, float)) or not math.isfinite(r[2])), None)
        if bad is not None:  # SQLite keeps whatever was stored
            raise HistoryError(f"{self.path}: run {bad[0]}: {metric} is {str(bad[2])[:40]!r}, not a number")
        return [(int(r[0]), r[1], float(r[2])) for r in rows]

    def series(
        self, scenario: str, metric: str, endpoint: str | None = None, *, complete_only: bool = True
    ) -> list[tuple[str, float]]:
        """(started ISO time, value) of a headline metric across the runs, oldest first."""
        return [
            (started, v) for _, started, v in self.series_rows(scenario, metric, endpoint, complete_only=complete_only)
        ]

    # -- continuous monitoring -----------------------------------------------------------

    def record_metrics(self, source: str, t_wall_s: float, metrics: dict[str, float]) -> None:
        """One sample of each named metric at wall time t_wall_s (None / NaN skipped)."""
        rows = [
            (source, name, float(t_wall_s), float(v)) for name, v in metrics.items() if finite_number(v) is not None
        ]
        if rows:
            with self._tx() as db:
                db.executemany("INSERT INTO metrics (source, name, t_wall_s, value) VALUES (?, ?, ?, ?)", rows)

    def metrics(
        self, source: str, name: str, since_wall_s: float | None = None, until_wall_s: float | None = None
    ) -> list[tuple[float, float]]:
        sql = "SELECT t_wall_s, value FROM metrics WHERE source = ? AND name = ?"
        args: list[Any] = [source, name]
        if since_wall_s is not None:
            sql += " AND t_wall_s >= ?"
            args.append(float(since_wall_s))
        if until_wall_s is not None:
            sql += " AND t_wall_s <= ?"
            args.append(float(until_wall_s))
        return [(r[0], r[1]) for r in self._query(sql + " ORDER BY t_wall_s, rowid", args)]

    def metric_names(self, source: str | None = None) -> list[tuple[str, str]]:
        """(source, name) pairs that have samples."""
        if source is None:
            rows = self._query("SELECT DISTINCT source, name FROM metrics ORDER BY source, name")
        else:
            rows = self._query("SELECT DISTINCT source, name FROM metrics WHERE source = ? ORDER BY name", (source,))
        return [(r[0], r[1]) for r in rows]

    def trim_metrics(self, before_wall_s: float, source: str | None = None) -> int:
        """Delete monitoring samples older than before_wall_s; returns how many went."""
        with self._tx() as db:
            if source is None:
                cur = db.execute("DELETE FROM metrics WHERE t_wall_s < ?", (float(before_wall_s),))
            else:
                cur = db.execute(
                    "DELETE FROM metrics WHERE source = ? AND t_wall_s < ?", (source, float(before_wall_s))
                )
            return int(cur.rowcount)

    # -- alerts --------------------------------------------------------------------------

    def record_alert(self, alert: dict[str, Any]) -> None:
        """Store an alert ({"rule", "level", "start", "end", "peak", "source", ...}). The same
        (source, rule, level, start) recorded again (its end, a higher peak) updates it."""
        for key in ("rule", "level"):
            if not alert.get(key):
                raise ValueError(f"an alert needs {key!r}")
        data = json.dumps(alert, sort_keys=True, default=str)
        source = str(alert.get("source") or "")
        with self._tx() as db:
            db.execute(
                'INSERT INTO alerts (source, rule, level, start, "end", peak, data) VALUES (?, ?, ?, ?, ?, ?, ?) '
                'ON CONFLICT (source, rule, level, start) DO UPDATE SET "end" = excluded."end", '
                "peak = excluded.peak, data = excluded.data",
                (
                    source,
                    str(alert["rule"]),
                    str(alert["level"]),
                    _plain(alert.get("start")),
                    _plain(alert.get("end")),
                    _plain(alert.get("peak")),
                    data,
                ),
            )

    def alerts(self, source: str | None = None) -> list[dict[str, Any]]:
        """Alerts as recorded, in the order they were first recorded."""
        if source is None:
            rows = self._query("SELECT data FROM alerts ORDER BY id")
        else:
            rows = self._query("SELECT data FROM alerts WHERE source = ? ORDER BY id", (source,))
        return [json.loads(r[0]) for r in rows]


def _plain(v: Any) -> Any:
    if v is None or isinstance(v, (int, float, str)):
        return v
    return json.dumps(v, default=str)


def default_history_path(results_dir: str | Path) -> Path:
    return Path(results_dir) / DEFAULT_FILENAME


def record_bundle(bundle_path: str | Path, history_path: str | Path | None = None) -> int:
    """Add a finished bundle to the history next to it (``<results dir>/history.sqlite3``)
    unless another history file is given; returns the run id."""
    from horde.coordinator.bundle.store import read_bundle

    bundle = read_bundle(bundle_path)
    path = Path(history_path) if history_path is not None else default_history_path(bundle.path.parent)
    with History(path) as h:
        return h.add_run(bundle)


def track(history: History, scenario: str, metric: str = "p99_latency_ms", **options: Any) -> dict[str, Any]:
    """A headline metric across a scenario's complete runs in ``history``: the options and
    the result of horde.coordinator.analysis.tracking.track_series."""
    rows = history.series_rows(scenario, metric, options.get("endpoint"))
    return track_series(rows, scenario=scenario, metric=metric, **options)
