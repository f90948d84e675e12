"""Random faults on a simulated cluster, with Raft's safety checked after every step.

Run ``python -m parkd.raft.sim --seeds N --steps M [--nodes 3|5] [--seed-start S]
[--no-membership]``.  A failure prints its seed and the last events and exits 1;
a pass prints one summary line with what happened (elections, commits,
membership changes, snapshots, transfers) and every kind of fault injected.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import itertools
import random
import sys
from collections import Counter, deque

from parkd.raft.confchange import ConfChange, ConfChangeOp
from parkd.raft.core import ConfChangeRefused, CoreConfig, NotLeader, RaftCore
from parkd.raft.testing.checker import SafetyViolation
from parkd.raft.testing.cluster import SIM_CONFIG, Cluster
from parkd.raft.types import Entry

# The faults a Simulation injects; each counts only when it changed something.
FAULTS = ("drop", "duplicate", "partition", "crash", "lose_connection", "hold_applies")


@dataclasses.dataclass
class SimResult:
    seed: int
    ok: bool
    elections: int = 0
    commits: int = 0
    liveness_ticks: int = 0  # from healing until the final proposal was applied everywhere
    error: str = ""
    trace: list[str] = dataclasses.field(default_factory=list)
    conf_changes: int = 0  # membership changes appended (proposed or auto-promotions)
    snapshots: int = 0  # snapshots installed on followers
    transfers: int = 0  # leadership transfers that handed over
    faults: dict[str, int] = dataclasses.field(default_factory=dict)  # FAULTS that took effect


class Simulation:
    """Random faults on a Cluster, with the safety checker after every step.

    With ``membership`` (the default) the workload also adds learners (which the
    leader promotes, or the simulation does), removes members (the leader too),
    transfers leadership and compacts logs, so lagging nodes need snapshots.
    """

    # After the faults stop, a new proposal is applied everywhere within this many
    # ticks (20 election timeouts).  Soak: 9000 seeds without membership changes
    # needed at most 71; 10000 (3 nodes) and 8000 (5 nodes) seeds with them at
    # most 149, the slowest being seeds without pre-vote or check-quorum where a
    # member that missed a removal keeps starting elections it cannot win.
    LIVENESS_TICKS = 200

    def __init__(
        self,
        seed: int,
        nodes: int = 3,
        config: CoreConfig | None = None,
        core_cls: type[RaftCore] = RaftCore,
        membership: bool = True,
    ):
        """Without a ``config``, each seed varies SIM_CONFIG's limits and switches."""
        self.seed = seed
        self.nodes = nodes
        self.rng = random.Random(seed)
        if config is None:
            config = dataclasses.replace(
                SIM_CONFIG,
                heartbeat_ticks=self.rng.choice((1, 2, 3)),
                max_entries_per_msg=self.rng.choice((1, 2, 4)),
                max_inflight_msgs=self.rng.choice((1, 3)),
                max_committed_per_ready=self.rng.choice((1, 2, 256)),
                pre_vote=self.rng.random() < 0.7,
                check_quorum=self.rng.random() < 0.7,
            )
            if membership:
                config = dataclasses.replace(
                    config,
                    auto_promote=self.rng.random() < 0.7,
                    promote_lag=self.rng.choice((0, 2, 16)),
                    snapshot_timeout_ticks=self.rng.choice((None, 15)),
                )
        self.cluster = Cluster(range(1, nodes + 1), config, self.rng.getrandbits(32), core_cls)
        # The chance that a taken Ready holding a snapshot is left installing (on
        # the node's worker thread) when the node would otherwise finish it.
        self.defer_install = self.rng.choice((0.0, 0.5, 1.0)) if membership else 0.0
        # The chance that a node takes a Ready holding its applies, as a follower of
        # the daemon does while nothing waits on them, and as there never past its
        # next tick (the daemon's hold is shorter than a heartbeat); its own random
        # stream, so the seeds' other draws stay as they were.
        self._holds = random.Random(f"hold-applies-{seed}")
        self.hold_applies = self._holds.choice((0.0, 0.6, 0.95))
        self._ticked: set[int] = set()  # nodes that ticked since they last applied
        self.faults: Counter[str] = Counter()
        self.trace: deque[tuple] = deque(maxlen=30)
        self._payloads = itertools.count(1)
        self._ctx = itertools.count(1)
        self._step = 0
        self._next_id = nodes + 1
        self.conf_changes = 0
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
            (0.5 * storm, self._lose_connection),
        ]
        if membership:
            events += [
                (0.15, self._transfer),
                (0.3, self._add_learner),
                (0.03 if config.auto_promote else 0.15, self._promote),
                (0.25, self._remove),
                (0.8, self._compact),
                (2, self._finish_install),
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
                             trace=self._format_trace(), faults=dict(self.faults))
        checker = self.cluster.checker
        return SimResult(
            self.seed,
            True,
            len(checker.leaders),
            len(checker.applied),
            ticks,
            conf_changes=self.conf_changes,
            snapshots=self.cluster.snapshots_installed,
            transfers=self.cluster.transfers,
            faults=dict(self.faults),
        )

    def _random_step(self) -> None:
        cluster, rng = self.cluster, self.rng
        pick = bisect.bisect(self._cumulative, rng.random() * self._cumulative[-1])
        action = self._actions[pick]
        detail = action()
        name = action.__name__[1:]
        if detail is not None and name in FAULTS:
            self.faults[name] += 1
        if detail is None:  # nothing to persist, no leader, ...: deliver or let time pass
            action = self._deliver if cluster.network else self._tick
            detail = action()
        self.trace.append((self._step, action.__name__[1:], detail))
        for i in cluster.ids:
            hold = i not in self._ticked and self._hold_applies()
            if cluster.take_ready(i, hold_applies=hold):
                core = cluster.core(i)
                if hold and core.commit_index > core.applied_index and not cluster.pending[i].committed_entries:
                    self.faults["hold_applies"] += 1  # committed entries left for a later Ready
                elif not hold:
                    self._ticked.discard(i)
        cluster.checker.check_leaders(cluster.live())
        cluster.checker.check_committed(cluster.live())

    def _hold_applies(self) -> bool:
        return self._holds.random() < self.hold_applies

    def _format_trace(self) -> list[str]:
        return [f"step {step}: {name} {detail}"[:240] for step, name, detail in self.trace]

    def _random_node(self, live: bool = True) -> int | None:
        cluster = self.cluster
        ids = [
            i
            for i in cluster.ids
            if (cluster.cores[i] is not None) == live and i not in cluster.retired
        ]
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
        self._ticked.update(self.cluster.ids)
        return "all"

    def _tick_one(self):
        i = self._random_node()
        if i is not None:
            self.cluster.tick(i)
            self._ticked.add(i)
        return i

    def _persist(self):
        pending = self.cluster.pending
        if not pending:
            return None
        i = self.rng.choice(sorted(pending))
        if pending[i].snapshot is not None and self.rng.random() < self.defer_install:
            return None  # still installing: see _finish_install
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
        for core in self.cluster.live():  # most peers see the dead node's sockets close
            if self.rng.random() < 0.7:
                self.cluster.unreachable(core.id, i)
        return (i, "after save" if after_save else "before save")

    def _lose_connection(self):
        """A node's connection to a peer breaks (often its leader's), though both live."""
        i = self._random_node()
        if i is None:
            return None
        core = self.cluster.core(i)
        peer = core.leader_id if core.leader_id and self.rng.random() < 0.7 else self.rng.choice(self.cluster.ids)
        self.cluster.unreachable(i, peer)
        return (i, peer)

    def _restart(self):
        i = self._random_node(live=False)
        if i is not None:
            self.cluster.restart(i)
        return i

    def _transfer(self):
        leader = self.cluster.leader()
        if leader is None:
            return None
        # None: the best voter; the leader's own id cancels a pending transfer.
        target = self.rng.choice([None, leader.id, *[i for i in leader.voters if i != leader.id]])
        try:
            target = leader.transfer_leadership(target)
        except ValueError:
            return None
        return (leader.id, target)

    def _conf_change(self, op: ConfChangeOp, pick):
        """Propose ``op`` on the leader for the node ``pick(membership)`` chooses."""
        leader = self.cluster.leader()
        if leader is None:
            return None
        node = pick(leader.membership)
        if node is None:
            return None
        try:
            index = leader.propose_conf_change(ConfChange(op, node, b"addr-%d" % node))
        except (NotLeader, ConfChangeRefused):
            return None
        self.conf_changes += 1
        return (leader.id, op.name, node, index)

    def _add_learner(self):
        def new_node(m):
            if len(m.voters) + len(m.learners) >= self.nodes + 2:
                return None
            return self._next_id

        detail = self._conf_change(ConfChangeOp.ADD_LEARNER, new_node)
        if detail is not None:
            self.cluster.add_node(self._next_id)
            self._next_id += 1
        return detail

    def _promote(self):
        def learner(m):
            return self.rng.choice(m.learners) if m.learners else None

        return self._conf_change(ConfChangeOp.PROMOTE, learner)

    def _remove(self):
        def member(m):
            choices = [*m.learners, *(m.voters if len(m.voters) > 2 else ())]
            return self.rng.choice(choices) if choices else None

        return self._conf_change(ConfChangeOp.REMOVE, member)

    def _finish_install(self):
        """A node finishes installing a snapshot (the Ready that holds it)."""
        installing = sorted(i for i, rd in self.cluster.pending.items() if rd.snapshot is not None)
        if not installing:
            return None
        i = self.rng.choice(installing)
        self.cluster.persist(i)
        return (i, self.cluster.storage[i].snapshot.index)

    def _compact(self):
        i = self._random_node()
        if i is None:
            return None
        margin = self.rng.choice((0, 0, 1, 3, 10))
        if not self.cluster.compact(i, margin):
            return None
        return (i, self.cluster.core(i).snapshot.index, margin)

    # -- liveness ----------------------------------------------------------------

    def _check_liveness(self) -> int:
        """With every node up and the network whole, a new proposal commits on
        every member of the configuration.  Returns the ticks it took."""
        cluster = self.cluster
        cluster.heal()
        if not cluster.config.pre_vote:
            # Without pre-vote a removed node that never learned it disrupts every
            # election (§4.2.3: the lease only protects a live leader), so it is shut
            # down, as the operator may once the removal committed (§4.2.2).
            cluster.retired.update(cluster.checker.removed)
            for i in cluster.checker.removed:
                cluster.crash(i)
        for i in cluster.ids:
            if cluster.cores[i] is None and i not in cluster.retired:
                cluster.restart(i)
        self.trace.append((self._step, "liveness", "healed, all nodes up"))
        proposal: Entry | None = None  # the leader's copy of our proposal
        for ticks in range(self.LIVENESS_TICKS):
            cluster.stabilize()
            leader = cluster.leader()
            if proposal is not None and leader is not None:
                members = [*leader.voters, *leader.learners]
                if all(len(cluster.storage[i].applied) >= proposal.index for i in members):
                    if self.cluster.checker.applied[proposal.index - 1] == proposal:
                        self._check_everywhere(members)
                        return ticks
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

    def _check_everywhere(self, members) -> None:
        """Every member applied exactly the entries applied anywhere (none lost), and
        every in-memory log passes the log matching check persisted logs passed."""
        checker = self.cluster.checker
        for i in members:
            if self.cluster.storage[i].applied != checker.applied:
                raise SafetyViolation(f"node {i} applied a different sequence")
        for core in self.cluster.live():
            log = core.log
            entries = log.slice(log.first_index, log.last_index + 1)
            checker.saved(core.id, entries, log.term_at(log.first_index - 1))


def run_seeds(
    seeds: int,
    steps: int,
    nodes: int = 3,
    seed_start: int = 0,
    core_cls: type[RaftCore] = RaftCore,
    membership: bool = True,
) -> tuple[list[SimResult], SimResult | None]:
    """Run seeds in order; returns the passed results and the first failure (or None)."""
    passed = []
    for seed in range(seed_start, seed_start + seeds):
        result = Simulation(seed, nodes, core_cls=core_cls, membership=membership).run(steps)
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
    parser.add_argument(
        "--membership",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also add/remove members, transfer leadership and compact logs (default: on)",
    )
    args = parser.parse_args(argv)
    passed, failure = run_seeds(
        args.seeds, args.steps, args.nodes, args.seed_start, membership=args.membership
    )
    if failure is not None:
        print(format_failure(failure, args.nodes, args.steps))
        return 1
    print(summary_line(passed, args.seeds, args.seed_start, args.steps, args.nodes))
    return 0


def fault_totals(results) -> dict[str, int]:
    """How many faults of each kind took effect over ``results``."""
    return {kind: sum(r.faults.get(kind, 0) for r in results) for kind in FAULTS}


def summary_line(passed, seeds: int, seed_start: int, steps: int, nodes: int) -> str:
    liveness = max((r.liveness_ticks for r in passed), default=0)
    faults = " ".join(f"{kind}={count}" for kind, count in fault_totals(passed).items())
    return (
        f"ok: seeds={seeds} (from {seed_start}) steps={steps} nodes={nodes} "
        f"elections={sum(r.elections for r in passed)} commits={sum(r.commits for r in passed)} "
        f"conf_changes={sum(r.conf_changes for r in passed)} "
        f"snapshots={sum(r.snapshots for r in passed)} "
        f"transfers={sum(r.transfers for r in passed)} "
        f"max_liveness_ticks={liveness} faults: {faults}"
    )


if __name__ == "__main__":
    sys.exit(main())
