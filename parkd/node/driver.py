"""The only door into the Raft core: inputs, the Ready loop, and the node's event stream.

Every input (ticks, peer messages, proposals, membership changes, reads,
transfers, and the node's local events: a lost connection, a snapshot sent,
taken or received) goes through :class:`RaftDriver`, which calls the core and
schedules the Ready loop for the end of the reactor turn.  Everything the core
produced in one turn is then handled in the order ``Ready`` prescribes
(``parkd/raft/core.py``): early messages, snapshot install, one storage
transaction (group commit), messages, apply, advance.

A leader's appends go out before its own write (``Ready.early_messages``), so
that followers write the entries while the leader does (dissertation §10.2.1).

A Ready holds at most ``max_committed_per_ready`` entries to apply; when more
are committed, the next Ready waits for the next reactor turn, so a long run of
applying (a follower catching up, a saturated leader) never holds the reactor
for more than one bounded batch.

**A follower holds its applies** (``apply_hold_s``) while nothing on the node
waits for them (:meth:`RaftDriver.wait_for_applies`: a camera's frame, a
linearizable read): its committed entries are applied within ``apply_hold_s``
in one batch instead of one transaction per Ready (``RaftCore.ready``'s
``hold_applies``).  Under one camera on the leader each follower otherwise
applied every frame alone, right when the leader needs the CPU to commit and
ack the next; its local (stale) reads trail by at most ``apply_hold_s`` more.

**The fsync is off the reactor** when the driver has a ``syncer`` (the daemon's
one-thread pool): the Ready's transaction is committed on the reactor without
an fsync (``save(sync=False)``), then ``storage.sync()`` (an fsync of the WAL,
no SQLite call) runs on the syncer's thread while the reactor goes on reading
sockets, decoding frames and stepping the core; the rest of the Ready (the
messages that promise durability, apply, advance) continues once it returned,
and no later Ready is taken before.  An fsync that fails stops the node: after
a failed fsync the kernel may have dropped the dirty pages, so retrying cannot
tell what is on disk.  Without a syncer (unit tests) the transaction fsyncs
itself, and the leader's write waits one reactor turn instead, since Twisted
puts the appends on a socket only when the reactor next polls it.  A received
snapshot is installed by the node's installer, off the reactor; the loop waits
for it.

A storage error stops the node, except a full disk (``SQLITE_FULL``): the
failed transaction rolled back, so the Ready is kept and tried again from the
step that failed while the core waits for ``advance`` and nothing of that
Ready that needs the write leaves the node (``parkd/node/storage_failures.py``);
the node publishes :class:`StorageStalled`, then :class:`StorageResumed`.

Observers subscribe to one typed stream of :data:`parkd.node.events.DriverEvent` values
(:meth:`RaftDriver.subscribe`); collaborators read the core's state through
the driver's read-only properties.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from parkd.db import StorageError, is_disk_full
from parkd.node.apply_hold import ApplyHold
from parkd.node.events import (
    EntriesApplied,
    EntriesPersisted,
    LeaderChanged,
    LogCompacted,
    MembershipChanged,
    Persisted,
    ReadIndexReady,
    SnapshotInstalled,
    StorageResumed,
    StorageStalled,
    TransferEnded,
)
from parkd.node.storage_failures import RETRY_STALLED_S, Stall, log_storage_stop, one_line
from parkd.raft.confchange import ConfChange
from parkd.raft.core import RaftCore, Ready, Role, TransferResult
from parkd.raft.messages import AppendEntries, Message, PeerUnreachable, SnapshotStatus, SnapshotTaken
from parkd.raft.progress import Progress
from parkd.raft.types import Entry, HardState, Membership, SnapshotMeta

# After a long reactor stall, replay at most this many ticks at once.
MAX_CATCH_UP_TICKS = 100
SYNCING = "syncing"  # _finish / _persist: the write's fsync is on the syncer, whose end continues the Ready


# -- what the driver needs ---------------------------------------------------------


class LogStore(Protocol):
    """Raft's durable state (``parkd.raft.storage.SqliteStorage``)."""

    def save(self, hard_state: HardState | None, entries: tuple[Entry, ...], *, sync: bool) -> None: ...

    def sync(self) -> None:
        """Make every transaction committed so far durable; called on the syncer's thread."""

    def compact(self, upto_index: int, meta: SnapshotMeta) -> None: ...


class StateMachine(Protocol):
    """Applies committed entries and installs received snapshots (durably)."""

    def apply(self, entries: tuple[Entry, ...]) -> list[Any]:
        """Apply ``entries`` in order; the results go out in :class:`EntriesApplied`."""

    def install(self, meta: SnapshotMeta) -> defer.Deferred:
        """Replace the state and the Raft log by the received snapshot ``meta`` durably.

        May run off the reactor; the Ready loop waits for the Deferred.
        """


class RaftDriver:
    log = Logger()

    def __init__(
        self,
        core: RaftCore,
        storage: LogStore,
        send: Callable[[Message], None],
        state_machine: StateMachine,
        clock,
        tick_seconds: float,
        on_fatal: Callable[[], None],
        syncer: Callable[[Callable[[], None]], defer.Deferred] | None = None,
        apply_hold_s: float = 0.0,
    ):
        self._core = core
        self.storage = storage
        self.send = send
        self.state_machine = state_machine
        self.clock = clock
        self.tick_seconds = tick_seconds
        self.on_fatal = on_fatal
        self.syncer = syncer  # runs storage.sync off the reactor; its Deferred continues the Ready
        self._observers: list[tuple[tuple[type, ...], Callable[[Any], None]]] = []
        self._loop: LoopingCall | None = None
        self._scheduled = None
        self._waiting: Ready | None = None  # a Ready whose appends are leaving, or being installed
        self._syncing: Ready | None = None  # a Ready committed, its fsync running on the syncer
        self._stopped = False
        self._failed = False
        self._stall: Stall | None = None  # a Ready waiting for disk space
        self._retry = None  # the stalled Ready's next attempt
        self._leader_commit = 0  # the highest commit index a leader told this node
        self._hold = ApplyHold(clock, apply_hold_s, self._schedule)  # a follower's held applies
        # Readies taken from the core: an input given since the last one has not
        # left the node yet (no message sent, nothing applied); reads batch on it.
        self.ready_count = 0

    def start(self) -> None:
        self._loop = LoopingCall.withCount(self._ticks)
        self._loop.clock = self.clock
        self._loop.start(self.tick_seconds, now=False)

    def stop(self) -> None:
        self._stopped = True  # a running fsync's end continues nothing
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._hold.end()

    # ------------------------------------------------------------ events

    def subscribe(self, observer: Callable[[Any], None], *kinds: type) -> None:
        """Call ``observer(event)`` for every event of one of ``kinds``, in publishing order."""
        self._observers.append((kinds, observer))

    def _publish(self, event) -> None:
        for kinds, observer in self._observers:
            if isinstance(event, kinds):
                observer(event)

    # ------------------------------------------------------------ read-only view of the core

    @property
    def node_id(self) -> int:
        return self._core.id

    @property
    def role(self) -> Role:
        return self._core.role

    @property
    def term(self) -> int:
        return self._core.term

    @property
    def leader_id(self) -> int | None:
        return self._core.leader_id

    @property
    def commit_index(self) -> int:
        return self._core.commit_index

    @property
    def applied_index(self) -> int:
        return self._core.applied_index

    @property
    def leader_commit(self) -> int:
        """The highest index this node knows committed: its own commit index, or the
        higher one a leader's AppendEntries carried (a follower commits only up
        to the entries it has, §5.3, so its own may lag the leader's)."""
        return max(self._leader_commit, self._core.commit_index)

    @property
    def failed(self) -> bool:
        """The Ready loop stopped for good (the node is stopping)."""
        return self._failed

    @property
    def stalled(self) -> bool:
        """A write found the disk full and is being retried (see :class:`StorageStalled`)."""
        return self._stall is not None

    @property
    def last_index(self) -> int:
        return self._core.last_index

    @property
    def membership(self) -> Membership:
        return self._core.membership

    @property
    def match_indexes(self) -> dict[int, int]:
        return self._core.match_indexes

    @property
    def progress(self) -> dict[int, Progress]:
        """Leader only: replication state per peer (read it, do not change it)."""
        return self._core.progress if self._core.role is Role.LEADER else {}

    @property
    def snapshot(self) -> SnapshotMeta:
        return self._core.snapshot

    @property
    def transferee(self) -> int | None:
        """Leader only: the voter a pending leadership transfer goes to."""
        return self._core.transferee

    def config_at(self, index: int) -> Membership:
        return self._core.config_at(index)

    def term_at(self, index: int) -> int | None:
        return self._core.log.term_at(index)

    # ------------------------------------------------------------ inputs

    def _ticks(self, count: int) -> None:
        for _ in range(min(count, MAX_CATCH_UP_TICKS)):
            self._core.tick()
        self.process()

    def step(self, message: Message) -> None:
        core = self._core
        core.step(message)
        if type(message) is AppendEntries and message.src == core.leader_id and message.term == core.term:
            self._leader_commit = max(self._leader_commit, message.leader_commit)
        self._schedule()

    def propose(self, data: bytes) -> None:
        """Propose (or forward) ``data``; raises NotLeader if no leader is known."""
        self._core.propose(data)
        self._schedule()

    def propose_conf_change(self, change: ConfChange) -> int:
        """Append a membership change (leader only); its index.  See RaftCore."""
        index = self._core.propose_conf_change(change)
        self._schedule()
        return index

    def force_new_configuration(self) -> int:
        """``--force-new-cluster``: this node becomes the only voter; the CONFIG entry's index.  See RaftCore."""
        index = self._core.force_new_configuration()
        self._schedule()
        return index

    def read_index(self, ctx: int) -> None:
        self._core.read_index(ctx)
        self._schedule()

    def transfer_leadership(self, target: int | None = None) -> int:
        """Start handing leadership to ``target`` (or the best voter); see RaftCore."""
        target = self._core.transfer_leadership(target)
        self._schedule()
        return target

    def peer_unreachable(self, peer_id: int) -> None:
        """The connection to ``peer_id`` broke (a hint: see ``PeerUnreachable``)."""
        if self._core.leader_id == peer_id and self._core.role is Role.FOLLOWER:
            self.log.info("lost the connection to leader {peer_id}", peer_id=peer_id)
        self.step(PeerUnreachable(peer_id))

    def snapshot_status(self, peer_id: int, success: bool) -> None:
        """The snapshot transport delivered (or gave up sending) the snapshot to ``peer_id``."""
        self.step(SnapshotStatus(peer_id, success))

    def snapshot_taken(self, meta: SnapshotMeta, upto: int) -> bool:
        """The node wrote a snapshot at ``meta``; True if the core adopted it (§7)."""
        self.step(SnapshotTaken(meta, upto))
        return self._core.snapshot == meta

    def wait_for_applies(self, waiting: Callable[[], bool]) -> None:
        """``waiting()`` is True while something on the node waits for the next applies.

        While no registered ``waiting`` is, a follower holds its committed entries
        up to ``apply_hold_s`` (:mod:`parkd.node.apply_hold`); an input that makes
        one true (a proposal, a step) is followed by a Ready that applies at once.
        """
        self._hold.wait_for(waiting)

    def _schedule(self) -> None:
        if self._scheduled is None and not self._failed:
            self._scheduled = self.clock.callLater(0, self.process)

    # ------------------------------------------------------------ the loop

    def process(self) -> None:
        self._scheduled = None
        try:
            self._process()
        except Exception:
            self._crashed()

    def _crashed(self) -> None:
        # A bug, never input (the ports refuse what the core cannot take).  A
        # Ready left half done would stop Raft for good while the process lived
        # on, serving stale reads: stop the node instead, loudly.
        self._failed = True
        self.stop()
        self.log.failure("Raft driver failed, stopping node {node_id}", node_id=self._core.id)
        self.on_fatal()

    def _process(self) -> None:
        if self._stall is not None:
            return  # the core waits for advance(); the retry continues the loop
        if self._syncing is not None:
            return  # the fsync's end continues the loop
        if self._waiting is not None:
            if self._waiting.snapshot is not None:
                return  # the installer's Deferred continues the loop
            ready, self._waiting = self._waiting, None
            if self._finish(ready) is not True:
                return
        while not self._failed:
            hold = self._hold.holding()
            if not self._core.has_ready(hold):
                break
            ready = self._core.ready(hold)
            self.ready_count += 1
            for message in ready.early_messages:  # a leader's appends (§10.2.1)
                self.send(message)
            if ready.snapshot is not None:
                self._install(ready)
                return
            if ready.early_messages and ready.entries and self.syncer is None:
                # Twisted writes to a socket when the reactor next polls it: give it
                # that turn, so the followers write these entries while we do.
                self._waiting = ready
                self._schedule()
                return
            if self._finish(ready) is not True:
                return  # failed, stalled, or the fsync's end continues
            if self._core.applied_index < self._core.commit_index and not self._hold.holding():
                # More to apply than one Ready holds (max_committed_per_ready):
                # let the reactor read sockets and fire timers between batches.
                self._schedule()
                return
        if not self._failed:
            self._hold.settle(self._core.applied_index < self._core.commit_index)

    def _install(self, ready: Ready) -> None:
        self._waiting = ready
        meta = ready.snapshot
        self.log.info("installing snapshot {index} (term {term})", index=meta.index, term=meta.term)
        installing = defer.maybeDeferred(self.state_machine.install, meta)

        def installed(_):
            self._waiting = None
            if self._failed:
                return
            self._publish(SnapshotInstalled(meta))
            try:
                if self._finish(ready) is True:
                    self._schedule()
            except Exception:
                self._crashed()

        def failed(failure):
            self._fatal(failure.value)

        installing.addCallbacks(installed, failed)

    def _finish(self, ready: Ready, applying: bool = False) -> bool | str:
        """Persist, send, apply and advance ``ready`` (``applying``: only apply and advance,
        the rest is done); False if the node failed or stalled, :data:`SYNCING` if the
        write's fsync went to the syncer (whose end continues the Ready), else True."""
        if not applying:
            persisted = self._persist(ready)
            if persisted is not True:
                return persisted
            self._persisted(ready)
        return self._apply(ready)

    def _persisted(self, ready: Ready) -> None:
        """What may leave the node once ``ready``'s write is durable."""
        if ready.entries:
            self._publish(EntriesPersisted(ready.entries))
        if ready.membership is not None:
            self._publish(MembershipChanged(ready.membership))
        for message in ready.messages:
            self.send(message)

    def _apply(self, ready: Ready) -> bool:
        if ready.committed_entries:
            try:
                results = self.state_machine.apply(ready.committed_entries)
            except StorageError as e:
                return self._storage_failed(e, ready, applying=True)
            self._publish(EntriesApplied(ready.committed_entries, results, ready.committed_entries[-1].index))
        if ready.soft_state is not None:
            self._soft_state_changed(ready.soft_state)
        for read_state in ready.read_states:
            self._publish(ReadIndexReady(read_state))
        for result in ready.transfers:
            self._transfer_ended(result)
        self._core.advance(ready)
        if ready.compaction is not None:
            self._publish(LogCompacted(ready.compaction.meta, ready.compaction.upto))
        return True

    def _persist(self, ready: Ready) -> bool | str:
        """Write ``ready``: True if durable, :data:`SYNCING` if its fsync went to the syncer, False if
        the node failed or stalled.  (A syncer may run at once: ``_synced`` has then continued already.)"""
        compaction = ready.compaction
        if ready.hard_state is None and not ready.entries and compaction is None:
            return True
        started = time.perf_counter()
        deferred_sync = ready.must_sync and self.syncer is not None
        try:
            if ready.hard_state is not None or ready.entries:
                self.storage.save(ready.hard_state, ready.entries, sync=ready.must_sync and not deferred_sync)
            if compaction is not None:
                self.storage.compact(compaction.upto, compaction.meta)
        except StorageError as e:
            return self._storage_failed(e, ready, applying=False)
        if not deferred_sync:
            self._publish(Persisted(time.perf_counter() - started))
            return True
        self._syncing = ready
        self.syncer(self.storage.sync).addCallbacks(self._synced, self._sync_failed, (started,))
        return SYNCING

    def _synced(self, _, started: float) -> None:
        ready, self._syncing = self._syncing, None
        if self._failed or self._stopped:
            return
        self._publish(Persisted(time.perf_counter() - started))
        try:
            self._persisted(ready)
            if self._apply(ready):
                self._schedule()
        except Exception:
            self._crashed()

    def _sync_failed(self, failure) -> None:
        self._syncing = None
        if not (self._failed or self._stopped):
            self._fatal(failure.value, synced=False)

    # ------------------------------------------------------------ a full disk

    def _storage_failed(self, error: StorageError, ready: Ready, *, applying: bool) -> bool:
        """A full disk stalls ``ready`` (retried later); any other storage error is fatal.  False."""
        if not is_disk_full(error):
            self._fatal(error)
            return False
        now = self.clock.seconds()
        if self._stall is None:
            self._stall = Stall(self._core.id, ready, applying, now, now)
            self._stall.began(self.log, error)
            self._publish(StorageStalled(one_line(error), "apply" if applying else "persist"))
        else:
            self._stall.failed_again(self.log, applying, now)
        self._retry = self.clock.callLater(RETRY_STALLED_S, self._retry_stalled)
        return False

    def _retry_stalled(self) -> None:
        self._retry = None
        stall = self._stall
        if stall is None or self._failed:
            return
        try:
            finished = self._finish(stall.ready, applying=stall.applying)
        except Exception:
            self._crashed()
            return
        if not finished:
            return  # stalled again (retried later) or failed
        self._stall = None
        self._publish(StorageResumed(stall.ended(self.log, self.clock.seconds())))
        if finished is True:  # else the fsync's end continues
            self._schedule()

    def _soft_state_changed(self, soft) -> None:
        core = self._core
        if soft.role is Role.LEADER:
            self.log.info(
                "node {node_id} became leader for term {term}",
                parkd_event="leader_elected",
                node_id=core.id,
                term=core.term,
                leader_id=core.id,
            )
        self._publish(LeaderChanged(soft.role, soft.leader_id, core.term))

    def _transfer_ended(self, result: TransferResult) -> None:
        if result.succeeded:
            self.log.info(
                "node {node_id} handed leadership to {target} in term {term}",
                parkd_event="leadership_transferred",
                node_id=self._core.id,
                target=result.target,
                term=self._core.term,
            )
        elif result.cancelled:
            self.log.info("leadership transfer to {target} cancelled", target=result.target)
        else:
            self.log.warn("leadership transfer to {target} abandoned", target=result.target)
        self._publish(TransferEnded(result))

    def _fatal(self, error: Exception, synced: bool = True) -> None:
        """A storage error stops the node: never continue on an unknown disk state."""
        self._failed = True
        self.stop()
        log_storage_stop(self.log, self._core.id, error, synced)
        self.on_fatal()
