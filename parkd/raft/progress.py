"""What a leader knows about one follower's log (etcd-io/raft's ``Progress``).

A follower (voter or learner) is in one of three states:

- PROBE: ``next`` is a guess.  The leader sends one AppendEntries and waits for
  the answer (or the next heartbeat) before sending another, moving ``next`` back
  on each rejection using the follower's conflict hint (§5.3 fast back-off).
- REPLICATE: ``next`` is known to be right.  The leader streams entries without
  waiting (pipelining), with at most ``max_inflight`` unacknowledged messages.
- SNAPSHOT: the entries the follower needs were compacted away, so the leader asked
  for a snapshot at ``pending_snapshot`` to be sent (Raft §7).  Nothing else is
  sent but heartbeats until the follower acknowledges an index at or past the
  snapshot, the node reports the transfer's end, or the attempt times out.

Transitions (each a named method, as etcd's ``BecomeProbe`` / ``BecomeReplicate``
/ ``BecomeSnapshot``):

    PROBE     --success reply-->              REPLICATE  (next = match + 1)
    REPLICATE --rejection-->                  PROBE      (next from the hint)
    any       --entries compacted away-->     SNAPSHOT   (next = snapshot + 1)
    SNAPSHOT  --reply at or past it-->        REPLICATE
    SNAPSHOT  --transfer ended or timed out-->PROBE      (after the snapshot, or from match)

Invariant: ``0 <= match < next``.
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    __slots__ = (
        "match",
        "next",
        "state",
        "probe_sent",
        "inflight",
        "max_inflight",
        "recent_active",
        "read_ack",
        "pending_snapshot",
        "snapshot_elapsed",
    )

    def __init__(self, next_index: int, max_inflight: int):
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight: deque[int] = deque()  # last index of each unacknowledged message
        self.max_inflight = max_inflight
        self.recent_active = False  # heard from in this check-quorum window (§6.2)
        self.read_ack = 0  # highest read round this follower has echoed (§6.4)
        self.pending_snapshot = 0  # SNAPSHOT: the index of the snapshot asked for
        self.snapshot_elapsed = 0  # SNAPSHOT: ticks since it was asked for

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.SNAPSHOT:
            return True
        return len(self.inflight) >= self.max_inflight

    def sent(self, last_index: int | None) -> None:
        """Record an AppendEntries whose last entry is ``last_index`` (None: empty)."""
        if self.state is ProgressState.PROBE:
            self.probe_sent = True
        elif self.state is ProgressState.REPLICATE and last_index is not None:
            self.next = last_index + 1
            self.inflight.append(last_index)

    def maybe_update(self, match: int) -> bool:
        """A success reply; returns whether it taught us anything new."""
        if match <= self.match:
            return False
        self.match = match
        if self.state is ProgressState.SNAPSHOT and match < self.pending_snapshot:
            return True
        if self.state is ProgressState.REPLICATE:
            self.next = max(self.next, match + 1)
            while self.inflight and self.inflight[0] <= match:
                self.inflight.popleft()
        else:
            self.become_replicate()
        return True

    def reject(self, hint_next: int) -> None:
        """A rejection: probe again from the hint, never below what is known to match.

        The hint may come from a stale (reordered) reply, so it is only trusted to
        move ``next`` backwards, and never past ``match``.  While a snapshot is on
        its way, rejections (of heartbeats) are expected and change nothing.
        """
        if self.state is ProgressState.SNAPSHOT:
            return
        self.become_probe(max(self.match + 1, min(hint_next, self.next - 1)))

    def on_heartbeat(self) -> None:
        """A lost probe (or its reply) must not pause PROBE forever: retry each heartbeat."""
        if self.state is ProgressState.PROBE:
            self.probe_sent = False

    def become_probe(self, next_index: int, paused: bool = False) -> None:
        """Guess ``next_index``; one message at a time (``paused``: none until a heartbeat)."""
        self.state = ProgressState.PROBE
        self.next = next_index
        self.probe_sent = paused
        self.pending_snapshot = 0
        self.inflight.clear()

    def become_replicate(self) -> None:
        """``match`` is known: stream from right after it."""
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.pending_snapshot = 0
        self.inflight.clear()

    def become_snapshot(self, snapshot_index: int) -> None:
        """The follower needs the snapshot at ``snapshot_index`` (Raft §7)."""
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = snapshot_index
        self.snapshot_elapsed = 0
        self.next = snapshot_index + 1
        self.probe_sent = False
        self.inflight.clear()

    def snapshot_ended(self, success: bool) -> None:
        """The node finished (or gave up) sending the snapshot.

        Either way probe next: after a success right past the snapshot (the
        follower's answer moves on to REPLICATE), after a failure from ``match``,
        paused until the next heartbeat so a failing transfer is not retried in a
        tight loop.
        """
        if self.state is not ProgressState.SNAPSHOT:
            return
        self.become_probe(self.pending_snapshot + 1 if success else self.match + 1, paused=not success)
