"""One run of committed frame entries: decide each in memory, then write each table once.

The rules (CONTRACT §5 and §9), per frame ``(camera_id, incarnation, seq)``:

* A frame of a camera the registry disabled (``camera_registry``) is rejected with
  ``PERMISSION_DENIED`` and leaves no row, so a retry after the camera is enabled
  again is applied exactly once.
* Exactly once per ``(camera_id, incarnation, seq)``.  A duplicate changes nothing
  and reports the log index and free count of the first application; one at or
  below its incarnation's ``trimmed_seq`` (retention deleted it) is a duplicate
  with nothing to report.
* An incarnation never seen before starts at this frame, whatever its ``seq``: it
  is the camera's newest, so it becomes the camera's current incarnation and its
  frame the camera's current value (the camera's state dir was lost or replaced).
  The incarnation it replaces gets ``superseded_index`` = this entry's index.
* Each incarnation's value is that of its highest ``seq``; a late lower ``seq`` is
  kept in the history only.  The camera's current value is its current
  incarnation's: a frame of an older incarnation (a late retry from before the
  state dir was replaced) never overwrites it, nor its lot's.
* A lot's ``free`` is that of the frame that most recently advanced a camera of the
  lot (in log order), ``updated_at`` that frame's ``captured_at``.  Such a frame
  also becomes the newest of its lot's trend buckets that hold its capture time
  (``lot_buckets``, one per width in ``BUCKET_WIDTHS``: ``parkd/parking/history.py``).
* Frames for an unknown lot, from a camera seen before in another lot, or with a
  free count outside ``0..capacity`` are rejected and leave no row.

Reads are one query for the batch's cameras with their incarnations, one for the
(normally empty) disabled set and, only for frames that may be retries, one for
their history; writes are one executemany per table, and a frame writes one value
row (its incarnation's) as it did before incarnations, plus, per batch, one row per
trend bucket its lots' frames fell in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from parkd.db import DriverStatement
from parkd.parking.codec import CodecError, FrameResult, decode
from parkd.parking.outcomes import ApplyResult, FrameRejected, Outcome, Receipt, Rejection
from parkd.parking.retention import hide_doomed_frames, pending_cuts, trimmed_floor
from parkd.parking.schema import BUCKET_WIDTHS, bucket_start
from parkd.parking.schema import cameras as _cameras
from parkd.parking.schema import frames as _frames
from parkd.parking.schema import incarnation_from_db, incarnation_to_db
from parkd.parking.schema import incarnations as _incarnations
from parkd.parking.schema import lot_buckets as _buckets
from parkd.parking.schema import lots as _lots
from parkd.raft.types import Entry, EntryKind

_MAX_CAMERA_ID = (1 << 32) - 1  # uint32 on the wire
_MAX_SEQ = (1 << 63) - 1  # SQLite integers are signed 64-bit
_CHUNK = 500  # keys per IN (...) query, far below SQLite's bound-parameter limit

# The statements of a batch's writes, compiled once (see DriverStatement).
_CAMERA_COLUMNS = ("camera_id", "lot", "incarnation")
_upsert_camera = sqlite_insert(_cameras).values({c: sa.bindparam(c) for c in _CAMERA_COLUMNS})
_set_camera = DriverStatement(
    _upsert_camera.on_conflict_do_update(
        index_elements=[_cameras.c.camera_id], set_={"incarnation": _upsert_camera.excluded.incarnation}
    )
)
_INCARNATION_COLUMNS = ("camera_id", "incarnation", "last_seq", "free", "last_seen", "trimmed_seq", "superseded_index")
_upsert_incarnation = sqlite_insert(_incarnations).values({c: sa.bindparam(c) for c in _INCARNATION_COLUMNS})
_set_incarnation = DriverStatement(
    _upsert_incarnation.on_conflict_do_update(
        index_elements=[_incarnations.c.camera_id, _incarnations.c.incarnation],
        set_={c: _upsert_incarnation.excluded[c] for c in ("last_seq", "free", "last_seen", "superseded_index")},
    )
)
_set_lot = DriverStatement(
    _lots.update()
    .where(_lots.c.id == sa.bindparam("lot"))
    .values(free=sa.bindparam("new_free"), updated_at=sa.bindparam("new_updated_at"))
)
_BUCKET_COLUMNS = ("lot", "width", "bucket", "log_index", "captured_at", "free")
_upsert_bucket = sqlite_insert(_buckets).values({c: sa.bindparam(c) for c in _BUCKET_COLUMNS})
_set_bucket = DriverStatement(  # entries apply in log order: a newer frame always wins its bucket
    _upsert_bucket.on_conflict_do_update(
        index_elements=[_buckets.c.lot, _buckets.c.width, _buckets.c.bucket],
        set_={c: _upsert_bucket.excluded[c] for c in ("log_index", "captured_at", "free")},
    )
)
_insert_frames = DriverStatement(_frames.insert())
assert _insert_frames.names == ("camera_id", "incarnation", "seq", "free", "captured_at", "log_index")
assert _set_camera.names == _CAMERA_COLUMNS
assert _set_incarnation.names == _INCARNATION_COLUMNS
assert _set_lot.names == ("new_free", "new_updated_at", "lot")
assert _set_bucket.names == _BUCKET_COLUMNS

# A batch's cameras with all their incarnations, in one query (one row per incarnation).
_LOAD_CAMERAS_SQL = (
    "SELECT c.camera_id, c.lot, c.incarnation, "
    "i.incarnation, i.last_seq, i.free, i.last_seen, i.trimmed_seq, i.superseded_index "
    "FROM cameras AS c JOIN incarnations AS i ON i.camera_id = c.camera_id WHERE c.camera_id IN ({})"
)
# The whole disabled set: no row at all unless an operator disabled a camera.
_LOAD_DISABLED_SQL = "SELECT camera_id FROM camera_registry WHERE NOT enabled"


def check_frame(
    capacities: Mapping[str, int], camera_id: int, lot: str, seq: int, captured_at: float, known_lot: str | None
) -> int:
    """The rules a frame must meet both before proposing and at apply; returns the capacity.

    Anything that could make the INSERT fail must be refused here: a committed
    entry that fails to apply would stop every node at the same index.
    """
    if not 1 <= camera_id <= _MAX_CAMERA_ID:
        raise FrameRejected(Rejection.BAD_REQUEST, f"camera id {camera_id} is outside 1..{_MAX_CAMERA_ID}")
    if not 1 <= seq <= _MAX_SEQ:
        raise FrameRejected(Rejection.BAD_REQUEST, f"seq {seq} is outside 1..{_MAX_SEQ}")
    if not math.isfinite(captured_at):  # SQLite would store NaN as NULL
        raise FrameRejected(Rejection.BAD_REQUEST, f"capture time {captured_at} is not a finite number")
    if lot not in capacities:
        known = ", ".join(sorted(capacities)) or "none"
        raise FrameRejected(Rejection.UNKNOWN_LOT, f"unknown lot {lot!r} (lots: {known})")
    if known_lot is not None and known_lot != lot:
        raise FrameRejected(
            Rejection.LOT_MISMATCH, f"camera {camera_id} belongs to lot {known_lot!r}, not {lot!r}"
        )
    return capacities[lot]


def disabled_message(camera_id: int) -> str:
    return f"camera {camera_id} is disabled by an operator (parkctl camera enable {camera_id})"


def chunks(items: Sequence, size: int = _CHUNK) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def receipts(
    conn: sa.Connection, keys: Sequence[tuple[int, int, int]], hide_doomed: bool = False
) -> dict[tuple[int, int, int], Receipt]:
    """Receipts of the frames among ``keys`` ((camera_id, incarnation, seq)) in the history.

    ``hide_doomed``: leave out frames a pending retention cut dooms (they are gone for readers).
    """
    c = _frames.c
    found = {}
    for chunk in chunks([(cam, incarnation_to_db(inc), seq) for cam, inc, seq in keys]):
        query = sa.select(c.camera_id, c.incarnation, c.seq, c.log_index, c.free)
        query = query.where(sa.tuple_(c.camera_id, c.incarnation, c.seq).in_(chunk))
        if hide_doomed:
            query = query.where(sa.text(hide_doomed_frames(_frames.name)))
        for camera_id, stored, seq, index, free in conn.execute(query):
            incarnation = incarnation_from_db(stored)
            found[camera_id, incarnation, seq] = Receipt(camera_id, seq, index, free, incarnation)
    return found


def history_view(
    conn: sa.Connection, keys: Sequence[tuple[int, int, int]], trimmed: Mapping[tuple[int, int], int]
) -> tuple[dict[tuple[int, int, int], Receipt], dict[tuple[int, int], int]]:
    """What dedup needs of ``keys`` as every node sees them, whatever its deletion progress.

    Returns their receipts (:func:`receipts`, doomed frames left out) and, while
    a retention cut is pending, each of their incarnations' logical trimmed seq
    (``parkd/parking/retention.py``: :func:`trimmed_floor`), computed from
    ``trimmed`` ({(camera_id, incarnation): its ``trimmed_seq`` column}).
    """
    cuts = pending_cuts(conn) if keys else []
    found = receipts(conn, keys, hide_doomed=bool(cuts))
    floors = {}
    for camera_id, incarnation in {(c, i) for c, i, _ in keys} if cuts else ():
        stored = incarnation_to_db(incarnation)
        floors[camera_id, incarnation] = trimmed_floor(conn, camera_id, stored, trimmed[camera_id, incarnation], cuts)
    return found, floors


@dataclass(slots=True)
class _Camera:
    """A camera's row while a batch is applied."""

    lot: str
    incarnation: int  # the current one


@dataclass(slots=True)
class _Incarnation:
    """An incarnation's row while a batch is applied: its value (of its highest seq) and dedup position."""

    last_seq: int = 0
    free: int = 0
    last_seen: float = 0.0
    trimmed_seq: int = 0
    superseded_index: int | None = None


class Batch:
    """One run of committed entries without retention or registry entries among them."""

    def __init__(self, capacities: Mapping[str, int], conn: sa.Connection, entries: Iterable[Entry]) -> None:
        self._capacities = capacities
        self.results: list[ApplyResult] = []
        decoded: list[tuple[int, FrameResult | CodecError]] = []
        for entry in entries:
            if entry.kind is EntryKind.NORMAL:
                try:
                    decoded.append((entry.index, decode(entry.data)))
                except CodecError as exc:
                    decoded.append((entry.index, exc))
        frames = [f for _, f in decoded if isinstance(f, FrameResult)]
        ids = sorted({f.camera_id for f in frames})
        raw = conn.connection.dbapi_connection
        self._cameras: dict[int, _Camera] = {}
        self._incarnations: dict[tuple[int, int], _Incarnation] = {}
        for chunk in chunks(ids):
            rows = raw.execute(_LOAD_CAMERAS_SQL.format(", ".join("?" * len(chunk))), chunk)
            for camera_id, lot, current, stored, *incarnation in rows:
                if camera_id not in self._cameras:
                    self._cameras[camera_id] = _Camera(lot, incarnation_from_db(current))
                self._incarnations[camera_id, incarnation_from_db(stored)] = _Incarnation(*incarnation)
        self._disabled = {camera_id for (camera_id,) in raw.execute(_LOAD_DISABLED_SQL)} if frames else set()
        candidates = self._history_candidates(frames)
        trimmed = {(c, i): self._incarnations[c, i].trimmed_seq for c, i, _ in candidates}
        # the receipts of frames in the history; trimmed seqs raised by pending retention cuts
        self._receipts, self._floors = history_view(conn, candidates, trimmed)
        self._new_frames: list[tuple] = []  # rows for _insert_frames
        self._changed: set[tuple[int, int]] = set()  # incarnations to upsert
        self._new_cameras: set[int] = set()  # cameras to upsert (new, or a new incarnation)
        self._lots: dict[str, tuple] = {}  # lot -> its row for _set_lot
        self._buckets: dict[tuple[str, int, float], tuple] = {}  # (lot, width, bucket) -> its newest frame
        for index, frame in decoded:
            self.results.append(self._decide(index, frame))

    def _history_candidates(self, frames: Iterable[FrameResult]) -> list[tuple[int, int, int]]:
        """Frames that may already be in the history: at or below their incarnation's last_seq.

        In normal operation seqs only grow and this is empty, so no query is made.
        """
        keys = set()
        for f in frames:
            known = self._incarnations.get((f.camera_id, f.incarnation))
            if known and known.trimmed_seq < f.seq <= known.last_seq:
                keys.add((f.camera_id, f.incarnation, f.seq))
        return sorted(keys)

    def _decide(self, index: int, frame: FrameResult | CodecError) -> ApplyResult:
        if isinstance(frame, CodecError):
            return ApplyResult(
                index, Outcome.REJECTED, 0, 0, "", rejection=Rejection.BAD_REQUEST, reason=str(frame)
            )
        key = (frame.camera_id, frame.incarnation, frame.seq)
        if frame.camera_id in self._disabled:
            reason = disabled_message(frame.camera_id)
            return ApplyResult(index, Outcome.REJECTED, frame.camera_id, frame.seq, frame.lot,
                               incarnation=frame.incarnation, rejection=Rejection.PERMISSION_DENIED,
                               reason=reason)  # fmt: skip
        camera = self._cameras.get(frame.camera_id)
        known = self._incarnations.get((frame.camera_id, frame.incarnation))
        if key in self._receipts:
            original = self._receipts[key]
            return ApplyResult(index, Outcome.DUPLICATE, frame.camera_id, frame.seq, frame.lot, original.index,
                               original.free, incarnation=frame.incarnation)  # fmt: skip
        if known and frame.seq <= self._floors.get((frame.camera_id, frame.incarnation), known.trimmed_seq):
            return ApplyResult(index, Outcome.DUPLICATE, frame.camera_id, frame.seq, frame.lot,
                               incarnation=frame.incarnation)  # fmt: skip
        try:
            known_lot = camera.lot if camera else None
            capacity = check_frame(
                self._capacities, frame.camera_id, frame.lot, frame.seq, frame.captured_at, known_lot
            )
            if not 0 <= frame.free <= capacity:
                raise FrameRejected(
                    Rejection.BAD_REQUEST, f"free {frame.free} is outside 0..{capacity} of lot {frame.lot!r}"
                )
        except FrameRejected as rejected:
            return ApplyResult(index, Outcome.REJECTED, frame.camera_id, frame.seq, frame.lot,
                               incarnation=frame.incarnation, rejection=rejected.code,
                               reason=str(rejected))  # fmt: skip
        started = self._record(index, frame, camera, known)
        return ApplyResult(index, Outcome.APPLIED, frame.camera_id, frame.seq, frame.lot, index, frame.free,
                           incarnation=frame.incarnation, incarnation_started=started)  # fmt: skip

    def _record(self, index: int, frame: FrameResult, camera: _Camera | None, known: _Incarnation | None) -> bool:
        """Write ``frame`` into the history and advance what it advances; True if it started an incarnation."""
        cam, inc = frame.camera_id, frame.incarnation
        self._receipts[cam, inc, frame.seq] = Receipt(cam, frame.seq, index, frame.free, inc)
        self._new_frames.append((cam, incarnation_to_db(inc), frame.seq, frame.free, frame.captured_at, index))
        started = known is None
        if started:  # the newest incarnation: it replaces the current one
            known = self._incarnations[cam, inc] = _Incarnation()
            if camera is None:
                camera = self._cameras[cam] = _Camera(frame.lot, inc)
            else:
                previous = self._incarnations.get((cam, camera.incarnation))
                if previous is not None:
                    previous.superseded_index = index
                    self._changed.add((cam, camera.incarnation))
                camera.incarnation = inc
            self._new_cameras.add(cam)
        if frame.seq <= known.last_seq:
            return started  # a late frame: history only
        known.last_seq, known.free, known.last_seen = frame.seq, frame.free, frame.captured_at
        self._changed.add((cam, inc))
        if inc == camera.incarnation:  # not an older incarnation's: the camera's value, so its lot's
            self._lots[frame.lot] = (frame.free, frame.captured_at, frame.lot)
            newest = (index, frame.captured_at, frame.free)
            for width in BUCKET_WIDTHS:
                self._buckets[frame.lot, width, bucket_start(frame.captured_at, width)] = newest
        return started

    def write(self, conn: sa.Connection) -> None:
        if self._new_frames:
            _insert_frames.executemany(conn, self._new_frames)
        if self._changed:
            rows = []
            for cam, inc in self._changed:
                i = self._incarnations[cam, inc]
                rows.append((cam, incarnation_to_db(inc), i.last_seq, i.free, i.last_seen, i.trimmed_seq,
                             i.superseded_index))  # fmt: skip
            _set_incarnation.executemany(conn, rows)
        if self._new_cameras:
            rows = [(cam, self._cameras[cam].lot, incarnation_to_db(self._cameras[cam].incarnation))
                    for cam in self._new_cameras]  # fmt: skip
            _set_camera.executemany(conn, rows)
        if self._lots:
            _set_lot.executemany(conn, list(self._lots.values()))
        if self._buckets:
            _set_bucket.executemany(conn, [(*key, *newest) for key, newest in self._buckets.items()])
