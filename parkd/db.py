"""The node's SQLite database as every component shares it (DESIGN base layer).

One job: the plumbing under the Raft store and the parking state, which keep their
tables in one file.  :func:`open_engine` builds the one Engine they share (WAL,
``synchronous=FULL``, transactions that begin at the first statement);
:class:`UnsyncedWriter` keeps one connection for the transactions whose commit
skips the fsync (and for the API's point reads between them);
:func:`checkpoint_truncate` and :func:`vacuum_step` give a large delete's space back
(:func:`convert_to_incremental_vacuum` switches a file made before that);
:func:`ensure_schema` creates a component's tables, versions them and runs its
upgraders; :class:`DriverStatement` runs a Core statement compiled once; every
database failure surfaces as :class:`StorageError` (:func:`storage_errors`), and
:func:`is_disk_full` tells a full disk from other failures.

No component's tables are defined here, and nothing here knows Raft or parking.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

Upgrader = Callable[[sa.Connection], None]

JOURNAL_SIZE_LIMIT = 64 << 20  # bytes of WAL kept after a checkpoint resets it
VACUUM_PAGES = 256  # free pages given back per vacuum_step (1 MiB at 4 KiB pages)


class StorageError(Exception):
    """Persistent state could not be read or written; the cause is chained."""


@contextlib.contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """Re-raise any database failure during ``what`` as :class:`StorageError`."""
    try:
        yield
    except (sa.exc.SQLAlchemyError, sqlite3.Error) as exc:
        raise StorageError(f"{what} failed: {exc}") from exc


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error``, or an exception it was raised from, says the disk is full.

    SQLite reports a write that found no space as ``SQLITE_FULL`` (and rolls the
    transaction back); a plain file write as ``ENOSPC`` or ``EDQUOT``.  Every
    other failure (corruption, an I/O error) is something else.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, sqlite3.Error) and getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return True
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        orig = getattr(error, "orig", None)  # SQLAlchemy's DBAPIError wraps the driver's exception
        error = orig if isinstance(orig, BaseException) else (error.__cause__ or error.__context__)
    return False


def open_engine(path_or_url: str) -> sa.Engine:
    """An Engine on one SQLite file (or URL) with the durability the Raft log needs.

    WAL with ``synchronous=FULL``: ``NORMAL`` can lose the last commits on power
    loss, which for Raft means a forgotten vote.  Also takes transaction control
    from the ``sqlite3`` module, which by default starts transactions only at the
    first write (SQLAlchemy's documented recipe): reads inside ``engine.begin()``
    then belong to the same transaction as the writes that follow them.

    Bounded files: the WAL is cut back to ``JOURNAL_SIZE_LIMIT`` bytes whenever a
    checkpoint resets it (without it, the WAL keeps the size of its largest
    transaction burst for ever), and a database created here frees pages
    incrementally (``auto_vacuum = INCREMENTAL``: :func:`vacuum_step`).  The pragma
    does nothing on a file that already has tables; one made by an older parkd
    switches with a one-time ``VACUUM`` when a node opens it
    (:func:`convert_to_incremental_vacuum`, README "Sizing and housekeeping").
    """
    url = path_or_url if "://" in path_or_url else f"sqlite:///{path_or_url}"
    engine = sa.create_engine(url)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if cursor.execute("PRAGMA page_count").fetchone()[0] == 0:
            # Only a new file takes it (before journal_mode); on an existing one setting it wants the
            # write lock, so a connection opened while another holds it (a snapshot install) waited 5 s and failed.
            cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        # On the DBAPI connection: SQLAlchemy's own execute would cost more than the BEGIN.
        statement = "BEGIN IMMEDIATE" if conn.get_execution_options().get(_IMMEDIATE) else "BEGIN"
        conn.connection.dbapi_connection.execute(statement)

    return engine


_writers: weakref.WeakKeyDictionary[sa.Engine, UnsyncedWriter] = weakref.WeakKeyDictionary()  # UnsyncedWriter.of


class UnsyncedWriter:
    """Transactions whose commit is not fsynced (``synchronous=NORMAL`` in WAL mode).

    For writes a crash may undo without harm, as long as it undoes only the
    newest ones: the WAL is written in order, so a crash loses a suffix of the
    commits, and any later FULL commit (or :meth:`SqliteStorage.sync`) fsyncs the
    WAL with these in it.  Used to apply committed entries (they are applied again
    from the durable log after a restart) and to write the Raft log before its
    fsync runs off the reactor.

    One connection is kept for the thread that writes first (the reactor: these
    are the per-frame transactions), with its pragma set once.  Checking one out
    of the pool per transaction, switching ``synchronous`` there and back, and
    closing it cost more than a one-frame transaction's statements (about 60 us of
    the 150 us; measured with cProfile on a node under one camera).  Any other
    thread gets a pooled connection per transaction.  The kept connection goes
    back to the pool on :meth:`close` or when the engine is disposed of.

    Writers of one database share one instance, :meth:`of` its engine (the Raft
    log's and the state machine's): SQLite drops a connection's page cache
    whenever another connection committed, so two kept connections taking turns
    read every page they touch again.  For the same reasons the reads the API
    makes per request on that thread go through the kept connection too
    (:meth:`reading`).
    """

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = weakref.proxy(engine)  # the engine keeps its writer (:meth:`of`), not the other way
        self._kept: sa.Connection | None = None
        self._owner: int | None = None  # the thread the kept connection belongs to
        self._writing = False  # a transaction is open on the kept connection
        sa.event.listen(engine, "engine_disposed", self._disposed)

    @classmethod
    def of(cls, engine: sa.Engine) -> UnsyncedWriter:
        """The engine's writer, made on first use."""
        writer = _writers.get(engine)
        if writer is None:
            writer = _writers[engine] = cls(engine)
        return writer

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        thread = threading.get_ident()
        if self._owner is None:
            self._owner = thread
        if thread != self._owner:
            with self._engine.connect() as conn:
                with _synchronous_normal(conn), conn.begin():
                    yield conn
            return
        conn = self._kept
        if conn is None:
            conn = self._engine.connect()
            conn.connection.dbapi_connection.execute("PRAGMA synchronous=NORMAL")
            self._kept = conn
        self._writing = True
        try:
            with conn.begin():
                yield conn
        except BaseException:
            self.close()  # a connection that failed is not kept (a full disk, a closed file)
            raise
        finally:
            self._writing = False

    @contextlib.contextmanager
    def reading(self) -> Iterator[sa.Connection]:
        """A connection for one short read: the kept one, between transactions on its thread.

        The per-request point reads of the read API (a lot, the lots) run on the
        reactor, between the per-frame transactions.  A pooled connection per read
        cost the leader a fifth more CPU per linearizable HTTPS read (0.38 against
        0.31 ms; 16 clients, paired runs: 2,115 against 2,516 reads/s): the pool's
        check-out and check-in (with its rollback), and a page cache that the
        writer's commits had made stale.  Inside a transaction (it would see rows
        not yet committed), on another thread, or before the first transaction,
        a pooled connection is used as before.  A statement that began a
        transaction on the kept connection (SQLAlchemy's autobegin) is rolled back.
        """
        conn = self._kept
        if conn is None or self._writing or threading.get_ident() != self._owner:
            with self._engine.connect() as conn:
                yield conn
            return
        try:
            yield conn
            if conn.in_transaction():
                conn.rollback()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Give the kept connection back to the pool (as every pooled one is: ``synchronous=FULL``)."""
        conn, self._kept = self._kept, None
        if conn is None:
            return
        raw = None if conn.invalidated else conn.connection.dbapi_connection  # None: the pool closed it
        try:
            if raw is not None:
                raw.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error:
            conn.invalidate()  # never back to the pool with the weaker setting
        finally:
            conn.close()

    def _disposed(self, _engine) -> None:
        conn, self._kept = self._kept, None
        if conn is not None:
            conn.invalidate()  # closed, not returned: the pool it came from is gone
            conn.close()


@contextlib.contextmanager
def _synchronous_normal(conn: sa.Connection) -> Iterator[None]:
    raw = conn.connection.dbapi_connection  # outside SQLAlchemy's transaction: a pragma
    raw.execute("PRAGMA synchronous=NORMAL")  # cannot change inside one
    try:
        yield
    finally:
        raw.execute("PRAGMA synchronous=FULL")


_IMMEDIATE = "parkd_begin_immediate"


def begin_immediate(conn: sa.Connection) -> sa.RootTransaction:
    """A transaction that takes SQLite's write lock at its start (``BEGIN IMMEDIATE``).

    For a long transaction that reads before it writes on another thread than the
    node's other writers: a plain ``BEGIN`` reads from a snapshot of the WAL, and
    if another connection commits before its first write, that write fails at once
    with "database is locked" (SQLite cannot upgrade a stale snapshot; the busy
    timeout does not apply).  Taken at the start, the lock waits for the others'
    short transactions instead, and theirs wait for this one.
    """
    return conn.execution_options(**{_IMMEDIATE: True}).begin()


def fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    """fsync the file (or ``directory``) at ``path`` through a descriptor of its own.

    An fsync reaches the file, not the descriptor: what any writer put in it is on disk once this returns.
    """
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_truncate(engine: sa.Engine) -> tuple[int, int, int]:
    """Checkpoint the WAL and truncate it to zero bytes (after a large delete).

    Returns SQLite's (busy, WAL pages, pages checkpointed); ``busy`` is 1 when a
    reader kept it from finishing (it is tried again after the next large delete).
    """
    with storage_errors("checkpointing the WAL"), engine.connect() as conn:
        return tuple(conn.connection.dbapi_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())


def vacuum_step(engine: sa.Engine, pages: int = VACUUM_PAGES) -> int:
    """Give up to ``pages`` free pages back to the filesystem; the free pages left.

    Only on a file in ``auto_vacuum = INCREMENTAL`` (else nothing moves, and 0 is
    returned so callers stop).  Each step is a short write transaction.
    """
    with storage_errors("vacuuming free pages"), engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        if raw.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:  # 2: INCREMENTAL
            return 0
        # sqlite3's execute() steps a row-less pragma once (one page); executescript steps it to the end
        raw.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
        return raw.execute("PRAGMA freelist_count").fetchone()[0]


def frees_incrementally(path: str) -> bool:
    """Whether the SQLite file at ``path`` gives free pages back in steps (``auto_vacuum = INCREMENTAL``)."""
    with storage_errors(f"reading {path}"), contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2


def convert_to_incremental_vacuum(path: str) -> None:
    """Rewrite the file at ``path`` with ``auto_vacuum = INCREMENTAL`` (a one-time ``VACUUM``).

    Takes time in proportion to the file (6.4-8.9 s for 1 M frames) and needs
    about twice its size free (a copy, then the WAL); nothing else may have the
    file open.  Afterwards the WAL is truncated, so the space is given back at once.
    """
    with storage_errors(f"converting {path} to incremental vacuum"), contextlib.closing(sqlite3.connect(path)) as conn:
        conn.isolation_level = None
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


# -- unsigned 64-bit values ----------------------------------------------------------------

_U64 = 1 << 64
_I64_LIMIT = 1 << 63


def u64_to_sqlite(value: int) -> int:
    """An unsigned 64-bit value as the signed integer SQLite stores (the same 64 bits).

    SQLite integers are signed 64-bit; values of 2**63 and above would overflow.
    Only equality survives the mapping, not order.
    """
    return value - _U64 if value >= _I64_LIMIT else value


def u64_from_sqlite(value: int) -> int:
    """The unsigned value of a stored one (inverse of :func:`u64_to_sqlite`)."""
    return value + _U64 if value < 0 else value


# -- schema versions ------------------------------------------------------------------------

_versions = sa.Table(
    "schema_version",
    sa.MetaData(),
    sa.Column("component", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)


def schema_version(conn: sa.Connection, component: str) -> int | None:
    """The schema version ``component`` has in the database, None before its first :func:`ensure_schema`."""
    if not sa.inspect(conn).has_table(_versions.name):
        return None
    return conn.scalar(sa.select(_versions.c.version).where(_versions.c.component == component))


def ensure_schema(
    conn: sa.Connection,
    metadata: sa.MetaData,
    component: str,
    version: int,
    upgraders: Mapping[int, Upgrader] | None = None,
) -> None:
    """Bring ``component``'s tables to schema ``version``, inside the caller's transaction.

    One row per component in ``schema_version`` (not ``PRAGMA user_version``)
    because several components share the file.  A database without the row gets
    ``metadata``'s tables at ``version``.  One at an older version ``v`` is
    upgraded: ``upgraders[v](conn)`` must turn layout ``v`` into ``v + 1``, and is
    run for every ``v`` from the stored version up to ``version - 1``, in order;
    afterwards any table of ``metadata`` still missing is created, so an upgrader
    only has to change (or fill) tables that already existed.  SQLite's DDL is
    transactional: if anything fails, the caller's transaction rolls the whole
    upgrade back and the database keeps its old version.

    Raises :class:`StorageError` for a database NEWER than ``version`` (written by
    a newer parkd: running on an unknown layout would corrupt it) and for an older
    one with no upgrader for some step.
    """
    _versions.create(conn, checkfirst=True)
    found = schema_version(conn, component)
    if found is None:
        metadata.create_all(conn)
        conn.execute(_versions.insert().values(component=component, version=version))
        return
    if found > version:
        raise StorageError(
            f"{component} schema version {found} in the database is newer than this parkd's "
            f"({version}); it was written by a newer parkd"
        )
    upgrade(conn, metadata, component, found, version, upgraders)
    if found != version:
        conn.execute(_versions.update().where(_versions.c.component == component).values(version=version))


def upgrade(
    conn: sa.Connection,
    metadata: sa.MetaData,
    component: str,
    found: int,
    version: int,
    upgraders: Mapping[int, Upgrader] | None = None,
) -> None:
    """Turn ``component``'s tables from layout ``found`` into ``version`` (see :func:`ensure_schema`).

    Runs ``upgraders[v]`` for every ``v`` from ``found`` to ``version - 1``, then
    creates any table of ``metadata`` still missing; records no version (the
    caller does).  Also for copies of tables outside a node's database (an old
    snapshot file).  StorageError when some step has no upgrader.
    """
    steps = upgraders or {}
    missing = [v for v in range(found, version) if v not in steps]
    if missing:
        raise StorageError(
            f"{component} schema version {found} in the database, expected {version}: "
            f"no upgrade from version {missing[0]}"
        )
    for step in range(found, version):
        steps[step](conn)
    metadata.create_all(conn)


# -- statements for the hot paths ----------------------------------------------------------------


class DriverStatement:
    """A Core statement compiled once for SQLite and run on the DBAPI connection.

    For the per-frame paths (saving the log, applying entries): SQLAlchemy's
    execution (cache key, compiled-statement lookup, result setup) costs several
    times what SQLite itself does for a one-row statement, ~80 us a statement
    (measured with cProfile on ``ParkingState.apply``).  Parameters are tuples in
    ``names`` order.  It runs inside the caller's transaction: the DBAPI
    connection is the one SQLAlchemy began it on.
    """

    def __init__(self, statement) -> None:
        compiled = statement.compile(dialect=sqlite_dialect())
        self.sql = str(compiled)
        self.names = tuple(compiled.positiontup)

    def execute(self, conn: sa.Connection, params: tuple = ()) -> sqlite3.Cursor:
        return conn.connection.dbapi_connection.execute(self.sql, params)

    def executemany(self, conn: sa.Connection, rows: Sequence[tuple]) -> None:
        conn.connection.dbapi_connection.executemany(self.sql, rows)
