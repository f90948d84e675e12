"""Deterministic simulation of RaftCore peers on an unreliable in-memory network.

- :class:`Cluster` wires cores through a message queue with explicit, deterministic
  actions (deliver, drop, partition, crash, restart); unit tests drive it directly.
- :class:`SafetyChecker` asserts Raft's safety properties as the cluster runs.
- :class:`Simulation` applies random actions to a Cluster, checks after every
  step, and finally checks liveness once the faults stop.

Run ``python -m parkd.raft.sim --seeds N --steps M [--nodes 3|5] [--seed-start S]``.
A failure prints its seed and the last events and exits 1.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import itertools
import random
import sys
import time
from collections import deque
from collections.abc import Callable

from parkd.raft.core import CoreConfig, NotLeader, RaftCore, ReadState, Ready, Role
from parkd.raft.messages import Message
from parkd.raft.types import Entry, HardState, PersistedState

# Small limits so that batching, pipelining and back-off are all exercised.
SIM_CONFIG = CoreConfig(
    election_ticks=10,
    heartbeat_ticks=2,
    max_entries_per_msg=2,
    max_bytes_per_msg=64,
    max_inflight_msgs=3,
)


def entries_with_terms(terms, first_index: int = 1) -> list[Entry]:
    """A log with the given terms, for setting up scenarios."""
    return [Entry(i, t, data=b"e%d" % i) for i, t in enumerate(terms, first_index)]


def drain(core: RaftCore) -> Ready:
    """Take a core's Ready and advance it, as if persisted, sent and applied."""
    rd = core.ready()
    core.advance(rd)
    return rd


class SafetyViolation(AssertionError):
    """A Raft safety property does not hold."""


class MemoryStorage:
    """What survives a crash: Raft storage plus the state machine's applied entries."""

    __slots__ = ("hard_state", "entries", "applied")

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.entries: list[Entry] = []
        self.applied: list[Entry] = []  # applied[i] is the entry at index i + 1

    def save(self, rd: Ready) -> None:
        """Persist a Ready's hard state and entries (truncating at the first one)."""
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state
        if rd.entries:
            del self.entries[rd.entries[0].index - 1 :]
            self.entries.extend(rd.entries)

    def persisted(self) -> PersistedState:
        return PersistedState(self.hard_state, tuple(self.entries))


class SafetyChecker:
    """Raft's safety properties (paper Figure 3), checked incrementally.

    - election safety: at most one leader per term, over the whole history;
    - log matching: checked on every persisted entry through a registry of
      (index, term) -> (entry, previous term), which by induction means two logs
      holding the same (index, term) are identical up to it;
    - leader completeness and no lost commits: every entry applied anywhere is in
      the log of the leader of the newest term (checked when that leader is first
      seen and whenever an entry is first applied);
    - state machine safety: every node applies the same entry at each index, in order;
    - linearizable reads: a ReadState index covers every entry applied anywhere
      before the read was requested.
    """

    def __init__(self) -> None:
        self.leaders: dict[int, int] = {}
        self.applied: list[Entry] = []
        self._registry: dict[tuple[int, int], tuple[Entry, int]] = {}
        self._read_floor: dict[tuple[int, int], int] = {}
        # The leader of the highest term seen; stale leaders of older terms may
        # legitimately miss newer entries, this one may not.
        self._newest: RaftCore | None = None
        self._newest_term = 0

    def saved(self, node: int, entries: list[Entry], new: tuple[Entry, ...]) -> None:
        """``new`` was just appended to ``node``'s persisted ``entries``."""
        registry = self._registry
        for entry in new:
            i = entry.index
            prev_term = entries[i - 2].term if i > 1 else 0
            known = registry.setdefault((i, entry.term), (entry, prev_term))
            if known[1] != prev_term or (known[0] is not entry and known[0] != entry):
                raise SafetyViolation(
                    f"log matching: node {node} has {entry} after term {prev_term}, "
                    f"another log has {known[0]} after term {known[1]}"
                )

    def applying(self, node: int, done: list[Entry], entry: Entry) -> None:
        """``node``, having applied ``done``, applies ``entry`` next."""
        i = entry.index
        if i != len(done) + 1:
            raise SafetyViolation(f"node {node} applied index {i} after {len(done)}")
        if i > len(self.applied):
            self.applied.append(entry)
            newest = self._newest
            if newest is not None and newest.log.term_at(i) != entry.term:
                raise SafetyViolation(
                    f"leader completeness: {entry} applied, not in the log of "
                    f"leader {newest.id} of term {newest.term}"
                )
        elif self.applied[i - 1] is not entry and self.applied[i - 1] != entry:
            raise SafetyViolation(
                f"state machine safety: node {node} applied {entry}, "
                f"another node applied {self.applied[i - 1]}"
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

    def check_complete(self, core: RaftCore) -> None:
        """Leader completeness: ``core``'s log holds everything applied anywhere."""
        n = len(self.applied)
        if core.log.slice(1, n + 1) == tuple(self.applied):
            return
        for i, entry in enumerate(self.applied, 1):
            if core.log.term_at(i) != entry.term:
                raise SafetyViolation(
                    f"leader completeness: leader {core.id} of term {core.term} lacks "
                    f"applied {entry} (has term {core.log.term_at(i)})"
                )

    def read_requested(self, node: int, ctx: int) -> None:
        self._read_floor[node, ctx] = len(self.applied)

    def read_served(self, node: int, rs: ReadState) -> None:
        floor = self._read_floor.pop((node, rs.ctx), 0)
        if rs.index and rs.index < floor:
            raise SafetyViolation(
                f"stale read: node {node} read at {rs.index}, {floor} was applied before"
            )


class Cluster:
    """RaftCores joined by an in-memory network; nothing happens unless asked.

    A node's Ready is first *taken* (``take_ready``) and only later *persisted*
    (``persist``: save, send, apply, advance), so a crash in between loses it, as
    a crash before the storage transaction commits would.
    """

    def __init__(
        self,
        ids,
        config: CoreConfig = SIM_CONFIG,
        seed: int = 0,
        core_cls: type[RaftCore] = RaftCore,
        checker: SafetyChecker | None = None,
    ):
        self.ids = tuple(ids)
        self.config = config
        self.core_cls = core_cls
        self.checker = checker or SafetyChecker()
        self.rng = random.Random(seed)
        self.storage = {i: MemoryStorage() for i in self.ids}
        self.cores: dict[int, RaftCore | None] = {}
        self.pending: dict[int, Ready] = {}
        self.network: list[Message] = []
        self.group = dict.fromkeys(self.ids, 0)
        self.read_states: dict[int, list[ReadState]] = {i: [] for i in self.ids}
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

    def crash(self, i: int, after_save: bool = False) -> None:
        """Lose everything not persisted, including a taken but unsaved Ready.

        With ``after_save`` a taken Ready is saved first but neither sent nor
        applied: the crash came just after the storage transaction committed.
        """
        self.cores[i] = None
        rd = self.pending.pop(i, None)
        if after_save and rd is not None:
            storage = self.storage[i]
            storage.save(rd)
            self.checker.saved(i, storage.entries, rd.entries)

    def restart(self, i: int) -> None:
        storage = self.storage[i]
        self.cores[i] = self.core_cls(
            i,
            self.ids,
            storage.persisted(),
            random.Random(self.rng.getrandbits(32)),
            self.config,
            applied=len(storage.applied),
        )

    def load(self, i: int, terms, term: int | None = None, vote: int = 0) -> RaftCore:
        """Restart node ``i`` from a storage holding entries of these terms."""
        storage = self.storage[i] = MemoryStorage()
        storage.entries = entries_with_terms(terms)
        storage.hard_state = HardState(max(terms, default=0) if term is None else term, vote)
        self.restart(i)
        return self.core(i)

    def take_ready(self, i: int) -> bool:
        core = self.cores[i]
        if core is None or i in self.pending or not core.has_ready():
            return False
        self.pending[i] = core.ready()
        return True

    def persist(self, i: int) -> None:
        """Do a taken Ready's work in the driver's order: save, send, apply, advance."""
        rd = self.pending.pop(i)
        storage, checker = self.storage[i], self.checker
        storage.save(rd)
        checker.saved(i, storage.entries, rd.entries)
        self.network.extend(rd.messages)
        for entry in rd.committed_entries:
            checker.applying(i, storage.applied, entry)
            storage.applied.append(entry)
        for rs in rd.read_states:
            checker.read_served(i, rs)
            self.read_states[i].append(rs)
        self.core(i).advance(rd)

    def process(self, i: int) -> None:
        """Take and persist whatever node ``i`` has ready."""
        if i in self.pending or self.take_ready(i):
            self.persist(i)

    # -- network -------------------------------------------------------------

    def _transmit(self, m: Message) -> None:
        """Hand ``m`` to its addressee unless the path is cut or ``drop_if`` says so."""
        core = self.cores[m.dst]
        if core is None or self.group[m.src] != self.group[m.dst]:
            return
        if self.drop_if is not None and self.drop_if(m):
            return
        if self.history is not None:
            self.history.append(m)
        core.step(m)

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
            if not self.network:
                return
            batch, self.network = self.network, []
            for m in batch:
                self._transmit(m)
        raise RuntimeError("cluster did not settle")

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


@dataclasses.dataclass
class SimResult:
    seed: int
    ok: bool
    elections: int = 0
    commits: int = 0
    liveness_ticks: int = 0  # from healing until the final proposal was applied everywhere
    error: str = ""
    trace: list[str] = dataclasses.field(default_factory=list)


class Simulation:
    """Random faults on a Cluster, with the safety checker after every step."""

    # After the faults stop, a new proposal is applied everywhere within this many
    # ticks (20 election timeouts; 9000 soak seeds needed at most 71).
    LIVENESS_TICKS = 200

    def __init__(
        self,
        seed: int,
        nodes: int = 3,
        config: CoreConfig | None = None,
        core_cls: type[RaftCore] = RaftCore,
    ):
        """Without a ``config``, each seed varies SIM_CONFIG's limits and switches."""
        self.seed = seed
        self.rng = random.Random(seed)
        if config is None:
            config = dataclasses.replace(
                SIM_CONFIG,
                heartbeat_ticks=self.rng.choice((1, 2, 3)),
                max_entries_per_msg=self.rng.choice((1, 2, 4)),
                max_inflight_msgs=self.rng.choice((1, 3)),
                pre_vote=self.rng.random() < 0.7,
                check_quorum=self.rng.random() < 0.7,
            )
        self.cluster = Cluster(range(1, nodes + 1), config, self.rng.getrandbits(32), core_cls)
        self.trace: deque[tuple] = deque(maxlen=30)
        self._payloads = itertools.count(1)
        self._ctx = itertools.count(1)
        self._step = 0
        # Each seed draws its network speed and how stormy it is.
        storm = self.rng.uniform(0.2, 1.5)
        events = [
            (self.rng.uniform(15, 60), self._deliver),
            (2, self._tick),
            (1, self._tick_one),
            (25, self._persist),
            (6, self._propose),
            (3, self._read),
            (1.5 * storm, self._drop),
            (1 * storm, self._duplicate),
            (0.5 * storm, self._partition),
            (1, self._heal),
            (0.5 * storm, self._crash),
            (1.5, self._restart),
            (0.1, self._transfer),
        ]
        self._actions = [action for _, action in events]
        self._cumulative = list(itertools.accumulate(w for w, _ in events))

    def run(self, steps: int) -> SimResult:
        try:
            for self._step in range(steps):
                self._random_step()
            ticks = self._check_liveness()
        except Exception as exc:  # a violation or a crash of the core: report the seed
            return SimResult(self.seed, False, error=f"{type(exc).__name__}: {exc}",
                             trace=self._format_trace())
        checker = self.cluster.checker
        return SimResult(self.seed, True, len(checker.leaders), len(checker.applied), ticks)

    def _random_step(self) -> None:
        cluster, rng = self.cluster, self.rng
        pick = bisect.bisect(self._cumulative, rng.random() * self._cumulative[-1])
        action = self._actions[pick]
        detail = action()
        if detail is None:  # nothing to persist, no leader, ...: deliver or let time pass
            action = self._deliver if cluster.network else self._tick
            detail = action()
        self.trace.append((self._step, action.__name__[1:], detail))
        for i in cluster.ids:
            cluster.take_ready(i)
        cluster.checker.check_leaders(cluster.live())

    def _format_trace(self) -> list[str]:
        return [f"step {step}: {name} {detail}"[:240] for step, name, detail in self.trace]

    def _random_node(self, live: bool = True) -> int | None:
        ids = [i for i in self.cluster.ids if (self.cluster.cores[i] is not None) == live]
        return self.rng.choice(ids) if ids else None

    # -- actions (each returns a trace detail, or None if it did nothing) --------

    def _deliver(self):
        network = self.cluster.network
        if not network:
            return None
        k = 0 if self.rng.random() < 0.7 else self.rng.randrange(len(network))
        return self.cluster.deliver(k)

    def _tick(self):
        self.cluster.tick()
        return "all"

    def _tick_one(self):
        i = self._random_node()
        if i is not None:
            self.cluster.tick(i)
        return i

    def _persist(self):
        if not self.cluster.pending:
            return None
        i = self.rng.choice(sorted(self.cluster.pending))
        self.cluster.persist(i)
        return i

    def _propose(self):
        i = self._random_node()
        if i is None:
            return None
        data = f"p{next(self._payloads)}".encode()
        try:
            self.cluster.core(i).propose(data)
        except NotLeader:
            return None
        return (i, data)

    def _read(self):
        i = self._random_node()
        if i is None:
            return None
        ctx = next(self._ctx)
        try:
            self.cluster.core(i).read_index(ctx)
        except NotLeader:
            return None
        self.cluster.checker.read_requested(i, ctx)
        return (i, ctx)

    def _drop(self):
        network = self.cluster.network
        return network.pop(self.rng.randrange(len(network))) if network else None

    def _duplicate(self):
        network = self.cluster.network
        if not network:
            return None
        m = self.rng.choice(network)
        network.append(m)
        return m

    def _partition(self):
        ids = list(self.cluster.ids)
        self.rng.shuffle(ids)
        side = ids[: self.rng.randint(1, len(ids) // 2)]
        self.cluster.partition(side)
        return side

    def _heal(self):
        self.cluster.heal()
        return "all"

    def _crash(self):
        leader = self.cluster.leader()
        # Crashing leaders often leaves uncommitted entries behind (Figure 8).
        i = leader.id if leader and self.rng.random() < 0.5 else self._random_node()
        if i is None:
            return None
        after_save = self.rng.random() < 0.5
        self.cluster.crash(i, after_save)
        return (i, "after save" if after_save else "before save")

    def _restart(self):
        i = self._random_node(live=False)
        if i is not None:
            self.cluster.restart(i)
        return i

    def _transfer(self):
        leader = self.cluster.leader()
        if leader is None:
            return None
        target = self.rng.choice([i for i in self.cluster.ids if i != leader.id])
        leader.transfer_leadership(target)
        return (leader.id, target)

    # -- liveness ----------------------------------------------------------------

    def _check_liveness(self) -> int:
        """With every node up and the network whole, a new proposal commits everywhere.

        Returns the ticks it took.
        """
        cluster = self.cluster
        cluster.heal()
        for i in cluster.ids:
            if cluster.cores[i] is None:
                cluster.restart(i)
        self.trace.append((self._step, "liveness", "healed, all nodes up"))
        proposal: Entry | None = None  # the leader's copy of our proposal
        for ticks in range(self.LIVENESS_TICKS):
            cluster.stabilize()
            if proposal is not None and all(
                len(s.applied) >= proposal.index for s in cluster.storage.values()
            ):
                if self.cluster.checker.applied[proposal.index - 1] == proposal:
                    self._check_everywhere()
                    return ticks
            leader = cluster.leader()
            if leader is not None and (
                proposal is None or leader.log.term_at(proposal.index) != proposal.term
            ):
                try:  # first proposal, or its leader lost it before committing it
                    leader.propose(b"liveness")
                    proposal = leader.log.slice(leader.last_index, leader.last_index + 1)[0]
                except NotLeader:
                    pass
            cluster.tick()
        raise SafetyViolation(f"liveness: no commit {self.LIVENESS_TICKS} ticks after healing")

    def _check_everywhere(self) -> None:
        """Every node applied exactly the entries applied anywhere (none lost), and
        every in-memory log passes the log matching check persisted logs passed."""
        checker = self.cluster.checker
        for core in self.cluster.live():
            if self.cluster.storage[core.id].applied != checker.applied:
                raise SafetyViolation(f"node {core.id} applied a different sequence")
            entries = list(core.log.slice(1, core.last_index + 1))
            checker.saved(core.id, entries, entries)


def run_seeds(
    seeds: int,
    steps: int,
    nodes: int = 3,
    seed_start: int = 0,
    core_cls: type[RaftCore] = RaftCore,
) -> tuple[list[SimResult], SimResult | None]:
    """Run seeds in order; returns the passed results and the first failure (or None)."""
    passed = []
    for seed in range(seed_start, seed_start + seeds):
        result = Simulation(seed, nodes, core_cls=core_cls).run(steps)
        if not result.ok:
            return passed, result
        passed.append(result)
    return passed, None


def format_failure(failure: SimResult, nodes: int, steps: int) -> str:
    """The seed to replay (``--seed-start SEED --seeds 1``), the error, the last events."""
    lines = [f"FAIL seed={failure.seed} nodes={nodes} steps={steps}: {failure.error}"]
    lines += ["last events:"] + ["  " + line for line in failure.trace]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m parkd.raft.sim", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--nodes", type=int, choices=(3, 5), default=3)
    parser.add_argument("--seed-start", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    passed, failure = run_seeds(args.seeds, args.steps, args.nodes, args.seed_start)
    if failure is not None:
        print(format_failure(failure, args.nodes, args.steps))
        return 1
    liveness = max((r.liveness_ticks for r in passed), default=0)
    print(
        f"ok: seeds={args.seeds} (from {args.seed_start}) steps={args.steps} nodes={args.nodes} "
        f"elections={sum(r.elections for r in passed)} commits={sum(r.commits for r in passed)} "
        f"max_liveness_ticks={liveness} in {time.perf_counter() - started:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
