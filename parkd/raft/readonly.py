"""The leader's pending linearizable reads (dissertation §6.4; etcd-io/raft's ``readOnly``).

A read the leader accepts records its commit index and a *round*; it is
confirmed once a majority echoed that round (``AppendEntries.read_ctx``).
Reads accepted before the same message left share one round, so any number
of them costs one confirmation; ordinary appends carry the round too.  Reads
that arrive before the leader has committed an entry of its term wait here
(§6.4 step 1).  The core decides; this keeps the queue.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class PendingRead:
    """A ReadIndex request the leader has accepted but not yet confirmed."""

    round: int  # confirmed once a majority echoed a read_ctx >= round
    ctx: int
    index: int  # the commit index when it was accepted (0: answered as a failure)
    requester: int


class ReadOnly:
    def __init__(self) -> None:
        # Round 0 counts as sent: every follower "echoes" it by default.
        self.round = 0
        self._round_sent = True
        self._pending: list[PendingRead] = []
        self._before_commit: list[tuple[int, int]] = []  # (ctx, requester)

    def add(self, ctx: int, index: int, requester: int) -> None:
        """Accept a read at commit ``index``; it takes a fresh round unless none was sent since the last one."""
        if self._round_sent:
            self.round += 1
            self._round_sent = False
        self._pending.append(PendingRead(self.round, ctx, index, requester))

    def round_sent(self) -> None:
        """A message carrying the current round left (the next read needs a new one)."""
        self._round_sent = True

    def wait_for_commit(self, ctx: int, requester: int) -> None:
        """Hold a read until this term has committed an entry (§6.4 step 1)."""
        self._before_commit.append((ctx, requester))

    def take_waiting_for_commit(self) -> list[tuple[int, int]]:
        waiting, self._before_commit = self._before_commit, []
        return waiting

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def confirmed(self, echoed: int) -> list[PendingRead]:
        """The reads a majority's echo of round ``echoed`` confirms, oldest first (removed here)."""
        count = 0
        for read in self._pending:
            if read.round > echoed:
                break
            count += 1
        done, self._pending = self._pending[:count], self._pending[count:]
        return done

    def take_all(self) -> list[PendingRead]:
        """Every read not yet confirmed, those waiting for a commit with index 0 (a leader stepping down)."""
        every = self._pending + [PendingRead(0, ctx, 0, requester) for ctx, requester in self._before_commit]
        self._pending, self._before_commit = [], []
        return every
