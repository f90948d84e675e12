"""Snapshots and log compaction (Raft §7): the core knows positions, the node owns data.

The node snapshots its state machine and steps ``SnapshotTaken``; a leader that
lacks the entries a follower needs emits one InstallSnapshot "send it" message and
waits (SNAPSHOT progress) for its transport's ``SnapshotStatus``; the follower's
transport steps the arrived snapshot (``done``) and the core either answers the
leader or asks the node to install it (``Ready.snapshot``).  ``Cluster`` plays the
node's part with the driver's calls (see parkd.raft.testing).
"""

import random

import pytest

from parkd.raft.core import CoreConfig, RaftCore, Role
from parkd.raft.messages import (
    AppendEntries,
    AppendResponse,
    InstallSnapshot,
    SnapshotResponse,
    SnapshotStatus,
    SnapshotTaken,
)
from parkd.raft.progress import ProgressState
from parkd.raft.testing import Cluster, drain, entries_with_terms
from parkd.raft.types import Entry, HardState, Membership, PersistedState, SnapshotMeta

T = 10
CFG = CoreConfig(election_ticks=T, heartbeat_ticks=2)


def sent(rd, kind):
    return [m for m in (*rd.early_messages, *rd.messages) if type(m) is kind]


def run(cluster, ticks, *ids):
    for _ in range(ticks):
        cluster.tick(*ids)
        cluster.stabilize()


def run_taking(cluster, ticks):
    """Tick the leader and deliver, taking Readies but leaving a snapshot install pending."""
    for _ in range(ticks):
        cluster.tick(1)
        for _ in range(50):
            for i in cluster.ids:
                cluster.take_ready(i)
                pending = cluster.pending.get(i)
                if pending is not None and pending.snapshot is None:
                    cluster.persist(i)
            if not cluster.network:
                break
            cluster.deliver()


def propose(cluster, leader, n, prefix=b"x"):
    """``n`` entries, committed and applied on every node (the followers learn the commit with a heartbeat)."""
    for k in range(n):
        leader.propose(prefix + b"%d" % k)
    cluster.heartbeat()


def lagging_cluster(margin=0):
    """Leader 1 compacted while node 3 was cut off; returns (cluster, leader)."""
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    cluster.isolate(3)
    propose(cluster, leader, 6)
    assert cluster.compact(1, margin)
    return cluster, leader


def ask_for_snapshot(cluster, leader):
    """Heal; heartbeats until the leader asks for a snapshot for 3, which is held back."""
    held = []
    cluster.drop_if = lambda m: type(m) is InstallSnapshot and not held.append(m)
    cluster.heal()
    while leader.progress[3].state is not ProgressState.SNAPSHOT:
        run(cluster, 1, 1)
    cluster.drop_if = None
    return held


def follower_core(terms, commit=0, term=None, snapshot=SnapshotMeta(), applied=None):
    hard = HardState(max(terms, default=snapshot.term) if term is None else term, 0, commit)
    first = snapshot.index + 1
    persisted = PersistedState(hard, tuple(entries_with_terms(terms, first)), snapshot)
    applied = snapshot.index if applied is None else applied
    return RaftCore(1, (1, 2, 3), persisted, random.Random(0), CFG, applied=applied)


# -- compaction -------------------------------------------------------------------------


def test_7_a_snapshot_taken_forgets_entries_but_keeps_a_trailing_margin():
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    propose(cluster, leader, 9)  # indexes 2..10
    meta = SnapshotMeta(8, 1, (1, 2, 3), ())
    leader.step(SnapshotTaken(meta, 5))
    log = leader.log
    assert (log.first_index, log.last_index, log.term_at(5), log.term_at(4)) == (6, 10, 1, None)
    assert [e.index for e in log.slice(1, 11)] == [6, 7, 8, 9, 10]
    assert leader.snapshot == meta
    assert leader.config_at(8) == Membership((1, 2, 3), (), 8)
    with pytest.raises(ValueError):
        leader.config_at(7)  # before the latest snapshot: no longer known
    rd = drain(leader)
    assert rd.compaction == SnapshotTaken(meta, 5)  # storage compacts the same way
    assert drain(leader).compaction is None if leader.has_ready() else True


@pytest.mark.parametrize(
    "upto, meta",
    [
        (5, SnapshotMeta(11, 1, (1, 2, 3))),  # past the applied index
        (9, SnapshotMeta(8, 1, (1, 2, 3))),  # discarding past the snapshot
        (5, SnapshotMeta(8, 2, (1, 2, 3))),  # not the log's term
        (5, SnapshotMeta(8, 1, (1, 2))),  # not the configuration there
    ],
)
def test_7_an_inconsistent_snapshot_taken_is_ignored(upto, meta):
    """The core keeps its log and snapshot; the node sees ``snapshot`` unchanged."""
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    propose(cluster, leader, 9)
    leader.step(SnapshotTaken(meta, upto))
    assert leader.snapshot == SnapshotMeta() and leader.log.first_index == 1
    assert not leader.has_ready()
    good = SnapshotMeta(9, 1, (1, 2, 3))
    leader.step(SnapshotTaken(good, 8))
    assert leader.snapshot == good
    leader.step(SnapshotTaken(SnapshotMeta(8, 1, (1, 2, 3)), 5))  # older than the one it has
    assert leader.snapshot == good and drain(leader).compaction == SnapshotTaken(good, 8)


def test_7_follower_within_the_margin_catches_up_from_the_log():
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    propose(cluster, leader, 2)  # 3 has index 3
    cluster.isolate(3)
    propose(cluster, leader, 4)  # up to 7
    cluster.compact(1, margin=4)  # keeps 4..7: 3 needs entries from 4
    cluster.history = []
    cluster.heal()
    run(cluster, 2 * CFG.heartbeat_ticks, 1)
    assert not [m for m in cluster.history if type(m) is InstallSnapshot]
    assert cluster.storage[3].applied == cluster.storage[1].applied


# -- the leader's side ------------------------------------------------------------------


def test_7_leader_asks_once_for_a_snapshot_and_pauses_the_follower():
    cluster, leader = lagging_cluster()
    requests = ask_for_snapshot(cluster, leader)
    assert requests == [
        InstallSnapshot(1, 1, 3, last_index=7, last_term=1, offset=0, data=b"", done=False,
                        voters=(1, 2, 3), learners=())
    ]
    pr = leader.progress[3]
    assert (pr.state, pr.pending_snapshot) == (ProgressState.SNAPSHOT, 7)
    cluster.drop_if = lambda m: type(m) is InstallSnapshot and not requests.append(m)
    cluster.history = []
    propose(cluster, leader, 1)
    run(cluster, 3 * CFG.heartbeat_ticks, 1)
    assert len(requests) == 1
    heartbeats = [m for m in cluster.history if type(m) is AppendEntries and m.dst == 3]
    assert heartbeats and all(m.entries == () for m in heartbeats)  # paused, still alive
    assert cluster.core(3).leader_id == 1 and cluster.core(3).role is Role.FOLLOWER


def test_7_snapshot_brings_a_lagging_follower_back_and_the_log_continues():
    cluster, leader = lagging_cluster()
    cluster.heal()
    run(cluster, CFG.heartbeat_ticks, 1)
    assert cluster.snapshots_installed == 1
    follower = cluster.core(3)
    assert (follower.log.first_index, follower.commit_index, follower.applied_index) == (8, 7, 7)
    assert follower.snapshot == leader.snapshot
    assert leader.progress[3].state is ProgressState.REPLICATE
    propose(cluster, leader, 1, b"after")
    assert cluster.storage[3].applied == cluster.storage[1].applied
    assert cluster.storage[3].entries[-1].data == b"after0"


def test_7_failed_transfer_is_retried_after_a_heartbeat():
    cluster, leader = lagging_cluster()
    ask_for_snapshot(cluster, leader)  # and the transfer is lost
    leader.step(SnapshotStatus(3, success=False))
    assert leader.progress[3].state is ProgressState.PROBE
    assert not sent(drain(leader), InstallSnapshot)  # not in a tight loop
    run(cluster, CFG.heartbeat_ticks, 1)
    assert cluster.snapshots_installed == 1
    assert leader.progress[3].state is ProgressState.REPLICATE


def test_7_unreported_transfer_times_out():
    config = CoreConfig(election_ticks=T, heartbeat_ticks=2, snapshot_timeout_ticks=7)
    cluster = Cluster((1, 2, 3), config)
    leader = cluster.elect(1)
    cluster.isolate(3)
    propose(cluster, leader, 3)
    cluster.compact(1)
    requests = ask_for_snapshot(cluster, leader)
    cluster.drop_if = lambda m: type(m) is InstallSnapshot and not requests.append(m)
    run(cluster, 6, 1)
    assert len(requests) == 1
    run(cluster, 3, 1)
    assert len(requests) == 2


def test_7_report_of_success_probes_right_after_the_snapshot():
    cluster, leader = lagging_cluster()
    ask_for_snapshot(cluster, leader)
    leader.step(SnapshotStatus(3, success=True))
    probe = sent(drain(leader), AppendEntries)
    assert [(m.dst, m.prev_log_index) for m in probe] == [(3, 7)]
    leader.step(SnapshotStatus(3, success=True))  # a second report changes nothing
    assert leader.progress[3].state is ProgressState.PROBE


def test_7_a_snapshot_status_on_a_follower_is_ignored():
    core = follower_core([1, 1], commit=2, term=1)
    drain(core)
    core.step(SnapshotStatus(3, success=True))
    assert not core.has_ready()


def test_7_the_snapshot_asked_for_is_the_latest_the_leader_has():
    cluster, leader = lagging_cluster(margin=2)
    propose(cluster, leader, 2)
    cluster.compact(1, margin=2)
    requests = ask_for_snapshot(cluster, leader)
    assert [m.last_index for m in requests] == [leader.snapshot.index] == [9]


# -- the follower's side ----------------------------------------------------------------


def arrive(core, meta, term, leader=2):
    """The node's transport steps a whole snapshot from ``leader`` into ``core``."""
    core.step(InstallSnapshot(term, leader, core.id, meta.index, meta.term, 0, b"", True, meta.voters, meta.learners))


def test_7_a_snapshot_not_past_the_commit_index_is_answered_not_installed():
    core = follower_core([1, 1, 1, 1], commit=4, term=1)
    core.step(AppendEntries(1, 2, 1, 4, 1, (), 4))
    drain(core)
    arrive(core, SnapshotMeta(3, 1, (1, 2, 3)), term=1)
    rd = drain(core)
    assert rd.snapshot is None
    assert sent(rd, AppendResponse) == [AppendResponse(1, 1, 2, True, match_index=4)]


def test_7_a_snapshot_whose_last_entry_the_log_holds_is_answered_not_installed():
    """§7: "If existing log entry has same index and term as snapshot's last included
    entry, retain log entries following it": nothing to install, commit moves up."""
    core = follower_core([1, 1, 2, 2, 2], commit=1, term=2)
    core.step(AppendEntries(2, 2, 1, 5, 2, (), 1))
    drain(core)
    arrive(core, SnapshotMeta(4, 2, (1, 2, 3)), term=2)
    rd = drain(core)
    assert rd.snapshot is None
    assert sent(rd, AppendResponse) == [AppendResponse(2, 1, 2, True, match_index=4)]
    assert [e.index for e in rd.committed_entries] == [2, 3, 4]
    assert core.last_index == 5


def test_7_a_snapshot_with_another_term_at_its_index_replaces_the_log():
    """The log reaching the snapshot's index is not enough: its entry there must be of
    the snapshot's term (§5.3 log matching), else the log is discarded."""
    core = follower_core([1, 1, 1, 1], commit=2, term=2)
    arrive(core, SnapshotMeta(4, 2, (1, 2, 3)), term=2)
    rd = drain(core)
    assert rd.snapshot == SnapshotMeta(4, 2, (1, 2, 3))
    assert (core.log.first_index, core.last_index, core.applied_index) == (5, 4, 4)


def test_7_a_needed_snapshot_replaces_the_log_and_is_answered_after_the_install():
    core = follower_core([1, 1, 3], commit=1, term=4)  # index 3 conflicts with the snapshot
    core.step(AppendEntries(4, 2, 1, 9, 4, (), 9))  # the leader probes; the log is too short
    drain(core)
    meta = SnapshotMeta(8, 2, (1, 2, 3, 4), (5,))
    arrive(core, meta, term=4)
    assert (core.log.first_index, core.last_index, core.commit_index) == (9, 8, 8)
    assert core.membership == Membership((1, 2, 3, 4), (5,), 8)
    rd = core.ready()
    assert rd.snapshot == meta and rd.must_sync is False and rd.early_messages == ()
    assert rd.hard_state is None  # the install itself raises the stored commit to 8
    assert rd.entries == () and rd.committed_entries == ()
    assert rd.membership == Membership((1, 2, 3, 4), (5,), 8)
    assert sent(rd, AppendResponse) == [AppendResponse(4, 1, 2, True, match_index=8)]  # after step 1
    assert core.applied_index == 1  # not until the install is done
    core.advance(rd)
    assert core.applied_index == 8
    core.step(AppendEntries(4, 2, 1, 8, 2, tuple(entries_with_terms([4], 9)), 9))
    rd = drain(core)
    assert [e.index for e in rd.committed_entries] == [9]


def test_7_a_snapshot_from_a_newer_term_makes_a_follower_of_that_term():
    core = follower_core([1], commit=1, term=1)
    arrive(core, SnapshotMeta(6, 3, (1, 2, 3)), term=3)
    assert (core.term, core.vote, core.leader_id) == (3, 0, 2)
    assert drain(core).snapshot == SnapshotMeta(6, 3, (1, 2, 3))


def test_7_one_install_at_a_time():
    core = follower_core([1, 1, 1], commit=3, term=1, applied=2)
    arrive(core, SnapshotMeta(4, 1, (1, 2, 3)), term=1)
    rd = core.ready()
    assert rd.snapshot == SnapshotMeta(4, 1, (1, 2, 3))
    arrive(core, SnapshotMeta(9, 1, (1, 2, 3)), term=1)  # while the node installs: dropped
    core.advance(rd)
    assert (core.last_index, core.applied_index) == (4, 4)
    assert drain(core).snapshot is None if core.has_ready() else True


def test_7_a_snapshot_arriving_during_a_ready_is_installed_by_the_next_one():
    """Commit may move and entries be persisted while a snapshot arrives: the Ready
    under way finishes (applying only what it holds), the next installs."""
    core = follower_core([1], term=1)
    core.step(AppendEntries(1, 2, 1, 1, 1, tuple(entries_with_terms([1], 2)), 2))
    rd = core.ready()
    assert [e.index for e in rd.committed_entries] == [1, 2]
    meta = SnapshotMeta(5, 1, (1, 2, 3))
    arrive(core, meta, term=1)
    core.advance(rd)
    assert core.applied_index == 2
    rd = core.ready()
    assert rd.snapshot == meta and rd.committed_entries == ()
    core.advance(rd)
    assert (core.applied_index, core.commit_index, core.log.first_index) == (5, 5, 6)


def test_7_install_takes_ticks_and_messages_in_between():
    """While the node installs (on a worker thread) the core runs on: the log already
    starts after the snapshot, so appends after it are taken, and answered only
    after their own write, which comes after the install."""
    core = follower_core([1, 1], commit=1, term=1)
    meta = SnapshotMeta(6, 1, (1, 2, 3))
    arrive(core, meta, term=1)
    installing = core.ready()
    assert installing.snapshot == meta
    core.tick()
    core.step(AppendEntries(1, 2, 1, 6, 1, tuple(entries_with_terms([1], 7)), 7))
    assert not core.has_ready()  # nothing until the install is done
    core.advance(installing)
    rd = drain(core)
    assert [e.index for e in rd.entries] == [7] and [e.index for e in rd.committed_entries] == [7]
    assert rd.messages == (AppendResponse(1, 1, 2, True, match_index=7),)


def test_7_appends_below_the_snapshot_are_answered_with_the_commit_index():
    """A delayed AppendEntries from before the snapshot cannot be checked; what is below
    the snapshot is committed, so the follower reports its commit index (etcd does too)."""
    core = follower_core([], commit=8, term=2, snapshot=SnapshotMeta(8, 2, (1, 2, 3)))
    core.step(AppendEntries(2, 2, 1, 3, 1, tuple(entries_with_terms([1, 2], 4)), 8))
    core.step(AppendEntries(2, 2, 1, 6, 2, tuple(entries_with_terms([2, 2, 2, 2], 7)), 10))
    rd = drain(core)
    assert sent(rd, AppendResponse) == [
        AppendResponse(2, 1, 2, True, match_index=8),
        AppendResponse(2, 1, 2, True, match_index=10),
    ]
    assert [e.index for e in rd.entries] == [9, 10]


def test_7_install_snapshot_chunks_count_as_contact_from_the_leader():
    core = follower_core([1], commit=1, term=1)
    for _ in range(T - 1):
        core.tick()
    chunk = InstallSnapshot(2, 3, 1, 9, 2, 4096, b"...", False)
    core.step(chunk)
    assert (core.term, core.leader_id, core.role) == (2, 3, Role.FOLLOWER)
    for _ in range(T - 1):
        core.tick()
    assert core.role is Role.FOLLOWER  # the timer was reset
    core.step(SnapshotResponse(2, 3, 1, 9, 4096))  # the transport's business: ignored
    core.step(InstallSnapshot(1, 2, 1, 9, 1, 0, b"", False))  # stale: refused
    assert sent(drain(core), AppendResponse) == [AppendResponse(2, 1, 2, success=False)]


# -- restart ----------------------------------------------------------------------------


@pytest.mark.parametrize("margin", [0, 2, 5])
def test_7_restart_from_snapshot_and_log_recovers_exactly(margin):
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    propose(cluster, leader, 8)
    cluster.compact(2, margin)
    propose(cluster, leader, 2, b"later")
    before = cluster.core(2)
    cluster.crash(2)
    cluster.restart(2)
    core = cluster.core(2)
    assert (core.last_index, core.commit_index, core.applied_index, core.term) == (
        before.last_index, before.commit_index, before.applied_index, before.term)
    assert core.snapshot == before.snapshot and core.membership.voters == (1, 2, 3)
    assert core.log.slice(core.log.first_index, 99) == before.log.slice(core.log.first_index, 99)
    assert not core.has_ready()  # nothing to re-apply
    propose(cluster, leader, 1, b"again")
    assert cluster.storage[2].applied == cluster.storage[1].applied


def test_7_a_crash_during_an_install_leaves_the_old_state_and_the_leader_sends_again():
    cluster, leader = lagging_cluster()
    cluster.heal()
    for _ in range(10 * CFG.heartbeat_ticks):
        if 3 in cluster.pending and cluster.pending[3].snapshot is not None:
            break
        run_taking(cluster, 1)
    assert cluster.pending[3].snapshot == leader.snapshot  # node 3 is installing it
    before = list(cluster.storage[3].applied)
    cluster.crash(3)
    assert cluster.storage[3].applied == before and cluster.storage[3].snapshot == SnapshotMeta()
    cluster.restart(3)
    run(cluster, 4 * CFG.heartbeat_ticks, 1)
    assert cluster.snapshots_installed == 1
    assert cluster.storage[3].applied == cluster.storage[1].applied
    assert cluster.storage[2].applied == cluster.storage[1].applied


def test_7_restart_with_entries_overlapping_the_snapshot():
    snapshot = SnapshotMeta(5, 2, (1, 2, 3))
    entries = tuple(entries_with_terms([1, 2, 2, 3], first_index=3))  # 3..6, snapshot at 5
    persisted = PersistedState(HardState(3, 0, 5), entries, snapshot)
    core = RaftCore(1, (9,), persisted, random.Random(0), CFG, applied=5)
    log = core.log
    assert (log.first_index, log.last_index, log.term_at(3), log.term_at(5)) == (4, 6, 1, 2)
    assert core.voters == (1, 2, 3)  # the snapshot's, not the start-up file's
    bad = PersistedState(HardState(3, 0, 5), entries, SnapshotMeta(5, 1, (1, 2, 3)))
    with pytest.raises(ValueError):
        RaftCore(1, (1,), bad, random.Random(0), CFG, applied=5)


def test_7_restart_with_only_a_snapshot():
    persisted = PersistedState(HardState(3, 0, 5), (), SnapshotMeta(5, 2, (1, 2, 3)))
    core = RaftCore(1, (), persisted, random.Random(0), CFG, applied=5)
    assert (core.last_index, core.log.last_term, core.voters) == (5, 2, (1, 2, 3))
    assert core.log.slice(1, 6) == ()
    assert core.log.term_at(5) == 2 and Entry(6, 3) not in core.log.slice(1, 9)


def test_7_a_snapshot_received_supersedes_one_taken_but_not_yet_recorded():
    """Storage must not record the older snapshot after installing the newer one
    (found by the simulation, seed 117: a restart then found a log that did not
    reach its commit index)."""
    core = follower_core([1, 1, 1, 1], commit=4, term=1)
    drain(core)
    core.step(SnapshotTaken(SnapshotMeta(4, 1, (1, 2, 3)), 4))
    arrive(core, SnapshotMeta(9, 2, (1, 2, 3)), term=2)
    rd = drain(core)
    assert rd.snapshot == SnapshotMeta(9, 2, (1, 2, 3)) and rd.compaction is None
    assert core.snapshot == SnapshotMeta(9, 2, (1, 2, 3))
