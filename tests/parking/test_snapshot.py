"""Snapshots of the parking state: consistent while the node writes, chunked transfer, install, restart."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from parkd.parking.codec import FrameResult, encode
from parkd.parking.retention import retention_entry
from parkd.parking.snapshot import (
    DIGEST_SIZE,
    CompactionPolicy,
    Received,
    SnapshotConfig,
    SnapshotContents,
    SnapshotError,
    SnapshotReceiver,
    StaleMembership,
    file_sha256,
    install_snapshot,
    iter_chunks,
    read_chunk,
    read_snapshot_meta,
    snapshot_sha256,
    transfer_size,
    write_snapshot,
)
from parkd.parking.state import Outcome, ParkingState
from parkd.raft.storage import SqliteStorage, open_engine
from parkd.raft.types import Entry, EntryKind, HardState, PersistedState, SnapshotMeta

LOTS = {"north": 100, "south": 60}
CONFIG = SnapshotConfig(voters=(1, 2, 3), learners=(4,))
MEMBERS = tuple({"id": i, "raft": f"127.0.0.1:710{i}", "client": f"127.0.0.1:720{i}"} for i in (1, 2, 3, 4))
WAIT_S = 30  # a bound on every wait for the writer thread, never a pause
TABLES = ("lots", "cameras", "frames", "applied")


def frame_entry(index: int, term: int = 1) -> Entry:
    """The entry at ``index`` of a deterministic history: 4 cameras, now and then a late or repeated frame."""
    camera = 1 + index % 4
    seq = 1 + index // 4
    if index % 11 == 0:
        seq = max(1, seq - 3)  # a late frame or a retry
    lot = "north" if camera % 2 else "south"
    result = FrameResult(camera, lot, seq, 1_000.0 + 10 * seq, (index * 7) % 61)
    return Entry(index, term, EntryKind.NORMAL, encode(result))


def history(first: int, last: int, term: int = 1) -> list[Entry]:
    return [frame_entry(i, term) for i in range(first, last + 1)]


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


def file_tables(path: str) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in TABLES}
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


def test_a_snapshot_holds_the_state_at_last_applied(leader, tmp_path):
    leader.log(history(1, 60, term=2), term=2)
    out = tmp_path / "snap.db"
    info = write_snapshot(leader.path, str(out), CONFIG, members=MEMBERS)
    assert (info.path, info.index, info.term) == (str(out), 60, 2)
    assert (info.voters, info.learners) == ((1, 2, 3), (4,))
    assert info.meta == SnapshotMeta(60, 2, (1, 2, 3), (4,))
    assert info.size_bytes == out.stat().st_size and info.seconds > 0
    assert info.sha256 == file_sha256(out) == snapshot_sha256(out)
    assert file_tables(str(out)) == leader.tables() == reference(history(1, 60))
    assert read_snapshot_meta(out) == SnapshotContents(SnapshotMeta(60, 2, (1, 2, 3), (4,)), MEMBERS, 0)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("snap", ".snap"))) == [
        "snap.db",
        "snap.db.sha256",
    ]


def test_an_empty_state_makes_an_empty_snapshot(leader, tmp_path):
    info = write_snapshot(leader.path, str(tmp_path / "snap.db"))
    assert (info.index, info.term, info.voters) == (0, 0, ())
    assert read_snapshot_meta(info.path) == SnapshotContents(SnapshotMeta(), (), 0)
    assert file_tables(info.path)["frames"] == []


def test_the_snapshot_is_the_state_at_its_index_while_the_main_thread_applies(leader, tmp_path):
    leader.log(history(1, 50))
    pinned, resume, outcome = threading.Event(), threading.Event(), []

    def on_pinned(index: int) -> None:
        pinned.set()
        if not resume.wait(WAIT_S):
            raise TimeoutError("the main thread never resumed the writer")

    def run() -> None:
        try:
            outcome.append(write_snapshot(leader.path, str(tmp_path / "s.db"), CONFIG, on_pinned=on_pinned))
        except BaseException as exc:
            outcome.append(exc)

    writer = threading.Thread(target=run)
    writer.start()
    try:
        assert pinned.wait(WAIT_S)
        # The writer's read transaction is open: the reactor thread goes on writing.
        for start in range(51, 151, 10):
            leader.log(history(start, start + 9))
    finally:
        resume.set()
        writer.join(WAIT_S)
    [info] = outcome
    assert info.index == 50 and leader.state.last_applied() == 150
    assert file_tables(info.path) == reference(history(1, 50))


def test_a_snapshot_under_concurrent_applies_is_exact(leader, tmp_path):
    leader.log(history(1, 2_000))
    outcome, applied = [], 2_000
    writer = threading.Thread(
        target=lambda: outcome.append(write_snapshot(leader.path, str(tmp_path / "snap.db"), batch_rows=100))
    )
    writer.start()
    while writer.is_alive() and applied < 6_000:
        leader.log(history(applied + 1, applied + 20))
        applied += 20
    writer.join(WAIT_S)
    [info] = outcome
    assert 2_000 <= info.index <= applied
    assert file_tables(info.path) == reference(history(1, info.index))


def test_the_term_is_read_from_the_log_in_the_same_transaction(leader, tmp_path):
    leader.log(history(1, 10, term=1))
    leader.log(history(11, 12, term=3), term=3)
    assert write_snapshot(leader.path, str(tmp_path / "a.db")).term == 3


def test_the_term_comes_from_the_stored_snapshot_when_the_log_is_compacted(leader, tmp_path):
    leader.log(history(1, 10, term=2), term=2)
    leader.storage.compact(10, SnapshotMeta(10, 2, (1, 2, 3)))
    assert leader.storage.load().entries == ()
    assert write_snapshot(leader.path, str(tmp_path / "a.db")).term == 2


def test_without_raft_tables_the_term_comes_from_the_callback(tmp_path):
    parking = str(tmp_path / "parking.db")
    engine = open_engine(parking)
    ParkingState(engine, LOTS).apply(history(1, 5))
    engine.dispose()
    asked = []
    info = write_snapshot(parking, str(tmp_path / "a.db"), term_at=lambda i: asked.append(i) or 7)
    assert (info.index, info.term, asked) == (5, 7, [5])
    with pytest.raises(SnapshotError, match="term of index 5"):
        write_snapshot(parking, str(tmp_path / "b.db"))
    assert not (tmp_path / "b.db").exists()


def test_a_configuration_changed_since_the_one_given_is_refused(leader, tmp_path):
    leader.log(history(1, 10))
    leader.log([Entry(11, 1, EntryKind.CONFIG, b"add 4")])
    leader.log(history(12, 15))
    with pytest.raises(StaleMembership, match="changed at 11"):
        write_snapshot(leader.path, str(tmp_path / "a.db"), SnapshotConfig((1, 2, 3), (), index=0))
    with pytest.raises(StaleMembership, match="newer"):
        write_snapshot(leader.path, str(tmp_path / "a.db"), SnapshotConfig((1, 2, 3), (4,), index=16))
    info = write_snapshot(leader.path, str(tmp_path / "a.db"), SnapshotConfig((1, 2, 3), (4,), index=11))
    assert (info.index, info.learners) == (15, (4,))
    assert read_snapshot_meta(info.path).config_index == 11


def test_a_callable_configuration_is_asked_for_the_snapshot_index(leader, tmp_path):
    leader.log(history(1, 8))
    asked = []
    info = write_snapshot(leader.path, str(tmp_path / "a.db"), lambda i: asked.append(i) or CONFIG)
    assert asked == [8] and info.voters == (1, 2, 3)


def test_a_failed_write_leaves_the_previous_snapshot_and_no_temporary_file(leader, tmp_path):
    leader.log(history(1, 10))
    out = tmp_path / "snap.db"
    first = write_snapshot(leader.path, str(out))
    before = out.read_bytes()
    leader.log(history(11, 20))

    def broken(index: int):
        raise RuntimeError("configuration unavailable")

    with pytest.raises(RuntimeError):
        write_snapshot(leader.path, str(out), broken)
    assert out.read_bytes() == before and read_snapshot_meta(out).meta.index == first.index
    assert sorted(p.name for p in tmp_path.iterdir() if "snap" in p.name) == ["snap.db", "snap.db.sha256"]


def test_a_database_without_parking_state_is_refused(tmp_path):
    SqliteStorage.open(str(tmp_path / "raft.db")).close()
    with pytest.raises(SnapshotError):
        write_snapshot(str(tmp_path / "raft.db"), str(tmp_path / "a.db"))
    assert not list(tmp_path.glob("*a.db*"))


def test_a_missing_database_is_not_created(tmp_path):
    with pytest.raises(SnapshotError):
        write_snapshot(str(tmp_path / "nothing.db"), str(tmp_path / "a.db"))
    assert list(tmp_path.iterdir()) == []


# -- chunks and checksums ---------------------------------------------------------------------------


@pytest.fixture
def snap(leader, tmp_path):
    leader.log(history(1, 300, term=2), term=2)
    return write_snapshot(leader.path, str(tmp_path / "snap.db"), CONFIG, members=MEMBERS)


def test_the_transfer_stream_is_the_file_then_its_digest(snap):
    data = Path(snap.path).read_bytes()
    stream = data + hashlib.sha256(data).digest()
    assert transfer_size(snap.path) == len(stream) == snap.size_bytes + DIGEST_SIZE
    for size in (7, 1000, 4096, len(stream), len(stream) + 5):
        assert b"".join(c for _, c, _ in iter_chunks(snap.path, size)) == stream
    chunks = list(iter_chunks(snap.path, 4096))
    assert [done for _, _, done in chunks] == [False] * (len(chunks) - 1) + [True]
    assert read_chunk(snap.path, len(data) - 3, 10) == stream[len(data) - 3 : len(data) + 7]  # straddles
    assert read_chunk(snap.path, len(data) + 30, 10) == stream[-2:]
    assert read_chunk(snap.path, len(stream), 10) == b""
    with pytest.raises(ValueError):
        read_chunk(snap.path, -1, 10)


def test_a_stale_digest_file_is_recomputed(snap, leader, tmp_path):
    other = write_snapshot(leader.path, str(tmp_path / "other.db"), CONFIG)
    os.replace(other.path, snap.path)  # a new snapshot at the old path, digest file left behind
    assert snapshot_sha256(snap.path) == file_sha256(snap.path) != snap.sha256
    Path(snap.path + ".sha256").unlink()
    assert snapshot_sha256(snap.path) == file_sha256(snap.path)
    assert Path(snap.path + ".sha256").exists()


# -- receiving ---------------------------------------------------------------------------------------------


def send(receiver, path, index, term, size=4096, start=0, stop=None) -> Received:
    """Send the transfer stream of ``path`` from ``start`` up to ``stop``; the last answer."""
    answer = None
    for offset, data, done in iter_chunks(path, size, start):
        if stop is not None and offset >= stop:
            break
        answer = receiver.accept(index, term, offset, data, done)
        assert answer.accepted, answer
    return answer


def test_a_whole_transfer_arrives_verified(snap, tmp_path):
    receiver = SnapshotReceiver(tmp_path / "in")
    answer = send(receiver, snap.path, 300, 2)
    final = str(tmp_path / "in" / "snapshot-300-2.db")
    assert answer == Received(True, transfer_size(snap.path), True, final)
    assert Path(answer.path).read_bytes() == Path(snap.path).read_bytes()
    assert snapshot_sha256(answer.path) == snap.sha256
    assert read_snapshot_meta(answer.path) == read_snapshot_meta(snap.path)
    assert receiver.expecting is None
    names = sorted(p.name for p in (tmp_path / "in").iterdir())
    assert names == ["snapshot-300-2.db", "snapshot-300-2.db.sha256"]


def test_the_digest_may_be_split_across_chunks(snap, tmp_path):
    receiver = SnapshotReceiver(tmp_path / "in", fsync=False)
    stream = b"".join(c for _, c, _ in iter_chunks(snap.path))
    cut = snap.size_bytes + 10
    assert receiver.accept(300, 2, 0, stream[:cut], False).accepted
    assert receiver.accept(300, 2, cut, stream[cut : cut + 1], False).accepted
    assert receiver.accept(300, 2, cut + 1, stream[cut + 1 :], True).done


def test_a_chunk_at_the_wrong_offset_is_refused_with_the_expected_one(snap, tmp_path):
    receiver = SnapshotReceiver(tmp_path / "in")
    first = read_chunk(snap.path, 0, 1000)
    assert receiver.accept(300, 2, 0, first, False) == Received(True, 1000)
    assert receiver.accept(300, 2, 2000, read_chunk(snap.path, 2000, 1000), False) == Received(
        False, 1000, error="chunk at 2000, expected 1000"
    )
    assert receiver.accept(300, 2, 0, first, False).next_offset == 1000  # a resent chunk
    assert receiver.expecting == (300, 2, 1000)
    assert send(receiver, snap.path, 300, 2, 1000, start=1000).done


def test_a_transfer_resumes_after_a_dropped_connection_and_a_restart(snap, tmp_path):
    receiver = SnapshotReceiver(tmp_path / "in")
    send(receiver, snap.path, 300, 2, 1000, stop=5000)
    assert receiver.expecting == (300, 2, 5000)
    restarted = SnapshotReceiver(tmp_path / "in")  # same directory, e.g. after a node restart
    assert restarted.expecting == (300, 2, 5000)
    refused = restarted.accept(300, 2, 0, read_chunk(snap.path, 0, 1000), False)
    assert (refused.accepted, refused.next_offset) == (False, 5000)
    answer = send(restarted, snap.path, 300, 2, 1000, start=5000)
    assert answer.done and Path(answer.path).read_bytes() == Path(snap.path).read_bytes()


def test_a_corrupted_transfer_is_refused_and_starts_over(snap, tmp_path):
    receiver = SnapshotReceiver(tmp_path / "in")
    chunks = list(iter_chunks(snap.path, 4096))
    for offset, data, done in chunks:
        if offset == 4096:
            data = bytes([data[0] ^ 1]) + data[1:]
        answer = receiver.accept(300, 2, offset, data, done)
    assert (answer.accepted, answer.next_offset, answer.path) == (False, 0, None)
    assert "checksum" in answer.error
    assert list((tmp_path / "in").iterdir()) == [] and receiver.expecting is None
    assert send(receiver, snap.path, 300, 2).done


def test_an_offset_zero_chunk_of_another_snapshot_abandons_the_current_one(snap, leader, tmp_path):
    leader.log(history(301, 310, term=3), term=3)
    newer = write_snapshot(leader.path, str(tmp_path / "newer.db"), CONFIG)
    receiver = SnapshotReceiver(tmp_path / "in")
    send(receiver, snap.path, 300, 2, 1000, stop=3000)
    refused = receiver.accept(310, 3, 1000, read_chunk(newer.path, 1000, 1000), False)
    assert (refused.accepted, refused.next_offset) == (False, 0)
    assert receiver.expecting == (300, 2, 3000)
    answer = send(receiver, newer.path, 310, 3, 1000)
    assert answer.path.endswith("snapshot-310-3.db")
    names = sorted(p.name for p in (tmp_path / "in").iterdir())
    assert names == ["snapshot-310-3.db", "snapshot-310-3.db.sha256"]


def test_a_chunk_resent_after_completion_gets_the_same_answer(snap, tmp_path):
    receiver = SnapshotReceiver(tmp_path / "in")
    chunks = list(iter_chunks(snap.path, 4096))
    answer = send(receiver, snap.path, 300, 2)
    offset, data, done = chunks[-1]
    assert receiver.accept(300, 2, offset, data, done) == answer


def test_a_stream_claiming_another_snapshot_is_refused(snap, tmp_path):
    receiver = SnapshotReceiver(tmp_path / "in")
    *_, answer = (receiver.accept(299, 2, o, d, done) for o, d, done in iter_chunks(snap.path))
    assert not answer.accepted and "not 299/2" in answer.error
    junk = b"not a database" * 100
    stream = junk + hashlib.sha256(junk).digest()
    answer = receiver.accept(5, 1, 0, stream, True)
    assert not answer.accepted and "not a snapshot" in answer.error
    assert list((tmp_path / "in").iterdir()) == []


# -- installing --------------------------------------------------------------------------------------------


def test_install_gives_a_new_follower_the_leaders_state(snap, leader, follower):
    contents = install_snapshot(follower.engine, snap.path, follower.storage)
    assert contents == SnapshotContents(SnapshotMeta(300, 2, (1, 2, 3), (4,)), MEMBERS, 0)
    assert follower.tables() == leader.tables()
    assert follower.storage.load() == PersistedState(HardState(2, 0, 300), (), contents.meta)
    assert follower.state.last_applied() == 300
    [retry] = follower.state.apply([Entry(301, 2, EntryKind.NORMAL, frame_entry(200).data)])
    assert retry.outcome is Outcome.DUPLICATE and retry.index == 200


def test_install_replaces_a_lagging_followers_state_and_log(snap, leader, follower):
    follower.log(history(1, 120))
    follower.storage.save(None, [Entry(121, 1, EntryKind.NORMAL, b"uncommitted")])
    install_snapshot(follower.engine, snap.path, follower.storage)
    assert follower.tables() == leader.tables()
    assert follower.storage.load() == PersistedState(HardState(2, 0, 300), (), snap.meta)


def test_after_install_the_log_continues_and_a_restart_recovers_exactly(snap, leader, tmp_path):
    follower = Node(tmp_path / "restarting.db")
    install_snapshot(follower.engine, snap.path, follower.storage)
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
            outcome.append(install_snapshot(follower.engine, snap.path, follower.storage))
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
        install_snapshot(follower.engine, snap.path, follower.storage)
    assert (follower.tables(), follower.storage.load()) == before
    follower.log(history(311, 311))  # the connection is usable: the file was detached


def test_install_refuses_a_file_that_is_no_snapshot(follower, tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"x" * 5000)
    before = follower.tables()
    for path in (bad, tmp_path / "missing.db", Path(follower.path)):
        with pytest.raises(SnapshotError):
            install_snapshot(follower.engine, path, follower.storage)
    assert follower.tables() == before


def test_a_failure_inside_install_leaves_the_old_state(snap, follower):
    follower.log(history(1, 50))
    before = follower.tables(), follower.storage.load()

    def fail_late(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("UPDATE snapshot_meta"):  # the Raft half, after the parking tables
            raise sqlite3.OperationalError("disk I/O error")

    sa.event.listen(follower.engine, "before_cursor_execute", fail_late)
    try:
        with pytest.raises(Exception, match="disk I/O error"):
            install_snapshot(follower.engine, snap.path, follower.storage)
    finally:
        sa.event.remove(follower.engine, "before_cursor_execute", fail_late)
    assert (follower.tables(), follower.storage.load()) == before
    install_snapshot(follower.engine, snap.path, follower.storage)
    assert follower.state.last_applied() == 300


def test_dedup_state_survives_retention_snapshot_and_install(leader, follower, tmp_path):
    leader.log(history(1, 100))
    leader.log([Entry(101, 1, EntryKind.NORMAL, retention_entry(1_000.0 + 10 * 20))])
    frames_left = len(leader.tables()["frames"])
    assert frames_left < 100
    info = write_snapshot(leader.path, str(tmp_path / "snap.db"))
    install_snapshot(follower.engine, info.path, follower.storage)
    assert follower.tables() == leader.tables()
    retries = [Entry(101 + i, 1, EntryKind.NORMAL, frame_entry(i).data) for i in range(1, 41)]
    for node in (leader, follower):
        results = node.state.apply(retries)
        assert {r.outcome for r in results} == {Outcome.DUPLICATE}
        assert len(node.tables()["frames"]) == frames_left
    assert follower.tables() == leader.tables()


# -- policy --------------------------------------------------------------------------------------------------


def test_compaction_policy():
    policy = CompactionPolicy(max_entries=100, max_bytes=1_000, margin=10)
    assert not policy.should_snapshot(100, 1_000)
    assert policy.should_snapshot(101, 0) and policy.should_snapshot(0, 1_001)
    assert policy.compact_upto(500) == 490 and policy.compact_upto(5) == 0
    assert CompactionPolicy().margin > 0
    with pytest.raises(ValueError):
        CompactionPolicy(margin=-1)
