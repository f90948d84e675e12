"""Frame-history retention: trimmed at a log position, dedup and current values survive it."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from parkd.db import open_engine
from parkd.parking.codec import (
    CodecError,
    FrameResult,
    Retention,
    decode,
    decode_retention,
    encode,
    encode_retention,
    is_retention,
)
from parkd.parking.retention import (
    _AFTER_FRAME,
    _NEXT_FRAMES,
    RetentionPolicy,
    TrimResult,
    ensure_retention_index,
    retention_entry,
    trim_history,
)
from parkd.parking.schema import incarnation_to_db
from parkd.parking.state import ApplyResult, Outcome, ParkingState, Receipt
from parkd.raft.types import Entry, EntryKind

LOTS = {"north": 100, "south": 60}


def frame(
    index: int, camera_id: int, seq: int, free: int = 10, lot: str = "north", at: float | None = None, inc: int = 0
):
    """A committed frame entry of incarnation ``inc``, captured at 1000 + 10 * seq unless ``at`` says otherwise."""
    captured_at = 1_000.0 + 10 * seq if at is None else at
    return Entry(index, 1, EntryKind.NORMAL, encode(FrameResult(camera_id, lot, seq, captured_at, free, inc)))


def retention(index: int, cutoff: float) -> Entry:
    return Entry(index, 1, EntryKind.NORMAL, retention_entry(cutoff))


TABLES = ("lots", "cameras", "incarnations", "frames", "lot_buckets", "retention_cuts", "camera_registry", "applied")


def dump(engine) -> dict[str, list[tuple]]:
    with engine.connect() as conn:
        return {t: sorted(conn.exec_driver_sql(f"SELECT * FROM {t}").all(), key=repr) for t in TABLES}


def drain(state, max_rows: int = 1 << 20) -> list[TrimResult]:
    """Delete every pending cut's rows, as the node's later turns do; the cuts done."""
    done = []
    while True:
        step = state.trim_step(max_rows)
        if step.done:
            done.append(step.done)
        if not step.pending:
            return done


def view(state) -> dict:
    """Everything a reader or the next apply sees of the state (none of it the deletion's progress)."""
    with state.engine.connect() as conn:
        keys = conn.exec_driver_sql("SELECT camera_id, incarnation FROM incarnations ORDER BY 1, 2").all()
    incarnations = {camera_id: state.incarnations(camera_id) for camera_id, _ in keys}
    frames = {
        (camera_id, i.incarnation): state.frames(camera_id, limit=10_000, incarnation=i.incarnation)
        for camera_id, views in incarnations.items()
        for i in views
    }
    trend = {lot: state.history(lot, -1e12, 1e12, 1_000) for lot in LOTS}
    return {"lots": state.lots(), "cameras": state.cameras(), "incarnations": incarnations, "frames": frames,
            "trend": trend, "applied": state.last_applied()}  # fmt: skip


def seqs(state, camera_id: int, inc: int | None = None) -> list[int]:
    """The seqs in the history of the camera's incarnation ``inc`` (default: its current one)."""
    return [f.seq for f in state.frames(camera_id, limit=10_000, incarnation=inc)]


def trimmed_seq(engine, camera_id: int, inc: int = 0) -> int:
    with engine.connect() as conn:
        return conn.exec_driver_sql(
            f"SELECT trimmed_seq FROM incarnations WHERE camera_id = {camera_id} AND incarnation = {inc}"
        ).scalar()


# -- the entry format -----------------------------------------------------------------------


def test_retention_command_round_trips_and_is_told_apart_from_frames():
    data = encode_retention(Retention(1_234.5))
    assert decode_retention(data) == Retention(1_234.5)
    assert is_retention(data) and len(data) == 9
    assert not is_retention(encode(FrameResult(7, "north", 1, 1.0, 5)))
    assert not is_retention(b"")
    with pytest.raises(CodecError):  # a node that only knows frames rejects it, changing nothing
        decode(data)


@pytest.mark.parametrize("cutoff", [math.nan, math.inf, -math.inf])
def test_a_cutoff_must_be_finite(cutoff):
    with pytest.raises(CodecError):
        encode_retention(Retention(cutoff))
    with pytest.raises(CodecError):
        decode_retention(b"R" + struct.pack("<d", cutoff))


def test_malformed_retention_data_is_refused():
    with pytest.raises(CodecError):
        decode_retention(b"R\x00")


# -- trimming ---------------------------------------------------------------------------------


def test_trim_deletes_frames_before_the_cutoff_and_raises_trimmed_seq(state, engine):
    state.apply([frame(i, 7, i) for i in range(1, 11)])  # captured at 1010 .. 1100
    before = state.cameras(), state.lots()
    results = state.apply([retention(11, 1_055.0)])
    assert results == []  # like a NOOP: no frame, nothing to ack
    # At once for readers: the cut hides what it dooms; no row is deleted yet.
    assert seqs(state, 7) == [6, 7, 8, 9, 10]
    assert state.incarnations(7)[0].trimmed_seq == 5 and trimmed_seq(engine, 7) == 0
    assert len(dump(engine)["frames"]) == 10 and state.trims_pending()
    assert (state.cameras(), state.lots()) == before  # current values untouched
    assert state.last_applied() == 11
    seen = view(state)
    assert drain(state) == [TrimResult(11, 1_055.0, 5)]
    assert view(state) == seen and trimmed_seq(engine, 7) == 5
    assert len(dump(engine)["frames"]) == 5 and not state.trims_pending()


def test_each_cameras_current_frame_is_kept_however_old(state, engine):
    state.apply([frame(1, 7, 1), frame(2, 8, 1, lot="north"), frame(3, 8, 2)])
    state.apply([retention(4, 1e9)])
    assert seqs(state, 7) == [1] and seqs(state, 8) == [2]
    assert drain(state) == [TrimResult(4, 1e9, 1)]
    assert seqs(state, 7) == [1] and seqs(state, 8) == [2]
    assert trimmed_seq(engine, 7) == 0 and trimmed_seq(engine, 8) == 1


def test_a_retry_of_a_trimmed_frame_is_still_a_duplicate(state, engine):
    state.apply([frame(i, 7, i, free=i) for i in range(1, 6)])
    state.apply([retention(6, 1_035.0)])  # deletes seqs 1..3
    after_trim = dump(engine)
    results = state.apply([frame(7, 7, 2, free=99), frame(8, 7, 3, free=98)])
    assert [r.outcome for r in results] == [Outcome.DUPLICATE, Outcome.DUPLICATE]
    assert results[0] == ApplyResult(7, Outcome.DUPLICATE, 7, 2, "north")  # no index: trimmed
    assert state.lookup(7, 0, 2) == Receipt(7, 2, None, None)
    changed = dump(engine)
    assert changed.pop("applied") != after_trim.pop("applied")
    assert changed == after_trim  # never re-applied: no row came back


def test_a_duplicate_of_a_kept_frame_still_reports_the_original(state):
    state.apply([frame(i, 7, i, free=i) for i in range(1, 6)])
    state.apply([retention(6, 1_035.0)])
    assert state.apply([frame(7, 7, 4, free=0)]) == [ApplyResult(7, Outcome.DUPLICATE, 7, 4, "north", 4, 4)]


def test_a_late_frame_above_trimmed_seq_is_recorded(state, engine):
    state.apply([frame(1, 7, 1), frame(2, 7, 2), frame(3, 7, 5)])
    state.apply([retention(4, 1_025.0)])  # deletes seqs 1, 2
    assert state.apply([frame(5, 7, 4, free=44)])[0].outcome is Outcome.APPLIED
    assert seqs(state, 7) == [4, 5]
    assert state.camera(7).last_seq == 5  # a late frame does not overwrite


def test_trimmed_seq_never_goes_down(state, engine):
    state.apply([frame(i, 7, i) for i in range(1, 11)])
    state.apply([retention(11, 1_075.0), retention(12, 1_020.0)])
    assert state.incarnations(7)[0].trimmed_seq == 7
    assert drain(state) == [TrimResult(11, 1_075.0, 7), TrimResult(12, 1_020.0, 0)]
    assert trimmed_seq(engine, 7) == 7


def test_the_entry_trims_at_its_position_in_a_batch(state, engine):
    state.apply([frame(1, 7, 1), frame(2, 7, 2)])
    results = state.apply(
        [
            frame(3, 7, 3, at=1_000.0),  # before the entry: old, so trimmed by it
            frame(4, 7, 4, at=1_000.0),  # the current frame when the entry applies: kept
            retention(5, 1_500.0),
            frame(6, 7, 3),  # a retry right after: a duplicate of a trimmed frame
            frame(7, 8, 1, at=1_000.0),  # old but after the entry: kept until the next one
        ]
    )
    assert [r.entry_index for r in results] == [3, 4, 6, 7]
    applied, duplicate = Outcome.APPLIED, Outcome.DUPLICATE
    assert [r.outcome for r in results] == [applied, applied, duplicate, applied]
    assert seqs(state, 7) == [4] and seqs(state, 8) == [1]
    assert state.incarnations(7)[0].trimmed_seq == 3
    assert state.last_applied() == 7
    drain(state)
    assert seqs(state, 7) == [4] and seqs(state, 8) == [1] and trimmed_seq(engine, 7) == 3


def test_a_malformed_retention_entry_is_rejected_like_any_undecodable_entry(state, engine):
    state.apply([frame(1, 7, 1), frame(2, 7, 2)])
    before = dump(engine)
    [result] = state.apply([Entry(3, 1, EntryKind.NORMAL, b"R\x01")])
    assert result.outcome is Outcome.REJECTED and result.camera_id == 0
    after = dump(engine)
    assert after.pop("applied") == [(1, 3)]
    before.pop("applied")
    assert after == before


def test_replayed_retention_entries_are_skipped(state, engine):
    state.apply([frame(1, 7, 1), frame(2, 7, 2), retention(3, 1_015.0)])
    snapshot = dump(engine)
    assert state.apply([frame(1, 7, 1), frame(2, 7, 2), retention(3, 1e9)]) == []
    assert dump(engine) == snapshot


def test_trim_history_on_its_own_does_not_move_last_applied(state, engine):
    state.apply([frame(i, 7, i) for i in range(1, 5)])
    assert trim_history(state, 1_025.0) == TrimResult(5, 1_025.0, 2)  # a cut after the last entry applied
    assert trim_history(engine, 1_025.0) == TrimResult(5, 1_025.0, 0)
    with engine.connect() as conn:
        assert trim_history(conn, 1_035.0) == TrimResult(5, 1_035.0, 1)
    assert state.last_applied() == 4 and seqs(state, 7) == [4] and trimmed_seq(engine, 7) == 3
    assert not state.trims_pending()


def test_a_non_finite_cutoff_is_refused(state):
    with pytest.raises(ValueError):
        trim_history(state, math.nan)


def test_the_index_changes_nothing_but_speed(tmp_path):
    entries = [frame(i, 1 + i % 3, 1 + i // 3, at=1_000.0 + (i * 37) % 100) for i in range(1, 60)]
    entries += [retention(60, 1_050.0)] + [frame(61 + i, 1 + i % 3, 30 + i) for i in range(6)]
    engines = [open_engine(str(tmp_path / f"{name}.db")) for name in ("plain", "indexed")]
    states = [ParkingState(e, LOTS) for e in engines]
    ensure_retention_index(engines[1])
    ensure_retention_index(engines[1])  # idempotent
    for s in states:
        s.apply(entries)
    done = [drain(s, max_rows=7) for s in states]
    assert done[0] == done[1] and done[0][0].frames_deleted > 0
    assert dump(engines[0]) == dump(engines[1])
    with engines[1].connect() as conn:  # a batch walks the frames along the index
        conn.exec_driver_sql('INSERT INTO retention_cuts ("index", cutoff, frames_at) VALUES (99, 5, 1)')
        query = _NEXT_FRAMES.format(after=_AFTER_FRAME)
        params = {"cut": 99, "limit": 9, "at": 1, "camera": 1, "inc": 0, "seq": 1}
        plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}", params).all()
    # along the index from the cursor on; only frames with the same capture time are sorted
    assert "frames_by_captured_at (captured_at>?" in str(plan) and "RIGHT PART OF ORDER BY" in str(plan), plan
    for e in engines:
        e.dispose()


# -- the same entries, with and without retention -----------------------------------------------

_ops = st.lists(
    st.one_of(
        # a frame: camera, seq, captured_at offset, incarnation (a camera whose state dir was replaced)
        st.tuples(st.integers(1, 3), st.integers(1, 25), st.integers(0, 300), st.sampled_from([0, 0, 0, 5, 2**64 - 1])),
        # a retention entry: cutoff
        st.tuples(st.integers(0, 320)),
    ),
    max_size=60,
)


def _entries(ops) -> tuple[list[Entry], list[Entry]]:
    """The same frames as log entries with the retention entries, and as NOOPs instead."""
    with_retention, without = [], []
    for index, op in enumerate(ops, start=1):
        if len(op) == 1:
            with_retention.append(retention(index, 1_000.0 + op[0]))
            without.append(Entry(index, 1, EntryKind.NOOP))
        else:
            camera_id, seq, at, inc = op
            entry = frame(index, camera_id, seq, free=(seq * 7) % 60, lot="south", at=1_000.0 + at, inc=inc)
            with_retention.append(entry)
            without.append(entry)
    return with_retention, without


@settings(max_examples=80, deadline=None)
@given(_ops, st.integers(1, 8))
def test_retention_never_reapplies_and_never_changes_current_values(ops, batch):
    with_retention, without = _entries(ops)
    engines = [open_engine("sqlite://") for _ in range(3)]
    try:
        trimmed, twin, plain = (ParkingState(e, LOTS) for e in engines)
        ensure_retention_index(engines[1])
        outcomes: list[list[ApplyResult]] = [[], [], []]
        for start in range(0, len(ops), batch):
            outcomes[0] += trimmed.apply(with_retention[start : start + batch])
            trimmed.trim_step(max_rows=2)  # one node deletes a little at every turn
            outcomes[1] += twin.apply(with_retention[start : start + 1])  # another node, other batches,
            outcomes[1] += twin.apply(with_retention[start + 1 : start + batch])  # deleting nothing yet
            outcomes[2] += plain.apply(without[start : start + batch])
            assert view(trimmed) == view(twin)  # whatever their deletion progress
        # Every node that applies the same entries decides alike, and reaches the same tables.
        assert outcomes[0] == outcomes[1]
        drain(trimmed), drain(twin)
        assert dump(engines[0]) == dump(engines[1])
        # Exactly once: no (camera, incarnation, seq) is applied twice, and only frames applied
        # without retention are applied with it (a trim can only turn "applied" into "duplicate").
        applied = [r.key for r in outcomes[0] if r.outcome is Outcome.APPLIED]
        assert len(applied) == len(set(applied))
        plain_applied = {r.key for r in outcomes[2] if r.outcome is Outcome.APPLIED}
        assert set(applied) <= plain_applied
        # Current values and lots are those of the run without retention.
        assert trimmed.cameras() == plain.cameras() and trimmed.lots() == plain.lots()
        # The history is the plain one minus trimmed rows, all at or below their incarnation's
        # trimmed_seq; the incarnations (dedup positions) are all kept.
        kept, full = dump(engines[0])["frames"], dump(engines[2])["frames"]
        assert set(kept) <= set(full)
        floor = {(c, i): t for c, i, *_, t, _ in dump(engines[0])["incarnations"]}
        assert set(floor) == {(c, i) for c, i, *_ in dump(engines[2])["incarnations"]}
        for camera_id, stored, seq, *_ in set(full) - set(kept):
            assert seq <= floor[camera_id, stored]
        # A frame that would be applied without retention but is not with it was more than a
        # whole window late: a higher seq of its incarnation had been trimmed already.
        for r in outcomes[0]:
            if r.outcome is Outcome.DUPLICATE and r.index is None:
                assert r.seq <= floor[r.camera_id, incarnation_to_db(r.incarnation)]
                event("a retry of a trimmed frame")  # see --hypothesis-show-statistics
        if set(full) - set(kept):
            event("history trimmed")
    finally:
        for e in engines:
            e.dispose()


# -- the policy ---------------------------------------------------------------------------------------


def test_policy_defaults_and_cutoff():
    policy = RetentionPolicy()
    assert policy.window_s == 24 * 3600 and policy.interval_s == 600
    assert policy.cutoff(100_000.0) == 100_000.0 - 86_400
    assert policy.due(0.0, None)
    assert not policy.due(1_000.0, 500.0) and policy.due(1_100.0, 500.0)


@pytest.mark.parametrize("kwargs", [{"window_s": 0}, {"interval_s": -1}, {"window_s": math.inf}])
def test_policy_refuses_nonsense(kwargs):
    with pytest.raises(ValueError):
        RetentionPolicy(**kwargs)
