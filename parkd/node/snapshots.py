"""Snapshots on a node (Raft §7): when to take one, taking, the transport, installing.

- **When**: :class:`CompactionPolicy`, checked after each applied batch.
- **Taking**: the parking state is pinned on the reactor thread (a read
  transaction on its own connection), where the driver also says the term and
  configuration at the pinned index; the copy runs on a dedicated thread, so the
  reactor keeps applying; back on the reactor the driver steps ``SnapshotTaken``
  and the core and storage forget the log up to a trailing margin.  A file is
  deleted once a newer one is recorded and no transfer reads it.
- **Sending**: the core asks for a snapshot with an empty ``InstallSnapshot``;
  this transport streams the file in chunks well below the wire limit, one chunk
  per ``SnapshotResponse``, resuming where the follower's answer says, and
  reports the outcome through the driver (``SnapshotStatus``); a silent follower
  is given up after a timeout, and the core asks again later.
- **Receiving**: chunks go to a resumable ``SnapshotReceiver``; a complete,
  verified file is stepped into the core as a whole ``InstallSnapshot``.  If the
  core wants it installed, the driver calls :meth:`SnapshotManager.install`: the
  parking tables and the Raft log are replaced in one transaction, on the
  snapshot thread.

The file format is ``parkd/parking/snapshot.py``; the chunk stream and the
receiver are ``parkd/node/snapshot_stream.py``.  The simulation's stand-in for
this transport makes the same driver calls (``parkd/raft/testing/cluster.py``).
"""

from __future__ import annotations

import glob
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger

from parkd.db import StorageError, is_disk_full
from parkd.node.events import EntriesApplied, LogCompacted
from parkd.node.snapshot_stream import CHUNK_SIZE, SnapshotReceiver, read_chunk, snapshot_sha256, transfer_size
from parkd.node.worker import WorkerThread
from parkd.parking.snapshot import (
    PinnedState,
    SnapshotError,
    SnapshotInfo,
    pin_state,
    read_snapshot_meta,
    restore_snapshot,
)
from parkd.raft.messages import InstallSnapshot, SnapshotResponse
from parkd.raft.storage import install_snapshot_in
from parkd.raft.types import Membership, SnapshotMeta

SEND_TIMEOUT = 5.0  # seconds without an answer before a transfer is given up
RETAKE_AFTER_S = 30.0  # after a failed snapshot (a full disk), wait this long before the next try
INSTALL_PROGRESS_S = 1.0  # a follower installing a snapshot says so this often


@dataclass(frozen=True, slots=True)
class CompactionPolicy:
    """When to snapshot and how much log to keep.

    Snapshot once the log holds more than ``max_entries`` entries or ``max_bytes`` of
    entry data beyond the last snapshot; then keep the ``margin`` entries up to the
    snapshot index (and all after it), so a follower a little behind still gets
    AppendEntries instead of a whole snapshot.  A frame result is ~30 bytes, so the
    byte bound only matters for other entries.
    """

    max_entries: int = 100_000
    max_bytes: int = 64 << 20
    margin: int = 10_000

    def __post_init__(self) -> None:
        if self.max_entries < 1 or self.max_bytes < 1 or self.margin < 0:
            raise ValueError(f"bad compaction policy {self}")

    def should_snapshot(self, entries_since: int, bytes_since: int, node_id: int = 0) -> bool:
        """Whether to snapshot now; ``node_id`` staggers the members (:meth:`stagger`)."""
        return entries_since > self.max_entries + self.stagger(node_id) or bytes_since > self.max_bytes

    def stagger(self, node_id: int) -> int:
        """Entries node ``node_id`` waits beyond ``max_entries``: 0, 15 %, 30 %, 45 % by ``node_id % 4``.

        Every member applies the same log, so with one threshold they all took a
        snapshot at the same index, hence at about the same moment (issue 14).  A
        deterministic per-node offset spreads them: members 1, 2, 3 snapshot 15 %
        of ``max_entries`` apart (15 s apart at 1,000 frames/s with the default
        100k), so a quorum is never copying at once.
        """
        return (node_id % 4) * self.max_entries * 15 // 100

    def compact_upto(self, snapshot_index: int) -> int:
        return max(0, snapshot_index - self.margin)


@dataclass(eq=False)
class PinnedSnapshot:
    """The parking state pinned at :attr:`index` and what Raft says of that index (:func:`pin_snapshot`)."""

    pinned: PinnedState
    term: int
    config: Membership
    members: list

    @property
    def index(self) -> int:
        return self.pinned.index

    def write(self, path: str) -> SnapshotInfo:
        """Copy the pinned state to a snapshot file at ``path`` (slow: on a worker thread), then close."""
        config = self.config
        return self.pinned.write(path, term=self.term, voters=config.voters, learners=config.learners,
                                 config_index=config.index, members=self.members)  # fmt: skip

    def close(self) -> None:
        self.pinned.close()


def pin_snapshot(db_path: str, driver, membership) -> PinnedSnapshot:
    """Pin the applied state of ``db_path`` now (on the reactor thread), with its term and configuration.

    The index is the applied state's as of this reactor turn, which the core's
    log holds (it is at or above the core's snapshot); the term and
    configuration come from the driver at that index, and the address book from
    ``membership``, so the copy needs nothing from Raft.  SnapshotError if the
    state cannot be pinned.
    """
    pinned = pin_state(db_path)
    try:
        term = driver.term_at(pinned.index)
        if term is None:
            raise SnapshotError(f"the term of index {pinned.index} is not in the log")
        return PinnedSnapshot(pinned, term, driver.config_at(pinned.index), membership.members_for_snapshot())
    except BaseException:
        pinned.close()
        raise


@dataclass
class _Installing:
    """A received snapshot the driver installs: whom to tell, and the file's size."""

    leader: int
    meta: SnapshotMeta
    size: int
    timer: object = None


@dataclass(eq=False)
class _Sending:
    info: SnapshotInfo
    term: int
    total: int
    timeout: object = None


class SnapshotManager:
    """Takes, sends, receives and installs the node's snapshots.

    ``driver``: the RaftDriver (core state, inputs, events); ``store``: the data
    dir's database (``db_path``, ``engine``, ``storage``); ``membership``: the
    address book that travels with a snapshot; ``send``: puts a Raft message on
    the wire; ``thread``: where copies and installs run (a :class:`~parkd.node.worker.WorkerThread`
    by default; tests on a fake reactor pass one that runs them at once).
    """

    log = Logger()

    def __init__(self, driver, store, membership, send, clock, policy: CompactionPolicy, directory: str,
                 chunk_size: int = CHUNK_SIZE, thread=None):  # fmt: skip
        self.driver = driver
        self.store = store
        self.membership = membership
        self.send_message = send
        self.clock = clock
        self.policy = policy
        self.directory = directory
        self.chunk_size = chunk_size
        os.makedirs(directory, exist_ok=True)
        self.receiver = SnapshotReceiver(os.path.join(directory, "incoming"))
        self.latest: SnapshotInfo | None = self._find_latest()
        self.sending: dict[int, _Sending] = {}
        self.received: dict[tuple[int, int], str] = {}  # (index, term) -> a complete, verified file
        self.taking = False
        self._next_take = 0.0  # no snapshot is tried before then (one failed)
        self._trimming = None  # the next batch of log compaction, scheduled
        self._installing: _Installing | None = None  # a received snapshot being installed
        self._recorded = self.latest  # the file storage records (others go once superseded)
        self._names = itertools.count()
        self._thread = thread if thread is not None else WorkerThread(clock, name="parkd-snapshot")
        if self.latest is not None:  # members added through a log compacted since
            membership.restore_members(read_snapshot_meta(self.latest.path).members)
        driver.subscribe(self._applied, EntriesApplied)
        driver.subscribe(self._compacted, LogCompacted)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._trimming is not None and self._trimming.active():
            self._trimming.cancel()
        self._trimming = None
        for transfer in self.sending.values():
            if transfer.timeout is not None and transfer.timeout.active():
                transfer.timeout.cancel()
        self.sending.clear()
        job, self._installing = self._installing, None
        if job is not None and job.timer is not None and job.timer.active():
            job.timer.cancel()
        self._thread.stop()

    def _find_latest(self) -> SnapshotInfo | None:
        """The file of the snapshot the storage recorded, after a restart."""
        want = self.driver.snapshot
        if want.index == 0:
            return None
        for path in glob.glob(os.path.join(self.directory, "**", "*.db"), recursive=True):
            try:
                meta = read_snapshot_meta(path).meta
            except SnapshotError:
                continue
            if (meta.index, meta.term) == (want.index, want.term):
                return _info(path, meta)
        self.log.warn("snapshot {index} recorded but its file is missing; will take a new one", index=want.index)
        return None

    # ------------------------------------------------------------ taking

    def _applied(self, event: EntriesApplied) -> None:
        """After each applied batch: snapshot when the log has grown enough."""
        behind = event.applied_index - self.driver.snapshot.index
        if (not self.taking and self.clock.seconds() >= self._next_take
                and self.policy.should_snapshot(behind, 0, self.driver.node_id)):
            self.take()

    def take(self) -> defer.Deferred:
        """Pin the state here, copy it on the snapshot thread; fires with the SnapshotInfo or None."""
        self.taking = True
        try:
            copy = self.pin()
        except SnapshotError as e:
            self.taking = False
            self.log.error("cannot take a snapshot: {error}", error=str(e))
            return defer.succeed(None)
        return self._thread.run(copy).addCallbacks(self._taken, self._take_failed)

    def pin(self) -> Callable[[], SnapshotInfo]:
        """Fix the state to snapshot and what Raft says of its index, now (:func:`pin_snapshot`);
        returns the copy to run.  The copy also computes the file's digest for sending it."""
        pinned = pin_snapshot(self.store.db_path, self.driver, self.membership)
        path = os.path.join(self.directory, f"snapshot-{pinned.index}-{next(self._names)}.db")

        def copy() -> SnapshotInfo:  # on the snapshot thread
            info = pinned.write(path)
            snapshot_sha256(info.path)  # the transfer's trailer, computed here rather than at sending
            return info

        return copy

    def _taken(self, info: SnapshotInfo) -> SnapshotInfo | None:
        self.taking = False
        meta = info.meta
        upto = self.policy.compact_upto(meta.index)
        if not self.driver.snapshot_taken(meta, upto):  # e.g. a snapshot was installed meanwhile
            self.log.info("snapshot at {index} not used: the core has a newer one", index=meta.index)
            _remove(info.path)
            return None
        self.latest = info
        self.log.info(
            "snapshot taken at {index} (term {term}): {size} bytes in {seconds:.2f}s; log kept after {upto}",
            parkd_event="snapshot_taken", index=meta.index, term=meta.term,
            size=info.size_bytes, seconds=info.seconds, upto=upto,
        )  # fmt: skip
        return info

    def _take_failed(self, failure) -> None:
        """Try again after RETAKE_AFTER_S, not at the next applied batch (a copy per batch on a full disk)."""
        self.taking = False
        self._next_take = self.clock.seconds() + RETAKE_AFTER_S
        if is_disk_full(failure.value):
            self.log.warn("cannot take a snapshot, the disk is full ({error}); trying again in {seconds:.0f}s",
                          error=failure.getErrorMessage(), seconds=RETAKE_AFTER_S)  # fmt: skip
        else:
            self.log.failure("taking a snapshot failed; trying again in {seconds:.0f}s", failure,
                             seconds=RETAKE_AFTER_S)  # fmt: skip

    def _compacted(self, event: LogCompacted) -> None:
        """Storage recorded the snapshot the latest file holds: the one before may go.

        Storage dropped only the first batch of the compacted entries; the rest go
        one batch per reactor turn (:meth:`_trim`), between the node's other work.
        """
        if self.latest is not None and self.latest.meta == event.meta:
            self._replace_recorded(self.latest)
        if self._trimming is None:
            self._trimming = self.clock.callLater(0, self._trim)

    def _trim(self) -> None:
        self._trimming = None
        try:
            more = self.store.storage.trim()
        except StorageError as e:
            self.log.error("compacting the Raft log failed: {error}", error=str(e))
            return  # the next compaction tries again
        if more:
            self._trimming = self.clock.callLater(0, self._trim)

    def _replace_recorded(self, info: SnapshotInfo) -> None:
        previous, self._recorded = self._recorded, info
        if previous is not None and previous.path != info.path and not self._is_sending(previous):
            _remove(previous.path)

    def _is_sending(self, info: SnapshotInfo) -> bool:
        return any(t.info is info for t in self.sending.values())

    # ------------------------------------------------------------ sending

    def send(self, request: InstallSnapshot) -> None:
        """The core asks for our latest snapshot to go to ``request.dst``."""
        peer = request.dst
        if peer in self.sending:
            return
        info = self.latest
        if info is None or info.index != request.last_index:
            self.log.warn("no file for snapshot {index} asked for by the core", index=request.last_index)
            self.driver.snapshot_status(peer, False)
            return
        self.sending[peer] = _Sending(info, request.term, transfer_size(info.path))
        self.log.info("sending snapshot {index} ({size} bytes) to node {peer}",
                      index=info.index, size=info.size_bytes, peer=peer)  # fmt: skip
        self._send_chunk(peer, 0)

    def _send_chunk(self, peer: int, offset: int) -> None:
        transfer = self.sending[peer]
        info = transfer.info
        data = read_chunk(info.path, offset, self.chunk_size)
        self.send_message(
            InstallSnapshot(
                transfer.term, self.driver.node_id, peer, info.index, info.term, offset, data,
                offset + len(data) >= transfer.total, tuple(info.voters), tuple(info.learners),
            )
        )  # fmt: skip
        self._rearm(peer, transfer)

    def _rearm(self, peer: int, transfer: _Sending) -> None:
        if transfer.timeout is not None and transfer.timeout.active():
            transfer.timeout.cancel()
        transfer.timeout = self.clock.callLater(SEND_TIMEOUT, self._give_up, peer)

    def _give_up(self, peer: int) -> None:
        transfer = self.sending.pop(peer, None)
        if transfer is not None:
            self.log.info("snapshot transfer to node {peer} stalled; the core will ask again", peer=peer)
            self.driver.snapshot_status(peer, False)

    def on_response(self, m: SnapshotResponse) -> None:
        """The follower's answer: send the next chunk; or it installs the whole file: wait; or done."""
        transfer = self.sending.get(m.src)
        if transfer is None or m.last_index != transfer.info.index:
            return
        if m.installing and not m.done and m.next_offset >= transfer.total:
            self._rearm(m.src, transfer)  # healthy, busy: give it another SEND_TIMEOUT
        elif m.done:
            del self.sending[m.src]
            if transfer.timeout is not None and transfer.timeout.active():
                transfer.timeout.cancel()
            self.log.info("snapshot {index} delivered to node {peer}", index=m.last_index, peer=m.src)
            self.driver.snapshot_status(m.src, True)
        else:
            self._send_chunk(m.src, m.next_offset)

    # ------------------------------------------------------------ receiving

    def on_chunk(self, m: InstallSnapshot) -> None:
        """A chunk from the leader: store it and answer; a complete file goes to the core.

        When the core takes the file to install it, the answer to the last chunk
        says ``installing`` (not ``done``) and is repeated every
        :data:`INSTALL_PROGRESS_S` until the install is over, which ``done`` then
        says: the leader keeps the transfer open meanwhile instead of giving it up
        after :data:`SEND_TIMEOUT` (a 2 M-frame install takes seconds).
        """
        driver = self.driver
        if m.term < driver.term:
            return  # from a deposed leader
        received = self.receiver.accept(m.last_index, m.last_term, m.offset, m.data, m.done)
        if not (received.done and received.path):
            self._answer(m.src, m.last_index, received.next_offset, received.done)
            return
        meta = read_snapshot_meta(received.path).meta
        if self._installing is not None and self._installing.meta == meta:  # a resent last chunk
            self._answer(m.src, meta.index, received.next_offset, False, installing=True)
            return
        self.received[meta.index, meta.term] = received.path
        before = driver.snapshot
        driver.step(
            InstallSnapshot(m.term, m.src, driver.node_id, meta.index, meta.term, received.next_offset, b"",
                            True, meta.voters, meta.learners)
        )  # fmt: skip
        if driver.snapshot == meta != before:  # the core adopted it: the driver installs it next
            self._installing = _Installing(m.src, meta, received.next_offset)
            self._still_installing()
        else:  # not needed (or one is already being installed): the core has answered the leader
            self.received.pop((meta.index, meta.term), None)
            self._answer(m.src, meta.index, received.next_offset, True)

    def _answer(self, leader: int, index: int, next_offset: int, done: bool, installing: bool = False) -> None:
        driver = self.driver
        self.send_message(SnapshotResponse(driver.term, driver.node_id, leader, index, next_offset, done, installing))

    def _still_installing(self) -> None:
        """Tell the leader the complete file is being installed; again every INSTALL_PROGRESS_S until done."""
        job = self._installing
        if job is None:
            return
        self._answer(job.leader, job.meta.index, job.size, False, installing=True)
        job.timer = self.clock.callLater(INSTALL_PROGRESS_S, self._still_installing)

    def _install_ended(self, meta: SnapshotMeta, ok: bool) -> None:
        job = self._installing
        if job is None or job.meta != meta:
            return
        self._installing = None
        if job.timer is not None and job.timer.active():
            job.timer.cancel()
        if ok:
            self._answer(job.leader, meta.index, job.size, True)

    def install(self, meta: SnapshotMeta) -> defer.Deferred:
        """Replace the parking tables and the Raft log by the received snapshot ``meta``.

        One transaction on the snapshot thread (a million frames take seconds);
        the driver waits for the Deferred before it processes anything else.
        """
        path = self.received.pop((meta.index, meta.term))
        store = self.store

        def in_thread():
            return restore_snapshot(store.engine, path, lambda conn: install_snapshot_in(conn, meta))

        def installed(contents):
            store.storage.refresh()
            self.membership.restore_members(contents.members)
            unrecorded = self.latest if self.latest is not self._recorded else None
            self.latest = _info(path, meta)
            self._replace_recorded(self.latest)
            if unrecorded is not None and not self._is_sending(unrecorded):
                _remove(unrecorded.path)  # taken, but superseded by this one before storage recorded it
            self.log.info("installed snapshot {index} (term {term}) from the leader", index=meta.index, term=meta.term)
            self._install_ended(meta, True)

        def failed(failure):
            self._install_ended(meta, False)  # the driver stops the node; the leader gives the transfer up
            return failure

        return self._thread.run(in_thread).addCallbacks(installed, failed)


def _info(path: str, meta: SnapshotMeta) -> SnapshotInfo:
    return SnapshotInfo(path, meta.index, os.path.getsize(path), 0.0, meta.term, meta.voters, meta.learners)


def _remove(path: str) -> None:
    for name in (path, path + ".sha256"):
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass
