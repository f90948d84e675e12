"""RaftCore: the Raft algorithm as a deterministic state machine (no I/O).

Inputs are :meth:`RaftCore.tick`, :meth:`RaftCore.step`, :meth:`RaftCore.propose`
and :meth:`RaftCore.read_index`; everything they produce is collected into a
:class:`Ready` that the driver persists, then sends, then applies, and finally
acknowledges with :meth:`RaftCore.advance` (the shape of etcd-io/raft's RawNode).
Time is counted in ticks and randomness comes from an injected ``random.Random``,
so a run is reproducible from its seed.

Section numbers refer to the Raft paper (§5.x) and Ongaro's dissertation (§3.10
leadership transfer, §6.2 check-quorum, §6.4 ReadIndex, §9.6 pre-vote, §10.2.1
counting the leader's own write only once durable).
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from parkd.raft.log import RaftLog
from parkd.raft.messages import (
    AppendEntries,
    AppendResponse,
    Message,
    Propose,
    ReadIndexRequest,
    ReadIndexResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from parkd.raft.progress import Progress, ProgressState
from parkd.raft.types import Entry, EntryKind, HardState, PersistedState


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """Limits and switches; all durations are in ticks."""

    election_ticks: int = 10  # T: election timeouts are drawn from [T, 2T)
    heartbeat_ticks: int = 1
    max_entries_per_msg: int = 256
    max_bytes_per_msg: int = 1 << 20  # a single larger entry is still sent alone
    max_inflight_msgs: int = 64  # unacknowledged AppendEntries per follower
    pre_vote: bool = True
    check_quorum: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_ticks < self.election_ticks:
            raise ValueError("need 0 < heartbeat_ticks < election_ticks")
        if min(self.max_entries_per_msg, self.max_bytes_per_msg, self.max_inflight_msgs) < 1:
            raise ValueError("message limits must be positive")


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth reporting (never persisted)."""

    role: Role
    leader_id: int | None


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied ``index``.

    ``index`` is 0 when the read failed (leadership was lost first); retry it.
    """

    ctx: int
    index: int


@dataclass(frozen=True, slots=True)
class Ready:
    """Work for the driver, to be done in this order, then ``advance(ready)``.

    1. Persist ``hard_state`` (if not None) and ``entries`` in one transaction:
       storage deletes its entries with index >= ``entries[0].index``, then appends.
    2. Send ``messages`` (only after step 1 is durable).
    3. Apply ``committed_entries`` in order; serve ``read_states`` once applied.
    """

    hard_state: HardState | None
    entries: tuple[Entry, ...]
    messages: tuple[Message, ...]
    committed_entries: tuple[Entry, ...]
    soft_state: SoftState | None  # None when unchanged since the previous Ready
    read_states: tuple[ReadState, ...]


class NotLeader(Exception):
    """This node cannot take the request; ``leader_id`` is where to try (or None)."""

    def __init__(self, leader_id: int | None):
        super().__init__(f"not the leader (leader: {leader_id})")
        self.leader_id = leader_id


@dataclass(slots=True)
class _Read:
    """A ReadIndex request the leader has accepted but not yet confirmed."""

    round: int  # confirmed once a majority echoed a read_ctx >= round
    ctx: int
    index: int
    requester: int


class RaftCore:
    """One Raft peer.  Single-threaded: call it from one reactor thread only."""

    def __init__(
        self,
        node_id: int,
        voters: tuple[int, ...],
        persisted: PersistedState,
        rng: random.Random,
        config: CoreConfig,
        *,
        applied: int = 0,
    ):
        """Restore a peer from storage; ``applied`` is the state machine's position."""
        hs = persisted.hard_state
        self._id = node_id
        self._voters = tuple(sorted(set(voters)))
        self._peers = tuple(v for v in self._voters if v != node_id)
        self._quorum = len(self._voters) // 2 + 1
        self._rng = rng
        self._cfg = config
        self._log = RaftLog(persisted.entries, persisted.snapshot, hs.commit)
        if not persisted.snapshot.index <= applied <= hs.commit:
            raise ValueError(f"applied {applied} outside [snapshot, commit {hs.commit}]")
        self._applied = applied
        self._term = hs.term
        self._vote = hs.vote
        self._role = Role.FOLLOWER
        self._leader: int | None = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._timeout = self._random_timeout()
        self._votes: dict[int, bool] = {}
        self._progress: dict[int, Progress] = {}
        self._dirty: set[int] = set()  # peers to send appends to at the next Ready
        self._must_send = False  # every peer gets a message at the next flush
        self._transferee: int | None = None
        # Reads are confirmed by rounds echoed in AppendEntries.read_ctx; a read takes
        # a fresh round unless no message has carried the current one yet.  Round 0
        # counts as used: every follower "echoes" it by default.
        self._read_round = 0
        self._read_round_used = True
        self._reads: list[_Read] = []
        self._reads_before_commit: list[tuple[int, int]] = []
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._prev_hard = hs
        self._prev_soft = SoftState(Role.FOLLOWER, None)
        self._outstanding: Ready | None = None
        self._handlers = {
            VoteRequest: self._on_vote_request,
            VoteResponse: self._on_vote_response,
            AppendEntries: self._on_append,
            AppendResponse: self._on_append_response,
            TimeoutNow: self._on_timeout_now,
            Propose: self._on_propose,
            ReadIndexRequest: self._on_read_index_request,
            ReadIndexResponse: self._on_read_index_response,
        }

    # -- read-only view -------------------------------------------------------

    @property
    def id(self) -> int:
        return self._id

    @property
    def voters(self) -> tuple[int, ...]:
        return self._voters

    @property
    def term(self) -> int:
        return self._term

    @property
    def vote(self) -> int:
        return self._vote

    @property
    def role(self) -> Role:
        return self._role

    @property
    def leader_id(self) -> int | None:
        return self._leader

    @property
    def commit_index(self) -> int:
        return self._log.committed

    @property
    def applied_index(self) -> int:
        return self._applied

    @property
    def last_index(self) -> int:
        return self._log.last_index

    @property
    def log(self) -> RaftLog:
        """The in-memory log (read it, do not change it)."""
        return self._log

    @property
    def match_indexes(self) -> dict[int, int]:
        """Leader only: the highest index known replicated on each voter, itself included."""
        if self._role is not Role.LEADER:
            return {}
        matches = {peer: pr.match for peer, pr in self._progress.items()}
        matches[self._id] = self._log.stable
        return matches

    @property
    def transferee(self) -> int | None:
        return self._transferee

    # -- inputs ---------------------------------------------------------------

    def tick(self) -> None:
        """One unit of logical time passed."""
        if self._role is Role.LEADER:
            self._tick_leader()
            return
        self._election_elapsed += 1
        if self._election_elapsed >= self._timeout and self._id in self._voters:
            self._campaign(pre_vote=self._cfg.pre_vote)

    def propose(self, data: bytes) -> None:
        """Append ``data`` (leader) or forward it to the leader (follower)."""
        self.propose_batch([data])

    def propose_batch(self, datas: list[bytes]) -> None:
        """Propose several payloads at once (group commit).

        Raises NotLeader when no leader is known, or while this leader is handing
        over to ``transferee`` (whose id it then carries).
        """
        if not datas:
            return
        if self._role is Role.LEADER:
            if self._transferee is not None:
                raise NotLeader(self._transferee)
            self._append(datas, EntryKind.NORMAL)
        elif self._leader is not None:
            self._send(Propose(self._term, self._id, self._leader, tuple(datas)))
        else:
            raise NotLeader(None)

    def read_index(self, ctx: int) -> None:
        """Ask for a linearizable read (§6.4); answered by a ReadState with ``ctx``."""
        if self._role is Role.LEADER:
            self._leader_read(ctx, self._id)
        elif self._leader is not None:
            self._send(ReadIndexRequest(self._term, self._id, self._leader, ctx))
        else:
            raise NotLeader(None)

    def transfer_leadership(self, target: int) -> None:
        """§3.10: bring ``target`` up to date, then tell it to campaign at once.

        Proposals are refused meanwhile; the attempt is abandoned after one
        election timeout.
        """
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader)
        if target not in self._peers:
            raise ValueError(f"{target} is not another voter")
        self._transferee = target
        self._election_elapsed = 0
        if self._progress[target].match == self._log.last_index:
            self._send(TimeoutNow(self._term, self._id, target))
        else:
            self._dirty.add(target)

    def step(self, m: Message) -> None:
        """Handle a message from a peer: terms first (§5.1), then by type and role."""
        handler = self._handlers.get(type(m))
        if handler is None:
            raise TypeError(f"unsupported message {type(m).__name__}")
        if m.term > self._term:
            if not self._accept_higher_term(m):
                return
        elif m.term < self._term:
            if not self._answer_stale(m):
                return
        handler(m)

    # -- output ---------------------------------------------------------------

    def has_ready(self) -> bool:
        """Whether :meth:`ready` has work; False while a Ready awaits advance().

        Builds the appends owed to followers first, so call it once per reactor
        turn: everything proposed in the turn then travels in the same messages.
        """
        if self._outstanding is not None:
            return False
        self._flush_appends()
        hard, soft, log = self._prev_hard, self._prev_soft, self._log
        return bool(
            self._msgs
            or self._read_states
            or log.has_unsent()
            or log.committed > self._applied
            or (self._term, self._vote, log.committed) != (hard.term, hard.vote, hard.commit)
            or (self._role, self._leader) != (soft.role, soft.leader_id)
        )

    def ready(self) -> Ready:
        """Everything to persist, send and apply since the previous Ready."""
        if self._outstanding is not None:
            raise RuntimeError("advance() the previous Ready first")
        self._flush_appends()
        hard, soft = self._hard_state(), self._soft_state()
        rd = Ready(
            hard_state=hard if hard != self._prev_hard else None,
            entries=self._log.take_unsent(),
            messages=tuple(self._msgs),
            committed_entries=self._log.slice(self._applied + 1, self._log.committed + 1),
            soft_state=soft if soft != self._prev_soft else None,
            read_states=tuple(self._read_states),
        )
        self._prev_hard, self._prev_soft = hard, soft
        self._msgs.clear()
        self._read_states.clear()
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """``rd`` was persisted, sent and applied."""
        if rd is not self._outstanding:
            raise RuntimeError("advance() takes the Ready last returned by ready()")
        self._outstanding = None
        if rd.committed_entries:
            self._applied = rd.committed_entries[-1].index
        if rd.entries:
            last = rd.entries[-1]
            self._log.stable_to(last.index, last.term)
            if self._role is Role.LEADER:
                self._maybe_commit()

    def _hard_state(self) -> HardState:
        return HardState(self._term, self._vote, self._log.committed)

    def _soft_state(self) -> SoftState:
        return SoftState(self._role, self._leader)

    def _send(self, m: Message) -> None:
        self._msgs.append(m)

    # -- terms and roles --------------------------------------------------------

    def _accept_higher_term(self, m: Message) -> bool:
        """§5.1: a higher term makes this node a follower, with two exceptions.

        Pre-votes and granted pre-vote replies carry a term nobody holds yet (§9.6).
        A real vote request is ignored while a leader is known to be alive, so a
        node that was cut off cannot depose it (§6.2), unless it is a transfer.
        """
        kind = type(m)
        if kind is VoteRequest:
            if m.pre_vote:
                return True
            if self._cfg.check_quorum and not m.transfer and self._leader_alive():
                return False
        elif kind is VoteResponse and m.pre_vote and m.granted:
            return True
        self._become_follower(m.term, m.src if kind is AppendEntries else None)
        return True

    def _answer_stale(self, m: Message) -> bool:
        """A message from an older term: refuse it so its sender learns our term.

        Proposals and read requests carry no authority, so they are still handled.
        """
        kind = type(m)
        if kind is AppendEntries:
            self._send(AppendResponse(self._term, self._id, m.src, success=False))
        elif kind is VoteRequest:
            self._send(VoteResponse(self._term, self._id, m.src, False, m.pre_vote))
        return kind is Propose or kind is ReadIndexRequest

    def _leader_alive(self) -> bool:
        """Heard from a leader (or am one) within the last election timeout."""
        return self._leader is not None and self._election_elapsed < self._cfg.election_ticks

    def _random_timeout(self) -> int:
        t = self._cfg.election_ticks
        return self._rng.randrange(t, 2 * t)

    def _reset(self, term: int) -> None:
        if self._role is Role.LEADER:
            self._fail_reads()
        if term != self._term:
            self._term = term
            self._vote = 0
        self._leader = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._timeout = self._random_timeout()
        self._votes.clear()
        self._progress.clear()
        self._dirty.clear()
        self._must_send = False
        self._transferee = None

    def _become_follower(self, term: int, leader: int | None) -> None:
        self._reset(term)
        self._role = Role.FOLLOWER
        self._leader = leader

    def _campaign(self, pre_vote: bool, transfer: bool = False) -> None:
        """Start an election (§5.2), or first ask whether one could be won (§9.6).

        A pre-candidate keeps its term and vote; it asks for ``term + 1`` and only
        becomes a real candidate once a majority would grant that.
        """
        if pre_vote:
            self._reset(self._term)
            self._role = Role.PRE_CANDIDATE
            term = self._term + 1
        else:
            self._reset(self._term + 1)
            self._role = Role.CANDIDATE
            self._vote = self._id
            term = self._term
        self._votes[self._id] = True
        if self._tally() is True:
            self._won(pre_vote)
            return
        last_index, last_term = self._log.last_index, self._log.last_term
        for peer in self._peers:
            self._send(VoteRequest(term, self._id, peer, last_index, last_term, pre_vote, transfer))

    def _tally(self) -> bool | None:
        """True once a majority granted, False once a majority refused."""
        granted = sum(self._votes.values())
        if granted >= self._quorum:
            return True
        if len(self._votes) - granted > len(self._voters) - self._quorum:
            return False
        return None

    def _won(self, pre_vote: bool) -> None:
        if pre_vote:
            self._campaign(pre_vote=False)
        else:
            self._become_leader()

    def _become_leader(self) -> None:
        """Take over with optimistic ``next`` for everyone and a no-op entry (§5.4.2)."""
        self._reset(self._term)
        self._role = Role.LEADER
        self._leader = self._id
        next_index = self._log.last_index + 1
        for peer in self._peers:
            self._progress[peer] = Progress(next_index, self._cfg.max_inflight_msgs)
        self._append([b""], EntryKind.NOOP)

    # -- elections ---------------------------------------------------------------

    def _on_vote_request(self, m: VoteRequest) -> None:
        """§5.2/§5.4.1: one vote per term, only for a log at least as up to date.

        A pre-vote (§9.6) changes nothing here; it is refused while a leader is
        alive, so a rejoining node cannot start elections against a healthy one.
        """
        log_ok = self._candidate_log_ok(m)
        if m.pre_vote:
            granted = m.term > self._term and not self._leader_alive() and log_ok
            self._send(
                VoteResponse(m.term if granted else self._term, self._id, m.src, granted, True)
            )
            return
        can_vote = self._vote == m.src or (self._vote == 0 and self._leader is None)
        granted = can_vote and log_ok
        if granted:
            self._vote = m.src
            self._election_elapsed = 0
        self._send(VoteResponse(self._term, self._id, m.src, granted))

    def _candidate_log_ok(self, m: VoteRequest) -> bool:
        return self._log.is_up_to_date(m.last_log_index, m.last_log_term)

    def _on_vote_response(self, m: VoteResponse) -> None:
        if m.pre_vote:
            # Grants name the proposed term, refusals our own; anything else is stale.
            expected_term = self._term + 1 if m.granted else self._term
            if self._role is not Role.PRE_CANDIDATE or m.term != expected_term:
                return
        elif self._role is not Role.CANDIDATE:
            return
        if m.src not in self._voters:
            return
        self._votes.setdefault(m.src, m.granted)
        outcome = self._tally()
        if outcome is True:
            self._won(m.pre_vote)
        elif outcome is False:
            self._become_follower(self._term, None)

    def _on_timeout_now(self, m: TimeoutNow) -> None:
        """§3.10: the leader chose us; campaign now, past pre-vote and leases."""
        if self._id in self._voters and self._role is not Role.LEADER:
            self._campaign(pre_vote=False, transfer=True)

    # -- replication: follower side ------------------------------------------------

    def _on_append(self, m: AppendEntries) -> None:
        """§5.3: accept entries that extend a matching prefix, else give a hint."""
        if self._role is not Role.FOLLOWER or self._leader != m.src:
            self._become_follower(self._term, m.src)
        self._election_elapsed = 0
        log = self._log
        match = log.try_append(m.prev_log_index, m.prev_log_term, m.entries, m.leader_commit)
        if match is not None:
            self._send(
                AppendResponse(self._term, self._id, m.src, True, match, read_ctx=m.read_ctx)
            )
            return
        if m.prev_log_index > log.last_index:
            conflict_index, conflict_term = log.last_index + 1, 0
        else:
            conflict_term = log.term_at(m.prev_log_index)
            conflict_index = log.first_index_of_term(conflict_term, m.prev_log_index)
        self._send(
            AppendResponse(
                self._term,
                self._id,
                m.src,
                False,
                conflict_index=conflict_index,
                conflict_term=conflict_term,
                read_ctx=m.read_ctx,
            )
        )

    # -- replication: leader side ----------------------------------------------------

    def _append(self, datas: list[bytes], kind: EntryKind) -> None:
        index, term = self._log.last_index, self._term
        self._log.append([Entry(index + n, term, kind, d) for n, d in enumerate(datas, 1)])
        self._dirty.update(self._peers)

    def _on_append_response(self, m: AppendResponse) -> None:
        if self._role is not Role.LEADER:
            return
        pr = self._progress.get(m.src)
        if pr is None:
            return
        pr.recent_active = True
        if m.read_ctx > pr.read_ack:
            pr.read_ack = m.read_ctx
            self._confirm_reads()
        if m.success:
            if pr.maybe_update(m.match_index):
                self._maybe_commit()
                if m.src == self._transferee and pr.match == self._log.last_index:
                    self._send(TimeoutNow(self._term, self._id, m.src))
        else:
            pr.reject(self._hint_next(m))
        self._dirty.add(m.src)

    def _hint_next(self, m: AppendResponse) -> int:
        """Fast back-off: skip the follower's whole conflicting term at once."""
        if m.conflict_term:
            last = self._log.last_index_of_term(m.conflict_term)
            if last:
                return last + 1
        return m.conflict_index

    def _maybe_commit(self) -> None:
        """§5.4.2: commit the highest index a majority holds, if it is of this term.

        The leader counts itself only up to what it has persisted (§10.2.1).
        """
        matches = [pr.match for pr in self._progress.values()]
        matches.append(self._log.stable)
        matches.sort(reverse=True)
        index = matches[self._quorum - 1]
        log = self._log
        if index <= log.committed or log.term_at(index) != self._term:
            return
        log.committed = index
        self._must_send = True
        self._dirty.update(self._peers)
        if self._reads_before_commit:
            waiting, self._reads_before_commit = self._reads_before_commit, []
            for ctx, requester in waiting:
                self._register_read(ctx, requester)

    def _flush_appends(self) -> None:
        """Send what peers are missing, batched once per Ready (group commit)."""
        if not self._dirty:
            return
        for peer in self._dirty:
            self._send_appends(peer, self._progress[peer], self._must_send)
        self._dirty.clear()
        self._must_send = False

    def _send_appends(self, peer: int, pr: Progress, must_send: bool) -> None:
        """Stream the entries ``peer`` lacks, as far as its state allows.

        With ``must_send`` (a heartbeat, a new commit index or a new read round is
        due) at least one message goes out, empty if need be.  It is sent at
        ``next - 1``, so a follower that lost earlier messages rejects it, which
        sends the leader back to probing and retransmitting.
        """
        cfg, log = self._cfg, self._log
        while not pr.is_paused():
            entries = log.batch(pr.next, cfg.max_entries_per_msg, cfg.max_bytes_per_msg)
            if not entries and not must_send and pr.state is ProgressState.REPLICATE:
                return
            self._send_append(peer, pr, entries)
            if not entries:
                return
            must_send = False
        if must_send:
            self._send_append(peer, pr, ())

    def _send_append(self, peer: int, pr: Progress, entries: tuple[Entry, ...]) -> None:
        prev = pr.next - 1
        log = self._log
        self._send(
            AppendEntries(
                self._term,
                self._id,
                peer,
                prev,
                log.term_at(prev),
                entries,
                log.committed,
                self._read_round,
            )
        )
        self._read_round_used = True
        pr.sent(entries[-1].index if entries else None)

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self._cfg.election_ticks:
            self._election_elapsed = 0
            if self._cfg.check_quorum and not self._quorum_active():
                self._become_follower(self._term, None)
                return
            self._transferee = None
        if self._heartbeat_elapsed >= self._cfg.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            for pr in self._progress.values():
                pr.on_heartbeat()
            self._must_send = True
            self._dirty.update(self._peers)

    def _quorum_active(self) -> bool:
        """§6.2: did a majority (this leader included) answer in the last timeout?"""
        active = 1
        for pr in self._progress.values():
            active += pr.recent_active
            pr.recent_active = False
        return active >= self._quorum

    # -- proposals and reads ------------------------------------------------------------

    def _on_propose(self, m: Propose) -> None:
        if self._role is Role.LEADER and self._transferee is None:
            self._append(list(m.data), EntryKind.NORMAL)

    def _leader_read(self, ctx: int, requester: int) -> None:
        """§6.4 step 1: wait until this term has committed an entry (the no-op)."""
        if self._log.term_at(self._log.committed) != self._term:
            self._reads_before_commit.append((ctx, requester))
        else:
            self._register_read(ctx, requester)

    def _register_read(self, ctx: int, requester: int) -> None:
        """§6.4 steps 2-3: record the commit index, then confirm with a heartbeat round.

        Reads registered before the same Ready share one round; every
        AppendEntries carries the current round, so ordinary traffic confirms too.
        """
        if self._read_round_used:
            self._read_round += 1
            self._read_round_used = False
        self._must_send = True
        self._dirty.update(self._peers)
        self._reads.append(_Read(self._read_round, ctx, self._log.committed, requester))
        self._confirm_reads()

    def _confirm_reads(self) -> None:
        if not self._reads:
            return
        acks = sorted((pr.read_ack for pr in self._progress.values()), reverse=True)
        acks.insert(0, self._read_round)
        confirmed = acks[self._quorum - 1]
        while self._reads and self._reads[0].round <= confirmed:
            self._answer_read(self._reads.pop(0), ok=True)

    def _answer_read(self, read: _Read, ok: bool) -> None:
        index = read.index if ok else 0
        if read.requester == self._id:
            self._read_states.append(ReadState(read.ctx, index))
        else:
            self._send(ReadIndexResponse(self._term, self._id, read.requester, read.ctx, index))

    def _fail_reads(self) -> None:
        """A leader stepping down answers its pending reads with index 0 (retry)."""
        pending = self._reads + [
            _Read(0, ctx, 0, requester) for ctx, requester in self._reads_before_commit
        ]
        self._reads, self._reads_before_commit = [], []
        for read in pending:
            self._answer_read(read, ok=False)

    def _on_read_index_request(self, m: ReadIndexRequest) -> None:
        if self._role is Role.LEADER:
            self._leader_read(m.ctx, m.src)
        else:
            self._send(ReadIndexResponse(self._term, self._id, m.src, m.ctx, 0))

    def _on_read_index_response(self, m: ReadIndexResponse) -> None:
        if self._role is not Role.LEADER:
            self._read_states.append(ReadState(m.ctx, m.index))
