"""The SQLite layer: temporary directory lifecycle and persistence of a given path."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from horde.automaton.db import Database


def test_temporary_database_is_deleted_on_close() -> None:
    db = Database.open(None, threads=2)
    directory = os.path.dirname(db.path)
    assert os.path.exists(db.path)

    async def use() -> None:
        await db.insert_record({"a": 1})
        assert (await db.list_records(5))[0]["data"] == {"a": 1}

    asyncio.run(use())
    db.close()
    assert not os.path.exists(directory)
    db.close()  # idempotent


def test_given_path_persists_and_uses_wal(tmp_path: Path) -> None:
    path = str(tmp_path / "target.sqlite3")

    async def write() -> None:
        db = Database.open(path)
        try:
            await db.insert_record(["x"])
            await db.put_run("r1", "research", "running", None)
            await db.put_run("r1", "research", "completed", {"steps": []})
        finally:
            db.close()

    asyncio.run(write())
    assert os.path.exists(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    async def read() -> None:
        db = Database.open(path)
        try:
            assert [r["data"] for r in await db.list_records(10)] == [["x"]]
            run = await db.get_run("r1")
            assert run is not None
            assert run["status"] == "completed"
            assert run["result"] == {"steps": []}
            assert await db.get_run("r2") is None
        finally:
            db.close()

    asyncio.run(read())


def test_closed_database_refuses_queries() -> None:
    db = Database.open(None)
    db.close()
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(db.list_records(1))
