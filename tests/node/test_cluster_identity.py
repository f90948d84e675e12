"""Cluster identity on the raft port (CONTRACT §10): data-dir ids, PeerHello checks, the
leader's identity proposals, and a wiped node's standing."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, globalLogPublisher

from parkd.db import open_engine
from parkd.node.cluster_identity import PROTOCOL_VERSION, ClusterIdentity, compatible
from parkd.node.identity import DataDirIdentity
from parkd.node.ports import RaftPortFactory
from parkd.parking.codec import (
    ClusterIdCommand,
    MemberDataDir,
    decode_cluster_id,
    decode_member_data_dir,
    encode_cluster_id,
    encode_member_data_dir,
    is_cluster_id,
)
from parkd.parking.state import ParkingState
from parkd.proto import parkd_pb2 as pb
from parkd.raft import confchange
from parkd.raft import messages as m
from parkd.raft.confchange import ConfChange, ConfChangeOp
from parkd.raft.core import Role
from parkd.raft.types import Entry, EntryKind, Membership
from parkd.ratelimit import RateLimitedLog
from parkd.wire import frame_envelope, raft_to_envelope

CLUSTER, OTHER = "c" * 32, "d" * 32
DIR_1, DIR_2, DIR_2_NEW, DIR_3 = "1" * 32, "2" * 32, "5" * 32, "3" * 32


class FakeDriver:
    """The driver's view ClusterIdentity reads, and its proposals."""

    def __init__(self, role=Role.LEADER, voters=(1, 2, 3), learners=()):
        self.role = role
        self.membership = Membership(voters, learners, 1)
        self.applied_index = 0
        self.proposed: list[bytes] = []

    def propose(self, data: bytes) -> None:
        self.proposed.append(data)  # a follower's would be forwarded to its leader


@pytest.fixture
def state(tmp_path):
    engine = open_engine(str(tmp_path / "node.db"))
    yield ParkingState(engine, {"north": 10})
    engine.dispose()


def entry(index, data, kind=EntryKind.NORMAL):
    return Entry(index, 1, kind, data)


def make(state, *, created=False, role=Role.LEADER, voters=(1, 2, 3), learners=()):
    driver = FakeDriver(role, voters, learners)
    clock = Clock()
    identity = ClusterIdentity(1, DataDirIdentity(DIR_1, created), state, driver, clock)
    return identity, driver, clock


def hello(node_id=2, data_dir_id=DIR_2, cluster_id=CLUSTER, version=PROTOCOL_VERSION):
    return pb.PeerHello(protocol_version=version, node_id=node_id, cluster_id=cluster_id, data_dir_id=data_dir_id)


def record(state, *pairs, cluster_id=CLUSTER):
    """Apply a cluster id and data-dir records, as the leader's entries would."""
    first = state.last_applied() + 1
    datas = [encode_cluster_id(ClusterIdCommand(cluster_id))] if cluster_id else []
    datas += [encode_member_data_dir(MemberDataDir(n, d)) for n, d in pairs]
    state.apply([entry(first + k, data) for k, data in enumerate(datas)])


# -- this data dir's id ------------------------------------------------------------------------


def test_a_data_dir_gets_its_own_random_id_once(tmp_path):
    engine = open_engine(str(tmp_path / "node.db"))
    first = DataDirIdentity.load_or_create(engine)
    again = DataDirIdentity.load_or_create(engine)
    engine.dispose()
    assert first.created and not again.created
    assert again.data_dir_id == first.data_dir_id and len(first.data_dir_id) == 32
    other = open_engine(str(tmp_path / "other.db"))
    assert DataDirIdentity.load_or_create(other).data_dir_id != first.data_dir_id  # random, per data dir
    other.dispose()


# -- the PeerHello checks ------------------------------------------------------------------------


def test_protocol_versions_are_compatible_within_a_major_version():
    assert compatible(PROTOCOL_VERSION) and compatible(PROTOCOL_VERSION // 100 * 100 + 99)
    assert not compatible(PROTOCOL_VERSION + 100) and not compatible(0)


def test_a_peer_of_an_incompatible_protocol_is_refused_naming_both_versions(state):
    identity, _, _ = make(state)
    why = identity.check_hello(hello(version=PROTOCOL_VERSION + 100))
    assert f"speaks raft protocol {PROTOCOL_VERSION + 100}, this node speaks {PROTOCOL_VERSION}" in why


def test_a_node_of_another_cluster_is_refused_naming_both_ids(state):
    identity, _, _ = make(state)
    record(state)
    why = identity.check_hello(hello(cluster_id=OTHER))
    assert f"node 2 belongs to cluster {OTHER}, this node to cluster {CLUSTER}" in why
    assert identity.check_hello(hello(cluster_id="")) is None  # it does not know its cluster yet
    assert identity.check_hello(hello()) is None


def test_before_this_node_knows_its_cluster_id_any_cluster_id_is_accepted(state):
    identity, _, _ = make(state)
    assert identity.check_hello(hello(cluster_id=OTHER)) is None


def test_a_member_that_came_back_with_a_new_data_dir_is_refused_with_the_procedure(state):
    identity, _, _ = make(state)
    record(state, (1, DIR_1), (2, DIR_2))
    assert identity.data_dir_status(2) == "ok"
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        for _ in range(3):
            why = identity.check_hello(hello(data_dir_id=DIR_2_NEW))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert why == (f"node 2 came back with a new data dir (was {DIR_2}, now {DIR_2_NEW}): remove it (parkctl "
                   f"remove-node 2), wipe its data dir, start it with --join and add it again (parkctl add-node 2 ...)")
    assert identity.data_dir_status(2) == "changed"
    changed = [e for e in events if e.get("parkd_event") == "data_dir_changed"]
    assert len(changed) == 1 and (changed[0]["was"], changed[0]["now"]) == (DIR_2, DIR_2_NEW)  # once per change
    assert identity.check_hello(hello()) is None  # the recorded one is welcome again
    assert identity.data_dir_status(2) == "ok"


def test_a_removed_members_data_dir_is_refused_but_a_new_one_under_its_id_is_not(state):
    """Also what keeps old members out after --force-new-cluster: the FORCE entry retires them."""
    identity, _, _ = make(state)
    record(state, (1, DIR_1), (2, DIR_2), (3, DIR_3))
    forced = confchange.encode(ConfChange(ConfChangeOp.FORCE, 1, b"", (1,), ()))
    state.apply([entry(state.last_applied() + 1, forced, EntryKind.CONFIG)])
    why = identity.check_hello(hello(3, DIR_3))
    assert f"node 3 runs on data dir {DIR_3}, which a configuration left out" in why and "--join" in why
    assert identity.check_hello(hello(3, "7" * 32)) is None  # wiped, joining again


def test_a_malformed_hello_is_refused(state):
    identity, _, _ = make(state)
    assert "malformed PeerHello" in identity.check_hello(hello(data_dir_id="xyz"))


# -- the leader's proposals ------------------------------------------------------------------------


def test_the_leader_proposes_a_cluster_id_once_while_the_state_has_none(state):
    identity, driver, clock = make(state)
    identity.propose_missing()
    [data] = [d for d in driver.proposed if is_cluster_id(d)]
    proposed = decode_cluster_id(data).cluster_id
    identity.propose_missing()
    clock.advance(1)
    identity.propose_missing()
    assert sum(map(is_cluster_id, driver.proposed)) == 1  # not again while it may still be applied
    clock.advance(5)
    identity.propose_missing()
    assert sum(map(is_cluster_id, driver.proposed)) == 2  # lost (a leader change): proposed again
    record(state, cluster_id=proposed)
    driver.proposed.clear()
    clock.advance(10)
    identity.propose_missing()
    assert not any(map(is_cluster_id, driver.proposed))
    assert identity.cluster_id() == proposed and identity.hello().cluster_id == proposed


def test_the_leader_records_each_members_data_dir_it_sees_and_nothing_for_non_members(state):
    identity, driver, _ = make(state, voters=(1, 2), learners=(3,))
    record(state)
    assert identity.check_hello(hello(2, DIR_2)) is None
    assert identity.check_hello(hello(3, DIR_3)) is None
    assert identity.check_hello(hello(4, "4" * 32)) is None  # joining, not added yet
    identity.propose_missing()
    records = {decode_member_data_dir(d) for d in driver.proposed}
    assert records == {MemberDataDir(1, DIR_1), MemberDataDir(2, DIR_2), MemberDataDir(3, DIR_3)}
    record(state, (1, DIR_1), (2, DIR_2), (3, DIR_3), cluster_id=None)
    driver.proposed.clear()
    driver.membership = Membership((1, 2), (3, 4), 9)  # node 4 added: the id it presented is recorded
    identity.propose_missing()
    assert [decode_member_data_dir(d) for d in driver.proposed] == [MemberDataDir(4, "4" * 32)]


def test_a_member_added_again_is_recorded_with_the_data_dir_it_presents_now_not_its_old_one(state):
    """The leader saw node 2's old data dir before it was removed; added again on a wiped
    one, it must not be recorded under the old id before its new hello arrives."""
    identity, driver, _ = make(state, voters=(1, 2, 3))
    record(state, (1, DIR_1), (2, DIR_2), (3, DIR_3))
    assert identity.check_hello(hello(2, DIR_2)) is None
    removed = confchange.encode(ConfChange(ConfChangeOp.REMOVE, 2, b"", (1, 3), ()))
    added = confchange.encode(ConfChange(ConfChangeOp.ADD_LEARNER, 2, b"", (1, 3), (2,)))
    state.apply([entry(state.last_applied() + 1, removed, EntryKind.CONFIG),
                 entry(state.last_applied() + 2, added, EntryKind.CONFIG)])  # fmt: skip
    driver.membership = Membership((1, 3), (2,), 9)
    identity.propose_missing()
    assert driver.proposed == []
    assert identity.check_hello(hello(2, DIR_2_NEW)) is None
    identity.propose_missing()
    assert [decode_member_data_dir(d) for d in driver.proposed] == [MemberDataDir(2, DIR_2_NEW)]


def test_once_every_members_data_dir_is_recorded_the_leader_reads_no_records_again(state, monkeypatch):
    """The check runs twice a second on the leader: its queries held the reactor ~1 ms each time."""
    identity, driver, _ = make(state, voters=(1, 2, 3))
    record(state, (1, DIR_1), (2, DIR_2))
    reads = []
    member_data_dirs = state.member_data_dirs
    monkeypatch.setattr(state, "member_data_dirs", lambda **kw: reads.append(kw) or member_data_dirs(**kw))
    assert identity.check_hello(hello(2, DIR_2)) is None and identity.check_hello(hello(3, DIR_3)) is None
    reads.clear()
    identity.propose_missing()
    assert reads and [decode_member_data_dir(d) for d in driver.proposed] == [MemberDataDir(3, DIR_3)]
    record(state, (3, DIR_3), cluster_id=None)
    identity.propose_missing()  # finds node 3's record
    reads.clear()
    for _ in range(3):
        identity.propose_missing()
    assert reads == [] and len(driver.proposed) == 1
    driver.role = Role.FOLLOWER
    identity.propose_missing()
    driver.role = Role.LEADER  # a new term: what it knew is read again once
    identity.propose_missing()
    assert reads and len(driver.proposed) == 1


def test_a_follower_proposes_nothing(state):
    identity, driver, _ = make(state, role=Role.FOLLOWER)
    identity.check_hello(hello())
    identity.propose_missing()
    assert driver.proposed == []


# -- standing ---------------------------------------------------------------------------------------


def test_a_brand_new_data_dir_is_not_in_good_standing_until_it_applied_a_cluster_id(state):
    identity, driver, _ = make(state, created=True, role=Role.FOLLOWER)
    assert "data dir is new" in identity.standing()
    record(state)
    assert identity.standing() is None


def test_a_wiped_node_restarted_again_is_still_not_in_good_standing(state):
    """Its data dir was made at the previous start, but it has applied nothing."""
    identity, driver, _ = make(state, created=False, role=Role.FOLLOWER)
    assert identity.standing() is not None
    driver.applied_index = 1_000  # a data dir of the previous release: it has data, no cluster id yet
    assert identity.standing() is None


# -- the raft port ------------------------------------------------------------------------------------


def raft_port(check):
    delivered, events = [], []
    factory = RaftPortFactory(Clock(), 1 << 16, delivered.append, check_hello=check)
    factory.refusals = RateLimitedLog(Logger(observer=events.append), "{count} more in {window} s", clock=factory.clock)
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, delivered, events


VOTE = m.VoteRequest(term=3, src=2, dst=1, last_log_index=9, last_log_term=2, pre_vote=True)


def test_the_raft_port_takes_raft_messages_after_an_accepted_hello():
    proto, transport, delivered, _ = raft_port(lambda h: None)
    proto.dataReceived(frame_envelope(pb.Envelope(peer_hello=hello())) + frame_envelope(raft_to_envelope(VOTE)))
    assert delivered == [VOTE] and not transport.disconnected


def test_a_raft_message_before_a_hello_is_refused_as_a_previous_release():
    proto, transport, delivered, events = raft_port(lambda h: None)
    proto.dataReceived(frame_envelope(raft_to_envelope(VOTE)))
    assert delivered == [] and transport.disconnected
    [line] = events
    assert "before a PeerHello" in line["reason"] and "previous parkd release" in line["reason"]


def test_a_refused_hello_closes_the_connection_with_one_line():
    proto, transport, delivered, events = raft_port(lambda h: f"no: node {h.node_id}")
    proto.dataReceived(frame_envelope(pb.Envelope(peer_hello=hello())) + frame_envelope(raft_to_envelope(VOTE)))
    assert delivered == [] and transport.disconnected
    assert [e["reason"] for e in events] == ["no: node 2"]


def test_a_message_from_another_node_than_the_hello_named_is_refused():
    proto, transport, delivered, _ = raft_port(lambda h: None)
    stream = frame_envelope(pb.Envelope(peer_hello=hello(node_id=3))) + frame_envelope(raft_to_envelope(VOTE))
    proto.dataReceived(stream)
    assert delivered == [] and transport.disconnected
