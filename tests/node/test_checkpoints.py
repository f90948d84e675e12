"""The WAL's checkpoints on the Checkpointer's thread (parkd/node/checkpoints.py)."""

from __future__ import annotations

import os
import sqlite3

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from doubles import InlineThread
from parkd.db import open_engine
from parkd.node.checkpoints import REPORT_S, Checkpointer


def fill(engine, rows: int = 3000) -> None:
    """Commit ``rows`` transactions of one 4 KB row each (a WAL page or two each)."""
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (x BLOB)")
    for _ in range(rows):
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (randomblob(4000))")


def test_a_checkpoint_copies_the_wal_and_the_next_writer_starts_it_again(tmp_path):
    path = str(tmp_path / "node.db")
    engine = open_engine(path)
    fill(engine, 300)  # below the commits' own automatic checkpoint (1000 pages)
    checkpoints = Checkpointer(path, Clock(), InlineThread())
    results = []
    checkpoints.checkpoint().addCallback(results.append)
    busy, frames, copied = results[0]
    assert busy == 0 and frames == copied > 100  # every frame copied
    before = os.path.getsize(path + "-wal")
    fill(engine, 10)  # a complete checkpoint: the writer goes back to the WAL's start
    assert os.path.getsize(path + "-wal") == before
    checkpoints.stop()
    engine.dispose()


def test_the_timer_checkpoints_every_interval(tmp_path):
    path = str(tmp_path / "node.db")
    engine = open_engine(path)
    fill(engine, 10)
    clock = Clock()
    checkpoints = Checkpointer(path, clock, InlineThread(), interval=1.0)
    checkpoints.start()
    clock.advance(0.9)
    assert checkpoints.done == 0
    clock.advance(0.1)
    clock.advance(1.0)
    assert checkpoints.done == 2
    checkpoints.stop()
    clock.advance(5.0)
    assert checkpoints.done == 2
    engine.dispose()


def test_a_failing_checkpoint_is_one_warning_per_interval_of_reports_and_is_tried_again(tmp_path):
    path = str(tmp_path / "node.db")
    engine = open_engine(path)
    fill(engine, 10)
    clock, events = Clock(), []
    checkpoints = Checkpointer(path, clock, InlineThread(), interval=1.0)

    def broken():
        raise sqlite3.OperationalError("disk I/O error")

    checkpoints._run = broken
    globalLogPublisher.addObserver(events.append)
    try:
        checkpoints.start()
        for _ in range(int(REPORT_S) + 5):
            clock.advance(1.0)
    finally:
        globalLogPublisher.removeObserver(events.append)
        checkpoints.stop()
    warnings = [e for e in events if "checkpointing the WAL failed" in e.get("log_format", "")]
    assert len(warnings) == 2  # at 1 s and after REPORT_S, not one per second
    assert warnings[0]["error"] == "disk I/O error"
    engine.dispose()


def test_a_checkpoint_between_a_read_and_a_write_of_the_nodes_transaction_does_not_fail_it(tmp_path):
    """The reactor's transactions read, then write (apply).  A checkpoint mode that takes the write
    lock and resets the WAL in between fails that write at once ("database is locked": it stopped a
    node at 2 M frames with TRUNCATE on the thread); the thread's PASSIVE checkpoint must not."""
    path = str(tmp_path / "node.db")
    engine = open_engine(path)
    fill(engine, 50)
    checkpoints = Checkpointer(path, Clock(), InlineThread())
    with engine.begin() as conn:
        conn.exec_driver_sql("SELECT count(*) FROM t").scalar()  # the transaction holds a WAL snapshot
        results = []
        checkpoints.checkpoint().addCallback(results.append)
        assert results[0][0] == 0  # ran, not busy
        conn.exec_driver_sql("INSERT INTO t VALUES (randomblob(10))")  # then writes: no "database is locked"
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 51
    checkpoints.stop()
    engine.dispose()
