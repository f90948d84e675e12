"""Raft messages as frozen dataclasses (the core's input and output).

Every message names its sender (``src``), its addressee (``dst``) and the sender's
``term``; messages are one-way (CONTRACT §4).  Field names match
``proto/parkd.proto`` one to one so the wire adapter is mechanical.
"""

from __future__ import annotations

from dataclasses import dataclass

from parkd.raft import confchange
from parkd.raft.types import Entry, EntryKind, SnapshotMeta


@dataclass(frozen=True, slots=True)
class VoteRequest:
    """RequestVote (§5.2); with ``pre_vote`` the dissertation's PreVote (§9.6).

    ``transfer`` marks a campaign started by TimeoutNow (dissertation §3.10): voters
    grant it even while they still hear from a leader.
    """

    term: int
    src: int
    dst: int
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    transfer: bool = False


@dataclass(frozen=True, slots=True)
class VoteResponse:
    term: int
    src: int
    dst: int
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """AppendEntries (§5.3); with no entries it is a heartbeat.

    ``read_ctx`` is the leader's heartbeat round, echoed by the follower so the
    leader can confirm leadership for ReadIndex (dissertation §6.4).
    """

    term: int
    src: int
    dst: int
    prev_log_index: int
    prev_log_term: int
    entries: tuple[Entry, ...]
    leader_commit: int
    read_ctx: int = 0


@dataclass(frozen=True, slots=True)
class AppendResponse:
    """Reply to AppendEntries.

    On success ``match_index`` is the last index known to match the leader.  On a
    rejection ``conflict_term``/``conflict_index`` let the leader skip a whole term
    at once (§5.3, "fast back-off"); ``conflict_term`` is 0 when the follower's log
    is simply too short, and ``conflict_index`` is then its last index + 1.
    """

    term: int
    src: int
    dst: int
    success: bool
    match_index: int = 0
    conflict_index: int = 0
    conflict_term: int = 0
    read_ctx: int = 0


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """A snapshot for ``dst`` (§7).

    From a leader's core (``data`` empty, ``done`` False) it asks the node's
    transport to send its latest snapshot at ``last_index``.  On the wire it is one
    chunk of that file at ``offset``.  Stepped into the receiving core with
    ``done`` set it means "the whole snapshot has arrived": the core decides
    whether to install it (``Ready.snapshot``).
    """

    term: int
    src: int
    dst: int
    last_index: int
    last_term: int
    offset: int
    data: bytes
    done: bool
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class SnapshotResponse:
    """The transport's chunk acknowledgement: bytes up to ``next_offset`` arrived.

    Flow control between the two nodes' snapshot transports; the sender's
    transport reports the outcome to its core as a :class:`SnapshotStatus`.
    """

    term: int
    src: int
    dst: int
    last_index: int
    next_offset: int
    done: bool = False
    installing: bool = False  # the whole file arrived and is being installed: wait, do not resend


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leadership transfer: start an election at once (dissertation §3.10)."""

    term: int
    src: int
    dst: int


@dataclass(frozen=True, slots=True)
class Propose:
    """A follower forwarding client proposals to the leader it knows."""

    term: int
    src: int
    dst: int
    data: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ReadIndexRequest:
    """A follower asking the leader for a read index (dissertation §6.4)."""

    term: int
    src: int
    dst: int
    ctx: int


@dataclass(frozen=True, slots=True)
class ReadIndexResponse:
    """The leader's answer; ``index`` is 0 when the leader could not serve it."""

    term: int
    src: int
    dst: int
    ctx: int
    index: int


# -- local events: stepped into the core by its own node, never sent --------------


@dataclass(frozen=True, slots=True)
class PeerUnreachable:
    """The node's connection to ``peer`` broke (a hint; see RaftCore docs)."""

    peer: int


@dataclass(frozen=True, slots=True)
class SnapshotStatus:
    """The node's transport finished (``success``) or gave up sending its snapshot to ``peer``."""

    peer: int
    success: bool


@dataclass(frozen=True, slots=True)
class SnapshotTaken:
    """The node wrote a snapshot of its state machine at ``meta``; drop the log up to ``upto``.

    ``upto <= meta.index`` (the entries in between are a margin for lagging
    followers); ``meta``'s membership must be the configuration at ``meta.index``.
    """

    meta: SnapshotMeta
    upto: int


LocalEvent = PeerUnreachable | SnapshotStatus | SnapshotTaken
LOCAL_EVENTS = (PeerUnreachable, SnapshotStatus, SnapshotTaken)

Message = (
    VoteRequest
    | VoteResponse
    | AppendEntries
    | AppendResponse
    | InstallSnapshot
    | SnapshotResponse
    | TimeoutNow
    | Propose
    | ReadIndexRequest
    | ReadIndexResponse
)


def append_problem(m: AppendEntries) -> str | None:
    """Why ``m`` cannot be a piece of a leader's log, or None if it can be.

    Its entries must follow ``prev_log_index`` one by one, their terms rise from
    ``prev_log_term`` up to the message's term (terms never fall along a log, and
    no leader holds entries of a term above its own), and CONFIG entries decode.
    No correct leader sends anything else: the raft port refuses the sender and
    the core drops the message, so a forged append can leave no hole in the log.
    """
    index, term = m.prev_log_index, m.prev_log_term
    for entry in m.entries:
        if entry.index != index + 1:
            return f"log entry {entry.index} does not follow entry {index}"
        if not term <= entry.term <= m.term:
            return f"log entry {entry.index} has term {entry.term}, outside {term}..{m.term}"
        if entry.kind is EntryKind.CONFIG:
            try:
                confchange.decode(entry.data)
            except confchange.ConfChangeDecodeError as e:
                return f"log entry {entry.index}: {e}"
        index, term = entry.index, entry.term
    return None
