"""The file format of the parking state's snapshot: write it, read its meta, restore from it.

One job: the snapshot *file*.  No Twisted, and no Raft tables: what Raft knows about
the snapshot's index (its term, the configuration) is handed in by the caller.  How
the file travels between nodes is ``parkd/node/snapshot_stream.py``; when to take
one, ``parkd/node/snapshots.py``.

**File format** (``FORMAT_VERSION`` 1): a small SQLite database (rollback journal,
not WAL) holding

* the parking tables of ``parkd/parking/schema.py`` (``snapshot_tables``: lots,
  cameras, incarnations, frames, trend buckets, retention cuts, camera registry,
  cluster identity, member data dirs, applied) in the layout of the parking schema
  version the file records, copied whole (with their indexes; the node's other
  tables are dropped, their pages left free);
* ``snapshot_meta``: one row (id 1) with ``format``, ``parking_schema``,
  ``"index"`` (= ``applied.last_applied``), ``term``, ``voters``/``learners``
  (JSON lists of node ids) and ``config_index`` (the CONFIG entry the membership
  comes from, 0 for the initial one);
* ``members``: (``position``, ``data``) rows, ``data`` being the JSON text of one
  opaque member description (id and addresses) handed in by the caller.

**Writing, in two steps.**  The snapshot's index is only known inside a read
transaction, and the node keeps applying entries while the copy runs, so:

1. :func:`pin_state` (fast, on the reactor thread) opens its own ``sqlite3``
   connection on the node's database, begins a read transaction and reads
   ``last_applied``: WAL gives that transaction a fixed view, so everything read
   through it is the state at :attr:`PinnedState.index`, however many entries are
   applied meanwhile.  The caller then works out the term and configuration at
   that index (it has the Raft core at hand).
2. :meth:`PinnedState.write` (on a worker thread: the connection may change
   threads, never be used by two at once) copies the database's pages as that
   transaction sees them with SQLite's online backup API, in C without the GIL, so
   the reactor thread keeps running (measured by ``benchmarks/snapshot_pause.py``),
   then drops the tables that are not parking state and writes the file's meta.
   The file appears at its name only whole and durable (:func:`publish_file`).
   A backup of the node (``parkctl``) writes its file the same way.

**Restoring.**  :func:`restore_snapshot` replaces the parking tables by the file's
in ONE transaction on the caller's Engine, and runs the caller's own half (the Raft
log's reset) inside it, so a crash leaves either the old state or the new one.

**Files of an older parking schema** (a node upgraded in place keeps its last
snapshot; a leader not yet upgraded sends its own) are read like current ones, and
restored from a temporary copy brought to the current schema by the same upgraders
as a node's database (``parkd/parking/schema.py``), next to the file and removed
afterwards.  A file of a newer schema, or one the upgraders cannot bring up, is
refused with :class:`SnapshotError`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

from parkd.db import StorageError, begin_immediate, fsync_path, storage_errors, upgrade
from parkd.parking.schema import PARKING_SCHEMA_VERSION, UPGRADERS, snapshot_tables
from parkd.parking.schema import metadata as _parking_metadata
from parkd.raft.types import SnapshotMeta

FORMAT_VERSION = 1
BACKUP_STEP_PAGES = 2560  # pages copied per backup step (10 MiB of 4 KiB pages), each step written out before the next
# Parking schemas a snapshot file may have: the current one, and older ones the upgraders bring up.
_READABLE_SCHEMAS = range(min(UPGRADERS, default=PARKING_SCHEMA_VERSION), PARKING_SCHEMA_VERSION + 1)


class SnapshotError(Exception):
    """A snapshot could not be written, or a file is not a usable snapshot."""


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A snapshot file written by :meth:`PinnedState.write`."""

    path: str
    index: int
    size_bytes: int
    seconds: float  # wall time of the copy
    term: int = 0
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()

    @property
    def meta(self) -> SnapshotMeta:
        return SnapshotMeta(self.index, self.term, self.voters, self.learners)


@dataclass(frozen=True, slots=True)
class SnapshotContents:
    """What a snapshot file says about itself (:func:`read_snapshot_meta`, :func:`restore_snapshot`)."""

    meta: SnapshotMeta
    members: tuple[Any, ...] = ()
    config_index: int = 0


# -- the file's own tables --------------------------------------------------------------

_file_meta = sa.MetaData()
_snapshot_meta = sa.Table(
    "snapshot_meta",
    _file_meta,
    sa.Column("id", sa.Integer, primary_key=True),  # always 1
    sa.Column("format", sa.Integer, nullable=False),
    sa.Column("parking_schema", sa.Integer, nullable=False),
    sa.Column("index", sa.Integer, nullable=False),
    sa.Column("term", sa.Integer, nullable=False),
    sa.Column("voters", sa.Text, nullable=False),
    sa.Column("learners", sa.Text, nullable=False),
    sa.Column("config_index", sa.Integer, nullable=False),
)
_members = sa.Table(
    "members",
    _file_meta,
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("data", sa.Text, nullable=False),
)


def _ddl(tables: Sequence[sa.Table]) -> list[str]:
    dialect = sqlite_dialect()
    return [str(sa.schema.CreateTable(t).compile(dialect=dialect)).strip() for t in tables]


def _columns(table: sa.Table) -> str:
    return ", ".join(f'"{c.name}"' for c in table.columns)


@contextlib.contextmanager
def _written_out_per_step(path: str):
    """A backup ``progress`` callback that fdatasyncs ``path`` after every step.

    Left to the final fsync, the whole copy (138 MB at 2 M frames) sits dirty in
    the page cache and goes to the disk at once, and the node's Raft log fsyncs
    wait behind it: acks took 250-500 ms (p99) while a node took a snapshot.
    Written out a step at a time, they wait for one step at most.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        yield lambda status, remaining, total: os.fdatasync(fd)
    finally:
        os.close(fd)


def publish_file(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give the finished file ``tmp`` the name ``path``, durably: fsync, rename, fsync the directory.

    A snapshot file exists under its name only whole: a crash leaves the previous
    file at ``path`` (or none) and at worst a stray ``tmp``.
    """
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(Path(path).absolute().parent, directory=True)


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        raise SnapshotError(f"{what} failed: {exc}") from exc


# -- writing ------------------------------------------------------------------------------


def pin_state(db_path: str | os.PathLike) -> PinnedState:
    """Fix the parking state of the database file ``db_path`` as it is now (step 1 of writing).

    Fast: opens a connection, begins a read transaction, reads ``last_applied``.
    Call :meth:`PinnedState.write` next (on any one thread), or :meth:`PinnedState.close`
    to give up.  Raises :class:`SnapshotError` for a missing file (never created
    here) or one without parking state.
    """
    with _errors(f"reading the parking state of {db_path}"):
        # mode=rw: a wrong path fails instead of creating an empty database there.
        uri = f"{Path(db_path).absolute().as_uri()}?mode=rw"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        with _errors(f"reading the parking state of {db_path}"):
            conn.execute("BEGIN")
            row = conn.execute("SELECT last_applied FROM main.applied WHERE id = 1").fetchone()
        if row is None:
            raise SnapshotError(f"{db_path} has no parking state")
    except BaseException:
        conn.close()
        raise
    return PinnedState(conn, row[0])


class PinnedState:
    """The parking state at :attr:`index`, held by an open read transaction (:func:`pin_state`).

    Holding it keeps SQLite from checkpointing the WAL past it: write it soon, or
    close it.  Usable as a context manager (closes on exit).
    """

    def __init__(self, conn: sqlite3.Connection, index: int) -> None:
        self._conn: sqlite3.Connection | None = conn
        self.index = index

    def write(
        self,
        out_path: str | os.PathLike,
        *,
        term: int,
        voters: Sequence[int],
        learners: Sequence[int],
        config_index: int,
        members: Sequence[Any] = (),
    ) -> SnapshotInfo:
        """Copy the pinned state to a snapshot file at ``out_path`` (step 2), then close.

        ``term`` is the term of the entry at :attr:`index`; ``voters``, ``learners``
        the configuration in effect there, from the CONFIG entry at ``config_index``
        (0: the initial one); ``members`` JSON-able member descriptions.  The file
        appears at ``out_path`` atomically.  Raises :class:`SnapshotError` (and leaves no temporary file behind).
        """
        if self._conn is None:
            raise SnapshotError("this pinned state was already written or closed")
        started = time.perf_counter()
        out = Path(out_path).absolute()
        tmp = None
        try:
            if not all(type(n) is int and n >= 0 for n in (term, config_index)):
                raise SnapshotError(f"snapshot term {term!r} / config index {config_index!r}")
            with _errors("writing a snapshot"):
                fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
                os.fchmod(fd, 0o644)  # like the database files SQLite creates, not mkstemp's 0600
                os.close(fd)
                self._copy(tmp, term, list(voters), list(learners), config_index, members)
                self.close()  # the copy is committed; the file is detached with the connection
                publish_file(tmp, out)
        except BaseException:
            self.close()
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise
        seconds = time.perf_counter() - started
        return SnapshotInfo(str(out), self.index, out.stat().st_size, seconds, term, tuple(voters), tuple(learners))

    def close(self) -> None:
        """End the read transaction and close the connection; idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            conn.close()

    def __enter__(self) -> PinnedState:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _copy(self, tmp: str, term: int, voters: list, learners: list, config_index: int, members) -> None:
        """Fill ``tmp`` with the pinned state: the whole database's pages, then the tables it must not keep go.

        SQLite's online backup API copies the pages of the pinned read transaction
        in C, without the GIL (0.8-1.4 s at 0.5 M frames, where ``INSERT … SELECT``
        of the same rows took 11-12 s: benchmarks/snapshot_pause.py), in steps of
        :data:`BACKUP_STEP_PAGES`, each written out before the next
        (:func:`_written_out_per_step`); the pinned read transaction keeps the copy
        from restarting when the node commits between steps.  Then, in one
        transaction on the new file: every table but the parking tables is dropped
        (the Raft log's pages stay as free pages: a few MB), and ``snapshot_meta``
        and ``members`` are written.  On failure the caller closes the connection
        and removes ``tmp``.
        """
        dst = sqlite3.connect(tmp, isolation_level=None)
        try:
            with _written_out_per_step(tmp) as progress:  # the pages of the pinned view, in steps
                self._conn.backup(dst, pages=BACKUP_STEP_PAGES, progress=progress)
        finally:
            dst.close()
        dst = sqlite3.connect(tmp, isolation_level=None)
        try:
            dst.execute("PRAGMA journal_mode=DELETE")  # the copied header says WAL; the file is a plain one
            dst.execute("BEGIN")
            keep = {t.name for t in snapshot_tables()}
            tables = [n for (n,) in dst.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for name in tables:
                if name not in keep and not name.startswith("sqlite_"):
                    dst.execute(f'DROP TABLE "{name}"')
            for statement in _ddl(_file_meta.sorted_tables):
                dst.execute(statement)
            dst.execute(
                f"INSERT INTO snapshot_meta ({_columns(_snapshot_meta)}) VALUES (1{', ?' * 7})",
                (
                    FORMAT_VERSION, PARKING_SCHEMA_VERSION, self.index, term,
                    json.dumps(voters), json.dumps(learners), config_index,
                ),
            )  # fmt: skip
            dst.executemany(
                "INSERT INTO members (position, data) VALUES (?, ?)",
                [(pos, json.dumps(member)) for pos, member in enumerate(members)],
            )
            dst.execute("COMMIT")  # synchronous FULL: fsynced
        finally:
            dst.close()


# -- reading a snapshot file ----------------------------------------------------------------


def _open_ro(path: str | os.PathLike) -> sqlite3.Connection:
    if not os.path.isfile(path):
        raise SnapshotError(f"no snapshot file at {path}")
    return sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True)


def read_snapshot_meta(path: str | os.PathLike) -> SnapshotContents:
    """The meta, members and config index a snapshot file records; SnapshotError if it is none."""
    try:
        conn = _open_ro(path)
    except sqlite3.Error as exc:
        raise SnapshotError(f"{path} is not a snapshot: {exc}") from exc
    try:
        row = conn.execute(
            'SELECT format, parking_schema, "index", term, voters, learners, config_index '
            "FROM snapshot_meta WHERE id = 1"
        ).fetchone()
        if row is None:
            raise SnapshotError(f"{path} has no snapshot_meta row")
        fmt, schema, index, term, voters, learners, config_index = row
        if fmt != FORMAT_VERSION or schema not in _READABLE_SCHEMAS:
            raise SnapshotError(
                f"{path}: snapshot format {fmt} / parking schema {schema}, "
                f"expected {FORMAT_VERSION} / {PARKING_SCHEMA_VERSION} (or an older schema this parkd upgrades)"
            )
        applied = conn.execute("SELECT last_applied FROM applied WHERE id = 1").fetchone()
        if applied is None or applied[0] != index:
            raise SnapshotError(f"{path}: applied row {applied} does not match the snapshot index {index}")
        if schema == PARKING_SCHEMA_VERSION:  # an older file's tables are checked once upgraded
            _check_tables(path, conn)
        if not all(type(n) is int and n >= 0 for n in (index, term)):
            raise SnapshotError(f"{path}: snapshot index {index!r} / term {term!r}")
        members = tuple(json.loads(d) for (d,) in conn.execute("SELECT data FROM members ORDER BY position"))
        meta = SnapshotMeta(index, term, _node_ids(path, voters), _node_ids(path, learners))
        return SnapshotContents(meta, members, config_index)
    except (sqlite3.Error, ValueError) as exc:
        raise SnapshotError(f"{path} is not a snapshot: {exc}") from exc
    finally:
        conn.close()


def _check_tables(path, conn: sqlite3.Connection) -> None:
    """The file has every column :func:`restore_snapshot` copies."""
    for table in snapshot_tables():
        have = {row[1] for row in conn.execute(f'PRAGMA table_info("{table.name}")')}
        missing = [c.name for c in table.columns if c.name not in have]
        if missing:
            raise SnapshotError(f"{path}: table {table.name} lacks {', '.join(missing)}")


def _file_schema(path) -> int:
    conn = _open_ro(path)
    try:
        return conn.execute("SELECT parking_schema FROM snapshot_meta WHERE id = 1").fetchone()[0]
    finally:
        conn.close()


@contextlib.contextmanager
def current_schema(path: str | os.PathLike) -> Iterator[str]:
    """``path`` itself if its parking schema is the current one, else an upgraded temporary copy.

    The copy sits next to the file (same disk) and is removed on exit.  Raises
    SnapshotError when the file's tables cannot be upgraded.
    """
    found = _file_schema(path)
    if found == PARKING_SCHEMA_VERSION:
        yield str(path)
        return
    source = Path(path).absolute()
    fd, tmp = tempfile.mkstemp(prefix=f".{source.name}.", suffix=".upgrade", dir=source.parent)
    os.close(fd)
    try:
        with _errors(f"copying {path} to upgrade it"):
            shutil.copyfile(source, tmp)
        engine = sa.create_engine(f"sqlite:///{tmp}")
        try:
            with engine.begin() as conn:
                upgrade(conn, _parking_metadata, "parking", found, PARKING_SCHEMA_VERSION, UPGRADERS)
                conn.exec_driver_sql("UPDATE snapshot_meta SET parking_schema = ?", (PARKING_SCHEMA_VERSION,))
        except (sa.exc.SQLAlchemyError, StorageError) as exc:
            what = f"cannot upgrade parking schema {found} to {PARKING_SCHEMA_VERSION}"
            raise SnapshotError(f"{path}: {what}: {exc}") from exc
        finally:
            engine.dispose()
        read_snapshot_meta(tmp)  # its tables are now checked
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _node_ids(path, text: str) -> tuple[int, ...]:
    ids = json.loads(text)
    if not isinstance(ids, list) or not all(type(i) is int and 0 < i < 1 << 32 for i in ids):
        raise SnapshotError(f"{path}: {text[:100]!r} is not a list of node ids")
    return tuple(ids)


# -- restoring ------------------------------------------------------------------------------------


def restore_snapshot(
    engine: sa.Engine,
    snapshot_path: str | os.PathLike,
    also_in_transaction: Callable[[sa.Connection], None],
) -> SnapshotContents:
    """Replace the parking tables by a snapshot's, in ONE transaction with the caller's half.

    In that transaction the rows of the parking tables (``snapshot_tables``)
    become the snapshot's (from an upgraded copy if the file has an older schema),
    then ``also_in_transaction(conn)`` runs (the node resets the Raft log there:
    ``parkd.raft.storage.install_snapshot_in``).  If
    either fails, nothing changes; a crash leaves the old state or the new one.
    Refuses (ValueError) a snapshot below the applied index.  The parking tables
    must exist (the node opened them).  Raises SnapshotError for a bad file (before
    touching the database), StorageError for a database failure; whatever
    ``also_in_transaction`` raises passes through.

    It costs about 1.5-2.5 s per million frames (benchmarks/snapshot_pause.py), too
    long for the reactor thread.  It may run on a worker thread (its statements
    release the GIL): reads on other connections see the old state until it commits,
    but writes of other connections wait for it, SQLite having a single writer.
    """
    contents = read_snapshot_meta(snapshot_path)
    index = contents.meta.index
    with current_schema(snapshot_path) as path, storage_errors("restoring a snapshot"), engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        raw.execute("ATTACH DATABASE ? AS snap", (path,))
        try:
            with begin_immediate(conn):  # the node's reactor thread writes meanwhile (compaction, housekeeping)
                applied = conn.exec_driver_sql("SELECT last_applied FROM main.applied WHERE id = 1").scalar()
                if applied is not None and applied > index:
                    raise ValueError(f"snapshot at {index} is older than the applied index {applied}")
                for table in snapshot_tables():
                    cols = _columns(table)
                    conn.exec_driver_sql(f"DELETE FROM main.{table.name}")
                    conn.exec_driver_sql(
                        f"INSERT INTO main.{table.name} ({cols}) SELECT {cols} FROM snap.{table.name}"
                    )
                also_in_transaction(conn)
        finally:
            raw.execute("DETACH DATABASE snap")
    return contents
