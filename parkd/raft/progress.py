"""What a leader knows about one follower's log (etcd-io/raft's ``Progress``).

A follower is in one of two states:

- PROBE: ``next`` is a guess.  The leader sends one AppendEntries and waits for
  the answer (or the next heartbeat) before sending another, moving ``next`` back
  on each rejection using the follower's conflict hint (§5.3 fast back-off).
- REPLICATE: ``next`` is known to be right.  The leader streams entries without
  waiting (pipelining), with at most ``max_inflight`` unacknowledged messages.
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"


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
    )

    def __init__(self, next_index: int, max_inflight: int):
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight: deque[int] = deque()  # last index of each unacknowledged message
        self.max_inflight = max_inflight
        self.recent_active = False  # heard from within this election timeout (§6.2)
        self.read_ack = 0  # highest read round this follower has echoed (§6.4)

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        return len(self.inflight) >= self.max_inflight

    def sent(self, last_index: int | None) -> None:
        """Record an AppendEntries whose last entry is ``last_index`` (None: empty)."""
        if self.state is ProgressState.PROBE:
            self.probe_sent = True
        elif last_index is not None:
            self.next = last_index + 1
            self.inflight.append(last_index)

    def maybe_update(self, match: int) -> bool:
        """A success reply; returns whether it taught us anything new."""
        if match <= self.match:
            return False
        self.match = match
        if self.state is ProgressState.PROBE:
            self.state = ProgressState.REPLICATE
            self.next = match + 1
            self.inflight.clear()
        else:
            self.next = max(self.next, match + 1)
            while self.inflight and self.inflight[0] <= match:
                self.inflight.popleft()
        return True

    def reject(self, hint_next: int) -> None:
        """A rejection: probe again from the hint, never below what is known to match.

        The hint may come from a stale (reordered) reply, so it is only trusted to
        move ``next`` backwards, and never past ``match``.
        """
        self.next = max(self.match + 1, min(hint_next, self.next - 1))
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight.clear()

    def on_heartbeat(self) -> None:
        """A lost probe (or its reply) must not pause PROBE forever: retry each heartbeat."""
        if self.state is ProgressState.PROBE:
            self.probe_sent = False
