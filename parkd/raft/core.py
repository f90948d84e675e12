"""RaftCore: the Raft algorithm as a deterministic state machine (no I/O).

Inputs are :meth:`RaftCore.tick`, :meth:`RaftCore.step` (peer messages, and the
node's local events: a broken connection, a snapshot sent or given up, a snapshot
taken), :meth:`RaftCore.propose`, :meth:`RaftCore.propose_conf_change`,
:meth:`RaftCore.read_index` and :meth:`RaftCore.transfer_leadership`; everything
they produce is collected into a :class:`Ready` that the driver persists, then
sends, then applies, and finally acknowledges with :meth:`RaftCore.advance` (the
shape of etcd-io/raft's RawNode).  In the daemon only ``parkd/node/driver.py``
calls them.
Time is counted in ticks and randomness comes from an injected ``random.Random``,
so a run is reproducible from its seed.

Section numbers refer to the Raft paper (§5.x, §7 snapshots) and Ongaro's
dissertation (§3.10 leadership transfer, §4 membership changes, §6.2 check-quorum,
§6.4 ReadIndex, §9.6 pre-vote, §10.2.1 counting the leader's own write only once
durable).

Division of labour with the node (``parkd/node``):

- Snapshots: the node owns snapshot *data*; the core only knows positions.  After
  applying, the node may write a snapshot at or below ``applied_index``
  (membership from :meth:`RaftCore.config_at`, term from ``core.log.term_at``) and
  step :class:`SnapshotTaken`; the core forgets its log up to the margin and the
  next Ready's ``compaction`` tells storage to do the same.  A leader that needs to
  send one emits an ``InstallSnapshot`` with empty data ("send the snapshot at
  last_index"); the node's transport streams its latest snapshot file in chunks
  and steps :class:`SnapshotStatus` when delivered or given up.  On the receiving
  side the transport steps the arrived snapshot as an ``InstallSnapshot`` with
  ``done``; the core answers the leader itself or restarts its log after it and
  asks the node, in ``Ready.snapshot``, to install it durably.
- Membership: :meth:`RaftCore.propose_conf_change` on the leader appends a CONFIG
  entry (``parkd.raft.confchange``); a configuration takes effect on append
  (``Ready.membership`` reports it) and CONFIG entries also reach the node in
  ``committed_entries``.  Learners are promoted by the leader itself.
- Leadership transfer: :meth:`RaftCore.transfer_leadership`; the outcome comes
  back once in ``Ready.transfers``.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from operator import attrgetter

from parkd.raft import confchange
from parkd.raft.confchange import ConfChange, ConfChangeOp
from parkd.raft.log import RaftLog
from parkd.raft.messages import (
    AppendEntries,
    AppendResponse,
    LOCAL_EVENTS,
    InstallSnapshot,
    LocalEvent,
    Message,
    PeerUnreachable,
    Propose,
    ReadIndexRequest,
    ReadIndexResponse,
    SnapshotResponse,
    SnapshotStatus,
    SnapshotTaken,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
    append_problem,
)
from parkd.raft.progress import Progress, ProgressState
from parkd.raft.readonly import PendingRead, ReadOnly
from parkd.raft.types import Entry, EntryKind, HardState, Membership, PersistedState, SnapshotMeta


# The highest term a node takes from a message.  Nothing legitimate comes near it;
# a node must persist a term it adopts (SQLite stores signed 64-bit integers) and
# count up from it when it campaigns (the wire carries unsigned 64-bit integers).
MAX_TERM = 1 << 62


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
    # Committed entries handed out for applying in one Ready (like etcd's
    # MaxCommittedSizePerReady): the rest come in the next Ready, so the node
    # can do other work between two bounded batches of applying.
    max_committed_per_ready: int = 256
    pre_vote: bool = True
    check_quorum: bool = True
    # A learner is promoted to voter once its log is within this many entries of
    # the leader's (dissertation §4.2.1); False leaves promotion to the operator.
    auto_promote: bool = True
    promote_lag: int = 16
    # A snapshot transfer the node never reports on is given up after this many
    # ticks (None: five election timeouts); the follower is then probed again.
    snapshot_timeout_ticks: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_ticks < self.election_ticks:
            raise ValueError("need 0 < heartbeat_ticks < election_ticks")
        limits = (self.max_entries_per_msg, self.max_bytes_per_msg, self.max_inflight_msgs, self.max_committed_per_ready)
        if min(limits) < 1:
            raise ValueError("message and apply limits must be positive")
        if self.promote_lag < 0:
            raise ValueError("promote_lag must not be negative")
        if self.snapshot_timeout_ticks is not None and self.snapshot_timeout_ticks < 1:
            raise ValueError("snapshot_timeout_ticks must be positive")

    @property
    def snapshot_timeout(self) -> int:
        if self.snapshot_timeout_ticks is None:
            return 5 * self.election_ticks
        return self.snapshot_timeout_ticks


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
class TransferResult:
    """How a leadership transfer this node started ended (dissertation §3.10).

    ``succeeded``: this leader stepped down for ``target``'s election.  Otherwise
    the attempt was abandoned: ``cancelled`` when the operator asked for it
    (``transfer_leadership(<leader's own id>)``), else an election timeout
    passed, leadership was lost to someone else, or another transfer replaced it.
    """

    target: int
    succeeded: bool
    cancelled: bool = False


@dataclass(frozen=True, slots=True)
class Ready:
    """Work for the driver, to be done in this order, then ``advance(ready)``.

    0. ``early_messages`` (a leader's appends) may be sent at once, before the
       persist, so followers write the entries while the leader does
       (dissertation §10.2.1).  The leader counts itself toward a commit only up
       to what it has persisted; the core puts messages here only when its term
       and vote are already durable and the configuration did not change.
    1. Install ``snapshot`` (if set) durably: the state machine's and the Raft
       storage's halves in one transaction (§7).  The core already restarted its
       log after it.
    2. Persist ``hard_state`` (if not None) and ``entries`` in one transaction:
       storage deletes its entries with index >= ``entries[0].index``, then
       appends; with ``must_sync`` the transaction is fsynced (new entries, term
       or vote).  ``hard_state`` is None when only the commit index moved: it is
       volatile state (Figure 2), relearnt from the leader after a restart (and
       at least what the state machine applied), so it is written only along
       with entries, term or vote, never in a transaction of its own.  Then record
       ``compaction`` (drop entries up to ``upto``, remember the snapshot).
    3. Send ``messages``, only now that steps 1-2 are durable.  When
       ``membership`` is set, connect to new members first: the configuration
       already took effect (CONFIG entries in ``entries`` carry the new
       members' addresses).
    4. Apply ``committed_entries`` in order (at most ``max_committed_per_ready``:
       the rest come in the following Readies; a follower may hold them for a
       later Ready, ``hold_applies``); serve ``read_states`` once their index
       is applied.
    """

    hard_state: HardState | None
    entries: tuple[Entry, ...]
    messages: tuple[Message, ...]
    committed_entries: tuple[Entry, ...]
    soft_state: SoftState | None  # None when unchanged since the previous Ready
    read_states: tuple[ReadState, ...]
    membership: Membership | None = None  # the configuration now in effect, if it changed
    transfers: tuple[TransferResult, ...] = ()  # leadership transfers that ended
    early_messages: tuple[Message, ...] = ()  # may leave before the persist (step 0)
    must_sync: bool = False  # the persist of step 2 must be fsynced
    snapshot: SnapshotMeta | None = None  # a received snapshot to install (step 1)
    compaction: SnapshotTaken | None = None  # a snapshot the node took: compact storage (step 2)


class NotLeader(Exception):
    """This node cannot take the request; ``leader_id`` is where to try (or None)."""

    def __init__(self, leader_id: int | None):
        super().__init__(f"not the leader (leader: {leader_id})")
        self.leader_id = leader_id


class ConfChangeRefused(Exception):
    """The leader refuses a membership change; ``reason`` says why (for parkctl)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


_LOCAL = frozenset(LOCAL_EVENTS)

# Messages that carry no authority: a higher term in one of these from a node
# outside the configuration is ignored, so a removed server cannot depose the
# leader with late replies (dissertation §4.2.3).
_NO_AUTHORITY = frozenset(
    {AppendResponse, VoteResponse, SnapshotResponse, Propose, ReadIndexRequest, ReadIndexResponse}
)


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
        """Restore a peer from storage; ``applied`` is the state machine's position.

        Membership: the snapshot's configuration if it records one, else
        ``voters`` (the start-up file; empty for a node that joins), then the
        latest CONFIG entry of the log on top, committed or not (§4.1).  A node
        that is not a voter in it never campaigns.
        """
        hs = persisted.hard_state
        snap = persisted.snapshot
        self._id = node_id
        self._rng = rng
        self._cfg = config
        # The stored commit index may lag: a Ready that moves only it writes nothing
        # (see Ready), and what the state machine applied was committed (§5.3).
        if applied < snap.index:
            raise ValueError(f"applied {applied} below the snapshot at {snap.index}")
        self._log = RaftLog(persisted.entries, snap, max(hs.commit, applied))
        self._applied = applied
        self._snapshot = snap
        if snap.voters:
            base = Membership(tuple(snap.voters), tuple(snap.learners), snap.index)
        else:
            base = Membership(tuple(sorted(set(voters))), (), snap.index)
        # The configuration at the snapshot, then one per CONFIG entry in the log.
        self._configs: list[Membership] = [base]
        for entry in persisted.entries:
            if entry.kind is EntryKind.CONFIG and entry.index > base.index:
                self._configs.append(_membership_of(entry))
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
        # Followers that forwarded entries, by the last of them: told of the commit
        # index at once when it reaches that entry (see _maybe_commit).
        self._forwarded: dict[int, int] = {}
        self._tell_commit: set[int] = set()  # peers that get a message at the next flush
        self._transferee: int | None = None
        self._transfer_elapsed = 0
        self._transfer_handed_over = False
        self._transfer_results: list[TransferResult] = []
        self._reads = ReadOnly()  # pending reads, confirmed by rounds echoed in AppendEntries.read_ctx
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        # Proposals for the leader (of the term) in _forward_to, sent in one Propose per Ready.
        self._forwards: list[bytes] = []
        self._forward_to: tuple[int, int] = (0, 0)
        # A received snapshot the log was restarted after, for the next Ready; then
        # the one that Ready is installing, until advance().
        self._pending_snapshot: SnapshotMeta | None = None
        self._installing: SnapshotMeta | None = None
        self._compaction: SnapshotTaken | None = None
        self._set_membership(self._configs[-1])
        self._prev_hard = hs
        self._prev_soft = SoftState(Role.FOLLOWER, None)
        self._prev_membership = self._membership
        self._outstanding: Ready | None = None
        self._handlers = {
            VoteRequest: self._on_vote_request,
            VoteResponse: self._on_vote_response,
            AppendEntries: self._on_append,
            AppendResponse: self._on_append_response,
            InstallSnapshot: self._on_install_snapshot,
            SnapshotResponse: self._on_snapshot_response,
            TimeoutNow: self._on_timeout_now,
            Propose: self._on_propose,
            ReadIndexRequest: self._on_read_index_request,
            ReadIndexResponse: self._on_read_index_response,
            PeerUnreachable: self._on_peer_unreachable,
            SnapshotStatus: self._on_snapshot_status,
            SnapshotTaken: self._on_snapshot_taken,
        }

    # -- read-only view -------------------------------------------------------

    @property
    def id(self) -> int:
        return self._id

    @property
    def voters(self) -> tuple[int, ...]:
        """Voters of the configuration in effect (the latest in the log, §4.1)."""
        return self._membership.voters

    @property
    def learners(self) -> tuple[int, ...]:
        """Non-voting members catching up (§4.2.1)."""
        return self._membership.learners

    @property
    def membership(self) -> Membership:
        """The configuration in effect, with the index of the entry that set it."""
        return self._membership

    @property
    def pending_conf_change(self) -> int:
        """Index of a CONFIG entry appended but not yet committed, else 0."""
        index = self._membership.index
        return index if index > self._log.committed else 0

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
    def snapshot(self) -> SnapshotMeta:
        """The latest snapshot this node has (taken, installed or loaded); index 0: none."""
        return self._snapshot

    @property
    def match_indexes(self) -> dict[int, int]:
        """Leader only: the highest index known replicated on each member, itself included."""
        if self._role is not Role.LEADER:
            return {}
        matches = {peer: pr.match for peer, pr in self._progress.items()}
        matches[self._id] = self._log.stable
        return matches

    @property
    def progress(self) -> dict[int, Progress]:
        """Leader only: replication state per peer (read it, do not change it)."""
        return self._progress

    @property
    def transferee(self) -> int | None:
        return self._transferee

    def config_at(self, index: int) -> Membership:
        """The configuration in effect at ``index`` (for a snapshot taken there).

        Known from the latest snapshot on; ``index`` must not be past the log.
        """
        if not self._configs[0].index <= index <= self._log.last_index:
            raise ValueError(
                f"no configuration known at {index} "
                f"(known: {self._configs[0].index}..{self._log.last_index})"
            )
        for config in reversed(self._configs):
            if config.index <= index:
                return config
        raise AssertionError("unreachable: the first configuration starts the range")

    # -- inputs ---------------------------------------------------------------

    def tick(self) -> None:
        """One unit of logical time passed."""
        if self._role is Role.LEADER:
            self._tick_leader()
            return
        self._election_elapsed += 1
        if self._election_elapsed >= self._timeout and self._is_voter:
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
            if self._forward_to != (self._term, self._leader):
                self._flush_forwards()
                self._forward_to = (self._term, self._leader)
            self._forwards.extend(datas)  # one Propose per Ready: see _flush_forwards
        else:
            raise NotLeader(None)

    def propose_conf_change(self, change: ConfChange) -> int:
        """Append a single-server membership change (dissertation §4.1-§4.3).

        Leader only (NotLeader otherwise, also during a transfer: changes are not
        forwarded).  Returns the index of the CONFIG entry; the change is done
        when that index commits.  ConfChangeRefused when another change is still
        pending (one at a time, §4.1), when this leader has not committed an
        entry of its term yet (§4.1, the 2015 single-server fix), and when the
        change makes no sense: adding a member, promoting a non-learner, removing
        an unknown node or the last voter.
        """
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader)
        if self._transferee is not None:
            raise NotLeader(self._transferee)
        reason = self._conf_change_refusal(change)
        if reason:
            raise ConfChangeRefused(reason)
        return self._append_conf_change(change)

    def force_new_configuration(self) -> int:
        """Disaster recovery only (``--force-new-cluster``): make this node the only voter.

        Not a membership change of dissertation §4: the old configuration never
        agreed to it, so §4.1's argument (each configuration's majorities overlap the
        previous one's) does not hold.  It is correct only when the other members
        are gone for good: an old majority that came back could elect a leader of
        the old configuration and commit other entries at the same indexes (the node
        refuses their data dirs at the raft port).  Entries in this node's log that
        it never saw committed become committed: this node alone decides now.

        At start-up, before any message: the node takes a new term for itself
        (voting for itself), appends a CONFIG entry ``FORCE`` {voters: (self,)} at
        that term (it survives restarts, like any entry), and campaigns at once:
        as the only voter it wins (§5.2), and its no-op of the next term commits
        everything before it (§5.4.2).  Returns the CONFIG entry's index.
        """
        self._become_follower(self._term + 1, None)
        self._vote = self._id
        index = self._append_conf_change(ConfChange(ConfChangeOp.FORCE, self._id))
        self._campaign(pre_vote=False)
        return index

    def read_index(self, ctx: int) -> None:
        """Ask for a linearizable read (§6.4); answered by a ReadState with ``ctx``."""
        if self._role is Role.LEADER:
            self._leader_read(ctx, self._id)
        elif self._leader is not None:
            self._send(ReadIndexRequest(self._term, self._id, self._leader, ctx))
        else:
            raise NotLeader(None)

    def transfer_leadership(self, target: int | None = None) -> int:
        """§3.10: bring a voter up to date, then tell it to campaign at once.

        Returns the target, or this leader's own id when leadership stays here.
        Without ``target``: the pending transfer's target, else the most
        up-to-date other voter.  ValueError when ``target`` is no other voter.

        The target is sent to at once (in the next Ready): TimeoutNow if its log
        matches ours, else appends, even while its replication is paused (as a
        heartbeat would).  Proposals are refused meanwhile (NotLeader(target)).
        The attempt is abandoned one election timeout after it first started:
        asking again for the same target sends to it again but does not extend
        that.  Another target replaces it (reported abandoned; the new one gets
        its own timeout).

        ``target`` = this leader's id cancels a pending transfer, reported as
        ``TransferResult(old_target, succeeded=False, cancelled=True)``; with none
        pending it changes nothing and reports nothing.  A TimeoutNow already
        sent cannot be recalled: the old target may still campaign, and then
        wins as any candidate would.

        The outcome comes back once in ``Ready.transfers``.
        """
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader)
        if target == self._id:
            if self._transferee is not None:
                self._end_transfer(cancelled=True)
            return self._id
        if target is None:
            target = self._transferee
        if target is None:
            if not self._voter_peers:
                raise ValueError("no other voter to hand leadership to")
            target = max(self._voter_peers, key=lambda p: (self._progress[p].match, -p))
        elif target not in self._voter_peers:
            raise ValueError(f"{target} is not another voter")
        if self._transferee != target:
            if self._transferee is not None:
                self._end_transfer()
            self._transferee = target
            self._transfer_elapsed = 0
            self._transfer_handed_over = False
        self._send_to_transferee()
        return target

    def _send_to_transferee(self) -> None:
        """§3.10: TimeoutNow to a caught-up target, else what it lacks, now."""
        target = self._transferee
        pr = self._progress[target]
        if pr.match == self._log.last_index:
            self._send(TimeoutNow(self._term, self._id, target))
        else:
            pr.on_heartbeat()  # a probe already sent may go again
            self._send_appends(target, pr, must_send=True)

    def step(self, m: Message | LocalEvent) -> None:
        """Handle a message from a peer: terms first (§5.1), then by type and role.

        The node's own events (:data:`parkd.raft.messages.LOCAL_EVENTS`) carry no
        term and go straight to their handler.  What no correct peer sends is
        dropped unread: a sender id below 1 (0 means "no vote" in the hard state,
        so a vote for it would not count, §5.2), a term beyond :data:`MAX_TERM`,
        and a message addressed to another node.
        """
        handler = self._handlers.get(type(m))
        if handler is None:
            raise TypeError(f"unsupported message {type(m).__name__}")
        if type(m) in _LOCAL:
            handler(m)
            return
        if m.src < 1 or m.term > MAX_TERM or m.dst != self._id:
            return
        if m.term > self._term:
            if not self._accept_higher_term(m):
                return
        elif m.term < self._term:
            if not self._answer_stale(m):
                return
        handler(m)

    # -- local events ----------------------------------------------------------------

    def _on_peer_unreachable(self, m: PeerUnreachable) -> None:
        """The node's connection to ``m.peer`` broke: a hint, possibly wrong or late.

        When the peer is the leader this follower follows, the follower stops
        counting on it: its lease ends here (so another node's pre-vote is
        granted) and the follower campaigns within a few ticks rather than a
        whole election timeout.  A leader killed outright is noticed at once this
        way (the operating system closes its sockets), which is most of the
        failover time otherwise.  Safety never depends on it, and a wrong hint is
        harmless: the campaign starts with a pre-vote (§9.6), which followers
        still hearing from the leader refuse, so no term is disrupted.

        The survivors, who all lose the connection at the same moment, take
        turns instead of drawing a random delay (§9.3: split votes come from
        campaigns that start together): the one with the lowest id campaigns at
        its next tick, the next one tick later, and so on (at most half the
        timeout).  The first usually wins before the second starts; if its
        log is behind (§5.4.1) the second wins one tick later.  A random delay
        in one to three ticks put a whole tick or two into most failovers.
        """
        if self._role is not Role.FOLLOWER or m.peer != self._leader or not self._is_voter:
            return
        self._leader = None
        survivors = sorted(v for v in self._membership.voters if v != m.peer)
        turn = survivors.index(self._id) + 1 if self._id in survivors else 1
        soon = min(turn, max(2, self._cfg.election_ticks // 2))
        self._election_elapsed = max(self._election_elapsed, self._timeout - soon)

    def _on_snapshot_status(self, m: SnapshotStatus) -> None:
        """Leader: the node delivered (or gave up sending) its snapshot to ``m.peer`` (§7).

        After a delivery the leader probes right after the snapshot; after a
        failure it probes from the follower's match at the next heartbeat, which
        asks for a snapshot again if still needed.
        """
        if self._role is not Role.LEADER:
            return
        pr = self._progress.get(m.peer)
        if pr is None or pr.state is not ProgressState.SNAPSHOT:
            return
        pr.snapshot_ended(m.success)
        self._dirty.add(m.peer)

    def _on_snapshot_taken(self, m: SnapshotTaken) -> None:
        """The node wrote a snapshot: forget the log up to ``m.upto`` (§7).

        Ignored (the node sees ``snapshot`` unchanged and drops its file) when it
        is no longer usable: not newer than the snapshot this core has (one was
        installed meanwhile), or its term or membership is not the log's at its
        index.  Storage learns it in the next Ready's ``compaction``.
        """
        meta, upto = m.meta, m.upto
        index = meta.index
        if not self._snapshot.index < index <= self._applied or upto > index:
            return
        if self._log.term_at(index) != meta.term:
            return
        config = self.config_at(index)
        if (config.voters, config.learners) != (tuple(meta.voters), tuple(meta.learners)):
            return
        self._snapshot = meta
        later = [c for c in self._configs if c.index > index]
        self._configs = [Membership(config.voters, config.learners, index), *later]
        self._log.compact(upto)
        self._compaction = m

    def _answer_leader(self, match: int) -> None:
        if self._leader is not None and self._leader != self._id:
            self._send(AppendResponse(self._term, self._id, self._leader, True, match))

    # -- output ---------------------------------------------------------------

    def has_ready(self, hold_applies: bool = False) -> bool:
        """Whether :meth:`ready` has work; False while a Ready awaits advance().

        Builds the appends owed to followers first, so call it once per reactor
        turn: everything proposed in the turn then travels in the same messages.
        ``hold_applies``: see :meth:`ready` (entries it would hold are no work).
        """
        if self._outstanding is not None:
            return False
        self._flush_appends()
        self._flush_forwards()
        hard, soft, log = self._prev_hard, self._prev_soft, self._log
        # A commit index that moved alone is no work: it is applied or sent as such.
        return bool(
            self._msgs
            or self._compaction is not None
            or self._read_states
            or log.has_unsent()
            or (log.committed > self._applied and not self._holds_applies(hold_applies, self._applied))
            or (self._term, self._vote) != (hard.term, hard.vote)
            or (self._role, self._leader) != (soft.role, soft.leader_id)
            or self._membership is not self._prev_membership
            or self._transfer_results
        )

    def ready(self, hold_applies: bool = False) -> Ready:
        """Everything to persist, send and apply since the previous Ready.

        ``hold_applies``: a follower leaves its committed entries for a later
        Ready (see :meth:`_holds_applies`); a leader ignores it.
        """
        if self._outstanding is not None:
            raise RuntimeError("advance() the previous Ready first")
        self._flush_appends()
        self._flush_forwards()
        hard, soft = self._hard_state(), self._soft_state()
        membership = self._membership
        messages, early = tuple(self._msgs), ()
        durable = (hard.term, hard.vote) == (self._prev_hard.term, self._prev_hard.vote)
        # With a new configuration, the node connects to new members first (step 3).
        if self._role is Role.LEADER and durable and membership is self._prev_membership:
            early = tuple(m for m in messages if type(m) is AppendEntries)
            if early:
                messages = tuple(m for m in messages if type(m) is not AppendEntries)
        entries = self._log.take_unsent()
        # The commit index alone is volatile (Figure 2): it is written only along
        # with entries, term or vote, at no cost of its own (step 2 of Ready).
        if hard == self._prev_hard or (durable and not entries):
            hard_state = None
        else:
            hard_state, self._prev_hard = hard, hard
        snapshot, self._pending_snapshot = self._pending_snapshot, None
        applied = snapshot.index if snapshot is not None else self._applied
        if self._holds_applies(hold_applies, applied):
            upto = applied
        else:
            upto = min(self._log.committed, applied + self._cfg.max_committed_per_ready)
        rd = Ready(
            hard_state=hard_state,
            entries=entries,
            messages=messages,
            committed_entries=self._log.slice(applied + 1, upto + 1),
            soft_state=soft if soft != self._prev_soft else None,
            read_states=tuple(self._read_states),
            membership=membership if membership is not self._prev_membership else None,
            transfers=tuple(self._transfer_results),
            early_messages=early,
            must_sync=bool(entries) or not durable,
            snapshot=snapshot,
            compaction=self._compaction,
        )
        self._prev_soft = soft
        self._prev_membership = membership
        self._transfer_results.clear()
        self._installing = snapshot
        self._compaction = None
        self._msgs.clear()
        self._read_states.clear()
        self._outstanding = rd
        return rd

    def _holds_applies(self, hold: bool, applied: int) -> bool:
        """Whether committed entries wait for a later Ready (the caller's ``hold_applies``).

        Raft sets no time for applying (§5.3: once a follower learns that an entry
        is committed it applies it, in log order; Figure 2's lastApplied may trail
        commitIndex): a follower whose state no one is waiting on may apply in
        bigger, fewer batches.  Never on a leader (its clients wait for the
        result), never with read states in the Ready (they are served once applied,
        step 4 of :class:`Ready`), and never for a full batch
        (``max_committed_per_ready``), so a follower catching up is not slowed.
        """
        return (
            hold
            and self._role is not Role.LEADER
            and not self._read_states
            and self._log.committed - applied < self._cfg.max_committed_per_ready
        )

    def advance(self, rd: Ready) -> None:
        """``rd`` was persisted, sent and applied."""
        if rd is not self._outstanding:
            raise RuntimeError("advance() takes the Ready last returned by ready()")
        self._outstanding = None
        if rd.snapshot is not None:
            self._applied = max(self._applied, rd.snapshot.index)
            self._installing = None
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

    # -- membership (dissertation §4) ---------------------------------------------

    def _set_membership(self, membership: Membership) -> None:
        """Make ``membership`` the configuration in effect (on append, §4.1)."""
        voters = membership.voters
        leading = self._role is Role.LEADER
        joined = frozenset(voters) - self._voter_set - {self._id} if leading else frozenset()
        self._membership = membership
        self._voter_set = frozenset(voters)
        self._members = frozenset(voters) | frozenset(membership.learners)
        self._is_voter = self._id in self._voter_set
        self._voter_peers = tuple(v for v in voters if v != self._id)
        self._quorum = len(voters) // 2 + 1
        if leading:
            self._sync_progress(joined)

    def _sync_progress(self, new_voters: frozenset[int] = frozenset()) -> None:
        """Leader: track every member; forget non-members once that is committed.

        A member being removed keeps its progress until the change commits, so it
        hears of the commit and its node can shut down.  ``new_voters`` start the
        check-quorum window as active (§6.2): they could not answer as voters
        in the part of it that is over.
        """
        next_index = self._log.last_index + 1
        for peer in self._members:
            if peer != self._id and peer not in self._progress:
                self._progress[peer] = Progress(next_index, self._cfg.max_inflight_msgs)
                self._dirty.add(peer)
        for peer in new_voters:
            self._progress[peer].recent_active = True
        if self._membership.index <= self._log.committed:
            for peer in [p for p in self._progress if p not in self._members]:
                self._send_append(peer, self._progress.pop(peer), ())

    def _log_rewritten(self, at: int, entries: tuple[Entry, ...]) -> None:
        """Entries from ``at`` on were (re)written: undo and redo configurations there."""
        configs = self._configs
        if configs[-1].index < at and EntryKind.CONFIG not in map(_kind_of, entries):
            return  # the common case, checked at C speed
        changed = False
        while configs[-1].index >= at:  # the first one is at or below the commit index
            configs.pop()
            changed = True
        for entry in entries:
            if entry.kind is EntryKind.CONFIG and entry.index >= at:
                configs.append(_membership_of(entry))
                changed = True
        if changed:
            self._set_membership(configs[-1])

    def _conf_change_refusal(self, change: ConfChange) -> str:
        """Why the leader cannot append ``change`` now ("" if it can)."""
        log = self._log
        pending = self.pending_conf_change
        if pending:
            return f"the membership change at index {pending} is not committed yet"
        if log.term_at(log.committed) != self._term:
            return "this leader has not committed an entry of its term yet"
        node, current = change.node_id, self._membership
        if not 0 < node <= confchange.MAX_NODE_ID:
            return f"invalid node id {node}"
        if change.op is ConfChangeOp.ADD_LEARNER:
            if node in current:
                return f"node {node} is already a member"
        elif change.op is ConfChangeOp.PROMOTE:
            if node not in current.learners:
                return f"node {node} is not a learner"
        elif change.op is ConfChangeOp.REMOVE:
            if node not in current:
                return f"node {node} is not a member"
            if current.voters == (node,):
                return f"removing node {node} would leave no voter"
        else:
            return f"unknown operation {change.op!r}"
        return ""

    def _append_conf_change(self, change: ConfChange) -> int:
        voters, learners = confchange.apply_change(change, self._membership)
        full = ConfChange(change.op, change.node_id, change.context, voters, learners)
        data = confchange.encode(full)
        index = self._log.last_index + 1
        self._log.append([Entry(index, self._term, EntryKind.CONFIG, data)])
        self._dirty.update(self._progress)
        self._configs.append(Membership(voters, learners, index))
        self._set_membership(self._configs[-1])
        return index

    def _maybe_promote(self) -> None:
        """§4.2.1: promote a learner whose log is within ``promote_lag`` of ours."""
        if not (self._membership.learners and self._cfg.auto_promote):
            return
        if self._transferee is not None or self._conf_change_refusal(
            ConfChange(ConfChangeOp.PROMOTE, self._membership.learners[0])
        ):
            return
        floor = max(self._log.last_index - self._cfg.promote_lag, self._membership.index)
        for learner in self._membership.learners:
            pr = self._progress.get(learner)
            if pr is not None and pr.state is ProgressState.REPLICATE and pr.match >= floor:
                self._append_conf_change(ConfChange(ConfChangeOp.PROMOTE, learner))
                return

    def _config_committed(self) -> None:
        """The configuration in effect just committed (§4.2.2).

        A leader that is no longer a voter steps down, first telling everyone the
        commit index and asking the most up-to-date voter to campaign at once.
        """
        self._sync_progress()
        if self._is_voter:
            self._maybe_promote()
            return
        self._flush_appends()
        best = max(self._voter_peers, key=lambda p: (self._progress[p].match, -p))
        if self._progress[best].match >= self._membership.index:
            self._send(TimeoutNow(self._term, self._id, best))
        self._become_follower(self._term, None)

    # -- terms and roles --------------------------------------------------------

    def _accept_higher_term(self, m: Message) -> bool:
        """§5.1: a higher term makes this node a follower, with exceptions.

        Pre-votes and granted pre-vote replies carry a term nobody holds yet (§9.6).
        A real vote request is ignored while a leader is known to be alive, so a
        node that was cut off (or removed, §4.2.3) cannot depose it (§6.2), unless
        it is a transfer from a voter.  Replies and requests without authority from
        nodes outside the configuration are ignored (a removed server's late
        answers).
        """
        kind = type(m)
        if kind is VoteRequest:
            if m.pre_vote:
                return True
            if (
                self._cfg.check_quorum
                and not (m.transfer and m.src in self._voter_set)
                and self._leader_alive()
            ):
                return False
        elif kind in _NO_AUTHORITY:
            if m.src not in self._members:
                return False
            if kind is VoteResponse and m.pre_vote and m.granted:
                return True
        if self._transferee is not None and m.src == self._transferee:
            self._transfer_handed_over = True
        leader = m.src if kind is AppendEntries or kind is InstallSnapshot else None
        self._become_follower(m.term, leader)
        return True

    def _answer_stale(self, m: Message) -> bool:
        """A message from an older term: refuse it so its sender learns our term.

        Proposals and read requests carry no authority, so they are still handled.
        """
        kind = type(m)
        if kind is AppendEntries or kind is InstallSnapshot:
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
        if self._transferee is not None:
            self._end_transfer()
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
        self._forwarded.clear()
        self._tell_commit.clear()

    def _end_transfer(self, cancelled: bool = False) -> None:
        self._transfer_results.append(TransferResult(self._transferee, self._transfer_handed_over, cancelled))
        self._transferee = None
        self._transfer_handed_over = False

    def _become_follower(self, term: int, leader: int | None) -> None:
        self._reset(term)
        self._role = Role.FOLLOWER
        self._leader = leader

    def _campaign(self, pre_vote: bool, transfer: bool = False) -> None:
        """Start an election (§5.2), or first ask whether one could be won (§9.6).

        A pre-candidate keeps its term and vote; it asks for ``term + 1`` and only
        becomes a real candidate once a majority would grant that.  Only voters
        are asked, and only voters campaign.
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
        for peer in self._voter_peers:
            self._send(VoteRequest(term, self._id, peer, last_index, last_term, pre_vote, transfer))

    def _tally(self) -> bool | None:
        """True once a majority of voters granted, False once a majority refused."""
        granted = sum(self._votes.values())
        if granted >= self._quorum:
            return True
        if len(self._votes) - granted > len(self._voter_set) - self._quorum:
            return False
        return None

    def _won(self, pre_vote: bool) -> None:
        if pre_vote:
            self._campaign(pre_vote=False)
        else:
            self._become_leader()

    def _become_leader(self) -> None:
        """Take over with optimistic ``next`` for every member and a no-op entry (§5.4.2)."""
        self._reset(self._term)
        self._role = Role.LEADER
        self._leader = self._id
        next_index = self._log.last_index + 1
        for peer in self._members:
            if peer != self._id:
                self._progress[peer] = Progress(next_index, self._cfg.max_inflight_msgs)
        self._append([b""], EntryKind.NOOP)

    # -- elections ---------------------------------------------------------------

    def _on_vote_request(self, m: VoteRequest) -> None:
        """§5.2/§5.4.1: one vote per term, only for a log at least as up to date.

        A pre-vote (§9.6) is granted exactly when the real vote would be, as
        long as no leader is alive, and changes nothing here.  For a later term
        the vote is free (that term has no vote and no leader yet); for this
        node's own term (it moved on while the pre-candidate did not) it is
        free only as a real vote is: this vote cast for the candidate already,
        or none cast and no leader known.  Refused while a leader is alive, so
        a rejoining (or removed) node cannot start elections against a healthy
        one.  Votes do not depend on this node's configuration (§4.1).
        """
        log_ok = self._candidate_log_ok(m)
        can_vote = self._vote == m.src or (self._vote == 0 and self._leader is None)
        if m.pre_vote:
            would_vote = m.term > self._term or can_vote  # m.term < ours never gets here
            granted = would_vote and log_ok and not self._leader_alive()
            self._send(
                VoteResponse(m.term if granted else self._term, self._id, m.src, granted, True)
            )
            return
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
        if m.src not in self._voter_set:
            return
        self._votes.setdefault(m.src, m.granted)
        outcome = self._tally()
        if outcome is True:
            self._won(m.pre_vote)
        elif outcome is False:
            self._become_follower(self._term, None)

    def _on_timeout_now(self, m: TimeoutNow) -> None:
        """§3.10: the leader chose us; campaign now, past pre-vote and leases."""
        if self._is_voter and self._role is not Role.LEADER:
            self._campaign(pre_vote=False, transfer=True)

    # -- replication: follower side ------------------------------------------------

    def _on_append(self, m: AppendEntries) -> None:
        """§5.3: accept entries that extend a matching prefix, else give a hint.

        An append that cannot be a piece of a leader's log is dropped unread: no
        correct leader sends one, and taking it would leave a hole in the log.
        """
        if m.entries and append_problem(m):
            return
        if self._role is not Role.FOLLOWER or self._leader != m.src:
            self._become_follower(self._term, m.src)
        self._election_elapsed = 0
        log = self._log
        match = log.try_append(m.prev_log_index, m.prev_log_term, m.entries, m.leader_commit)
        if log.written_from:
            self._log_rewritten(log.written_from, m.entries)
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

    def _on_install_snapshot(self, m: InstallSnapshot) -> None:
        """§7: a snapshot from the leader (its term counts, §5.1).

        A chunk still in transit (not ``done``) is only contact from the leader.
        A whole snapshot either is not needed (not newer than the commit index,
        or the log holds its last entry: the commit index moves up to it and the
        entries after it are kept), and the core answers the leader at once, or
        it replaces the log: the core restarts its log after it now and the next
        Ready asks the node to install it durably, with the answer to the leader
        sent only after that.  One install at a time: a second snapshot while one
        is being installed is dropped (the leader sends it again).
        """
        if self._role is not Role.FOLLOWER or self._leader != m.src:
            self._become_follower(self._term, m.src)
        self._election_elapsed = 0
        if not m.done:
            return
        log = self._log
        if m.last_index <= log.committed:
            self._answer_leader(log.committed)
            return
        if self._log_holds(m.last_index, m.last_term):
            log.committed = m.last_index
            self._answer_leader(m.last_index)
            return
        if self._pending_snapshot is not None or self._installing is not None or not m.voters:
            return
        meta = SnapshotMeta(m.last_index, m.last_term, tuple(m.voters), tuple(m.learners))
        log.restore(meta.index, meta.term)
        self._snapshot = self._pending_snapshot = meta
        self._compaction = None  # a snapshot the node took but storage has not recorded: superseded
        self._configs = [Membership(meta.voters, meta.learners, meta.index)]
        self._set_membership(self._configs[0])
        self._answer_leader(meta.index)

    def _log_holds(self, index: int, term: int) -> bool:
        """§5.3 log matching: an entry's index and term identify it and all before it."""
        return self._log.term_at(index) == term

    def _on_snapshot_response(self, m: SnapshotResponse) -> None:
        """Chunk acknowledgements belong to the node's transport; only the term counts."""

    # -- replication: leader side ----------------------------------------------------

    def _append(self, datas: list[bytes], kind: EntryKind) -> None:
        index, term = self._log.last_index, self._term
        self._log.append([Entry(index + n, term, kind, d) for n, d in enumerate(datas, 1)])
        self._dirty.update(self._progress)

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
            if m.match_index > self._log.last_index:
                return  # no follower can match what this leader never had: forged or corrupt
            if pr.maybe_update(m.match_index):
                self._maybe_commit()
                if self._role is not Role.LEADER or m.src not in self._progress:
                    return
                if m.src == self._transferee and pr.match == self._log.last_index:
                    self._send(TimeoutNow(self._term, self._id, m.src))
                elif m.src in self._membership.learners:
                    self._maybe_promote()
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
        """§5.4.2: commit the highest index a majority of voters holds, if of this term.

        The leader counts itself only up to what it has persisted (§10.2.1), and
        not at all once it is no longer a voter (§4.2.2).
        """
        log = self._log
        progress = self._progress
        matches = [progress[p].match for p in self._voter_peers]
        if self._is_voter:
            matches.append(log.stable)
        matches.sort(reverse=True)
        index = matches[self._quorum - 1]
        if index <= log.committed or log.term_at(index) != self._term:
            return
        config_pending = self._membership.index > log.committed
        log.committed = index
        if config_pending:  # members joining or leaving hear of it at once
            self._must_send = True
            self._dirty.update(progress)
        else:
            self._tell_forwarders(index)
        for ctx, requester in self._reads.take_waiting_for_commit():
            self._register_read(ctx, requester)
        if config_pending and self._membership.index <= index:
            self._config_committed()

    def _tell_forwarders(self, committed: int) -> None:
        """A new commit index goes at once only to followers waiting for it.

        Those are the followers whose forwarded entries it commits: they ack their
        cameras once they applied them.  Every other follower learns it with the
        next append or heartbeat (the commit index is volatile, Figure 2; a read
        on a follower confirms with a round of appends that carry it, §6.4).  This
        saves a leader with cameras of its own two messages per commit, and each
        follower one message and one response.
        """
        forwarded = self._forwarded
        for peer in [p for p, last in forwarded.items() if last <= committed]:
            del forwarded[peer]
            if peer in self._progress:
                self._tell_commit.add(peer)
                self._dirty.add(peer)

    def _flush_appends(self) -> None:
        """Send what peers are missing, batched once per Ready (group commit)."""
        if not self._dirty:
            return
        progress, tell = self._progress, self._tell_commit
        for peer in self._dirty:
            pr = progress.get(peer)
            if pr is not None:
                self._send_appends(peer, pr, self._must_send or peer in tell)
        self._dirty.clear()
        self._must_send = False
        tell.clear()

    def _flush_forwards(self) -> None:
        """Forward this Ready's proposals to the leader in as few Propose messages as fit."""
        if not self._forwards:
            return
        datas, self._forwards = self._forwards, []
        (term, leader), limit, start, size = self._forward_to, self._cfg.max_bytes_per_msg, 0, 0
        for n, data in enumerate(datas):
            if size and size + len(data) > limit:
                self._send(Propose(term, self._id, leader, tuple(datas[start:n])))
                start, size = n, 0
            size += len(data)
        self._send(Propose(term, self._id, leader, tuple(datas[start:])))

    def _send_appends(self, peer: int, pr: Progress, must_send: bool) -> None:
        """Stream the entries ``peer`` lacks, as far as its state allows.

        With ``must_send`` (a heartbeat, a new commit index or a new read round is
        due) at least one message goes out, empty if need be.  It is sent at
        ``next - 1``, so a follower that lost earlier messages rejects it, which
        sends the leader back to probing and retransmitting.  A follower that
        needs compacted entries is sent the snapshot instead (§7).
        """
        cfg, log = self._cfg, self._log
        while not pr.is_paused():
            if log.term_at(pr.next - 1) is None:
                self._send_snapshot(peer, pr)
                break
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
        log = self._log
        prev = pr.next - 1
        prev_term = log.term_at(prev)
        if prev_term is None:  # only for an empty one: a heartbeat from the log's start
            prev = log.first_index - 1
            prev_term = log.term_at(prev)
        self._send(
            AppendEntries(
                self._term,
                self._id,
                peer,
                prev,
                prev_term,
                entries,
                log.committed,
                self._reads.round,
            )
        )
        self._reads.round_sent()
        pr.sent(entries[-1].index if entries else None)

    def _send_snapshot(self, peer: int, pr: Progress) -> None:
        """Ask the node to stream our latest snapshot to ``peer`` (one message, no data)."""
        snap = self._snapshot
        pr.become_snapshot(snap.index)
        self._send(
            InstallSnapshot(
                self._term,
                self._id,
                peer,
                last_index=snap.index,
                last_term=snap.term,
                offset=0,
                data=b"",
                done=False,
                voters=tuple(snap.voters),
                learners=tuple(snap.learners),
            )
        )

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._transferee is not None:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= self._cfg.election_ticks:
                self._end_transfer()
        for pr in self._progress.values():
            if pr.state is ProgressState.SNAPSHOT:
                pr.snapshot_elapsed += 1
                if pr.snapshot_elapsed >= self._cfg.snapshot_timeout:
                    pr.snapshot_ended(False)
        if self._election_elapsed >= self._cfg.election_ticks:
            self._election_elapsed = 0
            if self._cfg.check_quorum and not self._quorum_active():
                self._become_follower(self._term, None)
                return
        if self._heartbeat_elapsed >= self._cfg.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            for pr in self._progress.values():
                pr.on_heartbeat()
            self._must_send = True
            self._dirty.update(self._progress)
            self._maybe_promote()

    def _quorum_active(self) -> bool:
        """§6.2: did a majority of voters (this leader included) answer in the last timeout?"""
        active = 1 if self._is_voter else 0
        for peer in self._voter_peers:
            active += self._progress[peer].recent_active
        for pr in self._progress.values():
            pr.recent_active = False
        return active >= self._quorum

    # -- proposals and reads ------------------------------------------------------------

    def _on_propose(self, m: Propose) -> None:
        if self._role is Role.LEADER and self._transferee is None:
            self._append(list(m.data), EntryKind.NORMAL)
            self._forwarded[m.src] = self._log.last_index

    def _leader_read(self, ctx: int, requester: int) -> None:
        """§6.4 step 1: wait until this term has committed an entry (the no-op)."""
        if self._log.term_at(self._log.committed) != self._term:
            self._reads.wait_for_commit(ctx, requester)
        else:
            self._register_read(ctx, requester)

    def _register_read(self, ctx: int, requester: int) -> None:
        """§6.4 steps 2-3: record the commit index, then confirm with a heartbeat round.

        Reads registered before the same Ready share one round; every
        AppendEntries carries the current round, so ordinary traffic confirms too.
        """
        self._must_send = True
        self._dirty.update(self._progress)
        self._reads.add(ctx, self._log.committed, requester)
        self._confirm_reads()

    def _confirm_reads(self) -> None:
        if not self._reads.pending:
            return
        progress = self._progress
        acks = sorted((progress[p].read_ack for p in self._voter_peers), reverse=True)
        if self._is_voter:
            acks.insert(0, self._reads.round)
        for read in self._reads.confirmed(acks[self._quorum - 1]):
            self._answer_read(read, ok=True)

    def _answer_read(self, read: PendingRead, ok: bool) -> None:
        index = read.index if ok else 0
        if read.requester == self._id:
            self._read_states.append(ReadState(read.ctx, index))
        else:
            self._send(ReadIndexResponse(self._term, self._id, read.requester, read.ctx, index))

    def _fail_reads(self) -> None:
        """A leader stepping down answers its pending reads with index 0 (retry)."""
        for read in self._reads.take_all():
            self._answer_read(read, ok=False)

    def _on_read_index_request(self, m: ReadIndexRequest) -> None:
        if self._role is Role.LEADER:
            self._leader_read(m.ctx, m.src)
        else:
            self._send(ReadIndexResponse(self._term, self._id, m.src, m.ctx, 0))

    def _on_read_index_response(self, m: ReadIndexResponse) -> None:
        if self._role is not Role.LEADER:
            self._read_states.append(ReadState(m.ctx, m.index))


_kind_of = attrgetter("kind")


def _membership_of(entry: Entry) -> Membership:
    """The configuration a CONFIG entry sets (it carries the whole of it)."""
    change = confchange.decode(entry.data)
    return Membership(tuple(change.voters), tuple(change.learners), entry.index)
