"""A real RaftCore under a small driver loop, checked after every input; adversarial
raft messages drawn relative to its state (imported by tests/fuzz as ``raftkit``).

``Node`` is node 2 of a 3-voter cluster (1, 2, 3): a real ``RaftCore`` on
``MemoryStorage`` and a real ``ParkingState`` (in-memory SQLite) that applies
what commits.  Its loop does what ``RaftDriver.process`` does (persist, send,
apply, advance) and checks on the way what the real node relies on:

- what is persisted fits SQLite's signed 64-bit integers (the node's storage
  raises OverflowError otherwise) and storage accepts it (no hole in the log);
- every outgoing message can be encoded for the wire;
- committed entries apply, in order, once; an applied entry is never rewritten;
- term and commit index never decrease; one vote per term (the hard state
  never changes its vote within a term, and votes granted name one candidate).

Snapshot chunks and their answers go where ``NodeService._deliver`` sends them
(recorded here), everything else to ``core.step``; a snapshot the core asks to
install (stepped by a test as a whole ``InstallSnapshot``) replaces the
storage's log and the state machine's position, as the node's installer does.
"""

from __future__ import annotations

import math
import random
import struct

from parkd.db import open_engine
from parkd.parking import codec
from parkd.parking.retention import retention_entry
from parkd.parking.state import ParkingState
from parkd.raft import confchange
from parkd.raft import messages as m
from parkd.raft.core import CoreConfig, NotLeader, RaftCore, Role
from parkd.raft.storage import MemoryStorage
from parkd.raft.types import Entry, EntryKind
from parkd.wire import raft_to_envelope

ME, PEERS = 2, (1, 3)
VOTERS = (1, 2, 3)
LOTS = {"north": 100, "south": 60}
SQLITE_MAX = 2**63 - 1
CFG = CoreConfig(election_ticks=10, heartbeat_ticks=1, max_inflight_msgs=4, max_entries_per_msg=8)


class InvariantBroken(AssertionError):
    pass


class Node:
    def __init__(self, seed: int = 0):
        self.storage = MemoryStorage()
        self.core = RaftCore(ME, VOTERS, self.storage.load(), random.Random(seed), CFG)
        self.state = ParkingState(open_engine("sqlite://"), LOTS)
        self.sent: list = []
        self.routed: list = []  # InstallSnapshot / SnapshotResponse: the node's snapshot manager
        self.applied: dict[int, tuple[int, EntryKind, bytes]] = {}  # index -> (term, kind, data)
        self.granted: dict[int, set[int]] = {}  # term -> candidates this node voted for
        self.read_states: list = []
        self.snapshot_index = 0  # the latest snapshot installed
        self.delivered = 0
        self._last = (0, 0, 0)  # term, vote, commit

    # -- inputs (what NodeService / RaftDriver do)

    def deliver(self, message) -> None:
        """``NodeService._deliver``: snapshot chunks to the node, the rest to the core."""
        self.delivered += 1
        if isinstance(message, (m.InstallSnapshot, m.SnapshotResponse)):
            self.routed.append(message)
            return
        self.core.step(message)
        self.process()

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            self.core.tick()
            self.process()

    def propose(self, data: bytes) -> None:
        try:
            self.core.propose(data)
        except NotLeader:
            return
        self.process()

    def read_index(self, ctx: int) -> None:
        try:
            self.core.read_index(ctx)
        except NotLeader:
            return
        self.process()

    # -- the loop

    def process(self) -> None:
        core = self.core
        while core.has_ready():
            rd = core.ready()
            for value in _ints(rd.hard_state) + [i for e in rd.entries for i in (e.index, e.term)]:
                if not 0 <= value <= SQLITE_MAX:
                    raise InvariantBroken(f"would persist {value}, beyond SQLite's integers: {rd.hard_state}")
            if rd.snapshot is not None:
                self._install(rd.snapshot)
            self.storage.save(rd.hard_state, rd.entries, sync=rd.must_sync)  # raises on a hole in the log
            for message in (*rd.early_messages, *rd.messages):
                raft_to_envelope(message).SerializeToString()  # raises if not encodable
                if isinstance(message, m.VoteResponse) and message.granted and not message.pre_vote:
                    self.granted.setdefault(message.term, set()).add(message.dst)
                if isinstance(message, m.InstallSnapshot) and not message.data:
                    # SnapshotManager.send: no snapshot file here, so the transfer fails at once.
                    core.step(m.SnapshotStatus(message.dst, False))
                self.sent.append(message)
            if rd.committed_entries:
                self._apply(rd.committed_entries)
            self.read_states.extend(rd.read_states)
            core.advance(rd)
        self.check()

    def _install(self, meta) -> None:
        """The node's installer: storage and the state machine start after the snapshot."""
        if meta.index <= max(self.applied, default=0) or meta.index <= self.snapshot_index:
            raise InvariantBroken(f"snapshot {meta} installed over applied state")
        self.storage.install_snapshot(meta)
        self.snapshot_index = meta.index
        self.state = ParkingState(open_engine("sqlite://"), LOTS)
        with self.state.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE applied SET last_applied = ?", (meta.index,))

    def _apply(self, entries) -> None:
        expected = max(max(self.applied, default=0), self.snapshot_index) + 1
        for e in entries:
            if e.index != expected:
                raise InvariantBroken(f"applied {e.index} after {expected - 1}")
            self.applied[e.index] = (e.term, e.kind, e.data)
            expected += 1
        self.state.apply(entries)

    def check(self) -> None:
        core = self.core
        term, vote, commit = core.term, core.vote, core.commit_index
        last_term, last_vote, last_commit = self._last
        if term < last_term:
            raise InvariantBroken(f"term went back from {last_term} to {term}")
        if commit < last_commit:
            raise InvariantBroken(f"commit index went back from {last_commit} to {commit}")
        if term == last_term and last_vote and vote != last_vote:
            raise InvariantBroken(f"voted for {last_vote} then {vote} in term {term}")
        for t, candidates in self.granted.items():
            if len(candidates) > 1:
                raise InvariantBroken(f"granted votes to {sorted(candidates)} in term {t}")
        if commit > core.last_index:
            raise InvariantBroken(f"commit {commit} beyond the log's last index {core.last_index}")
        log = core.log
        for index in range(log.first_index, core.last_index + 1):
            entry = log.slice(index, index + 1)[0]
            if entry.index != index:
                raise InvariantBroken(f"log holds entry {entry.index} at position {index}")
            if index in self.applied and self.applied[index][0] != entry.term:
                raise InvariantBroken(f"applied entry {index} (term {self.applied[index][0]}) rewritten")
        self._last = (term, vote, commit)

    # -- views

    @property
    def last_term(self) -> int:
        return self.core.log.last_term

    def messages_to(self, peer: int) -> list:
        return [x for x in self.sent if x.dst == peer]


def _ints(hard_state) -> list[int]:
    return [] if hard_state is None else [hard_state.term, hard_state.vote, hard_state.commit]


# ------------------------------------------------------------------ honest peers


def elect(node: Node) -> bool:
    """Make node 2 leader with votes from 1 and 3 (pre-vote, then vote), if it campaigns."""
    core = node.core
    for _ in range(4 * CFG.election_ticks):
        if core.role is not Role.FOLLOWER:
            break
        node.tick()
    if core.role is Role.PRE_CANDIDATE:
        for peer in PEERS:
            honest(node, m.VoteResponse(core.term + 1, peer, ME, True, True))
    if core.role is Role.CANDIDATE:
        for peer in PEERS:
            honest(node, m.VoteResponse(core.term, peer, ME, True))
    return core.role is Role.LEADER


def honest(node: Node, message) -> None:
    """A message a correct peer could send now."""
    node.deliver(message)


def heartbeat_from(node: Node, leader: int = 1, entries: int = 0) -> m.AppendEntries:
    """AppendEntries a correct leader in node's current term would send, extending its log."""
    core = node.core
    term = core.term
    prev, prev_term = core.last_index, node.last_term
    new = tuple(Entry(prev + n, term, EntryKind.NORMAL, frame_data(n)) for n in range(1, entries + 1))
    return m.AppendEntries(term, leader, ME, prev, prev_term, new, prev + entries)


def frame_data(n: int, camera_id: int = 5) -> bytes:
    return codec.encode(codec.FrameResult(camera_id, "north", n, 1.7e9 + n, n % 100))


# ------------------------------------------------------------------ adversarial messages
#
# Drawn with a ``random.Random`` that hypothesis provides (``st.randoms()``): the
# values depend on the node's state at the moment, and plain Python calls keep a
# step cheap (building strategies per draw made hypothesis spend most of the time).

EXTREME = [0, 1, 2, 2**31, 2**32 - 1, 2**53, 2**62, 2**62 + 1, 2**63 - 1, 2**63, 2**64 - 1]
IDS = [0, 1, 2, 3, 4, 99, 2**31, 2**32 - 1]
LOT_BYTES = [b"north", b"south", b"west", b"\xff", b"", b"north\x00"]


def pick_term(rng: random.Random, node: Node, wild: bool) -> int:
    t = node.core.term
    roll = rng.random()
    if roll < 0.7 or not wild:
        return max(0, t + rng.choice((-1, 0, 0, 1, 2))) if roll < 0.9 else rng.randint(0, t + 20)
    return rng.choice(EXTREME) if roll < 0.85 else rng.getrandbits(64)


def pick_index(rng: random.Random, node: Node, wild: bool) -> int:
    c, last = node.core.commit_index, node.core.last_index
    roll = rng.random()
    if roll < 0.7 or not wild:
        if roll < 0.9:
            return max(0, rng.choice((0, 1, c - 1, c, c + 1, last - 1, last, last, last + 1, last + 5)))
        return rng.randint(0, last + 20)
    return rng.choice(EXTREME) if roll < 0.85 else rng.getrandbits(64)


def pick_id(rng: random.Random, wild: bool, usual=(1, 3, 1, 3, 2, 4, 99)) -> int:
    if wild and rng.random() < 0.5:
        return rng.choice(IDS) if rng.random() < 0.7 else rng.getrandbits(32)
    return rng.choice(usual)


def entry_data(rng: random.Random) -> bytes:
    roll = rng.randrange(8)
    if roll == 0:
        return b""
    if roll == 1:
        return rng.randbytes(rng.randrange(41))
    if roll == 2:
        return frame_data(rng.randint(1, 50), rng.choice([5, 6, 0, 2**32 - 1]))
    if roll == 3:  # a frame result with fields out of range
        return struct.pack(
            "<BIQdI", 1, rng.getrandbits(32), rng.choice([0, 1, 2**63, 2**64 - 1]),
            rng.choice([math.nan, math.inf, -1.0, 1e9]), rng.choice([0, 101, 2**32 - 1]),
        ) + rng.choice(LOT_BYTES)  # fmt: skip
    if roll == 4:
        return retention_entry(rng.uniform(-1e12, 1e12))
    if roll == 5:
        return bytes([codec.RETENTION_TAG]) + rng.randbytes(rng.randrange(12))
    members = [1, 2, 3, 4, 99]
    change = confchange.ConfChange(
        rng.choice(list(confchange.ConfChangeOp)), rng.choice(members + [2**32 - 1]), rng.randbytes(rng.randrange(16)),
        tuple(rng.sample(members, rng.randrange(5))), tuple(rng.sample(members, rng.randrange(3))),
    )  # fmt: skip
    data = confchange.encode(change)
    return data if roll == 6 else data[: rng.randrange(len(data) + 1)]  # or cut short


def entry_list(rng: random.Random, node: Node, prev: int, term: int, wild: bool) -> tuple[Entry, ...]:
    """Entries after ``prev``: shaped like a leader's (contiguous, terms rising up to the
    message's) or anything at all (any index, term and kind)."""
    count = rng.randrange(5)
    kinds = [rng.choice((EntryKind.NORMAL, EntryKind.NORMAL, EntryKind.NOOP, EntryKind.CONFIG)) for _ in range(count)]
    if rng.random() < 0.6:
        terms = sorted(rng.choice((term, pick_term(rng, node, wild))) for _ in range(count))
        indexes = [(prev + n) % 2**64 for n in range(1, count + 1)]  # uint64 on the wire
    else:
        terms = [pick_term(rng, node, wild) for _ in range(count)]
        indexes = [rng.choice(((prev + 1) % 2**64, pick_index(rng, node, wild))) for _ in range(count)]
    return tuple(Entry(i, t, k, entry_data(rng)) for i, t, k in zip(indexes, terms, kinds))


KINDS = ["vote_request", "vote_response", "append_entries", "append_entries", "append_response",
         "append_response", "install_snapshot", "snapshot_response", "timeout_now", "propose",
         "read_index_request", "read_index_response"]  # fmt: skip


def hostile_message(rng: random.Random, node: Node):
    """Any well-typed raft message, its fields chosen near this node's state or (one
    message in four) at extremes, from any sender to any addressee."""
    wild = rng.random() < 0.25

    def T():  # noqa: N802
        return pick_term(rng, node, wild)

    def I():  # noqa: N802, E743
        return pick_index(rng, node, wild)

    def flag():
        return rng.random() < 0.5

    term, src, dst = T(), pick_id(rng, wild), pick_id(rng, wild, (ME, ME, ME, 1, 3))
    kind = rng.choice(KINDS)
    if kind == "vote_request":
        return m.VoteRequest(term, src, dst, I(), T(), flag(), flag())
    if kind == "vote_response":
        return m.VoteResponse(term, src, dst, flag(), flag())
    if kind == "append_entries":
        prev = I()
        prev_term = node.core.log.term_at(prev) or 0 if flag() else T()
        return m.AppendEntries(term, src, dst, prev, prev_term, entry_list(rng, node, prev, term, wild), I(), I())
    if kind == "append_response":
        return m.AppendResponse(term, src, dst, flag(), I(), I(), T(), I())
    if kind == "install_snapshot":
        voters = tuple(pick_id(rng, wild) for _ in range(rng.randrange(4)))
        return m.InstallSnapshot(term, src, dst, I(), T(), I(), rng.randbytes(rng.randrange(33)), flag(), voters, ())
    if kind == "snapshot_response":
        return m.SnapshotResponse(term, src, dst, I(), I(), flag())
    if kind == "timeout_now":
        return m.TimeoutNow(term, src, dst)
    if kind == "propose":
        return m.Propose(term, src, dst, tuple(entry_data(rng) for _ in range(rng.randrange(4))))
    if kind == "read_index_request":
        return m.ReadIndexRequest(term, src, dst, I())
    return m.ReadIndexResponse(term, src, dst, I(), I())
