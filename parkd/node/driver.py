"""The Ready loop: persist -> send -> apply -> advance, on the reactor.

A leader's appends go out before its own write (``Ready.early``): the write
waits one reactor turn, since Twisted puts data on a socket only when the
reactor next polls it, so that followers write the entries while the leader does.

Inputs (ticks, peer messages, proposals) only *schedule* processing for the end
of the current reactor turn, so everything the core produced in one turn is
persisted in one SQLite transaction (group commit) before any message of it is
sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from parkd.db import StorageError
from parkd.raft.core import RaftCore, ReadState, Ready, Role, SoftState, TransferResult
from parkd.raft.messages import Message
from parkd.raft.types import Entry, Membership

# After a long reactor stall, replay at most this many ticks at once.
MAX_CATCH_UP_TICKS = 100


class RaftDriver:
    log = Logger()

    def __init__(
        self,
        core: RaftCore,
        storage,
        send: Callable[[Message], None],
        apply: Callable[[tuple[Entry, ...]], None],
        clock,
        tick_seconds: float,
        on_fatal: Callable[[], None],
    ):
        self.core = core
        self.storage = storage
        self.send = send
        self.apply = apply
        self.clock = clock
        self.tick_seconds = tick_seconds
        self.on_fatal = on_fatal
        self.soft_state_listeners: list[Callable[[SoftState], None]] = []
        self.read_state_listeners: list[Callable[[ReadState], None]] = []
        # Called with the last applied index after each batch is applied.
        self.applied_listeners: list[Callable[[int], None]] = []
        # Called with each persisted batch of entries, before messages are sent
        # (CONFIG entries carry new members' addresses) and with a changed
        # Membership, before the messages that may go to new members.
        self.entries_listeners: list[Callable[[tuple[Entry, ...]], None]] = []
        self.membership_listeners: list[Callable[[Membership], None]] = []
        # Called with the TransferResult when a leadership transfer ends.
        self.transfer_listeners: list[Callable[[TransferResult], None]] = []
        self.commit_seconds: list[float] = []  # recent persist durations, for metrics
        self._loop: LoopingCall | None = None
        self._scheduled = None
        self._written_next: Ready | None = None  # a leader's Ready whose appends are leaving
        self._failed = False

    def start(self) -> None:
        self._loop = LoopingCall.withCount(self._ticks)
        self._loop.clock = self.clock
        self._loop.start(self.tick_seconds, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None

    # ------------------------------------------------------------ inputs

    def _ticks(self, count: int) -> None:
        for _ in range(min(count, MAX_CATCH_UP_TICKS)):
            self.core.tick()
        self.process()

    def step(self, message: Message) -> None:
        self.core.step(message)
        self._schedule()

    def propose(self, data: bytes) -> None:
        """Propose (or forward) ``data``; raises NotLeader if no leader is known."""
        self.core.propose(data)
        self._schedule()

    def read_index(self, ctx: int) -> None:
        self.core.read_index(ctx)
        self._schedule()

    def peer_unreachable(self, peer_id: int) -> None:
        """The connection to ``peer_id`` broke (see RaftCore.peer_unreachable)."""
        if self.core.leader_id == peer_id and self.core.role is Role.FOLLOWER:
            self.log.info("lost the connection to leader {peer_id}", peer_id=peer_id)
        self.core.peer_unreachable(peer_id)
        self._schedule()

    def kick(self) -> None:
        """Process whatever the core has for us at the end of this reactor turn."""
        self._schedule()

    def _schedule(self) -> None:
        if self._scheduled is None and not self._failed:
            self._scheduled = self.clock.callLater(0, self.process)

    # ------------------------------------------------------------ the loop

    def process(self) -> None:
        self._scheduled = None
        try:
            self._process()
        except Exception:
            # A bug, never input (the ports refuse what the core cannot take).  A
            # Ready left half done would stop Raft for good while the process lived
            # on, serving stale reads: stop the node instead, loudly.
            self._failed = True
            self.stop()
            self.log.failure("Raft driver failed, stopping node {node_id}", node_id=self.core.id)
            self.on_fatal()

    def _process(self) -> None:
        if self._written_next is not None:
            ready, self._written_next = self._written_next, None
            if not self._finish(ready):
                return
        while not self._failed and self.core.has_ready():
            ready = self.core.ready()
            for message in ready.messages[: ready.early]:  # a leader's appends (§10.2.1)
                self.send(message)
            if ready.early and ready.entries:
                # Twisted writes to a socket when the reactor next polls it: give it
                # that turn, so the followers write these entries while we do.
                self._written_next = ready
                self._schedule()
                return
            if not self._finish(ready):
                return

    def _finish(self, ready: Ready) -> bool:
        """Persist, send, apply and advance ``ready``; False if the node failed."""
        if not self._persist(ready):
            return False
        if ready.entries:
            for listener in self.entries_listeners:
                listener(ready.entries)
        if ready.membership is not None:
            for listener in self.membership_listeners:
                listener(ready.membership)
        for message in ready.messages[ready.early :]:
            self.send(message)
        if ready.committed_entries:
            self.apply(ready.committed_entries)
            for listener in self.applied_listeners:
                listener(ready.committed_entries[-1].index)
        if ready.soft_state is not None:
            self._soft_state_changed(ready.soft_state)
        for read_state in ready.read_states:
            for listener in self.read_state_listeners:
                listener(read_state)
        if ready.transfer is not None:
            self._transfer_ended(ready.transfer)
        self.core.advance(ready)
        return True

    def _persist(self, ready: Ready) -> bool:
        if ready.hard_state is None and not ready.entries:
            return True
        started = time.perf_counter()
        try:
            self.storage.save(ready.hard_state, ready.entries)
        except StorageError as e:
            self._fatal(e)
            return False
        self.commit_seconds.append(time.perf_counter() - started)
        del self.commit_seconds[:-1000]
        return True

    def _soft_state_changed(self, soft: SoftState) -> None:
        if soft.role is Role.LEADER:
            self.log.info(
                "node {node_id} became leader for term {term}",
                parkd_event="leader_elected",
                node_id=self.core.id,
                term=self.core.term,
                leader_id=self.core.id,
            )
        for listener in self.soft_state_listeners:
            listener(soft)

    def transfer_leadership(self, target: int | None = None) -> int:
        """Start handing leadership to ``target`` (or the best voter); see RaftCore."""
        target = self.core.transfer_leadership(target)
        self._schedule()
        return target

    def _transfer_ended(self, result: TransferResult) -> None:
        if result.succeeded:
            self.log.info(
                "node {node_id} handed leadership to {target} in term {term}",
                parkd_event="leadership_transferred",
                node_id=self.core.id,
                target=result.target,
                term=self.core.term,
            )
        else:
            self.log.warn("leadership transfer to {target} abandoned", target=result.target)
        for listener in self.transfer_listeners:
            listener(result)

    def _fatal(self, error: Exception) -> None:
        """A storage error stops the node: never continue on an unknown disk state."""
        self._failed = True
        self.stop()
        self.log.critical("storage failed, stopping node {node_id}: {error}", node_id=self.core.id, error=error)
        self.on_fatal()
