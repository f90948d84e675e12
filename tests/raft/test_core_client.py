"""Client requests: proposals and forwarding, NotLeader, and linearizable reads
through ReadIndex (dissertation §6.4)."""

import dataclasses
import random

import pytest

from parkd.raft.core import CoreConfig, NotLeader, RaftCore, ReadState, Role
from parkd.raft.messages import AppendEntries, AppendResponse, PeerUnreachable, Propose, ReadIndexRequest
from parkd.raft.testing import Cluster, drain
from parkd.raft.types import PersistedState

T = 10
CFG = CoreConfig(election_ticks=T, heartbeat_ticks=2)


def run(cluster, ticks, *ids):
    for _ in range(ticks):
        cluster.tick(*ids)
        cluster.stabilize()


# -- proposals ----------------------------------------------------------------------


def test_leader_appends_a_proposal_in_its_term():
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    leader.propose(b"frame")
    rd = leader.ready()
    assert [(e.index, e.term, e.data) for e in rd.entries] == [(2, 1, b"frame")]
    assert {m.dst for m in rd.early_messages if type(m) is AppendEntries} == {2, 3}


def test_follower_forwards_proposals_to_the_leader():
    cluster = Cluster((1, 2, 3), CFG)
    cluster.elect(1)
    cluster.core(2).propose_batch([b"a", b"b"])
    cluster.take_ready(2)
    assert cluster.pending[2].messages == (Propose(1, 2, 1, (b"a", b"b")),)
    cluster.stabilize()
    assert [e.data for e in cluster.storage[2].applied] == [b"", b"a", b"b"]  # told at once: its cameras wait
    assert [e.data for e in cluster.storage[3].applied] == [b""]  # learns with the next append or heartbeat
    cluster.heartbeat()
    assert [e.data for e in cluster.storage[3].applied] == [b"", b"a", b"b"]


def test_a_followers_proposals_of_one_ready_travel_in_one_propose():
    """One message per Ready, not per frame (the node proposes frame by frame)."""
    cluster = Cluster((1, 2, 3), CFG)
    cluster.elect(1)
    follower = cluster.core(2)
    for data in (b"a", b"b", b"c"):
        follower.propose(data)
    cluster.take_ready(2)
    assert cluster.pending[2].messages == (Propose(1, 2, 1, (b"a", b"b", b"c")),)


def test_a_followers_forwards_are_split_at_the_message_size_limit():
    cfg = dataclasses.replace(CFG, max_bytes_per_msg=10)
    cluster = Cluster((1, 2, 3), cfg)
    cluster.elect(1)
    follower = cluster.core(2)
    for data in (b"aaaa", b"bbbb", b"cccc", b"d" * 20):
        follower.propose(data)
    cluster.take_ready(2)
    assert [m.data for m in cluster.pending[2].messages] == [(b"aaaa", b"bbbb"), (b"cccc",), (b"d" * 20,)]


def test_forwards_go_to_the_leader_they_were_proposed_to():
    """A proposal is for the leader known when it was made; the node re-proposes
    what waits when another leader is known (a Propose carries no retry)."""
    cluster = Cluster((1, 2, 3), CFG)
    cluster.elect(1)
    follower = cluster.core(2)
    follower.propose(b"a")
    follower.step(PeerUnreachable(1))  # the connection to the leader broke: leader unknown
    cluster.take_ready(2)
    assert cluster.pending[2].messages == (Propose(1, 2, 1, (b"a",)),)


def test_proposal_batch_travels_in_one_append_per_follower():
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    for i in range(10):
        leader.propose(b"%d" % i)  # one reactor turn's proposals
    sent = [m for m in leader.ready().early_messages if type(m) is AppendEntries]
    assert [len(m.entries) for m in sent] == [10, 10]


def test_not_leader_carries_none_when_no_leader_is_known():
    cluster = Cluster((1, 2, 3), CFG)
    for call in (lambda c: c.propose(b"x"), lambda c: c.read_index(1)):
        with pytest.raises(NotLeader) as err:
            call(cluster.core(1))
        assert err.value.leader_id is None


def test_not_leader_carries_the_known_leader_id():
    cluster = Cluster((1, 2, 3), CFG)
    cluster.elect(3)
    with pytest.raises(NotLeader) as err:
        cluster.core(1).transfer_leadership(2)
    assert err.value.leader_id == 3


def test_deposed_leader_drops_forwarded_proposals():
    cluster = Cluster((1, 2, 3), CFG)
    cluster.elect(1)
    cluster.isolate(1)
    run(cluster, 2 * T, 1)  # steps down (check-quorum)
    cluster.core(1).step(Propose(1, 2, 1, (b"late",)))
    assert cluster.core(1).last_index == 1


def test_single_node_commits_once_its_own_write_is_durable():
    core = RaftCore(1, (1,), PersistedState(), random.Random(0), CFG)
    for _ in range(2 * T):
        core.tick()
    assert core.role is Role.LEADER
    core.propose(b"x")
    rd = drain(core)
    assert rd.committed_entries == ()  # nothing counts before this Ready is persisted
    assert [e.data for e in drain(core).committed_entries] == [b"", b"x"]


# -- §6.4 ReadIndex --------------------------------------------------------------------


def test_6_4_leader_read_waits_for_a_heartbeat_round_from_a_majority():
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    leader.propose(b"x")
    cluster.stabilize()
    leader.read_index(42)
    rd = drain(leader)
    assert rd.read_states == ()
    rounds = {m.dst: m.read_ctx for m in (*rd.early_messages, *rd.messages) if type(m) is AppendEntries}
    assert set(rounds) == {2, 3} and len(set(rounds.values())) == 1
    ctx = rounds[2]
    leader.step(AppendResponse(1, 2, 1, True, 2, read_ctx=ctx - 1))  # an older round
    assert drain(leader).read_states == ()
    leader.step(AppendResponse(1, 2, 1, True, 2, read_ctx=ctx))
    assert drain(leader).read_states == (ReadState(42, 2),)


def test_6_4_reads_in_one_turn_share_a_round():
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    for ctx in (1, 2, 3):
        leader.read_index(ctx)
    cluster.stabilize()
    assert cluster.read_states[1] == [ReadState(1, 1), ReadState(2, 1), ReadState(3, 1)]


def test_6_4_new_leader_answers_reads_only_after_committing_in_its_term():
    cluster = Cluster((1, 2, 3), CFG)
    cluster.drop_if = lambda m: type(m) is AppendEntries and bool(m.entries)
    leader = cluster.elect(1)  # followers answer heartbeats, but the no-op is lost
    leader.read_index(5)
    run(cluster, 3 * CFG.heartbeat_ticks, 1)
    assert leader.commit_index == 0 and cluster.read_states[1] == []
    cluster.drop_if = None
    run(cluster, CFG.heartbeat_ticks, 1)
    assert leader.commit_index == 1
    assert cluster.read_states[1] == [ReadState(5, 1)]


def test_6_4_follower_read_goes_through_the_leader():
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    leader.propose(b"x")
    cluster.stabilize()
    follower = cluster.core(2)
    assert follower.commit_index == 1  # x's commit has not reached it yet
    follower.read_index(9)
    cluster.take_ready(2)
    assert cluster.pending[2].messages == (ReadIndexRequest(1, 2, 1, 9),)
    cluster.stabilize()
    assert cluster.read_states[2] == [ReadState(9, 2)]
    # The round's appends carried the commit index: the read is served without a heartbeat.
    assert follower.applied_index == follower.commit_index == 2


def test_6_4_partitioned_leader_never_confirms_and_fails_reads_on_stepping_down():
    cluster = Cluster((1, 2, 3), CFG)
    old = cluster.elect(1)
    cluster.isolate(1)
    old.read_index(7)
    run(cluster, 3 * T, 2, 3)  # the majority elects a new leader and moves on
    cluster.leader().propose(b"newer")
    cluster.stabilize()
    assert old.role is Role.LEADER and cluster.read_states[1] == []
    run(cluster, 2 * T, 1)
    assert old.role is Role.FOLLOWER
    assert cluster.read_states[1] == [ReadState(7, 0)]


def test_6_4_single_node_reads_at_once():
    core = RaftCore(1, (1,), PersistedState(), random.Random(0), CFG)
    for _ in range(2 * T):
        core.tick()
    drain(core)
    drain(core)  # the no-op is now committed
    core.read_index(3)
    assert drain(core).read_states == (ReadState(3, 1),)
