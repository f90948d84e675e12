"""Snapshots on a node: when to take one, and what Raft says about its index."""

from __future__ import annotations

from pathlib import Path

import pytest

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
