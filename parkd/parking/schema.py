"""The parking state's tables and their schema version (component ``parking``).

``lots``, ``cameras``, ``frames`` and ``applied`` live in the node's database next
to Raft's tables; a snapshot copies exactly these (:func:`snapshot_tables`).
A change to them raises :data:`PARKING_SCHEMA_VERSION` and comes with an upgrader
(``parkd.db.ensure_schema``) tested on a database made by the previous code.
"""

from __future__ import annotations

import sqlalchemy as sa

PARKING_SCHEMA_VERSION = 1

metadata = sa.MetaData()
lots = sa.Table(
    "lots",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("capacity", sa.Integer, nullable=False),
    sa.Column("free", sa.Integer),  # NULL until a camera of the lot reports
    sa.Column("updated_at", sa.Float),
)
cameras = sa.Table(
    "cameras",
    metadata,
    sa.Column("camera_id", sa.Integer, primary_key=True),
    sa.Column("lot", sa.Text, nullable=False),
    sa.Column("last_seq", sa.Integer, nullable=False),  # highest applied seq
    sa.Column("free", sa.Integer, nullable=False),  # of the frame with last_seq
    sa.Column("last_seen", sa.Float, nullable=False),  # its captured_at
    sa.Column("trimmed_seq", sa.Integer, nullable=False, server_default="0"),
)
frames = sa.Table(
    "frames",
    metadata,
    sa.Column("camera_id", sa.Integer, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("free", sa.Integer, nullable=False),
    sa.Column("captured_at", sa.Float, nullable=False),
    sa.Column("log_index", sa.Integer, nullable=False),
)
applied = sa.Table(
    "applied",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),  # always 1: a single row
    sa.Column("last_applied", sa.Integer, nullable=False),
)


def snapshot_tables() -> tuple[sa.Table, ...]:
    """The tables a snapshot copies whole, in a fixed order (``parkd/parking/snapshot.py``)."""
    return (lots, cameras, frames, applied)
