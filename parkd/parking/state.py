"""The replicated parking state: apply committed entries, answer reads (CONTRACT §5, §9).

Every node applies the same committed entries in the same order and must reach the
same tables (``parkd/parking/schema.py``), so every decision depends only on the
entries, the tables and the configured lots (which must be identical on every node).
``applied.last_applied`` moves in the same transaction as the rows it covers: after
a crash the node resumes exactly where the last transaction ended, and entries at or
below it are skipped.

The NORMAL entries (``parkd/parking/codec.py``):

* **frame results**, decided in runs by ``parkd/parking/batch.py`` (exactly once per
  ``(camera_id, incarnation, seq)``, the newest incarnation's highest seq is the
  current value, disabled cameras refused: its docstring has the rules);
* **retention** entries, which cut the history at their log position: what they
  doom is gone for readers at once and deleted in bounded batches afterwards
  (:meth:`ParkingState.trim_step`, ``parkd/parking/retention.py``);
* **camera registry** entries, which disable or enable a camera from their log
  position on (table ``camera_registry``);
* **cluster id** entries: the first one applied sets the cluster's id for good
  (table ``cluster_identity``), later ones change nothing;
* **member data dir** entries, which record the data-dir id a member runs on
  (table ``member_data_dirs``).

CONFIG entries change no parking row but one: the data-dir record of a member they
leave out of the configuration (removed, or left out by ``--force-new-cluster``) is
marked ``retired``: that data dir may not come back as the member, and a node added
again under its id is recorded anew (``parkd/node/cluster_identity.py``).

Deduplication relies on the frame history plus each incarnation's ``trimmed_seq``:
a frame with ``seq <= trimmed_seq`` is taken as a duplicate of a trimmed frame (with
no index or free count to report); one with ``trimmed_seq < seq <= last_seq`` that is
not in the history was never applied, so it is recorded as a late frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from parkd.db import DriverStatement, UnsyncedWriter, ensure_schema, storage_errors
from parkd.parking.batch import Batch, check_frame, history_view
from parkd.parking.commands import ClusterIdSet, DataDirSet, Members, CameraEnabled, Trim, segments
from parkd.parking.codec import is_id
from parkd.parking.history import HistoryPoint, lot_history
from parkd.parking.outcomes import ApplyResult, FrameRejected, Outcome, Receipt, Rejection
from parkd.parking.retention import DEFAULT_BATCH_ROWS, TrimStep, hide_doomed_frames, pending_cuts, record_cut
from parkd.parking.retention import trim_step as _trim_step
from parkd.parking.retention import trimmed_floor
from parkd.parking.schema import PARKING_SCHEMA_VERSION, UPGRADERS, incarnation_from_db, incarnation_to_db
from parkd.parking.schema import applied as _applied
from parkd.parking.schema import camera_registry as _registry
from parkd.parking.schema import cameras as _cameras
from parkd.parking.schema import cluster_identity as _cluster
from parkd.parking.schema import frames as _frames
from parkd.parking.schema import incarnations as _incarnations
from parkd.parking.schema import lots as _lots
from parkd.parking.schema import member_data_dirs as _data_dirs
from parkd.parking.schema import metadata as _meta
from parkd.raft.types import Entry

__all__ = [
    "ApplyResult",
    "CameraView",
    "FrameRejected",
    "FrameView",
    "IncarnationView",
    "LotView",
    "Outcome",
    "ParkingState",
    "Receipt",
    "Rejection",
]

MAX_PAYLOAD = 1 << 20  # bytes; a camera frame far above this is a bug, not a picture

_get_last_applied = DriverStatement(sa.select(_applied.c.last_applied))


def _lots_query() -> sa.Select:
    """Every lot with its number of cameras, by id (compiled once: the read API's most frequent query)."""
    counts = sa.select(_cameras.c.lot, sa.func.count().label("n")).group_by(_cameras.c.lot).subquery()
    n = sa.func.coalesce(counts.c.n, sa.literal_column("0"))
    return sa.select(_lots, n).outerjoin(counts, counts.c.lot == _lots.c.id)


_all_lots = DriverStatement(_lots_query().order_by(_lots.c.id))
_one_lot = DriverStatement(_lots_query().where(_lots.c.id == sa.bindparam("lot")))
_set_last_applied = DriverStatement(_applied.update().values(last_applied=sa.bindparam("last")))
_new_registry = sqlite_insert(_registry).values(
    camera_id=sa.bindparam("camera_id"), enabled=sa.bindparam("enabled"), log_index=sa.bindparam("log_index")
)
_set_registry = DriverStatement(
    _new_registry.on_conflict_do_update(
        index_elements=[_registry.c.camera_id],
        set_={"enabled": _new_registry.excluded.enabled, "log_index": _new_registry.excluded.log_index},
    )
)
_set_cluster_id = DriverStatement(
    sqlite_insert(_cluster)
    .values(id=sa.literal_column("1"), cluster_id=sa.bindparam("cluster_id"), log_index=sa.bindparam("log_index"))
    .on_conflict_do_nothing()  # the first one applied stays
)
_new_data_dir = sqlite_insert(_data_dirs).values(
    node_id=sa.bindparam("node_id"), data_dir_id=sa.bindparam("data_dir_id"), log_index=sa.bindparam("log_index")
)
_set_data_dir = DriverStatement(
    _new_data_dir.on_conflict_do_update(
        index_elements=[_data_dirs.c.node_id],
        set_={
            "data_dir_id": _new_data_dir.excluded.data_dir_id,
            "log_index": _new_data_dir.excluded.log_index,
            "retired": sa.false(),
        },
    )
)
assert _get_last_applied.names == () and _set_last_applied.names == ("last",)
assert _all_lots.names == () and _one_lot.names == ("lot",)
assert _set_registry.names == ("camera_id", "enabled", "log_index")
assert _set_cluster_id.names == ("cluster_id", "log_index")
assert _set_data_dir.names == ("node_id", "data_dir_id", "log_index")


@dataclass(frozen=True, slots=True)
class LotView:
    id: str
    capacity: int
    free: int | None
    cameras: int
    updated_at: float | None


@dataclass(frozen=True, slots=True)
class CameraView:
    """A camera's current value: that of its current incarnation."""

    camera_id: int
    lot: str
    free: int
    last_seq: int
    last_seen: float
    incarnation: int = 0
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class IncarnationView:
    """One of a camera's incarnations; ``superseded_index`` is None for the current one."""

    incarnation: int
    last_seq: int
    trimmed_seq: int
    superseded_index: int | None


@dataclass(frozen=True, slots=True)
class FrameView:
    seq: int
    free: int
    captured_at: float
    index: int
    incarnation: int = 0


class ParkingState:
    """The replicated parking tables on a shared Engine (see the module docstring)."""

    def __init__(self, engine: sa.Engine, lots: Mapping[str, int], *, max_payload: int = MAX_PAYLOAD) -> None:
        """Create or upgrade the tables and make the ``lots`` table mirror ``lots`` (id → capacity)."""
        for lot, capacity in lots.items():
            if capacity < 0:
                raise ValueError(f"lot {lot!r}: capacity must not be negative, got {capacity}")
        self._engine = engine
        self._unsynced = UnsyncedWriter.of(engine)
        self._capacity = dict(lots)
        self._max_payload = max_payload
        with storage_errors("opening the parking state"), engine.begin() as conn:
            ensure_schema(conn, _meta, "parking", PARKING_SCHEMA_VERSION, UPGRADERS)
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
        return check_frame(self._capacity, camera_id, lot, seq, captured_at, known_lot)

    # -- applying committed entries ---------------------------------------------------

    def apply(self, entries: Sequence[Entry]) -> list[ApplyResult]:
        """Apply committed entries in one transaction with ``last_applied``.

        Returns one result per frame entry newly applied (and per undecodable
        NORMAL entry: a rejection), in log order; NOOP and CONFIG entries only
        advance ``last_applied``, and entries at or below it are skipped (a
        replay after a crash).

        A retention, registry, cluster id or member data dir entry (and a
        CONFIG entry's dropping of data-dir records) takes effect at its
        position: the frames before it in the batch are written first, the
        ones after it see its change.  It yields no result (like a NOOP).  A
        retention entry only records its cut; :meth:`trim_step` deletes the rows.
        """
        with storage_errors("applying committed entries"), self._unsynced.transaction() as conn:
            (last,) = _get_last_applied.execute(conn).fetchone()
            todo = [e for e in entries if e.index > last]
            if not todo:
                return []
            for expected, entry in enumerate(todo, start=last + 1):
                if entry.index != expected:
                    raise ValueError(f"entry {entry.index} applied after {expected - 1}: the log has a gap")
            results = []
            for segment in segments(todo):
                if isinstance(segment, Trim):
                    record_cut(conn, segment.index, segment.cutoff)
                elif isinstance(segment, CameraEnabled):
                    _set_registry.execute(conn, (segment.camera_id, segment.enabled, segment.index))
                elif isinstance(segment, ClusterIdSet):
                    _set_cluster_id.execute(conn, (segment.cluster_id, segment.index))
                elif isinstance(segment, DataDirSet):
                    _set_data_dir.execute(conn, (segment.node_id, segment.data_dir_id, segment.index))
                elif isinstance(segment, Members):
                    left_out = _data_dirs.c.node_id.not_in(sorted(segment.members))
                    conn.execute(_data_dirs.update().where(left_out).values(retired=True))
                else:
                    batch = Batch(self._capacity, conn, segment)
                    batch.write(conn)
                    results.extend(batch.results)
            _set_last_applied.execute(conn, (todo[-1].index,))
        return results

    def trim_step(self, max_rows: int = DEFAULT_BATCH_ROWS) -> TrimStep:
        """Delete rows of pending retention cuts: one bounded batch in a transaction of its own.

        Not fsynced, like applying: after a crash the cut is still pending and
        the batches it lost are done again.  What readers see never changes.
        """
        with storage_errors("trimming the frame history"), self._unsynced.transaction() as conn:
            return _trim_step(conn, max_rows)

    def trims_pending(self) -> bool:
        """Whether some retention cut still has rows to delete (:meth:`trim_step`)."""
        with storage_errors("reading retention cuts"), self._engine.connect() as conn:
            return bool(pending_cuts(conn))

    # -- queries ----------------------------------------------------------------------

    @property
    def engine(self) -> sa.Engine:
        return self._engine

    def last_applied(self) -> int:
        with storage_errors("reading last_applied"), self._engine.connect() as conn:
            return conn.scalar(sa.select(_applied.c.last_applied))

    def lots(self) -> list[LotView]:
        with storage_errors("reading lots"), self._unsynced.reading() as conn:
            return [LotView(i, c, f, n, u) for i, c, f, u, n in _all_lots.execute(conn)]

    def lot(self, lot_id: str) -> LotView | None:
        """One lot (a point read: one compiled statement), None if unknown."""
        with storage_errors("reading a lot"), self._unsynced.reading() as conn:
            row = _one_lot.execute(conn, (lot_id,)).fetchone()
        if row is None:
            return None
        i, c, f, u, n = row
        return LotView(i, c, f, n, u)

    def cameras(self) -> list[CameraView]:
        with storage_errors("reading cameras"), self._engine.connect() as conn:
            rows = conn.execute(self._camera_query().order_by(_cameras.c.camera_id))
            return [_camera_view(row) for row in rows]

    def camera(self, camera_id: int) -> CameraView | None:
        query = self._camera_query().where(_cameras.c.camera_id == camera_id)
        with storage_errors("reading a camera"), self._engine.connect() as conn:
            row = conn.execute(query).one_or_none()
        return _camera_view(row) if row else None

    def incarnations(self, camera_id: int) -> list[IncarnationView]:
        """A camera's incarnations in log order (oldest first; the current one last)."""
        c = _incarnations.c
        query = (
            sa.select(c.incarnation, c.last_seq, c.trimmed_seq, c.superseded_index)
            .where(c.camera_id == camera_id)
            .order_by(c.superseded_index.is_(None), c.superseded_index)
        )
        with storage_errors("reading a camera's incarnations"), self._engine.connect() as conn:
            rows = conn.execute(query).all()
            cuts = pending_cuts(conn)
            return [
                IncarnationView(incarnation_from_db(i), last, trimmed_floor(conn, camera_id, i, trimmed, cuts), sup)
                for i, last, trimmed, sup in rows
            ]

    def applied_seqs(self) -> dict[tuple[int, int], int]:
        """``{(camera_id, incarnation): highest applied seq}`` for every incarnation (the intake's cache)."""
        c = _incarnations.c
        with storage_errors("reading incarnations"), self._engine.connect() as conn:
            rows = conn.execute(sa.select(c.camera_id, c.incarnation, c.last_seq))
            return {(cam, incarnation_from_db(inc)): seq for cam, inc, seq in rows}

    def cluster_id(self) -> str | None:
        """The cluster's id (32 lowercase hex digits), None until its entry is applied."""
        with storage_errors("reading the cluster id"), self._engine.connect() as conn:
            return conn.scalar(sa.select(_cluster.c.cluster_id).where(_cluster.c.id == 1))

    def member_data_dirs(self, *, retired: bool = False) -> dict[int, str]:
        """``{node_id: data-dir id}`` of the members recorded so far (``retired``: of the
        nodes a configuration left out since, whose data dirs may not come back)."""
        query = sa.select(_data_dirs.c.node_id, _data_dirs.c.data_dir_id).where(_data_dirs.c.retired == retired)
        with storage_errors("reading the members' data dirs"), self._engine.connect() as conn:
            return dict(conn.execute(query).all())

    def replace_cluster_identity(self, cluster_id: str) -> None:
        """Offline only (``parkctl restore``): give this state a new cluster id and forget
        every member's data dir, as for a new cluster made from it.

        Not through the log: every node of the new cluster must be made from the
        same state with the same ``cluster_id``.  ValueError for an id that is not
        32 lowercase hex digits.
        """
        if not is_id(cluster_id):
            raise ValueError(f"cluster id {cluster_id!r} is not 32 lowercase hex digits")
        with storage_errors("replacing the cluster id"), self._engine.begin() as conn:
            (last,) = _get_last_applied.execute(conn).fetchone()
            conn.execute(_cluster.delete())
            conn.execute(_cluster.insert().values(id=1, cluster_id=cluster_id, log_index=last))
            conn.execute(_data_dirs.delete())

    def disabled_cameras(self) -> set[int]:
        """The cameras the registry has disabled."""
        with storage_errors("reading the camera registry"), self._engine.connect() as conn:
            return set(conn.scalars(sa.select(_registry.c.camera_id).where(_registry.c.enabled.is_(False))))

    def frames(
        self, camera_id: int, since: int = 0, limit: int = 100, incarnation: int | None = None
    ) -> list[FrameView]:
        """A camera's frame history of one incarnation (default: the current one) with
        ``seq > since``, oldest first, at most ``limit``."""
        f = _frames.c
        if incarnation is None:
            current = sa.select(_cameras.c.incarnation).where(_cameras.c.camera_id == camera_id).scalar_subquery()
            which = f.incarnation == current
        else:
            which = f.incarnation == incarnation_to_db(incarnation)
        query = (
            sa.select(f.seq, f.free, f.captured_at, f.log_index, f.incarnation)
            .where(f.camera_id == camera_id, which, f.seq > since)
            .order_by(f.seq)
            .limit(limit)
        )
        with storage_errors("reading frames"), self._engine.connect() as conn:
            if pending_cuts(conn):
                query = query.where(sa.text(hide_doomed_frames(_frames.name)))
            return [FrameView(*row[:4], incarnation_from_db(row[4])) for row in conn.execute(query)]

    def history(self, lot: str, start: float, end: float, points: int) -> tuple[float | None, list[HistoryPoint]]:
        """The lot's free spaces over [start, end] in at most ``points`` steps (see parking.history)."""
        with storage_errors("reading a lot's history"), self._engine.connect() as conn:
            return lot_history(conn, lot, start, end, points)

    def lookup(self, camera_id: int, incarnation: int, seq: int) -> Receipt | None:
        """The receipt of an applied frame (to ack a re-sent one at once), else None."""
        with storage_errors("looking up a frame"), self._engine.connect() as conn:
            c = _incarnations.c
            which = sa.and_(c.camera_id == camera_id, c.incarnation == incarnation_to_db(incarnation))
            trimmed = conn.scalar(sa.select(c.trimmed_seq).where(which))
            if trimmed is None:
                return None  # an incarnation never seen
            key = (camera_id, incarnation, seq)
            known, floors = history_view(conn, [key], {(camera_id, incarnation): trimmed})
        if key in known:
            return known[key]
        if seq <= floors.get((camera_id, incarnation), trimmed):
            return Receipt(camera_id, seq, None, None, incarnation)
        return None

    @staticmethod
    def _camera_query() -> sa.Select:
        """Each camera with its current incarnation's value and whether the registry enables it."""
        c, i = _cameras.c, _incarnations.c
        enabled = sa.func.coalesce(_registry.c.enabled, True)
        return (
            sa.select(c.camera_id, c.lot, i.free, i.last_seq, i.last_seen, c.incarnation, enabled)
            .join(_incarnations, sa.and_(i.camera_id == c.camera_id, i.incarnation == c.incarnation))
            .outerjoin(_registry, _registry.c.camera_id == c.camera_id)
        )


def _camera_view(row) -> CameraView:
    camera_id, lot, free, last_seq, last_seen, incarnation, enabled = row
    return CameraView(camera_id, lot, free, last_seq, last_seen, incarnation_from_db(incarnation), bool(enabled))
