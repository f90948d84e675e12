"""Raft's safety properties, checked as a simulated cluster runs (paper Figure 3)."""

from __future__ import annotations

from parkd.raft import confchange
from parkd.raft.confchange import ConfChangeOp
from parkd.raft.core import CoreConfig, RaftCore, ReadState, Role
from parkd.raft.messages import Message, TimeoutNow, VoteRequest
from parkd.raft.types import Entry, EntryKind


class SafetyViolation(AssertionError):
    """A Raft safety property does not hold."""


class SafetyChecker:
    """Raft's safety properties (paper Figure 3), checked incrementally.

    - election safety: at most one leader per term, over the whole history and
      across configuration changes;
    - log matching: checked on every persisted entry through a registry of
      (index, term) -> (entry, previous term), which by induction means two logs
      holding the same (index, term) are identical up to it;
    - leader completeness and no lost commits: every entry applied anywhere is in
      the log (or below the snapshot) of the leader of the newest term (checked
      when that leader is first seen and whenever an entry is first applied);
    - state machine safety: every node applies the same entry at each index, in
      order, and an installed snapshot is a longer prefix of that same sequence;
      and, before any apply, every node's log up to its commit index holds those
      same entries (so a node that holds its applies, or replaces them by a
      snapshot, is checked as early as one that applies at once);
    - linearizable reads: a ReadState index covers every entry applied anywhere
      before the read was requested;
    - membership (dissertation §4): a leader never has more than one uncommitted
      CONFIG entry in its log, and a node whose removal has committed never leads.
    """

    def __init__(self) -> None:
        self.leaders: dict[int, int] = {}
        self.applied: list[Entry] = []
        # Node -> the newest leader term when its REMOVE entry was first applied
        # (so committed): it must never lead a later term.
        self.removed: dict[int, int] = {}
        self._registry: dict[tuple[int, int], tuple[Entry, int]] = {}
        self._read_floor: dict[tuple[int, int], int] = {}
        # The leader of the highest term seen; stale leaders of older terms may
        # legitimately miss newer entries, this one may not.
        self._newest: RaftCore | None = None
        self._newest_term = 0
        self._committed: dict[int, Entry] = {}  # index -> the entry a node first committed there
        self._checked: dict[int, int] = {}  # node -> its commit index when last checked

    def saved(self, node: int, new, prev_term: int | None) -> None:
        """``new`` was just written to ``node``'s log after an entry of ``prev_term``."""
        registry = self._registry
        for entry in new:
            known = registry.setdefault((entry.index, entry.term), (entry, prev_term))
            if known[1] != prev_term or (known[0] is not entry and known[0] != entry):
                raise SafetyViolation(
                    f"log matching: node {node} has {entry} after term {prev_term}, "
                    f"another log has {known[0]} after term {known[1]}"
                )
            prev_term = entry.term

    def applying(self, node: int, done: list[Entry], entry: Entry) -> None:
        """``node``, having applied ``done``, applies ``entry`` next."""
        i = entry.index
        if i != len(done) + 1:
            raise SafetyViolation(f"node {node} applied index {i} after {len(done)}")
        if i > len(self.applied):
            self.applied.append(entry)
            newest = self._newest
            if (
                newest is not None
                and i >= newest.log.first_index - 1
                and newest.log.term_at(i) != entry.term
            ):
                raise SafetyViolation(
                    f"leader completeness: {entry} applied, not in the log of "
                    f"leader {newest.id} of term {newest.term}"
                )
            if entry.kind is EntryKind.CONFIG:
                change = confchange.decode(entry.data)
                if change.op is ConfChangeOp.REMOVE:
                    self.removed.setdefault(change.node_id, self._newest_term)
        elif self.applied[i - 1] is not entry and self.applied[i - 1] != entry:
            raise SafetyViolation(
                f"state machine safety: node {node} applied {entry}, "
                f"another node applied {self.applied[i - 1]}"
            )

    def check_committed(self, cores: list[RaftCore]) -> None:
        """Each node's log up to its commit index holds the entries committed there anywhere."""
        committed, applied = self._committed, self.applied
        for core in cores:
            start = max(self._checked.get(core.id, 0), core.log.first_index - 1) + 1
            for entry in core.log.slice(start, core.commit_index + 1):
                i = entry.index
                known = committed.setdefault(i, applied[i - 1] if i <= len(applied) else entry)
                if known is not entry and known != entry:
                    raise SafetyViolation(
                        f"state machine safety: node {core.id} committed {entry}, another node committed {known}"
                    )
            self._checked[core.id] = core.commit_index

    def installing(self, node: int, done: list[Entry], data: tuple[Entry, ...]) -> None:
        """``node``, having applied ``done``, replaces its state by snapshot ``data``."""
        n = len(data)
        if n <= len(done) or tuple(done) != data[: len(done)]:
            raise SafetyViolation(
                f"node {node} installed a snapshot at {n} over its state at {len(done)}"
            )
        if n > len(self.applied) or data != tuple(self.applied[:n]):
            raise SafetyViolation(
                f"state machine safety: node {node} installed a divergent snapshot"
            )

    def check_leaders(self, cores: list[RaftCore]) -> None:
        for core in cores:
            if core.role is not Role.LEADER:
                continue
            known = self.leaders.setdefault(core.term, core.id)
            if known != core.id:
                raise SafetyViolation(
                    f"election safety: {known} and {core.id} both lead term {core.term}"
                )
            if core.term > self._newest_term:
                self._newest, self._newest_term = core, core.term
                self.check_complete(core)
                self.check_one_pending(core)
            if core.term > self.removed.get(core.id, core.term):
                raise SafetyViolation(f"removed node {core.id} leads term {core.term}")

    def check_complete(self, core: RaftCore) -> None:
        """Leader completeness: ``core``'s log holds everything applied anywhere
        (entries below its log's start are in its snapshot, checked when made)."""
        n = len(self.applied)
        lo = core.log.first_index
        if core.last_index >= n and core.log.slice(lo, n + 1) == tuple(self.applied[lo - 1 :]):
            return
        for i in range(max(lo - 1, 1), n + 1):
            entry = self.applied[i - 1]
            if core.log.term_at(i) != entry.term:
                raise SafetyViolation(
                    f"leader completeness: leader {core.id} of term {core.term} lacks "
                    f"applied {entry} (has term {core.log.term_at(i)})"
                )

    def check_one_pending(self, core: RaftCore) -> None:
        """§4.1: a leader's log holds at most one uncommitted CONFIG entry."""
        log = core.log
        pending = [
            e.index
            for e in log.slice(log.committed + 1, log.last_index + 1)
            if e.kind is EntryKind.CONFIG
        ]
        if len(pending) > 1:
            raise SafetyViolation(
                f"leader {core.id} of term {core.term} has configuration changes "
                f"pending at {pending}"
            )

    def removed_sent(
        self, core: RaftCore, m: Message, before: tuple, held_term: int, config: CoreConfig
    ) -> None:
        """§4.2.3: a message from a removed node raised the term of ``core``, a
        member: not past ``held_term`` (the highest term the other members hold
        or the removed node held when its removal committed), i.e. a removed
        node brings no new term into the cluster.

        ``before`` is (role, term, heard from a leader within a timeout) of the
        addressee before the message.  Pre-vote keeps a removed node from raising
        terms at all; without it, the leader lease (check-quorum) still protects
        a live leader and its followers.  A TimeoutNow from a leader removing
        itself is a handover, and a transfer campaign was asked for by a leader
        (before the removal: TimeoutNow can be delayed), not a disruption.
        """
        role, term, leader_alive = before
        kind = type(m)
        if kind is TimeoutNow or (kind is VoteRequest and m.transfer) or core.term <= held_term:
            return
        if config.pre_vote or (
            config.check_quorum and (role is Role.LEADER or leader_alive)
        ):
            raise SafetyViolation(
                f"removed node {m.src} raised the term of {core.id} ({role.value}) "
                f"from {term} to {core.term} with {m}"
            )

    def read_requested(self, node: int, ctx: int) -> None:
        self._read_floor[node, ctx] = len(self.applied)

    def read_served(self, node: int, rs: ReadState) -> None:
        floor = self._read_floor.pop((node, rs.ctx), 0)
        if rs.index and rs.index < floor:
            raise SafetyViolation(
                f"stale read: node {node} read at {rs.index}, {floor} was applied before"
            )
