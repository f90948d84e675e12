"""The nemesis: a real cluster under camera load, with random faults from a seed.

Each node runs as a ``twistd`` process; node ``i`` reaches node ``j``'s raft
port only through the proxy ``(i, j)`` (its own ``--peers`` view), so the
harness can partition any set of links, one way or both.  Faults: kill -9 and
restart (leader or follower), SIGSTOP/SIGCONT pauses longer than the election
timeout, majority/minority partitions, an isolated leader, one-way cuts, and a
full-cluster restart.  The fault window opens once the cluster acked its first
frame; a fault that could not be applied (no leader to kill or isolate, no live
node to kill) is recorded as skipped, not counted.  At the end everything is
healed and restarted, the cameras are stopped, and :mod:`parkd.chaos.checker`
judges the evidence.  Every port speaks TLS with a PKI made for the run
(``--insecure``: plaintext); the proxies pass TLS through untouched.

    python -m parkd.chaos.nemesis --seeds 50 --duration 120 [--nodes 3|5] [--insecure] [--summary FILE]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

from parkd.chaos import checker
from parkd.chaos.proxy import Network
from parkd.config import load_config
from parkd.launcher import Daemon, Timeout, camera_daemon, free_ports, get_json, make_pki, process_state, wait_for

LOTS = {"north": 100, "south": 60, "east": 250}


@dataclass(frozen=True)
class Fault:
    """One fault of a schedule: its kind, what was done (or why nothing was)."""

    kind: str
    what: str
    effective: bool = True

    def __str__(self) -> str:
        return self.what if self.effective else f"{self.kind} skipped: {self.what}"


@dataclass
class Run:
    seed: int
    faults: list[Fault] = field(default_factory=list)  # effective and skipped, in order
    acked: int = 0
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0  # the whole schedule, start-up to shutdown
    fault_seconds: float = 0.0  # from the first ack to the end of the last fault
    # What the faults did, seen from outside the injector: nodes found dead of SIGKILL or
    # exited otherwise (full restart) when restarted, SIGSTOPs seen in /proc, connections
    # the link cuts closed or refused.
    observed: Counter[str] = field(default_factory=Counter)

    @property
    def effective(self) -> list[Fault]:
        return [f for f in self.faults if f.effective]

    @property
    def skipped(self) -> list[Fault]:
        return [f for f in self.faults if not f.effective]

    def by_kind(self) -> Counter[str]:
        """Effective faults per kind (every kind of :data:`KINDS`, zero if none)."""
        counts = Counter({kind: 0 for kind in KINDS})
        counts.update(f.kind for f in self.effective)
        return counts


class ChaosCluster:
    def __init__(self, workdir: str, nodes: int = 3, cameras: int = 3, interval: float = 0.1, tls: bool = True,
                 election_timeout_ms: int = 600, heartbeat_ms: int = 50):  # fmt: skip
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.election_timeout = election_timeout_ms / 1000.0
        ids = list(range(1, nodes + 1))
        ports = iter(free_ports(3 * nodes + nodes * (nodes - 1)))
        self.real = {i: {kind: ("127.0.0.1", next(ports)) for kind in ("raft", "client", "http")} for i in ids}
        proxy_ports = {(i, j): next(ports) for i in ids for j in ids if i != j}
        self.network = Network({i: self.real[i]["raft"] for i in ids}, proxy_ports)
        self.config_path = os.path.join(workdir, "parkd.toml")
        pki = make_pki(os.path.join(workdir, "pki"), nodes=ids, cameras=range(1, cameras + 1)) if tls else None
        self._write_config(nodes, election_timeout_ms, heartbeat_ms, interval, pki)
        self.config = load_config(self.config_path)
        self.nodes = {i: self._node(i) for i in ids}
        lots = list(LOTS)
        self.cameras = {c: camera_daemon(self.config_path, c, lots[(c - 1) % len(lots)], workdir) for c in range(1, cameras + 1)}
        self.paused: set[int] = set()
        self.observed: Counter[str] = Counter()  # see Run.observed

    def _write_config(self, nodes, election_timeout_ms, heartbeat_ms, interval, pki):
        lines = ["[cluster]", f"election_timeout_ms = {election_timeout_ms}", f"heartbeat_ms = {heartbeat_ms}"]
        if pki is None:
            lines.append("insecure = true")
        for i, addr in self.real.items():
            lines += ["", "[[node]]", f"id = {i}"] + [f'{k} = "{h}:{p}"' for k, (h, p) in addr.items()]
        for lot, capacity in LOTS.items():
            lines += ["", "[[lot]]", f'id = "{lot}"', f"capacity = {capacity}"]
        lines += ["", "[camera]", f"interval = {interval}", "ack_timeout = 1.0"]
        if pki is not None:
            lines += ["", "[tls]", f'ca = "{pki}/ca.pem"', f'cert = "{pki}/node-{{id}}.pem"',
                      f'key = "{pki}/node-{{id}}.key"', f'crl = "{pki}/crl.pem"']  # fmt: skip
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")

    def _node(self, i: int) -> Daemon:
        """Node ``i`` sees every peer's raft port through its own proxies."""
        view = []
        for j, addr in self.real.items():
            raft = addr["raft"] if j == i else self.network.address(i, j)
            view.append(f"{j}={raft[0]}:{raft[1]}/{addr['client'][0]}:{addr['client'][1]}/{addr['http'][0]}:{addr['http'][1]}")
        data_dir = os.path.join(self.workdir, f"node-{i}")
        args = ["node", "--config", self.config_path, "--id", str(i), "--data-dir", data_dir, "--peers", ",".join(view)]
        return Daemon(f"node-{i}", args, self.workdir)

    # ------------------------------------------------------------ control

    def start(self) -> None:
        for node in self.nodes.values():
            node.start()
        for camera in self.cameras.values():
            camera.start()

    def status(self, i: int) -> dict | None:
        return get_json(self.config, i, "/api/v1/cluster?consistency=local", timeout=1)

    def leader(self) -> int | None:
        for i in self.nodes:
            if i in self.paused or not self.nodes[i].alive():
                continue
            s = self.status(i)
            if s and s["role"] == "leader":
                return i
        return None

    def acked(self) -> int:
        return sum(len(checker.read_events(c.json_path, "frame_acked")) for c in self.cameras.values())

    def pause(self, i: int) -> None:
        self.nodes[i].signal(signal.SIGSTOP)
        self.paused.add(i)
        if _becomes_stopped(self.nodes[i].pid):
            self.observed["stopped"] += 1

    def resume_all(self) -> None:
        for i in list(self.paused):
            self.nodes[i].signal(signal.SIGCONT)
        self.paused.clear()

    def restart_dead(self) -> None:
        for node in self.nodes.values():
            if not node.alive():
                if node.proc is not None:
                    self.observed["killed" if node.proc.returncode == -signal.SIGKILL else "exited"] += 1
                node.start()

    def heal(self) -> None:
        self.resume_all()
        self.network.heal()
        self.restart_dead()

    def shutdown(self) -> None:
        self.resume_all()
        for daemon in [*self.cameras.values(), *self.nodes.values()]:
            daemon.stop()
        self.network.close()

    def evidence(self) -> checker.Evidence:
        return checker.collect(
            [c.json_path for c in self.cameras.values()],
            {i: n.json_path for i, n in self.nodes.items()},
            {i: os.path.join(self.workdir, f"node-{i}", "node.db") for i in self.nodes},
        )


# ---------------------------------------------------------------- faults


class Skip(Exception):
    """A fault that could not be applied now (the reason is the message)."""


def kill_leader(c: ChaosCluster, rng) -> str:
    leader = c.leader()
    if leader is None:
        raise Skip("no leader")
    c.nodes[leader].kill()
    return f"kill -9 leader {leader}"


def kill_follower(c: ChaosCluster, rng) -> str:
    leader = c.leader()
    victim = rng.choice([i for i in c.nodes if i != leader])
    if not c.nodes[victim].alive():
        raise Skip(f"node {victim} is not running")
    c.nodes[victim].kill()
    return f"kill -9 node {victim}"


def pause_node(c: ChaosCluster, rng) -> str:
    victim = c.leader() if rng.random() < 0.5 else rng.choice(list(c.nodes))
    victim = victim or rng.choice(list(c.nodes))
    if not c.nodes[victim].alive():
        raise Skip(f"node {victim} is not running")
    c.pause(victim)
    return f"SIGSTOP node {victim}"


def partition_minority(c: ChaosCluster, rng) -> str:
    ids = list(c.nodes)
    rng.shuffle(ids)
    minority = set(ids[: (len(ids) - 1) // 2])
    c.network.partition(minority, set(ids) - minority)
    return f"partition {sorted(minority)} | {sorted(set(ids) - minority)}"


def isolate_leader(c: ChaosCluster, rng) -> str:
    leader = c.leader()
    if leader is None:
        raise Skip("no leader")
    c.network.partition({leader}, set(c.nodes) - {leader})
    return f"isolate leader {leader}"


def one_way(c: ChaosCluster, rng) -> str:
    leader = c.leader() or rng.choice(list(c.nodes))
    other = rng.choice([i for i in c.nodes if i != leader])
    src, dst = (leader, other) if rng.random() < 0.5 else (other, leader)
    c.network.cut(src, dst)
    return f"one-way cut {src}->{dst}"


def full_restart(c: ChaosCluster, rng) -> str:
    c.resume_all()
    for node in c.nodes.values():
        node.stop()
    c.restart_dead()
    return "full-cluster restart (SIGTERM all, start all)"


# (kind, fault): a fault does what it says and returns a description, or raises Skip.
FAULTS = [
    ("kill-leader", kill_leader),
    ("kill-follower", kill_follower),
    ("pause", pause_node),
    ("partition", partition_minority),
    ("isolate-leader", isolate_leader),
    ("one-way", one_way),
    ("full-restart", full_restart),
]
KINDS = tuple(kind for kind, _ in FAULTS)


def inject(kind: str, fault, cluster: ChaosCluster, rng) -> Fault:
    """Apply ``fault`` to ``cluster`` now; skipped if it cannot be applied."""
    try:
        return Fault(kind, fault(cluster, rng))
    except Skip as e:
        return Fault(kind, str(e), effective=False)


def run_schedule(seed: int, duration: float, workdir: str, nodes: int = 3, log=print, tls: bool = True) -> Run:
    """One seeded schedule: faults for ``duration`` seconds, then heal and check."""
    rng = random.Random(seed)
    cluster = ChaosCluster(workdir, nodes=nodes, tls=tls)
    run = Run(seed)
    started = time.monotonic()
    try:
        cluster.start()
        wait_for(lambda: cluster.acked() > 0, 30, "the first ack")
        window = time.monotonic()  # faults only on a cluster that works
        while time.monotonic() - window < duration:
            run.faults.append(inject(*rng.choice(FAULTS), cluster, rng))
            log(f"  seed {seed} t={time.monotonic() - window:5.1f}s {run.faults[-1]}")
            hold = rng.uniform(1.5, 3.0) * cluster.election_timeout
            _hold(hold)
            cluster.heal()
            _hold(rng.uniform(1.0, 2.0) * cluster.election_timeout)
        run.fault_seconds = time.monotonic() - window
        cluster.heal()
        run.observed = cluster.observed + Counter(links_dropped=cluster.network.dropped())
        before = cluster.acked()
        wait_for(lambda: cluster.acked() > before + 5, 60, "acks after healing")
        for camera in cluster.cameras.values():
            camera.stop()
        _wait_converged(cluster)
    except Timeout as e:
        run.violations.append(f"liveness: {e}")
    finally:
        cluster.shutdown()
    evidence = cluster.evidence()
    run.acked = len(evidence.acked)
    run.violations += checker.check(evidence)
    run.seconds = time.monotonic() - started
    return run


def _becomes_stopped(pid: int, timeout: float = 1.0) -> bool:
    """Whether ``pid`` shows as stopped (state T) in /proc within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process_state(pid) == "T":
            return True
        time.sleep(0.01)  # bounded-poll: the kernel stops the process asynchronously
    return False


def _hold(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)  # bounded-poll: the faults must last this long


def _wait_converged(cluster: ChaosCluster, timeout: float = 60.0) -> None:
    """All nodes applied the same last index."""

    def same():
        statuses = [cluster.status(i) for i in cluster.nodes]
        if any(s is None for s in statuses):
            return False
        return len({s["last_applied"] for s in statuses}) == 1 and len({s["commit_index"] for s in statuses}) == 1

    wait_for(same, timeout, "every node to apply the same log")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="parkd-nemesis", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--seed-start", type=int, default=0)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of faults per schedule")
    parser.add_argument("--nodes", type=int, default=3, choices=(3, 5))
    parser.add_argument("--summary", help="also write the summary table to this file")
    parser.add_argument("--keep", action="store_true", help="keep each run's directory")
    parser.add_argument("--insecure", action="store_true", help="plaintext instead of TLS on every port")
    args = parser.parse_args(argv)
    runs = []
    for seed in range(args.seed_start, args.seed_start + args.seeds):
        workdir = tempfile.mkdtemp(prefix=f"parkd-nemesis-{seed}-")
        run = run_schedule(seed, args.duration, workdir, args.nodes, tls=not args.insecure)
        runs.append(run)
        verdict = "ok" if not run.violations else "VIOLATION"
        print(
            f"seed {seed}: {verdict}: {len(run.effective)} faults ({len(run.skipped)} skipped), "
            f"{run.acked} frames acked, {run.seconds:.0f}s"
        )
        for v in run.violations:
            print(f"  seed {seed}: {v}")
        if run.violations or args.keep:
            print(f"  evidence kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    table = summary(runs)
    print(table)
    if args.summary:
        with open(args.summary, "w") as f:
            f.write(table + "\n")
    return 1 if any(r.violations for r in runs) else 0


def summary(runs: list[Run]) -> str:
    """A Markdown table: per seed (and in all) the faults that took effect, by kind."""
    columns = ["seed", "faults", *KINDS, "skipped", "frames acked", "violations", "seconds"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]

    def row(name, effective, kinds, skipped, acked, violations, seconds):
        cells = [name, effective, *(kinds[k] for k in KINDS), skipped, acked, violations, f"{seconds:.0f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")

    for r in runs:
        row(r.seed, len(r.effective), r.by_kind(), len(r.skipped), r.acked, len(r.violations), r.seconds)
    row(
        f"all {len(runs)}",
        sum(len(r.effective) for r in runs),
        sum((r.by_kind() for r in runs), Counter()),
        sum(len(r.skipped) for r in runs),
        sum(r.acked for r in runs),
        sum(len(r.violations) for r in runs),
        sum(r.seconds for r in runs),
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
