"""The nospace alarm (CONTRACT §10): a fake free-space function, the node's clock, the frame intake.

Below ``min_free_disk_mb`` the node raises ``nospace`` and answers new frames
with ``Unavailable``; a write that found the disk full raises it at once;
reads, retention and membership changes go on; it clears by itself.
"""

from __future__ import annotations

from twisted.logger import globalLogPublisher

from parkd.node.alarms import NOSPACE, Alarms
from parkd.node.disk import CHECK_INTERVAL_S, MIB, DiskMonitor, database_bytes
from parkd.node.events import StorageResumed, StorageStalled
from parkd.raft import messages as m

from test_service import make_node  # noqa: F401  (a fixture)


class Driver:
    """What the disk monitor reads of the driver: ``stalled`` and the event stream."""

    def __init__(self):
        self.stalled = False
        self._observers = []

    def subscribe(self, observer, *kinds):
        self._observers.append((kinds, observer))

    def publish(self, event):
        for kinds, observer in self._observers:
            if isinstance(event, kinds):
                observer(event)


class Disk:
    """A data dir's filesystem with ``free`` bytes left."""

    def __init__(self, free):
        self.free = free

    def __call__(self, path):
        return self.free


def monitor(free_mib=1000, min_free_mib=256):
    disk, driver, alarms = Disk(free_mib * MIB), Driver(), Alarms(node_id=4)
    return DiskMonitor("/data", "/data/node.db", alarms, min_free_mib * MIB, driver, free=disk), disk, driver, alarms


def logged_events():
    events = []
    globalLogPublisher.addObserver(events.append)
    return events, lambda: globalLogPublisher.removeObserver(events.append)


def test_nospace_is_raised_below_the_threshold_and_clears_a_margin_above_it():
    watch, disk, driver, alarms = monitor(free_mib=300)
    watch.check()
    assert alarms.active() == [] and watch.free_bytes == 300 * MIB
    disk.free = 255 * MIB
    watch.check()
    assert alarms.active() == [NOSPACE] and "255.0 MiB free" in alarms.reason(NOSPACE)
    disk.free = 270 * MIB  # above the threshold, not yet by a tenth of it: no flapping
    watch.check()
    assert alarms.active() == [NOSPACE]
    disk.free = 256 * MIB + 26 * MIB
    watch.check()
    assert alarms.active() == []


def test_the_margin_is_at_least_one_mib():
    watch, disk, driver, alarms = monitor(free_mib=3, min_free_mib=4)
    watch.check()
    assert alarms.active() == [NOSPACE]
    disk.free = 4 * MIB + MIB - 1
    watch.check()
    assert alarms.active() == [NOSPACE]
    disk.free = 5 * MIB
    watch.check()
    assert alarms.active() == []


def test_a_write_that_found_the_disk_full_raises_nospace_at_once_and_it_clears_after_the_write():
    watch, disk, driver, alarms = monitor(free_mib=1000)
    driver.stalled = True
    driver.publish(StorageStalled("database or disk is full", "persist"))
    assert alarms.active() == [NOSPACE] and "found the disk full" in alarms.reason(NOSPACE)
    watch.check()  # plenty of space reported, but the write has not gone through yet
    assert alarms.active() == [NOSPACE]
    driver.stalled = False
    driver.publish(StorageResumed(3.0))
    assert alarms.active() == []


def test_with_min_free_zero_only_a_full_disk_raises_it():
    watch, disk, driver, alarms = monitor(free_mib=0, min_free_mib=0)
    watch.check()
    assert alarms.active() == []
    driver.stalled = True
    driver.publish(StorageStalled("database or disk is full", "apply"))
    assert alarms.active() == [NOSPACE]
    driver.stalled = False
    driver.publish(StorageResumed(1.0))
    assert alarms.active() == []


def test_raising_and_clearing_log_one_event_each_with_the_alarms_name():
    events, stop = logged_events()
    try:
        watch, disk, driver, alarms = monitor(free_mib=10)
        for _ in range(3):
            watch.check()
        disk.free = 1000 * MIB
        for _ in range(3):
            watch.check()
    finally:
        stop()
    tagged = [(e["parkd_event"], e["name"]) for e in events if "parkd_event" in e]
    assert tagged == [("alarm_raised", NOSPACE), ("alarm_cleared", NOSPACE)]
    assert all(e["node_id"] == 4 for e in events if "parkd_event" in e)


def test_a_frame_refusal_names_the_alarm_and_is_counted():
    alarms = Alarms(node_id=2)
    assert alarms.frame_refusal() is None and alarms.refused == {NOSPACE: 0}
    alarms.raise_alarm(NOSPACE, "1.0 MiB free")
    assert alarms.frame_refusal() == "nospace alarm on node 2: 1.0 MiB free"
    alarms.frame_refusal()
    assert alarms.refused == {NOSPACE: 2}
    alarms.clear(NOSPACE, "space back")
    assert alarms.frame_refusal() is None and alarms.refused == {NOSPACE: 2}


def test_the_database_size_is_the_file_and_its_write_ahead_log(tmp_path):
    db = tmp_path / "node.db"
    assert database_bytes(str(db)) == 0
    db.write_bytes(b"x" * 4096)
    (tmp_path / "node.db-wal").write_bytes(b"y" * 1000)
    (tmp_path / "node.db-shm").write_bytes(b"z" * 32768)  # an index in shared memory, not data
    assert database_bytes(str(db)) == 5096


# -- on a node (NodeService on a MemoryReactorClock) ------------------------------------------------


def unavailable(node) -> list[str]:
    return [e.unavailable.reason for e in node.camera_received() if e.WhichOneof("body") == "unavailable"]


def acked(node) -> list[int]:
    return [e.frame_ack.seq for e in node.camera_received() if e.WhichOneof("body") == "frame_ack"]


def hold(node, seconds):
    """Let ``seconds`` pass on the node's clock while its peers answer its heartbeats (it stays leader)."""
    for _ in range(round(seconds / 0.1)):
        node.run(0.1)
        node.acknowledge()


def test_a_node_low_on_disk_refuses_new_frames_and_takes_them_again_once_space_returns(make_node):
    disk = Disk(1000 * MIB)
    node = make_node(disk_free=disk)
    node.elect()
    node.submit(1)
    node.acknowledge()
    assert acked(node) == [1]
    disk.free = 10 * MIB  # below the default 256 MiB
    hold(node, CHECK_INTERVAL_S)
    assert node.service.alarms.active() == [NOSPACE]
    last = node.core.last_index
    node.submit(2)
    assert node.core.last_index == last  # not proposed
    [reason] = unavailable(node)
    assert reason.startswith("nospace alarm on node 2: 10.0 MiB free")
    node.submit(1)  # a retry of an applied frame is answered from the state
    assert acked(node) == [1, 1]
    disk.free = 1000 * MIB
    hold(node, CHECK_INTERVAL_S)
    assert node.service.alarms.active() == []
    node.submit(2)
    node.acknowledge()
    assert acked(node) == [1, 1, 2]


def test_under_nospace_retention_membership_changes_and_reads_go_on(make_node):
    disk = Disk(10 * MIB)
    node = make_node(disk_free=disk)
    assert node.service.alarms.active() == [NOSPACE]  # checked before the node listens
    node.elect()
    index = node.core.last_index
    node.service._propose_retention()
    node.run()
    node.acknowledge()
    assert node.core.last_index == index + 1 and node.core.applied_index == index + 1
    node.link_up(1)  # the leader reaches node 1: removing 3 leaves a reachable majority
    removed = []
    node.service.membership.remove_node(3).addBoth(removed.append)
    node.run()
    node.acknowledge()
    assert node.core.membership.voters == (1, 2) and len(removed) == 1
    read = []
    node.service.reads.read().addBoth(read.append)
    node.run()
    node.deliver(m.AppendResponse(node.core.term, 1, 2, True, node.core.last_index, read_ctx=node.raft._reads.round))
    assert read == [node.core.commit_index]
    assert node.service.alarms.active() == [NOSPACE]
