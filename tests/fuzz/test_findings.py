"""Regression tests for what the hostile-input fuzzers found (issue 7).

Each test names the finding; the fuzzers in this directory found them first.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from fuzzkit import captured_logs, envelopes_in, frame
from parkd.config import DEFAULT_MAX_MESSAGE_BYTES
from parkd.db import open_engine
from parkd.node.driver import RaftDriver
from parkd.node.frames import FrameIntake
from parkd.node.ports import ClientPortFactory, RaftPortFactory
from parkd.parking.analyzer import HashAnalyzer
from parkd.parking.state import ParkingState
from parkd.proto import parkd_pb2 as pb
from parkd.raft import confchange
from parkd.raft import messages as m
from parkd.raft.core import CoreConfig, RaftCore
from parkd.raft.testing import Simulation
from parkd.raft.storage import SqliteStorage
from parkd.raft.types import Entry, EntryKind
from parkd.wire import check_raft_message, raft_to_envelope
from doubles import Proposals

LOTS = {"north": 100}


def client_port(max_length=DEFAULT_MAX_MESSAGE_BYTES):
    state = ParkingState(open_engine("sqlite://"), LOTS)
    intake = FrameIntake(Proposals(), state, HashAnalyzer(), LOTS, Clock())
    return ClientPortFactory(Clock(), max_length, intake)


def connect(factory):
    proto = factory.buildProtocol(None)
    proto.makeConnection(StringTransport())
    return proto


# A lot id whose repr() is four times its length: quoted in an Error, it used to
# exceed the message limit, so sending the Error raised MessageTooLarge out of the
# protocol handler (an Unhandled Error with a traceback in the node's log).
HUGE_LOT = "\x00" * (DEFAULT_MAX_MESSAGE_BYTES // 4 + 1000)


def test_a_hello_with_a_huge_unknown_lot_gets_a_short_error_and_is_closed():
    factory = client_port()
    proto = connect(factory)
    with captured_logs() as logs:
        proto.dataReceived(frame(pb.Envelope(hello=pb.Hello(camera_id=7, lot=HUGE_LOT))))
    [answer] = envelopes_in(proto.transport.value())
    assert answer.error.code == pb.Error.UNKNOWN_LOT
    assert len(answer.error.message) < 1000 and "more characters" in answer.error.message
    assert proto.transport.disconnecting
    assert logs.errors() == [] and len(logs.closing()) == 1
    assert len(logs.closing()[0]["reason"]) < 1000


def test_a_frame_with_a_huge_wrong_lot_is_refused_with_a_short_error_and_the_camera_stays():
    factory = client_port()
    proto = connect(factory)
    proto.dataReceived(frame(pb.Envelope(hello=pb.Hello(camera_id=7, lot="north"))))
    with captured_logs() as logs:
        proto.dataReceived(frame(pb.Envelope(submit_frame=pb.SubmitFrame(camera_id=7, lot=HUGE_LOT, seq=1))))
    [answer] = envelopes_in(proto.transport.value())
    assert answer.error.code == pb.Error.LOT_MISMATCH and answer.error.seq == 1
    assert len(answer.error.message) < 1000
    assert not proto.transport.disconnecting
    assert logs.errors() == []
    assert all(len(text) < 2000 for text in logs.warnings())


# ------------------------------------------------------------------ the raft port
#
# A node as NodeService builds it, minus the sockets: RaftCore, SqliteStorage,
# RaftDriver on a Clock, and the raft port delivering to the driver.


class RaftNode:
    """Node 2 of (1, 2, 3)."""

    def __init__(self):
        engine = open_engine("sqlite://")
        self.storage = SqliteStorage(engine)
        self.core = RaftCore(2, (1, 2, 3), self.storage.load(), random.Random(0), CoreConfig(election_ticks=10))
        self.clock = Clock()
        self.sent = []
        machine = SimpleNamespace(apply=lambda entries: [None] * len(entries))  # a state machine that keeps nothing
        self.driver = RaftDriver(self.core, self.storage, self.sent.append, machine, self.clock, 0.1,
                                 on_fatal=lambda: None)  # fmt: skip
        self.driver.start()
        self.factory = RaftPortFactory(self.clock, DEFAULT_MAX_MESSAGE_BYTES, self.driver.step)

    def connect(self):
        proto = self.factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        return proto

    def send(self, message, proto=None):
        proto = proto or self.connect()
        proto.dataReceived(frame(raft_to_envelope(message)))
        self.clock.advance(0)  # the driver's Ready loop runs at the end of the reactor turn
        return proto

    def still_runs(self) -> bool:
        """Its Ready loop still works: left alone, it campaigns (pre-vote) for the next term."""
        self.sent.clear()
        self.clock.pump([0.1] * 40)
        return any(isinstance(x, m.VoteRequest) and x.term == self.core.term + 1 for x in self.sent)


# F2: a term at or beyond 2**63 was accepted.  SQLite cannot store it, and the
# OverflowError (not a StorageError) escaped the driver's Ready loop with a Ready
# outstanding: the node's Raft stopped for good while the process lived on.  From
# 2**64 - 1 the next campaign's term could not even be encoded (ValueError in send).
@pytest.mark.parametrize(
    "message",
    [
        m.AppendEntries(2**63, 1, 2, 0, 0, (), 0),
        m.TimeoutNow(2**64 - 1, 1, 2),
        m.VoteRequest(2**63 - 1, 3, 2, 0, 0, pre_vote=False),
        m.AppendResponse(2**64 - 1, 1, 2, False),
    ],
    ids=["append-2^63", "timeout-now-2^64-1", "vote-2^63-1", "append-response-2^64-1"],
)
def test_a_term_beyond_what_sqlite_stores_is_refused_and_the_node_runs_on(message):
    node = RaftNode()
    with captured_logs() as logs:
        proto = node.send(message)
    assert proto.rejected and proto.transport.disconnected
    assert node.core.term == 0 and logs.errors() == []
    assert node.still_runs()


def test_node_id_0_is_refused_it_would_let_a_node_vote_twice_in_a_term():
    """A vote for "node 0" was recorded as no vote at all, so the node voted again."""
    node = RaftNode()
    proto = node.send(m.VoteRequest(1, 0, 2, 0, 0))
    assert proto.rejected
    node.send(m.VoteRequest(1, 3, 2, 0, 0))
    node.send(m.VoteRequest(1, 1, 2, 0, 0))
    granted = [x.dst for x in node.sent if isinstance(x, m.VoteResponse) and x.granted]
    assert granted == [3] and node.core.vote == 3


# F3: the core trusts that an AppendEntries carries a piece of a leader's log.
# Entries that did not follow prev_log_index one by one left a hole in its log, so
# storage refused the next save (ValueError out of the Ready loop: Raft stopped for
# good) or raised LogConflictBelowCommit out of the port; entries of a term above
# the message's (or falling) broke the "terms never decrease" rule the log's
# binary searches rely on.
@pytest.mark.parametrize(
    "entries",
    [
        (Entry(5, 1),),
        (Entry(0, 1),),
        (Entry(1, 1), Entry(3, 1)),
        (Entry(1, 9),),
        (Entry(1, 1), Entry(2, 0)),
    ],
    ids=["gap", "index-0", "hole", "term-above-the-message", "falling-terms"],
)
def test_entries_that_are_no_piece_of_a_leaders_log_are_refused(entries):
    node = RaftNode()
    with captured_logs() as logs:
        proto = node.send(m.AppendEntries(1, 1, 2, 0, 0, entries, 5))
    assert proto.rejected and proto.transport.disconnected
    assert node.core.last_index == 0 and node.core.commit_index == 0
    assert logs.errors() == []
    assert node.still_runs()


# F4: CONFIG entry data that does not decode raised ConfChangeDecodeError from inside
# core.step, after the entry had been added to the in-memory log.
def test_an_undecodable_config_entry_is_refused():
    node = RaftNode()
    config = confchange.encode(confchange.ConfChange(confchange.ConfChangeOp.ADD_LEARNER, 4, b"", (1, 2, 3), (4,)))
    for data in (b"", b"zz", config[:-3]):
        with captured_logs() as logs:
            proto = node.send(m.AppendEntries(1, 1, 2, 0, 0, (Entry(1, 1, EntryKind.CONFIG, data),), 1))
        assert proto.rejected and logs.errors() == []
        assert node.core.last_index == 0
    node.send(m.AppendEntries(1, 1, 2, 0, 0, (Entry(1, 1, EntryKind.CONFIG, config),), 1))
    assert node.core.learners == (4,)  # a well-formed one still goes through


def test_the_check_refuses_nothing_a_correct_cluster_sends():
    """Every message of simulated clusters (elections, faults, membership changes,
    snapshots, transfers) passes check_raft_message."""
    kinds = set()
    for seed in range(20):
        sim = Simulation(seed)
        sim.cluster.history = []
        assert sim.run(1000).ok
        for message in sim.cluster.history:
            check_raft_message(message)
            kinds.add(type(message))
    assert len(kinds) == 10  # every raft message type was seen


# F5: an append that would overwrite committed entries (a forged leader of a higher
# term) made the log raise LogConflictBelowCommit out of core.step and through the
# raft port's handler (an Unhandled Error with a traceback).  The port now refuses
# the sender; the committed entries stay.
def test_an_append_rewriting_committed_entries_is_refused_and_changes_nothing():
    node = RaftNode()
    honest = node.send(m.AppendEntries(1, 1, 2, 0, 0, (Entry(1, 1, data=b"a"), Entry(2, 1, data=b"b")), 2))
    assert node.core.commit_index == 2
    with captured_logs() as logs:
        forged = node.send(m.AppendEntries(2, 3, 2, 0, 0, (Entry(1, 2, data=b"forged"),), 1))
    assert forged.rejected and forged.transport.disconnected
    assert logs.errors() == [] and "would rewrite committed entries" in logs.closing()[0]["reason"]
    assert [e.data for e in node.core.log.slice(1, 3)] == [b"a", b"b"]
    assert not honest.rejected
    assert node.still_runs()


# ------------------------------------------------------------------ the core itself
#
# The raft port refuses these before they reach the core; the core drops them
# itself too (defence in depth: the core must not depend on its transport).


def core_node():
    from raftkit import Node  # tests/fuzz/raftkit.py

    return Node(0)


def test_core_ignores_entries_that_do_not_follow_prev_log_index():
    node = core_node()
    node.core.step(m.AppendEntries(1, 1, 2, 0, 0, (Entry(5, 1),), 5))  # lands at index 1, claims 5
    node.process()  # storage: "entries start at 5; the log allows 1..1"
    assert node.core.last_index == 0


def test_core_survives_an_undecodable_config_entry():
    node = core_node()
    node.core.step(m.AppendEntries(1, 1, 2, 0, 0, (Entry(1, 1, EntryKind.CONFIG, b"zz"),), 0))
    node.process()
    assert node.core.last_index == 0 and node.core.learners == ()


def test_a_leader_ignores_a_match_index_beyond_its_own_log():
    """One forged success (a member's id, the current term) claiming a match past the
    leader's log commits an entry only the leader holds, and parks that follower at
    next = match + 1: the leader asks the node for a snapshot every heartbeat ("no file
    for snapshot" warnings) and never replicates to it again while it leads."""
    from raftkit import ME, elect, frame_data

    node = core_node()
    assert elect(node)
    core = node.core
    for peer in (1, 3):
        node.deliver(m.AppendResponse(core.term, peer, ME, True, core.last_index))
    node.propose(frame_data(1))  # on the leader only
    node.deliver(m.AppendResponse(core.term, 3, ME, True, 10**6))
    assert core.commit_index < core.last_index, "committed without a majority"
    assert core.progress[3].match <= core.last_index


# ------------------------------------------------------------------ snapshots from a peer
#
# F6: a received snapshot was trusted once its digest matched.  A file without one
# of the tables the install copies made it raise StorageError out of the raft
# port's handler; one naming no voters was installed (parking tables and Raft
# storage replaced) and then core.restore raised, leaving the core and the disk at
# odds (the next save was refused: the Ready loop stopped); ids that are not
# integers became the core's voters.


def crafted_snapshot(tmp_path, damage: str) -> bytes:
    """The transfer stream (file + SHA-256) of a valid snapshot at (5, 1), then ``damage`` done to it."""
    import hashlib
    import sqlite3

    from parkd.parking.codec import FrameResult, encode
    from parkd.parking.snapshot import pin_state
    from parkd.raft.types import HardState

    engine = open_engine(str(tmp_path / "leader.db"))
    storage, state = SqliteStorage(engine), ParkingState(engine, {"north": 100, "south": 60})
    entries = [Entry(i, 1, data=encode(FrameResult(9, "north", i, 1.7e9 + i, 5))) for i in range(1, 6)]
    storage.save(HardState(1, 1, 5), entries)
    state.apply(entries)
    engine.dispose()
    out = tmp_path / "snapshot.db"
    pin_state(str(tmp_path / "leader.db")).write(str(out), term=1, voters=(1, 2, 3), learners=(), config_index=0)
    with sqlite3.connect(out) as db:
        db.executescript(damage)
    data = out.read_bytes()
    return data + hashlib.sha256(data).digest()


@pytest.mark.parametrize(
    "damage",
    [
        "DROP TABLE lots;",
        "ALTER TABLE frames DROP COLUMN free;",
        "UPDATE snapshot_meta SET voters = '[]';",
        "UPDATE snapshot_meta SET voters = '[\"x\", 2]';",
        "UPDATE snapshot_meta SET learners = '[0]';",
        "UPDATE snapshot_meta SET term = 'one';",
    ],
    ids=["no-lots-table", "no-free-column", "no-voters", "string-voter", "learner-0", "text-term"],
)
def test_a_crafted_snapshot_from_a_peer_is_refused_and_changes_nothing(tmp_path, damage):
    from test_fuzz_node import Node  # the real NodeService on a MemoryReactorClock

    stream = crafted_snapshot(tmp_path, damage)
    node = Node()
    try:
        with captured_logs() as logs:
            node.honest_peer.dataReceived(frame(raft_to_envelope(m.InstallSnapshot(1, 1, 2, 5, 1, 0, stream, True))))
            node.run(0.5)
        assert logs.errors() == []
        assert node.service.store.state.last_applied() == 0 and node.core.applied_index == 0
        assert node.core.voters == (1, 2, 3)
        assert not node.service.driver._failed
        assert node.elect()  # still a working member
    finally:
        node.stop()


def test_the_same_snapshot_undamaged_is_installed(tmp_path):
    from test_fuzz_node import Node

    stream = crafted_snapshot(tmp_path, "")
    node = Node()
    try:
        node.honest_peer.dataReceived(frame(raft_to_envelope(m.InstallSnapshot(1, 1, 2, 5, 1, 0, stream, True))))
        node.run(0.5)
        assert node.service.store.state.last_applied() == 5 and node.core.applied_index == 5
    finally:
        node.stop()
