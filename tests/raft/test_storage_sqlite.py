"""SqliteStorage on real files: reopening, crashes mid-write, and failures that must surface.

Run as a script, this module is the crashing child: it replays :func:`workload`
into a file and prints each step number once that step's save has returned.
"""

from __future__ import annotations

import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from parkd.db import StorageError, ensure_schema, open_engine
from parkd.raft.storage import MemoryStorage, SqliteStorage
from parkd.raft.types import Entry, EntryKind, HardState, PersistedState, SnapshotMeta

DEADLINE_S = 60  # a bound on every wait for the child, never a pause


def step(n: int, last_index: int) -> tuple[HardState, list[Entry]]:
    """The n-th save (from 1) of a deterministic history; every 5th rewrites a suffix."""
    term = 1 + n // 5
    first = max(1, last_index - 2) if n % 5 == 0 else last_index + 1
    batch = [
        Entry(i, term, EntryKind.NORMAL, f"{n}:{i}".encode() * 20) for i in range(first, first + 1 + n % 13)
    ]
    return HardState(term=term, vote=1 + n % 3, commit=n), batch


def workload(storage, start: int, stop: int, report=None) -> None:
    """Apply steps start..stop-1 to ``storage``, calling ``report(n)`` after each save."""
    state = storage.load()
    last_index = state.entries[-1].index if state.entries else 0
    for n in range(start, stop):
        hard_state, batch = step(n, last_index)
        storage.save(hard_state, batch)
        last_index = batch[-1].index
        if report:
            report(n)


def expected_after(steps: int) -> PersistedState:
    model = MemoryStorage()
    workload(model, 1, steps + 1)
    return model.load()


def _child(path: str, exit_at: int) -> None:
    """Save steps until killed; with ``exit_at``, die inside that step's transaction."""
    engine = open_engine(path)
    saving = [1]  # the step whose save is under way
    if exit_at:

        def _die(statement: str) -> None:
            if statement.startswith("INSERT INTO entries") and saving[0] == exit_at:
                os._exit(3)  # after this step's DELETE, before its rows and COMMIT

        @sa.event.listens_for(engine, "connect")
        def _trace(dbapi_connection, _record):
            dbapi_connection.set_trace_callback(_die)  # SQLite's own trace: every path to it

    def report(n: int) -> None:
        os.write(1, f"{n}\n".encode())
        saving[0] = n + 1

    workload(SqliteStorage(engine), 1, 10**6, report)


def _spawn(path, exit_at: int = 0) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen(
        [sys.executable, __file__, str(path), str(exit_at)], stdout=subprocess.PIPE, env=env
    )


def _reported_steps(proc: subprocess.Popen, kill_after: int | None) -> int:
    """Read the child's reports until EOF, killing it once ``kill_after`` is reached.

    Returns the last step the child reported complete.  Every wait is bounded.
    """
    deadline = time.monotonic() + DEADLINE_S
    last, buffer, killed = 0, b"", False
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                proc.kill()
                pytest.fail("the storage child made no progress in time")
            if not sel.select(remaining):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            if lines:
                last = int(lines[-1])
            if kill_after is not None and last >= kill_after and not killed:
                proc.send_signal(signal.SIGKILL)  # then drain what it wrote before dying
                killed = True
    proc.stdout.close()
    proc.wait(timeout=DEADLINE_S)
    return last


@pytest.mark.parametrize("kill_after", [1, 37, 150])
def test_sigkill_mid_write_leaves_a_complete_prefix(tmp_path, kill_after):
    path = tmp_path / "node.db"
    reported = _reported_steps(_spawn(path), kill_after)
    assert reported >= kill_after

    storage = SqliteStorage.open(str(path))
    found = storage.load()
    # The child may have finished one more save between its last report and the kill.
    matches = [n for n in (reported, reported + 1) if found == expected_after(n)]
    assert matches, f"state after reported step {reported} is not that of any whole step"

    workload(storage, matches[0] + 1, matches[0] + 4)  # and the file is still writable
    storage.close()
    assert SqliteStorage.open(str(path)).load() == expected_after(matches[0] + 3)


def test_exit_between_truncation_and_insert_rolls_the_truncation_back(tmp_path):
    path = tmp_path / "node.db"
    proc = _spawn(path, exit_at=20)  # step 20 rewrites a suffix
    assert _reported_steps(proc, kill_after=None) == 19
    assert proc.returncode == 3
    assert SqliteStorage.open(str(path)).load() == expected_after(19)


def test_reopen_returns_exactly_what_was_committed(tmp_path):
    path = str(tmp_path / "node.db")
    storage = SqliteStorage.open(path)
    workload(storage, 1, 30)
    meta = SnapshotMeta(index=10, term=2, voters=(1, 2, 3), learners=(5,))
    storage.compact(8, meta)
    before = storage.load()
    storage.close()

    reopened = SqliteStorage.open(path)
    assert reopened.load() == before
    assert before.snapshot == meta and before.entries[0].index == 9
    with pytest.raises(ValueError):  # the reopened storage knows where the log ends
        reopened.save(None, [Entry(before.entries[-1].index + 2, 9)])
    reopened.close()


def synchronous_of_transactions(engine, action) -> list[int]:
    """``PRAGMA synchronous`` of each transaction begun during ``action`` (1 NORMAL, 2 FULL)."""
    seen = []

    def begun(conn):
        seen.append(conn.connection.dbapi_connection.execute("PRAGMA synchronous").fetchone()[0])

    sa.event.listen(engine, "begin", begun)
    try:
        action()
    finally:
        sa.event.remove(engine, "begin", begun)
    return seen


def test_a_save_is_fsynced_exactly_when_the_ready_says_so(tmp_path):
    """The core says it (``Ready.must_sync``); storage does not second-guess.  Unsynced
    saves (the node fsyncs them off the reactor) commit without SQLite's fsync."""
    engine = open_engine(str(tmp_path / "raft.db"))
    storage = SqliteStorage(engine)
    assert synchronous_of_transactions(engine, lambda: storage.save(HardState(1, 1, 0), [Entry(1, 1)], sync=True)) == [2]
    assert synchronous_of_transactions(engine, lambda: storage.save(HardState(1, 1, 1), [Entry(2, 1)], sync=False)) == [1]
    assert synchronous_of_transactions(engine, lambda: storage.save(HardState(2, 0, 1), [], sync=True)) == [2]
    assert storage.load().hard_state == HardState(2, 0, 1)
    storage.close()
    assert all_pooled_synchronous(engine) == {2}  # what went back to the pool syncs fully again
    engine.dispose()


def all_pooled_synchronous(engine) -> set[int]:
    pooled = [engine.connect() for _ in range(engine.pool.checkedin())]
    try:
        return {c.connection.dbapi_connection.execute("PRAGMA synchronous").fetchone()[0] for c in pooled}
    finally:
        for conn in pooled:
            conn.close()


def test_sync_fsyncs_the_wal_that_holds_an_unsynced_save(tmp_path, monkeypatch):
    """The node commits a Ready without an fsync and calls ``sync`` off the reactor: it must
    fsync the file the commit went to (the WAL), and it makes no SQLite call."""
    path = str(tmp_path / "raft.db")
    storage = SqliteStorage.open(path)
    storage.save(HardState(1, 1, 0), [Entry(1, 1, data=b"a")], sync=False)
    synced, real_fsync = [], os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    storage.sync()
    assert synced == [path + "-wal"]
    assert os.path.getsize(path + "-wal") > 0  # the commit is in the WAL, now on disk


def test_sync_without_a_wal_fsyncs_the_database_file(tmp_path, monkeypatch):
    path = str(tmp_path / "raft.db")
    storage = SqliteStorage.open(path)
    storage.save(HardState(1, 1, 0), [Entry(1, 1, data=b"a")], sync=False)
    os.unlink(path + "-wal")  # as after the last connection closed (checkpointed into the file)
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")))
    storage.sync()
    assert synced == [path]


def test_a_failed_fsync_is_a_storage_error_naming_the_file(tmp_path, monkeypatch):
    path = str(tmp_path / "raft.db")
    storage = SqliteStorage.open(path)
    storage.save(HardState(1, 1, 0), [Entry(1, 1, data=b"a")], sync=False)

    def fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(StorageError, match=r"fsync of .*raft\.db-wal\) failed: .*Input/output error"):
        storage.sync()


def test_failure_inside_a_save_rolls_everything_back(tmp_path):
    storage = SqliteStorage.open(str(tmp_path / "node.db"))
    storage.save(HardState(1, 1), [Entry(i, 1, data=b"ok") for i in (1, 2, 3)])
    before = storage.load()
    with storage._engine.begin() as conn:  # a write that fails after the truncation ran
        conn.exec_driver_sql(
            "CREATE TRIGGER boom BEFORE INSERT ON entries WHEN NEW.data = x'626f6f6d' "
            "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )
    with pytest.raises(StorageError, match="disk on fire") as raised:
        storage.save(HardState(2, 2), [Entry(2, 2, data=b"ok"), Entry(3, 2, data=b"boom")])
    assert isinstance(raised.value.__cause__, sqlite3.Error)  # the driver's own error, chained
    assert storage.load() == before
    storage.save(HardState(2, 2), [Entry(2, 2, data=b"fine")])
    assert storage.load().entries == (Entry(1, 1, data=b"ok"), Entry(2, 2, data=b"fine"))
    storage.close()


def test_corrupt_file_raises_storage_error(tmp_path):
    path = tmp_path / "node.db"
    path.write_bytes(b"this is not a database, " * 200)
    with pytest.raises(StorageError, match="not a database") as raised:
        SqliteStorage.open(str(path))
    assert isinstance(raised.value.__cause__, (sa.exc.SQLAlchemyError, sqlite3.Error))


def test_unopenable_path_raises_storage_error(tmp_path):
    with pytest.raises(StorageError, match="unable to open"):
        SqliteStorage.open(str(tmp_path / "missing-dir" / "node.db"))


def test_newer_schema_version_is_refused(tmp_path):
    path = str(tmp_path / "node.db")
    SqliteStorage.open(path).close()
    engine = open_engine(path)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE schema_version SET version = 99 WHERE component = 'raft'")
    with pytest.raises(StorageError, match="raft schema version 99"):
        SqliteStorage(engine)
    engine.dispose()


def test_shares_its_engine_with_other_components(tmp_path):
    engine = open_engine(str(tmp_path / "node.db"))
    other = sa.MetaData()
    notes = sa.Table("notes", other, sa.Column("id", sa.Integer, primary_key=True))
    storage = SqliteStorage(engine)
    with engine.begin() as conn:
        ensure_schema(conn, other, "notes", 1)
        conn.execute(notes.insert().values(id=1))
    storage.save(HardState(1, 1), [Entry(1, 1)])
    storage.close()  # does not dispose an engine it was given
    with engine.connect() as conn:
        assert conn.scalar(sa.select(notes.c.id)) == 1
        versions = dict(conn.exec_driver_sql("SELECT component, version FROM schema_version").all())
    assert versions == {"raft": 1, "notes": 1}
    assert SqliteStorage(engine).load().entries == (Entry(1, 1),)
    engine.dispose()


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]))


def test_7_compaction_drops_the_log_in_bounded_batches_and_a_restart_midway_loads(tmp_path):
    """§7 log compaction in short transactions: each DELETE takes at most ``trim_batch`` entries.

    After :meth:`compact` only the first batch is gone, the snapshot is recorded; each
    :meth:`trim` takes one more batch and says whether some are left.  A log reopened
    midway overlaps the snapshot and loads into a ``RaftLog``; the next compaction
    removes what the crash left.
    """
    from parkd.raft.log import RaftLog

    path = str(tmp_path / "raft.db")
    storage = SqliteStorage.open(path)
    storage.trim_batch = 3
    storage.save(HardState(2, 1, 20), [Entry(i, 2, EntryKind.NORMAL, b"x") for i in range(1, 21)])
    meta = SnapshotMeta(index=15, term=2, voters=(1, 2, 3))
    storage.compact(10, meta)
    state = storage.load()
    assert state.snapshot == meta and [e.index for e in state.entries][:2] == [4, 5]
    storage.close()

    reopened = SqliteStorage.open(path)  # a restart before the trim went on
    state = reopened.load()
    log = RaftLog(state.entries, state.snapshot, state.hard_state.commit)
    assert log.last_index == 20 and log.term_at(15) == 2
    reopened.trim_batch = 3
    reopened.compact(12, SnapshotMeta(index=16, term=2, voters=(1, 2, 3)))
    assert reopened.load().entries[0].index == 7
    assert [reopened.trim(), reopened.trim()] == [True, False]  # 7-9, 10-12
    assert reopened.trim() is False
    assert [e.index for e in reopened.load().entries] == list(range(13, 21))
    reopened.close()
