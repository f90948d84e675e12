"""The snapshot manager's own rules, on a task.Clock with stand-ins for the driver and the store.

The log is compacted in batches across reactor turns; the receiver of a snapshot
tells the leader it is installing; the sender does not give up a transfer whose
receiver says so, and still gives up one that went silent.
"""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet import defer, task

from parkd.node.driver import EntriesApplied, LogCompacted
from parkd.node.snapshots import SEND_TIMEOUT, CompactionPolicy, SnapshotManager
from parkd.raft.types import SnapshotMeta


class FakeDriver:
    """What the manager asks of a RaftDriver: its id, term, snapshot, events and inputs."""

    def __init__(self, node_id: int = 1) -> None:
        self.node_id, self.term, self.snapshot = node_id, 3, SnapshotMeta()
        self.observers: list = []
        self.stepped: list = []
        self.statuses: list = []

    def subscribe(self, observer, *kinds) -> None:
        self.observers.append((kinds, observer))

    def publish(self, event) -> None:
        for kinds, observer in self.observers:
            if isinstance(event, kinds):
                observer(event)

    def step(self, message) -> None:
        self.stepped.append(message)

    def snapshot_status(self, peer: int, success: bool) -> None:
        self.statuses.append((peer, success))


class Trimmer:
    """A storage whose compaction left ``batches`` batches to trim."""

    def __init__(self, batches: int) -> None:
        self.left, self.calls = batches, 0

    def trim(self) -> bool:
        self.calls += 1
        self.left -= 1
        return self.left > 0


class InlineThread:
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def run(self, function, *args, **kwargs):
        return defer.maybeDeferred(function, *args, **kwargs)


def manager(tmp_path, storage=None, node_id: int = 1, sent=None):
    driver = FakeDriver(node_id)
    store = SimpleNamespace(storage=storage, db_path=str(tmp_path / "node.db"), engine=None)
    membership = SimpleNamespace(restore_members=lambda members: None, members_for_snapshot=lambda: ())
    clock = task.Clock()
    out = sent if sent is not None else []
    made = SnapshotManager(driver, store, membership, out.append, clock, CompactionPolicy(), str(tmp_path / "snaps"),
                           thread=InlineThread())  # fmt: skip
    return made, driver, clock


def turn(clock: task.Clock) -> int:
    """One reactor turn: run the calls due now, not those they schedule (as a real reactor); how many ran."""
    due = [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.called = True
        call.func(*call.args, **call.kw)
    return len(due)


def test_7_the_compacted_log_is_trimmed_one_batch_per_reactor_turn(tmp_path):
    """§7 compaction off the hot path: after LogCompacted, one ``trim`` per turn until none is left."""
    storage = Trimmer(batches=3)
    snapshots, driver, clock = manager(tmp_path, storage)
    driver.publish(LogCompacted(SnapshotMeta(100, 1), 90))
    driver.publish(LogCompacted(SnapshotMeta(100, 1), 90))  # a second event does not start a second loop
    assert storage.calls == 0  # not in the driver's turn
    assert turn(clock) == 1 and storage.calls == 1
    assert turn(clock) == 1 and storage.calls == 2
    assert turn(clock) == 1 and storage.calls == 3 and storage.left == 0
    assert turn(clock) == 0 and storage.calls == 3


def test_7_members_snapshot_at_staggered_indexes():
    """§7 each server snapshots independently: members 1, 2, 3 at thresholds 15 % of max_entries apart."""
    policy = CompactionPolicy(max_entries=1000)
    due = {n: next(i for i in range(0, 3000) if policy.should_snapshot(i, 0, n)) for n in (1, 2, 3, 4)}
    assert due == {1: 1151, 2: 1301, 3: 1451, 4: 1001}
    assert policy.should_snapshot(0, policy.max_bytes + 1, 3)  # the byte bound is not staggered


def test_7_a_member_takes_its_snapshot_at_its_own_threshold(tmp_path):
    """§7: after each applied batch the manager asks the policy with its own node id."""
    taken = []

    class Recording(SnapshotManager):
        def take(self):
            taken.append(self.driver.snapshot.index)

    driver = FakeDriver(node_id=2)
    membership = SimpleNamespace(restore_members=lambda members: None)
    Recording(driver, SimpleNamespace(storage=None), membership, [].append, task.Clock(),
              CompactionPolicy(max_entries=100), str(tmp_path / "snaps"), thread=InlineThread())  # fmt: skip
    driver.publish(EntriesApplied((), [], 101))
    driver.publish(EntriesApplied((), [], 130))
    assert taken == []  # member 1 would have taken one at 101
    driver.publish(EntriesApplied((), [], 131))
    assert taken == [0]
