"""The Ready loop on an injected clock: persist before send, group commit, fatal storage
errors, snapshot installs, and the event stream."""

import dataclasses
import random

from twisted.internet import defer
from twisted.internet.task import Clock

from parkd.db import StorageError
from parkd.node import driver as events
from parkd.node.driver import RaftDriver
from parkd.raft.core import CoreConfig, NotLeader, RaftCore, Role
from parkd.raft.messages import AppendEntries, AppendResponse, InstallSnapshot, VoteRequest, VoteResponse
from parkd.raft.storage import MemoryStorage
from parkd.raft.types import Entry, EntryKind, SnapshotMeta

TICK = 0.05
CONFIG = CoreConfig(election_ticks=4, heartbeat_ticks=1)


class RecordingStorage(MemoryStorage):
    def __init__(self, log):
        super().__init__()
        self.log = log
        self.fail = False

    def save(self, hard_state, entries, *, sync=True):
        if self.fail:
            raise StorageError("disk on fire")
        self.log.append(("save", hard_state, tuple(entries), sync))
        super().save(hard_state, entries, sync=sync)

    def compact(self, upto_index, meta):
        self.log.append(("compact", upto_index, meta))
        super().compact(upto_index, meta)


class StateMachine:
    """Applies into a list; installs when its Deferred is fired by the test."""

    def __init__(self, log):
        self.log = log
        self.applied = []
        self.broken = None
        self.installing: list[tuple[SnapshotMeta, defer.Deferred]] = []

    def apply(self, entries):
        if self.broken is not None:
            raise self.broken
        self.log.append(("apply", tuple(e.index for e in entries)))
        self.applied.extend(entries)
        return [e.index for e in entries]

    def install(self, meta):
        self.log.append(("install", meta))
        d = defer.Deferred()
        self.installing.append((meta, d))
        return d


class Syncer:
    """Runs nothing: records each fsync asked for; the test fires its Deferred."""

    def __init__(self, log):
        self.log = log
        self.pending: list[defer.Deferred] = []

    def __call__(self, sync):
        self.log.append(("fsync",))
        d = defer.Deferred()
        self.pending.append(d)
        return d


def make(voters=(1,), node_id=1, syncer=None, config=CONFIG, apply_hold_s=0.0):
    log, clock, fatal = [], Clock(), []
    storage = RecordingStorage(log)
    core = RaftCore(node_id, voters, storage.load(), random.Random(1), config)
    machine = StateMachine(log)
    driver = RaftDriver(
        core, storage, lambda m: log.append(("send", m)), machine, clock, TICK, on_fatal=lambda: fatal.append(1),
        syncer=syncer(log) if syncer else None, apply_hold_s=apply_hold_s,
    )  # fmt: skip
    driver.start()
    return driver, clock, log, storage, machine, fatal


def become_leader(driver, clock):
    for _ in range(20):
        clock.advance(TICK)
        if driver.role is Role.LEADER:
            return
    raise AssertionError("single node did not elect itself")


def elect(driver, clock):
    """Make node 1 of three the leader (its peers grant)."""
    while driver.role is not Role.CANDIDATE:
        clock.advance(TICK)
        if driver.role is Role.PRE_CANDIDATE:
            driver.step(VoteResponse(driver.term + 1, 2, 1, granted=True, pre_vote=True))
            clock.advance(0)
    driver.step(VoteResponse(driver.term, 2, 1, granted=True))
    clock.advance(0)
    assert driver.role is Role.LEADER


def test_single_node_elects_itself_and_applies_proposals():
    driver, clock, log, storage, machine, _ = make()
    become_leader(driver, clock)
    clock.advance(0)
    driver.propose(b"a")
    driver.propose(b"b")
    clock.advance(0)
    assert [e.data for e in machine.applied if e.kind is EntryKind.NORMAL] == [b"a", b"b"]
    assert machine.applied[0].kind is EntryKind.NOOP  # §5.4.2: a new leader's no-op comes first


def test_proposals_of_one_reactor_turn_are_one_transaction():
    driver, clock, log, storage, machine, _ = make()
    become_leader(driver, clock)
    clock.advance(0)
    log.clear()
    for i in range(50):
        driver.propose(b"%d" % i)
    assert log == []  # nothing persisted until the end of the turn
    clock.advance(0)
    saves = [entry for entry in log if entry[0] == "save" and entry[2]]
    assert len(saves) == 1 and len(saves[0][2]) == 50


def test_a_long_committed_run_is_applied_one_capped_batch_per_reactor_turn():
    """The reactor reads sockets and fires timers between two batches of applying."""
    config = dataclasses.replace(CONFIG, max_committed_per_ready=2)
    driver, clock, log, storage, machine, _ = make(config=config)
    become_leader(driver, clock)
    clock.advance(0)
    log.clear()
    for i in range(5):
        driver.propose(b"%d" % i)
    turns = []
    while driver.applied_index < 6:
        log.clear()
        one_turn(clock)
        turns.append([entry[1] for entry in log if entry[0] == "apply"])
    assert [batches for batches in turns if batches] == [[(2, 3)], [(4, 5)], [(6,)]]


def one_turn(clock):
    """Run the calls due now, but not those they schedule (Clock.advance(0) runs those too)."""
    for call in [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()]:
        if call.active():
            clock.calls.remove(call)
            call.called = True
            call.func(*call.args, **call.kw)


def test_vote_is_persisted_before_the_response_is_sent():
    driver, clock, log, storage, machine, _ = make(voters=(1, 2, 3))
    driver.step(VoteRequest(term=5, src=2, dst=1, last_log_index=0, last_log_term=0))
    clock.advance(0)
    save = next(i for i, entry in enumerate(log) if entry[0] == "save" and entry[1] and entry[1].vote == 2)
    send = next(i for i, entry in enumerate(log) if entry[0] == "send")
    assert save < send
    assert log[send][1].granted


def test_missed_ticks_are_replayed_after_a_stall():
    driver, clock, log, storage, machine, _ = make(voters=(1, 2, 3))
    clock.advance(TICK * 3.5)  # one callback, three ticks counted
    # CONFIG.election_ticks=4: 3 ticks are not yet an election; 8 more certainly are.
    clock.advance(TICK * 8)
    assert any(entry[0] == "send" and isinstance(entry[1], VoteRequest) for entry in log)


def test_a_leaders_appends_are_sent_before_its_own_write():
    """Dissertation §10.2.1: followers write the entries while the leader does."""
    driver, clock, log, storage, machine, _ = make(voters=(1, 2, 3))
    elect(driver, clock)
    for peer in (2, 3):  # the no-op is replicated: both followers are pipelined
        driver.step(AppendResponse(driver.term, peer, 1, True, match_index=1))
    clock.advance(0)
    log.clear()
    driver.propose(b"a")
    clock.advance(0)
    first_save = next(i for i, entry in enumerate(log) if entry[0] == "save")
    sent_before = [entry[1] for entry in log[:first_save] if entry[0] == "send"]
    assert {m.dst for m in sent_before} == {2, 3}
    assert all(isinstance(m, AppendEntries) and m.entries[-1].data == b"a" for m in sent_before)


def test_storage_error_stops_the_node_without_sending():
    driver, clock, log, storage, machine, fatal = make(voters=(1, 2, 3))
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
    driver, clock, log, storage, machine, fatal = make()
    become_leader(driver, clock)
    clock.advance(0)

    machine.broken = RuntimeError("state machine bug")
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


def test_a_save_is_fsynced_as_the_ready_says():
    driver, clock, log, storage, machine, _ = make()
    become_leader(driver, clock)
    clock.advance(0)
    log.clear()
    driver.propose(b"a")
    clock.advance(0)
    saves = [entry for entry in log if entry[0] == "save"]
    assert [(bool(entries), sync) for _, _, entries, sync in saves] == [(True, True)]  # the commit alone: none
    assert driver.applied_index == driver.commit_index == saves[0][2][-1].index


def test_events_follow_the_ready_in_order():
    driver, clock, log, storage, machine, _ = make()
    seen = []
    driver.subscribe(seen.append, events.LeaderChanged, events.EntriesPersisted, events.EntriesApplied,
                     events.Persisted)  # fmt: skip
    become_leader(driver, clock)
    clock.advance(0)
    kinds = [type(e).__name__ for e in seen]
    assert kinds.index("Persisted") < kinds.index("EntriesPersisted") < kinds.index("EntriesApplied")
    leader = [e for e in seen if isinstance(e, events.LeaderChanged)]
    assert leader[-1] == events.LeaderChanged(Role.LEADER, 1, driver.term)
    applied = [e for e in seen if isinstance(e, events.EntriesApplied)]
    assert applied[-1].results == [1] and applied[-1].applied_index == 1


def test_a_received_snapshot_is_installed_before_anything_else_and_the_loop_waits():
    """§7: the install is durable before the answer to the leader and before later entries."""
    driver, clock, log, storage, machine, fatal = make(voters=(1, 2, 3))
    installed = []
    driver.subscribe(installed.append, events.SnapshotInstalled)
    meta = SnapshotMeta(10, 2, (1, 2, 3))
    driver.step(InstallSnapshot(2, 2, 1, 10, 2, 0, b"", True, (1, 2, 3)))
    clock.advance(0)
    assert [entry[0] for entry in log] == ["install"] and machine.installing[0][0] == meta
    driver.step(AppendEntries(2, 2, 1, 10, 2, (), 10))  # the leader goes on meanwhile
    clock.advance(TICK)
    assert [entry[0] for entry in log] == ["install"]  # nothing saved or sent yet
    machine.installing[0][1].callback(None)
    clock.advance(0)
    assert installed == [events.SnapshotInstalled(meta)]
    first_send = next(i for i, entry in enumerate(log) if entry[0] == "send")
    assert [entry[0] for entry in log[:first_send]] == ["install", "save"]
    assert log[first_send][1] == AppendResponse(2, 1, 2, True, match_index=10)
    assert driver.applied_index == 10 and fatal == []


def test_a_failed_install_stops_the_node():
    driver, clock, log, storage, machine, fatal = make(voters=(1, 2, 3))
    driver.step(InstallSnapshot(2, 2, 1, 10, 2, 0, b"", True, (1, 2, 3)))
    clock.advance(0)
    machine.installing[0][1].errback(StorageError("disk full"))
    assert fatal == [1]
    assert [entry for entry in log if entry[0] == "send"] == []


def test_a_snapshot_taken_is_compacted_in_storage_by_the_next_ready():
    driver, clock, log, storage, machine, _ = make()
    become_leader(driver, clock)
    for n in range(5):
        driver.propose(b"%d" % n)
    clock.advance(0)
    compacted = []
    driver.subscribe(compacted.append, events.LogCompacted)
    meta = SnapshotMeta(4, driver.term, (1,))
    assert driver.snapshot_taken(meta, 3) is True
    assert driver.snapshot_taken(SnapshotMeta(2, driver.term, (1,)), 1) is False  # older: ignored
    clock.advance(0)
    assert ("compact", 3, meta) in log and compacted == [events.LogCompacted(meta, 3)]
    assert storage.load().snapshot == meta


def test_an_apply_storage_error_stops_the_node():
    driver, clock, log, storage, machine, fatal = make()
    become_leader(driver, clock)
    clock.advance(0)
    machine.broken = StorageError("disk gone")
    driver.propose(b"a")
    clock.advance(0)
    assert fatal == [1]


# -- the fsync off the reactor (a syncer) -----------------------------------------------


def test_with_a_syncer_nothing_that_needs_the_write_leaves_before_its_fsync_returns():
    """Figure 2 / §5.3: a follower answers AppendEntries only once the entries are durable."""
    driver, clock, log, storage, machine, fatal = make(voters=(1, 2, 3), syncer=Syncer)
    syncer = driver.syncer
    driver.step(AppendEntries(2, 2, 1, 0, 0, (Entry(1, 2, EntryKind.NORMAL, b"a"),), 0))
    clock.advance(0)
    assert [entry[0] for entry in log] == ["save", "fsync"] and log[0][3] is False  # committed, not fsynced
    driver.step(AppendEntries(2, 2, 1, 1, 2, (Entry(2, 2, EntryKind.NORMAL, b"b"),), 1))  # the leader goes on
    clock.advance(TICK)
    assert [entry[0] for entry in log] == ["save", "fsync"]  # no answer, no later Ready meanwhile
    syncer.pending.pop(0).callback(None)
    clock.advance(0)
    kinds = [entry[0] for entry in log]
    assert kinds[:4] == ["save", "fsync", "send", "save"], kinds
    assert log[2][1] == AppendResponse(2, 1, 2, True, match_index=1)
    assert [e.data for e in log[3][2]] == [b"b"]
    syncer.pending.pop(0).callback(None)
    clock.advance(0)
    sent = [entry[1] for entry in log if entry[0] == "send"]
    assert sent[-1] == AppendResponse(2, 1, 2, True, match_index=2) and fatal == []
    assert [e.index for e in machine.applied] == [1]


def test_with_a_syncer_a_leader_sends_its_appends_and_writes_in_the_same_turn():
    driver, clock, log, storage, machine, _ = make(voters=(1, 2, 3), syncer=Syncer)
    syncer = driver.syncer
    while driver.role is not Role.CANDIDATE:
        clock.advance(TICK)
        if driver.role is Role.PRE_CANDIDATE:
            driver.step(VoteResponse(driver.term + 1, 2, 1, granted=True, pre_vote=True))
            clock.advance(0)
        while syncer.pending:
            syncer.pending.pop(0).callback(None)
    driver.step(VoteResponse(driver.term, 2, 1, granted=True))
    clock.advance(0)
    for peer in (2, 3):  # the no-op is replicated: both followers are pipelined
        driver.step(AppendResponse(driver.term, peer, 1, True, match_index=1))
        clock.advance(0)
        while syncer.pending:
            syncer.pending.pop(0).callback(None)
            clock.advance(0)
    assert driver.role is Role.LEADER
    log.clear()
    driver.propose(b"a")
    driver.process()  # one turn: no wait for the sockets, the write's fsync is on the syncer
    kinds = [entry[0] for entry in log]
    assert kinds == ["send", "send", "save", "fsync"], kinds


def test_a_failed_fsync_stops_the_node_and_nothing_that_needed_it_is_sent():
    driver, clock, log, storage, machine, fatal = make(voters=(1, 2, 3), syncer=Syncer)
    syncer = driver.syncer
    driver.step(VoteRequest(term=5, src=2, dst=1, last_log_index=0, last_log_term=0))
    clock.advance(0)
    syncer.pending.pop(0).errback(StorageError("making the Raft log durable (fsync of node.db-wal) failed: EIO"))
    clock.advance(TICK * 100)
    assert fatal == [1] and driver.failed
    assert [entry for entry in log if entry[0] == "send"] == []  # the vote was never granted


def test_an_fsync_that_ends_after_the_driver_stopped_continues_nothing():
    driver, clock, log, storage, machine, fatal = make(voters=(1, 2, 3), syncer=Syncer)
    syncer = driver.syncer
    driver.step(VoteRequest(term=5, src=2, dst=1, last_log_index=0, last_log_term=0))
    clock.advance(0)
    driver.stop()
    syncer.pending.pop(0).callback(None)
    assert [entry for entry in log if entry[0] == "send"] == [] and fatal == []


# -- a follower holds its applies while nothing waits for them ------------------------------

HOLD = 0.02


def append_from_2(prev, entries, commit):
    """Leader 2's AppendEntries of term 1 to node 1: ``entries`` (indexes) after ``prev``."""
    return AppendEntries(1, 2, 1, prev, 1 if prev else 0,
                         tuple(Entry(i, 1, EntryKind.NORMAL, b"%d" % i) for i in entries), commit)  # fmt: skip


def applies(log):
    return [entry[1] for entry in log if entry[0] == "apply"]


def test_a_follower_applies_what_it_holds_in_one_batch_within_the_hold():
    driver, clock, log, storage, machine, _ = make(voters=(1, 2, 3), apply_hold_s=HOLD)
    driver.step(append_from_2(0, [1, 2], 0))
    clock.advance(0)
    driver.step(append_from_2(2, [3], 2))  # commits 1-2: held
    clock.advance(0)
    sent = [entry[1] for entry in log if entry[0] == "send"]
    assert [m.match_index for m in sent if type(m) is AppendResponse] == [2, 3]  # answered at once
    clock.advance(HOLD / 2)
    driver.step(append_from_2(3, [4], 3))  # commits 3: held with them
    clock.advance(0)
    assert applies(log) == [] and driver.applied_index == 0
    clock.advance(HOLD / 2)  # the hold of the first held entry ends
    assert applies(log) == [(1, 2, 3)]
    driver.step(append_from_2(4, [5], 4))  # a new hold starts
    clock.advance(0)
    clock.advance(HOLD * 0.9)
    assert applies(log) == [(1, 2, 3)]
    clock.advance(HOLD * 0.1)
    assert applies(log) == [(1, 2, 3), (4,)]
    assert not clock.getDelayedCalls()[1:]  # only the tick loop is left


def test_a_follower_applies_at_once_while_something_waits_for_it():
    driver, clock, log, storage, machine, _ = make(voters=(1, 2, 3), apply_hold_s=HOLD)
    waiting = [False]
    driver.wait_for_applies(lambda: waiting[0])
    driver.step(append_from_2(0, [1, 2], 0))
    clock.advance(0)
    driver.step(append_from_2(2, [3], 1))
    clock.advance(0)
    assert applies(log) == []
    waiting[0] = True  # a camera's frame, say: the next input's Ready applies what is held too
    driver.step(append_from_2(3, [], 3))
    clock.advance(0)
    assert applies(log) == [(1, 2, 3)]


def test_a_leader_applies_at_once_despite_a_hold():
    driver, clock, log, storage, machine, _ = make(apply_hold_s=HOLD)
    become_leader(driver, clock)
    clock.advance(0)
    driver.propose(b"a")
    clock.advance(0)
    assert [e.data for e in machine.applied if e.kind is EntryKind.NORMAL] == [b"a"]


def test_stopping_cancels_the_end_of_a_hold():
    driver, clock, log, storage, machine, _ = make(voters=(1, 2, 3), apply_hold_s=HOLD)
    driver.step(append_from_2(0, [1], 1))
    clock.advance(0)
    assert len(clock.getDelayedCalls()) == 2  # the ticks and the end of the hold
    driver.stop()
    assert clock.getDelayedCalls() == []
