"""Elections: terms (§5.1), voting (§5.2, §5.4.1), pre-vote (dissertation §9.6),
check-quorum and leader leases (§6.2) and leadership transfer (§3.10)."""

import random

import pytest

from parkd.raft.confchange import ConfChange, ConfChangeOp
from parkd.raft.core import MAX_TERM, CoreConfig, NotLeader, RaftCore, Role, TransferResult
from parkd.raft.messages import AppendEntries, AppendResponse, PeerUnreachable, TimeoutNow, VoteRequest, VoteResponse
from parkd.raft.testing import Cluster, drain, entries_with_terms
from parkd.raft.types import EntryKind, HardState, PersistedState

T = 10
CFG = CoreConfig(election_ticks=T, heartbeat_ticks=2)
NO_PRE_VOTE = CoreConfig(election_ticks=T, heartbeat_ticks=2, pre_vote=False)


def make_core(terms=(), term=None, vote=0, config=CFG, seed=0) -> RaftCore:
    """Node 1 of (1, 2, 3) restarted from storage holding entries of ``terms``."""
    hard = HardState(max(terms, default=0) if term is None else term, vote)
    persisted = PersistedState(hard, tuple(entries_with_terms(terms)))
    return RaftCore(1, (1, 2, 3), persisted, random.Random(seed), config)


def sent(rd, kind):
    return [m for m in rd.messages if type(m) is kind]


def vote_request(term, src, last_index, last_term, **kw):
    return VoteRequest(term, src, 1, last_index, last_term, **kw)


# -- §5.2 election timeouts and campaigns --------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_5_2_election_timeout_is_randomised_in_T_to_2T(seed):
    core = make_core(config=NO_PRE_VOTE, seed=seed)
    ticks = 0
    while core.role is Role.FOLLOWER:
        core.tick()
        ticks += 1
    assert T <= ticks < 2 * T


def test_5_2_timeouts_differ_between_nodes():
    timeouts = set()
    for seed in range(20):
        core = make_core(config=NO_PRE_VOTE, seed=seed)
        ticks = 0
        while core.role is Role.FOLLOWER:
            core.tick()
            ticks += 1
        timeouts.add(ticks)
    assert len(timeouts) > 3


def test_5_2_candidate_votes_for_itself_in_a_new_term_and_asks_everyone():
    core = make_core(terms=[1, 1], config=NO_PRE_VOTE)
    for _ in range(2 * T):
        core.tick()
    assert core.role is Role.CANDIDATE
    rd = drain(core)
    assert rd.hard_state == HardState(term=2, vote=1, commit=0)
    assert sent(rd, VoteRequest) == [
        VoteRequest(2, 1, peer, last_log_index=2, last_log_term=1) for peer in (2, 3)
    ]


def test_5_2_majority_of_votes_makes_a_leader_that_appends_a_noop():
    """The no-op lets the new leader commit (and learn the commit point) at once (§5.4.2/§8);
    the followers learn it with the next heartbeat."""
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    assert leader.term == 1
    assert [c.leader_id for c in cluster.live()] == [1, 1, 1]
    noop = leader.log.slice(1, 2)[0]
    assert (noop.kind, noop.term) == (EntryKind.NOOP, 1)
    assert leader.commit_index == 1
    cluster.heartbeat()
    assert all(c.commit_index == 1 for c in cluster.live())


def test_5_2_candidate_loses_when_a_majority_refuses():
    core = make_core(config=NO_PRE_VOTE)
    while core.role is Role.FOLLOWER:
        core.tick()
    core.step(VoteResponse(1, 2, 1, granted=False))
    assert core.role is Role.CANDIDATE
    core.step(VoteResponse(1, 3, 1, granted=False))
    assert core.role is Role.FOLLOWER
    assert core.term == 1


def test_5_2_candidate_accepts_a_leader_of_its_own_term():
    core = make_core(config=NO_PRE_VOTE)
    while core.role is Role.FOLLOWER:
        core.tick()
    core.step(AppendEntries(1, 3, 1, 0, 0, (), 0))
    assert (core.role, core.leader_id, core.term) == (Role.FOLLOWER, 3, 1)


# -- §5.1 terms ------------------------------------------------------------------


def test_5_1_higher_term_turns_a_leader_into_a_follower():
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    leader.step(AppendResponse(7, 2, 1, success=False))
    assert (leader.role, leader.term, leader.vote, leader.leader_id) == (Role.FOLLOWER, 7, 0, None)


def test_5_1_append_with_higher_term_adopts_term_and_leader():
    core = make_core(terms=[1], term=3)
    core.step(AppendEntries(5, 2, 1, 1, 1, (), 0))
    assert (core.term, core.leader_id, core.role) == (5, 2, Role.FOLLOWER)


def test_5_1_stale_append_is_refused_with_the_current_term():
    core = make_core(terms=[1], term=5)
    stale = AppendEntries(3, 2, 1, 1, 1, tuple(entries_with_terms([3], first_index=2)), 2)
    core.step(stale)
    rd = drain(core)
    assert sent(rd, AppendResponse) == [AppendResponse(5, 1, 2, success=False)]
    assert core.last_index == 1 and core.leader_id is None


def test_5_1_stale_vote_request_is_refused_with_the_current_term():
    core = make_core(term=5)
    core.step(vote_request(4, 2, 10, 4))
    rd = drain(core)
    assert sent(rd, VoteResponse) == [VoteResponse(5, 1, 2, granted=False)]
    assert core.vote == 0


@pytest.mark.parametrize("term", [MAX_TERM + 1, 2**63, 2**64 - 1])
def test_5_1_a_term_the_node_cannot_store_or_count_up_from_is_dropped(term):
    """§5.1: a node adopts a higher term for good, persists it and campaigns in the
    next one.  A forged term beyond MAX_TERM is dropped unread: SQLite stores signed
    64-bit integers, and from 2**64 - 1 the next term cannot even be encoded."""
    core = make_core(terms=[1], config=NO_PRE_VOTE)
    drain(core)
    for message in (AppendEntries(term, 2, 1, 1, 1, (), 1), vote_request(term, 2, 1, 1), TimeoutNow(term, 2, 1),
                    AppendResponse(term, 2, 1, success=False)):  # fmt: skip
        core.step(message)
        assert core.term == 1 and not core.has_ready(), message
    core.step(AppendEntries(MAX_TERM, 2, 1, 1, 1, (), 1))  # the largest term a node takes
    assert (core.term, core.leader_id) == (MAX_TERM, 2)


# -- §5.2 one vote per term, durable before the answer ---------------------------


def test_5_2_vote_is_in_the_hard_state_of_the_ready_carrying_the_grant():
    core = make_core(term=1)
    core.step(vote_request(2, 2, 0, 0))
    rd = drain(core)
    assert rd.hard_state == HardState(term=2, vote=2, commit=0)
    assert sent(rd, VoteResponse) == [VoteResponse(2, 1, 2, granted=True)]


def test_5_2_at_most_one_vote_per_term():
    core = make_core(term=1)
    core.step(vote_request(2, 2, 0, 0))
    drain(core)
    core.step(vote_request(2, 3, 5, 1))  # a better log, but the vote is taken
    rd = drain(core)
    assert sent(rd, VoteResponse) == [VoteResponse(2, 1, 3, granted=False)]
    assert rd.hard_state is None
    core.step(vote_request(2, 2, 0, 0))  # the same candidate asking again (a retry)
    assert sent(drain(core), VoteResponse) == [VoteResponse(2, 1, 2, granted=True)]


def test_5_2_vote_survives_a_restart():
    cluster = Cluster((1, 2, 3), CFG)
    cluster.core(1).step(VoteRequest(1, 2, 1, 0, 0))
    cluster.process(1)
    cluster.crash(1)
    cluster.restart(1)
    cluster.network.clear()
    core = cluster.core(1)
    core.step(VoteRequest(1, 3, 1, 0, 0))
    assert sent(core.ready(), VoteResponse) == [VoteResponse(1, 1, 3, granted=False)]


def test_5_2_no_vote_for_another_candidate_once_a_leader_is_known():
    core = make_core(term=2)
    core.step(AppendEntries(2, 2, 1, 0, 0, (), 0))
    core.step(vote_request(2, 3, 0, 0))
    assert sent(drain(core), VoteResponse)[-1].granted is False


def test_5_2_a_vote_request_from_node_0_is_dropped_so_one_vote_per_term_holds():
    """§5.2: at most one vote per term.  Node ids start at 1 and 0 stands for "no
    vote" in the hard state: a vote granted to "node 0" was recorded as none, and
    the node then voted again in the same term (found by the core fuzzer)."""
    core = make_core(term=1)
    drain(core)
    core.step(vote_request(2, 0, 0, 0))
    assert core.term == 1 and not core.has_ready()
    core.step(vote_request(2, 3, 0, 0))
    core.step(vote_request(2, 2, 0, 0))
    assert [(m.dst, m.granted) for m in sent(drain(core), VoteResponse)] == [(3, True), (2, False)]
    assert core.vote == 3


def test_5_2_a_vote_request_for_another_node_is_dropped():
    """A message addressed to another node (misrouted or forged) must not use up this
    node's one vote of the term (§5.2): only the addressee may answer it."""
    core = make_core(term=1)
    drain(core)
    core.step(VoteRequest(2, 3, 9, 0, 0))  # from 3, addressed to node 9
    assert core.term == 1 and core.vote == 0 and not core.has_ready()


# -- §5.4.1 election restriction --------------------------------------------------


@pytest.mark.parametrize(
    "last_index, last_term, granted",
    [
        (5, 1, False),  # longer, but older last term
        (2, 2, False),  # same last term, shorter
        (3, 2, True),  # identical
        (4, 2, True),  # same last term, longer
        (1, 3, True),  # newer last term wins even when shorter
    ],
)
def test_5_4_1_vote_only_for_a_log_at_least_as_up_to_date(last_index, last_term, granted):
    core = make_core(terms=[1, 1, 2], term=2)
    core.step(vote_request(3, 2, last_index, last_term))
    rd = drain(core)
    assert sent(rd, VoteResponse) == [VoteResponse(3, 1, 2, granted)]
    assert core.vote == (2 if granted else 0)


def test_5_4_1_stale_log_candidate_cannot_win():
    """A node that missed a committed entry campaigns and loses; the other one wins."""
    config = CoreConfig(election_ticks=T, heartbeat_ticks=2, pre_vote=False, check_quorum=False)
    cluster = Cluster((1, 2, 3), config)
    cluster.elect(1)
    cluster.isolate(3)
    cluster.core(1).propose(b"x")
    cluster.stabilize()
    cluster.heal()
    cluster.crash(1)
    lagging = cluster.core(3)
    for _ in range(2 * T):
        lagging.tick()
    cluster.stabilize()
    assert lagging.role is Role.CANDIDATE and lagging.term == 2
    assert cluster.core(2).term == 2 and cluster.core(2).vote == 0
    winner = cluster.elect(2)
    assert winner.log.slice(2, 3)[0].data == b"x"


# -- §9.6 pre-vote -----------------------------------------------------------------


def test_9_6_pre_candidate_keeps_its_term_and_vote():
    core = make_core(terms=[1], term=4, vote=3)
    while core.role is Role.FOLLOWER:
        core.tick()
    assert core.role is Role.PRE_CANDIDATE
    rd = drain(core)
    assert rd.hard_state is None
    assert (core.term, core.vote) == (4, 3)
    assert sent(rd, VoteRequest) == [
        VoteRequest(5, 1, p, 1, 1, pre_vote=True) for p in (2, 3)
    ]


def test_9_6_pre_vote_grant_changes_nothing_on_the_voter():
    core = make_core(terms=[1], term=4)
    core.step(vote_request(5, 2, 1, 1, pre_vote=True))
    rd = drain(core)
    assert sent(rd, VoteResponse) == [VoteResponse(5, 1, 2, granted=True, pre_vote=True)]
    assert rd.hard_state is None and (core.term, core.vote) == (4, 0)


def test_9_6_pre_vote_refused_while_a_leader_was_heard_within_the_timeout():
    core = make_core(terms=[1], term=4)
    core.step(AppendEntries(4, 3, 1, 1, 1, (), 0))
    drain(core)
    core.step(vote_request(5, 2, 1, 1, pre_vote=True))
    assert sent(drain(core), VoteResponse) == [VoteResponse(4, 1, 2, granted=False, pre_vote=True)]
    for _ in range(T):
        core.tick()
    core.step(vote_request(5, 2, 1, 1, pre_vote=True))
    assert sent(drain(core), VoteResponse)[-1].granted is True


@pytest.mark.parametrize(
    "vote, leader, candidate_last, granted",
    [
        (0, None, (1, 1), True),  # no vote cast in term 5 and no leader known
        (2, None, (1, 1), True),  # the vote of term 5 went to this candidate already
        (3, None, (1, 1), False),  # ... to another candidate
        (0, 3, (1, 1), False),  # a leader of term 5 is known (and alive)
        (0, None, (0, 0), False),  # the candidate's log is behind (§5.4.1)
    ],
)
def test_9_6_pre_vote_for_the_voters_own_term_is_answered_as_the_vote_would_be(
    vote, leader, candidate_last, granted
):
    """A pre-candidate asks for its term + 1, which a voter may hold already (it
    moved on, say by refusing a candidate with a stale log).  The pre-vote is then
    answered as the real vote of that term would be (etcd-io/raft Step, MsgPreVote)."""
    core = make_core(terms=[1], term=5, vote=vote)
    if leader:
        core.step(AppendEntries(5, leader, 1, 1, 1, (), 0))
    drain(core)
    core.step(vote_request(5, 2, *candidate_last, pre_vote=True))
    rd = drain(core)
    assert sent(rd, VoteResponse) == [VoteResponse(5, 1, 2, granted, pre_vote=True)]
    assert rd.hard_state is None and (core.term, core.vote) == (5, vote)
    core.step(vote_request(5, 2, *candidate_last))
    assert sent(drain(core), VoteResponse) == [VoteResponse(5, 1, 2, granted)]


def test_9_6_pre_candidate_one_term_behind_is_elected_in_the_voters_term():
    """Node 2 is at term 5 without a vote; node 1, at 4, pre-votes for 5.  The grant
    names term 5, which is node 1's term + 1, so node 1 campaigns and wins in term 5
    at once (before, the refusal sent it to follow term 5 and wait out a timeout)."""
    cluster = Cluster((1, 2, 3), CFG)
    cluster.load(1, [1], term=4)
    cluster.load(2, [1], term=5)
    cluster.crash(3)
    core = cluster.core(1)
    while core.role is Role.FOLLOWER:
        core.tick()
    assert core.role is Role.PRE_CANDIDATE
    cluster.stabilize()
    assert (core.role, core.term) == (Role.LEADER, 5)
    assert cluster.core(2).leader_id == 1


def test_9_6_pre_vote_majority_starts_the_real_election():
    core = make_core(terms=[1], term=1)
    while core.role is Role.FOLLOWER:
        core.tick()
    drain(core)
    core.step(VoteResponse(2, 2, 1, granted=True, pre_vote=True))
    assert (core.role, core.term, core.vote) == (Role.CANDIDATE, 2, 1)
    assert sent(drain(core), VoteRequest)[0] == VoteRequest(2, 1, 2, 1, 1)


def test_9_6_rejoining_partitioned_node_does_not_bump_terms_or_depose_the_leader():
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    cluster.isolate(3)
    for _ in range(10 * T):
        cluster.tick()
        cluster.stabilize()
    assert cluster.core(3).term == 1  # it kept failing pre-votes, never campaigning
    cluster.heal()
    for _ in range(3):
        cluster.tick()
        cluster.stabilize()
    assert (leader.role, leader.term) == (Role.LEADER, 1)
    assert cluster.core(3).leader_id == 1


def test_9_6_without_pre_vote_the_rejoining_node_disrupts_the_cluster():
    """The contrast case: the pre-vote is what keeps the leader above."""
    config = CoreConfig(election_ticks=T, heartbeat_ticks=2, pre_vote=False, check_quorum=False)
    cluster = Cluster((1, 2, 3), config)
    cluster.elect(1)
    cluster.isolate(3)
    for _ in range(10 * T):
        cluster.tick()
        cluster.stabilize()
    assert cluster.core(3).term > 5
    cluster.heal()
    for _ in range(CFG.heartbeat_ticks):
        cluster.tick(1)
        cluster.stabilize()
    assert cluster.core(1).term > 5 and cluster.core(1).role is not Role.LEADER


# -- a broken connection to the leader: a hint, never needed for safety --------------


def test_losing_the_leaders_connection_starts_a_campaign_within_a_third_of_the_timeout():
    for seed in range(20):
        core = make_core(terms=[1], term=1, seed=seed)
        core.step(AppendEntries(1, 2, 1, 1, 1, (), 0))
        drain(core)
        core.step(PeerUnreachable(2))
        assert core.leader_id is None
        ticks = 0
        while core.role is Role.FOLLOWER:
            core.tick()
            ticks += 1
        assert core.role is Role.PRE_CANDIDATE and 1 <= ticks <= T // 3


def ticks_to_campaign(core) -> int:
    ticks = 0
    while core.role is Role.FOLLOWER:
        core.tick()
        ticks += 1
    return ticks


@pytest.mark.parametrize("seed", range(5))
def test_9_3_survivors_of_a_lost_leader_campaign_in_turn_by_id_one_tick_apart(seed):
    """§9.3: campaigns that start together split the vote; the survivors of a
    kill -9 all get the hint at once, so they take turns (lowest id first)."""
    turns = {}
    for node_id in (1, 2, 3, 4, 5):
        if node_id == 4:
            continue  # the leader that was lost
        core = RaftCore(node_id, (1, 2, 3, 4, 5), PersistedState(HardState(1, 0), tuple(entries_with_terms([1]))),
                        random.Random(seed), CFG)  # fmt: skip
        core.step(AppendEntries(1, 4, node_id, 1, 1, (), 0))
        drain(core)
        core.tick()  # wherever its election timer stands
        core.step(PeerUnreachable(4))
        turns[node_id] = ticks_to_campaign(core)
    assert turns == {1: 1, 2: 2, 3: 3, 5: 4}


def test_after_losing_the_leader_a_follower_grants_pre_votes_at_once():
    """Its lease ends with the hint (§6.2), so another survivor's pre-vote wins."""
    core = make_core(terms=[1], term=1)
    core.step(AppendEntries(1, 2, 1, 1, 1, (), 0))
    drain(core)
    core.step(PeerUnreachable(2))
    core.step(vote_request(2, 3, 1, 1, pre_vote=True))
    assert sent(drain(core), VoteResponse) == [VoteResponse(2, 1, 3, granted=True, pre_vote=True)]


def test_losing_a_peer_that_is_not_the_leader_changes_nothing():
    core = make_core(terms=[1], term=1)
    core.step(AppendEntries(1, 2, 1, 1, 1, (), 0))
    drain(core)
    core.step(PeerUnreachable(3))
    assert core.leader_id == 2 and not core.has_ready()
    for _ in range(T - 1):
        core.tick()
    assert core.role is Role.FOLLOWER


def test_a_wrong_hint_does_not_disturb_a_healthy_leader():
    """Node 2 alone loses its connection to leader 1: its pre-vote is refused by
    node 3, which still hears from the leader (§9.6), and no term moves."""
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    cluster.unreachable(2, 1)
    for _ in range(T):
        cluster.tick()
        cluster.stabilize()
    assert (leader.role, leader.term) == (Role.LEADER, 1)
    assert cluster.core(2).leader_id == 1 and cluster.core(2).term == 1


def test_a_killed_leader_is_mostly_replaced_within_a_third_of_the_timeout_when_its_peers_notice():
    """The survivors campaign a random 1..T/3 ticks after the hint.  Here they tick
    in lockstep, so when both pick the same tick the votes split and the usual
    randomised timeout decides; a real node's ticks are not in phase with its peers'."""
    fast = 0
    for seed in range(20):
        cluster = Cluster((1, 2, 3), CFG, seed=seed)
        cluster.elect(1)
        cluster.crash(1)
        for i in (2, 3):
            cluster.unreachable(i, 1)
        for _ in range(T // 3):
            cluster.tick(2, 3)
            cluster.stabilize()
        fast += cluster.leader() is not None
        for _ in range(10 * T):
            cluster.tick(2, 3)
            cluster.stabilize()
        assert cluster.leader().id in (2, 3)
    assert fast >= 10  # 12 of these 20 seeds; a collision is 1 in T // 3 in lockstep


# -- §6.2 check-quorum and leader lease ------------------------------------------------


def test_6_2_leader_cut_off_from_the_majority_steps_down_within_an_election_timeout():
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    cluster.isolate(1)
    for _ in range(2 * T):
        cluster.tick(1)
        cluster.stabilize()
    assert (leader.role, leader.leader_id, leader.term) == (Role.FOLLOWER, None, 1)


def test_6_2_leader_with_a_majority_stays():
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    cluster.isolate(3)
    for _ in range(5 * T):
        cluster.tick(1, 2)
        cluster.stabilize()
    assert leader.role is Role.LEADER


def test_6_2_follower_with_a_live_leader_ignores_vote_requests():
    core = make_core(terms=[1], term=1)
    core.step(AppendEntries(1, 2, 1, 1, 1, (), 0))
    drain(core)
    core.step(vote_request(2, 3, 5, 1))
    rd = drain(core)
    assert rd.messages == () and rd.hard_state is None
    assert (core.term, core.leader_id) == (1, 2)


def test_6_2_lease_does_not_block_a_leadership_transfer():
    core = make_core(terms=[1], term=1)
    core.step(AppendEntries(1, 2, 1, 1, 1, (), 0))
    drain(core)
    core.step(vote_request(2, 3, 1, 1, transfer=True))
    rd = drain(core)
    assert sent(rd, VoteResponse) == [VoteResponse(2, 1, 3, granted=True)]
    assert rd.hard_state == HardState(2, 3, 0)


# -- §3.10 leadership transfer ---------------------------------------------------


def test_3_10_transfer_to_an_up_to_date_follower():
    cluster = Cluster((1, 2, 3), CFG)
    old = cluster.elect(1)
    assert old.transfer_leadership(2) == 2
    rd = old.ready()
    assert sent(rd, TimeoutNow) == [TimeoutNow(1, 1, 2)]
    old.advance(rd)
    cluster.network.extend(rd.messages)
    cluster.history = []
    cluster.stabilize()
    new = cluster.core(2)
    assert (new.role, new.term) == (Role.LEADER, 2)
    assert old.role is Role.FOLLOWER and old.leader_id == 2
    campaign = [m for m in cluster.history if type(m) is VoteRequest]
    assert campaign and all(m.transfer and not m.pre_vote for m in campaign)  # no pre-vote


def test_3_10_the_outcome_is_reported_once_for_the_node_to_log():
    cluster = Cluster((1, 2, 3), CFG)
    old = cluster.elect(1)
    old.transfer_leadership(3)
    outcomes = []
    for _ in range(5):
        for i in (1, 2, 3):
            if cluster.take_ready(i):
                outcomes.extend(cluster.pending[i].transfers)
                cluster.persist(i)
        while cluster.network:
            cluster.deliver()
    assert [o for o in outcomes if o is not None] == [TransferResult(3, succeeded=True)]
    assert cluster.core(3).role is Role.LEADER


def test_3_10_without_a_target_the_most_up_to_date_voter_is_chosen():
    cluster = Cluster((1, 2, 3, 4), CoreConfig(election_ticks=T, heartbeat_ticks=2,
                                                auto_promote=False))
    leader = cluster.elect(1)
    cluster.add_node(5)
    leader.propose_conf_change(ConfChange(ConfChangeOp.ADD_LEARNER, 5))
    cluster.stabilize()
    cluster.isolate(2)
    cluster.isolate(4)
    leader.propose(b"only 3 and learner 5 have it")
    cluster.stabilize()
    assert leader.match_indexes[5] == leader.match_indexes[3] == leader.last_index
    assert leader.transfer_leadership() == 3  # the learner is no candidate
    cluster.heal()
    cluster.stabilize()
    assert cluster.leader().id == 3
    with pytest.raises(ValueError):
        cluster.core(3).transfer_leadership(5)


def test_3_10_transfer_target_catches_up_first_and_proposals_wait():
    cluster = Cluster((1, 2, 3), CFG)
    old = cluster.elect(1)
    cluster.isolate(2)
    old.propose(b"late")
    cluster.stabilize()
    cluster.heal()
    old.transfer_leadership(2)
    with pytest.raises(NotLeader) as err:
        old.propose(b"refused")
    assert err.value.leader_id == 2
    cluster.stabilize()  # no tick: the request itself sends to 2 (its append was lost)
    new = cluster.core(2)
    assert new.role is Role.LEADER
    assert [e.data for e in new.log.slice(1, new.last_index + 1)] == [b"", b"late", b""]


def test_3_10_transfer_is_abandoned_after_an_election_timeout():
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    cluster.isolate(2)
    leader.transfer_leadership(2)
    for _ in range(T - 1):
        cluster.tick(1, 3)
        cluster.stabilize()
    assert leader.transferee == 2
    leader.tick()
    assert leader.role is Role.LEADER and leader.transferee is None
    assert drain(leader).transfers == (TransferResult(2, succeeded=False),)
    leader.propose(b"accepted again")


def test_3_10_asking_again_does_not_extend_the_transfer():
    """An operator retrying the request must not keep the leader refusing writes:
    the attempt still ends one election timeout after it first started, and a
    retry without a target keeps the pending one (3 is now the most up to date)."""
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    cluster.isolate(2)
    leader.propose(b"x")
    cluster.stabilize()
    leader.transfer_leadership(2)
    for tick in range(T - 1):
        cluster.tick(1, 3)
        cluster.stabilize()
        assert leader.transfer_leadership(2 if tick % 2 else None) == 2
    assert leader.transferee == 2
    leader.tick()
    assert leader.role is Role.LEADER and leader.transferee is None
    assert drain(leader).transfers == (TransferResult(2, succeeded=False),)
    leader.propose(b"accepted again")


@pytest.mark.parametrize("paused", ["probe sent", "inflight window full"])
def test_3_10_transfer_sends_to_a_lagging_target_at_once(paused):
    """The request itself sends what the target lacks, even while its replication
    is paused, instead of leaving it to the next heartbeat: no tick happens here."""
    cluster = Cluster((1, 2, 3), CoreConfig(election_ticks=T, heartbeat_ticks=2,
                                            max_inflight_msgs=2))
    if paused == "probe sent":
        cluster.isolate(2)  # the new leader's first probe to 2 is lost
        leader = cluster.elect(1)
    else:
        leader = cluster.elect(1)
        cluster.isolate(2)
    for n in range(2):  # two appends to 2, both lost
        leader.propose(b"%d" % n)
        cluster.stabilize()
    pr = leader.progress[2]
    assert pr.is_paused() and pr.match < leader.last_index
    cluster.heal()
    leader.transfer_leadership(2)
    cluster.stabilize()
    assert cluster.core(2).role is Role.LEADER and leader.role is Role.FOLLOWER


def test_3_10_every_transfer_outcome_of_a_ready_is_reported():
    """Replacing a transfer and cancelling the next before a Ready: both outcomes come back."""
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    cluster.isolate(2)
    cluster.isolate(3)
    leader.propose(b"x")
    drain(leader)
    leader.transfer_leadership(2)
    leader.transfer_leadership(3)
    leader.transfer_leadership(1)
    assert drain(leader).transfers == (
        TransferResult(2, succeeded=False),
        TransferResult(3, succeeded=False, cancelled=True),
    )


def test_3_10_the_leaders_own_id_cancels_a_pending_transfer():
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    cluster.isolate(2)
    leader.propose(b"x")
    cluster.stabilize()
    leader.transfer_leadership(2)
    assert leader.transfer_leadership(1) == 1  # the leader stays
    assert leader.transferee is None
    assert drain(leader).transfers == (TransferResult(2, succeeded=False, cancelled=True),)
    leader.propose(b"accepted again")
    cluster.heal()
    for _ in range(2 * T):
        cluster.tick()
        cluster.stabilize()
    assert (leader.role, leader.term) == (Role.LEADER, 1)
    assert cluster.core(2).commit_index == leader.last_index


def test_3_10_the_leaders_own_id_with_no_transfer_pending_changes_nothing():
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    assert leader.transfer_leadership(1) == 1
    assert leader.transferee is None and not leader.has_ready()
    leader.propose(b"accepted")


def test_3_10_a_new_transfer_replaces_the_pending_one():
    cluster = Cluster((1, 2, 3), CFG)
    leader = cluster.elect(1)
    cluster.isolate(2)
    cluster.isolate(3)
    leader.propose(b"x")
    leader.transfer_leadership(2)
    leader.transfer_leadership(3)
    assert leader.transferee == 3
    assert drain(leader).transfers == (TransferResult(2, succeeded=False),)


def test_3_10_transfer_only_from_a_leader():
    cluster = Cluster((1, 2, 3), CFG)
    cluster.elect(1)
    with pytest.raises(NotLeader) as err:
        cluster.core(2).transfer_leadership(3)
    assert err.value.leader_id == 1
    with pytest.raises(ValueError):
        cluster.core(1).transfer_leadership(9)
