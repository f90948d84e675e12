"""The Ready loop on an injected clock: persist before send, group commit, fatal storage errors."""

import random

from twisted.internet.task import Clock

from parkd.db import StorageError
from parkd.node.driver import RaftDriver
from parkd.raft.core import CoreConfig, NotLeader, RaftCore, Role
from parkd.raft.messages import AppendEntries, AppendResponse, VoteRequest, VoteResponse
from parkd.raft.storage import MemoryStorage
from parkd.raft.types import EntryKind

TICK = 0.05
CONFIG = CoreConfig(election_ticks=4, heartbeat_ticks=1)


class RecordingStorage(MemoryStorage):
    def __init__(self, log):
        super().__init__()
        self.log = log
        self.fail = False

    def save(self, hard_state, entries):
        if self.fail:
            raise StorageError("disk on fire")
        self.log.append(("save", hard_state, tuple(entries)))
        super().save(hard_state, entries)


def make(voters=(1,), node_id=1):
    log, clock, fatal = [], Clock(), []
    storage = RecordingStorage(log)
    core = RaftCore(node_id, voters, storage.load(), random.Random(1), CONFIG)
    applied = []
    driver = RaftDriver(
        core, storage, lambda m: log.append(("send", m)), applied.extend, clock, TICK, on_fatal=lambda: fatal.append(1)
    )
    driver.start()
    return driver, clock, log, storage, applied, fatal


def become_leader(driver, clock):
    for _ in range(20):
        clock.advance(TICK)
        if driver.core.role is Role.LEADER:
            return
    raise AssertionError("single node did not elect itself")


def test_single_node_elects_itself_and_applies_proposals():
    driver, clock, log, storage, applied, _ = make()
    become_leader(driver, clock)
    clock.advance(0)
    driver.propose(b"a")
    driver.propose(b"b")
    clock.advance(0)
    assert [e.data for e in applied if e.kind is EntryKind.NORMAL] == [b"a", b"b"]
    assert applied[0].kind is EntryKind.NOOP  # §5.4.2: a new leader's no-op comes first


def test_proposals_of_one_reactor_turn_are_one_transaction():
    driver, clock, log, storage, applied, _ = make()
    become_leader(driver, clock)
    clock.advance(0)
    log.clear()
    for i in range(50):
        driver.propose(b"%d" % i)
    assert log == []  # nothing persisted until the end of the turn
    clock.advance(0)
    saves = [entry for entry in log if entry[0] == "save" and entry[2]]
    assert len(saves) == 1 and len(saves[0][2]) == 50


def test_vote_is_persisted_before_the_response_is_sent():
    driver, clock, log, storage, applied, _ = make(voters=(1, 2, 3))
    driver.step(VoteRequest(term=5, src=2, dst=1, last_log_index=0, last_log_term=0))
    clock.advance(0)
    save = next(i for i, entry in enumerate(log) if entry[0] == "save" and entry[1] and entry[1].vote == 2)
    send = next(i for i, entry in enumerate(log) if entry[0] == "send")
    assert save < send
    assert log[send][1].granted


def test_missed_ticks_are_replayed_after_a_stall():
    driver, clock, log, storage, applied, _ = make(voters=(1, 2, 3))
    clock.advance(TICK * 3.5)  # one callback, three ticks counted
    # CONFIG.election_ticks=4: 3 ticks are not yet an election; 8 more certainly are.
    clock.advance(TICK * 8)
    assert any(entry[0] == "send" and isinstance(entry[1], VoteRequest) for entry in log)


def test_a_leaders_appends_are_sent_before_its_own_write():
    """Dissertation §10.2.1: followers write the entries while the leader does."""
    driver, clock, log, storage, applied, _ = make(voters=(1, 2, 3))
    while driver.core.role is not Role.CANDIDATE:
        clock.advance(TICK)
        if driver.core.role is Role.PRE_CANDIDATE:
            driver.step(VoteResponse(driver.core.term + 1, 2, 1, granted=True, pre_vote=True))
            clock.advance(0)
    driver.step(VoteResponse(driver.core.term, 2, 1, granted=True))
    clock.advance(0)
    assert driver.core.role is Role.LEADER
    for peer in (2, 3):  # the no-op is replicated: both followers are pipelined
        driver.step(AppendResponse(driver.core.term, peer, 1, True, match_index=1))
    clock.advance(0)
    log.clear()
    driver.propose(b"a")
    clock.advance(0)
    first_save = next(i for i, entry in enumerate(log) if entry[0] == "save")
    sent_before = [entry[1] for entry in log[:first_save] if entry[0] == "send"]
    assert {m.dst for m in sent_before} == {2, 3}
    assert all(isinstance(m, AppendEntries) and m.entries[-1].data == b"a" for m in sent_before)


def test_storage_error_stops_the_node_without_sending():
    driver, clock, log, storage, applied, fatal = make(voters=(1, 2, 3))
    storage.fail = True
    driver.step(VoteRequest(term=5, src=2, dst=1, last_log_index=0, last_log_term=0))
    clock.advance(0)
    assert fatal == [1]
    assert [entry for entry in log if entry[0] == "send"] == []
    clock.advance(TICK * 100)  # the loop is stopped: nothing more happens
    assert [entry for entry in log if entry[0] == "send"] == []


def test_an_unexpected_error_in_the_ready_loop_stops_the_node():
    """A bug (here: the state machine raising) must not leave a Ready outstanding
    while the process lives on with Raft stopped for good."""
    driver, clock, log, storage, applied, fatal = make()
    become_leader(driver, clock)
    clock.advance(0)

    def broken_apply(entries):
        raise RuntimeError("state machine bug")

    driver.apply = broken_apply
    driver.propose(b"a")
    clock.advance(0)
    assert fatal == [1]
    log.clear()
    clock.advance(TICK * 100)
    assert log == []


def test_propose_without_leader_raises_not_leader():
    driver, *_ = make(voters=(1, 2, 3))
    try:
        driver.propose(b"x")
    except NotLeader as e:
        assert e.leader_id is None
    else:
        raise AssertionError("expected NotLeader")
