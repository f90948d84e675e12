"""The cluster identity in the parking state (CONTRACT §10 "Cluster id"): the cluster id and
the members' data-dir ids are replicated state, applied at their log positions."""

from __future__ import annotations

import json

import pytest

from parkd.parking.codec import (
    ClusterIdCommand,
    CodecError,
    FrameResult,
    MemberDataDir,
    decode,
    decode_cluster_id,
    decode_member_data_dir,
    encode,
    encode_cluster_id,
    encode_member_data_dir,
    is_cluster_id,
    is_id,
    is_member_data_dir,
    is_registry,
    is_retention,
)
from parkd.parking.snapshot import pin_state, read_snapshot_meta, restore_snapshot
from parkd.parking.state import Outcome, ParkingState
from parkd.db import open_engine
from parkd.raft import confchange
from parkd.raft.confchange import ConfChange, ConfChangeOp
from parkd.raft.types import Entry, EntryKind

CLUSTER, OTHER = "0123456789abcdef" * 2, "fedcba9876543210" * 2
DIR_1, DIR_2, DIR_3, DIR_4 = ("%02d" % n * 16 for n in (11, 22, 33, 44))


def cluster_entry(index: int, cluster_id: str = CLUSTER) -> Entry:
    return Entry(index, 1, EntryKind.NORMAL, encode_cluster_id(ClusterIdCommand(cluster_id)))


def data_dir_entry(index: int, node_id: int, data_dir_id: str) -> Entry:
    return Entry(index, 1, EntryKind.NORMAL, encode_member_data_dir(MemberDataDir(node_id, data_dir_id)))


def config_entry(index: int, op: ConfChangeOp, node_id: int, voters, learners=()) -> Entry:
    return Entry(index, 1, EntryKind.CONFIG, confchange.encode(ConfChange(op, node_id, b"", tuple(voters), tuple(learners))))


def frame(index: int, seq: int) -> Entry:
    return Entry(index, 1, EntryKind.NORMAL, encode(FrameResult(7, "north", seq, 1_000.0 + seq, seq)))


# -- the entries -------------------------------------------------------------------------------


def test_ids_are_32_lowercase_hex_digits():
    assert is_id(CLUSTER) and is_id("0" * 32)
    assert not any(is_id(x) for x in ("", "0" * 31, "0" * 33, "0123456789ABCDEF" * 2, "g" * 32, None, 5))


def test_a_cluster_id_command_round_trips_and_is_told_apart():
    data = encode_cluster_id(ClusterIdCommand(CLUSTER))
    assert len(data) == 17
    assert is_cluster_id(data) and not (is_member_data_dir(data) or is_registry(data) or is_retention(data))
    assert decode_cluster_id(data) == ClusterIdCommand(CLUSTER)
    with pytest.raises(CodecError):
        decode(data)  # never mistaken for a frame result


def test_a_member_data_dir_command_round_trips_and_is_told_apart():
    data = encode_member_data_dir(MemberDataDir(2**32 - 1, DIR_1))
    assert is_member_data_dir(data) and not (is_cluster_id(data) or is_registry(data) or is_retention(data))
    assert decode_member_data_dir(data) == MemberDataDir(2**32 - 1, DIR_1)
    with pytest.raises(CodecError):
        decode(data)


@pytest.mark.parametrize("data", [b"I", b"I" + bytes(17), b"D" + bytes(19), b"D" + bytes(21), b"D" + bytes(4) + bytes(16)],
                         ids=["cluster-short", "cluster-long", "dir-short", "dir-long", "dir-node-0"])  # fmt: skip
def test_malformed_identity_data_is_refused(data):
    decoder = decode_cluster_id if data[:1] == b"I" else decode_member_data_dir
    with pytest.raises(CodecError):
        decoder(data)


@pytest.mark.parametrize("command", [ClusterIdCommand("abc"), ClusterIdCommand(CLUSTER.upper()),
                                     MemberDataDir(0, DIR_1), MemberDataDir(2**32, DIR_1), MemberDataDir(1, "x" * 32)])  # fmt: skip
def test_what_cannot_be_an_identity_entry_is_not_encoded(command):
    encoder = encode_cluster_id if isinstance(command, ClusterIdCommand) else encode_member_data_dir
    with pytest.raises(CodecError):
        encoder(command)


# -- applying ----------------------------------------------------------------------------------


def test_no_cluster_id_until_its_entry_is_applied_then_the_first_one_stays(state):
    assert state.cluster_id() is None
    state.apply([Entry(1, 1, EntryKind.NOOP), frame(2, 1)])
    assert state.cluster_id() is None
    state.apply([cluster_entry(3), frame(4, 2), cluster_entry(5, OTHER)])  # a second leader proposed one too
    assert state.cluster_id() == CLUSTER
    assert state.last_applied() == 5


def test_identity_entries_take_effect_at_their_position_between_frames(state):
    results = state.apply([frame(1, 1), cluster_entry(2), data_dir_entry(3, 1, DIR_1), frame(4, 2)])
    assert [(r.outcome, r.index) for r in results] == [(Outcome.APPLIED, 1), (Outcome.APPLIED, 4)]
    assert state.cluster_id() == CLUSTER and state.member_data_dirs() == {1: DIR_1}
    assert state.camera(7).last_seq == 2


def test_a_member_data_dir_is_recorded_and_replaced(state):
    state.apply([data_dir_entry(1, 1, DIR_1), data_dir_entry(2, 2, DIR_2)])
    assert state.member_data_dirs() == {1: DIR_1, 2: DIR_2}
    state.apply([data_dir_entry(3, 2, DIR_3)])
    assert state.member_data_dirs() == {1: DIR_1, 2: DIR_3}


def test_a_config_entry_retires_the_records_of_nodes_it_leaves_out(state):
    """Removing a member retires its data dir (it may not come back as the member); added
    again on a new data dir, it is recorded anew."""
    state.apply([data_dir_entry(1, 1, DIR_1), data_dir_entry(2, 2, DIR_2), data_dir_entry(3, 3, DIR_3)])
    state.apply([config_entry(4, ConfChangeOp.ADD_LEARNER, 4, (1, 2, 3), (4,)), data_dir_entry(5, 4, DIR_4)])
    assert state.member_data_dirs() == {1: DIR_1, 2: DIR_2, 3: DIR_3, 4: DIR_4}  # a learner keeps its record
    state.apply([config_entry(6, ConfChangeOp.REMOVE, 2, (1, 3), (4,))])
    assert state.member_data_dirs() == {1: DIR_1, 3: DIR_3, 4: DIR_4}
    assert state.member_data_dirs(retired=True) == {2: DIR_2}
    state.apply([config_entry(7, ConfChangeOp.FORCE, 1, (1,))])  # --force-new-cluster on node 1
    assert state.member_data_dirs() == {1: DIR_1}
    assert state.member_data_dirs(retired=True) == {2: DIR_2, 3: DIR_3, 4: DIR_4}
    dir_5 = DIR_1.replace("1", "5")
    state.apply([config_entry(8, ConfChangeOp.ADD_LEARNER, 2, (1,), (2,)), data_dir_entry(9, 2, dir_5)])
    assert state.member_data_dirs() == {1: DIR_1, 2: dir_5}
    assert state.member_data_dirs(retired=True) == {3: DIR_3, 4: DIR_4}
    assert state.last_applied() == 9


def test_a_malformed_identity_entry_is_rejected_like_any_undecodable_entry(state):
    [rejected] = state.apply([Entry(1, 1, EntryKind.NORMAL, b"I" + bytes(3)), data_dir_entry(2, 1, DIR_1)])
    assert rejected.outcome is Outcome.REJECTED
    assert state.cluster_id() is None and state.member_data_dirs() == {1: DIR_1}


def test_replace_cluster_identity_makes_the_state_that_of_a_new_cluster(state):
    """Offline, for ``parkctl restore``: a new id, no member data dir."""
    state.apply([cluster_entry(1), data_dir_entry(2, 1, DIR_1), frame(3, 1)])
    state.replace_cluster_identity(OTHER)
    assert state.cluster_id() == OTHER and state.member_data_dirs() == {}
    assert state.last_applied() == 3 and state.camera(7).last_seq == 1
    with pytest.raises(ValueError, match="not 32 lowercase hex digits"):
        state.replace_cluster_identity("restored")
    assert state.cluster_id() == OTHER


def test_the_identity_travels_in_snapshots(tmp_path):
    leader_path, follower_path = str(tmp_path / "leader.db"), str(tmp_path / "follower.db")
    leader, follower = open_engine(leader_path), open_engine(follower_path)
    try:
        ParkingState(leader, {"north": 100}).apply([cluster_entry(1), data_dir_entry(2, 1, DIR_1), frame(3, 1)])
        receiving = ParkingState(follower, {"north": 100})
        with pin_state(leader_path) as pinned:
            info = pinned.write(tmp_path / "snap.db", term=1, voters=[1], learners=[], config_index=0)
        assert read_snapshot_meta(info.path).meta.index == 3
        restore_snapshot(follower, info.path, lambda conn: None)
        assert receiving.cluster_id() == CLUSTER and receiving.member_data_dirs() == {1: DIR_1}
    finally:
        leader.dispose()
        follower.dispose()


def test_a_config_entry_no_codec_can_read_changes_no_record(state):
    state.apply([data_dir_entry(1, 1, DIR_1), Entry(2, 1, EntryKind.CONFIG, json.dumps({"x": 1}).encode())])
    assert state.member_data_dirs() == {1: DIR_1}
