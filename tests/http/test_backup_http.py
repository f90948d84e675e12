"""``GET /api/v1/admin/backup`` (CONTRACT §10): the leader streams a consistent backup, a chunk at a time.

The HTTP port is the node double's (``httpnode.FakeNode``: real Site over a
StringTransport, a task.Clock); the backup comes from a real BackupTaker on a
real node database file, with a read barrier and a copy thread the test drives:
the copy is held until the test releases it, and the stream advances one chunk
per ``resumeProducing``, as a socket's drained buffer would ask.
"""

from __future__ import annotations

import os
import sqlite3
from types import SimpleNamespace

import pytest
from twisted.internet import defer
from twisted.logger import globalLogPublisher

from parkd.db import open_engine
from parkd.http.access import Access
from parkd.node.backup import BackupTaker
from parkd.node.reads import ReadUnavailable
from parkd.parking.backup import BackupVerifier, CHUNK_SIZE
from parkd.parking.codec import FrameResult, encode
from parkd.parking.state import ParkingState
from parkd.raft.core import NotLeader, Role
from parkd.raft.storage import SqliteStorage
from parkd.raft.types import Entry, EntryKind, Membership

BACKUP = "/api/v1/admin/backup"
LOTS = {"north": 100, "south": 60}
TERM = 3


class Driver:
    """What a BackupTaker asks the driver: role, leader, and term and configuration at an index."""

    def __init__(self):
        self.node_id = 2
        self.role = Role.LEADER
        self.leader_id = 2

    def term_at(self, index):
        return TERM

    def config_at(self, index):
        return Membership((1, 2, 3), (4,), 7)


class Reads:
    """A read barrier whose read index the test confirms (or refuses)."""

    def __init__(self):
        self.pending: list[defer.Deferred] = []

    def read(self):
        d = defer.Deferred()
        self.pending.append(d)
        return d

    def confirm(self):
        self.pending.pop(0).callback(0)


class HeldThread:
    """The backup thread: the copy runs when the test releases it (meanwhile the "reactor" is free)."""

    def __init__(self):
        self.held: list[tuple] = []

    def start(self):
        pass

    def stop(self):
        pass

    def run(self, function):
        d = defer.Deferred()
        self.held.append((function, d))
        return d

    def release(self):
        function, d = self.held.pop(0)
        d.callback(function())


class Store:
    """A node's database file: Raft storage and the parking state, with frames applied in term 3."""

    def __init__(self, path):
        self.db_path = str(path)
        self.engine = open_engine(self.db_path)
        SqliteStorage(self.engine)
        self.state = ParkingState(self.engine, LOTS)
        self.index = 0

    def apply(self, count):
        entries = []
        for _ in range(count):
            self.index += 1
            i = self.index
            result = FrameResult(1 + i % 7, "north" if i % 7 % 2 else "south", 1 + i // 7, 1_000.0 + i, i % 50)
            entries.append(Entry(i, TERM, EntryKind.NORMAL, encode(result)))
        self.state.apply(entries)


@pytest.fixture
def events():
    seen = []

    def observe(event):
        if "parkd_event" in event or event.get("log_level") is not None and event["log_level"].name == "warn":
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def leader(node, tmp_path):
    """The node double with a BackupTaker on a database of 2,000 applied frames."""
    store = Store(tmp_path / "node.db")
    store.apply(2_000)
    node.backup_store = store
    node.backup_reads = Reads()
    node.backup_thread = HeldThread()
    node.backup_driver = Driver()
    node.backups = BackupTaker(node.backup_driver, store, node.membership, node.backup_reads, node.clock,
                               str(tmp_path / "backups"), thread=node.backup_thread, alarms=node.alarms)  # fmt: skip
    rebuild(node)
    yield node
    store.engine.dispose()


def rebuild(node, access=Access()):
    node.build_site(backups=node.backups, access=access)


def reactor_turn(clock):
    """One reactor iteration: the calls due now, not the ones they schedule (as the reactor runs them;
    ``Clock.advance`` would run those too)."""
    due = [call for call in clock.getDelayedCalls() if call.getTime() <= clock.seconds()]
    assert due, "nothing is streaming"
    for call in due:
        if call.active():
            clock.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)


def stream(node, request, turns=None):
    """Run ``turns`` reactor turns (all it takes: None); True once the response is complete."""
    n = 0
    while not request.transport.disconnecting and (turns is None or n < turns):
        reactor_turn(node.clock)
        n += 1
    return request.transport.disconnecting


def body_of(request):
    return request.transport.value().partition(b"\r\n\r\n")[2]


def start_backup(node):
    """A backup request whose read index is confirmed and copy done: the stream may begin."""
    request = node.request(BACKUP)
    node.backup_reads.confirm()
    node.backup_thread.release()
    return request


def payload_frames(payload: bytes, tmp_path) -> int:
    path = tmp_path / "payload.db"
    path.write_bytes(payload)
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM frames").fetchone()[0]
    finally:
        conn.close()


def backup_files(node):
    return os.listdir(node.backups.directory)


def content_length(request) -> int:
    head = request.transport.value().partition(b"\r\n\r\n")[0]
    [line] = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    return int(line.split(b":")[1])


# ------------------------------------------------------------------ the stream


def test_the_leader_streams_a_backup_file_that_verifies(leader, tmp_path, events):
    request = start_backup(leader)
    assert stream(leader, request)
    response = request.response()
    assert response.status == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["x-parkd-backup-index"] == "2000" and response.headers["x-parkd-backup-term"] == "3"
    assert response.headers["content-disposition"] == 'attachment; filename="parkd-backup-2000-3.pkb"'
    assert int(response.headers["content-length"]) == len(response.body)
    verifier = BackupVerifier()
    payload = verifier.feed(response.body)
    header = verifier.finish()
    assert (header.index, header.term, header.cluster_id) == (2000, TERM, "")
    assert (header.voters, header.learners, header.config_index) == ((1, 2, 3), (4,), 7)
    assert [m["id"] for m in header.members] == [1, 2, 3] and header.members[0]["http"] == "127.0.0.1:7301"
    assert header.node_id == 2 and header.created_at == leader.clock.seconds()
    assert payload_frames(payload, tmp_path) == 2000
    [taken] = [e for e in events if e.get("parkd_event") == "backup_taken"]
    assert (taken["index"], taken["term"], taken["bytes"]) == (2000, TERM, len(response.body))
    assert backup_files(leader) == []  # the payload file is gone
    assert not leader.backups.busy


def test_the_backup_is_the_state_when_the_read_index_is_confirmed_not_later(leader):
    request = leader.request(BACKUP)
    leader.backup_store.apply(100)  # applied before the read index is confirmed: in the backup
    leader.backup_reads.confirm()  # the state is pinned here, on the "reactor"
    leader.backup_store.apply(50)  # applied while the copy runs: not in it
    leader.backup_thread.release()
    assert stream(leader, request)
    verifier = BackupVerifier()
    verifier.feed(request.response().body)
    assert verifier.finish().index == 2100


def test_reads_are_answered_while_a_backup_is_copied_and_while_it_streams(leader):
    leader.apply(1, 1, 40)
    request = leader.request(BACKUP)
    leader.backup_reads.confirm()
    # The copy is under way on its thread: the node answers reads and applies entries.
    assert leader.get("/api/v1/lots?consistency=local").status == 200
    leader.apply(1, 2, 39)
    leader.backup_store.apply(10)
    leader.backup_thread.release()
    # Streaming: a chunk per reactor turn, other requests in between.
    assert not stream(leader, request, turns=2)
    assert 0 < len(body_of(request)) < content_length(request)
    lots = leader.get("/api/v1/lots?consistency=local").json()["lots"]
    assert [lot["free"] for lot in lots if lot["id"] == "north"] == [39]
    assert stream(leader, request)
    assert request.response().status == 200


def test_one_chunk_of_at_most_256_kib_per_reactor_turn_and_none_while_paused(leader):
    leader.backup_store.apply(20_000)  # a payload of several chunks
    request = start_backup(leader)
    sizes = []
    while not request.transport.disconnecting:
        before = len(request.transport.value())
        reactor_turn(leader.clock)
        sizes.append(len(request.transport.value()) - before)
        if len(sizes) == 2:  # the connection's buffer is full: the channel pauses the stream
            request.transport.producer.pauseProducing()
            before = len(request.transport.value())
            leader.clock.advance(1)
            assert len(request.transport.value()) == before and not leader.clock.getDelayedCalls()
            request.transport.producer.resumeProducing()
    assert len(sizes) > 3 and max(sizes) <= CHUNK_SIZE + 4096  # (the first write carries the HTTP head)
    assert request.response().status == 200


# ------------------------------------------------------------------ refusals


def test_a_follower_names_the_leader(leader):
    leader.backup_driver.role, leader.backup_driver.leader_id = Role.FOLLOWER, 1
    response = leader.get(BACKUP)
    assert response.status == 421
    assert response.json() == {"error": "node 2 is not the leader; send this to node 1 at 127.0.0.1:7301",
                               "leader_id": 1, "leader_http": "127.0.0.1:7301"}  # fmt: skip


def test_without_a_leader_it_is_503(leader):
    leader.backup_driver.role, leader.backup_driver.leader_id = Role.CANDIDATE, None
    response = leader.get(BACKUP)
    assert response.status == 503 and response.headers["retry-after"] == "1"


def test_one_backup_at_a_time(leader):
    first = start_backup(leader)
    response = leader.get(BACKUP)
    assert response.status == 409
    assert response.json()["error"] == "a backup is already being taken on this node; try again once it is sent"
    assert stream(leader, first)
    second = start_backup(leader)
    assert stream(leader, second) and second.response().status == 200


def test_no_backup_while_the_nospace_alarm_is_raised(leader):
    leader.alarms.raise_alarm("nospace", "12 MiB free, below min_free_disk_mb 256")
    response = leader.get(BACKUP)
    assert response.status == 507
    assert "nospace alarm raised" in response.json()["error"] and "free space" in response.json()["error"]
    assert leader.backup_reads.pending == [] and not leader.backups.busy
    leader.alarms.clear("nospace", "space is back")
    request = start_backup(leader)
    assert stream(leader, request) and request.response().status == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_backup_is_a_get(leader, method):
    response = leader.get(BACKUP, method=method)
    assert response.status == 405 and response.headers["allow"] == "GET"
    assert leader.backup_reads.pending == []


def test_query_parameters_are_refused(leader):
    assert leader.get(BACKUP + "?index=3").status == 400


def test_an_operator_certificate_is_needed_under_tls(leader):
    rebuild(leader, Access(tls=True))
    response = leader.get(BACKUP)  # no client certificate on this connection
    assert response.status == 401
    assert "operator certificate" in response.json()["error"]
    assert leader.backup_reads.pending == [] and not leader.backups.busy


def test_no_read_index_is_503_and_frees_the_taker(leader):
    request = leader.request(BACKUP)
    leader.backup_reads.pending.pop(0).errback(ReadUnavailable("no leader confirmed the read within 2 s"))
    response = request.response()
    assert response.status == 503 and response.headers["retry-after"] == "1"
    assert "no leader confirmed the read" in response.json()["error"]
    assert not leader.backups.busy


# ------------------------------------------------------------------ clients that leave, files that fail


def test_a_client_that_leaves_mid_stream_stops_it_and_the_file_goes(leader, events):
    request = start_backup(leader)
    assert not stream(leader, request, turns=2)
    assert len(backup_files(leader)) == 1
    request.disconnect()
    assert backup_files(leader) == [] and not leader.backups.busy
    assert not [e for e in events if e.get("parkd_event") == "backup_taken"]
    assert any("not sent whole" in e.get("log_format", "") for e in events)


def test_a_client_that_leaves_during_the_copy_gets_nothing_and_the_file_goes(leader):
    request = leader.request(BACKUP)
    leader.backup_reads.confirm()
    request.disconnect()
    before = request.transport.value()
    leader.backup_thread.release()
    assert request.transport.value() == before
    assert backup_files(leader) == [] and not leader.backups.busy


def test_a_payload_that_fails_mid_stream_cuts_the_connection_short(leader):
    leader.backup_store.apply(20_000)
    request = start_backup(leader)
    stream(leader, request, turns=2)
    [name] = backup_files(leader)
    path = os.path.join(leader.backups.directory, name)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)  # the disk lost it
    assert stream(leader, request)  # the stream ends: the connection is closed
    assert len(body_of(request)) < content_length(request)
    assert not leader.backups.busy


def test_stale_payload_files_of_a_killed_node_are_removed_at_start(tmp_path, node):
    directory = tmp_path / "backups"
    directory.mkdir()
    (directory / ".backup-12.db").write_bytes(b"x")
    (directory / "..backup-12.db.abc.tmp").write_bytes(b"x")
    BackupTaker(Driver(), SimpleNamespace(), node.membership, Reads(), node.clock, str(directory), thread=HeldThread())
    assert os.listdir(directory) == []


def test_a_follower_refuses_before_reading_anything(node, tmp_path):
    driver = Driver()
    driver.role, driver.leader_id = Role.FOLLOWER, 3
    reads = Reads()
    taker = BackupTaker(driver, SimpleNamespace(), node.membership, reads, node.clock, str(tmp_path / "b"),
                        thread=HeldThread())  # fmt: skip
    with pytest.raises(NotLeader) as refused:
        taker.take()
    assert refused.value.leader_id == 3 and reads.pending == [] and not taker.busy
