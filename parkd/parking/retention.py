"""Frame-history retention: keep the history bounded, in bounded batches, alike on every node.

Every node must trim alike, so trimming is a committed log entry of its own (issue 6):
the leader periodically proposes :func:`retention_entry` carrying a cutoff time it
computed once (``now - window``).  Applying it (:func:`record_cut`, in
``ParkingState.apply``'s transaction) only records the **cut**: a row of
``retention_cuts`` (its log index X and cutoff C), O(1) whatever the history holds.
From that log position on, the cut's **doomed** rows are gone for every reader:

* a frame is doomed when it was applied before X, captured before C, and is not
  its incarnation's newest frame at X (some frame of its incarnation with a higher
  ``seq`` was applied before X).  Each incarnation's newest frame stays as the
  receipt of its newest frame (for the current incarnation: the camera's current
  value), as before.  ``incarnations`` (the dedup positions), ``cameras`` and
  ``lots`` are not touched;
* a trend bucket (``lot_buckets``) is doomed when it ends at or before C and its
  frame was applied before X.

The rows themselves are deleted afterwards by :func:`trim_step`, a bounded batch
(at most ``max_rows`` rows visited) in a transaction of its own that the node runs
on later reactor turns (``parkd/node/service.py``) until the cut is done; it
then deletes the cut.  Each node deletes at its own pace, so the tables differ
between nodes while a cut is pending, but never what they mean: every read and
every apply decision filters the doomed rows of pending cuts (:func:`hide_doomed_frames`,
:func:`hide_doomed_buckets`, :func:`trimmed_floor`), so all nodes answer and decide
alike at every log index, and reach identical tables once their cuts are done.
Whether a row is doomed depends only on the cut and on rows that stay while it is
pending (an incarnation's newest frame at X is never doomed by X or an earlier cut;
cuts are deleted in log order).  A snapshot taken mid-trim carries the pending cuts
(and how far this node got), so the node that installs it hides and deletes the
same rows.  A crash loses a suffix of the batches and their progress together.

**Dedup** (``trimmed_seq``): a batch raises each incarnation's ``trimmed_seq`` to
the highest ``seq`` it deleted of it, in the same transaction, so a retry of a
deleted frame is a duplicate as before.  While a cut is pending, apply uses the
incarnation's *logical* floor, ``max(trimmed_seq, highest doomed seq not yet
deleted)`` (:func:`trimmed_floor`), the value ``trimmed_seq`` will have once the cut
is done, on every node at once.  The price is the one ``ParkingState`` describes: a
frame that was never applied and arrives after a higher ``seq`` of its incarnation
was trimmed (more than the window late) is taken for a duplicate too.

No Twisted here; the node layer decides when to propose and when to delete.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import sqlalchemy as sa

from parkd.db import storage_errors
from parkd.parking.codec import Retention, encode_retention
from parkd.parking.schema import BUCKET_WIDTHS

DEFAULT_WINDOW_S = 24 * 3600.0
DEFAULT_INTERVAL_S = 600.0
# Rows visited per trim_step: ~7 ms of CPU here; 1000 rows took 15 ms (p99 22 ms) in benchmarks/day_of_data.py.
DEFAULT_BATCH_ROWS = 200

RETENTION_INDEX = "frames_by_captured_at"

def ensure_retention_index(target) -> None:
    """Index ``frames.captured_at`` so that a trim costs what it deletes, not a full scan.

    Idempotent; the node calls it once at start-up (on an Engine or a Connection).
    :func:`trim_step` walks the frames in capture-time order through it; without
    it every batch would scan and sort the whole history.  It changes no result,
    only the query plan, so nodes with and without it still trim alike.  Building
    it costs ~0.5 s per 1M rows.
    """
    statement = sa.text(f"CREATE INDEX IF NOT EXISTS {RETENTION_INDEX} ON frames (captured_at)")
    with storage_errors("creating the retention index"), _transaction(target) as conn:
        conn.execute(statement)


@contextlib.contextmanager
def _transaction(target) -> Iterator[sa.Connection]:
    """A connection in a transaction on an Engine, a Connection or a ``ParkingState``.

    A Connection already in a transaction is used as it is (the caller commits).
    """
    if isinstance(target, sa.Connection):
        if target.in_transaction():
            yield target
        else:
            with target.begin():
                yield target
        return
    engine = target if isinstance(target, sa.Engine) else target.engine
    with engine.begin() as conn:
        yield conn


# -- which rows a pending cut hides ---------------------------------------------------------

# Frame {f} is doomed by cut {c} (see the module docstring).
_DOOMED_FRAME = (
    '{f}.log_index < {c}."index" AND {f}.captured_at < {c}.cutoff AND EXISTS ('
    "SELECT 1 FROM frames AS newer WHERE newer.camera_id = {f}.camera_id "
    "AND newer.incarnation = {f}.incarnation AND newer.seq > {f}.seq "
    'AND newer.log_index < {c}."index")'
)
_DOOMED_BUCKET = '{b}.bucket + {b}.width <= {c}.cutoff AND {b}.log_index < {c}."index"'


def pending_cuts(conn: sa.Connection) -> list[tuple[int, float]]:
    """The cuts applied and not yet done, as (log index, cutoff), oldest first."""
    return [tuple(row) for row in conn.exec_driver_sql('SELECT "index", cutoff FROM retention_cuts ORDER BY 1')]


def hide_doomed_frames(alias: str) -> str:
    """A condition that leaves out the ``frames`` row ``alias`` if a pending cut dooms it.

    Costs an index probe per row: add it only when :func:`pending_cuts` has some.
    """
    return f"NOT EXISTS (SELECT 1 FROM retention_cuts AS cut WHERE {_DOOMED_FRAME.format(f=alias, c='cut')})"


def hide_doomed_buckets(alias: str) -> str:
    """Like :func:`hide_doomed_frames`, for the ``lot_buckets`` row ``alias``."""
    return f"NOT EXISTS (SELECT 1 FROM retention_cuts AS cut WHERE {_DOOMED_BUCKET.format(b=alias, c='cut')})"


_REMAINING = (
    # "+": walk the incarnation's frames down from the top along the primary key,
    # not the captured_at index.
    "SELECT f.seq FROM frames AS f, retention_cuts AS cut "
    "WHERE f.camera_id = :camera_id AND f.incarnation = :incarnation AND cut.\"index\" = :cut AND "
    + _DOOMED_FRAME.format(f="f", c="cut").replace("f.captured_at <", "+f.captured_at <", 1)
    + " ORDER BY f.seq DESC LIMIT 1"
)


def trimmed_floor(conn: sa.Connection, camera_id: int, stored_incarnation: int, trimmed_seq: int,
                  cuts: list[tuple[int, float]]) -> int:  # fmt: skip
    """The incarnation's logical ``trimmed_seq``: ``trimmed_seq`` or the highest seq a pending cut dooms.

    ``stored_incarnation`` as the tables hold it; ``cuts`` from :func:`pending_cuts`.
    Costs a walk down the incarnation's newest frames to the first doomed one.
    """
    floor = trimmed_seq
    for index, _ in cuts:
        params = {"camera_id": camera_id, "incarnation": stored_incarnation, "cut": index}
        seq = conn.scalar(sa.text(_REMAINING), params)
        if seq is not None and seq > floor:
            floor = seq
    return floor


# -- recording a cut -----------------------------------------------------------------------------


def retention_entry(cutoff: float) -> bytes:
    """The data of a NORMAL log entry that trims the history before ``cutoff`` when applied."""
    return encode_retention(Retention(cutoff))


def record_cut(conn: sa.Connection, index: int, cutoff: float) -> None:
    """Apply the retention entry at ``index`` inside the caller's transaction: O(1)."""
    if not math.isfinite(cutoff):
        raise ValueError(f"retention cutoff {cutoff} is not a finite number")
    conn.exec_driver_sql('INSERT INTO retention_cuts ("index", cutoff) VALUES (?, ?)', (index, cutoff))


# -- deleting doomed rows in bounded batches -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrimResult:
    """A cut done: every row it doomed is deleted (``frames_deleted`` of them frames)."""

    index: int
    cutoff: float
    frames_deleted: int


@dataclass(frozen=True, slots=True)
class TrimStep:
    """What one :func:`trim_step` did."""

    visited: int  # rows read (the bound)
    deleted: int  # frames and buckets deleted
    seconds: float
    done: TrimResult | None = None  # the cut it finished, if any
    pending: bool = False  # some cut still has rows to delete


_NEXT_FRAMES = (
    "SELECT f.rowid, f.camera_id, f.incarnation, f.seq, f.captured_at, ("
    + _DOOMED_FRAME.format(f="f", c="cut")
    + ") FROM frames AS f, retention_cuts AS cut WHERE cut.\"index\" = :cut AND f.captured_at < cut.cutoff{after} "
    "ORDER BY f.captured_at, f.camera_id, f.incarnation, f.seq LIMIT :limit"
)
# The cursor is the frame's key, not its rowid: a snapshot copy renumbers rowids, and a
# cut installed from a snapshot must go on from the same frame on every node.
_AFTER_FRAME = (
    " AND f.captured_at >= :at AND (f.captured_at, f.camera_id, f.incarnation, f.seq) > (:at, :camera, :inc, :seq)"
)
_NEXT_BUCKETS = (
    "SELECT b.bucket, (" + _DOOMED_BUCKET.format(b="b", c="cut") + ") "
    'FROM lot_buckets AS b, retention_cuts AS cut WHERE cut."index" = :cut '
    "AND b.lot = :lot AND b.width = :width AND b.bucket > :after AND b.bucket <= cut.cutoff - :width "
    "ORDER BY b.bucket LIMIT :limit"
)
_RAISE_TRIMMED = (
    "UPDATE incarnations SET trimmed_seq = ? WHERE camera_id = ? AND incarnation = ? AND trimmed_seq < ?"
)


def trim_step(conn: sa.Connection, max_rows: int = DEFAULT_BATCH_ROWS) -> TrimStep:
    """Delete doomed rows of the oldest pending cut, visiting at most ``max_rows`` rows.

    Runs in the caller's transaction, which should hold nothing else: its cost is
    bounded by ``max_rows`` (frames in capture-time order through the retention
    index, then each lot's buckets, width by width).  Its progress is stored with
    the cut; the cut is deleted once every row it dooms is.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, not {max_rows}")
    started = time.perf_counter()
    cut = conn.exec_driver_sql(
        'SELECT "index", cutoff, frames_at, frames_camera, frames_incarnation, frames_seq, frames_done, '
        'buckets_lot, buckets_width, buckets_at, frames_deleted FROM retention_cuts ORDER BY "index" LIMIT 1'
    ).first()
    if cut is None:
        return TrimStep(0, 0, time.perf_counter() - started)
    index, cutoff, at, camera, inc, seq, frames_done, lot, width, after, frames_deleted = cut
    visited = deleted = 0
    done = None
    if not frames_done:
        visited, deleted, frames_done = _frames_batch(conn, index, (at, camera, inc, seq), max_rows)
        frames_deleted += deleted
    if frames_done and visited < max_rows:
        seen, gone, cursor = _buckets_batch(conn, index, (lot, width, after), max_rows - visited)
        visited, deleted = visited + seen, deleted + gone
        if cursor is None:
            conn.exec_driver_sql('DELETE FROM retention_cuts WHERE "index" = ?', (index,))
            done = TrimResult(index, cutoff, frames_deleted)
        else:
            conn.exec_driver_sql(
                'UPDATE retention_cuts SET buckets_lot = ?, buckets_width = ?, buckets_at = ? WHERE "index" = ?',
                (*cursor, index),
            )
    if done is None:
        conn.exec_driver_sql(
            'UPDATE retention_cuts SET frames_deleted = ? WHERE "index" = ?', (frames_deleted, index)
        )
    pending = conn.exec_driver_sql("SELECT 1 FROM retention_cuts LIMIT 1").first() is not None
    return TrimStep(visited, deleted, time.perf_counter() - started, done, pending)


def _frames_batch(conn: sa.Connection, index: int, cursor: tuple, limit: int) -> tuple[int, int, bool]:
    """(rows visited, frames deleted, whether the cut's frames are all visited).

    ``cursor``: (captured_at, camera_id, incarnation, seq) of the last frame visited, or Nones.
    """
    at, camera, inc, seq = cursor
    after = _AFTER_FRAME if at is not None else ""
    params = {"cut": index, "limit": limit, "at": at, "camera": camera, "inc": inc, "seq": seq}
    rows = conn.execute(sa.text(_NEXT_FRAMES.format(after=after)), params).all()
    doomed = [r for r in rows if r[5]]
    raw = conn.connection.dbapi_connection
    if doomed:
        raw.executemany("DELETE FROM frames WHERE rowid = ?", [(r[0],) for r in doomed])
        highest: dict[tuple[int, int], int] = {}
        for _, camera_id, incarnation, seq, *_ in doomed:
            key = (camera_id, incarnation)
            highest[key] = max(seq, highest.get(key, seq))
        raw.executemany(_RAISE_TRIMMED, [(s, c, i, s) for (c, i), s in highest.items()])
    finished = len(rows) < limit
    if rows:
        raw.execute(
            'UPDATE retention_cuts SET frames_at = ?, frames_camera = ?, frames_incarnation = ?, frames_seq = ? '
            'WHERE "index" = ?',
            (rows[-1][4], rows[-1][1], rows[-1][2], rows[-1][3], index),
        )
    if finished:
        raw.execute('UPDATE retention_cuts SET frames_done = 1 WHERE "index" = ?', (index,))
    return len(rows), len(doomed), finished


def _buckets_batch(conn: sa.Connection, index: int, cursor: tuple, limit: int) -> tuple[int, int, tuple | None]:
    """Visit up to ``limit`` buckets from ``cursor`` (lot, width, last bucket visited), group by group.

    Returns (visited, deleted, the new cursor or None once every group is done).
    The groups are each lot of a camera (a bucket always belongs to one; a lot
    first seen after the cut has no doomed bucket) times each width, in order.
    """
    lot, width, after = cursor
    lots = [row[0] for row in conn.exec_driver_sql("SELECT DISTINCT lot FROM cameras ORDER BY lot")]
    groups = [(g, w) for g in lots for w in BUCKET_WIDTHS if lot is None or (g, w) >= (lot, width)]
    visited = deleted = 0
    raw = conn.connection.dbapi_connection
    for group in groups:
        start = after if group == (lot, width) and after is not None else -math.inf
        want = limit - visited
        params = {"cut": index, "lot": group[0], "width": group[1], "after": start, "limit": want}
        rows = conn.execute(sa.text(_NEXT_BUCKETS), params).all()
        doomed = [(*group, bucket) for bucket, is_doomed in rows if is_doomed]
        if doomed:
            raw.executemany("DELETE FROM lot_buckets WHERE lot = ? AND width = ? AND bucket = ?", doomed)
        visited, deleted = visited + len(rows), deleted + len(doomed)
        if len(rows) == want:  # the budget is spent; this group may have more
            return visited, deleted, (*group, rows[-1][0])
    return visited, deleted, None


def trim_history(target, before_captured_at: float) -> TrimResult:
    """Trim at once, in a transaction of its own, on an Engine, a Connection or a ``ParkingState``.

    For tools, benchmarks and tests on ONE database: a node must trim only by
    applying a :func:`retention_entry`, or replicas would diverge.  Records a cut
    after every applied entry and deletes what it dooms (and what any pending cut
    dooms) in one go; ``last_applied`` does not move.
    """
    with storage_errors("trimming the frame history"), _transaction(target) as conn:
        last = conn.exec_driver_sql("SELECT last_applied FROM applied").scalar() or 0
        newest = max((index for index, _ in pending_cuts(conn)), default=0)
        index = max(last, newest) + 1
        record_cut(conn, index, before_captured_at)
        while True:
            step = trim_step(conn, 1 << 30)
            if step.done is not None and step.done.index == index:
                return step.done


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """When the leader proposes a retention entry and with which cutoff.

    ``window_s`` of history is kept (default 24 h); a trim is proposed every
    ``interval_s`` (default 10 min, ``[cluster] retention_interval``) so each one
    dooms a small slice.  The clock readings come from the caller (the reactor's
    clock); only the cutoff in the entry reaches the state machine.
    """

    window_s: float = DEFAULT_WINDOW_S
    interval_s: float = DEFAULT_INTERVAL_S

    def __post_init__(self) -> None:
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ValueError(f"retention window must be positive seconds, not {self.window_s}")
        if not (math.isfinite(self.interval_s) and self.interval_s > 0):
            raise ValueError(f"retention interval must be positive seconds, not {self.interval_s}")

    def cutoff(self, now: float) -> float:
        return now - self.window_s

    def due(self, now: float, last_proposed: float | None) -> bool:
        return last_proposed is None or now - last_proposed >= self.interval_s
