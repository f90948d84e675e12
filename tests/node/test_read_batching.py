"""ReadIndex batching (Raft dissertation §6.4) through the real driver and core, on a ``task.Clock``.

A follower's reads ask the leader once per batch; a leader's reads share one
heartbeat round.  The HTTP-level behaviour is in tests/http/test_reads.py.
"""

from parkd.node.reads import ReadBarrier
from parkd.raft.messages import AppendEntries, AppendResponse, ReadIndexRequest, ReadIndexResponse
from parkd.raft.types import Entry, EntryKind

from test_driver import elect, make


def sent(log, kind):
    return [entry[1] for entry in log if entry[0] == "send" and isinstance(entry[1], kind)]


def follower_of_1():
    driver, clock, log, *_ = make(voters=(1, 2, 3), node_id=2)
    driver.step(AppendEntries(1, 1, 2, 0, 0, (Entry(1, 1, EntryKind.NOOP, b""),), 1, 0))  # node 1 leads term 1
    clock.advance(0)
    assert driver.applied_index == 1
    return driver, clock, log


def test_6_4_a_followers_reads_of_one_turn_ask_the_leader_once():
    driver, clock, log = follower_of_1()
    barrier = ReadBarrier(driver, clock)
    reads = [barrier.read() for _ in range(10)]
    clock.advance(0)  # the Ready loop: the request leaves
    (request,) = sent(log, ReadIndexRequest)
    later = [barrier.read() for _ in range(10)]
    clock.advance(0)
    assert len(sent(log, ReadIndexRequest)) == 1  # the later ones wait for the answer
    driver.step(ReadIndexResponse(1, 1, 2, request.ctx, 1))
    clock.advance(0)
    assert all(r.called for r in reads) and not any(r.called for r in later)
    requests = sent(log, ReadIndexRequest)
    assert len(requests) == 2  # the ten later reads: one request
    driver.step(ReadIndexResponse(1, 1, 2, requests[1].ctx, 1))
    clock.advance(0)
    assert all(r.called for r in later) and barrier.requests == 2


def test_6_4_a_leaders_reads_of_one_turn_share_one_heartbeat_round():
    driver, clock, log, *_ = make(voters=(1, 2, 3))
    elect(driver, clock)
    last = driver.last_index
    driver.step(AppendResponse(driver.term, 2, 1, True, last))  # the no-op commits (§6.4 step 1)
    clock.advance(0)
    barrier = ReadBarrier(driver, clock)
    log.clear()
    reads = [barrier.read() for _ in range(10)]
    clock.advance(0)
    heartbeats = sent(log, AppendEntries)
    assert len(heartbeats) == 2  # one round: one message to each follower
    later = [barrier.read() for _ in range(10)]
    clock.advance(0)
    assert len(sent(log, AppendEntries)) == 2  # no round for the later reads until this one is confirmed
    driver.step(AppendResponse(driver.term, 2, 1, True, last, read_ctx=heartbeats[0].read_ctx))
    clock.advance(0)
    assert all(r.called for r in reads) and not any(r.called for r in later)
    assert len(sent(log, AppendEntries)) == 4  # the later ten: one more round
    assert barrier.requests == 2


def test_the_driver_counts_the_readies_it_takes():
    driver, clock, log = follower_of_1()
    before = driver.ready_count
    driver.read_index(7)
    assert driver.ready_count == before  # asked, not yet sent
    clock.advance(0)
    assert driver.ready_count == before + 1


def test_a_read_on_a_follower_holding_its_applies_does_not_wait_for_the_hold():
    """A follower holds its applies while nothing waits (parkd/node/driver.py); a read
    waiting for its read index is something: the entries are applied as they commit."""
    driver, clock, log, *_ = make(voters=(1, 2, 3), node_id=2, apply_hold_s=0.02)
    barrier = ReadBarrier(driver, clock)
    driver.wait_for_applies(barrier.awaits_applies)
    entries = (Entry(1, 1, EntryKind.NOOP, b""), Entry(2, 1, EntryKind.NORMAL, b"x"))
    driver.step(AppendEntries(1, 1, 2, 0, 0, entries, 0, 0))  # node 1 leads term 1
    clock.advance(0)
    read = barrier.read()
    clock.advance(0)
    (request,) = sent(log, ReadIndexRequest)
    driver.step(ReadIndexResponse(1, 1, 2, request.ctx, 2))  # the leader's commit index: 2
    clock.advance(0)
    assert not read.called and barrier.awaits_applies()  # this node has not learnt it yet
    driver.step(AppendEntries(1, 1, 2, 2, 1, (), 2, 0))  # the heartbeat that carries it
    clock.advance(0)
    assert driver.applied_index == 2 and read.called
    assert not barrier.awaits_applies()
