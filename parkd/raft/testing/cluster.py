"""RaftCores joined by an in-memory network, driven the way the node drives one.

:class:`Cluster` plays the node's part for every core with the same calls the
daemon's driver makes (``parkd/node/driver.py``): take a Ready, send its early
messages, install its snapshot, save it, send the rest, apply, advance; local
events (a broken connection, a snapshot delivered or given up, a snapshot taken)
are steps.  Snapshot transfers go through a stand-in for the node's transport:
an ``InstallSnapshot`` request from a core is delivered whole, as a complete
snapshot stepped into the receiver, and the receiver's ``SnapshotResponse`` is
reported to the sender's core as a ``SnapshotStatus``.
"""

from __future__ import annotations

import itertools
import operator
import random
from collections.abc import Callable

from parkd.raft import confchange
from parkd.raft.confchange import ConfChangeOp
from parkd.raft.core import CoreConfig, RaftCore, ReadState, Ready, Role
from parkd.raft.messages import (
    InstallSnapshot,
    Message,
    PeerUnreachable,
    SnapshotResponse,
    SnapshotStatus,
    SnapshotTaken,
)
from parkd.raft.testing.checker import SafetyChecker, SafetyViolation
from parkd.raft.types import Entry, EntryKind, HardState, PersistedState, SnapshotMeta

# Small limits so that batching, pipelining and back-off are all exercised.
SIM_CONFIG = CoreConfig(
    election_ticks=10,
    heartbeat_ticks=2,
    max_entries_per_msg=2,
    max_bytes_per_msg=64,
    max_inflight_msgs=3,
)


_kind_of = operator.attrgetter("kind")


def entries_with_terms(terms, first_index: int = 1) -> list[Entry]:
    """A log with the given terms, for setting up scenarios."""
    return [Entry(i, t, data=b"e%d" % i) for i, t in enumerate(terms, first_index)]


def drain(core: RaftCore) -> Ready:
    """Take a core's Ready and advance it, as if persisted, sent and applied."""
    rd = core.ready()
    core.advance(rd)
    return rd


class SimStorage:
    """What survives a crash: Raft storage plus the state machine's applied entries.

    ``entries`` start after ``offset`` (compacted below; a trailing margin may keep
    entries at or below the snapshot index).  ``snapshot_data`` is the state
    machine at ``snapshot.index``: the entries applied up to it.
    """

    __slots__ = (
        "hard_state",
        "entries",
        "offset",
        "offset_term",
        "snapshot",
        "snapshot_data",
        "applied",
    )

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.entries: list[Entry] = []
        self.offset = 0
        self.offset_term = 0
        self.snapshot = SnapshotMeta()
        self.snapshot_data: tuple[Entry, ...] = ()
        self.applied: list[Entry] = []  # applied[i] is the entry at index i + 1

    def save(self, rd: Ready) -> None:
        """Persist a Ready's hard state and entries (truncating at the first one)."""
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state
        if rd.entries:
            first = rd.entries[0].index
            if not self.snapshot.index < first <= self.offset + len(self.entries) + 1:
                raise SafetyViolation(f"storage asked to save entries from {first}: a hole")
            del self.entries[first - self.offset - 1 :]
            self.entries.extend(rd.entries)

    def term_at(self, index: int) -> int | None:
        pos = index - self.offset - 1
        if pos == -1:
            return self.offset_term
        return self.entries[pos].term if 0 <= pos < len(self.entries) else None

    def compact(self, upto: int, meta: SnapshotMeta, data: tuple[Entry, ...]) -> None:
        """Record the snapshot ``data`` at ``meta.index``; drop entries up to ``upto``."""
        self.snapshot, self.snapshot_data = meta, data
        if upto > self.offset:
            self.offset_term = self.term_at(upto)
            del self.entries[: upto - self.offset]
            self.offset = upto

    def install(self, meta: SnapshotMeta, data: tuple[Entry, ...]) -> None:
        """A received snapshot replaces the log and the state machine (one transaction)."""
        self.entries = []
        self.offset, self.offset_term = meta.index, meta.term
        self.snapshot, self.snapshot_data = meta, data
        self.applied = list(data)
        hs = self.hard_state
        term, vote = (hs.term, hs.vote) if hs.term >= meta.term else (meta.term, 0)
        self.hard_state = HardState(term, vote, max(hs.commit, meta.index))

    def persisted(self) -> PersistedState:
        return PersistedState(self.hard_state, tuple(self.entries), self.snapshot)


class Cluster:
    """RaftCores joined by an in-memory network; nothing happens unless asked.

    A node's Ready is first *taken* (``take_ready``) and only later *persisted*
    (``persist``: install, save, send, apply, advance), so a crash in between loses
    it, as a crash before the storage transaction commits would; a Ready holding a
    snapshot stays taken while the node "installs it on a worker thread".  A
    leader's appends (``Ready.early_messages``) are sent when the Ready is taken,
    before its write, as the node does (dissertation §10.2.1): a crash can then lose
    the leader's copy.

    ``disk[i, index, term]`` holds the snapshot files nodes wrote or received
    (their data) and ``latest[i]`` is the one node ``i`` sends: files survive a
    crash; at a restart the node uses the one its storage recorded.

    ``ids`` are the founding voters (the start-up file); nodes added later with
    :meth:`add_node` start with an empty configuration, as ``--join`` does.  A
    node that applies its own removal shuts down for good (``retired``), as the
    node layer does.
    """

    def __init__(
        self,
        ids,
        config: CoreConfig = SIM_CONFIG,
        seed: int = 0,
        core_cls: type[RaftCore] = RaftCore,
        checker: SafetyChecker | None = None,
    ):
        self.initial = tuple(ids)
        self.ids = list(self.initial)
        self.config = config
        self.core_cls = core_cls
        self.checker = checker or SafetyChecker()
        self.rng = random.Random(seed)
        self.storage = {i: SimStorage() for i in self.ids}
        self.disk: dict[tuple[int, int, int], tuple[Entry, ...]] = {}
        self.latest: dict[int, SnapshotMeta] = {}
        self.cores: dict[int, RaftCore | None] = {}
        self.pending: dict[int, Ready] = {}
        self.network: list[Message] = []
        self.group = dict.fromkeys(self.ids, 0)
        self.read_states: dict[int, list[ReadState]] = {i: [] for i in self.ids}
        self.retired: set[int] = set()
        # A removed node's term when its removal first committed: it may carry that
        # term (from a campaign it started as a member) but bring no newer one.
        self.removed_term: dict[int, int] = {}
        self.snapshots_installed = 0
        self.transfers = 0  # leadership transfers reported as handed over
        self._groups = itertools.count(1)
        self.drop_if: Callable[[Message], bool] | None = None  # a test's selective loss
        self.history: list[Message] | None = None  # set to a list to record deliveries
        for i in self.ids:
            self.restart(i)

    def core(self, i: int) -> RaftCore:
        core = self.cores[i]
        assert core is not None, f"node {i} is down"
        return core

    def live(self) -> list[RaftCore]:
        return [c for c in self.cores.values() if c is not None]

    # -- nodes ---------------------------------------------------------------

    def add_node(self, i: int) -> RaftCore:
        """Start a new, empty node ``i`` that knows no configuration (it joins)."""
        assert i not in self.storage, f"node {i} exists"
        self.ids.append(i)
        self.storage[i] = SimStorage()
        self.group[i] = 0
        self.read_states[i] = []
        self.restart(i)
        return self.core(i)

    def crash(self, i: int, after_save: bool = False) -> None:
        """Lose everything not persisted, including a taken but unsaved Ready.

        With ``after_save`` a taken Ready is saved first (its snapshot installed
        too) but neither sent nor applied: the crash came just after the storage
        transactions committed.  Without it an install under way never happened.
        """
        self.cores[i] = None
        rd = self.pending.pop(i, None)
        if after_save and rd is not None:
            self._save(i, rd)

    def restart(self, i: int) -> None:
        storage = self.storage[i]
        self.latest[i] = storage.snapshot
        self.cores[i] = self.core_cls(
            i,
            self.initial if i in self.initial else (),
            storage.persisted(),
            random.Random(self.rng.getrandbits(32)),
            self.config,
            applied=len(storage.applied),
        )

    def load(self, i: int, terms, term: int | None = None, vote: int = 0) -> RaftCore:
        """Restart node ``i`` from a storage holding entries of these terms."""
        storage = self.storage[i] = SimStorage()
        storage.entries = entries_with_terms(terms)
        storage.hard_state = HardState(max(terms, default=0) if term is None else term, vote)
        self.restart(i)
        return self.core(i)

    def take_ready(self, i: int, hold_applies: bool = False) -> bool:
        core = self.cores[i]
        if core is None or i in self.pending or not core.has_ready(hold_applies):
            return False
        rd = self.pending[i] = core.ready(hold_applies)
        self.network.extend(rd.early_messages)  # a leader's appends go before its write
        if core.role is Role.LEADER and EntryKind.CONFIG in map(_kind_of, rd.entries):
            self.checker.check_one_pending(core)
        return True

    def _save(self, i: int, rd: Ready) -> None:
        storage = self.storage[i]
        if rd.snapshot is not None:
            meta = rd.snapshot
            data = self.disk[i, meta.index, meta.term]
            self.checker.installing(i, storage.applied, data)
            storage.install(meta, data)
            self.latest[i] = meta
            self.snapshots_installed += 1
        storage.save(rd)
        if rd.entries:
            self.checker.saved(i, rd.entries, storage.term_at(rd.entries[0].index - 1))
        if rd.compaction is not None:
            meta = rd.compaction.meta
            storage.compact(rd.compaction.upto, meta, self.disk[i, meta.index, meta.term])

    def persist(self, i: int) -> None:
        """Do a taken Ready's work in the driver's order: install, save, send, apply, advance."""
        rd = self.pending.pop(i)
        storage, checker = self.storage[i], self.checker
        self._save(i, rd)
        self.network.extend(rd.messages)
        removed = False
        applied = storage.applied
        for entry in rd.committed_entries:
            checker.applying(i, applied, entry)
            applied.append(entry)
        if EntryKind.CONFIG in map(_kind_of, rd.committed_entries):
            for entry in rd.committed_entries:
                if entry.kind is EntryKind.CONFIG:
                    change = confchange.decode(entry.data)
                    if change.op is ConfChangeOp.REMOVE:
                        removed |= change.node_id == i
                        self._removal_committed(change.node_id)
        for rs in rd.read_states:
            checker.read_served(i, rs)
            self.read_states[i].append(rs)
        self.transfers += sum(result.succeeded for result in rd.transfers)
        self.core(i).advance(rd)
        if removed:  # the node layer shuts a removed node down
            self.crash(i)
            self.retired.add(i)

    def _removal_committed(self, i: int) -> None:
        if i not in self.removed_term:
            core = self.cores.get(i)
            self.removed_term[i] = core.term if core else self.storage[i].hard_state.term

    def process(self, i: int, hold_applies: bool = False) -> None:
        """Take and persist whatever node ``i`` has ready."""
        if i in self.pending or self.take_ready(i, hold_applies):
            self.persist(i)

    def compact(self, i: int, margin: int = 0) -> bool:
        """Node ``i`` snapshots its state machine and steps ``SnapshotTaken``, keeping
        ``margin`` entries below the snapshot; False if the core did not take it."""
        core = self.cores[i]
        if core is None or (i in self.pending and self.pending[i].snapshot is not None):
            return False  # shut down, or busy installing
        index = core.applied_index
        if index <= core.snapshot.index:
            return False
        config = core.config_at(index)
        meta = SnapshotMeta(index, core.log.term_at(index), config.voters, config.learners)
        upto = max(core.log.first_index - 1, index - margin)
        core.step(SnapshotTaken(meta, upto))
        if core.snapshot != meta:
            return False
        self.disk[i, meta.index, meta.term] = tuple(self.storage[i].applied[:index])
        self.latest[i] = meta
        return True

    def unreachable(self, i: int, peer: int) -> None:
        """Node ``i``'s connection to ``peer`` broke (the hint the node's peer links give)."""
        self.core(i).step(PeerUnreachable(peer))

    # -- network -------------------------------------------------------------

    def _transmit(self, m: Message) -> None:
        """Hand ``m`` to its addressee unless the path is cut or ``drop_if`` says so."""
        core = self.cores[m.dst]
        lost = core is None or self.group[m.src] != self.group[m.dst]
        if lost or (self.drop_if is not None and self.drop_if(m)):
            if lost and type(m) is InstallSnapshot:  # the sender's transport saw the transfer fail
                self.network.append(SnapshotResponse(m.term, m.dst, m.src, m.last_index, 0))
            return
        if self.history is not None:
            self.history.append(m)
        kind = type(m)
        removed = self.checker.removed
        if m.src in removed and m.dst not in removed:
            before = (core.role, core.term, core._leader_alive())
            self._step(core, m, kind)
            if core.term > before[1]:
                held = [
                    c.term if c is not None else self.storage[i].hard_state.term
                    for i, c in self.cores.items()
                    if i != core.id and i not in removed
                ]
                held.append(self.removed_term.get(m.src, 0))
                self.checker.removed_sent(core, m, before, max(held), self.config)
        else:
            self._step(core, m, kind)

    def _step(self, core: RaftCore, m: Message, kind) -> None:
        """What the node's raft port and snapshot transports do with a message."""
        if kind is InstallSnapshot:
            self._send_snapshot(core, m)
        elif kind is SnapshotResponse:
            core.step(SnapshotStatus(m.src, m.done))
        else:
            core.step(m)

    def _send_snapshot(self, core: RaftCore, m: InstallSnapshot) -> None:
        """The transports move the sender's latest snapshot file to ``core``'s node
        (if the sender still runs and has it); the whole file is stepped at once."""
        meta = self.latest.get(m.src, SnapshotMeta())
        if self.cores[m.src] is None or meta.index < m.last_index:
            return
        i = core.id
        data = self.disk[i, meta.index, meta.term] = self.disk[m.src, meta.index, meta.term]
        core.step(
            InstallSnapshot(
                m.term, m.src, i, meta.index, meta.term, len(data), b"", True, meta.voters, meta.learners
            )
        )
        self.network.append(SnapshotResponse(core.term, i, m.src, meta.index, len(data), True))

    def deliver(self, k: int = 0) -> Message:
        """Deliver the k-th queued message (or lose it, see ``_transmit``)."""
        m = self.network.pop(k)
        self._transmit(m)
        return m

    def isolate(self, i: int) -> None:
        self.group[i] = next(self._groups)

    def partition(self, *sides) -> None:
        """Cut the network into the given sides (nodes not named stay together)."""
        for side in sides:
            g = next(self._groups)
            for i in side:
                self.group[i] = g

    def heal(self) -> None:
        self.group = dict.fromkeys(self.ids, 0)

    # -- driving -------------------------------------------------------------

    def tick(self, *ids: int) -> None:
        for i in ids or self.ids:
            core = self.cores[i]
            if core is not None:
                core.tick()

    def stabilize(self, limit: int = 10_000) -> None:
        """Persist and deliver in rounds until nothing is left to do."""
        for _ in range(limit):
            for i in self.ids:
                self.process(i)
            self.checker.check_leaders(self.live())
            if not self.network and not any(core.has_ready() for core in self.live()):
                return
            batch, self.network = self.network, []
            for m in batch:
                self._transmit(m)
        raise RuntimeError("cluster did not settle")

    def heartbeat(self) -> None:
        """Settle, tick the leader until its heartbeat goes out, then settle again: the
        followers learn the commit index (sent at once only to followers waiting for it,
        see RaftCore)."""
        self.stabilize()
        leader = self.leader()
        for _ in range(self.config.heartbeat_ticks):
            leader.tick()
        self.stabilize()

    def leader(self) -> RaftCore | None:
        """The live leader of the highest term, if any."""
        leaders = [c for c in self.live() if c.role is Role.LEADER]
        return max(leaders, key=lambda c: c.term, default=None)

    def elect(self, i: int) -> RaftCore:
        """Tick only node ``i`` (settling after each tick) until it leads; returns it."""
        core = self.core(i)
        for _ in range(4 * self.config.election_ticks):
            if core.role is Role.LEADER:
                return core
            core.tick()
            self.stabilize()
        raise AssertionError(f"node {i} did not win: {core.role}")
