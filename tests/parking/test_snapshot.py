"""The parking state's snapshot file: pinned while the node writes, exact, restorable with the Raft half."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from parkd.db import open_engine
from parkd.parking.codec import FrameResult, RegistryCommand, encode, encode_registry
from parkd.parking.retention import retention_entry
from parkd.parking.schema import PARKING_SCHEMA_VERSION
from parkd.parking import snapshot as snapshot_module
from parkd.parking.snapshot import (
    SnapshotContents,
    SnapshotError,
    SnapshotInfo,
    pin_state,
    read_snapshot_meta,
    restore_snapshot,
)
from parkd.parking.state import Outcome, ParkingState, Rejection
from parkd.raft.storage import SqliteStorage, install_snapshot_in
from parkd.raft.types import Entry, EntryKind, HardState, Membership, PersistedState, SnapshotMeta

LOTS = {"north": 100, "south": 60}
CONFIG = Membership(voters=(1, 2, 3), learners=(4,))
MEMBERS = tuple({"id": i, "raft": f"127.0.0.1:710{i}", "client": f"127.0.0.1:720{i}"} for i in (1, 2, 3, 4))
WAIT_S = 30  # a bound on every wait for the writer thread, never a pause
TABLES = ("lots", "cameras", "incarnations", "frames", "camera_registry", "cluster_identity", "member_data_dirs",
          "applied")
FORMAT_1 = Path(__file__).parent / "data" / "snapshot-format-1.sql"


def frame_entry(index: int, term: int = 1) -> Entry:
    """The entry at ``index`` of a deterministic history: 4 cameras, now and then a late or repeated
    frame; camera 3's state dir is replaced at 150 (a new incarnation); camera 2 is disabled at
    every 97th entry and enabled again at the next."""
    if index % 97 == 0:
        return Entry(index, term, EntryKind.NORMAL, encode_registry(RegistryCommand(2, (index // 97) % 2 == 0)))
    camera = 1 + index % 4
    seq = 1 + index // 4
    if index % 11 == 0:
        seq = max(1, seq - 3)  # a late frame or a retry
    lot = "north" if camera % 2 else "south"
    incarnation = 2**64 - 3 if camera == 3 and index >= 150 else 0
    result = FrameResult(camera, lot, seq, 1_000.0 + 10 * seq, (index * 7) % 61, incarnation)
    return Entry(index, term, EntryKind.NORMAL, encode(result))


def history(first: int, last: int, term: int = 1) -> list[Entry]:
    return [frame_entry(i, term) for i in range(first, last + 1)]


def write(pinned, out, *, term: int = 1, config: Membership = CONFIG, members=MEMBERS, **kwargs) -> SnapshotInfo:
    """Step 2 with what the node's core would say about the pinned index."""
    voters, learners = config.voters, config.learners
    return pinned.write(
        str(out), term=term, voters=voters, learners=learners, config_index=config.index, members=members, **kwargs
    )


class Node:
    """A node's database: Raft storage and parking state on one file, as parkd/node has them."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.engine = open_engine(self.path)
        self.storage = SqliteStorage(self.engine)
        self.state = ParkingState(self.engine, LOTS)

    def log(self, entries: list[Entry], term: int = 1) -> None:
        """Persist ``entries`` as committed, then apply them (the driver's order)."""
        self.storage.save(HardState(term, 1, entries[-1].index), entries)
        self.state.apply(entries)

    def snapshot(self, out, **kwargs) -> SnapshotInfo:
        """Pin, then write at once: the state at ``last_applied``."""
        return write(pin_state(self.path), out, **kwargs)

    def install(self, path) -> SnapshotContents:
        """Both halves in one transaction, as the node installs a snapshot from its leader."""
        meta = read_snapshot_meta(path).meta
        contents = restore_snapshot(self.engine, path, lambda conn: install_snapshot_in(conn, meta))
        self.storage.refresh()
        return contents

    def tables(self) -> dict[str, list[tuple]]:
        with self.engine.connect() as conn:
            return {t: conn.exec_driver_sql(f"SELECT * FROM {t} ORDER BY 1, 2").all() for t in TABLES}

    def close(self) -> None:
        self.storage.close()
        self.engine.dispose()


@pytest.fixture
def leader(tmp_path):
    node = Node(tmp_path / "leader.db")
    yield node
    node.close()


@pytest.fixture
def follower(tmp_path):
    node = Node(tmp_path / "follower.db")
    yield node
    node.close()


def file_tables(path, tables=TABLES) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in tables}
    finally:
        conn.close()


def file_schema(path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    finally:
        conn.close()


def reference(entries: list[Entry]) -> dict[str, list[tuple]]:
    """The parking tables after applying ``entries`` to a fresh state."""
    engine = open_engine("sqlite://")
    try:
        ParkingState(engine, LOTS).apply(entries)
        with engine.connect() as conn:
            return {t: conn.exec_driver_sql(f"SELECT * FROM {t} ORDER BY 1, 2").all() for t in TABLES}
    finally:
        engine.dispose()


# -- writing ----------------------------------------------------------------------------------------


def test_a_snapshot_holds_the_state_at_last_applied_and_what_the_caller_says_of_it(leader, tmp_path):
    leader.log(history(1, 60, term=2), term=2)
    out = tmp_path / "snap.db"
    pinned = pin_state(leader.path)
    assert pinned.index == 60
    info = write(pinned, out, term=2, config=Membership((1, 2, 3), (4,), index=11))
    assert (info.path, info.index, info.term) == (str(out), 60, 2)
    assert (info.voters, info.learners) == ((1, 2, 3), (4,))
    assert info.meta == SnapshotMeta(60, 2, (1, 2, 3), (4,))
    assert info.size_bytes == out.stat().st_size and info.seconds > 0
    assert file_tables(str(out)) == leader.tables() == reference(history(1, 60))
    assert read_snapshot_meta(out) == SnapshotContents(SnapshotMeta(60, 2, (1, 2, 3), (4,)), MEMBERS, 11)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("snap", ".snap"))) == ["snap.db"]


def test_an_empty_state_makes_an_empty_snapshot(leader, tmp_path):
    info = leader.snapshot(tmp_path / "snap.db", term=0, config=Membership(), members=())
    assert (info.index, info.term, info.voters) == (0, 0, ())
    assert read_snapshot_meta(info.path) == SnapshotContents(SnapshotMeta(), (), 0)
    assert file_tables(info.path)["frames"] == []


def test_the_snapshot_is_the_state_at_the_pinned_index_whatever_is_applied_before_the_copy(leader, tmp_path):
    leader.log(history(1, 50))
    pinned = pin_state(leader.path)
    for start in range(51, 151, 10):  # the reactor goes on applying after the pin
        leader.log(history(start, start + 9))
    info = write(pinned, tmp_path / "s.db")
    assert info.index == 50 and leader.state.last_applied() == 150
    assert file_tables(info.path) == reference(history(1, 50))
    assert read_snapshot_meta(info.path).meta.index == 50


def test_the_copy_on_a_worker_thread_while_the_main_thread_applies_is_exactly_the_pinned_state(leader, tmp_path):
    leader.log(history(1, 2_000))
    pinned = pin_state(leader.path)  # on the "reactor" thread
    outcome, applied = [], 2_000

    def run() -> None:
        try:
            outcome.append(write(pinned, tmp_path / "snap.db"))
        except BaseException as exc:
            outcome.append(exc)

    writer = threading.Thread(target=run)
    writer.start()
    while writer.is_alive() and applied < 6_000:
        leader.log(history(applied + 1, applied + 20))
        applied += 20
    writer.join(WAIT_S)
    [info] = outcome
    assert info.index == 2_000 < applied
    assert file_tables(info.path) == reference(history(1, 2_000))


def test_the_page_copy_is_written_out_step_by_step_while_the_node_commits_between_steps(leader, tmp_path, monkeypatch):
    """A snapshot's pages go to the disk a step at a time (the Raft log's fsyncs never wait behind the
    whole file), and commits between steps do not restart the copy or leak into it."""
    leader.log(history(1, 3_000))
    pinned = pin_state(leader.path)
    synced, real_fdatasync, applied = [], os.fdatasync, [3_000]

    def fdatasync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        leader.log(history(applied[0] + 1, applied[0] + 10))  # the node goes on between two steps
        applied[0] += 10
        real_fdatasync(fd)

    monkeypatch.setattr(snapshot_module, "BACKUP_STEP_PAGES", 8)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    info = write(pinned, tmp_path / "s.db")
    pages = os.path.getsize(info.path) // 4096
    assert len(synced) >= pages // 8 > 3 and all(p.endswith(".tmp") for p in synced)
    assert info.index == 3_000 < applied[0]
    assert file_tables(info.path) == reference(history(1, 3_000))


def test_a_database_without_raft_tables_is_snapshotted_with_the_term_given(tmp_path):
    # The writer never reads Raft's tables: the caller's term is the one recorded.
    parking = str(tmp_path / "parking.db")
    engine = open_engine(parking)
    ParkingState(engine, LOTS).apply(history(1, 5))
    engine.dispose()
    info = write(pin_state(parking), tmp_path / "a.db", term=7)
    assert (info.index, info.term) == (5, 7)
    assert read_snapshot_meta(info.path).meta == SnapshotMeta(5, 7, (1, 2, 3), (4,))


def test_a_failed_write_leaves_the_previous_snapshot_no_temporary_file_and_no_pin(leader, tmp_path):
    leader.log(history(1, 10))
    out = tmp_path / "snap.db"
    first = leader.snapshot(out)
    before = out.read_bytes()
    leader.log(history(11, 20))
    pinned = pin_state(leader.path)
    with pytest.raises(TypeError):
        write(pinned, out, members=[object()])  # not JSON: fails in the middle of the copy
    assert out.read_bytes() == before and read_snapshot_meta(out).meta.index == first.index
    assert sorted(p.name for p in tmp_path.iterdir() if "snap" in p.name) == ["snap.db"]
    with pytest.raises(SnapshotError, match="already written or closed"):
        write(pinned, out)
    with pytest.raises(SnapshotError, match="term None"):
        write(pin_state(leader.path), out, term=None)
    assert out.read_bytes() == before


def test_a_pin_given_up_holds_nothing(leader, tmp_path):
    leader.log(history(1, 10))
    with pin_state(leader.path) as pinned:
        assert pinned.index == 10
    with pytest.raises(SnapshotError, match="already written or closed"):
        write(pinned, tmp_path / "a.db")
    pinned.close()  # idempotent
    leader.log(history(11, 12))
    with leader.engine.connect() as conn:  # no reader is left behind the log: a full checkpoint runs
        busy, _, _ = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
    assert busy == 0


def test_a_database_without_parking_state_is_refused(tmp_path):
    SqliteStorage.open(str(tmp_path / "raft.db")).close()
    with pytest.raises(SnapshotError):
        pin_state(str(tmp_path / "raft.db"))
    assert not list(tmp_path.glob("*a.db*"))


def test_a_missing_database_is_not_created(tmp_path):
    with pytest.raises(SnapshotError):
        pin_state(str(tmp_path / "nothing.db"))
    assert list(tmp_path.iterdir()) == []


# -- the format, as files on disk have it -------------------------------------------------------------


def format_1_file(tmp_path) -> Path:
    """The snapshot file of data/snapshot-format-1.sql, written by the code before this one."""
    path = tmp_path / "snapshot-14.db"
    conn = sqlite3.connect(path)
    try:
        conn.executescript(FORMAT_1.read_text())
    finally:
        conn.close()
    return path


def upgraded(old_tables: dict[str, list[tuple]]) -> dict[str, list[tuple]]:
    """What parking schema 1's tables become at schema 2 (every camera and frame in incarnation 0),
    and at 3 (no cluster id or data dir recorded yet)."""
    return {
        "lots": old_tables["lots"],
        "cameras": [(c, lot, 0) for c, lot, *_ in old_tables["cameras"]],
        "incarnations": [
            (c, 0, seq, free, seen, trimmed, None) for c, _, seq, free, seen, trimmed in old_tables["cameras"]
        ],
        "frames": sorted((c, 0, seq, *rest) for c, seq, *rest in old_tables["frames"]),
        "camera_registry": [],
        "cluster_identity": [],
        "member_data_dirs": [],
        "applied": old_tables["applied"],
    }


def test_a_file_of_the_previous_schema_is_restored_from_an_upgraded_copy(follower, tmp_path):
    old = format_1_file(tmp_path)
    before = file_tables(old, ("lots", "cameras", "frames", "applied"))
    contents = read_snapshot_meta(old)
    assert contents == SnapshotContents(SnapshotMeta(14, 2, (1, 2, 3), (4,)), MEMBERS, 11)
    assert follower.install(old) == contents
    assert follower.tables() == upgraded(before)
    assert follower.storage.load() == PersistedState(HardState(2, 0, 14), (), contents.meta)
    # The file itself is untouched (it may still be sent to another node), the copy is gone.
    assert file_tables(old, ("lots", "cameras", "frames", "applied")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["follower.db", "follower.db-shm", "follower.db-wal", old.name]
    retry, replaced = follower.state.apply([
        Entry(15, 2, EntryKind.NORMAL, encode(FrameResult(1, "north", 2, 1_030.0, 1))),
        Entry(16, 2, EntryKind.NORMAL, encode(FrameResult(1, "north", 2, 1_300.0, 7, incarnation=99))),
    ])  # fmt: skip
    assert retry.outcome is Outcome.DUPLICATE  # below the trimmed seq the old file recorded
    assert replaced.outcome is Outcome.APPLIED and replaced.incarnation_started
    assert follower.state.camera(1).free == 7


def test_a_snapshot_taken_after_restoring_an_old_file_has_the_current_schema(follower, leader, tmp_path):
    old = format_1_file(tmp_path)
    follower.install(old)
    new = follower.snapshot(tmp_path / "new.db", term=2, config=Membership((1, 2, 3), (4,), index=11))
    fresh = leader.snapshot(tmp_path / "fresh.db")
    assert file_schema(new.path) == file_schema(fresh.path)
    assert file_tables(new.path) == follower.tables()
    meta = file_tables(new.path, ("snapshot_meta",))["snapshot_meta"][0]
    assert meta[:3] == (1, 1, PARKING_SCHEMA_VERSION)  # id, format, schema


def test_a_file_of_a_newer_schema_is_refused(leader, follower, tmp_path):
    leader.log(history(1, 20))
    snap = leader.snapshot(tmp_path / "snap.db")
    conn = sqlite3.connect(snap.path)
    conn.execute("UPDATE snapshot_meta SET parking_schema = ?", (PARKING_SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    newer, current = PARKING_SCHEMA_VERSION + 1, PARKING_SCHEMA_VERSION
    with pytest.raises(SnapshotError, match=f"parking schema {newer}, expected 1 / {current}"):
        read_snapshot_meta(snap.path)
    with pytest.raises(SnapshotError):
        follower.install(snap.path)
    assert follower.state.last_applied() == 0


def test_an_old_file_the_upgrade_cannot_read_is_refused_and_nothing_changes(follower, tmp_path):
    old = format_1_file(tmp_path)
    conn = sqlite3.connect(old)
    conn.execute("ALTER TABLE cameras DROP COLUMN trimmed_seq")
    conn.commit()
    conn.close()
    follower.log(history(1, 5))
    before = follower.tables()
    with pytest.raises(SnapshotError, match=f"cannot upgrade parking schema 1 to {PARKING_SCHEMA_VERSION}"):
        restore_snapshot(follower.engine, old, lambda conn: None)
    assert follower.tables() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".upgrade")]


# -- restoring ------------------------------------------------------------------------------------------


@pytest.fixture
def snap(leader, tmp_path):
    leader.log(history(1, 300, term=2), term=2)
    return leader.snapshot(tmp_path / "snap.db", term=2)


def test_install_gives_a_new_follower_the_leaders_state(snap, leader, follower):
    contents = follower.install(snap.path)
    assert contents == SnapshotContents(SnapshotMeta(300, 2, (1, 2, 3), (4,)), MEMBERS, 0)
    assert follower.tables() == leader.tables()
    assert follower.storage.load() == PersistedState(HardState(2, 0, 300), (), contents.meta)
    assert follower.state.last_applied() == 300
    [retry] = follower.state.apply([Entry(301, 2, EntryKind.NORMAL, frame_entry(200).data)])
    assert retry.outcome is Outcome.DUPLICATE and retry.index == 200


def test_install_replaces_a_lagging_followers_state_and_log(snap, leader, follower):
    follower.log(history(1, 120))
    follower.storage.save(None, [Entry(121, 1, EntryKind.NORMAL, b"uncommitted")])
    follower.install(snap.path)
    assert follower.tables() == leader.tables()
    assert follower.storage.load() == PersistedState(HardState(2, 0, 300), (), snap.meta)


def test_after_install_the_log_continues_and_a_restart_recovers_exactly(snap, leader, tmp_path):
    follower = Node(tmp_path / "restarting.db")
    follower.install(snap.path)
    more = history(301, 340, term=2)
    follower.log(more, term=2)
    leader.log(more, term=2)
    follower.close()

    reopened = Node(tmp_path / "restarting.db")
    try:
        persisted = reopened.storage.load()
        assert persisted == PersistedState(HardState(2, 1, 340), tuple(more), snap.meta)
        assert reopened.state.last_applied() == 340
        assert reopened.tables() == leader.tables()
        assert reopened.state.apply(more) == []  # a replay after the restart is skipped
        reopened.log(history(341, 345, term=2), term=2)
        with pytest.raises(ValueError):
            reopened.storage.save(None, history(300, 300, term=2))  # covered by the snapshot
    finally:
        reopened.close()


def test_install_may_run_on_a_worker_thread_while_the_main_thread_reads(snap, leader, follower):
    follower.log(history(1, 50))
    outcome, seen = [], set()

    def run() -> None:
        try:
            outcome.append(follower.install(snap.path))
        except BaseException as exc:
            outcome.append(exc)

    installer = threading.Thread(target=run)
    installer.start()
    while installer.is_alive():
        seen.add(follower.state.last_applied())  # WAL: reads see the old state or the new one
    installer.join(WAIT_S)
    assert isinstance(outcome[0], SnapshotContents)
    assert seen <= {50, 300}
    assert follower.tables() == leader.tables()


def test_install_refuses_a_snapshot_behind_the_applied_state(snap, follower):
    follower.log(history(1, 310))
    before = follower.tables(), follower.storage.load()
    with pytest.raises(ValueError, match="older than the applied index 310"):
        follower.install(snap.path)
    assert (follower.tables(), follower.storage.load()) == before
    follower.log(history(311, 311))  # the connection is usable: the file was detached


def test_install_refuses_a_file_that_is_no_snapshot(follower, tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"x" * 5000)
    before = follower.tables()
    called = []
    for path in (bad, tmp_path / "missing.db", Path(follower.path)):
        with pytest.raises(SnapshotError):
            restore_snapshot(follower.engine, path, called.append)
    assert follower.tables() == before and called == []


def test_a_failure_inside_install_leaves_the_old_state(snap, follower):
    follower.log(history(1, 50))
    before = follower.tables(), follower.storage.load()

    def fail_late(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("UPDATE snapshot_meta"):  # the Raft half, after the parking tables
            raise sqlite3.OperationalError("disk I/O error")

    sa.event.listen(follower.engine, "before_cursor_execute", fail_late)
    try:
        with pytest.raises(Exception, match="disk I/O error"):
            follower.install(snap.path)
    finally:
        sa.event.remove(follower.engine, "before_cursor_execute", fail_late)
    assert (follower.tables(), follower.storage.load()) == before
    follower.install(snap.path)
    assert follower.state.last_applied() == 300


def test_restore_runs_the_callers_half_in_its_transaction_and_is_atomic_with_it(snap, leader, follower):
    follower.log(history(1, 50))
    before = follower.tables(), follower.storage.load()
    seen = []

    def raft_half_then_crash(conn: sa.Connection) -> None:
        seen.append(conn.exec_driver_sql("SELECT last_applied FROM applied").scalar())  # the new tables
        install_snapshot_in(conn, snap.meta)  # the caller's own writes ...
        raise RuntimeError("the caller's half failed")  # ... and then it fails

    with pytest.raises(RuntimeError, match="caller's half"):
        restore_snapshot(follower.engine, snap.path, raft_half_then_crash)
    assert seen == [300]
    follower.storage.refresh()
    assert (follower.tables(), follower.storage.load()) == before  # neither half happened
    restore_snapshot(follower.engine, snap.path, lambda conn: install_snapshot_in(conn, snap.meta))
    follower.storage.refresh()
    assert follower.tables() == leader.tables()
    assert follower.storage.load() == PersistedState(HardState(2, 0, 300), (), snap.meta)


def test_install_holds_the_write_lock_so_a_commit_of_another_connection_cannot_fail_it(snap, leader, follower):
    """The node's reactor thread writes (log compaction, housekeeping) while the snapshot
    thread installs.  A commit of another connection between the install's first read
    and its first write used to fail the install at once ("database is locked": a stale
    WAL snapshot cannot be upgraded), which stopped a restarted node."""
    follower.log(history(1, 50))
    other = sqlite3.connect(follower.path, timeout=0.1)
    tried = []

    def commit_elsewhere(conn, cursor, statement, *args):
        if statement.startswith("DELETE FROM main.") and not tried:
            try:
                other.execute("CREATE TABLE IF NOT EXISTS elsewhere (x)")
                other.execute("INSERT INTO elsewhere VALUES (1)")
                other.commit()
                tried.append("committed")
            except sqlite3.OperationalError as e:
                tried.append(str(e))  # the install holds the lock: this writer waits for it

    sa.event.listen(follower.engine, "before_cursor_execute", commit_elsewhere)
    try:
        follower.install(snap.path)
    finally:
        sa.event.remove(follower.engine, "before_cursor_execute", commit_elsewhere)
        other.close()
    assert tried == ["database is locked"]
    assert follower.tables() == leader.tables()


def test_dedup_state_survives_retention_snapshot_and_install(leader, follower, tmp_path):
    leader.log(history(1, 100))
    leader.log([Entry(101, 1, EntryKind.NORMAL, retention_entry(1_000.0 + 10 * 20))])
    frames_left = len(leader.tables()["frames"])
    assert frames_left < 100
    info = leader.snapshot(tmp_path / "snap.db")
    follower.install(info.path)
    assert follower.tables() == leader.tables()
    retries = [Entry(101 + i, 1, EntryKind.NORMAL, frame_entry(i).data) for i in range(1, 41)]
    for node in (leader, follower):
        results = node.state.apply(retries)
        # camera 2 is still disabled (the registry travels in the snapshot): refused, the rest duplicates
        assert {r.outcome for r in results if r.camera_id != 2} == {Outcome.DUPLICATE}
        assert {r.rejection for r in results if r.camera_id == 2} == {Rejection.PERMISSION_DENIED}
        assert len(node.tables()["frames"]) == frames_left
    assert follower.tables() == leader.tables()


ALL_TABLES = (*TABLES, "lot_buckets", "retention_cuts")


def drained(node: Node) -> dict[str, list[tuple]]:
    """Every pending cut deleted (as the node's housekeeping does), then all the tables."""
    while node.state.trim_step(max_rows=7).pending:
        pass
    with node.engine.connect() as conn:
        return {t: sorted(conn.exec_driver_sql(f"SELECT * FROM {t}").all(), key=repr) for t in ALL_TABLES}


def test_a_snapshot_taken_mid_trim_installs_to_the_same_state_and_the_trim_goes_on(leader, follower, tmp_path):
    leader.log(history(1, 200))
    leader.log([Entry(201, 1, EntryKind.NORMAL, retention_entry(1_000.0 + 10 * 40))])
    for _ in range(3):  # part of the cut's rows deleted, not all
        assert leader.state.trim_step(max_rows=10).pending
    state = leader.state
    seen = (state.frames(1, limit=1000), state.history("north", 0, 1e6, 1000), state.incarnations(1))
    info = leader.snapshot(tmp_path / "snap.db")
    follower.install(info.path)
    assert follower.state.trims_pending()  # the cut travels with the snapshot, and how far the leader got
    assert (follower.state.frames(1, limit=1000), follower.state.history("north", 0, 1e6, 1000),
            follower.state.incarnations(1)) == seen  # fmt: skip
    more = [Entry(201 + i, 1, EntryKind.NORMAL, frame_entry(i).data) for i in range(1, 60)]  # retries, some trimmed
    assert leader.state.apply(more) == follower.state.apply(more)
    assert drained(leader) == drained(follower)


def test_a_restart_mid_trim_ends_where_an_uninterrupted_trim_ends(tmp_path):
    nodes = [Node(tmp_path / "a.db"), Node(tmp_path / "b.db")]
    for node in nodes:
        node.log(history(1, 200))
        node.log([Entry(201, 1, EntryKind.NORMAL, retention_entry(1_000.0 + 10 * 40))])
    nodes[0].state.trim_step(max_rows=10)
    nodes[0].close()
    nodes[0] = Node(tmp_path / "a.db")  # restarted: the cut and its progress were kept
    assert nodes[0].state.trims_pending()
    assert drained(nodes[0]) == drained(nodes[1])
    for node in nodes:
        node.close()
