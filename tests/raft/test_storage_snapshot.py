"""Raft storage and snapshots: installing one, compacting with a trailing margin, reloading."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from parkd.db import StorageError, open_engine
from parkd.raft.storage import SqliteStorage, install_snapshot_in
from parkd.raft.types import HardState, PersistedState, SnapshotMeta
from test_storage import entries  # the `storage` fixture is in conftest.py




META = SnapshotMeta(index=20, term=3, voters=(1, 2, 3), learners=(4,))


def test_install_replaces_the_log_and_raises_commit(storage):
    storage.save(HardState(3, 2, 5), entries(1, 8, term=1))
    storage.install_snapshot(META)
    assert storage.load() == PersistedState(HardState(3, 2, 20), (), META)
    with pytest.raises(ValueError):
        storage.save(None, entries(20, 20, term=3))  # covered by the snapshot
    storage.save(None, entries(21, 22, term=3))
    assert storage.load().entries == tuple(entries(21, 22, 3))


def test_install_raises_the_term_to_the_snapshots(storage):
    storage.save(HardState(1, 2, 0), [])
    storage.install_snapshot(META)
    assert storage.load().hard_state == HardState(3, 0, 20)  # a vote of term 1 is no vote in term 3
    storage.save(HardState(5, 1, 20), [])
    storage.install_snapshot(SnapshotMeta(30, 4))
    assert storage.load().hard_state == HardState(5, 1, 30)


def test_install_deletes_entries_beyond_the_snapshot_too(storage):
    storage.save(HardState(3, 2, 25), entries(1, 30, term=3))
    storage.install_snapshot(META)
    assert storage.load() == PersistedState(HardState(3, 2, 25), (), META)  # commit never goes down
    storage.save(None, entries(21, 21, term=3))


def test_install_refuses_a_snapshot_older_than_the_stored_one(storage):
    storage.install_snapshot(META)
    storage.save(None, entries(21, 23, term=3))
    with pytest.raises(ValueError):
        storage.install_snapshot(SnapshotMeta(10, 2))
    assert storage.load() == PersistedState(HardState(3, 0, 20), tuple(entries(21, 23, 3)), META)


def test_install_in_the_callers_transaction_rolls_back_with_it(tmp_path):
    engine = open_engine(str(tmp_path / "node.db"))
    storage = SqliteStorage(engine)
    storage.save(HardState(1, 1, 4), entries(1, 6, term=1))
    before = storage.load()
    with pytest.raises(RuntimeError), engine.begin() as conn:
        install_snapshot_in(conn, META)
        raise RuntimeError("the state machine's half failed")
    assert storage.load() == before
    with engine.begin() as conn:
        install_snapshot_in(conn, META)
    storage.refresh()  # the open storage learns where the log now starts
    storage.save(None, entries(21, 21, term=3))
    assert storage.load() == PersistedState(HardState(3, 0, 20), tuple(entries(21, 21, 3)), META)
    storage.close()
    engine.dispose()


def test_install_failure_surfaces_as_storage_error(tmp_path):
    engine = open_engine(str(tmp_path / "node.db"))
    storage = SqliteStorage(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE entries"))
    with pytest.raises(StorageError):
        storage.install_snapshot(META)
    engine.dispose()


def test_install_survives_a_reopen(tmp_path):
    path = str(tmp_path / "node.db")
    storage = SqliteStorage.open(path)
    storage.save(HardState(2, 1, 3), entries(1, 5, term=2))
    storage.install_snapshot(META)
    storage.save(HardState(3, 1, 22), entries(21, 24, term=3))
    before = storage.load()
    storage.close()
    reopened = SqliteStorage.open(path)
    assert reopened.load() == before
    reopened.save(None, entries(25, 25, term=3))  # knows where the log ends
    with pytest.raises(ValueError):
        reopened.save(None, entries(20, 20, term=3))
    reopened.close()


# -- compaction with a trailing margin ---------------------------------------------------------------


def test_compact_with_a_margin_keeps_entries_below_the_snapshot(storage):
    """A reload returns the snapshot meta (index S) and the entries from upto+1 on, even those <= S.

    The entries at or below S are the margin the leader can still send to a slow
    follower with AppendEntries instead of a whole snapshot.
    """
    storage.save(HardState(2, 1, 100), entries(1, 120, term=2))
    meta = SnapshotMeta(index=100, term=2, voters=(1, 2, 3))
    storage.compact(90, meta)  # snapshot at 100, margin 10
    loaded = storage.load()
    assert loaded.snapshot == meta
    assert loaded.entries == tuple(entries(91, 120, 2))
    assert loaded.hard_state == HardState(2, 1, 100)
    # Entries at or below the snapshot can no longer be rewritten; later ones can.
    with pytest.raises(ValueError):
        storage.save(None, entries(95, 95, term=3))
    storage.save(None, entries(110, 110, term=3))
    assert storage.load().entries == tuple(entries(91, 109, 2) + entries(110, 110, 3))


def test_a_later_compaction_moves_the_margin_on(storage):
    storage.save(HardState(2, 1, 200), entries(1, 200, term=2))
    storage.compact(90, SnapshotMeta(100, 2))
    storage.compact(190, SnapshotMeta(200, 2))
    assert storage.load().entries == tuple(entries(191, 200, 2))
    assert storage.load().snapshot == SnapshotMeta(200, 2)
