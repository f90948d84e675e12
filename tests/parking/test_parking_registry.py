"""The camera registry in the parking state (CONTRACT §9): disable/enable through the log."""

from __future__ import annotations

import pytest

from parkd.parking.codec import (
    CodecError,
    FrameResult,
    RegistryCommand,
    decode,
    decode_registry,
    encode,
    encode_registry,
    is_registry,
    is_retention,
)
from parkd.parking.state import CameraView, Outcome, ParkingState, Rejection
from parkd.raft.types import Entry, EntryKind


def frame(index: int, seq: int, camera_id: int = 7, inc: int = 5) -> Entry:
    result = FrameResult(camera_id, "north", seq, 1_000.0 + seq, seq % 50, inc)
    return Entry(index, 1, EntryKind.NORMAL, encode(result))


def registry(index: int, camera_id: int, enabled: bool) -> Entry:
    return Entry(index, 1, EntryKind.NORMAL, encode_registry(RegistryCommand(camera_id, enabled)))


def rows(engine, table: str) -> list[tuple]:
    with engine.connect() as conn:
        return conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY 1, 2").all()


# -- the entry ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [RegistryCommand(1, False), RegistryCommand(2**32 - 1, True)])
def test_registry_command_round_trips_and_is_told_apart(command):
    data = encode_registry(command)
    assert is_registry(data) and not is_retention(data)
    assert decode_registry(data) == command
    with pytest.raises(CodecError):
        decode(data)  # never mistaken for a frame result


@pytest.mark.parametrize("data", [b"C", b"C\x00\x07\x00\x00\x00\x00", b"C\x02\x07\x00\x00\x00", b"C\x00\x00\x00\x00\x00"],
                         ids=["short", "long", "bad-flag", "camera-0"])  # fmt: skip
def test_malformed_registry_data_is_refused(data):
    with pytest.raises(CodecError):
        decode_registry(data)


@pytest.mark.parametrize("camera_id", [0, 2**32])
def test_a_camera_id_outside_the_wire_range_cannot_be_encoded(camera_id):
    with pytest.raises(CodecError):
        encode_registry(RegistryCommand(camera_id, False))


# -- applying it -----------------------------------------------------------------------------------


def test_a_disabled_cameras_frames_are_refused_from_the_entry_on(state, engine):
    results = state.apply([frame(1, 1), registry(2, 7, False), frame(3, 2), frame(4, 1, camera_id=8)])
    assert [r.entry_index for r in results] == [1, 3, 4]  # a registry entry yields no result, like retention
    refused = results[1]
    assert (refused.outcome, refused.rejection) == (Outcome.REJECTED, Rejection.PERMISSION_DENIED)
    assert refused.reason == "camera 7 is disabled by an operator (parkctl camera enable 7)"
    assert refused.incarnation == 5 and refused.index is None
    assert results[2].outcome is Outcome.APPLIED  # another camera is not affected
    assert [(c, s) for c, _, s, *_ in rows(engine, "frames")] == [(7, 1), (8, 1)]  # the refused frame left no row
    assert state.last_applied() == 4
    assert state.camera(7) == CameraView(7, "north", 1, 1, 1_001.0, incarnation=5, enabled=False)
    assert state.disabled_cameras() == {7}
    assert rows(engine, "camera_registry") == [(7, False, 2)]


def test_after_enable_a_refused_frame_is_applied_exactly_once(state):
    state.apply([frame(1, 1), registry(2, 7, False)])
    [refused] = state.apply([frame(3, 2)])
    assert refused.rejection is Rejection.PERMISSION_DENIED
    results = state.apply([registry(4, 7, True), frame(5, 2), frame(6, 2), frame(7, 3)])
    assert [(r.outcome, r.index) for r in results] == [
        (Outcome.APPLIED, 5), (Outcome.DUPLICATE, 5), (Outcome.APPLIED, 7)
    ]  # fmt: skip
    assert state.camera(7).enabled and state.camera(7).last_seq == 3
    assert state.disabled_cameras() == set()


def test_even_a_retry_of_an_applied_frame_is_refused_while_disabled(state):
    """Refused, not acked: the camera keeps it and is acked with the original once enabled."""
    state.apply([frame(1, 1), registry(2, 7, False)])
    [retry] = state.apply([frame(3, 1)])
    assert retry.rejection is Rejection.PERMISSION_DENIED
    state.apply([registry(4, 7, True)])
    [again] = state.apply([frame(5, 1)])
    assert (again.outcome, again.index) == (Outcome.DUPLICATE, 1)


def test_a_camera_not_seen_yet_can_be_disabled(state):
    [result] = state.apply([registry(1, 9, False), frame(2, 1, camera_id=9)])
    assert result.rejection is Rejection.PERMISSION_DENIED
    assert state.camera(9) is None and state.disabled_cameras() == {9}


def test_disabling_twice_or_enabling_an_enabled_camera_changes_only_the_index(state, engine):
    state.apply([registry(1, 7, False), registry(2, 7, False), registry(3, 8, True)])
    assert rows(engine, "camera_registry") == [(7, False, 2), (8, True, 3)]
    assert state.disabled_cameras() == {7}


def test_a_malformed_registry_entry_is_rejected_like_any_undecodable_entry(state, engine):
    [result] = state.apply([Entry(1, 1, EntryKind.NORMAL, b"C\x05")])
    assert (result.outcome, result.camera_id, result.rejection) == (Outcome.REJECTED, 0, Rejection.BAD_REQUEST)
    assert rows(engine, "camera_registry") == [] and state.last_applied() == 1


def test_registry_entries_are_not_applied_twice_on_replay(state, engine):
    state.apply([registry(1, 7, False)])
    assert state.apply([registry(1, 7, True)]) == [] and state.disabled_cameras() == {7}


def test_batching_does_not_change_what_is_refused(engine):
    from parkd.db import open_engine

    entries = [frame(1, 1), registry(2, 7, False), frame(3, 2), registry(4, 7, True), frame(5, 2), frame(6, 3)]
    other = open_engine("sqlite://")
    try:
        one, many = ParkingState(engine, {"north": 100}), ParkingState(other, {"north": 100})
        whole = one.apply(entries)
        split = [r for e in entries for r in many.apply([e])]
        assert whole == split
        assert rows(engine, "frames") == rows(other, "frames")
    finally:
        other.dispose()
