"""Snapshots of the parking state: write, transfer in chunks, install (issue 6, data layer).

No Twisted here.  The node calls :func:`write_snapshot` in a dedicated thread,
:func:`read_chunk` / :class:`SnapshotReceiver` for InstallSnapshot, and
:func:`install_snapshot` when a received snapshot is to replace its state.

**File format** (``FORMAT_VERSION`` 1): a small SQLite database (rollback journal,
not WAL) holding

* ``lots``, ``cameras``, ``frames``, ``applied``: the parking tables with the
  layout of ``parkd/parking/state.py``, copied whole;
* ``snapshot_meta``: one row (id 1) with ``format``, ``parking_schema``,
  ``"index"`` (= ``applied.last_applied``), ``term``, ``voters``/``learners``
  (JSON lists of node ids) and ``config_index`` (the CONFIG entry the membership
  comes from, 0 for the initial one);
* ``members``: (``position``, ``data``) rows, ``data`` being the JSON text of one
  opaque member description (id and addresses) handed in by the node.

**Consistency.** :func:`write_snapshot` opens its own ``sqlite3`` connection on the
node's database, attaches the new file and copies everything inside ONE read
transaction: WAL gives that transaction a fixed view, so the snapshot is exactly the
state at the ``last_applied`` it reads first, however many entries the reactor
thread applies meanwhile.  The copy is ``INSERT … SELECT`` executed by SQLite, during
which the ``sqlite3`` module releases the GIL, so the reactor thread keeps running
(measured by ``benchmarks/snapshot_pause.py``).

**The term.** The snapshot index is only known inside the read transaction, so the
term is read there too, from the Raft ``entries`` table of the same database (the
entry at ``last_applied`` is committed, so it cannot have been truncated, and
compaction never deletes past the stored snapshot), or from the stored
``snapshot_meta`` when the index is exactly the stored snapshot's.  Only when neither
has it (a database without the Raft tables) is the optional ``term_at`` callback
asked — from the writer thread, so it must be thread-safe.  Nothing has to be
patched in afterwards.

**Membership.** Likewise the voters at the snapshot index: pass the node's current
configuration (a :class:`SnapshotConfig`, or the ``Membership`` of
``RaftCore.config_at``) whose ``index`` is the CONFIG entry it comes from.  Inside the
read transaction that is checked against the log (``index <= snapshot index`` and no
CONFIG entry in between); if the configuration moved, :class:`StaleMembership` is
raised and the caller retries with the right one.  Or pass a callable
``snapshot index -> configuration`` (called from the writer thread).  The member
addresses (``members``) are opaque JSON-able data stored alongside.

**Transfer stream.** What travels in InstallSnapshot chunks is the file followed by
its 32-byte SHA-256 digest (:func:`transfer_size`, :func:`read_chunk`), because the
wire message has no checksum field: the receiver verifies the digest when ``done``
arrives, so a torn, mixed or corrupted transfer is never installed.  The digest is
kept next to the file in ``<path>.sha256`` (written by :func:`write_snapshot` and by
the receiver) so that serving the last chunk never re-reads the whole file.  Treat a
snapshot path as immutable while it is being sent: give each snapshot a new name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

from parkd.parking.state import PARKING_SCHEMA_VERSION, snapshot_tables
from parkd.raft.storage import SqliteStorage, install_snapshot_in, storage_errors
from parkd.raft.types import EntryKind, SnapshotMeta

FORMAT_VERSION = 1
CHUNK_SIZE = 1 << 20  # bytes per InstallSnapshot chunk; far below the 16 MiB wire limit
DIGEST_SIZE = 32  # the SHA-256 trailer of a transfer stream
_READ_BLOCK = 1 << 20


class SnapshotError(Exception):
    """A snapshot could not be written, or a file is not a usable snapshot."""


class StaleMembership(SnapshotError):
    """The configuration handed to :func:`write_snapshot` is not the one at the snapshot index."""


@dataclass(frozen=True, slots=True)
class SnapshotConfig:
    """The cluster configuration a snapshot records, as of the CONFIG entry at ``index``.

    The same shape as ``parkd.raft.types.Membership`` (which ``RaftCore.config_at``
    returns): :func:`write_snapshot` only reads ``voters``, ``learners`` and ``index``
    (0: the start-up configuration), so either may be passed.
    """

    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()
    index: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A snapshot file written by :func:`write_snapshot`."""

    path: str
    index: int
    size_bytes: int
    seconds: float  # wall time of write_snapshot
    term: int = 0
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()
    sha256: str = ""  # hex digest of the file

    @property
    def meta(self) -> SnapshotMeta:
        return SnapshotMeta(self.index, self.term, self.voters, self.learners)


@dataclass(frozen=True, slots=True)
class SnapshotContents:
    """What a snapshot file says about itself (:func:`read_snapshot_meta`, :func:`install_snapshot`)."""

    meta: SnapshotMeta
    members: tuple[Any, ...] = ()
    config_index: int = 0


@dataclass(frozen=True, slots=True)
class CompactionPolicy:
    """When to snapshot and how much log to keep (issue 6: entries and bytes, configurable).

    Snapshot once the log holds more than ``max_entries`` entries or ``max_bytes`` of
    entry data beyond the last snapshot; then ``compact(compact_upto(S), meta)`` keeps
    the ``margin`` entries up to the snapshot index ``S`` (and all after it), so a
    follower a little behind still gets AppendEntries instead of a whole snapshot.
    A frame result is ~30 bytes, so the byte bound only matters for other entries.
    """

    max_entries: int = 100_000
    max_bytes: int = 64 << 20
    margin: int = 10_000

    def __post_init__(self) -> None:
        if self.max_entries < 1 or self.max_bytes < 1 or self.margin < 0:
            raise ValueError(f"bad compaction policy {self}")

    def should_snapshot(self, entries_since: int, bytes_since: int) -> bool:
        return entries_since > self.max_entries or bytes_since > self.max_bytes

    def compact_upto(self, snapshot_index: int) -> int:
        return max(0, snapshot_index - self.margin)


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


def _ddl() -> list[str]:
    dialect = sqlite_dialect()
    tables = (*snapshot_tables(), *_file_meta.sorted_tables)
    return [str(sa.schema.CreateTable(t).compile(dialect=dialect)).strip() for t in tables]


def _columns(table: sa.Table) -> str:
    return ", ".join(f'"{c.name}"' for c in table.columns)


def _fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- writing ------------------------------------------------------------------------------


def write_snapshot(
    db_path: str,
    out_path: str,
    config: Any = SnapshotConfig(),
    *,
    members: Sequence[Any] = (),
    term_at: Callable[[int], int] | None = None,
    batch_rows: int | None = None,
    on_pinned: Callable[[int], None] | None = None,
) -> SnapshotInfo:
    """Write the parking state of the database file ``db_path`` to ``out_path``.

    Safe in a background thread while another connection (the reactor's) applies
    entries: see the module docstring for consistency, term and membership.
    ``config`` is a :class:`SnapshotConfig` (or ``Membership``) or a callable taking
    the snapshot index; ``members`` are JSON-able member descriptions.  The
    file appears at ``out_path`` atomically (temporary name, fsync, rename, fsync of
    the directory), with ``out_path + ".sha256"``.  ``batch_rows`` copies ``frames``
    in slices of that many rowids instead of one statement (same transaction).
    ``on_pinned(index)`` is called once the read transaction holds its view.
    Raises :class:`SnapshotError` (and leaves no temporary file behind).
    """
    started = time.perf_counter()
    out = Path(out_path).absolute()
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.fchmod(fd, 0o644)  # like the database files SQLite creates, not mkstemp's 0600
    os.close(fd)
    try:
        with _errors("writing a snapshot"):
            index, term, config = _copy(db_path, tmp, config, members, term_at, batch_rows, on_pinned)
            _fsync_path(tmp)
            digest = file_sha256(tmp)
            _write_digest(out, tmp, digest)
            os.replace(tmp, out)
            _fsync_path(out.parent, directory=True)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return SnapshotInfo(
        str(out), index, out.stat().st_size, time.perf_counter() - started,
        term, tuple(config.voters), tuple(config.learners), digest,
    )  # fmt: skip


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        raise SnapshotError(f"{what} failed: {exc}") from exc


def _copy(db_path, tmp, config, members, term_at, batch_rows, on_pinned) -> tuple[int, int, Any]:
    """Create the file's tables, then copy into them in one read transaction on ``db_path``."""
    dst = sqlite3.connect(tmp, isolation_level=None)
    try:
        for statement in _ddl():
            dst.execute(statement)
    finally:
        dst.close()
    # mode=rw: a wrong path fails instead of creating an empty database there.
    src = sqlite3.connect(f"{Path(db_path).absolute().as_uri()}?mode=rw", uri=True, isolation_level=None)
    try:
        src.execute("ATTACH DATABASE ? AS snap", (tmp,))
        src.execute("PRAGMA snap.journal_mode=OFF")  # a failed copy is thrown away whole
        src.execute("PRAGMA snap.synchronous=OFF")  # fsync'ed once at the end instead
        src.execute("BEGIN")
        try:
            row = src.execute("SELECT last_applied FROM main.applied WHERE id = 1").fetchone()
            if row is None:
                raise SnapshotError(f"{db_path} has no parking state")
            index = row[0]
            term = _term_of(src, index, term_at)
            config = _config_at(src, index, config)
            if on_pinned is not None:
                on_pinned(index)
            for table in snapshot_tables():
                cols = _columns(table)
                if table.name == "frames" and batch_rows:
                    _copy_in_slices(src, cols, batch_rows)
                else:
                    name = table.name
                    src.execute(f"INSERT INTO snap.{name} ({cols}) SELECT {cols} FROM main.{name}")
            src.execute(
                f"INSERT INTO snap.snapshot_meta ({_columns(_snapshot_meta)}) VALUES (1{', ?' * 7})",
                (
                    FORMAT_VERSION, PARKING_SCHEMA_VERSION, index, term,
                    json.dumps(list(config.voters)), json.dumps(list(config.learners)), config.index,
                ),
            )  # fmt: skip
            src.executemany(
                "INSERT INTO snap.members (position, data) VALUES (?, ?)",
                [(pos, json.dumps(member)) for pos, member in enumerate(members)],
            )
            src.execute("COMMIT")
        except BaseException:
            if src.in_transaction:
                src.execute("ROLLBACK")
            raise
        src.execute("DETACH DATABASE snap")
    finally:
        src.close()
    return index, term, config


def _copy_in_slices(src: sqlite3.Connection, cols: str, batch_rows: int) -> None:
    top = src.execute("SELECT max(rowid) FROM main.frames").fetchone()[0] or 0
    for low in range(0, top, batch_rows):
        src.execute(
            f"INSERT INTO snap.frames ({cols}) SELECT {cols} FROM main.frames WHERE rowid > ? AND rowid <= ?",
            (low, low + batch_rows),
        )


def _has_table(src: sqlite3.Connection, name: str) -> bool:
    query = "SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = ?"
    return src.execute(query, (name,)).fetchone() is not None


def _term_of(src: sqlite3.Connection, index: int, term_at: Callable[[int], int] | None) -> int:
    if index == 0:
        return 0
    if _has_table(src, "entries"):
        row = src.execute('SELECT term FROM main.entries WHERE "index" = ?', (index,)).fetchone()
        if row is not None:
            return row[0]
    if _has_table(src, "snapshot_meta"):
        row = src.execute('SELECT "index", term FROM main.snapshot_meta WHERE id = 1').fetchone()
        if row is not None and row[0] == index:
            return row[1]
    if term_at is not None:
        return term_at(index)
    raise SnapshotError(f"the term of index {index} is neither in the log nor in the stored snapshot")


def _config_at(src: sqlite3.Connection, index: int, config: Any) -> Any:
    """The configuration to record at ``index``; StaleMembership if ``config`` is not it."""
    if callable(config):
        return config(index)
    if config.index > index:
        raise StaleMembership(f"configuration from index {config.index} is newer than the snapshot ({index})")
    if _has_table(src, "entries"):
        query = 'SELECT max("index") FROM main.entries WHERE kind = ? AND "index" > ? AND "index" <= ?'
        newer = src.execute(query, (int(EntryKind.CONFIG), config.index, index)).fetchone()[0]
        if newer is not None:
            raise StaleMembership(f"configuration from index {config.index}, but it changed at {newer}")
    return config


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
        if fmt != FORMAT_VERSION or schema != PARKING_SCHEMA_VERSION:
            raise SnapshotError(
                f"{path}: snapshot format {fmt} / parking schema {schema}, "
                f"expected {FORMAT_VERSION} / {PARKING_SCHEMA_VERSION}"
            )
        applied = conn.execute("SELECT last_applied FROM applied WHERE id = 1").fetchone()
        if applied is None or applied[0] != index:
            raise SnapshotError(f"{path}: applied row {applied} does not match the snapshot index {index}")
        for table in snapshot_tables():  # install_snapshot copies these: all must be there
            have = {row[1] for row in conn.execute(f'PRAGMA table_info("{table.name}")')}
            missing = [c.name for c in table.columns if c.name not in have]
            if missing:
                raise SnapshotError(f"{path}: table {table.name} lacks {', '.join(missing)}")
        if not all(type(n) is int and n >= 0 for n in (index, term)):
            raise SnapshotError(f"{path}: snapshot index {index!r} / term {term!r}")
        members = tuple(json.loads(d) for (d,) in conn.execute("SELECT data FROM members ORDER BY position"))
        meta = SnapshotMeta(index, term, _node_ids(path, voters), _node_ids(path, learners))
        return SnapshotContents(meta, members, config_index)
    except (sqlite3.Error, ValueError) as exc:
        raise SnapshotError(f"{path} is not a snapshot: {exc}") from exc
    finally:
        conn.close()


def _node_ids(path, text: str) -> tuple[int, ...]:
    ids = json.loads(text)
    if not isinstance(ids, list) or not all(type(i) is int and 0 < i < 1 << 32 for i in ids):
        raise SnapshotError(f"{path}: {text[:100]!r} is not a list of node ids")
    return tuple(ids)


# -- checksums and chunks ---------------------------------------------------------------------


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (hashlib and reads release the GIL)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _digest_path(path: str | os.PathLike) -> Path:
    return Path(f"{path}.sha256")


def _write_digest(path: Path, data_file: str | os.PathLike, digest: str) -> None:
    """Record ``digest`` for ``path`` along with the inode and size of ``data_file``.

    ``data_file`` is the file that is (or is about to be renamed to) ``path``: a
    rename keeps the inode, so a digest file left from an older snapshot at the same
    path is recognised as stale by :func:`snapshot_sha256` and recomputed.
    """
    st = os.stat(data_file)
    target = _digest_path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(f"{digest} {st.st_size} {st.st_ino}\n")
    os.replace(tmp, target)


def snapshot_sha256(path: str | os.PathLike) -> str:
    """The hex digest of a snapshot file, from ``<path>.sha256`` if it is current, else computed."""
    st = os.stat(path)
    with contextlib.suppress(OSError, ValueError):
        digest, size, ino = _digest_path(path).read_text().split()
        if (int(size), int(ino)) == (st.st_size, st.st_ino) and len(digest) == 2 * DIGEST_SIZE:
            return digest
    digest = file_sha256(path)
    with contextlib.suppress(OSError):
        _write_digest(Path(path), path, digest)
    return digest


def transfer_size(path: str | os.PathLike) -> int:
    """Bytes of the transfer stream of a snapshot file: the file, then its digest."""
    return os.path.getsize(path) + DIGEST_SIZE


def read_chunk(path: str | os.PathLike, offset: int, size: int = CHUNK_SIZE) -> bytes:
    """Up to ``size`` bytes of the transfer stream from ``offset`` (b"" at or past its end).

    The chunk is the last one when ``offset + len(chunk) == transfer_size(path)``.
    """
    if offset < 0 or size < 1:
        raise ValueError(f"bad chunk request: offset {offset}, size {size}")
    file_size = os.path.getsize(path)
    parts = []
    if offset < file_size:
        with open(path, "rb") as f:
            f.seek(offset)
            parts.append(f.read(min(size, file_size - offset)))
    end = offset + size
    if end > file_size and offset < file_size + DIGEST_SIZE:
        trailer = bytes.fromhex(snapshot_sha256(path))
        parts.append(trailer[max(0, offset - file_size) : end - file_size])
    return b"".join(parts)


def iter_chunks(
    path: str | os.PathLike, size: int = CHUNK_SIZE, offset: int = 0
) -> Iterator[tuple[int, bytes, bool]]:
    """(offset, data, done) for the whole transfer stream from ``offset``: the sender's loop."""
    total = transfer_size(path)
    while offset < total:
        data = read_chunk(path, offset, size)
        yield offset, data, offset + len(data) == total
        offset += len(data)


# -- receiving ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Received:
    """The answer to one chunk: what a SnapshotResponse carries, plus the finished file.

    ``next_offset`` is the offset the receiver expects next (after a refusal: where
    the sender must resume, 0 to start over).  ``path`` is set once the transfer is
    complete and verified.
    """

    accepted: bool
    next_offset: int
    done: bool = False
    path: str | None = None
    error: str = ""


_PARTIAL = re.compile(r"incoming-(\d+)-(\d+)\.part")


@dataclass(slots=True)
class _Transfer:
    index: int
    term: int
    path: Path
    offset: int
    digest: Any = field(default_factory=hashlib.sha256)
    tail: bytes = b""  # the last DIGEST_SIZE bytes received, not yet hashed


class SnapshotReceiver:
    """The follower's side of InstallSnapshot: accepts chunks into ``directory``.

    One transfer at a time, identified by the snapshot's (index, term).  A chunk must
    start exactly where the received data ends; otherwise it is refused and
    :attr:`Received.next_offset` says where to resume (the partial file is kept on
    disk, fsync'ed per chunk, so a dropped connection — or a restart of the node —
    resumes rather than starts over).  A chunk at offset 0 of another snapshot
    abandons the current one.  On ``done`` the stream's digest trailer is checked,
    the file's own meta must match (index, term), and the file is renamed to
    ``snapshot-<index>-<term>.db``.  Not thread-safe; cheap per chunk (append,
    incremental hash, fsync), so the reactor thread can call it.
    """

    def __init__(self, directory: str | os.PathLike, *, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._current: _Transfer | None = None
        self._completed: tuple[int, int, int, str] | None = None  # index, term, stream size, path
        for part in sorted(self.directory.glob("incoming-*.part")):
            match = _PARTIAL.fullmatch(part.name)
            if match is None or self._current is not None:
                part.unlink()
                continue
            self._current = self._resume(int(match[1]), int(match[2]), part)

    @property
    def expecting(self) -> tuple[int, int, int] | None:
        """(index, term, next offset) of the transfer under way, if any."""
        t = self._current
        return None if t is None else (t.index, t.term, t.offset)

    def accept(self, index: int, term: int, offset: int, data: bytes, done: bool) -> Received:
        completed = self._completed
        if completed is not None and completed[:2] == (index, term) and self._current is None:
            # A chunk of the snapshot just received (a resend whose answer was lost): it is here.
            return Received(True, completed[2], True, completed[3])
        t = self._current
        if t is None or (t.index, t.term) != (index, term):
            if offset != 0:
                return Received(False, 0, error=f"no transfer of snapshot {index}/{term} under way")
            self.abort()
            t = self._current = _Transfer(index, term, self.directory / f"incoming-{index}-{term}.part", 0)
            t.path.write_bytes(b"")
        if offset != t.offset:
            return Received(False, t.offset, error=f"chunk at {offset}, expected {t.offset}")
        with open(t.path, "ab") as f:
            f.write(data)
            if self._fsync or done:
                f.flush()
                os.fsync(f.fileno())
        self._hash(t, data)
        t.offset += len(data)
        if not done:
            return Received(True, t.offset)
        return self._finish(t)

    def abort(self) -> None:
        """Drop the transfer under way and its partial file."""
        if self._current is not None:
            with contextlib.suppress(FileNotFoundError):
                self._current.path.unlink()
            self._current = None

    @staticmethod
    def _hash(t: _Transfer, data: bytes) -> None:
        """Hash all but the last DIGEST_SIZE bytes seen: those may be the trailer."""
        buffered = t.tail + data
        cut = max(0, len(buffered) - DIGEST_SIZE)
        t.digest.update(buffered[:cut])
        t.tail = buffered[cut:]

    def _resume(self, index: int, term: int, part: Path) -> _Transfer:
        t = _Transfer(index, term, part, 0)
        with open(part, "rb") as f:
            while block := f.read(_READ_BLOCK):
                self._hash(t, block)
                t.offset += len(block)
        return t

    def _finish(self, t: _Transfer) -> Received:
        self._current = None
        if t.offset < DIGEST_SIZE or t.digest.digest() != t.tail:
            t.path.unlink()
            return Received(False, 0, error=f"snapshot {t.index}/{t.term}: checksum mismatch, start over")
        size = t.offset - DIGEST_SIZE
        os.truncate(t.path, size)
        _fsync_path(t.path)
        try:
            meta = read_snapshot_meta(t.path).meta
        except SnapshotError as exc:
            t.path.unlink()
            return Received(False, 0, error=str(exc))
        if (meta.index, meta.term) != (t.index, t.term):
            t.path.unlink()
            found = f"{meta.index}/{meta.term}"
            return Received(False, 0, error=f"file holds snapshot {found}, not {t.index}/{t.term}")
        if not meta.voters:  # a leader's snapshot always names them; the core cannot restore without
            t.path.unlink()
            return Received(False, 0, error=f"snapshot {t.index}/{t.term} names no voters")
        final = self.directory / f"snapshot-{t.index}-{t.term}.db"
        _write_digest(final, t.path, t.digest.hexdigest())
        os.replace(t.path, final)
        _fsync_path(self.directory, directory=True)
        self._completed = (t.index, t.term, t.offset, str(final))
        return Received(True, t.offset, True, str(final))


# -- installing -------------------------------------------------------------------------------------


def install_snapshot(
    engine: sa.Engine, snapshot_path: str | os.PathLike, storage: SqliteStorage | None = None
) -> SnapshotContents:
    """Replace the node's parking tables and Raft log by a snapshot, in ONE transaction.

    In that transaction: the rows of ``lots``, ``cameras``, ``frames`` and ``applied``
    become the snapshot's, and :func:`parkd.raft.storage.install_snapshot_in` deletes
    every log entry, records the snapshot meta and raises ``commit`` (and ``term``) to
    the snapshot's.  A crash leaves the old state or the new one.  Pass the node's open
    ``storage`` so its cached log position is refreshed.  Refuses (ValueError) a
    snapshot below the applied index.  Both components' tables must exist (the node
    opened them).  Raises SnapshotError for a bad file (before touching the
    database), StorageError for a database failure.

    It costs about 1.5-2.5 s per million frames (benchmarks/snapshot_pause.py), too
    long for the reactor thread.  It may run on a worker thread (its statements
    release the GIL): reads on other connections see the old state until it commits,
    but writes of other connections wait for it, SQLite having a single writer.
    """
    contents = read_snapshot_meta(snapshot_path)
    meta = contents.meta
    with storage_errors("installing a snapshot"), engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        raw.execute("ATTACH DATABASE ? AS snap", (str(snapshot_path),))
        try:
            with conn.begin():
                applied = conn.exec_driver_sql("SELECT last_applied FROM main.applied WHERE id = 1").scalar()
                if applied is not None and applied > meta.index:
                    raise ValueError(f"snapshot at {meta.index} is older than the applied index {applied}")
                for table in snapshot_tables():
                    cols = _columns(table)
                    conn.exec_driver_sql(f"DELETE FROM main.{table.name}")
                    conn.exec_driver_sql(
                        f"INSERT INTO main.{table.name} ({cols}) SELECT {cols} FROM snap.{table.name}"
                    )
                install_snapshot_in(conn, meta)
        finally:
            raw.execute("DETACH DATABASE snap")
    if storage is not None:
        storage.refresh()
    return contents

