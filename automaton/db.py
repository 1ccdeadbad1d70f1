"""The automaton's SQLite database, kept off the event loop.

Queries run on a small dedicated thread pool, one connection per thread, so a slow
write never blocks request handling and the default executor stays free. WAL lets
readers proceed while a writer commits.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS workflow_runs (
    run_id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    result TEXT
);
"""

# Writers wait for each other instead of failing with "database is locked" under load.
_BUSY_TIMEOUT_S = 10.0


class Database:
    """Async facade over one SQLite file. Create with `Database.open`, end with `close`."""

    def __init__(self, path: str, owned_dir: str | None, threads: int) -> None:
        self.path = path
        self._owned_dir = owned_dir
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="automaton-db")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._closed = False
        # The slow-database fault: every operation holds one lock this long, so they
        # serialise at 1 / lock_hold_s per second (set by the FaultInjector).
        self.lock_hold_s = 0.0
        self._slow_lock = threading.Lock()

    @classmethod
    def open(cls, path: str | None = None, threads: int = 4) -> Database:
        """Open (creating if needed) the database; `path=None` uses a temporary directory."""
        owned_dir = None
        if path is None:
            owned_dir = tempfile.mkdtemp(prefix="automaton-db-")
            path = os.path.join(owned_dir, "automaton.sqlite3")
        db = cls(path, owned_dir, threads)
        try:
            setup = db._connect()
            setup.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _connect(self) -> sqlite3.Connection:
        # check_same_thread=False only so close() can close it from the loop thread;
        # each connection is used by exactly one pool thread.
        conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable across process crashes in WAL mode, which is all a test target needs.
        conn.execute("PRAGMA synchronous=NORMAL")
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def _thread_connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise RuntimeError("database is closed")
        loop = asyncio.get_running_loop()
        hold_s = self.lock_hold_s
        if hold_s <= 0:
            return await loop.run_in_executor(self._executor, lambda: fn(self._thread_connection()))

        def slowly() -> T:
            with self._slow_lock:
                time.sleep(hold_s)
                return fn(self._thread_connection())

        return await loop.run_in_executor(self._executor, slowly)

    def close(self) -> None:
        """Wait for queued queries, close every connection, delete a temporary directory."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)

    # -- records ---------------------------------------------------------------

    async def insert_record(self, data: Any) -> dict[str, Any]:
        created_at = time.time()
        text = json.dumps(data)

        def insert(conn: sqlite3.Connection) -> int:
            cursor = conn.execute("INSERT INTO records (created_at, data) VALUES (?, ?)", (created_at, text))
            return int(cursor.lastrowid or 0)

        record_id = await self._run(insert)
        return {"id": record_id, "created_at": created_at, "data": data}

    async def list_records(self, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` records, newest first."""

        def select(conn: sqlite3.Connection) -> list[tuple[int, float, str]]:
            return conn.execute(
                "SELECT id, created_at, data FROM records ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()

        rows = await self._run(select)
        return [{"id": r[0], "created_at": r[1], "data": json.loads(r[2])} for r in rows]

    # -- workflow runs ---------------------------------------------------------

    async def put_run(self, run_id: str, workflow: str, status: str, result: dict[str, Any] | None) -> None:
        """Insert a run, or update its status and result if it exists."""
        now = time.time()
        text = None if result is None else json.dumps(result)

        def upsert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO workflow_runs (run_id, workflow, status, created_at, updated_at, result)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(run_id) DO UPDATE SET"
                " status = excluded.status, updated_at = excluded.updated_at, result = excluded.result",
                (run_id, workflow, status, now, now, text),
            )

        await self._run(upsert)

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        def select(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
            return conn.execute(
                "SELECT run_id, workflow, status, created_at, updated_at, result FROM workflow_runs WHERE run_id = ?",
                (run_id,),
            ).fetchone()

        row = await self._run(select)
        if row is None:
            return None
        return {
            "run_id": row[0],
            "workflow": row[1],
            "status": row[2],
            "created_at": row[3],
            "updated_at": row[4],
            "result": None if row[5] is None else json.loads(row[5]),
        }
