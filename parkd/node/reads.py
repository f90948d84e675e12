"""Linearizable reads on a node: a read index from the leader, then the local apply.

:meth:`ReadBarrier.read` gets a read index (ReadIndex, Raft dissertation §6.4;
a follower's core forwards the request to the leader), waits for the matching
answer (index 0 means leadership was lost: ask again, a few times), then waits
until this node has applied that index.  Local state then reflects every write
acknowledged before the read started.  It fails with :class:`ReadUnavailable`
when no leader is known or nothing arrives within the timeout
(``Deferred.addTimeout``; ``ReadUnavailable.outcome`` says which, for
metrics); cancelling the Deferred (the client went away) drops the read.

Reads are batched (§6.4: one confirmation serves every read that arrived
before it).  Reads share one request, with one context, while it has not left
the node: until the driver takes its next Ready (``ready_count`` moves), the
leader has not recorded a commit index for it (a follower's request is still
in the core's outbox; a leader's core recorded its commit index, and no entry
can be applied, hence no write acknowledged, before that Ready).  Once it has
left, new reads wait for its answer and then go together in the next request:
one request in flight, so one heartbeat round on the leader and one
request/response with it from a follower serve a whole batch.  A request that
gets no answer within :data:`BATCH_PATIENCE` (lost with a connection, or a
leader that went away) no longer holds the next batch back.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet import defer
from twisted.python.failure import Failure

from parkd.node.events import EntriesApplied, ReadIndexReady, SnapshotInstalled
from parkd.raft.core import NotLeader

READ_TIMEOUT = 2.0  # seconds to obtain a read index and apply up to it
READ_ATTEMPTS = 3  # read index requests per read (a lost leadership answers 0)
READ_RETRY_DELAY = 0.05  # seconds before asking again after a failed read index
BATCH_PATIENCE = 0.05  # seconds a request in flight may hold the next batch back


class ReadUnavailable(Exception):
    """No leader known, or none confirmed the read in time; try again (503).

    ``outcome`` says which, for metrics: ``no_leader`` or ``timeout``.
    """

    def __init__(self, message: str, outcome: str = "no_leader"):
        super().__init__(message)
        self.outcome = outcome


class ReadIndexSource(Protocol):
    """The driver's part a ReadBarrier uses."""

    applied_index: int
    ready_count: int  # Readies taken from the core so far

    def read_index(self, ctx: int) -> None: ...

    def subscribe(self, observer: Callable, *kinds: type) -> None: ...


@dataclass(eq=False)
class _PendingRead:
    deferred: defer.Deferred | None = None
    batch: _Batch | None = None  # the request it waits for, if asked
    attempts: int = 0
    index: int = 0  # the read index, once the leader confirmed it
    retry: object = None
    order: int = field(default_factory=itertools.count().__next__)


@dataclass(eq=False)
class _Batch:
    """One read index request (one context) and the reads it serves."""

    ctx: int
    asked_at: int  # the driver's ready_count when asked: joinable while it is unchanged
    reads: list[_PendingRead] = field(default_factory=list)


class ReadBarrier:
    """Deferreds that fire once local state may answer a linearizable read."""

    def __init__(self, driver: ReadIndexSource, clock, timeout: float = READ_TIMEOUT, attempts: int = READ_ATTEMPTS,
                 patience: float = BATCH_PATIENCE):  # fmt: skip
        self.driver = driver
        self.clock = clock
        self.applied = driver.applied_index
        self.timeout = timeout
        self.attempts = attempts
        self.patience = patience
        # Contexts travel to the leader and back; start at a random point so a
        # late answer to a previous incarnation's request cannot match ours.
        self._contexts = itertools.count(random.SystemRandom().getrandbits(48) + 1)
        self._asking: dict[int, _Batch] = {}  # requests without an answer yet, by context
        self._in_flight: _Batch | None = None  # the newest request, until answered or past patience
        self._queued: list[_PendingRead] = []  # the next batch, waiting for the request in flight
        self._patience = None  # when the queued batch goes anyway
        self._waiting: list[tuple[int, int, _PendingRead]] = []  # heap of (index, order, read)
        self.requests = 0  # read index requests made (each serves a batch)
        driver.subscribe(self._read_ready, ReadIndexReady)
        driver.subscribe(self._applied, EntriesApplied, SnapshotInstalled)

    @property
    def pending(self) -> int:
        asking = sum(1 for batch in self._asking.values() for r in batch.reads if not r.deferred.called)
        waiting = sum(1 for _, _, r in self._waiting if not r.deferred.called)
        return asking + len(self._queued) + waiting

    def awaits_applies(self) -> bool:
        """Whether a read waits for this node to apply up to its read index."""
        return bool(self._waiting)

    def read(self) -> defer.Deferred:
        """Fires with the read index once local state reflects every write acked before."""
        read = _PendingRead()
        read.deferred = defer.Deferred(lambda _: self._forget(read))
        read.deferred.addTimeout(self.timeout, self.clock, onTimeoutCancel=lambda _, __: self._timed_out(read))
        self._enqueue(read)
        return read.deferred

    def _enqueue(self, read: _PendingRead) -> None:
        """Join the request that has not left yet, or wait for the one in flight, or ask."""
        read.retry = None
        if read.deferred.called:
            return
        read.attempts += 1
        batch = self._in_flight
        if batch is not None and batch.asked_at == self.driver.ready_count and batch.ctx in self._asking:
            read.batch = batch
            batch.reads.append(read)
        elif batch is not None:
            self._queued.append(read)
            if self._patience is None:
                self._patience = self.clock.callLater(self.patience, self._impatient)
        else:
            self._ask([read])

    def _ask(self, reads: list[_PendingRead]) -> None:
        """One read index request for ``reads``."""
        batch = _Batch(next(self._contexts), self.driver.ready_count, reads)
        for read in reads:
            read.batch = batch
        self._asking[batch.ctx] = batch
        self._in_flight = batch
        self.requests += 1
        try:
            self.driver.read_index(batch.ctx)
        except NotLeader:
            self._asking.pop(batch.ctx, None)
            self._in_flight = None
            for read in reads:
                read.batch = None
                if not read.deferred.called:
                    read.deferred.errback(Failure(ReadUnavailable("no leader known; try again shortly")))

    def _send_queued(self) -> None:
        """The request in flight was answered (or took too long): the queued batch goes now."""
        batch, self._in_flight = self._in_flight, None
        if batch is not None and not batch.reads:
            self._asking.pop(batch.ctx, None)  # its reads left: an answer would serve no one
        if self._patience is not None and self._patience.active():
            self._patience.cancel()
        self._patience = None
        queued, self._queued = self._queued, []
        if queued:
            self._ask(queued)

    def _impatient(self) -> None:
        self._patience = None
        self._send_queued()

    def _read_ready(self, event: ReadIndexReady) -> None:
        batch = self._asking.pop(event.read.ctx, None)
        if batch is None:
            return
        index = event.read.index
        for read in batch.reads:
            read.batch = None
            if read.deferred.called:
                continue
            if index == 0:  # leadership changed under the read: ask again
                if read.attempts >= self.attempts:
                    read.deferred.errback(Failure(ReadUnavailable("the leader changed during the read; try again shortly")))
                else:
                    read.retry = self.clock.callLater(READ_RETRY_DELAY, self._enqueue, read)
                continue
            read.index = index
            if self.applied >= index:
                read.deferred.callback(index)
            else:
                heapq.heappush(self._waiting, (index, read.order, read))
        if batch is self._in_flight:
            self._send_queued()

    def _applied(self, event: EntriesApplied | SnapshotInstalled) -> None:
        index = event.applied_index if isinstance(event, EntriesApplied) else event.meta.index
        self.applied = max(self.applied, index)
        while self._waiting and self._waiting[0][0] <= self.applied:
            _, _, read = heapq.heappop(self._waiting)
            if not read.deferred.called:
                read.deferred.callback(read.index)

    def _forget(self, read: _PendingRead) -> None:
        """The read was cancelled (its client left, or it timed out)."""
        batch, read.batch = read.batch, None
        if batch is not None:
            batch.reads.remove(read)
            if not batch.reads and batch is not self._in_flight:
                self._asking.pop(batch.ctx, None)  # an answer would serve no one
        if read in self._queued:
            self._queued.remove(read)
        if read.retry is not None and read.retry.active():
            read.retry.cancel()

    def _timed_out(self, read: _PendingRead) -> Failure:
        if read.index:
            message = f"not caught up with the leader's commit index {read.index} within {self.timeout:g} s"
        else:
            message = f"no leader confirmed the read within {self.timeout:g} s; try again shortly"
        return Failure(ReadUnavailable(message, "timeout"))
