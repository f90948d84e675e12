"""Build a node's ``node.db`` holding N frames directly with SQL, in seconds instead of hours.

One job: a database as a busy node leaves it, for the benchmarks and the process tests
that need a large state without filling it frame by frame through cameras.

What :func:`build` writes (parking schema 2, Raft schema 1, as ``open_store`` would
open them): ``frames`` frames of ``cameras`` cameras (ids from ``first_camera``, lots
taken in turn) in incarnation 0, one every 10 s per camera, in log order (frame ``i``
is log entry ``i + 1``, term 1); their cameras, incarnations and lots' current values;
``applied.last_applied = frames``; the retention index; the last ``log_entries`` of
those entries in the Raft log, above a stored snapshot position at
``frames - log_entries`` (no snapshot file: the node takes one soon, since its log
is long); hard state term 1, vote 1, commit ``frames``.

Copies of one file in the data dirs of every member of a cluster make a cluster that
agrees on everything up to ``frames``.  Camera ids far from the test cameras' (1..3)
keep their lots from clashing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from collections.abc import Mapping, Sequence

from parkd.db import checkpoint_truncate, open_engine
from parkd.parking.codec import FrameResult, encode
from parkd.parking.retention import ensure_retention_index
from parkd.parking.schema import build_buckets
from parkd.parking.state import ParkingState
from parkd.raft.storage import SqliteStorage
from parkd.raft.types import Entry, EntryKind

T0 = 1_700_000_000.0  # captured_at of the first frames (seq 1)
FRAME_EVERY_S = 10.0
_STEP = 100_000  # rows per executemany


class Frames:
    """Frame ``i`` (from 0) of a built history: (camera_id, seq, lot, captured_at, free), and its log entry."""

    def __init__(self, lots: Sequence[str], cameras: int, first_camera: int, t0: float = T0) -> None:
        self.lots, self.cameras, self.first_camera, self.t0 = list(lots), cameras, first_camera, t0

    def frame(self, i: int) -> tuple[int, int, str, float, int]:
        n = i % self.cameras
        seq = i // self.cameras + 1
        return self.first_camera + n, seq, self.lots[n % len(self.lots)], self.t0 + seq * FRAME_EVERY_S, (i * 7919) % 61

    def entry(self, i: int) -> Entry:
        camera, seq, lot, at, free = self.frame(i)
        return Entry(i + 1, 1, EntryKind.NORMAL, encode(FrameResult(camera, lot, seq, at, free)))


def build(path: str, frames: int, log_entries: int = 110_000, lots: Mapping[str, int] | None = None,
          cameras: int = 100, first_camera: int = 1000, voters: Sequence[int] = (1, 2, 3),
          t0: float = T0) -> Frames:  # fmt: skip
    """Write ``path`` (which must not exist) as the module docstring says; the frames' description."""
    lots = dict(lots or {"north": 100, "south": 60, "east": 250})
    made = Frames(sorted(lots), cameras, first_camera, t0)
    engine = open_engine(path)
    SqliteStorage(engine)
    ParkingState(engine, lots)
    ensure_retention_index(engine)
    engine.dispose()
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA synchronous=OFF")
        db.execute("BEGIN")
        for start in range(0, frames, _STEP):
            rows = []
            for i in range(start, min(frames, start + _STEP)):
                camera, seq, _, at, free = made.frame(i)
                rows.append((camera, seq, free, at, i + 1))
            db.executemany(
                "INSERT INTO frames (camera_id, incarnation, seq, free, captured_at, log_index) "
                "VALUES (?, 0, ?, ?, ?, ?)",
                rows,
            )
        last = {}
        for i in range(max(0, frames - cameras), frames):
            camera, seq, lot, at, free = made.frame(i)
            last[camera] = (camera, lot, seq, free, at)
        db.executemany("INSERT INTO cameras (camera_id, lot, incarnation) VALUES (?, ?, 0)",
                       [(camera, lot) for camera, lot, *_ in last.values()])  # fmt: skip
        db.executemany(
            "INSERT INTO incarnations (camera_id, incarnation, last_seq, free, last_seen) VALUES (?, 0, ?, ?, ?)",
            [(camera, seq, free, at) for camera, _, seq, free, at in last.values()],
        )
        final = {}  # a lot's free count: that of its newest frame
        for i in range(max(0, frames - cameras), frames):
            _, _, lot, at, free = made.frame(i)
            final[lot] = (free, at, lot)
        db.executemany("UPDATE lots SET free = ?, updated_at = ? WHERE id = ?", list(final.values()))
        db.execute("UPDATE applied SET last_applied = ?", (frames,))
        for start in range(max(0, frames - log_entries), frames, _STEP):
            entries = [made.entry(i) for i in range(start, min(frames, start + _STEP))]
            db.executemany('INSERT INTO entries ("index", term, kind, data) VALUES (?, ?, ?, ?)',
                           [(e.index, e.term, int(e.kind), e.data) for e in entries])  # fmt: skip
        compacted = max(0, frames - log_entries)
        db.execute('UPDATE snapshot_meta SET "index" = ?, term = ?, voters = ?',
                   (compacted, 1 if compacted else 0, str(list(voters))))  # fmt: skip
        db.execute('UPDATE hard_state SET term = 1, vote = ?, "commit" = ?', (voters[0], frames))
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return made


def add_buckets(path: str) -> None:
    """Build the trend buckets of ``path``'s frames (as the schema 3 upgrade does) and leave no WAL."""
    engine = open_engine(path)
    try:
        with engine.begin() as conn:
            build_buckets(conn)
        checkpoint_truncate(engine)
    finally:
        engine.dispose()


def copy_db(src: str, dst: str) -> None:
    """``src`` (checkpointed, no WAL) as ``dst``, without any WAL or journal ``dst`` had."""
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    for suffix in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dst + suffix)
    shutil.copyfile(src, dst)
