"""The node's retention housekeeping on a task.Clock: a bounded batch per reactor turn, then space back."""

from __future__ import annotations

from twisted.internet.task import Clock

from parkd.db import open_engine
from parkd.node.housekeeping import MAX_REST_S, REST_FACTOR, Housekeeping
from parkd.parking.codec import FrameResult, encode
from parkd.parking.retention import retention_entry
from parkd.parking.state import ParkingState
from parkd.raft.types import Entry, EntryKind

LOTS = {"north": 100}


def frames(count: int, camera_id: int = 7) -> list[Entry]:
    return [
        Entry(seq, 1, EntryKind.NORMAL, encode(FrameResult(camera_id, "north", seq, 1_000.0 + 10 * seq, seq % 100)))
        for seq in range(1, count + 1)
    ]


class Recorder:
    def __init__(self):
        self.steps = []

    def trim_step(self, step) -> None:
        self.steps.append(step)


def turn(clock: Clock) -> None:
    """One reactor turn: the next call (Clock.advance would also run those it schedules)."""
    due = [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds() + MAX_REST_S]
    assert len(due) == 1
    clock.advance(due[0].getTime() - clock.seconds() - 1e-9)  # up to it, not past
    clock.calls.remove(due[0])
    due[0].called = True
    due[0].func(*due[0].args, **due[0].kw)


def counts(engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (conn.exec_driver_sql("SELECT count(*) FROM frames").scalar(),
                conn.exec_driver_sql("SELECT count(*) FROM retention_cuts").scalar())  # fmt: skip


def test_a_cut_is_deleted_one_bounded_batch_per_reactor_turn(tmp_path):
    engine = open_engine(str(tmp_path / "node.db"))
    state = ParkingState(engine, LOTS)
    state.apply(frames(200))
    state.apply([Entry(201, 1, EntryKind.NORMAL, retention_entry(1_000.0 + 10 * 151))])  # dooms seqs 1..150
    clock, seen = Clock(), Recorder()
    keeping = Housekeeping(state, engine, clock, batch_rows=40, check_s=1.0)
    keeping.observe(seen)
    keeping.start()  # looks at once: a cut is pending
    assert counts(engine) == (200, 1) and keeping.busy
    turns = 0
    while keeping.busy:
        before = len(seen.steps)
        turn(clock)  # one batch (or one vacuum / checkpoint step) per turn
        turns += 1
        assert len(seen.steps) - before <= 1 and all(step.visited <= 40 for step in seen.steps)
    assert counts(engine) == (50, 0)
    assert sum(step.deleted for step in seen.steps) >= 150 and seen.steps[-1].done.frames_deleted == 150
    assert len(seen.steps) >= 200 // 40 and turns > len(seen.steps)
    with engine.connect() as conn:  # the WAL was truncated once the cut was done
        assert conn.connection.dbapi_connection.execute("PRAGMA wal_checkpoint").fetchone()[1] == 0
    keeping.stop()
    engine.dispose()


def test_nothing_runs_without_a_pending_cut_and_a_later_cut_is_found_by_the_next_check(tmp_path):
    engine = open_engine(str(tmp_path / "node.db"))
    state = ParkingState(engine, LOTS)
    state.apply(frames(20))
    clock = Clock()
    keeping = Housekeeping(state, engine, clock, batch_rows=1000, check_s=1.0)
    keeping.start()
    assert not keeping.busy
    state.apply([Entry(21, 1, EntryKind.NORMAL, retention_entry(1e9))])
    clock.advance(0)
    assert counts(engine) == (20, 1)  # not until the next check
    clock.advance(1.0)
    while keeping.busy:
        clock.advance(MAX_REST_S)
    assert counts(engine) == (1, 0)
    keeping.stop()
    assert not clock.getDelayedCalls()
    engine.dispose()


def test_space_is_given_back_in_steps_with_a_rest_after_each(tmp_path, monkeypatch):
    """Back to back, ~9 ms vacuum steps at 2 M frames delayed every HTTPS read's handshake turns."""
    engine = open_engine(str(tmp_path / "node.db"))
    state = ParkingState(engine, LOTS)
    state.apply(frames(20))
    state.apply([Entry(21, 1, EntryKind.NORMAL, retention_entry(1e9))])
    free_pages = iter([600, 300, 0])
    monkeypatch.setattr("parkd.node.housekeeping.vacuum_step", lambda engine: next(free_pages))
    clock = Clock()
    keeping = Housekeeping(state, engine, clock, batch_rows=1000, check_s=1.0)
    ticks = iter(range(1000))
    keeping.timer = lambda: 0.01 * next(ticks)  # every vacuum step takes 10 ms
    keeping.start()
    while keeping._call is None or keeping._call.func != keeping._vacuum:
        turn(clock)  # the trim's batches
    rests = []
    while keeping.busy and keeping._call.func == keeping._vacuum:
        scheduled = keeping._call.getTime()
        turn(clock)
        rests.append(round(keeping._call.getTime() - scheduled, 6) if keeping._call else None)
    assert rests == [REST_FACTOR * 0.01] * 3  # after each of the three steps, the last before the checkpoint
    keeping.stop()
    engine.dispose()
