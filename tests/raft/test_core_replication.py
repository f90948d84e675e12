"""Log replication (§5.3), the commit rule (§5.4.2, Figure 8), flow control
(batching, pipelining, probing) and the Ready/advance contract with storage."""

import random

import pytest

from parkd.raft.core import CoreConfig, RaftCore, Role
from parkd.raft.log import LogConflictBelowCommit
from parkd.raft.messages import AppendEntries, AppendResponse, ReadIndexResponse, VoteResponse
from parkd.raft.testing import Cluster, SafetyViolation, drain, entries_with_terms
from parkd.raft.types import Entry, EntryKind, HardState, PersistedState

CFG = CoreConfig(election_ticks=10, heartbeat_ticks=2)


def make_core(terms=(), term=None, config=CFG, voters=(1, 2, 3)) -> RaftCore:
    """Node 1 restarted from storage holding entries of ``terms``."""
    hard = HardState(max(terms, default=0) if term is None else term)
    persisted = PersistedState(hard, tuple(entries_with_terms(terms)))
    return RaftCore(1, voters, persisted, random.Random(0), config)


def make_leader(terms=(), term=0, config=CFG) -> RaftCore:
    """Node 1 of (1, 2, 3) elected in ``term + 1`` by node 2's votes; its first Ready drained."""
    core = make_core(terms, term, config)
    while core.role is Role.FOLLOWER:
        core.tick()
    core.step(VoteResponse(term + 1, 2, 1, granted=True, pre_vote=True))
    core.step(VoteResponse(term + 1, 2, 1, granted=True))
    assert core.role is Role.LEADER
    drain(core)
    return core


def appends(rd, dst=None):
    return [m for m in (*rd.early_messages, *rd.messages) if type(m) is AppendEntries and dst in (None, m.dst)]


def append(prev_index, prev_term, terms, commit=0, term=3):
    """AppendEntries from leader 2 to node 1 in ``term``, entries following ``prev_index``."""
    entries = tuple(entries_with_terms(terms, first_index=prev_index + 1))
    return AppendEntries(term, 2, 1, prev_index, prev_term, entries, commit)


def terms_of(core):
    return [e.term for e in core.log.slice(1, core.last_index + 1)]


# -- §5.3 follower side ---------------------------------------------------------


def test_5_3_entries_are_replicated_committed_and_applied_everywhere():
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    leader.propose_batch([b"a", b"b"])
    leader.propose(b"c")
    cluster.stabilize()
    assert cluster.core(2).commit_index == 1  # the new commit index rides on the next message...
    cluster.heartbeat()  # ...here a heartbeat
    for i in (1, 2, 3):
        assert [e.data for e in cluster.storage[i].applied] == [b"", b"a", b"b", b"c"]
        assert cluster.core(i).commit_index == 4


def test_5_3_follower_persists_entries_in_the_ready_that_acknowledges_them():
    core = make_core(term=3)
    core.step(append(0, 0, [3, 3], commit=1))
    rd = drain(core)
    assert [e.index for e in rd.entries] == [1, 2]
    assert rd.messages == (AppendResponse(3, 1, 2, True, match_index=2),)
    assert rd.hard_state == HardState(3, 0, 1)
    assert [e.index for e in rd.committed_entries] == [1]


def test_5_3_mismatch_is_refused_with_the_conflicting_term_and_its_first_index():
    core = make_core(terms=[1, 1, 2, 2, 2], term=3)
    core.step(AppendEntries(3, 2, 1, 4, 3, (), 0, read_ctx=7))
    core.step(AppendEntries(3, 2, 1, 9, 3, (), 0))
    assert drain(core).messages == (
        AppendResponse(3, 1, 2, False, conflict_index=3, conflict_term=2, read_ctx=7),
        AppendResponse(3, 1, 2, False, conflict_index=6, conflict_term=0),
    )
    assert core.last_index == 5


def test_5_3_conflicting_suffix_is_truncated_and_storage_told_where():
    cluster = Cluster((1, 2, 3), CFG)
    core = cluster.load(1, [1, 1, 2, 2], term=3)
    core.step(append(2, 1, [3]))
    cluster.process(1)
    assert terms_of(core) == [1, 1, 3]
    assert [(e.index, e.term) for e in cluster.storage[1].entries] == [(1, 1), (2, 1), (3, 3)]


@pytest.mark.parametrize("order", [(0, 1, 0), (1, 0, 1, 0), (0, 1, 2, 1, 0)])
def test_5_3_duplicated_or_reordered_appends_never_truncate(order):
    """An old AppendEntries whose entries already match must not cut later entries."""
    messages = [append(0, 0, [3, 3]), append(2, 3, [3, 3]), append(1, 3, [3])]
    core = make_core(term=3)
    for k in order:
        core.step(messages[k])
    core.step(append(0, 0, [3]))
    assert terms_of(core) == [3, 3, 3, 3]
    rd = drain(core)
    assert [e.index for e in rd.entries] == [1, 2, 3, 4]
    assert rd.messages[-1] == AppendResponse(3, 1, 2, True, match_index=1)


def test_5_3_follower_commit_stops_at_the_last_entry_it_verified():
    """commit = min(leaderCommit, index of last new entry), never an unverified entry."""
    core = make_core(terms=[1, 1, 1], term=2)
    core.step(AppendEntries(2, 2, 1, 1, 1, (), 3))
    assert core.commit_index == 1
    core.step(AppendEntries(2, 2, 1, 3, 1, (), 3))
    assert core.commit_index == 3


def test_5_3_conflict_below_the_commit_index_is_a_fatal_error():
    """§5.3/§5.4: a committed entry is never overwritten; a leader asking for it means
    safety is already broken, and the log says so with its own exception."""
    core = make_core(terms=[1, 1], term=2)
    core.step(AppendEntries(2, 2, 1, 2, 1, (), 2))
    with pytest.raises(LogConflictBelowCommit, match=r"^conflict at 2 <= commit 2$"):
        core.step(append(1, 1, [2], term=2))
    assert terms_of(core) == [1, 1] and core.commit_index == 2  # the committed entry stays


# -- §5.3 leader side: back-off, probing, pipelining, batching -----------------------


def test_5_3_fast_back_off_skips_whole_terms():
    cluster = Cluster((1, 2, 3), CFG)
    cluster.load(1, [1] * 5 + [2] * 10 + [4] * 20)
    cluster.load(2, [1] * 5 + [2] * 20 + [3] * 30, term=4)
    cluster.load(3, [1] * 5 + [2] * 10 + [4] * 20)
    cluster.history = []
    leader = cluster.elect(1)
    refusals = [
        m for m in cluster.history if type(m) is AppendResponse and m.src == 2 and not m.success
    ]
    assert [(m.conflict_term, m.conflict_index) for m in refusals] == [(3, 26), (2, 6)]
    assert terms_of(cluster.core(2)) == terms_of(leader)


def test_5_3_probe_sends_one_append_per_reply_or_heartbeat():
    leader = make_leader(terms=[1, 1], term=1)
    leader.propose_batch([b"x"] * 5)
    assert appends(drain(leader)) == []  # the no-op probes are still unanswered
    leader.tick()
    leader.tick()  # heartbeat: probe again
    probes = appends(drain(leader), dst=2)
    assert len(probes) == 1 and probes[0].prev_log_index == 2
    leader.step(AppendResponse(2, 2, 1, True, match_index=8))
    rd = drain(leader)
    assert appends(rd, dst=2) == []  # caught up; the new commit index waits for the next message
    assert leader.match_indexes[2] == 8 and leader.commit_index == 8


def test_5_3_replicate_state_pipelines_up_to_the_inflight_limit():
    config = CoreConfig(election_ticks=10, heartbeat_ticks=2, max_entries_per_msg=1,
                        max_inflight_msgs=3)
    leader = make_leader(config=config)
    leader.step(AppendResponse(1, 2, 1, True, match_index=1))  # 2 now replicates
    leader.propose_batch([b"x"] * 10)
    sent = appends(drain(leader), dst=2)
    assert [m.entries[0].index for m in sent] == [2, 3, 4]  # without waiting, but only 3
    assert not leader.has_ready()
    leader.step(AppendResponse(1, 2, 1, True, match_index=3))  # two acknowledged
    assert [m.entries[0].index for m in appends(drain(leader), dst=2)] == [5, 6]


def test_5_3_lost_appends_are_retransmitted_after_the_next_heartbeat():
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    cluster.drop_if = lambda m: m.dst == 2
    leader.propose(b"lost")
    cluster.stabilize()
    cluster.drop_if = None
    for _ in range(2 * CFG.heartbeat_ticks):
        cluster.tick(1)
        cluster.stabilize()
    assert terms_of(cluster.core(2)) == [1, 1]
    assert cluster.storage[2].applied[-1].data == b"lost"


@pytest.mark.parametrize("max_entries, max_bytes", [(3, 10), (1, 1000), (100, 4)])
def test_batches_respect_the_entry_and_byte_limits(max_entries, max_bytes):
    config = CoreConfig(election_ticks=10, heartbeat_ticks=2, max_entries_per_msg=max_entries,
                        max_bytes_per_msg=max_bytes)
    cluster = Cluster((1, 2, 3), config)
    leader = cluster.elect(1)
    cluster.history = []
    leader.propose_batch([b"abcd"] * 12 + [b"x" * 50] + [b"ab"] * 3)
    cluster.stabilize()
    batches = [m.entries for m in cluster.history if type(m) is AppendEntries and m.entries]
    assert batches
    for entries in batches:
        assert len(entries) <= max_entries
        assert len(entries) == 1 or sum(len(e.data) for e in entries) <= max_bytes
    assert len(batches[0]) == min(max_entries, max(1, max_bytes // 4))  # the limits, not less
    cluster.heartbeat()
    assert cluster.storage[2].applied == cluster.storage[1].applied


def test_batching_one_append_carries_a_whole_proposal_batch():
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    leader.propose_batch([b"%d" % i for i in range(50)])
    assert [len(m.entries) for m in appends(leader.ready())] == [50, 50]


# -- §5.4.2 commit rule, Figure 8 ------------------------------------------------------


def test_5_4_2_entries_of_an_older_term_are_not_committed_by_counting_replicas():
    leader = make_leader(terms=[1, 2], term=3)  # leads term 4; no-op at index 3
    leader.step(AppendResponse(4, 2, 1, True, match_index=2))
    leader.step(AppendResponse(4, 3, 1, True, match_index=2))
    assert leader.commit_index == 0  # index 2 is on all three, but of term 2
    leader.step(AppendResponse(4, 2, 1, True, match_index=3))
    assert leader.commit_index == 3  # committing the no-op commits 1 and 2 with it


class CountsOldTermReplicas(RaftCore):
    """A planted bug: commits whatever a majority holds, whatever its term."""

    def _maybe_commit(self):
        matches = sorted([pr.match for pr in self._progress.values()] + [self._log.stable])
        index = matches[-self._quorum]
        if index > self._log.committed:
            self._log.committed = index
            self._dirty.update(self._progress)


@pytest.mark.parametrize("core_cls, unsafe", [(RaftCore, False), (CountsOldTermReplicas, True)])
def test_5_4_2_figure_8(core_cls, unsafe):
    """Figure 8: S1, leader of term 4, puts index 2 (of term 2) on a majority but not
    its own no-op.  It must not commit index 2: S5, whose index 2 is of term 3, can
    still be elected and overwrite it.  (Plain Raft: no pre-vote, no check-quorum.)"""
    config = CoreConfig(election_ticks=10, heartbeat_ticks=2, max_entries_per_msg=1,
                        pre_vote=False, check_quorum=False)
    cluster = Cluster((1, 2, 3, 4, 5), config, core_cls=core_cls)
    for i, terms in {1: [1, 2], 2: [1], 3: [1], 4: [1], 5: [1, 3]}.items():
        cluster.load(i, terms, term=3)
    cluster.partition([4, 5])

    def noop_would_arrive(m):  # S1's no-op reaches nobody; index 2 still does
        carries_noop = type(m) is AppendEntries and any(e.term == 4 for e in m.entries)
        return carries_noop and cluster.core(m.dst).last_index >= m.prev_log_index

    cluster.drop_if = noop_would_arrive
    cluster.elect(1)
    assert [terms_of(cluster.core(i)) for i in (1, 2, 3)] == [[1, 2, 4], [1, 2], [1, 2]]
    cluster.crash(1)
    cluster.heal()
    cluster.drop_if = None
    if unsafe:
        assert cluster.storage[1].applied[-1] == Entry(2, 2, EntryKind.NORMAL, b"e2")
        with pytest.raises(SafetyViolation, match="leader completeness"):
            cluster.elect(5)
        return
    assert cluster.storage[1].applied == []
    cluster.elect(5)
    assert terms_of(cluster.core(2)) == [1, 3, 5]


def test_10_2_1_leader_counts_itself_only_for_persisted_entries():
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    leader.propose(b"x")
    cluster.take_ready(1)  # handed to storage, not yet durable
    leader.step(AppendResponse(1, 2, 1, True, match_index=2))
    assert leader.commit_index == 1
    cluster.persist(1)  # advance(): now the leader's own copy counts
    assert leader.commit_index == 2


def test_10_2_1_a_leaders_appends_may_go_out_before_its_own_write():
    leader = make_leader()
    for peer in (2, 3):  # the no-op is replicated: both followers are pipelined
        leader.step(AppendResponse(1, peer, 1, True, match_index=1))
    drain(leader)
    leader.propose(b"x")
    rd = leader.ready()
    assert [e.data for e in rd.entries] == [b"x"]
    early = rd.early_messages
    assert {m.dst for m in early} == {2, 3} and all(type(m) is AppendEntries for m in early)
    assert all(m.entries[-1].data == b"x" for m in early)
    assert AppendEntries not in {type(m) for m in rd.messages}
    assert rd.must_sync  # the entries are fsynced, whatever left early


def test_figure_2_a_commit_index_that_moves_alone_is_not_written():
    """Figure 2: the commit index is volatile; term, vote and entries are not.  A
    Ready that only commits has nothing to persist (no transaction of its own)."""
    leader = make_leader()
    leader.propose(b"x")
    assert drain(leader).must_sync
    for peer in (2, 3):
        leader.step(AppendResponse(1, peer, 1, True, match_index=2))
    rd = drain(leader)
    assert rd.hard_state is None and not rd.entries and not rd.must_sync
    assert [e.index for e in rd.committed_entries] == [1, 2]  # the empty entry of §8, then x
    leader.propose(b"y")
    assert drain(leader).hard_state.commit == 2  # written with the next entries, at no cost


def test_figure_2_a_restart_commits_at_least_what_was_applied():
    """The stored commit index may lag what the state machine applied (the move
    was never written); applied entries were committed, so the core starts there."""
    persisted = PersistedState(HardState(2, 0, 1), tuple(entries_with_terms([1, 1, 2, 2])))
    core = RaftCore(1, (1, 2, 3), persisted, random.Random(0), CFG, applied=3)
    assert core.commit_index == 3 and core.applied_index == 3
    assert not core.has_ready()  # nothing to apply again, nothing to write
    with pytest.raises(ValueError, match="commit 5 outside the log"):
        RaftCore(1, (1, 2, 3), persisted, random.Random(0), CFG, applied=5)


def test_10_2_1_nothing_goes_early_before_the_term_and_vote_are_durable():
    """The Ready in which a candidate becomes leader carries its new term and vote:
    an append of that term sent before they are written could outlive a crash that
    lets the node vote again in the same term."""
    core = make_core()
    while core.role is Role.FOLLOWER:
        core.tick()
    core.step(VoteResponse(1, 2, 1, granted=True, pre_vote=True))
    core.step(VoteResponse(1, 2, 1, granted=True))
    rd = core.ready()
    assert core.role is Role.LEADER and rd.hard_state.term == 1
    assert appends(rd) and rd.early_messages == () and rd.must_sync


def test_10_2_1_a_follower_answers_only_after_its_write():
    core = make_core(term=3)
    core.step(append(0, 0, [3]))
    rd = core.ready()
    assert rd.entries and rd.messages and rd.early_messages == () and rd.must_sync


# -- Ready / advance and restarts -------------------------------------------------------


def test_ready_must_be_advanced_before_the_next():
    core = make_core(term=1)
    core.step(append(0, 0, [1], term=1))
    rd = core.ready()
    core.step(append(1, 1, [1], term=1))
    assert not core.has_ready()
    with pytest.raises(RuntimeError):
        core.ready()
    with pytest.raises(RuntimeError):
        core.advance(drain(make_core()))
    core.advance(rd)
    assert [e.index for e in drain(core).entries] == [2]


def test_committed_entries_are_handed_out_at_most_max_committed_per_ready_at_a_time():
    """Like etcd's MaxCommittedSizePerReady: applying a long committed run is split,
    so the node works between bounded batches; the rest come in the next Readies."""
    config = CoreConfig(election_ticks=10, heartbeat_ticks=2, max_committed_per_ready=3)
    core = make_core(term=1, config=config)
    core.step(append(0, 0, [1] * 7, commit=7, term=1))
    batches = []
    while core.has_ready():
        rd = core.ready()
        batches.append([e.index for e in rd.committed_entries])
        core.advance(rd)
    assert batches == [[1, 2, 3], [4, 5, 6], [7]]
    assert core.applied_index == core.commit_index == 7


def test_a_capped_ready_still_persists_every_new_entry_and_answers_the_leader():
    config = CoreConfig(election_ticks=10, heartbeat_ticks=2, max_committed_per_ready=2)
    core = make_core(term=1, config=config)
    core.step(append(0, 0, [1] * 5, commit=5, term=1))
    rd = core.ready()
    assert [e.index for e in rd.entries] == [1, 2, 3, 4, 5]
    assert [e.index for e in rd.committed_entries] == [1, 2]
    assert [m.match_index for m in rd.messages if type(m) is AppendResponse] == [5]


# -- §5.3 / Figure 2: a follower may apply later (hold_applies) ------------------------


def test_5_3_a_follower_holding_applies_persists_and_answers_but_applies_later_in_one_batch():
    """§5.3 and Figure 2 set no time for applying a committed entry (lastApplied may
    trail commitIndex): a follower that holds its applies still writes and acknowledges
    every append at once, and applies what is committed, in order, when it stops holding."""
    core = make_core(term=1)
    core.step(append(0, 0, [1, 1], commit=0, term=1))
    core.step(append(2, 1, [1], commit=2, term=1))
    rd = core.ready(hold_applies=True)
    assert [e.index for e in rd.entries] == [1, 2, 3]
    assert [m.match_index for m in rd.messages if type(m) is AppendResponse] == [2, 3]
    assert rd.committed_entries == ()
    core.advance(rd)
    core.step(append(3, 1, [1], commit=3, term=1))
    rd = core.ready(hold_applies=True)
    assert [e.index for e in rd.entries] == [4] and rd.committed_entries == ()
    core.advance(rd)
    assert (core.commit_index, core.applied_index) == (3, 0)
    assert not core.has_ready(hold_applies=True)  # held entries alone are no work
    assert core.has_ready()
    rd = core.ready()
    assert [e.index for e in rd.committed_entries] == [1, 2, 3]
    core.advance(rd)
    assert core.applied_index == 3 and not core.has_ready()


def test_a_leader_never_holds_its_applies():
    """A leader's clients wait for the result of each entry: it ignores hold_applies."""
    core = make_leader()
    core.propose(b"x")
    rd = core.ready(hold_applies=True)
    core.advance(rd)
    core.step(AppendResponse(1, 2, 1, True, 2))
    assert core.has_ready(hold_applies=True)
    rd = core.ready(hold_applies=True)
    assert [e.data for e in rd.committed_entries] == [b"", b"x"]  # its no-op, then x


def test_6_4_a_ready_with_read_states_applies_what_is_committed_despite_a_hold():
    """A read state is served once its index is applied (§6.4, step 4 of Ready): the
    Ready that carries one applies everything committed, hold or not."""
    core = make_core(term=1)
    core.step(append(0, 0, [1, 1], commit=2, term=1))
    core.advance(core.ready(hold_applies=True))
    assert (core.commit_index, core.applied_index) == (2, 0)
    core.read_index(7)
    core.advance(core.ready(hold_applies=True))  # the request goes to leader 2
    core.step(ReadIndexResponse(1, 2, 1, 7, 2))
    rd = core.ready(hold_applies=True)
    assert [(r.ctx, r.index) for r in rd.read_states] == [(7, 2)]
    assert [e.index for e in rd.committed_entries] == [1, 2]


def test_a_full_batch_is_applied_despite_a_hold():
    """A hold never lets more than max_committed_per_ready entries wait: a follower
    catching up applies at full speed."""
    config = CoreConfig(election_ticks=10, heartbeat_ticks=2, max_committed_per_ready=3)
    core = make_core(term=1, config=config)
    core.step(append(0, 0, [1, 1], commit=2, term=1))
    rd = core.ready(hold_applies=True)
    assert rd.committed_entries == ()
    core.advance(rd)
    core.step(append(2, 1, [1, 1, 1, 1, 1], commit=7, term=1))
    batches = []
    while core.has_ready(hold_applies=True):
        rd = core.ready(hold_applies=True)
        batches.append([e.index for e in rd.committed_entries])
        core.advance(rd)
    assert batches == [[1, 2, 3], [4, 5, 6]]  # 7 waits: fewer than a batch left
    assert (core.applied_index, core.commit_index) == (6, 7)


def test_restart_restores_log_term_vote_and_commit_without_reapplying():
    cluster = Cluster((1, 2, 3), CFG)
    cluster.elect(1).propose(b"x")
    cluster.heartbeat()  # 2 learns that x committed
    cluster.crash(2)
    cluster.restart(2)
    core = cluster.core(2)
    assert (core.term, core.commit_index, core.applied_index, core.last_index) == (1, 2, 2, 2)
    assert not core.has_ready()


def test_crash_loses_a_ready_that_was_not_persisted():
    cluster = Cluster((1, 2, 3), CFG)
    cluster.elect(1).propose(b"x")
    for i in (1, 2, 3):
        cluster.process(i)
    batch, cluster.network = cluster.network, []
    for m in batch:
        cluster.cores[m.dst].step(m)
    assert cluster.take_ready(2)
    cluster.crash(2)
    cluster.restart(2)
    assert cluster.core(2).last_index == 1
    cluster.stabilize()
    assert cluster.core(1).commit_index == 2  # committed with node 3's copy
