"""parkd.db: the shared engine's durability and the schema versions with their upgraders."""

from __future__ import annotations

import gc
import os
import sqlite3
import threading
import time
import weakref

import pytest
import sqlalchemy as sa

from parkd.db import StorageError, UnsyncedWriter, ensure_schema, open_engine, schema_version


def test_pragmas_make_the_log_durable(tmp_path):
    engine = open_engine(str(tmp_path / "node.db"))
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    engine.dispose()


# -- schema versions and upgraders -------------------------------------------------------------
#
# "notes" is a made-up component: version 1 has notes(id, text); version 2 adds a
# column computed from the old rows; version 3 adds a table of its own.


def notes_v1() -> sa.MetaData:
    meta = sa.MetaData()
    sa.Table("notes", meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("text", sa.Text))
    return meta


def notes_v2() -> sa.MetaData:
    meta = sa.MetaData()
    sa.Table(
        "notes",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("text", sa.Text),
        sa.Column("length", sa.Integer, nullable=False, server_default="0"),
    )
    return meta


def notes_v3() -> sa.MetaData:
    meta = notes_v2()
    sa.Table("tags", meta, sa.Column("note", sa.Integer, primary_key=True), sa.Column("tag", sa.Text))
    return meta


def add_length(conn: sa.Connection) -> None:
    """Upgrade 1 -> 2."""
    conn.exec_driver_sql("ALTER TABLE notes ADD COLUMN length INTEGER NOT NULL DEFAULT 0")
    conn.exec_driver_sql("UPDATE notes SET length = length(text)")


@pytest.fixture
def v1_database(tmp_path):
    """A file made by the version-1 code: its tables, two rows, version 1 recorded."""
    path = str(tmp_path / "node.db")
    engine = open_engine(path)
    with engine.begin() as conn:
        ensure_schema(conn, notes_v1(), "notes", 1)
        conn.exec_driver_sql("INSERT INTO notes (id, text) VALUES (1, 'abc'), (2, 'hello')")
    engine.dispose()
    engine = open_engine(path)  # reopened, as by the next version of the code
    yield engine
    engine.dispose()


def contents(engine: sa.Engine) -> tuple:
    with engine.connect() as conn:
        tables = sorted(sa.inspect(conn).get_table_names())
        notes = conn.exec_driver_sql("SELECT * FROM notes ORDER BY id").all()
        return tables, notes, schema_version(conn, "notes")


def test_a_new_database_gets_the_tables_at_the_current_version(tmp_path):
    engine = open_engine(str(tmp_path / "node.db"))
    called = []
    with engine.begin() as conn:
        assert schema_version(conn, "notes") is None
        ensure_schema(conn, notes_v2(), "notes", 2, {1: called.append})
    assert called == []  # nothing to upgrade
    assert contents(engine) == (["notes", "schema_version"], [], 2)
    engine.dispose()


def test_a_v1_table_is_migrated_to_v2_keeping_its_rows(v1_database):
    with v1_database.begin() as conn:
        ensure_schema(conn, notes_v2(), "notes", 2, {1: add_length})
    assert contents(v1_database) == (["notes", "schema_version"], [(1, "abc", 3), (2, "hello", 5)], 2)
    with v1_database.begin() as conn:  # opened again at version 2: nothing runs
        ensure_schema(conn, notes_v2(), "notes", 2, {1: pytest.fail})


def test_upgraders_run_in_order_and_new_tables_are_created_after_them(v1_database):
    ran = []

    def tag_long_notes(conn):
        """Upgrade 2 -> 3: sees the column of 1 -> 2; its table is not there yet."""
        ran.append(2)
        assert "tags" not in sa.inspect(conn).get_table_names()
        assert conn.exec_driver_sql("SELECT id FROM notes WHERE length > 3").all() == [(2,)]

    with v1_database.begin() as conn:
        upgraders = {2: tag_long_notes, 1: lambda c: ran.append(1) or add_length(c)}  # given out of order
        ensure_schema(conn, notes_v3(), "notes", 3, upgraders)
    assert ran == [1, 2]
    assert contents(v1_database) == (["notes", "schema_version", "tags"], [(1, "abc", 3), (2, "hello", 5)], 3)


def test_a_failed_upgrade_leaves_the_database_at_its_old_version(v1_database):
    before = contents(v1_database)

    def half_done(conn):
        conn.exec_driver_sql("CREATE TABLE tags (note INTEGER PRIMARY KEY, tag TEXT)")
        raise RuntimeError("upgrade interrupted")

    with pytest.raises(RuntimeError, match="interrupted"), v1_database.begin() as conn:
        ensure_schema(conn, notes_v3(), "notes", 3, {1: add_length, 2: half_done})
    assert contents(v1_database) == before  # step 1's column and step 2's table rolled back too


def test_a_missing_upgrader_is_a_clear_error_and_changes_nothing(v1_database):
    before = contents(v1_database)
    message = "notes schema version 1 in the database, expected 3: no upgrade from version 2"
    with pytest.raises(StorageError, match=message), v1_database.begin() as conn:
        ensure_schema(conn, notes_v3(), "notes", 3, {1: add_length})
    with pytest.raises(StorageError, match="no upgrade from version 1"), v1_database.begin() as conn:
        ensure_schema(conn, notes_v2(), "notes", 2)
    assert contents(v1_database) == before


def test_a_database_newer_than_the_code_is_refused(v1_database):
    with v1_database.begin() as conn:
        ensure_schema(conn, notes_v2(), "notes", 2, {1: add_length})
    after_upgrade = contents(v1_database)
    message = r"notes schema version 2 in the database is newer than this parkd's \(1\)"
    with pytest.raises(StorageError, match=message), v1_database.begin() as conn:
        ensure_schema(conn, notes_v1(), "notes", 1)
    assert contents(v1_database) == after_upgrade


def test_a_new_file_gives_free_pages_back_in_bounded_steps_and_the_wal_is_truncated(tmp_path):
    from parkd.db import JOURNAL_SIZE_LIMIT, checkpoint_truncate, vacuum_step

    path = str(tmp_path / "node.db")
    engine = open_engine(path)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x BLOB)")
        conn.connection.dbapi_connection.executemany("INSERT INTO t VALUES (?)", [(b"x" * 1000,)] * 4000)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM t")
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
        assert raw.execute("PRAGMA journal_size_limit").fetchone()[0] == JOURNAL_SIZE_LIMIT
        free = raw.execute("PRAGMA freelist_count").fetchone()[0]
    assert free > 900
    left = vacuum_step(engine, pages=100)
    assert left == free - 100  # exactly one bounded step
    while left:
        left = vacuum_step(engine, pages=100)
    assert checkpoint_truncate(engine)[0] == 0
    assert os.path.getsize(path + "-wal") == 0 and os.path.getsize(path) < 100 * 4096
    engine.dispose()


def test_vacuum_step_does_nothing_on_a_file_without_incremental_auto_vacuum(tmp_path):
    from parkd.db import vacuum_step

    path = str(tmp_path / "old.db")
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE t (x BLOB)")  # an older parkd's file: auto_vacuum NONE
    old.executemany("INSERT INTO t VALUES (?)", [(b"x" * 1000,)] * 100)
    old.execute("DELETE FROM t")
    old.commit()
    old.close()
    engine = open_engine(path)
    assert vacuum_step(engine) == 0
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection.execute("PRAGMA freelist_count").fetchone()[0] > 0
    engine.dispose()


def test_a_connection_opens_while_another_holds_the_write_lock(tmp_path):
    """A snapshot install holds the write lock for seconds on its thread; a connection the pool opens
    meanwhile for the reactor's reads must not wait for it (setting auto_vacuum on an existing file
    wanted that lock: 5 s of busy wait on the reactor, then "database is locked")."""
    path = str(tmp_path / "node.db")
    engine = open_engine(path)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x)")
    engine.dispose()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO t VALUES (1)")
    reader = open_engine(path)
    started = time.monotonic()
    with reader.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 0  # the uncommitted row unseen
        assert conn.exec_driver_sql("PRAGMA auto_vacuum").scalar() == 2  # the file keeps its mode
    assert time.monotonic() - started < 1.0
    writer.execute("ROLLBACK")
    writer.close()
    reader.dispose()


# -- UnsyncedWriter: the per-frame transactions ------------------------------------------------------


def synchronous(conn: sa.Connection) -> int:
    return conn.connection.dbapi_connection.execute("PRAGMA synchronous").fetchone()[0]


@pytest.fixture
def file_writer(tmp_path):
    """An UnsyncedWriter on a file database: (engine, writer); both closed afterwards."""
    engine = open_engine(str(tmp_path / "w.db"))
    writer = UnsyncedWriter(engine)
    yield engine, writer
    writer.close()
    engine.dispose()


def test_the_writer_keeps_one_connection_without_fsync_for_its_thread(file_writer):
    engine, writer = file_writer
    seen = []
    for n in range(3):
        with writer.transaction() as conn:
            conn.exec_driver_sql(f"CREATE TABLE t{n} (x)")
            seen.append((conn.connection.dbapi_connection, synchronous(conn)))
    assert len({id(raw) for raw, _ in seen}) == 1 and {mode for _, mode in seen} == {1}  # 1: NORMAL
    assert engine.pool.checkedout() == 1
    writer.close()
    assert engine.pool.checkedout() == 0
    with engine.connect() as conn:  # back in the pool as every pooled connection is
        assert synchronous(conn) == 2  # FULL


def test_another_thread_gets_a_pooled_connection_per_transaction(file_writer):
    engine, writer = file_writer
    with writer.transaction() as conn:  # this thread owns the kept connection
        kept = conn.connection.dbapi_connection
    seen = []

    def elsewhere():
        with writer.transaction() as conn:
            seen.append((conn.connection.dbapi_connection, synchronous(conn)))
            conn.exec_driver_sql("CREATE TABLE t (x)")

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join(10)
    assert seen and seen[0][0] is not kept and seen[0][1] == 1
    assert engine.pool.checkedout() == 1  # only the kept one
    with engine.connect() as conn:
        assert synchronous(conn) == 2 and sa.inspect(conn).has_table("t")


def test_a_failed_transaction_rolls_back_and_is_not_kept(file_writer):
    engine, writer = file_writer
    with writer.transaction() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x)")
    with pytest.raises(sa.exc.OperationalError):
        with writer.transaction() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
            conn.exec_driver_sql("INSERT INTO nowhere VALUES (1)")
    assert engine.pool.checkedout() == 0
    with writer.transaction() as conn:  # a fresh connection, set up again
        assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 0
        assert synchronous(conn) == 1


def test_disposing_of_the_engine_gives_the_kept_connection_back(file_writer):
    engine, writer = file_writer
    with writer.transaction() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x)")
        kept = conn.connection.dbapi_connection
    engine.dispose()  # closes what is in the pool: the kept connection went back first
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        kept.execute("SELECT 1")


def test_an_engine_has_one_writer_and_does_not_outlive_its_users(tmp_path):
    engine = open_engine(str(tmp_path / "w.db"))
    writer = UnsyncedWriter.of(engine)
    assert UnsyncedWriter.of(engine) is writer  # the Raft log's and the state machine's, on one connection
    assert UnsyncedWriter.of(open_engine(str(tmp_path / "other.db"))) is not writer
    with writer.transaction() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x)")
    engine.dispose()
    gone = weakref.ref(engine)
    del engine, writer, conn
    gc.collect()
    assert gone() is None  # the registry of writers does not keep engines alive


# -- UnsyncedWriter.reading: the API's point reads on the writer's thread ------------------------------


def test_reads_between_transactions_use_the_kept_connection(file_writer):
    engine, writer = file_writer
    with writer.transaction() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x)")
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        kept = conn.connection.dbapi_connection
    with writer.reading() as conn:
        assert conn.connection.dbapi_connection is kept
        assert conn.connection.dbapi_connection.execute("SELECT x FROM t").fetchall() == [(1,)]
    assert engine.pool.checkedout() == 1  # only the kept one: no pooled connection was taken


def test_a_read_inside_a_transaction_sees_only_what_is_committed(file_writer):
    engine, writer = file_writer
    with writer.transaction() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x)")
    with writer.transaction() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        with writer.reading() as reader:
            assert reader.connection.dbapi_connection is not conn.connection.dbapi_connection
            assert reader.exec_driver_sql("SELECT count(*) FROM t").scalar() == 0


def test_a_read_on_another_thread_or_before_any_transaction_takes_a_pooled_connection(file_writer):
    engine, writer = file_writer
    with writer.reading() as conn:  # nothing kept yet
        conn.exec_driver_sql("CREATE TABLE t (x)")
        conn.commit()
    assert engine.pool.checkedout() == 0
    with writer.transaction() as conn:
        kept = conn.connection.dbapi_connection
    seen = []

    def elsewhere():
        with writer.reading() as conn:
            seen.append(conn.connection.dbapi_connection)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join(10)
    assert seen and seen[0] is not kept


def test_a_read_that_began_a_transaction_leaves_none_open(file_writer):
    engine, writer = file_writer
    with writer.transaction() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x)")
    with writer.reading() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM t")).scalar() == 0  # SQLAlchemy autobegins
    with writer.transaction() as conn:  # would raise if the read's transaction were still open
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 1


def test_a_read_that_failed_gives_the_kept_connection_back(file_writer):
    engine, writer = file_writer
    with writer.transaction() as conn:
        kept = conn.connection.dbapi_connection
    with pytest.raises(sa.exc.OperationalError):
        with writer.reading() as conn:
            conn.exec_driver_sql("SELECT * FROM nowhere")
    assert engine.pool.checkedout() == 0
    with writer.transaction() as conn:  # a fresh connection, set up again
        assert synchronous(conn) == 1
    with writer.reading() as conn:
        assert conn.connection.dbapi_connection is not kept
