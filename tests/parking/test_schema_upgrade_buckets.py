"""Parking schema 2 -> 3 (the trend buckets) on a node database written by the previous code.

The fixture, data/node-parking-schema-2.sql, is made by data/make_node_parking_schema.py
(its docstring has the command) from a fixed log with two incarnations, late frames,
a retention entry and a disabled camera.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from parkd.db import open_engine, schema_version
from parkd.parking.history import HistoryPoint
from parkd.parking.retention import retention_entry
from parkd.parking.schema import PARKING_SCHEMA_VERSION
from parkd.parking.state import ParkingState
from parkd.raft.types import Entry, EntryKind

from olddb import database_from_dump, opened_as_a_node

SCHEMA_2 = Path(__file__).parent / "data" / "node-parking-schema-2.sql"
LOTS = {"north": 100, "south": 60}
TABLES = ("lots", "cameras", "incarnations", "frames", "lot_buckets", "retention_cuts", "camera_registry", "applied")


CUTOFF = 1015.0  # the fixture's retention entry


def tables(engine, since: float = CUTOFF) -> dict[str, list[tuple]]:
    """The tables; of ``lot_buckets`` only those that start at or after ``since``.

    The upgrade rebuilds the buckets from the frames the file still holds: a bucket
    that straddles an applied cut's cutoff may have held a frame the cut deleted,
    which a node replaying the log from the start still has (parkd/parking/schema.py,
    build_buckets).  The next cuts delete such buckets everywhere.
    """
    with engine.connect() as conn:
        found = {t: sorted(conn.exec_driver_sql(f"SELECT * FROM {t}").all(), key=repr) for t in TABLES}
    found["lot_buckets"] = [b for b in found["lot_buckets"] if b[2] >= since]
    return found


@pytest.fixture
def node(tmp_path):
    """The previous code's database opened as a node opens it (parkd.node.service.open_store)."""
    with opened_as_a_node(database_from_dump(SCHEMA_2.name, tmp_path), LOTS) as opened:
        yield opened


def test_the_upgrade_builds_the_buckets_a_fresh_node_writes_from_the_same_log(node):
    engine, storage, state = node
    with engine.connect() as conn:
        assert schema_version(conn, "parking") == PARKING_SCHEMA_VERSION
    fresh = open_engine("sqlite://")
    try:
        replay = ParkingState(fresh, LOTS)
        replay.apply(storage.load().entries)
        while replay.trim_step().pending:  # the retention entry's rows, deleted as a node's later turns do
            pass
        assert tables(fresh) == tables(engine)
        # A later cut past the straddling buckets' ends: then every bucket is alike.
        later = [Entry(17, 1, EntryKind.NORMAL, retention_entry(CUTOFF + 600))]
        for s in (replay, state):
            s.apply(later)
            while s.trim_step().pending:
                pass
        assert tables(fresh, since=-1e12) == tables(engine, since=-1e12)
    finally:
        fresh.dispose()


def test_the_upgraded_trend_leaves_out_late_frames_and_the_old_incarnations_retry(node):
    _, _, state = node
    # north: camera 1 (INC_A 1012 trimmed; 1071 kept; INC_B from 1130) and camera 3 (1200);
    # the retry of INC_A's seq 4 (captured 1085, applied after INC_B) is history only.
    first, points = state.history("north", 1000.0, 2000.0, 1000)
    assert first == 1070.0  # the first 10-s bucket left after the trim
    assert points == [HistoryPoint(1071.0, 12), HistoryPoint(1130.0, 50), HistoryPoint(1200.0, 30),
                      HistoryPoint(1735.0, 51)]  # fmt: skip
    # south: camera 2's late seq 3 (captured 1080, applied after seq 4) is not in the trend
    _, points = state.history("south", 1000.0, 2000.0, 1000)
    assert points == [HistoryPoint(1025.0, 21), HistoryPoint(1090.0, 24), HistoryPoint(1740.0, 25)]
