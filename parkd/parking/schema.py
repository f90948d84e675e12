"""The parking state's tables, their schema version and upgraders (component ``parking``).

``lots``, ``cameras``, ``incarnations``, ``frames``, ``lot_buckets``,
``retention_cuts``, ``camera_registry``, ``cluster_identity``, ``member_data_dirs``
and ``applied`` live in the node's database next to Raft's tables; a snapshot copies
exactly these (:func:`snapshot_tables`).  A change to them raises
:data:`PARKING_SCHEMA_VERSION` and comes with an upgrader in :data:`UPGRADERS`
(run by ``parkd.db.ensure_schema``, and on old snapshot files by
``parkd/parking/snapshot.py``) tested on a database made by the previous code.

**Incarnations** (CONTRACT §9) are unsigned 64-bit numbers; SQLite integers are
signed, so the tables hold them as the signed number with the same 64 bits
(:func:`incarnation_to_db`, :func:`incarnation_from_db`).  Only equality matters
to SQL; incarnations are ordered by their place in the log, never by value.

Schema versions:

1. ``cameras`` (with ``trimmed_seq``), ``frames`` keyed by (camera_id, seq).
2. Camera incarnations and the camera registry: ``cameras`` keeps each camera's
   lot and current ``incarnation``; ``incarnations`` holds each incarnation's value
   (``last_seq``, ``free``, ``last_seen``), ``trimmed_seq`` and ``superseded_index``,
   so a camera's current value is its current incarnation's row (applying a frame
   still writes one value row); ``frames`` is keyed by (camera_id, incarnation,
   seq); ``camera_registry``.  The upgrade puts every existing camera and frame in
   incarnation 0.
3. A day of data: ``lot_buckets`` (each lot's trend in time buckets of
   :data:`BUCKET_WIDTHS` seconds, written with the frames: ``parkd/parking/history.py``)
   and ``retention_cuts`` (retention entries applied whose rows are still being
   deleted in bounded batches: ``parkd/parking/retention.py``).  The upgrade builds
   the buckets from the frames the database holds (:func:`build_buckets`).
4. Cluster identity (CONTRACT §10): ``cluster_identity`` (one row once the cluster id
   entry is applied) and ``member_data_dirs`` (each member's data-dir id; a member left out of the configuration keeps its
   row, ``retired``).  The
   upgrade adds them empty: the leader proposes the cluster id and the members'
   data-dir ids after it (``parkd/node/cluster_identity.py``).
"""

from __future__ import annotations

import sqlalchemy as sa

from parkd.db import u64_from_sqlite, u64_to_sqlite

PARKING_SCHEMA_VERSION = 4

# A lot's trend is kept in buckets of these widths (seconds), finest first; /history reads
# the coarsest one no wider than its step (parkd/parking/history.py).
BUCKET_WIDTHS = (10, 60, 600)

metadata = sa.MetaData()
lots = sa.Table(
    "lots",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("capacity", sa.Integer, nullable=False),
    sa.Column("free", sa.Integer),  # NULL until a camera of the lot reports
    sa.Column("updated_at", sa.Float),
)
cameras = sa.Table(  # every camera that sent a frame: its lot and its current (newest) incarnation
    "cameras",
    metadata,
    sa.Column("camera_id", sa.Integer, primary_key=True),
    sa.Column("lot", sa.Text, nullable=False),
    sa.Column("incarnation", sa.Integer, nullable=False),  # the current one (incarnation_to_db)
)
incarnations = sa.Table(  # every incarnation a camera had: its value and dedup position
    "incarnations",
    metadata,
    sa.Column("camera_id", sa.Integer, primary_key=True),
    sa.Column("incarnation", sa.Integer, primary_key=True),
    sa.Column("last_seq", sa.Integer, nullable=False),  # highest applied seq of this incarnation
    sa.Column("free", sa.Integer, nullable=False),  # of the frame with last_seq
    sa.Column("last_seen", sa.Float, nullable=False),  # its captured_at
    sa.Column("trimmed_seq", sa.Integer, nullable=False, server_default="0"),  # retention's dedup position
    # The log index of the next incarnation's first frame; NULL while this one is current.
    sa.Column("superseded_index", sa.Integer),
    # Its primary key is the table: one B-tree to update per applied frame, as for the
    # rowid-keyed cameras table of schema 1 (a rowid table with a separate key index
    # cost ~8 us more per frame).
    sqlite_with_rowid=False,
)
frames = sa.Table(
    "frames",
    metadata,
    sa.Column("camera_id", sa.Integer, primary_key=True),
    sa.Column("incarnation", sa.Integer, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("free", sa.Integer, nullable=False),
    sa.Column("captured_at", sa.Float, nullable=False),
    sa.Column("log_index", sa.Integer, nullable=False),
)
lot_buckets = sa.Table(  # per lot and bucket: the frame that last changed the lot's value in it
    "lot_buckets",
    metadata,
    sa.Column("lot", sa.Text, primary_key=True),
    sa.Column("width", sa.Integer, primary_key=True),  # seconds, one of BUCKET_WIDTHS
    sa.Column("bucket", sa.Float, primary_key=True),  # its start: bucket_start(captured_at, width)
    sa.Column("log_index", sa.Integer, nullable=False),  # of that frame: the highest in the bucket
    sa.Column("captured_at", sa.Float, nullable=False),
    sa.Column("free", sa.Integer, nullable=False),
    sqlite_with_rowid=False,
)
retention_cuts = sa.Table(  # retention entries applied whose doomed rows are not all deleted yet
    "retention_cuts",
    metadata,
    sa.Column("index", sa.Integer, primary_key=True),  # the retention entry's log index
    sa.Column("cutoff", sa.Float, nullable=False),
    # How far this node's deletion got (parkd/parking/retention.py): physical progress,
    # which differs between nodes; what the cut hides does not depend on it.
    sa.Column("frames_at", sa.Float),  # the last frame visited, in (captured_at, key) order
    sa.Column("frames_camera", sa.Integer),
    sa.Column("frames_incarnation", sa.Integer),
    sa.Column("frames_seq", sa.Integer),
    sa.Column("frames_done", sa.Boolean, nullable=False, server_default="0"),
    sa.Column("buckets_lot", sa.Text),  # the last bucket visited, in (lot, width, bucket) order
    sa.Column("buckets_width", sa.Integer),
    sa.Column("buckets_at", sa.Float),
    sa.Column("frames_deleted", sa.Integer, nullable=False, server_default="0"),
)
camera_registry = sa.Table(  # cameras an operator disabled or enabled (no row: enabled)
    "camera_registry",
    metadata,
    sa.Column("camera_id", sa.Integer, primary_key=True),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("log_index", sa.Integer, nullable=False),  # of the registry entry that set it
)
cluster_identity = sa.Table(  # the cluster id: one row (id 1) once its entry is applied
    "cluster_identity",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),  # always 1
    sa.Column("cluster_id", sa.Text, nullable=False),  # 32 lowercase hex digits
    sa.Column("log_index", sa.Integer, nullable=False),  # of the entry that set it
)
member_data_dirs = sa.Table(  # the data-dir id each member runs on (no row: not recorded yet)
    "member_data_dirs",
    metadata,
    sa.Column("node_id", sa.Integer, primary_key=True),
    sa.Column("data_dir_id", sa.Text, nullable=False),  # 32 lowercase hex digits
    sa.Column("log_index", sa.Integer, nullable=False),  # of the entry that recorded it
    # True once a configuration left the member out (removed, or --force-new-cluster):
    # that data dir may not come back as the member (it must be wiped and join again).
    sa.Column("retired", sa.Boolean, nullable=False, server_default=sa.false()),
)
applied = sa.Table(
    "applied",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),  # always 1: a single row
    sa.Column("last_applied", sa.Integer, nullable=False),
)


def snapshot_tables() -> tuple[sa.Table, ...]:
    """The tables a snapshot copies whole, in a fixed order (``parkd/parking/snapshot.py``)."""
    return (lots, cameras, incarnations, frames, lot_buckets, retention_cuts, camera_registry, cluster_identity,
            member_data_dirs, applied)


def bucket_start(captured_at: float, width: int) -> float:
    """The start of the ``width``-second bucket that holds ``captured_at`` (a float, like the column).

    Float floor division: exact for any finite time, and the same on every node.
    """
    return captured_at // width * width


incarnation_to_db = u64_to_sqlite  # an incarnation as the tables hold it
incarnation_from_db = u64_from_sqlite  # and back


# -- upgraders -------------------------------------------------------------------------------------


def _upgrade_1_to_2(conn: sa.Connection) -> None:
    """Schema 1 -> 2: every existing camera and frame belongs to incarnation 0.

    ``cameras`` and ``frames`` are rebuilt (SQLite cannot change a primary key in
    place); their old tables go with their indexes (the retention index is made
    again by the node).  ``camera_registry`` is created empty by ``ensure_schema``.
    """
    incarnations.create(conn)
    conn.exec_driver_sql(
        "INSERT INTO incarnations (camera_id, incarnation, last_seq, free, last_seen, trimmed_seq, superseded_index) "
        "SELECT camera_id, 0, last_seq, free, last_seen, trimmed_seq, NULL FROM cameras"
    )
    conn.exec_driver_sql("ALTER TABLE cameras RENAME TO cameras_schema_1")
    cameras.create(conn)
    conn.exec_driver_sql(
        "INSERT INTO cameras (camera_id, lot, incarnation) SELECT camera_id, lot, 0 FROM cameras_schema_1"
    )
    conn.exec_driver_sql("DROP TABLE cameras_schema_1")
    conn.exec_driver_sql("ALTER TABLE frames RENAME TO frames_schema_1")
    frames.create(conn)
    conn.exec_driver_sql(
        "INSERT INTO frames (camera_id, incarnation, seq, free, captured_at, log_index) "
        "SELECT camera_id, 0, seq, free, captured_at, log_index FROM frames_schema_1"
    )
    conn.exec_driver_sql("DROP TABLE frames_schema_1")


# The frames that changed their lot's value, as Batch decides it at apply
# (parkd/parking/batch.py): of an incarnation that was its camera's current one
# (applied before its superseded_index) and with a seq above every seq of its
# incarnation applied before it (not a late frame).
_TREND_FRAMES = """
CREATE TEMP TABLE trend_frames AS
SELECT c.lot, f.log_index, f.captured_at, f.free
FROM (SELECT camera_id, incarnation, seq, log_index, captured_at, free,
             max(seq) OVER (PARTITION BY camera_id, incarnation ORDER BY log_index
                            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS seq_before
      FROM frames) AS f
JOIN cameras AS c ON c.camera_id = f.camera_id
JOIN incarnations AS i ON i.camera_id = f.camera_id AND i.incarnation = f.incarnation
WHERE (i.superseded_index IS NULL OR f.log_index < i.superseded_index)
  AND (f.seq_before IS NULL OR f.seq > f.seq_before)
"""
# Per bucket the frame with the highest log index (SQLite takes the bare columns from the MAX row).
_FILL_BUCKETS = """
INSERT INTO lot_buckets (lot, width, bucket, log_index, captured_at, free)
SELECT lot, :width, parkd_bucket_start(captured_at, :width) AS b, max(log_index), captured_at, free
FROM temp.trend_frames GROUP BY lot, b
"""


def build_buckets(conn: sa.Connection) -> None:
    """Fill the empty ``lot_buckets`` from the frames the database holds (the schema 3 upgrade).

    Equal to what applying the same log writes, except where retention already
    deleted frames: a bucket that straddles an applied cut's cutoff may have held a
    deleted frame (a node replaying the log from its start keeps that bucket until a
    later cut passes its end: within ``retention_interval`` plus the bucket's width),
    and a deleted frame may have decided whether a kept one was late (not when an
    incarnation's seqs and capture times go up together: cameras' normal case).
    Nodes that upgrade the same file, and nodes that install its snapshots, agree.
    """
    raw = conn.connection.dbapi_connection
    raw.create_function("parkd_bucket_start", 2, bucket_start, deterministic=True)
    conn.exec_driver_sql("DROP TABLE IF EXISTS temp.trend_frames")
    conn.exec_driver_sql(_TREND_FRAMES)
    for width in BUCKET_WIDTHS:
        conn.execute(sa.text(_FILL_BUCKETS), {"width": width})
    conn.exec_driver_sql("DROP TABLE temp.trend_frames")


def _upgrade_2_to_3(conn: sa.Connection) -> None:
    """Schema 2 -> 3: ``lot_buckets`` built from the frames; ``retention_cuts`` (empty) by ``ensure_schema``."""
    lot_buckets.create(conn)
    build_buckets(conn)


def _upgrade_3_to_4(conn: sa.Connection) -> None:
    """Schema 3 -> 4: no existing table changes; ``cluster_identity`` and
    ``member_data_dirs`` are created empty by ``ensure_schema`` (the leader fills them)."""


UPGRADERS = {1: _upgrade_1_to_2, 2: _upgrade_2_to_3, 3: _upgrade_3_to_4}
