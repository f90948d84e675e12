"""A node.db made before ``auto_vacuum = INCREMENTAL`` is rewritten with it once, when a node opens it (issue 14).

The file is the previous release's (``tests/parking/data/node-parking-schema-3.sql``,
written by sqlite3 without the pragma, as every parkd before this one wrote it).
"""

from __future__ import annotations

import os
import sqlite3
import sys

import pytest
from twisted.logger import globalLogPublisher, formatEvent

from parkd.db import frees_incrementally, vacuum_step
from parkd.node.service import open_store

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "parking"))
from olddb import database_from_dump  # noqa: E402

LOTS = {"north": 100, "south": 60}
TABLES = ("lots", "cameras", "incarnations", "frames", "lot_buckets", "camera_registry", "entries", "hard_state")


@pytest.fixture
def log_lines():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield lambda: [formatEvent(e) for e in events if e.get("log_namespace") == "parkd.node.service"]
    globalLogPublisher.removeObserver(events.append)


def rows(path: str) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(path)
    try:
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in TABLES}
    finally:
        conn.close()


def old_data_dir(tmp_path) -> str:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = database_from_dump("node-parking-schema-3.sql", data_dir)
    assert not frees_incrementally(path)
    return str(data_dir)


def test_an_old_node_db_is_rewritten_once_to_give_trimmed_space_back(tmp_path, log_lines):
    data_dir = old_data_dir(tmp_path)
    path = os.path.join(data_dir, "node.db")
    before = rows(path)
    store = open_store(data_dir, LOTS, disk_free=lambda _: 1 << 40)
    store.close()
    assert frees_incrementally(path)
    after = rows(path)
    assert {t: after[t] for t in TABLES if t != "lots"} == {t: before[t] for t in TABLES if t != "lots"}
    assert any("was made by an older parkd: rewriting it once" in line for line in log_lines())
    assert any("rewritten in" in line for line in log_lines())
    # freed pages now go back to the filesystem
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE filler (x BLOB)")
    conn.executemany("INSERT INTO filler VALUES (?)", [(b"x" * 4000,) for _ in range(500)])
    conn.execute("DROP TABLE filler")
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] >= 500
    conn.close()
    store = open_store(data_dir, LOTS, disk_free=lambda _: 1 << 40)
    try:
        assert vacuum_step(store.engine, pages=10_000) == 0
    finally:
        store.close()
    assert sum("rewriting it once" in line for line in log_lines()) == 1  # not again


def test_without_room_for_the_rewrite_the_node_opens_the_file_as_it_is_and_says_what_to_do(tmp_path, log_lines):
    data_dir = old_data_dir(tmp_path)
    path = os.path.join(data_dir, "node.db")
    before = rows(path)
    store = open_store(data_dir, LOTS, disk_free=lambda _: os.path.getsize(path))
    store.close()
    assert not frees_incrementally(path)
    assert rows(path)["frames"] == before["frames"]
    [line] = [line for line in log_lines() if "keeps the space of trimmed frames" in line]
    assert "free some space and restart the node" in line


def test_a_new_node_db_frees_incrementally_from_the_start(tmp_path, log_lines):
    store = open_store(str(tmp_path / "new"), LOTS, disk_free=lambda _: 0)
    store.close()
    assert frees_incrementally(str(tmp_path / "new" / "node.db"))
    assert log_lines() == []
