"""The snapshot manager's own rules, on a task.Clock with stand-ins for the driver and the store.

The log is compacted in batches across reactor turns; the receiver of a snapshot
tells the leader it is installing; the sender does not give up a transfer whose
receiver says so, and still gives up one that went silent.
"""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet import defer, task

from parkd.node.events import EntriesApplied, LogCompacted
from parkd.node.snapshot_stream import read_chunk, transfer_size
from parkd.node.snapshots import INSTALL_PROGRESS_S, SEND_TIMEOUT, CompactionPolicy, SnapshotManager
from parkd.parking.snapshot import SnapshotInfo, read_snapshot_meta
from parkd.raft.messages import InstallSnapshot, SnapshotResponse
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


# -- the transfer: the receiver says it is installing ------------------------------------


class ManualThread(InlineThread):
    """The snapshot thread of a long install: its work ends when the test says so."""

    def __init__(self) -> None:
        self.pending: list[defer.Deferred] = []

    def run(self, function, *args, **kwargs):
        self.pending.append(defer.Deferred())
        return self.pending[-1]


def snapshot_file(tmp_path, index: int = 50) -> str:
    """A real (small) snapshot file at ``index``, term 2, voters 1-3."""
    import sqlite3

    from parkd.db import open_engine
    from parkd.parking.snapshot import pin_state
    from parkd.parking.state import ParkingState

    db = str(tmp_path / "source.db")
    engine = open_engine(db)
    ParkingState(engine, {"north": 10})
    engine.dispose()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE applied SET last_applied = ?", (index,))
    conn.commit()
    conn.close()
    return pin_state(db).write(str(tmp_path / "snapshot.db"), term=2, voters=(1, 2, 3), learners=(),
                               config_index=0).path  # fmt: skip


class Adopting(FakeDriver):
    """A core that takes a whole snapshot to install (``adopt``) or finds it not needed."""

    adopt = True

    def step(self, message) -> None:
        super().step(message)
        if isinstance(message, InstallSnapshot) and message.done and self.adopt:
            self.snapshot = SnapshotMeta(message.last_index, message.last_term, message.voters, message.learners)


def receiver(tmp_path, adopt: bool = True):
    sent: list = []
    driver = Adopting(node_id=2)
    driver.adopt = adopt
    thread = ManualThread()
    store = SimpleNamespace(storage=SimpleNamespace(refresh=lambda: None), engine=None)
    membership = SimpleNamespace(restore_members=lambda members: None)
    clock = task.Clock()
    made = SnapshotManager(driver, store, membership, sent.append, clock, CompactionPolicy(),
                           str(tmp_path / "snaps"), thread=thread)  # fmt: skip
    return made, driver, clock, thread, sent


def deliver_file(snapshots, path: str, leader: int = 1, term: int = 3) -> int:
    """Every chunk of ``path`` from ``leader``; the transfer's size."""
    meta = read_snapshot_meta(path).meta
    total, offset = transfer_size(path), 0
    while offset < total:
        data = read_chunk(path, offset, 4096)
        snapshots.on_chunk(InstallSnapshot(term, leader, 2, meta.index, meta.term, offset, data,
                                           offset + len(data) >= total, meta.voters, meta.learners))  # fmt: skip
        offset += len(data)
    return total


def test_7_a_follower_installing_a_snapshot_tells_the_leader_until_it_is_done(tmp_path):
    """§7: the answer to the last chunk says "installing", every second, then "done" once installed."""
    snapshots, driver, clock, thread, sent = receiver(tmp_path)
    total = deliver_file(snapshots, snapshot_file(tmp_path))
    last = sent[-1]
    assert (last.next_offset, last.done, last.installing) == (total, False, True) and last.dst == 1
    meta = driver.snapshot
    assert meta.index == 50
    snapshots.install(meta)  # what the driver does next; the copy takes a while
    for _ in range(7):
        clock.advance(INSTALL_PROGRESS_S)
    progress = [r for r in sent if r.installing]
    assert len(progress) == 8 and not any(r.done for r in progress)
    thread.pending[0].callback(SimpleNamespace(members=()))
    assert (sent[-1].done, sent[-1].installing, sent[-1].next_offset) == (True, False, total)
    count = len(sent)
    clock.advance(10 * INSTALL_PROGRESS_S)
    assert len(sent) == count  # no more progress once done


def test_7_a_snapshot_the_core_does_not_need_is_answered_done_at_once(tmp_path):
    snapshots, driver, clock, thread, sent = receiver(tmp_path, adopt=False)
    total = deliver_file(snapshots, snapshot_file(tmp_path))
    assert (sent[-1].next_offset, sent[-1].done, sent[-1].installing) == (total, True, False)
    clock.advance(10)
    assert not sent[-1].installing and not thread.pending


def sender(tmp_path):
    path = str(tmp_path / "leader-snapshot.db")
    with open(path, "wb") as f:
        f.write(b"s" * 10_000)
    sent: list = []
    snapshots, driver, clock = manager(tmp_path, sent=sent)
    snapshots.latest = SnapshotInfo(path, 500, 10_000, 0.0, 2, (1, 2, 3), ())
    snapshots.send(InstallSnapshot(3, 1, 2, 500, 0, 0, b"", False))
    total = transfer_size(path)
    snapshots.on_response(SnapshotResponse(3, 2, 1, 500, total, False, installing=True))
    return snapshots, driver, clock, sent, total


def test_7_the_leader_keeps_a_transfer_open_while_the_follower_installs(tmp_path):
    """§7: "installing" answers keep the transfer alive past SEND_TIMEOUT; "done" reports success."""
    snapshots, driver, clock, sent, total = sender(tmp_path)
    chunks = len(sent)
    for _ in range(4 * int(SEND_TIMEOUT)):  # an install four send timeouts long
        clock.advance(INSTALL_PROGRESS_S)
        snapshots.on_response(SnapshotResponse(3, 2, 1, 500, total, False, installing=True))
    assert driver.statuses == [] and len(sent) == chunks  # neither given up nor a chunk sent again
    snapshots.on_response(SnapshotResponse(3, 2, 1, 500, total, True))
    assert driver.statuses == [(2, True)] and 2 not in snapshots.sending


def test_7_a_follower_that_died_while_installing_is_still_given_up(tmp_path):
    snapshots, driver, clock, sent, total = sender(tmp_path)
    clock.advance(SEND_TIMEOUT - 0.1)
    assert driver.statuses == []
    clock.advance(0.2)
    assert driver.statuses == [(2, False)] and 2 not in snapshots.sending
