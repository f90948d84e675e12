"""This data dir's own id (component ``node``): made at first open, never replicated.

Every data dir gets a random id (``uuid4().hex``) the first time a node opens it; a
node presents it in the PeerHello that opens each of its raft connections, and the
cluster records which data dir each member runs on (``parkd/node/cluster_identity.py``).
A member that comes back with a new id lost its data dir: it has none of what it
acknowledged, and must not count as the member it was.

The id lives in the node's database, in a table of its own that no snapshot copies:
installing a snapshot does not change which data dir this is.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import sqlalchemy as sa

from parkd.db import ensure_schema, storage_errors

NODE_SCHEMA_VERSION = 1

_meta = sa.MetaData()
_identity = sa.Table(
    "data_dir_identity",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True),  # always 1
    sa.Column("data_dir_id", sa.Text, nullable=False),  # 32 lowercase hex digits
)


@dataclass(frozen=True)
class DataDirIdentity:
    """This data dir's id; ``created``: made just now (the data dir is brand new)."""

    data_dir_id: str
    created: bool

    @classmethod
    def load_or_create(cls, engine: sa.Engine) -> DataDirIdentity:
        """The id stored in ``engine``'s database, made and stored if it has none."""
        with storage_errors("reading the data dir's id"), engine.begin() as conn:
            ensure_schema(conn, _meta, "node", NODE_SCHEMA_VERSION)
            found = conn.scalar(sa.select(_identity.c.data_dir_id).where(_identity.c.id == 1))
            if found is not None:
                return cls(found, created=False)
            made = uuid.uuid4().hex
            conn.execute(_identity.insert().values(id=1, data_dir_id=made))
            return cls(made, created=True)
