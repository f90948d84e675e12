"""Parking schema 1 -> 2 (and on to the current one) on a node database written by the previous release
(data/node-parking-schema-1.sql)."""

from __future__ import annotations

from pathlib import Path

import pytest

from parkd.db import open_engine, schema_version
from parkd.parking.codec import FrameResult, decode, encode
from parkd.parking.retention import RETENTION_INDEX
from parkd.parking.schema import PARKING_SCHEMA_VERSION
from parkd.parking.state import CameraView, LotView, Outcome, ParkingState
from parkd.raft.types import Entry, EntryKind

from olddb import database_from_dump, opened_as_a_node

SCHEMA_1 = Path(__file__).parent / "data" / "node-parking-schema-1.sql"
LOTS = {"north": 100, "south": 60}
TABLES = ("lots", "cameras", "incarnations", "frames", "lot_buckets", "camera_registry", "applied")


def previous_release_db(tmp_path) -> str:
    return database_from_dump(SCHEMA_1.name, tmp_path)


def tables(engine) -> dict[str, list[tuple]]:
    """The tables; of ``lot_buckets`` only those from the fixture's cutoff (1015) on: see
    test_schema_upgrade_buckets.py for the ones that straddle it."""
    with engine.connect() as conn:
        found = {t: sorted(conn.exec_driver_sql(f"SELECT * FROM {t}").all()) for t in TABLES}
    found["lot_buckets"] = [b for b in found["lot_buckets"] if b[2] >= 1015.0]
    return found


@pytest.fixture
def node(tmp_path):
    """The previous release's database opened as a node opens it (parkd.node.service.open_store)."""
    with opened_as_a_node(previous_release_db(tmp_path), LOTS) as opened:
        yield opened


def test_the_upgrade_puts_every_camera_and_frame_in_incarnation_0(node):
    engine, storage, state = node
    with engine.connect() as conn:
        assert schema_version(conn, "parking") == PARKING_SCHEMA_VERSION
        assert schema_version(conn, "raft") == 1
    found = tables(engine)
    assert found["cameras"] == [(1, "north", 0), (2, "south", 0), (3, "north", 0)]  # (camera_id, lot, incarnation)
    # (camera_id, incarnation, last_seq, free, last_seen, trimmed_seq, superseded_index): the old
    # current values and dedup positions
    assert found["incarnations"] == [
        (1, 0, 5, 15, 1040.0, 2, None), (2, 0, 3, 23, 1050.0, 1, None), (3, 0, 1, 30, 1060.0, 0, None)
    ]  # fmt: skip
    assert found["frames"] == [
        (1, 0, 3, 12, 1020.0, 5), (1, 0, 4, 14, 1030.0, 9), (1, 0, 5, 15, 1040.0, 8),
        (2, 0, 2, 21, 1025.0, 6), (2, 0, 3, 23, 1050.0, 11), (3, 0, 1, 30, 1060.0, 12),
    ]  # fmt: skip
    assert found["camera_registry"] == [] and found["applied"] == [(1, 12)]
    assert state.lots() == [LotView("north", 100, 30, 2, 1060.0), LotView("south", 60, 23, 1, 1050.0)]
    assert state.camera(1) == CameraView(1, "north", 15, 5, 1040.0, incarnation=0, enabled=True)
    with engine.connect() as conn:  # the node's retention index is back on the new frames table
        indexes = conn.exec_driver_sql("SELECT name, tbl_name FROM sqlite_master WHERE type = 'index'").all()
    assert (RETENTION_INDEX, "frames") in indexes
    assert not [name for name, _ in indexes if "schema_1" in name]


def test_the_upgraded_state_is_the_one_the_new_code_reaches_from_the_same_log(node):
    """A node that applies the old log afresh (a new member) agrees with one upgraded in place."""
    engine, storage, _ = node
    log = storage.load().entries
    assert [decode(e.data).incarnation for e in log if e.data[:1] == b"\x01"] == [0] * 10  # VERSION 1 entries
    fresh = open_engine("sqlite://")
    try:
        state = ParkingState(fresh, LOTS)
        state.apply(log)
        while state.trim_step().pending:  # the retention entry's rows, deleted as a node's later turns do
            pass
        assert tables(fresh) == tables(engine)
    finally:
        fresh.dispose()


def test_exactly_once_continues_across_the_upgrade(node):
    engine, storage, state = node
    old = lambda i, cam, seq, at, free, lot="north": Entry(  # noqa: E731 (a VERSION 1 entry, as in the old log)
        i, 1, EntryKind.NORMAL, encode(FrameResult(cam, lot, seq, at, free))
    )
    kept, trimmed, late, new = state.apply([
        old(13, 1, 4, 1030.0, 99),  # a retry of a frame in the history
        old(14, 1, 2, 1010.0, 99),  # a retry of a trimmed frame
        old(15, 2, 1, 1005.0, 99),  # likewise, camera 2
        old(16, 1, 6, 1050.0, 16),  # the next frame of incarnation 0
    ])[:4]  # fmt: skip
    assert (kept.outcome, kept.index, kept.free) == (Outcome.DUPLICATE, 9, 14)
    assert (trimmed.outcome, trimmed.index) == (Outcome.DUPLICATE, None)
    assert late.outcome is Outcome.DUPLICATE
    assert new.outcome is Outcome.APPLIED and not new.incarnation_started
    assert state.camera(1).last_seq == 6


def test_a_camera_with_a_new_state_dir_moves_its_lot_after_the_upgrade(node):
    """The issue's bug: a camera restarted with a fresh state dir sends seq 1 again."""
    _, _, state = node
    fresh = Entry(13, 1, EntryKind.NORMAL, encode(FrameResult(1, "north", 1, 2000.0, 77, incarnation=2**64 - 1)))
    [result] = state.apply([fresh])
    assert (result.outcome, result.index, result.free) == (Outcome.APPLIED, 13, 77)
    assert result.incarnation_started
    assert state.camera(1) == CameraView(1, "north", 77, 1, 2000.0, incarnation=2**64 - 1)
    assert state.lots()[0].free == 77
    assert [i.superseded_index for i in state.incarnations(1)] == [13, None]
