"""A snapshot file in transit: the checksummed chunk stream and its resumable receiver.

One job: moving a snapshot file between nodes in InstallSnapshot chunks.  Plain
files, no Twisted: ``parkd/node/snapshots.py`` sends and receives the messages.

**The stream.**  What travels is the file followed by its 32-byte SHA-256 digest
(:func:`transfer_size`, :func:`read_chunk`, :func:`iter_chunks`), because the wire
message has no checksum field: the receiver verifies the digest when ``done``
arrives, so a torn, mixed or corrupted transfer is never installed.  The digest is
kept next to the file in ``<path>.sha256`` (by :func:`snapshot_sha256`, and by the
receiver) so that serving the last chunk never re-reads the whole file.  Treat a
snapshot path as immutable while it is being sent: give each snapshot a new name.

**The receiver** (:class:`SnapshotReceiver`) appends chunks to a partial file that
survives a dropped connection or a restart, and hands over a verified snapshot file
(digest, and the file's own meta read by ``parkd.parking.snapshot``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parkd.parking.snapshot import SnapshotError, publish_file, read_snapshot_meta

CHUNK_SIZE = 1 << 20  # bytes per InstallSnapshot chunk; far below the 16 MiB wire limit
DIGEST_SIZE = 32  # the SHA-256 trailer of a transfer stream
_READ_BLOCK = 1 << 20


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
    """The hex digest of a snapshot file, from ``<path>.sha256`` if it is current, else computed (and kept)."""
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
        os.truncate(t.path, t.offset - DIGEST_SIZE)
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
        publish_file(t.path, final)
        self._completed = (t.index, t.term, t.offset, str(final))
        return Received(True, t.offset, True, str(final))
