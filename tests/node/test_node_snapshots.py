"""Snapshots on a node: when to take one, and what Raft says about its index."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from twisted.logger import globalLogPublisher

from parkd.config import Member, parse_address
from parkd.node.snapshots import CompactionPolicy
from parkd.parking.snapshot import read_snapshot_meta
from parkd.raft.types import EntryKind
from test_service import make_node  # noqa: F401  (the fixture: a started NodeService on a MemoryReactorClock)


def test_compaction_policy():
    policy = CompactionPolicy(max_entries=100, max_bytes=1_000, margin=10)
    assert not policy.should_snapshot(100, 1_000)
    assert policy.should_snapshot(101, 0) and policy.should_snapshot(0, 1_001)
    assert policy.compact_upto(500) == 490 and policy.compact_upto(5) == 0
    assert CompactionPolicy().margin > 0
    with pytest.raises(ValueError):
        CompactionPolicy(margin=-1)


def test_7_a_snapshot_records_the_term_and_configuration_of_its_pinned_index(make_node):
    """§7: the snapshot carries the last included term and the configuration as of that index.

    The node pins the state on the reactor thread and asks the core then; a
    configuration committed while the copy runs is not in the snapshot, and the core
    accepts the snapshot for compaction (it checks both against its log).
    """
    node = make_node()
    node.elect()
    for seq in (1, 2, 3):
        node.submit(seq)
    node.acknowledge()
    snapshots, core = node.service.snapshots, node.raft
    copy = snapshots.pin()  # the reactor's half; copy() is the snapshot thread's
    pinned_at = node.service.store.state.last_applied()
    assert pinned_at == core.applied_index > 1

    address = parse_address("127.0.0.1:9", "raft")
    node.service.membership.add_node(Member(4, address, parse_address("127.0.0.1:10", "client"),
                                            parse_address("127.0.0.1:11", "http")))  # fmt: skip
    node.run()
    node.acknowledge()
    node.submit(4)
    node.acknowledge()
    [change] = [e.index for e in core.log.slice(pinned_at + 1, core.last_index + 1) if e.kind is EntryKind.CONFIG]
    assert core.applied_index > change and core.learners == (4,)

    info = copy()
    assert Path(info.path + ".sha256").exists()  # hashed on the snapshot thread, not when the last chunk goes
    assert (info.index, info.term) == (pinned_at, core.log.term_at(pinned_at))
    assert (info.voters, info.learners) == ((1, 2, 3), ())
    assert read_snapshot_meta(info.path).config_index == 0
    later = snapshots.pin()()
    assert (later.index, later.learners) == (core.applied_index, (4,))
    assert read_snapshot_meta(later.path).config_index == change

    assert snapshots._taken(info) is info  # the core took it: not refused as inconsistent with its log
    assert core.snapshot == info.meta



def test_a_failed_snapshot_is_tried_again_after_a_pause_not_at_every_applied_batch(make_node):
    """A copy that fails (here: its directory is gone; on a full disk, every copy) is tried
    again after RETAKE_AFTER_S, not at every applied batch."""
    from parkd.node.snapshots import RETAKE_AFTER_S

    node = make_node()
    node.elect()
    manager = node.service.snapshots
    manager.policy = CompactionPolicy(max_entries=1, margin=0)
    shutil.rmtree(manager.directory)  # every copy fails until the directory is back
    events = []
    globalLogPublisher.addObserver(events.append)

    def tries():
        return len([e for e in events if "taking a snapshot failed" in e.get("log_format", "")])

    try:
        for seq in range(1, 6):
            node.submit(seq)
            node.acknowledge()
        assert tries() == 1 and manager.latest is None
        for _ in range(round(RETAKE_AFTER_S / 0.1) - 1):  # the peers keep answering: it stays leader
            node.run(0.1)
            node.acknowledge()
        node.submit(6)
        node.acknowledge()
        assert tries() == 1  # not yet
        node.run(0.1)
        node.acknowledge()
        node.submit(7)
        node.acknowledge()
        assert tries() == 2
    finally:
        globalLogPublisher.removeObserver(events.append)
