"""The backup file format (CONTRACT §10 "Backup"): one self-describing file of a cluster's state.

One job: the *file*: its bytes, and checking them.  No Twisted, no HTTP: a node
streams :func:`backup_chunks` (``parkd/node/backup.py``), ``parkctl backup``
checks the stream with :class:`BackupVerifier` as it arrives, and ``parkctl
restore`` (``parkd/node/restore.py``) checks a file with :func:`read_backup` and
takes the parking state out of it with :func:`extract_payload`.

**Layout** (:data:`FORMAT_VERSION` 1; integers big-endian)::

    offset     size  what
    0          8     MAGIC, b"PARKDBAK"
    8          4     format version
    12         4     header length H (at most MAX_HEADER)
    16         H     header: a UTF-8 JSON object (below)
    16+H       P     payload: a snapshot file (parkd/parking/snapshot.py: a SQLite
                     database with the parking tables, its index, term and membership),
                     P = header["payload_bytes"]
    16+H+P     32    sha256 of every byte before it

The header says, readable without SQLite: ``cluster_id`` (``""`` when the
cluster had none yet), ``index`` and ``term`` of the state, ``voters``,
``learners`` and ``config_index`` (the configuration at that index), ``members``
(the address book: ``{"id", "raft", "client", "http", "index"}``), the payload's
``snapshot_format`` and ``parking_schema``, ``payload_bytes``, and who made it and
when (``node_id``, ``created_at`` in seconds since the epoch, ``parkd_version``).

Everything before the payload is known before the payload is read, and the
digest comes last, so a file can be written and checked in one pass without
holding it in memory.  A reader refuses, each with one line
(:class:`BackupError`): another magic (not a backup), a format version it does
not know (a newer parkd wrote it), a header that does not parse, a file shorter
than its header says (truncated), bytes after its end, and a digest that does not
match (corrupt).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

MAGIC = b"PARKDBAK"
FORMAT_VERSION = 1
MAX_HEADER = 1 << 20  # bytes of JSON: the address book of a few thousand members
DIGEST_SIZE = hashlib.sha256().digest_size
CHUNK_SIZE = 256 * 1024
_PREFIX = struct.Struct(">8sII")  # magic, format version, header length

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


class BackupError(Exception):
    """A file (or stream) is not a usable backup; ``str()`` is one line saying why."""


class UnknownVersion(BackupError):
    """A format version this parkd does not read (a newer parkd's, or a damaged one)."""

    def __init__(self, version: int, intact: bool | None = None):
        if intact is False:
            text = f"corrupt: its format version {version} is unknown and its sha256 does not match"
        else:
            text = f"backup format version {version}; this parkd reads version {FORMAT_VERSION} " \
                   "(was it written by a newer parkd?)"
        super().__init__(text)
        self.version = version


@dataclass(frozen=True, slots=True)
class BackupHeader:
    """What a backup says about itself (see the module docstring for each field)."""

    cluster_id: str
    index: int
    term: int
    voters: tuple[int, ...]
    learners: tuple[int, ...]
    config_index: int
    members: tuple[dict, ...]
    snapshot_format: int
    parking_schema: int
    payload_bytes: int
    node_id: int
    created_at: float
    parkd_version: str

    @property
    def head_bytes(self) -> int:
        """Bytes before the payload."""
        return _PREFIX.size + len(self.encode())

    @property
    def total_bytes(self) -> int:
        """Bytes of the whole file."""
        return self.head_bytes + self.payload_bytes + DIGEST_SIZE

    def encode(self) -> bytes:
        doc = asdict(self)
        doc["voters"], doc["learners"], doc["members"] = list(self.voters), list(self.learners), list(self.members)
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> BackupHeader:
        """The header from its JSON bytes; BackupError naming the first bad field."""
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise BackupError("corrupt: the header is not JSON") from None
        if not isinstance(doc, dict):
            raise BackupError("corrupt: the header is not a JSON object")
        fields = cls.__dataclass_fields__
        missing = sorted(set(fields) - set(doc))
        if missing:
            raise BackupError(f"corrupt: the header lacks {', '.join(missing)}")
        _check(doc, "cluster_id", lambda v: isinstance(v, str) and len(v) <= 200)
        _check(doc, "parkd_version", lambda v: isinstance(v, str) and len(v) <= 200)
        for name in ("index", "term", "config_index", "snapshot_format", "parking_schema", "payload_bytes", "node_id"):
            _check(doc, name, _natural)
        _check(doc, "created_at", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
        for name in ("voters", "learners"):
            _check(doc, name, lambda v: isinstance(v, list) and all(_natural(i) and 0 < i < 1 << 32 for i in v))
        _check(doc, "members", lambda v: isinstance(v, list) and all(isinstance(m, dict) for m in v))
        values = {name: doc[name] for name in fields}
        values["voters"], values["learners"] = tuple(doc["voters"]), tuple(doc["learners"])
        values["members"] = tuple(doc["members"])
        return cls(**values)


def _natural(value) -> bool:
    return type(value) is int and 0 <= value < 1 << 63


def _check(doc: dict, name: str, ok: Callable[[object], bool]) -> None:
    if not ok(doc[name]):
        raise BackupError(f"corrupt: header field {name} is {str(doc[name])[:60]!r}")


# -- writing ------------------------------------------------------------------------------------


def backup_chunks(header: BackupHeader, payload_path: str | os.PathLike,
                  chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:  # fmt: skip
    """The bytes of a backup file, in chunks of at most ``chunk_size`` (the head and digest separately).

    Reads the payload (a snapshot file of ``header.payload_bytes`` bytes) as it
    goes; raises BackupError if the payload does not have that size.  Closing the
    iterator early closes the file.
    """
    digest = hashlib.sha256()
    raw = header.encode()
    head = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(raw)) + raw
    digest.update(head)
    yield head
    left = header.payload_bytes
    with open(payload_path, "rb") as f:
        while left:
            chunk = f.read(min(chunk_size, left))
            if not chunk:
                raise BackupError(f"{payload_path}: ended {left} bytes short of the payload size the header says")
            left -= len(chunk)
            digest.update(chunk)
            yield chunk
        if f.read(1):
            raise BackupError(f"{payload_path}: longer than the payload size the header says")
    yield digest.digest()


def write_backup(path: str | os.PathLike, header: BackupHeader, payload_path: str | os.PathLike) -> int:
    """Write a backup file at ``path`` (for tests and benchmarks; a node streams instead); its size."""
    size = 0
    with open(path, "wb") as f:
        for chunk in backup_chunks(header, payload_path):
            f.write(chunk)
            size += len(chunk)
    return size


# -- checking -----------------------------------------------------------------------------------


class BackupVerifier:
    """Checks a backup as its bytes go by: :meth:`feed` them in order, then :meth:`finish`.

    :meth:`feed` returns the part of its bytes that belongs to the payload (so a
    caller can write the payload out in the same pass) and raises BackupError as
    soon as the bytes cannot be a backup: a wrong magic, an unknown format
    version, a bad header, bytes past the end.  :attr:`header` is known once the
    head has gone by.  :meth:`finish` raises BackupError for a stream that ended
    early or whose digest does not match, and returns the header.
    """

    def __init__(self) -> None:
        self.header: BackupHeader | None = None
        self.received = 0
        self._head = b""  # bytes of the head, until it is whole
        self._head_size: int | None = None
        self._trailer = b""
        self._digest = hashlib.sha256()
        self.sha256: str | None = None  # hex, once finish() checked it
        self._total: int | None = None
        self._payload_end = 0

    @property
    def total(self) -> int | None:
        """The file's size, once the header says."""
        return self._total

    def feed(self, data: bytes) -> bytes:
        start = self.received
        self.received += len(data)
        if self.header is None:
            return self._feed_head(data)
        return self._feed_body(data, start)

    def _feed_head(self, data: bytes) -> bytes:
        self._head += data
        if self._head_size is None:
            if len(self._head) < _PREFIX.size:
                if not MAGIC.startswith(self._head[: len(MAGIC)]):
                    raise BackupError("not a parkd backup (it does not start with PARKDBAK)")
                return b""
            magic, version, length = _PREFIX.unpack_from(self._head)
            if magic != MAGIC:
                raise BackupError("not a parkd backup (it does not start with PARKDBAK)")
            if version != FORMAT_VERSION:
                raise UnknownVersion(version)
            if length > MAX_HEADER:
                raise BackupError(f"corrupt: header length {length} is above {MAX_HEADER}")
            self._head_size = _PREFIX.size + length
        if len(self._head) < self._head_size:
            return b""
        head, rest = self._head[: self._head_size], self._head[self._head_size :]
        self._head = b""
        self.header = header = BackupHeader.decode(head[_PREFIX.size :])
        self._payload_end = self._head_size + header.payload_bytes
        self._total = self._payload_end + DIGEST_SIZE
        self._digest.update(head)
        return self._feed_body(rest, self._head_size)

    def _feed_body(self, data: bytes, start: int) -> bytes:
        """``data`` begins at offset ``start`` of the file, after the head."""
        if start + len(data) > self._total:
            raise BackupError(f"corrupt: more than the {self._total} bytes its header says")
        payload = data[: max(0, self._payload_end - start)]
        self._digest.update(payload)
        self._trailer += data[len(payload) :]
        return payload

    def finish(self) -> BackupHeader:
        if self.header is None or self.received < self._total:
            expected = f"of {self._total}" if self.header is not None else "and no whole header"
            raise BackupError(f"truncated: {self.received} bytes {expected}")
        if self._digest.digest() != self._trailer:
            raise BackupError("corrupt: its sha256 does not match its contents")
        self.sha256 = self._trailer.hex()
        return self.header


@dataclass(frozen=True, slots=True)
class CheckedBackup:
    """A backup that passed every check: its header, digest (hex) and size in bytes."""

    header: BackupHeader
    sha256: str
    size: int


def read_backup(path: str | os.PathLike, progress: Progress | None = None) -> CheckedBackup:
    """Check the backup file at ``path`` whole (one read, nothing written), or BackupError."""
    return _read(path, None, progress)


def extract_payload(path: str | os.PathLike, out_path: str | os.PathLike,
                    progress: Progress | None = None) -> CheckedBackup:  # fmt: skip
    """Check the backup at ``path`` and write its payload (a snapshot file) to ``out_path``, in one pass.

    The payload is fsynced; on any failure ``out_path`` is removed.
    """
    try:
        with open(out_path, "wb") as out:
            checked = _read(path, out.write, progress)
            out.flush()
            os.fsync(out.fileno())
        return checked
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(out_path)
        raise


def _read(path, payload_sink: Callable[[bytes], object] | None, progress: Progress | None) -> CheckedBackup:
    try:
        size = os.path.getsize(path)
        f = open(path, "rb")
    except OSError as e:
        raise BackupError(f"cannot read {path}: {e.strerror}") from None
    verifier = BackupVerifier()
    with f:
        while True:
            try:
                chunk = f.read(CHUNK_SIZE)
            except OSError as e:
                raise BackupError(f"cannot read {path}: {e.strerror}") from None
            if not chunk:
                break
            try:
                payload = verifier.feed(chunk)
            except UnknownVersion as e:  # a newer parkd's file, or a damaged one: the digest tells
                raise UnknownVersion(e.version, _ends_with_its_digest(path)) from None
            if verifier.total is not None and size < verifier.total:  # say so before reading it all
                raise BackupError(f"truncated: {size} bytes of {verifier.total}")
            if payload and payload_sink is not None:
                payload_sink(payload)
            if progress is not None:
                progress(verifier.received, verifier.total or size)
    header = verifier.finish()
    return CheckedBackup(header, verifier.sha256, verifier.received)


def _ends_with_its_digest(path) -> bool:
    """Whether the file's last 32 bytes are the sha256 of the rest (whatever its format version)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END) - DIGEST_SIZE
        if size < 0:
            return False
        f.seek(0)
        left = size
        while left:
            chunk = f.read(min(CHUNK_SIZE, left))
            if not chunk:
                return False
            digest.update(chunk)
            left -= len(chunk)
        return f.read() == digest.digest()


def restored_cluster_id(backup_sha256: str) -> str:
    """The cluster id of a cluster restored from the backup with this digest (hex).

    Derived from the digest, so every member restored from one file gets the same
    id (they form one cluster), and restoring another file, even one of the same
    cluster, makes another.  32 hex digits.
    """
    return hashlib.sha256(b"parkd restored cluster\0" + bytes.fromhex(backup_sha256)).hexdigest()[:32]


def backup_name(header: BackupHeader) -> str:
    """A file name for a backup: ``parkd-backup-<index>-<term>.pkb``."""
    return f"parkd-backup-{header.index}-{header.term}.pkb"
