"""A write that finds the disk full (SQLITE_FULL): the Ready loop stalls and retries, losing nothing.

The Ready contract (parkd/raft/core.py): nothing of a Ready that needs its
persist may leave before the persist, and the core must not believe entries
durable that are not.  A full disk rolls the transaction back; the driver keeps
the Ready and retries it from the step that failed, while the core waits for
advance().  Any other storage error still stops the node.
"""

from __future__ import annotations

import random
import sqlite3

import sqlalchemy as sa
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher

from parkd.db import StorageError, is_disk_full, open_engine, storage_errors
from parkd.node import driver as events
from parkd.node.driver import RaftDriver
from parkd.node.storage_failures import RETRY_STALLED_S
from parkd.parking.codec import FrameResult, encode
from parkd.parking.state import ParkingState
from parkd.raft.core import CoreConfig, RaftCore
from parkd.raft.messages import AppendEntries, AppendResponse, VoteRequest, VoteResponse
from parkd.raft.storage import SqliteStorage
from parkd.raft.types import Entry, EntryKind

from test_driver import TICK, RecordingStorage, StateMachine, become_leader, make


def sqlite_full() -> StorageError:
    """A real SQLITE_FULL, as storage raises it (an in-memory database capped at two pages)."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (x BLOB)")
    conn.execute("PRAGMA max_page_count = 2")
    try:
        with storage_errors("saving the Raft state"):
            conn.execute("INSERT INTO t VALUES (zeroblob(100000))")
    except StorageError as e:
        return e
    finally:
        conn.close()
    raise AssertionError("the capped database took the row")


class FullDisk(RecordingStorage):
    """Storage whose disk is full while ``full`` is set."""

    def __init__(self, log):
        super().__init__(log)
        self.full = False

    def save(self, hard_state, entries, *, sync=True):
        if self.full:
            self.log.append(("save failed",))
            raise sqlite_full()
        super().save(hard_state, entries, sync=sync)


def make_full(voters=(1, 2, 3)):
    log, clock, fatal = [], Clock(), []
    storage = FullDisk(log)
    core = RaftCore(1, voters, storage.load(), random.Random(1), CoreConfig(election_ticks=4, heartbeat_ticks=1))
    machine = StateMachine(log)
    driver = RaftDriver(core, storage, lambda m: log.append(("send", m)), machine, clock, TICK,
                        on_fatal=lambda: fatal.append(1))  # fmt: skip
    seen = []
    driver.subscribe(seen.append, events.StorageStalled, events.StorageResumed)
    driver.start()
    return driver, clock, log, storage, machine, fatal, seen


def sends(log):
    return [entry[1] for entry in log if entry[0] == "send"]


def test_disk_full_is_told_from_other_storage_errors():
    assert is_disk_full(sqlite_full())
    assert is_disk_full(OSError(28, "No space left on device"))
    assert not is_disk_full(StorageError("disk on fire"))
    try:
        with storage_errors("reading"):
            sqlite3.connect(":memory:").execute("SELECT * FROM missing")
    except StorageError as other:
        assert not is_disk_full(other)


def test_a_follower_whose_disk_is_full_does_not_answer_until_its_write_went_through():
    """§5.3 / Ready step 3: the AppendResponse says the entries are stored; it waits for the retry."""
    driver, clock, log, storage, machine, fatal, seen = make_full()
    storage.full = True
    entries = (Entry(1, 1, EntryKind.NORMAL, b"a"), Entry(2, 1, EntryKind.NORMAL, b"b"))
    driver.step(AppendEntries(1, 2, 1, 0, 0, entries, 0))
    clock.advance(0)
    assert fatal == [] and driver.stalled
    assert sends(log) == [] and storage.load().entries == ()
    assert [type(e) for e in seen] == [events.StorageStalled] and seen[0].step == "persist"
    clock.pump([RETRY_STALLED_S] * 5)  # still full: retried, still nothing leaves
    assert sends(log) == [] and [e[0] for e in log].count("save failed") == 6
    storage.full = False
    clock.advance(RETRY_STALLED_S)
    assert not driver.stalled and fatal == []
    assert [e.data for e in storage.load().entries] == [b"a", b"b"]
    assert AppendResponse(1, 1, 2, True, match_index=2) in sends(log)
    assert type(seen[-1]) is events.StorageResumed and seen[-1].seconds == RETRY_STALLED_S * 6


def test_a_vote_cast_while_stalled_leaves_only_after_it_is_durable():
    """§5.2: a vote is persisted before it is granted, also one cast while the disk was full."""
    driver, clock, log, storage, machine, fatal, seen = make_full()
    storage.full = True
    driver.step(VoteRequest(term=5, src=3, dst=1, last_log_index=0, last_log_term=0))
    clock.advance(0)
    assert driver.stalled
    driver.step(VoteRequest(term=6, src=2, dst=1, last_log_index=0, last_log_term=0))  # the core goes on
    clock.advance(TICK)
    assert sends(log) == []
    storage.full = False
    clock.advance(RETRY_STALLED_S)
    clock.advance(0)
    votes = [i for i, entry in enumerate(log) if entry[0] == "send" and type(entry[1]) is VoteResponse]
    assert [log[i][1] for i in votes] == [VoteResponse(5, 1, 3, True), VoteResponse(6, 1, 2, True)]
    for i in votes:
        saved = [entry[1] for entry in log[:i] if entry[0] == "save" and entry[1] is not None]
        assert (saved[-1].term, saved[-1].vote) == (log[i][1].term, log[i][1].dst)


def test_a_leader_stalled_on_its_own_write_does_not_count_itself():
    """§10.2.1: the leader's appends left before its write; it counts itself only once durable."""
    driver, clock, log, storage, machine, fatal, seen = make_full(voters=(1,))
    become_leader(driver, clock)
    clock.advance(0)
    storage.full = True
    driver.propose(b"a")
    clock.advance(0)
    assert driver.stalled and driver.commit_index == 1 and machine.applied[-1].kind is EntryKind.NOOP
    clock.pump([RETRY_STALLED_S] * 3)
    assert driver.commit_index == 1  # a single voter: nothing commits without its own write
    storage.full = False
    clock.advance(RETRY_STALLED_S)
    clock.advance(0)
    assert [e.data for e in machine.applied if e.kind is EntryKind.NORMAL] == [b"a"]


def test_a_full_disk_during_the_apply_retries_the_apply_only():
    """The entries were stored and answered for: the retry applies them, nothing is written or sent twice."""
    driver, clock, log, storage, machine, fatal, seen = make_full()
    machine.broken = sqlite_full()
    driver.step(AppendEntries(1, 2, 1, 0, 0, (Entry(1, 1, EntryKind.NORMAL, b"a"),), 1))
    clock.advance(0)
    assert driver.stalled and fatal == [] and seen[-1].step == "apply"
    assert sends(log) == [AppendResponse(1, 1, 2, True, match_index=1)]
    machine.broken = None
    clock.advance(RETRY_STALLED_S)
    assert [e.data for e in machine.applied] == [b"a"] and driver.applied_index == 1
    assert [m for m in sends(log) if type(m) is AppendResponse] == [AppendResponse(1, 1, 2, True, match_index=1)]
    saved = [entries for kind, _, entries, _ in (e for e in log if e[0] == "save") if entries]
    assert saved == [tuple(machine.applied)]


def test_the_stall_is_logged_once_as_critical_with_what_to_do():
    critical = []

    def observe(event):
        if event.get("log_level") == LogLevel.critical:
            critical.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        driver, clock, log, storage, machine, fatal, seen = make_full()
        storage.full = True
        driver.step(AppendEntries(1, 2, 1, 0, 0, (Entry(1, 1, EntryKind.NORMAL, b"a"),), 0))
        clock.advance(0)
        clock.pump([RETRY_STALLED_S] * 10)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert len(critical) == 1
    text = critical[0]["log_format"].format(**critical[0])
    assert "disk full" in text and "nothing is lost" in text and "free" in text


def test_other_storage_errors_still_stop_the_node():
    driver, clock, log, storage, machine, fatal = make(voters=(1, 2, 3))
    storage.fail = True  # StorageError("disk on fire"): not a full disk
    driver.step(VoteRequest(term=5, src=2, dst=1, last_log_index=0, last_log_term=0))
    clock.advance(0)
    assert fatal == [1] and not driver.stalled


def test_a_follower_knows_the_leaders_commit_index_beyond_its_own():
    """A follower commits only up to the entries it holds (§5.3); /readyz needs the leader's figure."""
    driver, clock, log, storage, machine, fatal = make(voters=(1, 2, 3))
    driver.step(AppendEntries(2, 2, 1, 0, 0, (Entry(1, 2, EntryKind.NORMAL, b"a"),), 50))
    clock.advance(0)
    assert driver.commit_index == 1 and driver.leader_commit == 50
    driver.step(AppendEntries(1, 3, 1, 0, 0, (), 90))  # a deposed leader's, of an older term
    assert driver.leader_commit == 50


# -- on real SQLite: a database that may not grow past a page count ---------------------------------


class CappedDatabase:
    """A file database whose every transaction may not grow it past ``limit`` pages (SQLITE_FULL)."""

    def __init__(self, path):
        self.limit = 1 << 30
        self.engine = open_engine(str(path))
        sa.event.listen(self.engine, "begin", self._cap)  # connections are kept (UnsyncedWriter)

    def _cap(self, conn):
        conn.connection.dbapi_connection.execute(f"PRAGMA max_page_count = {self.limit}")

    def fill(self) -> None:
        """No more pages than the database has now (in WAL mode: with the log's frames)."""
        with self.engine.connect() as conn:
            self.limit = conn.exec_driver_sql("PRAGMA page_count").scalar()


def frame(seq):
    return encode(FrameResult(7, "north", seq, 1000.0 + seq, seq % 50))


def test_on_real_sqlite_a_full_disk_loses_no_frame_and_the_database_stays_whole(tmp_path):
    db = CappedDatabase(tmp_path / "node.db")
    storage = SqliteStorage(db.engine)
    state = ParkingState(db.engine, {"north": 100})
    clock, fatal = Clock(), []
    core = RaftCore(1, (1,), storage.load(), random.Random(1), CoreConfig(election_ticks=4, heartbeat_ticks=1))
    driver = RaftDriver(core, storage, lambda m: None, StateMachineOn(state), clock, TICK,
                        on_fatal=lambda: fatal.append(1))  # fmt: skip
    driver.start()
    become_leader(driver, clock)
    for seq in range(1, 51):
        driver.propose(frame(seq))
    clock.advance(0)
    assert state.camera(7).last_seq == 50
    db.fill()
    for seq in range(51, 2001):  # far more than fits: the log's transaction fails
        driver.propose(frame(seq))
    clock.advance(0)
    assert driver.stalled and fatal == []
    clock.pump([RETRY_STALLED_S] * 3)
    assert state.camera(7).last_seq == 50 and state.last_applied() == driver.applied_index
    db.limit = 1 << 30  # space freed
    clock.advance(RETRY_STALLED_S)
    clock.advance(0)
    assert not driver.stalled and fatal == []
    assert state.camera(7).last_seq == 2000
    assert [f.seq for f in state.frames(7, limit=5000)] == list(range(1, 2001))
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    reopened = SqliteStorage.open(str(tmp_path / "node.db")).load()
    indexes = [e.index for e in reopened.entries]
    assert indexes == list(range(1, indexes[-1] + 1)) and indexes[-1] == driver.last_index
    db.engine.dispose()


class StateMachineOn:
    """The driver's state machine over a real ParkingState (no snapshots here)."""

    def __init__(self, state):
        self.state = state

    def apply(self, entries):
        return self.state.apply(entries)

    def install(self, meta):
        raise AssertionError("no snapshot in this test")
