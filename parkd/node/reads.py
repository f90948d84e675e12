"""Linearizable reads on a node: a read index from the leader, then the local apply.

:meth:`ReadBarrier.read` asks the core for a read index with a fresh context
(ReadIndex, Raft dissertation §6.4; a follower's core forwards the request),
waits for the matching answer (index 0 means leadership was lost: ask again,
a few times), then waits until this node has applied that index.  Local state
then reflects every write acknowledged before the read started.  It fails with
:class:`ReadUnavailable` when no leader is known or nothing arrives within the
timeout (``Deferred.addTimeout``; ``ReadUnavailable.outcome`` says which, for
metrics); cancelling the Deferred (the client went away) drops the read.
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

from parkd.node.driver import EntriesApplied, ReadIndexReady, SnapshotInstalled
from parkd.raft.core import NotLeader

READ_TIMEOUT = 2.0  # seconds to obtain a read index and apply up to it
READ_ATTEMPTS = 3  # read index requests per read (a lost leadership answers 0)
READ_RETRY_DELAY = 0.05  # seconds before asking again after a failed read index


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

    def read_index(self, ctx: int) -> None: ...

    def subscribe(self, observer: Callable, *kinds: type) -> None: ...


@dataclass(eq=False)
class _PendingRead:
    deferred: defer.Deferred | None = None
    ctx: int = 0
    attempts: int = 0
    index: int = 0  # the read index, once the leader confirmed it
    retry: object = None
    order: int = field(default_factory=itertools.count().__next__)


class ReadBarrier:
    """Deferreds that fire once local state may answer a linearizable read."""

    def __init__(self, driver: ReadIndexSource, clock, timeout: float = READ_TIMEOUT, attempts: int = READ_ATTEMPTS):
        self.driver = driver
        self.clock = clock
        self.applied = driver.applied_index
        self.timeout = timeout
        self.attempts = attempts
        # Contexts travel to the leader and back; start at a random point so a
        # late answer to a previous incarnation's request cannot match ours.
        self._contexts = itertools.count(random.SystemRandom().getrandbits(48) + 1)
        self._asking: dict[int, _PendingRead] = {}
        self._waiting: list[tuple[int, int, _PendingRead]] = []  # heap of (index, order, read)
        driver.subscribe(self._read_ready, ReadIndexReady)
        driver.subscribe(self._applied, EntriesApplied, SnapshotInstalled)

    @property
    def pending(self) -> int:
        return len(self._asking) + sum(1 for _, _, r in self._waiting if not r.deferred.called)

    def read(self) -> defer.Deferred:
        """Fires with the read index once local state reflects every write acked before."""
        read = _PendingRead()
        read.deferred = defer.Deferred(lambda _: self._forget(read))
        read.deferred.addTimeout(self.timeout, self.clock, onTimeoutCancel=lambda _, __: self._timed_out(read))
        self._ask(read)
        return read.deferred

    def _ask(self, read: _PendingRead) -> None:
        read.retry = None
        if read.deferred.called:
            return
        read.attempts += 1
        read.ctx = next(self._contexts)
        self._asking[read.ctx] = read
        try:
            self.driver.read_index(read.ctx)
        except NotLeader:
            self._asking.pop(read.ctx, None)
            read.deferred.errback(Failure(ReadUnavailable("no leader known; try again shortly")))

    def _read_ready(self, event: ReadIndexReady) -> None:
        read = self._asking.pop(event.read.ctx, None)
        if read is None or read.deferred.called:
            return
        if event.read.index == 0:  # leadership changed under the read: ask again
            if read.attempts >= self.attempts:
                read.deferred.errback(Failure(ReadUnavailable("the leader changed during the read; try again shortly")))
            else:
                read.retry = self.clock.callLater(READ_RETRY_DELAY, self._ask, read)
            return
        read.index = event.read.index
        if self.applied >= read.index:
            read.deferred.callback(read.index)
        else:
            heapq.heappush(self._waiting, (read.index, read.order, read))

    def _applied(self, event: EntriesApplied | SnapshotInstalled) -> None:
        index = event.applied_index if isinstance(event, EntriesApplied) else event.meta.index
        self.applied = max(self.applied, index)
        while self._waiting and self._waiting[0][0] <= self.applied:
            _, _, read = heapq.heappop(self._waiting)
            if not read.deferred.called:
                read.deferred.callback(read.index)

    def _forget(self, read: _PendingRead) -> None:
        """The read was cancelled (its client left, or it timed out)."""
        self._asking.pop(read.ctx, None)
        if read.retry is not None and read.retry.active():
            read.retry.cancel()

    def _timed_out(self, read: _PendingRead) -> Failure:
        if read.index:
            message = f"not caught up with the leader's commit index {read.index} within {self.timeout:g} s"
        else:
            message = f"no leader confirmed the read within {self.timeout:g} s; try again shortly"
        return Failure(ReadUnavailable(message, "timeout"))
