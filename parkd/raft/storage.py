"""Durable Raft state: hard state, log entries and snapshot position (DESIGN layer 2).

SQLAlchemy Core on SQLite in WAL mode with ``synchronous=FULL`` (the Engine and the
transactions come from :mod:`parkd.db`): ``NORMAL`` can lose the last commits on power
loss, which for Raft means a forgotten vote.  The node keeps this log and the parking
tables in one file and one Engine.

The core only reads storage (at start-up, through :meth:`load`); the node writes it,
one :meth:`save` per Ready, before any message of that Ready is sent.  Every failure
surfaces as :class:`StorageError`: the node must stop rather than run on with a log
it cannot trust, except on a full disk, where the transaction was rolled back and the
driver retries the same write (``parkd/node/driver.py``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from parkd.db import (
    DriverStatement,
    StorageError,
    ensure_schema,
    fsync_path,
    open_engine,
    storage_errors,
    UnsyncedWriter,
)
from parkd.raft.types import Entry, EntryKind, HardState, PersistedState, SnapshotMeta

RAFT_SCHEMA_VERSION = 1
TRIM_BATCH = 5_000  # log entries per compaction transaction: a few ms of DELETE

_meta = sa.MetaData()
_hard_state = sa.Table(
    "hard_state",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True),  # always 1: a single row
    sa.Column("term", sa.Integer, nullable=False),
    sa.Column("vote", sa.Integer, nullable=False),
    sa.Column("commit", sa.Integer, nullable=False),
)
_entries = sa.Table(
    "entries",
    _meta,
    sa.Column("index", sa.Integer, primary_key=True),  # the rowid: appends stay cheap
    sa.Column("term", sa.Integer, nullable=False),
    sa.Column("kind", sa.Integer, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
)
_snapshot = sa.Table(
    "snapshot_meta",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True),  # always 1: a single row
    sa.Column("index", sa.Integer, nullable=False),
    sa.Column("term", sa.Integer, nullable=False),
    sa.Column("voters", sa.Text, nullable=False),  # JSON list of node ids
    sa.Column("learners", sa.Text, nullable=False),
)
# The append hot path binds plain tuples at the driver level, in this column order.
_insert_entries = DriverStatement(_entries.insert())
assert _insert_entries.names == ("index", "term", "kind", "data")
_truncate_from = _entries.delete().where(_entries.c["index"] >= sa.bindparam("first"))
_update_hard_state = _hard_state.update().where(_hard_state.c.id == 1)
_set_hard_state = DriverStatement(
    _hard_state.update()
    .where(_hard_state.c.id == sa.literal_column("1"))
    .values(term=sa.bindparam("t"), vote=sa.bindparam("v"), commit=sa.bindparam("c"))
)
assert _set_hard_state.names == ("t", "v", "c")
_update_snapshot = _snapshot.update().where(_snapshot.c.id == 1)


def _snapshot_row(meta: SnapshotMeta) -> dict:
    return {
        "index": meta.index,
        "term": meta.term,
        "voters": json.dumps(list(meta.voters)),
        "learners": json.dumps(list(meta.learners)),
    }


class Storage(Protocol):
    """What the node needs from durable Raft state; both classes below provide it."""

    def load(self) -> PersistedState: ...

    def save(self, hard_state: HardState | None, entries: Sequence[Entry], *, sync: bool = True) -> None: ...

    def sync(self) -> None: ...

    def compact(self, upto_index: int, meta: SnapshotMeta) -> None: ...

    def trim(self) -> bool: ...

    def close(self) -> None: ...


def _check_append(entries: Sequence[Entry], last_index: int, snapshot_index: int) -> None:
    """Refuse a batch that would leave a hole in the log or rewrite the snapshot.

    The core must never produce one; checking here turns such a bug into a loud
    error instead of a silently broken log on disk.
    """
    first = entries[0].index
    if not snapshot_index < first <= last_index + 1:
        raise ValueError(
            f"entries start at {first}; the log allows {snapshot_index + 1}..{last_index + 1}"
        )
    for offset, entry in enumerate(entries):
        if entry.index != first + offset:
            raise ValueError(f"entries are not contiguous at index {entry.index}")


def _check_compact(upto_index: int, meta: SnapshotMeta, current: SnapshotMeta, last_index: int) -> None:
    """Refuse a compaction that would leave entries disconnected from the snapshot."""
    if upto_index > meta.index:
        raise ValueError(f"cannot discard entries up to {upto_index} beyond the snapshot at {meta.index}")
    if meta.index < current.index:
        raise ValueError(f"snapshot at {meta.index} is older than the stored one at {current.index}")
    if upto_index < last_index < meta.index:
        raise ValueError(
            f"entries up to {last_index} would remain below the snapshot at {meta.index}; discard them all"
        )


def install_snapshot_in(conn: sa.Connection, meta: SnapshotMeta) -> None:
    """The Raft half of installing a snapshot, inside the caller's transaction.

    Deletes every log entry, records ``meta`` as the stored snapshot and raises
    ``hard_state.commit`` to at least ``meta.index`` and ``term`` to at least
    ``meta.term`` (clearing the vote only if the term moves), so that a restart
    right after it never finds a term below its last log term.  The caller puts the
    state machine's half in the same transaction, so a crash leaves either the old
    state or the new one.  A :class:`SqliteStorage` open
    on the same database must be told afterwards (:meth:`SqliteStorage.refresh`).
    Refuses (ValueError) a snapshot older than the stored one.
    """
    current = SqliteStorage._read_snapshot(conn)
    if meta.index < current.index:
        raise ValueError(f"snapshot at {meta.index} is older than the stored one at {current.index}")
    conn.execute(_entries.delete())
    conn.execute(_update_snapshot, _snapshot_row(meta))
    conn.execute(_update_hard_state.where(_hard_state.c.commit < meta.index).values(commit=meta.index))
    conn.execute(_update_hard_state.where(_hard_state.c.term < meta.term).values(term=meta.term, vote=0))


class MemoryStorage:
    """Same semantics as :class:`SqliteStorage`, kept in memory, for core and driver tests."""

    def __init__(self) -> None:
        self._hard_state = HardState()
        self._entries: list[Entry] = []
        self._snapshot = SnapshotMeta()

    def load(self) -> PersistedState:
        return PersistedState(self._hard_state, tuple(self._entries), self._snapshot)

    def save(self, hard_state: HardState | None, entries: Sequence[Entry], *, sync: bool = True) -> None:
        if entries:
            last_index = self._entries[-1].index if self._entries else self._snapshot.index
            _check_append(entries, last_index, self._snapshot.index)
            keep = entries[0].index - (self._entries[0].index if self._entries else entries[0].index)
            self._entries[keep:] = entries
        if hard_state is not None:
            self._hard_state = hard_state

    def sync(self) -> None:
        """Nothing to make durable in memory."""

    def compact(self, upto_index: int, meta: SnapshotMeta) -> None:
        last_index = self._entries[-1].index if self._entries else self._snapshot.index
        _check_compact(upto_index, meta, self._snapshot, last_index)
        self._entries = [e for e in self._entries if e.index > upto_index]
        self._snapshot = meta

    def trim(self) -> bool:
        """As :meth:`SqliteStorage.trim`: :meth:`compact` already dropped everything here."""
        return False

    def install_snapshot(self, meta: SnapshotMeta) -> None:
        """As :meth:`SqliteStorage.install_snapshot`."""
        if meta.index < self._snapshot.index:
            raise ValueError(f"snapshot at {meta.index} is older than the stored one at {self._snapshot.index}")
        self._entries = []
        self._snapshot = meta
        term, vote, commit = self._hard_state.term, self._hard_state.vote, self._hard_state.commit
        if term < meta.term:
            term, vote = meta.term, 0
        self._hard_state = HardState(term, vote, max(commit, meta.index))

    def close(self) -> None:
        """Nothing to release; present so both storages are interchangeable."""


class SqliteStorage:
    """Raft state in the tables ``hard_state``, ``entries`` and ``snapshot_meta``.

    Pass the Engine shared with the parking state machine, or use :meth:`open`
    for a file of its own.  Not thread-safe: the node calls it from one thread.
    """

    def __init__(self, engine: sa.Engine, *, owns_engine: bool = False) -> None:
        self._engine = engine
        self._owns_engine = owns_engine
        self._unsynced = UnsyncedWriter.of(engine)
        self.trim_batch = TRIM_BATCH
        self._trim_upto = 0  # compacted entries up to here may still be on disk...
        self._trim_first = 1  # ...from here (the lowest not yet known deleted)
        with storage_errors("opening the Raft storage"), engine.begin() as conn:
            ensure_schema(conn, _meta, "raft", RAFT_SCHEMA_VERSION)
            conn.execute(
                sqlite_insert(_hard_state)
                .values(id=1, term=0, vote=0, commit=0)
                .on_conflict_do_nothing()
            )
            conn.execute(
                sqlite_insert(_snapshot)
                .values(id=1, index=0, term=0, voters="[]", learners="[]")
                .on_conflict_do_nothing()
            )
        self.refresh()

    @classmethod
    def open(cls, path_or_url: str) -> SqliteStorage:
        """A storage on its own Engine, disposed of by :meth:`close`."""
        try:
            engine = open_engine(path_or_url)
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"opening {path_or_url} failed: {exc}") from exc
        try:
            return cls(engine, owns_engine=True)
        except BaseException:
            engine.dispose()
            raise

    def load(self) -> PersistedState:
        with storage_errors("loading the Raft state"), self._engine.begin() as conn:
            term, vote, commit = conn.execute(
                sa.select(_hard_state.c.term, _hard_state.c.vote, _hard_state.c.commit)
            ).one()
            rows = conn.execute(sa.select(_entries).order_by(_entries.c["index"]))
            entries = tuple(Entry(i, t, EntryKind(k), d) for i, t, k, d in rows)
            snapshot = self._read_snapshot(conn)
        return PersistedState(HardState(term, vote, commit), entries, snapshot)

    def save(self, hard_state: HardState | None, entries: Sequence[Entry], *, sync: bool = True) -> None:
        """Persist one Ready in one transaction: truncate, append, hard state.

        Entries replace any stored entries from ``entries[0].index`` on (a
        conflicting suffix, Raft §5.3).  The rows go in with one driver-level
        executemany of tuples (:class:`DriverStatement`): per row it costs only
        parameter binding, 1.5-2x as fast as Core's executemany of dicts for
        100-1000 entries (measured).

        ``sync=False`` commits without an fsync (see :class:`UnsyncedWriter`):
        the node then fsyncs with :meth:`sync` off the reactor before anything
        that needs the write leaves it.
        """
        if entries:
            _check_append(entries, self._last_index, self._snapshot_meta.index)
        elif hard_state is None:
            return
        transaction = self._engine.begin() if sync else self._unsynced.transaction()
        with storage_errors("saving the Raft state"), transaction as conn:
            if entries:
                if entries[0].index <= self._last_index:
                    conn.execute(_truncate_from, {"first": entries[0].index})
                _insert_entries.executemany(conn, [(e.index, e.term, int(e.kind), e.data) for e in entries])
            if hard_state is not None:
                _set_hard_state.execute(conn, (hard_state.term, hard_state.vote, hard_state.commit))
        if entries:
            self._last_index = entries[-1].index

    def sync(self) -> None:
        """Make every transaction committed so far durable: an fsync of the WAL file.

        For a Ready saved with ``sync=False``; the node runs this on a thread of
        its own while the reactor goes on (``parkd/node/driver.py``).  It makes no
        SQLite call, so it is safe beside the reactor thread's transactions.  In
        WAL mode a commit appends its frames to the WAL with ``write()``; with
        ``synchronous=FULL`` SQLite would fsync the WAL at that point, and this is
        that fsync, later and elsewhere.  (SQLite itself syncs the WAL before a
        checkpoint copies it into the database, and the database after, so frames
        already checkpointed are durable too.)  Without a WAL file (all connections
        closed: checkpointed into the database file), the database file is fsynced.
        """
        path = self._engine.url.database
        if not path or path == ":memory:" or path.startswith("file:"):
            return
        name = path + "-wal"
        try:
            try:
                fsync_path(name)
            except FileNotFoundError:
                name = path
                fsync_path(name)
        except OSError as e:
            raise StorageError(f"making the Raft log durable (fsync of {name}) failed: {e}") from e

    def compact(self, upto_index: int, meta: SnapshotMeta) -> None:
        """Record the snapshot and drop the first ``trim_batch`` entries up to ``upto_index``.

        The rest of the entries up to ``upto_index`` go in later batches, by
        :meth:`trim` (one short transaction each, so no writer waits long): a
        DELETE of 100k log rows in one statement held the reactor for 0.1-0.35 s
        (benchmarks/snapshot_pause.py).  Until then the log on disk starts lower
        than it needs to, which is harmless: a log loaded from it overlaps the
        snapshot (``RaftLog`` takes its first entry as the offset), and the next
        compaction removes them anyway.
        """
        _check_compact(upto_index, meta, self._snapshot_meta, self._last_index)
        with storage_errors("compacting the Raft log"), self._engine.begin() as conn:
            self._trim_upto = max(self._trim_upto, upto_index)
            self._delete_batch(conn)
            conn.execute(
                _snapshot.update()
                .where(_snapshot.c.id == 1)
                .values(
                    index=meta.index,
                    term=meta.term,
                    voters=json.dumps(list(meta.voters)),
                    learners=json.dumps(list(meta.learners)),
                )
            )
        self._snapshot_meta = meta
        self._last_index = max(self._last_index, meta.index)

    def trim(self) -> bool:
        """Drop the next batch of entries a compaction left; True while some are left."""
        if self._trim_first > self._trim_upto:
            return False
        with storage_errors("compacting the Raft log"), self._engine.begin() as conn:
            self._delete_batch(conn)
        return self._trim_first <= self._trim_upto

    def _delete_batch(self, conn: sa.Connection) -> None:
        """Delete at most ``trim_batch`` entries from the bottom of the log, none above ``_trim_upto``."""
        if self._trim_first > self._trim_upto:
            return
        first = conn.scalar(sa.select(sa.func.min(_entries.c["index"])))
        if first is None or first > self._trim_upto:
            self._trim_first = self._trim_upto + 1
            return
        last = min(self._trim_upto, first + self.trim_batch - 1)
        conn.execute(_entries.delete().where(_entries.c["index"] <= last))
        self._trim_first = last + 1

    def install_snapshot(self, meta: SnapshotMeta) -> None:
        """Replace the whole log by the snapshot ``meta`` in one transaction.

        See :func:`install_snapshot_in`, which this wraps; use that one directly
        to install the state machine's tables in the same transaction.
        """
        with storage_errors("installing a snapshot"), self._engine.begin() as conn:
            install_snapshot_in(conn, meta)
        self.refresh()

    def refresh(self) -> None:
        """Re-read the snapshot position and last index after someone else changed the log.

        Needed after :func:`install_snapshot_in` ran in a transaction of the caller's.
        """
        with storage_errors("reading the Raft log position"), self._engine.begin() as conn:
            self._snapshot_meta = self._read_snapshot(conn)
            last = conn.scalar(sa.select(sa.func.max(_entries.c["index"]))) or 0
        self._last_index = max(last, self._snapshot_meta.index)

    def close(self) -> None:
        self._unsynced.close()
        if self._owns_engine:
            self._engine.dispose()

    @staticmethod
    def _read_snapshot(conn: sa.Connection) -> SnapshotMeta:
        index, term, voters, learners = conn.execute(
            sa.select(_snapshot.c["index"], _snapshot.c.term, _snapshot.c.voters, _snapshot.c.learners)
        ).one()
        return SnapshotMeta(index, term, tuple(json.loads(voters)), tuple(json.loads(learners)))
