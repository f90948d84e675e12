"""The trend buckets (lot_buckets) written at apply equal a recomputation from the frames, whatever the log."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from parkd.db import open_engine
from parkd.parking.codec import FrameResult, encode
from parkd.parking.history import HistoryPoint
from parkd.parking.schema import build_buckets
from parkd.parking.state import ParkingState
from parkd.raft.types import Entry, EntryKind

LOTS = {"north": 100, "south": 60}

# (camera 1..3, seq 1..6, captured_at offset 0..200 s, incarnation 0..2)
_frames = st.lists(
    st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(0, 200), st.integers(0, 2)), min_size=1, max_size=40
)


def buckets(engine) -> list[tuple]:
    with engine.connect() as conn:
        return conn.exec_driver_sql("SELECT * FROM lot_buckets ORDER BY lot, width, bucket").all()


@settings(max_examples=60, deadline=None)
@given(_frames, st.integers(1, 7))
def test_buckets_written_at_apply_equal_a_rebuild_from_the_frames(ops, batch):
    engine = open_engine("sqlite://")
    try:
        state = ParkingState(engine, LOTS)
        entries = [
            Entry(i, 1, EntryKind.NORMAL, encode(FrameResult(cam, "north" if cam != 3 else "south", seq,
                                                             1_000.0 + at + seq * 0.5, seq * 3 % 60, inc)))  # fmt: skip
            for i, (cam, seq, at, inc) in enumerate(ops, start=1)
        ]
        for start in range(0, len(entries), batch):
            state.apply(entries[start : start + batch])
        written = buckets(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM lot_buckets")
            build_buckets(conn)
        assert buckets(engine) == written
    finally:
        engine.dispose()


def test_a_step_reports_its_newest_frame_at_bucket_boundaries(state):
    """Steps are made of whole buckets: a frame late in a step's last bucket still belongs to it."""
    def frame(i, cam, seq, at, free):
        return Entry(i, 1, EntryKind.NORMAL, encode(FrameResult(cam, "north", seq, at, free)))

    state.apply([frame(1, 1, 1, 1_000.0, 10), frame(2, 2, 1, 1_009.0, 20), frame(3, 1, 2, 1_001.0, 30),
                 frame(4, 1, 3, 1_015.0, 40)])  # fmt: skip
    first, points = state.history("north", 0.0, 1_020.0, 1000)
    assert first == 1_000.0
    # 1000-1010: frame 3 has the highest log index (captured 1001, after 1009 in time): one point
    assert points == [HistoryPoint(1_001.0, 30), HistoryPoint(1_015.0, 40)]
    # one step over both buckets: the newest frame in the log of all of them
    assert state.history("north", 0.0, 1_020.0, 1) == (1_000.0, [HistoryPoint(1_015.0, 40)])
