"""Snapshots on a node: take them, compact the log, send and install them (Raft §7).

- When: :class:`CompactionPolicy` says when to snapshot and how much log to keep.
- Taking: once the applied log passes the policy's threshold, the parking state
  is pinned on the reactor thread (a read transaction on its own connection),
  where the core also says the term and configuration at the pinned index; the
  copy runs on a dedicated thread, so the reactor keeps applying meanwhile; back
  on the reactor the core and the storage forget the log up to a trailing margin.
- Sending: the core asks for a snapshot with an empty ``InstallSnapshot``; this
  module streams the file in chunks well below the wire limit, one chunk per
  ``SnapshotResponse``, resuming where the follower's answer says, and reports
  the outcome to the core (a silent follower is given up after a timeout; the
  core asks again later and the transfer resumes).
- Receiving: chunks go to a resumable ``SnapshotReceiver``; a complete, verified
  file is installed (parking tables and Raft storage in one transaction) and
  the core restarts its log after it.

The file format is ``parkd/parking/snapshot.py``; the chunk stream and the
receiver are ``parkd/node/snapshot_stream.py``.
"""

from __future__ import annotations

import glob
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from parkd.node.snapshot_stream import CHUNK_SIZE, SnapshotReceiver, read_chunk, snapshot_sha256, transfer_size
from parkd.parking.snapshot import (
    SnapshotContents,
    SnapshotError,
    SnapshotInfo,
    pin_state,
    read_snapshot_meta,
    restore_snapshot,
)
from parkd.raft.messages import InstallSnapshot, SnapshotResponse
from parkd.raft.storage import SqliteStorage, install_snapshot_in

SEND_TIMEOUT = 5.0  # seconds without an answer before a transfer is given up


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


def install_snapshot(engine: sa.Engine, storage: SqliteStorage, path: str) -> SnapshotContents:
    """Replace the parking tables and the Raft log by the snapshot file ``path``, in ONE transaction.

    Refreshes ``storage``'s cached log position afterwards.  Errors as
    :func:`parkd.parking.snapshot.restore_snapshot` (and ValueError for a snapshot
    older than the stored one).
    """
    meta = read_snapshot_meta(path).meta
    contents = restore_snapshot(engine, path, lambda conn: install_snapshot_in(conn, meta))
    storage.refresh()
    return contents


class _Transfer:
    def __init__(self, info: SnapshotInfo, term: int):
        self.info = info
        self.term = term
        self.total = transfer_size(info.path)
        self.timeout = None


class SnapshotManager:
    log = Logger()

    def __init__(self, node, policy: CompactionPolicy, directory: str, chunk_size: int = CHUNK_SIZE):
        self.node = node
        self.policy = policy
        self.directory = directory
        self.chunk_size = chunk_size
        os.makedirs(directory, exist_ok=True)
        self.receiver = SnapshotReceiver(os.path.join(directory, "incoming"))
        self.latest: SnapshotInfo | None = self._find_latest()
        self.sending: dict[int, _Transfer] = {}
        self.taking = False
        self._names = itertools.count()
        self._pool = ThreadPool(1, 1, name="parkd-snapshot")

    def start(self) -> None:
        self._pool.start()

    def stop(self) -> None:
        for transfer in self.sending.values():
            if transfer.timeout is not None and transfer.timeout.active():
                transfer.timeout.cancel()
        self.sending.clear()
        self._pool.stop()

    def _find_latest(self) -> SnapshotInfo | None:
        """The file of the snapshot the storage recorded, after a restart."""
        want = self.node.core.snapshot
        if want.index == 0:
            return None
        for path in glob.glob(os.path.join(self.directory, "**", "*.db"), recursive=True):
            try:
                meta = read_snapshot_meta(path).meta
            except SnapshotError:
                continue
            if (meta.index, meta.term) == (want.index, want.term):
                return SnapshotInfo(path, meta.index, os.path.getsize(path), 0.0, meta.term, meta.voters, meta.learners)
        self.log.warn("snapshot {index} recorded but its file is missing; will take a new one", index=want.index)
        return None

    # ------------------------------------------------------------ taking

    def applied(self, applied_index: int) -> None:
        """After each applied batch: snapshot when the log has grown enough."""
        core = self.node.core
        behind = applied_index - core.snapshot.index
        if not self.taking and self.policy.should_snapshot(behind, 0):
            self.take()

    def take(self):
        """Pin the applied state here, on the reactor thread; copy it on the snapshot thread."""
        self.taking = True
        try:
            copy = self.pin()
        except Exception:
            return defer.fail().addErrback(self._take_failed)
        d = deferToThreadPool(self.node.reactor, self._pool, copy)
        return d.addCallbacks(self._taken, self._take_failed)

    def pin(self) -> Callable[[], SnapshotInfo]:
        """Fix the state to snapshot and what Raft says of its index, now; returns the copy to run.

        The index is the applied state's as of this reactor turn, which the core's
        log holds (it is at or above the core's snapshot); the term and configuration
        come from the core at that index, so the copy needs nothing from Raft.  The
        copy also computes the file's digest for sending it (:func:`snapshot_sha256`).
        """
        core = self.node.core
        pinned = pin_state(self.node.db_path)
        try:
            index = pinned.index
            term = core.log.term_at(index)
            if term is None:
                raise SnapshotError(f"the term of index {index} is not in the log")
            config = core.config_at(index)
            members = self.node.membership.members_for_snapshot() if hasattr(self.node, "membership") else ()
        except BaseException:
            pinned.close()
            raise
        path = os.path.join(self.directory, f"snapshot-{index}-{next(self._names)}.db")

        def copy() -> SnapshotInfo:
            info = pinned.write(
                path, term=term, voters=config.voters, learners=config.learners, config_index=config.index,
                members=members,
            )  # fmt: skip
            snapshot_sha256(info.path)
            return info

        return copy

    def _taken(self, info: SnapshotInfo) -> SnapshotInfo | None:
        self.taking = False
        core = self.node.core
        meta = info.meta
        upto = self.policy.compact_upto(meta.index)
        try:
            core.compact(upto, meta)
        except ValueError as e:  # e.g. a snapshot was installed meanwhile
            self.log.info("snapshot at {index} not used: {reason}", index=meta.index, reason=e)
            _remove(info.path)
            return None
        self.node.storage.compact(upto, meta)
        previous, self.latest = self.latest, info
        if previous is not None and not any(t.info is previous for t in self.sending.values()):
            _remove(previous.path)
        self.log.info(
            "snapshot taken at {index} (term {term}): {size} bytes in {seconds:.2f}s; log kept after {upto}",
            parkd_event="snapshot_taken", index=meta.index, term=meta.term,
            size=info.size_bytes, seconds=info.seconds, upto=upto,
        )  # fmt: skip
        return info

    def _take_failed(self, failure) -> None:
        self.taking = False
        self.log.failure("taking a snapshot failed", failure)

    # ------------------------------------------------------------ sending

    def intercept(self, message) -> bool:
        """True if ``message`` is the core's request to send a snapshot (handled here)."""
        if not isinstance(message, InstallSnapshot) or message.data or message.offset:
            return False
        peer = message.dst
        if peer in self.sending:
            return True
        info = self.latest
        if info is None or info.index != message.last_index:
            self.log.warn("no file for snapshot {index} asked for by the core", index=message.last_index)
            self.node.core.report_snapshot(peer, False)
            return True
        self.sending[peer] = _Transfer(info, message.term)
        self.log.info("sending snapshot {index} ({size} bytes) to node {peer}",
                      index=info.index, size=info.size_bytes, peer=peer)  # fmt: skip
        self._send_chunk(peer, 0)
        return True

    def _send_chunk(self, peer: int, offset: int) -> None:
        transfer = self.sending[peer]
        info = transfer.info
        data = read_chunk(info.path, offset, self.chunk_size)
        core = self.node.core
        self.node.peers.send(
            InstallSnapshot(
                transfer.term, core.id, peer, info.index, info.term, offset, data,
                offset + len(data) >= transfer.total, tuple(info.voters), tuple(info.learners),
            )
        )  # fmt: skip
        if transfer.timeout is not None and transfer.timeout.active():
            transfer.timeout.cancel()
        transfer.timeout = self.node.reactor.callLater(SEND_TIMEOUT, self._give_up, peer)

    def _give_up(self, peer: int) -> None:
        transfer = self.sending.pop(peer, None)
        if transfer is not None:
            self.log.info("snapshot transfer to node {peer} stalled; the core will ask again", peer=peer)
            self.node.core.report_snapshot(peer, False)
            self.node.driver.kick()

    def on_response(self, m: SnapshotResponse) -> None:
        transfer = self.sending.get(m.src)
        if transfer is None or m.last_index != transfer.info.index:
            return
        if m.done:
            del self.sending[m.src]
            if transfer.timeout is not None and transfer.timeout.active():
                transfer.timeout.cancel()
            self.log.info("snapshot {index} delivered to node {peer}", index=m.last_index, peer=m.src)
            self.node.core.report_snapshot(m.src, True)
            self.node.driver.kick()
        else:
            self._send_chunk(m.src, m.next_offset)

    # ------------------------------------------------------------ receiving

    def on_chunk(self, m: InstallSnapshot) -> None:
        core = self.node.core
        if m.term < core.term:
            return  # from a deposed leader
        received = self.receiver.accept(m.last_index, m.last_term, m.offset, m.data, m.done)
        done = False
        if received.done and received.path:
            done = self._install(received.path)
        self.node.peers.send(
            SnapshotResponse(core.term, core.id, m.src, m.last_index, received.next_offset, done)
        )

    def _install(self, path: str) -> bool:
        node = self.node
        contents = read_snapshot_meta(path)
        meta = contents.meta
        if not node.core.offer_snapshot(meta):
            node.driver.kick()
            return True  # nothing to install: the core answered the leader itself
        install_snapshot(node.engine, node.storage, path)
        if not node.core.restore(meta):
            raise AssertionError(f"core refused snapshot {meta} after offering it")
        node.intake.forget_applied_state()
        if hasattr(node, "membership"):
            node.membership.restore_members(contents.members)
        previous, self.latest = self.latest, SnapshotInfo(
            path, meta.index, os.path.getsize(path), 0.0, meta.term, meta.voters, meta.learners
        )
        if previous is not None and previous.path != path:
            _remove(previous.path)
        self.log.info("installed snapshot {index} (term {term}) from the leader", index=meta.index, term=meta.term)
        for listener in node.driver.applied_listeners:
            listener(meta.index)
        node.driver.kick()
        return True


def _remove(path: str) -> None:
    for name in (path, path + ".sha256"):
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass
