"""Databases made by an older release, for the schema-upgrade tests (imported as ``olddb``)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from parkd.db import open_engine
from parkd.parking.retention import ensure_retention_index
from parkd.parking.state import ParkingState
from parkd.raft.storage import SqliteStorage

DATA = Path(__file__).parent / "data"


def database_from_dump(dump: str, directory) -> str:
    """``data/<dump>`` (an sqlite3 ``iterdump``) written to ``directory/node.db``; its path."""
    path = str(Path(directory) / "node.db")
    conn = sqlite3.connect(path)
    try:
        conn.executescript((DATA / dump).read_text())
    finally:
        conn.close()
    return path


@contextlib.contextmanager
def opened_as_a_node(path: str, lots):
    """``(engine, storage, state)`` on ``path``, opened (and so upgraded) as a node opens
    its data dir (parkd.node.service.open_store)."""
    engine = open_engine(path)
    try:
        storage = SqliteStorage(engine)
        state = ParkingState(engine, lots)
        ensure_retention_index(engine)
        yield engine, storage, state
    finally:
        engine.dispose()
