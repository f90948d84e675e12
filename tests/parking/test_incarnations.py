"""Camera incarnations in the parking state (CONTRACT §9): exactly once per (camera, incarnation, seq).

A camera whose state dir was lost starts a new incarnation at seq 1; incarnations are
ordered by where their first frame sits in the log.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parkd.db import open_engine
from parkd.parking.codec import FrameResult, encode
from parkd.parking.retention import TrimResult, retention_entry
from parkd.parking.state import ApplyResult, CameraView, FrameView, IncarnationView, Outcome, ParkingState, Receipt
from parkd.raft.types import Entry, EntryKind

LOTS = {"north": 100, "south": 60}
OLD, NEW, NEWER = 0x1111, 2**64 - 2, 2**63  # incarnations; the last two stored as negative SQLite integers


def frame(index: int, inc: int, seq: int, free: int, camera_id: int = 7, at: float | None = None) -> Entry:
    captured_at = 1_000.0 + seq if at is None else at
    return Entry(index, 1, EntryKind.NORMAL, encode(FrameResult(camera_id, "north", seq, captured_at, free, inc)))


def test_a_new_incarnation_starts_at_seq_1_and_becomes_current(state):
    """The issue's bug: seq 1 of a camera with a fresh state dir was acked with its old seq 1's result."""
    state.apply([frame(1, OLD, 1, 10), frame(2, OLD, 2, 11), frame(3, OLD, 3, 12)])
    [first] = state.apply([frame(4, NEW, 1, 55, at=2_000.0)])
    assert first == ApplyResult(4, Outcome.APPLIED, 7, 1, "north", 4, 55, incarnation=NEW, incarnation_started=True)
    assert state.camera(7) == CameraView(7, "north", 55, 1, 2_000.0, incarnation=NEW)
    assert state.lots()[0].free == 55
    [second] = state.apply([frame(5, NEW, 2, 56)])
    assert second.outcome is Outcome.APPLIED and not second.incarnation_started
    assert state.camera(7).last_seq == 2
    assert state.incarnations(7) == [IncarnationView(OLD, 3, 0, 4), IncarnationView(NEW, 2, 0, None)]


def test_the_first_frame_of_a_camera_starts_its_first_incarnation(state):
    [result] = state.apply([frame(1, OLD, 5, 10)])
    assert result.incarnation_started and result.incarnation == OLD


def test_exactly_once_is_per_incarnation(state):
    results = state.apply([frame(1, OLD, 1, 10), frame(2, NEW, 1, 20), frame(3, NEW, 1, 99), frame(4, OLD, 1, 98)])
    assert [r.outcome for r in results] == [Outcome.APPLIED, Outcome.APPLIED, Outcome.DUPLICATE, Outcome.DUPLICATE]
    assert (results[2].index, results[2].free) == (2, 20)  # the new incarnation's own seq 1
    assert (results[3].index, results[3].free) == (1, 10)  # the old one's
    assert state.lookup(7, OLD, 1) == Receipt(7, 1, 1, 10, OLD)
    assert state.lookup(7, NEW, 1) == Receipt(7, 1, 2, 20, NEW)
    assert state.lookup(7, NEWER, 1) is None


def test_a_late_retry_of_an_older_incarnation_lands_in_history_once_and_never_overwrites(state):
    state.apply([frame(1, OLD, 1, 10), frame(2, NEW, 1, 20, at=1_500.0)])
    [late] = state.apply([frame(3, OLD, 2, 30, at=1_900.0)])  # sent before the old state dir was lost
    assert late.outcome is Outcome.APPLIED and not late.incarnation_started
    assert state.camera(7) == CameraView(7, "north", 20, 1, 1_500.0, incarnation=NEW)
    assert state.lots()[0].free == 20
    assert state.frames(7, incarnation=OLD) == [FrameView(1, 10, 1_001.0, 1, OLD), FrameView(2, 30, 1_900.0, 3, OLD)]
    [again] = state.apply([frame(4, OLD, 2, 31)])
    assert (again.outcome, again.index, again.free) == (Outcome.DUPLICATE, 3, 30)
    # Its trend: the late frame changed nothing, so the lot's history does not show it either.
    _, points = state.history("north", 0.0, 3_000.0, 3_000)
    assert [p.free for p in points] == [10, 20]


def test_incarnations_are_ordered_by_their_first_frame_in_the_log_not_by_number(state):
    state.apply([frame(1, NEWER, 1, 10), frame(2, OLD, 1, 20)])  # OLD < NEWER, but its first frame is later
    assert state.camera(7).incarnation == OLD
    state.apply([frame(3, NEWER, 2, 30)])
    assert (state.camera(7).incarnation, state.camera(7).free) == (OLD, 20)
    assert [i.incarnation for i in state.incarnations(7)] == [NEWER, OLD]


def test_a_third_incarnation_supersedes_the_second(state):
    state.apply([frame(1, OLD, 1, 10), frame(2, NEW, 1, 20), frame(3, NEWER, 1, 30), frame(4, NEW, 2, 40)])
    assert state.camera(7) == CameraView(7, "north", 30, 1, 1_001.0, incarnation=NEWER)
    assert [(i.incarnation, i.superseded_index) for i in state.incarnations(7)] == [
        (OLD, 2), (NEW, 3), (NEWER, None)
    ]  # fmt: skip


def test_the_frames_query_reads_one_incarnation_default_the_current(state):
    state.apply([frame(1, OLD, 1, 10), frame(2, OLD, 2, 11), frame(3, NEW, 1, 20)])
    assert state.frames(7) == [FrameView(1, 20, 1_001.0, 3, NEW)]
    assert [f.seq for f in state.frames(7, since=1, incarnation=OLD)] == [2]
    assert state.frames(7, incarnation=NEWER) == []
    assert state.frames(8) == []


@pytest.mark.parametrize("deleted", [False, True], ids=["cut pending", "rows deleted"])
def test_retention_trims_each_incarnation_and_keeps_its_newest_frame(state, engine, deleted):
    state.apply([frame(i, OLD, i, i) for i in range(1, 5)] + [frame(4 + i, NEW, i, i) for i in range(1, 4)])
    state.apply([Entry(8, 1, EntryKind.NORMAL, retention_entry(1e9))])
    if deleted:  # the node's next turn; readers and retries see the same either way
        assert state.trim_step().done == TrimResult(8, 1e9, 5)
    assert [f.seq for f in state.frames(7, incarnation=OLD)] == [4]
    assert [f.seq for f in state.frames(7)] == [3]
    assert [(i.incarnation, i.trimmed_seq) for i in state.incarnations(7)] == [(OLD, 3), (NEW, 2)]
    # Each incarnation keeps its dedup position: retries are duplicates, in either incarnation.
    retries = state.apply([frame(9, OLD, 2, 99), frame(10, NEW, 2, 99), frame(11, OLD, 4, 99)])
    assert [(r.outcome, r.index) for r in retries] == [
        (Outcome.DUPLICATE, None), (Outcome.DUPLICATE, None), (Outcome.DUPLICATE, 4)
    ]  # fmt: skip
    assert state.camera(7) == CameraView(7, "north", 3, 3, 1_003.0, incarnation=NEW)


def test_a_camera_keeps_its_lot_across_incarnations(state):
    state.apply([frame(1, OLD, 1, 10)])
    elsewhere = Entry(2, 1, EntryKind.NORMAL, encode(FrameResult(7, "south", 1, 1_000.0, 5, NEW)))
    [result] = state.apply([elsewhere])
    assert result.outcome is Outcome.REJECTED and "belongs to lot 'north'" in result.reason
    assert state.incarnations(7) == [IncarnationView(OLD, 1, 0, None)]


# Frames of two cameras from three incarnations each, in any order, in any batches.
_stream = st.lists(
    st.tuples(st.integers(7, 8), st.sampled_from([OLD, NEW, NEWER]), st.integers(1, 5), st.integers(0, 60)),
    max_size=30,
)


@settings(max_examples=80, deadline=None)
@given(_stream, st.data())
def test_current_value_follows_the_newest_incarnation_in_any_batching(stream, data):
    entries = [frame(i, inc, seq, free, cam) for i, (cam, inc, seq, free) in enumerate(stream, start=1)]
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(entries))))))
    one, many = open_engine("sqlite://"), open_engine("sqlite://")
    try:
        whole_state, split_state = ParkingState(one, LOTS), ParkingState(many, LOTS)
        whole = whole_state.apply(entries)
        split = []
        for lo, hi in zip([0, *cuts], [*cuts, len(entries)]):
            split += split_state.apply(entries[lo:hi])
        assert split == whole
        assert whole_state.cameras() == split_state.cameras()
        applied = [r for r in whole if r.outcome is Outcome.APPLIED]
        assert len({r.key for r in applied}) == len(applied)  # exactly once per (camera, incarnation, seq)
        for camera in whole_state.cameras():
            mine = [r for r in applied if r.camera_id == camera.camera_id]
            newest = max(mine, key=lambda r: min(x.index for x in mine if x.incarnation == r.incarnation))
            top = max((r for r in mine if r.incarnation == newest.incarnation), key=lambda r: r.seq)
            assert (camera.incarnation, camera.last_seq, camera.free) == (newest.incarnation, top.seq, top.free)
            started = [r.incarnation for r in mine if r.incarnation_started]
            assert started == sorted(set(started), key=started.index)  # once each, in log order
            assert [i.incarnation for i in whole_state.incarnations(camera.camera_id)] == started
    finally:
        one.dispose()
        many.dispose()


@pytest.mark.parametrize("inc", [0, 1, 2**63 - 1, 2**63, 2**64 - 1])
def test_every_64_bit_incarnation_is_stored_and_read_back(state, inc):
    state.apply([frame(1, inc, 1, 10)])
    assert state.camera(7).incarnation == inc
    assert state.frames(7, incarnation=inc)[0].incarnation == inc
    assert state.lookup(7, inc, 1) == Receipt(7, 1, 1, 10, inc)
    assert state.applied_seqs() == {(7, inc): 1}
