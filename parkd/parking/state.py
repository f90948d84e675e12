"""Committed frame results applied to the tables ``lots``, ``cameras``, ``frames``, ``applied``.

Every node applies the same committed entries in the same order and must reach the
same tables, so every decision here depends only on the entries, the tables and the
configured lots (which must be identical on every node).  ``applied.last_applied``
moves in the same transaction as the rows it covers: after a crash the node resumes
exactly where the last transaction ended, and entries at or below it are skipped.

Rules (CONTRACT §5):

* Exactly once per ``(camera_id, seq)``.  A duplicate changes nothing and reports the
  log index and free count of the first application.
* A camera's current value is that of its highest applied ``seq``; a late lower
  ``seq`` is kept in the frame history but does not overwrite it.
* A lot's ``free`` is that of the camera frame that most recently advanced a camera
  of the lot (in log order), ``updated_at`` that frame's ``captured_at``.  Every
  camera judges the whole lot, so the newest judgement wins; ``free`` is NULL until a
  camera has reported.
* Frames for an unknown lot, from a camera seen before in another lot, or with a free
  count outside ``0..capacity`` are rejected and leave no row; ``last_applied`` still
  advances, since every node rejects them alike.

Deduplication relies on the frame history plus ``cameras.trimmed_seq``.  A future
retention job may delete old ``frames`` rows, but must then raise the camera's
``trimmed_seq`` to the highest ``seq`` it deleted, and must run at a fixed log
position (as an entry of its own) so all nodes trim alike.  A frame with
``seq <= trimmed_seq`` is then taken as a duplicate of a trimmed frame (with no
index or free count to report); one with ``trimmed_seq < seq <= last_seq`` that is not in
the history was never applied, so it is recorded as a late frame.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from parkd.db import DriverStatement, ensure_schema, storage_errors, unsynced_transaction
from parkd.parking.codec import CodecError, FrameResult, decode, decode_retention, is_retention
from parkd.parking.history import HistoryPoint, lot_history
from parkd.parking.retention import TrimResult, trim_in
from parkd.parking.schema import PARKING_SCHEMA_VERSION
from parkd.parking.schema import applied as _applied
from parkd.parking.schema import cameras as _cameras
from parkd.parking.schema import frames as _frames
from parkd.parking.schema import lots as _lots
from parkd.parking.schema import metadata as _meta
from parkd.raft.types import Entry, EntryKind

MAX_PAYLOAD = 1 << 20  # bytes; a camera frame far above this is a bug, not a picture
_MAX_CAMERA_ID = (1 << 32) - 1  # uint32 on the wire
_MAX_SEQ = (1 << 63) - 1  # SQLite integers are signed 64-bit
_CHUNK = 500  # keys per IN (...) query, far below SQLite's bound-parameter limit

# The per-frame statements of apply(), compiled once (see DriverStatement).
_upsert_camera = sqlite_insert(_cameras).values(
    {c: sa.bindparam(c) for c in ("camera_id", "lot", "last_seq", "free", "last_seen")}
)
_set_camera = DriverStatement(
    _upsert_camera.on_conflict_do_update(
        index_elements=[_cameras.c.camera_id],
        set_={c: _upsert_camera.excluded[c] for c in ("last_seq", "free", "last_seen")},
    )
)
_set_lot = DriverStatement(
    _lots.update()
    .where(_lots.c.id == sa.bindparam("lot"))
    .values(free=sa.bindparam("new_free"), updated_at=sa.bindparam("new_updated_at"))
)
_insert_frames = DriverStatement(_frames.insert())
_get_last_applied = DriverStatement(sa.select(_applied.c.last_applied))
_set_last_applied = DriverStatement(_applied.update().values(last_applied=sa.bindparam("last")))
assert _insert_frames.names == ("camera_id", "seq", "free", "captured_at", "log_index")
assert _set_camera.names == ("camera_id", "lot", "last_seq", "free", "last_seen")
assert _set_lot.names == ("new_free", "new_updated_at", "lot")
assert _get_last_applied.names == () and _set_last_applied.names == ("last",)


class Outcome(enum.Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


class Rejection(enum.Enum):
    """Why a frame is refused; the names match ``Error.Code`` in the wire protocol."""

    UNKNOWN_LOT = "unknown_lot"
    LOT_MISMATCH = "lot_mismatch"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    BAD_REQUEST = "bad_request"


class FrameRejected(ValueError):
    """A frame the state machine will not accept, with a reason fit for the camera."""

    def __init__(self, code: Rejection, message: str) -> None:
        super().__init__(message)
        self.code = code


def _check(
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


@dataclass(frozen=True, slots=True)
class Receipt:
    """Proof that a frame took effect: what the camera's ack reports.

    ``index`` and ``free`` are None only when retention has trimmed the frame.
    """

    camera_id: int
    seq: int
    index: int | None
    free: int | None


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """The outcome of the committed frame entry at ``entry_index``.

    ``index`` and ``free`` are what the camera's ack reports: those of the frame's
    first application (this entry, or the original one for a duplicate).  They are
    None for a rejection and for a duplicate of a trimmed frame.  ``camera_id``,
    ``seq`` and ``lot`` are those of the entry (0, 0, "" if it could not be decoded).
    """

    entry_index: int
    outcome: Outcome
    camera_id: int
    seq: int
    lot: str
    index: int | None = None
    free: int | None = None
    rejection: Rejection | None = None
    reason: str = ""

    @property
    def duplicate(self) -> bool:
        return self.outcome is Outcome.DUPLICATE


@dataclass(frozen=True, slots=True)
class LotView:
    id: str
    capacity: int
    free: int | None
    cameras: int
    updated_at: float | None


@dataclass(frozen=True, slots=True)
class CameraView:
    camera_id: int
    lot: str
    free: int
    last_seq: int
    last_seen: float


@dataclass(frozen=True, slots=True)
class FrameView:
    seq: int
    free: int
    captured_at: float
    index: int


@dataclass(slots=True)
class _Camera:
    """A camera's row while a batch is applied."""

    lot: str
    last_seq: int
    free: int
    last_seen: float
    trimmed_seq: int = 0


def _chunks(items: Sequence, size: int = _CHUNK) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class ParkingState:
    """The replicated parking tables on a shared Engine (see the module docstring)."""

    def __init__(self, engine: sa.Engine, lots: Mapping[str, int], *, max_payload: int = MAX_PAYLOAD) -> None:
        """Create missing tables and make the ``lots`` table mirror ``lots`` (id → capacity)."""
        for lot, capacity in lots.items():
            if capacity < 0:
                raise ValueError(f"lot {lot!r}: capacity must not be negative, got {capacity}")
        self._engine = engine
        self._capacity = dict(lots)
        self._max_payload = max_payload
        self.trims: list[TrimResult] = []  # what retention entries of the last apply() trimmed
        with storage_errors("opening the parking state"), engine.begin() as conn:
            ensure_schema(conn, _meta, "parking", PARKING_SCHEMA_VERSION)
            conn.execute(sqlite_insert(_applied).values(id=1, last_applied=0).on_conflict_do_nothing())
            conn.execute(_lots.delete().where(_lots.c.id.not_in(list(lots))))
            if lots:
                new = sqlite_insert(_lots)
                upsert = new.on_conflict_do_update(
                    index_elements=[_lots.c.id], set_={"capacity": new.excluded.capacity}
                )
                conn.execute(upsert, [{"id": lot, "capacity": capacity} for lot, capacity in lots.items()])

    # -- before proposing -------------------------------------------------------------

    def validate(self, camera_id: int, lot: str, seq: int, captured_at: float, payload: bytes) -> int:
        """Check a received frame before it is analysed and proposed; return the lot's capacity.

        Raises :class:`FrameRejected` so the node can refuse the frame at once
        instead of spending a log entry on it.  The camera's lot is checked
        against the applied state; apply checks again, authoritatively.
        """
        with storage_errors("reading a camera"), self._engine.connect() as conn:
            known_lot = conn.scalar(sa.select(_cameras.c.lot).where(_cameras.c.camera_id == camera_id))
        return self.check(camera_id, lot, seq, captured_at, payload, known_lot)

    def check(
        self, camera_id: int, lot: str, seq: int, captured_at: float, payload: bytes, known_lot: str | None
    ) -> int:
        """:meth:`validate` without reading the database: the caller knows the camera's lot."""
        if len(payload) > self._max_payload:
            raise FrameRejected(
                Rejection.PAYLOAD_TOO_LARGE, f"payload of {len(payload)} bytes exceeds {self._max_payload}"
            )
        return _check(self._capacity, camera_id, lot, seq, captured_at, known_lot)

    # -- applying committed entries ---------------------------------------------------

    def apply(self, entries: Sequence[Entry]) -> list[ApplyResult]:
        """Apply committed entries in one transaction with ``last_applied``.

        Returns one result per NORMAL entry newly applied, in log order; NOOP and
        CONFIG entries only advance ``last_applied``, and entries at or below it
        are skipped (a replay after a crash).  Reads are one query for the
        batch's cameras and, only for late or repeated frames, one for their
        history; writes are one executemany per table.

        A retention entry (``parkd/parking/retention.py``) trims the frame history
        at its position: the frames before it in the batch are written first, the
        ones after it see the raised ``trimmed_seq``.  It yields no result (like a
        NOOP); what it trimmed is in :attr:`trims` until the next call.
        """
        with storage_errors("applying committed entries"), unsynced_transaction(self._engine) as conn:
            (last,) = _get_last_applied.execute(conn).fetchone()
            todo = [e for e in entries if e.index > last]
            if not todo:
                return []
            for expected, entry in enumerate(todo, start=last + 1):
                if entry.index != expected:
                    raise ValueError(f"entry {entry.index} applied after {expected - 1}: the log has a gap")
            results, trims = [], []
            for segment in _segments(todo):
                if isinstance(segment, float):  # a retention entry, at its place in the log
                    trims.append(trim_in(conn, segment))
                    continue
                batch = _Batch(self._capacity, conn, segment)
                batch.write(conn)
                results.extend(batch.results)
            _set_last_applied.execute(conn, (todo[-1].index,))
        self.trims = trims
        return results

    # -- queries ----------------------------------------------------------------------

    @property
    def engine(self) -> sa.Engine:
        return self._engine

    def last_applied(self) -> int:
        with storage_errors("reading last_applied"), self._engine.connect() as conn:
            return conn.scalar(sa.select(_applied.c.last_applied))

    def lots(self) -> list[LotView]:
        counts = (
            sa.select(_cameras.c.lot, sa.func.count().label("n")).group_by(_cameras.c.lot).subquery()
        )
        query = (
            sa.select(_lots, sa.func.coalesce(counts.c.n, 0))
            .outerjoin(counts, counts.c.lot == _lots.c.id)
            .order_by(_lots.c.id)
        )
        with storage_errors("reading lots"), self._engine.connect() as conn:
            return [LotView(i, c, f, n, u) for i, c, f, u, n in conn.execute(query)]

    def cameras(self) -> list[CameraView]:
        with storage_errors("reading cameras"), self._engine.connect() as conn:
            rows = conn.execute(self._camera_query().order_by(_cameras.c.camera_id))
            return [CameraView(*row) for row in rows]

    def camera(self, camera_id: int) -> CameraView | None:
        query = self._camera_query().where(_cameras.c.camera_id == camera_id)
        with storage_errors("reading a camera"), self._engine.connect() as conn:
            row = conn.execute(query).one_or_none()
        return CameraView(*row) if row else None

    def frames(self, camera_id: int, since: int = 0, limit: int = 100) -> list[FrameView]:
        """A camera's frame history with ``seq > since``, oldest first, at most ``limit``."""
        query = (
            sa.select(_frames.c.seq, _frames.c.free, _frames.c.captured_at, _frames.c.log_index)
            .where(_frames.c.camera_id == camera_id, _frames.c.seq > since)
            .order_by(_frames.c.seq)
            .limit(limit)
        )
        with storage_errors("reading frames"), self._engine.connect() as conn:
            return [FrameView(*row) for row in conn.execute(query)]

    def history(self, lot: str, start: float, end: float, points: int) -> tuple[float | None, list[HistoryPoint]]:
        """The lot's free spaces over [start, end] in at most ``points`` steps (see parking.history)."""
        with storage_errors("reading a lot's history"), self._engine.connect() as conn:
            return lot_history(conn, lot, start, end, points)

    def lookup(self, camera_id: int, seq: int) -> Receipt | None:
        """The receipt of an applied frame (to ack a re-sent one at once), else None."""
        with storage_errors("looking up a frame"), self._engine.connect() as conn:
            known = _receipts(conn, [(camera_id, seq)])
            if known:
                return known[camera_id, seq]
            trimmed = conn.scalar(sa.select(_cameras.c.trimmed_seq).where(_cameras.c.camera_id == camera_id))
        return Receipt(camera_id, seq, None, None) if trimmed is not None and seq <= trimmed else None

    @staticmethod
    def _camera_query() -> sa.Select:
        c = _cameras.c
        return sa.select(c.camera_id, c.lot, c.free, c.last_seq, c.last_seen)


def _segments(entries: Sequence[Entry]) -> Iterator[Sequence[Entry] | float]:
    """``entries`` split at retention entries: runs of other entries, and each cutoff."""
    start = 0
    for pos, entry in enumerate(entries):
        if entry.kind is EntryKind.NORMAL and is_retention(entry.data):
            try:
                cutoff = decode_retention(entry.data).cutoff
            except CodecError:
                continue  # malformed: _Batch rejects it like any undecodable entry
            if pos > start:
                yield entries[start:pos]
            yield cutoff
            start = pos + 1
    if start < len(entries):
        yield entries[start:]


def _receipts(conn: sa.Connection, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], Receipt]:
    """Receipts of the frames among ``keys`` ((camera_id, seq) pairs) in the history."""
    c = _frames.c
    found = {}
    for chunk in _chunks(keys):
        query = sa.select(c.camera_id, c.seq, c.log_index, c.free)
        for camera_id, seq, index, free in conn.execute(query.where(sa.tuple_(c.camera_id, c.seq).in_(chunk))):
            found[camera_id, seq] = Receipt(camera_id, seq, index, free)
    return found


_LOAD_CAMERAS_SQL = (
    "SELECT camera_id, lot, last_seq, free, last_seen, trimmed_seq FROM cameras WHERE camera_id IN ({})"
)


class _Batch:
    """One apply call: decides every entry in memory, then writes each table once."""

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
        self._cameras = self._load_cameras(conn, sorted({f.camera_id for f in frames}))
        self._receipts = _receipts(conn, self._history_candidates(frames))
        self._new_frames: list[tuple] = []  # rows for _insert_frames
        self._advanced: dict[int, _Camera] = {}  # camera_id -> row to upsert
        self._lots: dict[str, tuple] = {}  # lot -> its row for _set_lot
        for index, frame in decoded:
            self.results.append(self._decide(index, frame))

    @staticmethod
    def _load_cameras(conn: sa.Connection, ids: Sequence[int]) -> dict[int, _Camera]:
        found = {}
        for chunk in _chunks(ids):
            sql = _LOAD_CAMERAS_SQL.format(", ".join("?" * len(chunk)))
            for camera_id, *row in conn.connection.dbapi_connection.execute(sql, chunk):
                found[camera_id] = _Camera(*row)
        return found

    def _history_candidates(self, frames: Iterable[FrameResult]) -> list[tuple[int, int]]:
        """Frames that may already be in the history: at or below their camera's last_seq.

        In normal operation seqs only grow and this is empty, so no query is made.
        """
        keys = set()
        for f in frames:
            camera = self._cameras.get(f.camera_id)
            if camera and camera.trimmed_seq < f.seq <= camera.last_seq:
                keys.add((f.camera_id, f.seq))
        return sorted(keys)

    def _decide(self, index: int, frame: FrameResult | CodecError) -> ApplyResult:
        if isinstance(frame, CodecError):
            return ApplyResult(
                index, Outcome.REJECTED, 0, 0, "", rejection=Rejection.BAD_REQUEST, reason=str(frame)
            )
        key = (frame.camera_id, frame.seq)
        camera = self._cameras.get(frame.camera_id)
        if key in self._receipts:
            original = self._receipts[key]
            return ApplyResult(index, Outcome.DUPLICATE, *key, frame.lot, original.index, original.free)
        if camera and frame.seq <= camera.trimmed_seq:
            return ApplyResult(index, Outcome.DUPLICATE, *key, frame.lot)
        try:
            known_lot = camera.lot if camera else None
            capacity = _check(
                self._capacities, frame.camera_id, frame.lot, frame.seq, frame.captured_at, known_lot
            )
            if not 0 <= frame.free <= capacity:
                raise FrameRejected(
                    Rejection.BAD_REQUEST, f"free {frame.free} is outside 0..{capacity} of lot {frame.lot!r}"
                )
        except FrameRejected as rejected:
            return ApplyResult(
                index, Outcome.REJECTED, *key, frame.lot, rejection=rejected.code, reason=str(rejected)
            )
        self._record(index, frame, camera)
        return ApplyResult(index, Outcome.APPLIED, *key, frame.lot, index, frame.free)

    def _record(self, index: int, frame: FrameResult, camera: _Camera | None) -> None:
        self._receipts[frame.camera_id, frame.seq] = Receipt(frame.camera_id, frame.seq, index, frame.free)
        self._new_frames.append((frame.camera_id, frame.seq, frame.free, frame.captured_at, index))
        if camera is None:
            camera = self._cameras[frame.camera_id] = _Camera(frame.lot, 0, frame.free, frame.captured_at)
        if frame.seq <= camera.last_seq:
            return  # a late frame: history only
        camera.last_seq, camera.free, camera.last_seen = frame.seq, frame.free, frame.captured_at
        self._advanced[frame.camera_id] = camera
        self._lots[frame.lot] = (frame.free, frame.captured_at, frame.lot)

    def write(self, conn: sa.Connection) -> None:
        if self._new_frames:
            _insert_frames.executemany(conn, self._new_frames)
        if self._advanced:
            rows = [(i, c.lot, c.last_seq, c.free, c.last_seen) for i, c in self._advanced.items()]
            _set_camera.executemany(conn, rows)
        if self._lots:
            _set_lot.executemany(conn, list(self._lots.values()))
