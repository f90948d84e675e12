"""The parking state machine: exactly-once, highest seq wins, rejections, replay, atomicity."""

from __future__ import annotations

import math
import sqlite3

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from parkd.db import StorageError, open_engine
from parkd.parking.codec import FrameResult, encode
from parkd.parking.commands import command_of
from parkd.parking.state import (
    ApplyResult,
    CameraView,
    FrameRejected,
    FrameView,
    LotView,
    Outcome,
    ParkingState,
    Receipt,
    Rejection,
)
from parkd.raft.storage import SqliteStorage
from parkd.raft.types import Entry, EntryKind, HardState

LOTS = {"north": 100, "south": 60}


def frame(index: int, camera_id: int, seq: int, free: int, lot: str = "north", at: float | None = None):
    """A committed frame entry, captured at 1000 + seq unless ``at`` says otherwise."""
    captured_at = 1_000.0 + seq if at is None else at
    return Entry(index, 1, EntryKind.NORMAL, encode(FrameResult(camera_id, lot, seq, captured_at, free)))


def applied(index: int, camera_id: int, seq: int, free: int, lot: str = "north", started: bool = False) -> ApplyResult:
    """An applied frame of incarnation 0; ``started``: the first of its incarnation."""
    return ApplyResult(index, Outcome.APPLIED, camera_id, seq, lot, index, free, incarnation_started=started)


def dump(engine) -> dict[str, list[tuple]]:
    """Every row of the parking tables, to show that something changed nothing."""
    with engine.connect() as conn:
        return {
            t: conn.exec_driver_sql(f"SELECT * FROM {t} ORDER BY 1, 2").all()
            for t in ("lots", "cameras", "incarnations", "frames", "camera_registry", "applied")
        }


def test_fresh_state(state):
    assert state.last_applied() == 0
    assert state.lots() == [LotView("north", 100, None, 0, None), LotView("south", 60, None, 0, None)]
    assert state.cameras() == []
    assert state.frames(7) == []
    assert state.camera(7) is None


def test_apply_updates_camera_lot_and_history(state):
    results = state.apply([Entry(1, 1, EntryKind.NOOP), frame(2, 7, 1, 30), frame(3, 7, 2, 25, at=1_500.0)])
    assert results == [applied(2, 7, 1, 30, started=True), applied(3, 7, 2, 25)]
    assert state.last_applied() == 3
    assert state.cameras() == [CameraView(7, "north", 25, 2, 1_500.0)]
    assert state.camera(7) == CameraView(7, "north", 25, 2, 1_500.0)
    assert state.lots()[0] == LotView("north", 100, 25, 1, 1_500.0)
    assert state.frames(7) == [FrameView(1, 30, 1_001.0, 2), FrameView(2, 25, 1_500.0, 3)]


def test_one_lot_is_the_same_view_as_in_every_lot(state):
    assert state.lot("south") == LotView("south", 60, None, 0, None)
    state.apply([frame(1, 7, 1, 30), frame(2, 8, 1, 20), frame(3, 9, 1, 5, lot="south")])
    assert state.lot("north") == state.lots()[0]
    assert (state.lot("north").cameras, state.lot("south").cameras) == (2, 1)
    assert state.lot("south") == state.lots()[1]
    assert state.lot("west") is None


def test_duplicate_reports_the_original_and_changes_nothing(state, engine):
    state.apply([frame(1, 7, 1, 30), frame(2, 7, 1, 99)])  # a retry in the same batch
    before = dump(engine)
    # a retry in a later batch, even one that claims another lot or result
    results = state.apply([frame(3, 7, 1, 5), frame(4, 7, 1, 5, lot="south")])
    assert results == [
        ApplyResult(3, Outcome.DUPLICATE, 7, 1, "north", index=1, free=30),
        ApplyResult(4, Outcome.DUPLICATE, 7, 1, "south", index=1, free=30),
    ]
    assert all(r.duplicate for r in results)
    after = dump(engine)
    assert after.pop("applied") == [(1, 4)]
    before.pop("applied")
    assert after == before
    assert state.lookup(7, 0, 1) == Receipt(7, 1, 1, 30)


def test_highest_seq_wins_and_late_frames_join_the_history(state):
    state.apply([frame(1, 7, 5, 50)])
    assert state.apply([frame(2, 7, 3, 30)]) == [applied(2, 7, 3, 30)]
    assert state.camera(7) == CameraView(7, "north", 50, 5, 1_005.0)
    assert state.lots()[0].free == 50
    assert [f.seq for f in state.frames(7)] == [3, 5]
    assert state.lookup(7, 0, 3) == Receipt(7, 3, 2, 30)
    assert state.lookup(7, 0, 4) is None  # never applied


def test_lot_follows_the_camera_that_advanced_last(state):
    state.apply([frame(1, 7, 5, 10), frame(2, 8, 1, 20, at=900.0)])
    assert state.lots()[0] == LotView("north", 100, 20, 2, 900.0)  # log order, not capture time
    state.apply([frame(3, 7, 4, 30)])  # late: advances no camera
    assert state.lots()[0].free == 20
    state.apply([frame(4, 7, 6, 40)])
    assert state.lots()[0] == LotView("north", 100, 40, 2, 1_006.0)


@pytest.mark.parametrize(
    ("entry", "rejection", "reason"),
    [
        (frame(1, 7, 1, 5, lot="west"), Rejection.UNKNOWN_LOT, "unknown lot 'west'"),
        (frame(1, 7, 1, 61, lot="south"), Rejection.BAD_REQUEST, "free 61 is outside 0..60"),
        (frame(1, 7, 0, 5), Rejection.BAD_REQUEST, "seq 0"),
        (frame(1, 0, 1, 5), Rejection.BAD_REQUEST, "camera id 0"),
        (frame(1, 7, 2**63, 5), Rejection.BAD_REQUEST, "seq 9223372036854775808"),
        (frame(1, 7, 1, 5, at=math.nan), Rejection.BAD_REQUEST, "capture time nan"),
        (frame(1, 7, 1, 5, at=-math.inf), Rejection.BAD_REQUEST, "capture time -inf"),
    ],
    ids=["unknown-lot", "free-above-capacity", "seq-zero", "camera-zero", "seq-beyond-sqlite", "nan", "inf"],
)
def test_rejected_frames_leave_no_row_but_advance_last_applied(state, engine, entry, rejection, reason):
    before = dump(engine)
    [result] = state.apply([entry])
    assert (result.outcome, result.rejection) == (Outcome.REJECTED, rejection)
    assert result.index is result.free is None
    assert reason in result.reason
    assert state.last_applied() == 1
    after = dump(engine)
    assert after.pop("applied") == [(1, 1)]
    before.pop("applied")
    assert after == before


def test_undecodable_entry_is_rejected(state):
    [result] = state.apply([Entry(1, 1, EntryKind.NORMAL, b"garbage")])
    assert (result.outcome, result.camera_id, result.seq, result.rejection) == (
        Outcome.REJECTED, 0, 0, Rejection.BAD_REQUEST
    )
    assert state.last_applied() == 1


def test_camera_cannot_change_lot(state):
    results = state.apply([frame(1, 7, 1, 5), frame(2, 7, 2, 5, lot="south")])
    assert results[1].rejection is Rejection.LOT_MISMATCH
    assert results[1].reason == "camera 7 belongs to lot 'north', not 'south'"
    [later] = state.apply([frame(3, 7, 3, 5, lot="south")])
    assert later.rejection is Rejection.LOT_MISMATCH
    assert state.camera(7) == CameraView(7, "north", 5, 1, 1_001.0)
    assert state.lots()[1] == LotView("south", 60, None, 0, None)


def test_noop_and_config_entries_only_advance_last_applied(state, engine):
    before = dump(engine)
    assert state.apply([Entry(1, 1, EntryKind.NOOP), Entry(2, 1, EntryKind.CONFIG, b"{}")]) == []
    assert state.last_applied() == 2
    assert dump(engine) == {**before, "applied": [(1, 2)]}


def test_replayed_entries_are_skipped(state, engine):
    batch = [frame(1, 7, 1, 5), frame(2, 8, 1, 6)]
    state.apply(batch)
    before = dump(engine)
    assert state.apply(batch) == []
    assert dump(engine) == before
    assert state.apply([*batch, frame(3, 7, 2, 7)]) == [applied(3, 7, 2, 7)]


def test_gap_in_the_log_is_refused_untouched(state, engine):
    state.apply([frame(1, 7, 1, 5)])
    before = dump(engine)
    with pytest.raises(ValueError, match="gap"):
        state.apply([frame(3, 7, 2, 5)])
    with pytest.raises(ValueError, match="gap"):
        state.apply([frame(2, 7, 2, 5), frame(4, 7, 3, 5)])
    assert dump(engine) == before


def test_failure_mid_apply_writes_nothing(state, engine):
    state.apply([frame(1, 7, 1, 5)])
    before = dump(engine)
    batch = [frame(2, 7, 2, 6), frame(3, 8, 1, 7, lot="south")]

    def refuse_last_applied(action, table, *_):
        # SQLite itself fails the last statement, after frames, cameras and lots were written.
        return sqlite3.SQLITE_DENY if action == sqlite3.SQLITE_UPDATE and table == "applied" else sqlite3.SQLITE_OK

    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
    raw.set_authorizer(refuse_last_applied)
    with pytest.raises(StorageError, match="not authorized"):
        state.apply(batch)
    raw.set_authorizer(None)
    assert dump(engine) == before
    assert state.apply(batch) == [applied(2, 7, 2, 6), applied(3, 8, 1, 7, "south", started=True)]


def test_trimmed_history_still_deduplicates(state, engine):
    state.apply([frame(i, 7, i, i) for i in range(1, 6)])
    with engine.begin() as conn:  # what a retention job is required to do
        conn.exec_driver_sql("DELETE FROM frames WHERE camera_id = 7 AND seq <= 3")
        conn.exec_driver_sql("UPDATE incarnations SET trimmed_seq = 3 WHERE camera_id = 7")
    assert state.lookup(7, 0, 2) == Receipt(7, 2, None, None)
    assert state.apply([frame(6, 7, 2, 50)]) == [ApplyResult(6, Outcome.DUPLICATE, 7, 2, "north")]
    assert state.apply([frame(7, 7, 4, 50)]) == [ApplyResult(7, Outcome.DUPLICATE, 7, 4, "north", 4, 4)]
    assert [f.seq for f in state.frames(7)] == [4, 5]


def test_frames_query_pages_by_seq(state):
    state.apply([frame(i, 7, seq, seq) for i, seq in enumerate([4, 1, 3, 2, 5], start=1)])
    state.apply([frame(6, 8, 1, 1)])
    assert [f.seq for f in state.frames(7)] == [1, 2, 3, 4, 5]
    assert [f.seq for f in state.frames(7, since=2, limit=2)] == [3, 4]
    assert state.frames(7, since=5) == []


def test_validate_before_proposing(state):
    assert state.validate(7, "south", 1, 5.0, b"x" * 100) == 60
    cases = [
        ((7, "west", 1, 5.0, b""), Rejection.UNKNOWN_LOT, "unknown lot 'west' (lots: north, south)"),
        ((7, "north", 1, 5.0, b"x" * (2**20 + 1)), Rejection.PAYLOAD_TOO_LARGE, "exceeds"),
        ((7, "north", 0, 5.0, b""), Rejection.BAD_REQUEST, "seq 0"),
        ((2**32, "north", 1, 5.0, b""), Rejection.BAD_REQUEST, "camera id"),
        ((7, "north", 1, math.inf, b""), Rejection.BAD_REQUEST, "capture time inf"),
    ]
    state.apply([frame(1, 9, 1, 5, lot="south")])
    cases.append(((9, "north", 2, 5.0, b""), Rejection.LOT_MISMATCH, "camera 9 belongs to lot 'south'"))
    for args, code, message in cases:
        with pytest.raises(FrameRejected, match=message.replace("(", r"\(").replace(")", r"\)")) as raised:
            state.validate(*args)
        assert raised.value.code is code


def test_lots_table_follows_the_configuration(engine):
    state = ParkingState(engine, LOTS)
    state.apply([frame(1, 7, 1, 5)])
    state = ParkingState(engine, {"north": 120, "east": 10})
    assert state.lots() == [LotView("east", 10, None, 0, None), LotView("north", 120, 5, 1, 1_001.0)]
    [result] = state.apply([frame(2, 8, 1, 5, lot="south")])
    assert result.rejection is Rejection.UNKNOWN_LOT
    with pytest.raises(ValueError, match="capacity"):
        ParkingState(engine, {"north": -1})


# Frames from three cameras with repeats, late seqs, a foreign lot and an unknown one.
_stream = st.lists(
    st.tuples(
        st.integers(1, 3), st.integers(1, 8), st.integers(0, 60), st.sampled_from(["north", "south", "west"])
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(_stream, st.data())
def test_batching_does_not_change_the_outcome(stream, data):
    """Nodes apply committed entries in different batches; all must agree."""
    entries = [frame(i, cam, seq, free, lot) for i, (cam, seq, free, lot) in enumerate(stream, start=1)]
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(entries))))))
    one, many = open_engine("sqlite://"), open_engine("sqlite://")
    try:
        whole = ParkingState(one, LOTS).apply(entries)
        split_state = ParkingState(many, LOTS)
        split = []
        for lo, hi in zip([0, *cuts], [*cuts, len(entries)]):
            split += split_state.apply(entries[lo:hi])
        assert split == whole
        assert dump(many) == dump(one)
        assert len({r.key for r in whole if r.outcome is Outcome.APPLIED}) == sum(
            r.outcome is Outcome.APPLIED for r in whole
        )
    finally:
        one.dispose()
        many.dispose()


def test_shares_a_real_file_with_the_raft_log_and_survives_restart(tmp_path):
    path = str(tmp_path / "node.db")
    batch = [Entry(1, 1, EntryKind.NOOP), frame(2, 7, 1, 5), frame(3, 7, 2, 6)]
    engine = open_engine(path)
    storage, state = SqliteStorage(engine), ParkingState(engine, LOTS)
    storage.save(HardState(1, 1, 3), batch)
    state.apply(batch)
    engine.dispose()

    engine = open_engine(path)
    storage, state = SqliteStorage(engine), ParkingState(engine, LOTS)
    log = storage.load()
    assert log.hard_state == HardState(1, 1, 3) and log.entries == tuple(batch)
    assert state.last_applied() == 3
    assert state.apply(log.entries) == []  # resumes without replay
    assert state.apply([frame(4, 7, 2, 60)]) == [ApplyResult(4, Outcome.DUPLICATE, 7, 2, "north", 3, 6)]
    assert state.camera(7) == CameraView(7, "north", 6, 2, 1_002.0)
    engine.dispose()


# Mostly plausible frames, each field sometimes at or beyond the edge of what fits.
_any_result = st.builds(
    FrameResult,
    camera_id=st.integers(1, 3) | st.integers(0, 2**32 - 1),
    lot=st.sampled_from(["north", "south"]) | st.text(max_size=5),
    seq=st.integers(1, 4) | st.integers(0, 2**64 - 1),
    captured_at=st.floats(0, 2e9) | st.sampled_from([math.nan, math.inf, -math.inf]) | st.floats(),
    free=st.integers(0, 60) | st.integers(0, 2**32 - 1),
    incarnation=st.sampled_from([0, 1, 2**63, 2**64 - 1]) | st.integers(0, 2**64 - 1),
)
_any_data = st.builds(encode, _any_result) | st.binary(max_size=40)


@settings(max_examples=150, deadline=None)
@given(st.lists(_any_data, max_size=12))
@example(datas=[b"R" + bytes(8)])  # found by CI on 4 December: random bytes that are a retention entry
def test_no_committed_entry_can_stop_the_state_machine(datas):
    """Every node applies every committed entry, so apply must decide, never fail.

    Each entry that is not a command gets its result; random bytes can spell a
    command (``R`` and eight bytes of a finite cutoff is a retention entry),
    which yields none, as a NOOP does.
    """
    engine = open_engine("sqlite://")
    try:
        state = ParkingState(engine, LOTS)
        entries = [Entry(i, 1, EntryKind.NORMAL, d) for i, d in enumerate(datas, start=1)]
        results = state.apply(entries)
        assert [r.entry_index for r in results] == [e.index for e in entries if command_of(e) is None]
        assert state.last_applied() == len(datas)
    finally:
        engine.dispose()
