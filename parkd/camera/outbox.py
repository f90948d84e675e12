"""The camera's durable outbox: frames not yet acknowledged, the next seq, the incarnation.

A frame is stored (``synchronous=FULL``) before it is sent, and deleted only
when a node acknowledges it, so a camera that crashes re-sends what was never
acknowledged; ``next_seq`` lives in the same database, so sequence numbers are
never reused across restarts (CONTRACT §5).

The **incarnation** (CONTRACT §9) is a random nonzero 64-bit number made with the
state dir and kept with it: the cluster's exactly-once is per ``(camera_id,
incarnation, seq)``, so a camera whose state dir was lost or replaced starts
again at seq 1 as a new incarnation instead of being taken for a retry of its
old frames.  A state dir made before incarnations existed keeps incarnation 0,
the one its frames already in the cluster belong to.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

from sqlalchemy import (
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)

from parkd.db import u64_from_sqlite, u64_to_sqlite

metadata = MetaData()
meta = Table("meta", metadata, Column("key", String, primary_key=True), Column("value", Integer, nullable=False))
frames = Table(
    "frames",
    metadata,
    Column("seq", Integer, primary_key=True),
    Column("captured_at", Float, nullable=False),
    Column("payload", LargeBinary, nullable=False),
)


@dataclass(frozen=True)
class Frame:
    seq: int
    captured_at: float
    payload: bytes


def new_incarnation(rng: random.Random) -> int:
    """A random nonzero 64-bit incarnation (0 is the incarnation of state dirs made before them)."""
    while True:
        incarnation = rng.getrandbits(64)
        if incarnation:
            return incarnation


class Outbox:
    """SQLite outbox holding at most ``limit`` unacknowledged frames.

    ``rng`` makes a new state dir's incarnation (default: the operating system's
    randomness, so that two state dirs never share one).
    """

    def __init__(self, path: str, limit: int, rng: random.Random | None = None):
        self.limit = limit
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.engine = create_engine(f"sqlite:///{path}")
        event.listen(self.engine, "connect", _pragmas)
        metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            made_before = _read(conn, "next_seq") is not None
            if _read(conn, "incarnation") is None:
                # Made now: a new incarnation.  Made by the code before incarnations: 0.
                made = 0 if made_before else new_incarnation(rng or random.SystemRandom())
                conn.execute(insert(meta).values(key="incarnation", value=u64_to_sqlite(made)))
            for key in ("next_seq", "dropped"):
                if _read(conn, key) is None:
                    conn.execute(insert(meta).values(key=key, value=1 if key == "next_seq" else 0))
            self.incarnation: int = u64_from_sqlite(_read(conn, "incarnation"))

    def add(self, payload: bytes, captured_at: float) -> tuple[Frame, int]:
        """Store a new frame with the next seq; returns it and how many old frames were dropped."""
        with self.engine.begin() as conn:
            seq = conn.execute(select(meta.c.value).where(meta.c.key == "next_seq")).scalar_one()
            conn.execute(update(meta).where(meta.c.key == "next_seq").values(value=seq + 1))
            conn.execute(insert(frames).values(seq=seq, captured_at=captured_at, payload=payload))
            count = conn.execute(select(func.count()).select_from(frames)).scalar_one()
            dropped = max(0, count - self.limit)
            if dropped:
                oldest = conn.execute(select(frames.c.seq).order_by(frames.c.seq).limit(dropped)).scalars().all()
                conn.execute(delete(frames).where(frames.c.seq <= oldest[-1]))
                conn.execute(update(meta).where(meta.c.key == "dropped").values(value=meta.c.value + dropped))
        return Frame(seq, captured_at, payload), dropped

    def pending(self, after: int = 0, limit: int | None = None) -> list[Frame]:
        """Unacknowledged frames with seq > ``after``, oldest first."""
        query = select(frames).where(frames.c.seq > after).order_by(frames.c.seq)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [Frame(*row) for row in conn.execute(query)]

    def ack(self, seq: int) -> bool:
        """Forget an acknowledged frame; False if it was not (or no longer) here."""
        with self.engine.begin() as conn:
            return conn.execute(delete(frames).where(frames.c.seq == seq)).rowcount > 0

    def discard(self, seq: int) -> bool:
        """Drop a frame the cluster refused for good (counted with the dropped)."""
        with self.engine.begin() as conn:
            gone = conn.execute(delete(frames).where(frames.c.seq == seq)).rowcount > 0
            if gone:
                conn.execute(update(meta).where(meta.c.key == "dropped").values(value=meta.c.value + 1))
        return gone

    def counter(self, key: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar_one()

    def close(self) -> None:
        self.engine.dispose()


def _read(conn, key: str) -> int | None:
    return conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar_one_or_none()


def _pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()
