"""The parking state's tables, their schema version and upgraders (component ``parking``).

``lots``, ``cameras``, ``incarnations``, ``frames``, ``camera_registry``,
``cluster_identity``, ``member_data_dirs`` and ``applied`` live in the node's database next to Raft's tables; a snapshot copies
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
3. Cluster identity (CONTRACT §10): ``cluster_identity`` (one row once the cluster id
   entry is applied) and ``member_data_dirs`` (each member's data-dir id; a member left out of the configuration keeps its
   row, ``retired``).  The
   upgrade adds them empty: the leader proposes the cluster id and the members'
   data-dir ids after it (``parkd/node/cluster_identity.py``).
"""

from __future__ import annotations

import sqlalchemy as sa

from parkd.db import u64_from_sqlite, u64_to_sqlite

PARKING_SCHEMA_VERSION = 3

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
    return (lots, cameras, incarnations, frames, camera_registry, cluster_identity, member_data_dirs, applied)


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


def _upgrade_2_to_3(conn: sa.Connection) -> None:
    """Schema 2 -> 3: no existing table changes; ``cluster_identity`` and
    ``member_data_dirs`` are created empty by ``ensure_schema`` (the leader fills them)."""


UPGRADERS = {1: _upgrade_1_to_2, 2: _upgrade_2_to_3}
