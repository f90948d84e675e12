"""Single-server membership changes (dissertation chapter 4).

§4.1: one change at a time, through the log; a configuration takes effect when its
entry is appended (and is undone if that entry is truncated).  §4.2.1: new servers
join as non-voting learners and are promoted once caught up.  §4.2.2: a removed
leader steps down once the change commits.  §4.2.3: removed servers must not
disrupt the cluster.
"""

import random

import pytest

from parkd.raft import confchange
from parkd.raft.confchange import ConfChange, ConfChangeDecodeError, ConfChangeOp
from parkd.raft.core import ConfChangeRefused, CoreConfig, NotLeader, RaftCore, Role
from parkd.raft.messages import AppendEntries, AppendResponse, TimeoutNow, VoteRequest
from parkd.raft.testing import Cluster, drain, entries_with_terms
from parkd.raft.types import Entry, EntryKind, HardState, Membership, PersistedState, SnapshotMeta

T = 10
CFG = CoreConfig(election_ticks=T, heartbeat_ticks=2)
MANUAL = CoreConfig(election_ticks=T, heartbeat_ticks=2, auto_promote=False)
ADD, PROMOTE, REMOVE = ConfChangeOp.ADD_LEARNER, ConfChangeOp.PROMOTE, ConfChangeOp.REMOVE


def run(cluster, ticks, *ids):
    for _ in range(ticks):
        cluster.tick(*ids)
        cluster.stabilize()


def change(cluster, leader, op, node, ctx=b""):
    """Propose a change on ``leader`` and let it commit; returns the entry's index."""
    index = leader.propose_conf_change(ConfChange(op, node, ctx))
    cluster.stabilize()
    return index


def add_voter(cluster, leader, node):
    cluster.add_node(node)
    change(cluster, leader, ADD, node, b"addr")
    if node in leader.learners:
        change(cluster, leader, PROMOTE, node)
    assert node in leader.voters


def config_entry(core, index):
    (entry,) = core.log.slice(index, index + 1)
    assert entry.kind is EntryKind.CONFIG
    return confchange.decode(entry.data)


# -- the codec ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cc",
    [
        ConfChange(ADD, 4, b"raft=h:1 client=h:2", (1, 2, 3), (4,)),
        ConfChange(PROMOTE, 4, b"", (1, 2, 3, 4), ()),
        ConfChange(REMOVE, (1 << 32) - 1, b"\x00\xff", (), ()),
    ],
)
def test_conf_change_round_trips(cc):
    assert confchange.decode(confchange.encode(cc)) == cc


@pytest.mark.parametrize("data", [b"", b"\x02\x01\x00\x00\x00\x04", b"\x01\x09\x00\x00\x00\x04"
                                  b"\x00\x00\x00\x00", b"\x01\x01\x00\x00\x00\x04\x00\x05"])
def test_conf_change_decode_refuses_garbage(data):
    with pytest.raises(ConfChangeDecodeError):
        confchange.decode(data)


# -- §4.1 adding a learner; configurations take effect on append ---------------------------


def test_4_1_add_learner_takes_effect_on_append_and_carries_the_whole_configuration():
    cluster = Cluster((1, 2, 3), MANUAL)
    leader = cluster.elect(1)
    cluster.add_node(4)
    index = leader.propose_conf_change(ConfChange(ADD, 4, b"raft=10.0.0.4:7101"))
    assert index == 2
    assert leader.membership == Membership((1, 2, 3), (4,), 2)  # before it commits
    assert leader.pending_conf_change == 2
    rd = leader.ready()
    assert rd.membership == Membership((1, 2, 3), (4,), 2)
    assert [e.kind for e in rd.entries] == [EntryKind.CONFIG]
    assert {m.dst for m in rd.messages if type(m) is AppendEntries} == {2, 3, 4}
    assert config_entry(leader, 2) == ConfChange(ADD, 4, b"raft=10.0.0.4:7101", (1, 2, 3), (4,))
    leader.advance(rd)
    cluster.network.extend(rd.messages)
    cluster.stabilize()
    assert leader.pending_conf_change == 0
    for i in (1, 2, 3, 4):
        assert cluster.core(i).membership == Membership((1, 2, 3), (4,), 2)
        assert cluster.storage[i].applied[-1].kind is EntryKind.CONFIG  # the node applies it
    assert leader.match_indexes == {1: 2, 2: 2, 3: 2, 4: 2}


def test_4_1_follower_uses_a_configuration_as_soon_as_it_is_appended():
    core = RaftCore(1, (1, 2, 3), PersistedState(HardState(1)), random.Random(0), CFG)
    data = confchange.encode(ConfChange(REMOVE, 3, b"", (1, 2), ()))
    core.step(AppendEntries(1, 2, 1, 0, 0, (Entry(1, 1, EntryKind.CONFIG, data),), 0))
    assert core.voters == (1, 2) and core.commit_index == 0
    assert drain(core).membership == Membership((1, 2), (), 1)


def test_4_1_a_truncated_configuration_is_undone():
    cluster = Cluster((1, 2, 3), MANUAL)
    cluster.load(3, [1, 1])
    follower = cluster.core(3)
    data = confchange.encode(ConfChange(ADD, 4, b"", (1, 2, 3), (4,)))
    follower.step(AppendEntries(2, 1, 3, 2, 1, (Entry(3, 2, EntryKind.CONFIG, data),), 2))
    assert follower.learners == (4,)
    assert drain(follower).membership == Membership((1, 2, 3), (4,), 3)
    follower.step(AppendEntries(3, 2, 3, 2, 1, (Entry(3, 3, EntryKind.NOOP),), 2))
    assert follower.membership == Membership((1, 2, 3), (), 0)
    assert drain(follower).membership == Membership((1, 2, 3), (), 0)


@pytest.mark.parametrize(
    "setup, cc, reason",
    [
        (None, ConfChange(ADD, 2), "already a member"),
        (None, ConfChange(PROMOTE, 2), "not a learner"),
        (None, ConfChange(REMOVE, 7), "not a member"),
        (None, ConfChange(ADD, 0), "invalid node id"),
        ("pending", ConfChange(ADD, 5), "not committed yet"),
        ("uncommitted term", ConfChange(ADD, 5), "not committed an entry of its term"),
    ],
)
def test_4_1_refused_changes(setup, cc, reason):
    cluster = Cluster((1, 2, 3), MANUAL)
    if setup == "uncommitted term":  # elected, but its no-op never arrives
        cluster.drop_if = lambda m: type(m) is AppendEntries and bool(m.entries)
    leader = cluster.elect(1)
    if setup == "pending":
        cluster.isolate(2)
        cluster.isolate(3)
        leader.propose_conf_change(ConfChange(ADD, 4))
    with pytest.raises(ConfChangeRefused, match=reason):
        leader.propose_conf_change(cc)


def test_4_1_removing_the_last_voter_is_refused():
    cluster = Cluster((1,), CFG)
    leader = cluster.elect(1)
    with pytest.raises(ConfChangeRefused, match="no voter"):
        leader.propose_conf_change(ConfChange(REMOVE, 1))


def test_4_1_only_the_leader_changes_membership_and_not_during_a_transfer():
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    with pytest.raises(NotLeader) as err:
        cluster.core(2).propose_conf_change(ConfChange(ADD, 4))
    assert err.value.leader_id == 1
    cluster.isolate(3)
    leader.propose(b"x")
    cluster.stabilize()
    leader.transfer_leadership(3)
    with pytest.raises(NotLeader) as err:
        leader.propose_conf_change(ConfChange(ADD, 4))
    assert err.value.leader_id == 3


# -- §4.2.1 learners -------------------------------------------------------------------------


def test_4_2_1_learners_do_not_count_toward_commit_or_quorum():
    cluster = Cluster((1, 2, 3), MANUAL)
    leader = cluster.elect(1)
    cluster.add_node(4)
    change(cluster, leader, ADD, 4)
    cluster.partition([2, 3])  # leader 1 and learner 4 on one side
    leader.propose(b"x")
    cluster.stabilize()
    assert cluster.core(4).last_index == 3 and leader.commit_index == 2
    run(cluster, 2 * T, 1, 4)
    assert leader.role is Role.FOLLOWER  # check-quorum counts voters only


def test_4_2_1_learners_never_campaign():
    cluster = Cluster((1, 2, 3), MANUAL)
    leader = cluster.elect(1)
    cluster.add_node(4)
    change(cluster, leader, ADD, 4)
    cluster.crash(1)
    cluster.isolate(2)
    cluster.isolate(3)
    learner = cluster.core(4)
    for _ in range(10 * T):
        learner.tick()
        learner.step(TimeoutNow(learner.term, 1, 4))
    assert (learner.role, learner.term) == (Role.FOLLOWER, 1)
    assert not drain(learner).messages


def test_4_2_1_a_caught_up_learner_is_promoted_automatically():
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    for n in range(30):
        leader.propose(b"%d" % n)
    cluster.stabilize()
    cluster.add_node(4)
    add = leader.propose_conf_change(ConfChange(ADD, 4, b"addr"))
    cluster.stabilize()
    promote = leader.membership.index
    assert promote > add and leader.voters == (1, 2, 3, 4) and leader.learners == ()
    assert config_entry(leader, promote) == ConfChange(PROMOTE, 4, b"", (1, 2, 3, 4), ())
    assert cluster.core(4).voters == (1, 2, 3, 4)


def test_4_2_1_a_lagging_learner_waits():
    config = CoreConfig(election_ticks=T, heartbeat_ticks=2, promote_lag=2)
    cluster = Cluster((1, 2, 3), config)
    leader = cluster.elect(1)
    cluster.add_node(4)
    cluster.drop_if = lambda m: m.dst == 4 or m.src == 4
    change(cluster, leader, ADD, 4)
    for n in range(5):
        leader.propose(b"%d" % n)
    run(cluster, 3, 1)
    assert leader.learners == (4,)
    cluster.drop_if = None
    run(cluster, 2, 1)
    assert leader.voters == (1, 2, 3, 4)


def test_4_2_1_joining_node_stays_passive_until_it_is_in_a_configuration():
    """A node started with ``--join`` knows no members; it waits for the leader."""
    joiner = RaftCore(4, (), PersistedState(), random.Random(0), CFG)
    for _ in range(5 * T):
        joiner.tick()
    assert joiner.role is Role.FOLLOWER and not joiner.has_ready()
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    cluster.add_node(4)
    change(cluster, leader, ADD, 4)
    joined = cluster.core(4)
    assert joined.voters == (1, 2, 3, 4)  # caught up at once and promoted
    assert [e.kind for e in cluster.storage[4].applied] == [
        EntryKind.NOOP, EntryKind.CONFIG, EntryKind.CONFIG]
    cluster.crash(1)
    run(cluster, 3 * T)
    assert cluster.leader() is not None and cluster.leader().id != 1


def test_6_2_a_promoted_learner_starts_the_check_quorum_window_as_active():
    """§6.2 with §4.2.1: a voter promoted late in a check-quorum window could not yet
    answer as a voter, so it counts as active for that window (etcd-io/raft
    TestAddNodeCheckQuorum); silent for the whole next window, it counts as silent."""
    cluster = Cluster((1,), MANUAL)
    leader = cluster.elect(1)
    run(cluster, T - 1, 1)
    cluster.add_node(2)
    cluster.isolate(2)  # its answers are still on their way
    change(cluster, leader, ADD, 2)
    change(cluster, leader, PROMOTE, 2)
    assert leader.voters == (1, 2)
    run(cluster, 1, 1)  # the window ends
    assert leader.role is Role.LEADER
    run(cluster, T, 1)
    assert leader.role is Role.FOLLOWER


def test_4_2_1_single_node_grows_to_two_voters():
    cluster = Cluster((1,), CFG)
    leader = cluster.elect(1)
    add_voter(cluster, leader, 2)
    leader.propose(b"x")
    cluster.heartbeat()
    assert cluster.storage[2].applied[-1].data == b"x"
    cluster.isolate(2)
    leader.propose(b"y")
    cluster.stabilize()
    assert leader.commit_index == leader.last_index - 1  # now it needs node 2


# -- §4.2.2 removing servers, the leader too ----------------------------------------------------


def test_4_2_2_removed_follower_hears_of_the_commit_then_nothing():
    cluster = Cluster((1, 2, 3, 4), CFG)
    leader = cluster.elect(1)
    cluster.history = []
    index = change(cluster, leader, REMOVE, 4)
    assert leader.voters == (1, 2, 3) and 4 not in leader.match_indexes
    assert cluster.storage[4].applied[-1].index == index  # it learned it was removed ...
    assert 4 in cluster.retired  # ... so its node shut down (the simulation does as the node)
    cluster.history = []
    leader.propose(b"x")
    run(cluster, 3, 1)
    assert not [m for m in cluster.history if m.dst == 4]


def test_4_2_2_removed_leader_leads_until_the_change_commits_without_counting_itself():
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    cluster.isolate(3)
    index = leader.propose_conf_change(ConfChange(REMOVE, 1))
    assert leader.voters == (2, 3) and leader.role is Role.LEADER
    leader.propose(b"while leaving")
    cluster.stabilize()
    assert leader.commit_index < index  # 1 and 2 hold it, but 1 no longer counts
    assert leader.role is Role.LEADER
    cluster.heal()
    cluster.history = []
    run(cluster, CFG.heartbeat_ticks, 1)
    assert leader.role is Role.FOLLOWER
    assert [m for m in cluster.history if type(m) is TimeoutNow] == [TimeoutNow(1, 1, 2)]
    new = cluster.leader()
    assert new.id == 2 and new.term == 2  # at once: no election timeout lost
    assert new.log.slice(index + 1, index + 2)[0].data == b"while leaving"
    assert 1 in cluster.retired


def test_4_2_2_a_removed_leader_that_is_not_shut_down_never_campaigns():
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    change(cluster, leader, REMOVE, 1)
    cluster.restart(1)  # an operator starts it again
    old = cluster.core(1)
    run(cluster, 10 * T)
    assert old.role is Role.FOLLOWER and old.voters == (2, 3)
    assert cluster.leader().term == 2


# -- §4.2.3 removed servers do not disrupt -------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        CoreConfig(election_ticks=T, heartbeat_ticks=2),
        CoreConfig(election_ticks=T, heartbeat_ticks=2, pre_vote=False),
        CoreConfig(election_ticks=T, heartbeat_ticks=2, check_quorum=False),
    ],
    ids=["pre-vote and lease", "lease only", "pre-vote only"],
)
def test_4_2_3_a_removed_server_that_never_learned_it_does_not_disrupt(config):
    cluster = Cluster((1, 2, 3, 4), config)
    leader = cluster.elect(1)
    cluster.isolate(4)  # 4 never hears of its removal
    change(cluster, leader, REMOVE, 4)
    assert cluster.core(4).voters == (1, 2, 3, 4)
    cluster.heal()
    for _ in range(10 * T):
        cluster.tick()
        cluster.stabilize()
    assert (leader.role, leader.term) == (Role.LEADER, 1)
    assert {cluster.core(i).term for i in (2, 3)} == {1}
    assert cluster.core(4).role is not Role.LEADER


def test_4_2_3_late_replies_of_a_removed_server_are_ignored():
    cluster = Cluster((1, 2, 3, 4), CFG)
    leader = cluster.elect(1)
    cluster.isolate(4)
    change(cluster, leader, REMOVE, 4)
    leader.step(AppendResponse(9, 4, 1, success=False))
    assert (leader.role, leader.term) == (Role.LEADER, 1)
    leader.step(AppendResponse(9, 2, 1, success=False))  # a member's higher term still counts
    assert (leader.role, leader.term) == (Role.FOLLOWER, 9)


def test_4_2_3_a_transfer_vote_bypasses_the_lease_only_for_voters():
    cluster = Cluster((1, 2, 3), CFG)
    cluster.elect(1)
    follower = cluster.core(2)
    follower.step(VoteRequest(2, 9, 2, 5, 1, transfer=True))  # 9 is no voter of ours
    assert follower.term == 1
    follower.step(VoteRequest(2, 3, 2, 5, 1, transfer=True))
    assert (follower.term, follower.vote) == (2, 3)


# -- restarts: the log's configuration wins over the start-up file ---------------------------------


def test_4_1_restart_takes_the_latest_configuration_in_the_log():
    data = confchange.encode(ConfChange(PROMOTE, 4, b"", (1, 2, 3, 4), ()))
    entries = (*entries_with_terms([1, 1]), Entry(3, 1, EntryKind.CONFIG, data))
    persisted = PersistedState(HardState(1, 0, 2), entries)
    core = RaftCore(1, (1, 2, 3), persisted, random.Random(0), CFG)  # the file says 1, 2, 3
    assert core.membership == Membership((1, 2, 3, 4), (), 3)
    assert core.pending_conf_change == 3
    assert core.config_at(2) == Membership((1, 2, 3), (), 0)


def test_4_1_restart_from_a_snapshot_takes_its_configuration():
    snap = SnapshotMeta(5, 1, (1, 2, 4), (5,))
    persisted = PersistedState(HardState(1, 0, 5), (), snap)
    core = RaftCore(1, (1, 2, 3), persisted, random.Random(0), CFG, applied=5)
    assert core.membership == Membership((1, 2, 4), (5,), 5)


def test_4_1_snapshot_records_the_configuration_at_its_index():
    cluster = Cluster((1, 2, 3), MANUAL)
    leader = cluster.elect(1)
    cluster.add_node(4)
    add = change(cluster, leader, ADD, 4)
    leader.propose(b"x")
    cluster.stabilize()
    assert leader.config_at(add - 1) == Membership((1, 2, 3), (), 0)
    assert leader.config_at(add) == Membership((1, 2, 3), (4,), add)
    cluster.compact(1)
    assert leader.snapshot.voters == (1, 2, 3) and leader.snapshot.learners == (4,)
    promote = change(cluster, leader, PROMOTE, 4)
    assert leader.config_at(promote - 1).learners == (4,)
    assert leader.config_at(promote).voters == (1, 2, 3, 4)


# -- --force-new-cluster: disaster recovery outside §4 -------------------------------------------


def test_force_new_configuration_is_outside_4_1_and_makes_the_survivor_the_only_voter():
    """Disaster recovery only (CONTRACT §10 ``--force-new-cluster``): not a §4 change, which
    the old configuration would have to commit (§4.1); here its majority is gone for good.
    The survivor appends FORCE {voters: (1,)} at a term of its own, wins its one-voter
    election at once (§5.2), and its no-op commits every entry it held, committed or not
    (§5.4.2): exactly the acked entries it had are kept."""
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    leader.propose(b"acked")
    cluster.stabilize()
    cluster.crash(2)
    cluster.crash(3)
    leader.propose(b"never committed")  # appended on the survivor, no majority to commit it
    cluster.stabilize()
    committed, last, term = leader.commit_index, leader.last_index, leader.term
    assert last == committed + 1
    cluster.crash(1)
    cluster.restart(1)
    survivor = cluster.core(1)
    index = survivor.force_new_configuration()
    assert index == last + 1
    assert config_entry(survivor, index) == ConfChange(ConfChangeOp.FORCE, 1, b"", (1,), ())
    assert survivor.log.term_at(index) == term + 1  # its own term: it voted for itself in it
    assert survivor.role is Role.LEADER and survivor.term == term + 2 and survivor.voters == (1,)
    cluster.stabilize()
    assert survivor.commit_index == index + 1  # its no-op: everything before it is committed
    cluster.process(1)  # and applies it
    datas = [e.data for e in cluster.storage[1].applied]
    assert b"acked" in datas and b"never committed" in datas
    cluster.crash(1)
    cluster.restart(1)  # the configuration is in the log: it survives a restart
    assert cluster.core(1).voters == (1,)
